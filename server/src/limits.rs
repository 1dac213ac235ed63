//! Resource limits of the HTTPS transport: what one client may cost the server.
//!
//! Every limit has a safe default, so `Limits::default()` is a sane production setting
//! and a config file only names what it changes (the `[limits]` table). Durations are
//! written as an integer number of seconds or as a string with a unit: `"300ms"`, `"10s"`,
//! `"5m"`, `"1h"`.
//!
//! ```
//! let limits: ota_server::limits::Limits =
//!     toml::from_str("handshake_timeout = '5s'\nmax_connections = 500").unwrap();
//! assert_eq!(limits.max_connections, 500);
//! assert_eq!(limits.header_read_timeout, std::time::Duration::from_secs(10));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits enforced by [`crate::serve::serve`] on every connection and request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Time from TCP accept to a completed TLS handshake. A client that connects and sends
    /// nothing (or dribbles a handshake) is dropped after this. Default 10 s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// HTTP/1.1: time to receive a request's complete header block, counted from when the
    /// server starts waiting for it. Because hyper starts waiting as soon as the previous
    /// response is sent, this is also the keep-alive idle timeout of HTTP/1.1 connections.
    /// Default 10 s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long, while the
    /// server is waiting on the peer, is closed. This bounds idle HTTP/2 connections and
    /// stalled request bodies (uploads) and responses (a client that stops reading a
    /// download). A slow but moving transfer is never cut, so it is safe for multi-GiB
    /// images on slow links. Default 60 s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Default cap on a buffered request body (JSON and forms), in bytes. Routes that take
    /// uploads raise it for themselves with `axum::extract::DefaultBodyLimit`, up to
    /// `max_upload_bytes`. Default 1 MiB.
    pub max_body_bytes: u64,
    /// Hard cap on any request body, in bytes, enforced on every route (a longer body is
    /// answered with 413). Default 8 GiB.
    pub max_upload_bytes: u64,
    /// Most simultaneous connections, including those still in the TLS handshake. Past
    /// this, new connections are closed at once, before any TLS work. Default 10 000.
    pub max_connections: usize,
    /// Most concurrent requests (streams) on one HTTP/2 connection. Default 100.
    pub max_concurrent_streams: u32,
    /// After the shutdown signal, how long in-flight connections get to finish before
    /// `serve` returns anyway. Default 30 s.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads serving connections, each running its own single-threaded event loop
    /// (a connection stays on one thread for its life; see `conn_threads`). 0, the
    /// default, means one per CPU.
    pub connection_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 8 * 1024 * 1024 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 100,
            shutdown_grace: Duration::from_secs(30),
            connection_threads: 0,
        }
    }
}

/// A limit set to a value that would make the server unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A limit is zero.
    #[error("limit {name} must be greater than zero")]
    Zero {
        /// The field name.
        name: &'static str,
    },
    /// The JSON body cap is above the upload cap, which would make it meaningless.
    #[error("max_body_bytes ({body}) must not exceed max_upload_bytes ({upload})")]
    BodyAboveUpload {
        /// `max_body_bytes`.
        body: u64,
        /// `max_upload_bytes`.
        upload: u64,
    },
}

impl Limits {
    /// Checks that no limit is zero and that the body caps are ordered. Call after loading a
    /// config file; `serve` uses the values as given.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(LimitsError::Zero { name });
            }
        }
        let counts = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_upload_bytes", self.max_upload_bytes),
            ("max_connections", self.max_connections as u64),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
        ];
        for (name, n) in counts {
            if n == 0 {
                return Err(LimitsError::Zero { name });
            }
        }
        if self.max_body_bytes > self.max_upload_bytes {
            return Err(LimitsError::BodyAboveUpload {
                body: self.max_body_bytes,
                upload: self.max_upload_bytes,
            });
        }
        Ok(())
    }
}

/// Serde for durations: an integer is seconds; a string is a number with a unit
/// (`ms`, `s`, `m`, `h`). Serialized as a string in milliseconds or seconds.
mod duration {
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "seconds as an integer, or a string like \"300ms\", \"10s\", \"5m\", \"1h\"",
            )
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("negative duration {secs}")))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse(s).ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }

    /// Parses `<integer><unit>`; `None` on anything else (including overflow).
    pub(super) fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let secs_per_unit = match unit.trim() {
            "ms" => return Some(Duration::from_millis(n)),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return None,
        };
        n.checked_mul(secs_per_unit).map(Duration::from_secs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let l = Limits::default();
        l.validate().unwrap();
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.max_body_bytes, 1 << 20);
        assert_eq!(l.max_upload_bytes, 8 << 30);
    }

    #[test]
    fn empty_toml_gives_defaults() {
        let l: Limits = toml::from_str("").unwrap();
        assert_eq!(l, Limits::default());
    }

    #[test]
    fn toml_overrides_and_duration_forms() {
        let l: Limits = toml::from_str(
            "handshake_timeout = '300ms'\nheader_read_timeout = 5\nidle_timeout = '2m'\n\
             shutdown_grace = '1h'\nmax_connections = 1",
        )
        .unwrap();
        assert_eq!(l.handshake_timeout, Duration::from_millis(300));
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.shutdown_grace, Duration::from_secs(3600));
        assert_eq!(l.max_connections, 1);
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_rejected() {
        assert!(toml::from_str::<Limits>("max_conections = 5").is_err());
        for bad in [
            "'10'",
            "'10 parsecs'",
            "'-1s'",
            "-3",
            "'s'",
            "'99999999999999999999h'",
        ] {
            let r = toml::from_str::<Limits>(&format!("idle_timeout = {bad}"));
            assert!(r.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serialize_round_trips() {
        let l = Limits {
            handshake_timeout: Duration::from_millis(250),
            ..Limits::default()
        };
        let text = toml::to_string(&l).unwrap();
        assert!(text.contains("\"250ms\""), "{text}");
        assert_eq!(toml::from_str::<Limits>(&text).unwrap(), l);
    }

    #[test]
    fn validate_rejects_zero_and_misordered_caps() {
        let zero = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.validate(),
            Err(LimitsError::Zero {
                name: "max_connections"
            })
        );
        let zero_time = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(zero_time.validate().is_err());
        let misordered = Limits {
            max_body_bytes: 10,
            max_upload_bytes: 5,
            ..Limits::default()
        };
        assert!(matches!(
            misordered.validate(),
            Err(LimitsError::BodyAboveUpload { .. })
        ));
    }

    #[test]
    fn parse_units() {
        assert_eq!(duration::parse("0ms"), Some(Duration::ZERO));
        assert_eq!(duration::parse("15 s"), Some(Duration::from_secs(15)));
        assert_eq!(duration::parse("1x"), None);
        assert_eq!(duration::parse(""), None);
    }
}
