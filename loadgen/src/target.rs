//! Where the load goes: an `https://` URL whose host must be a loopback address. The
//! load generator refuses everything else, so that it can never load a machine by mistake.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use rustls_pki_types::ServerName;

/// Why a URL cannot be a load target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not of the form `https://host[:port][/path]`.
    #[error("URL {url:?}: {reason}")]
    Syntax {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The host did not resolve.
    #[error("resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// The host is, or resolves to, an address outside loopback.
    #[error("refusing to load {host} ({addr}): ota-loadgen only targets loopback addresses (127.0.0.0/8, ::1)")]
    NotLoopback {
        /// The host as given.
        host: String,
        /// The offending address.
        addr: IpAddr,
    },
}

/// A parsed, checked target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The socket address to connect to (loopback).
    pub addr: SocketAddr,
    /// The TLS server name (an IP address or `localhost`).
    pub server_name: ServerName<'static>,
    /// The `Host` header value.
    pub host_header: String,
    /// The path of the URL (`/` when absent).
    pub path: String,
}

impl Target {
    /// Parses `url` (`https://host[:port][/path]`, default port 443) and checks that every
    /// address its host names is a loopback address.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let syntax = |reason| TargetError::Syntax {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| syntax("must start with https://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(syntax("user info is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| syntax("unclosed [ in host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| syntax("junk after ]"))?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(syntax("empty host"));
        }
        let port: u16 = match port {
            None => 443,
            Some(p) => p.parse().map_err(|_| syntax("bad port"))?,
        };
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|e| TargetError::Resolve {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })?
                .collect(),
        };
        let first = *addrs.first().ok_or_else(|| TargetError::Resolve {
            host: host.to_owned(),
            reason: "no addresses".into(),
        })?;
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(TargetError::NotLoopback {
                host: host.to_owned(),
                addr: bad.ip(),
            });
        }
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|_| syntax("host is not a valid DNS name"))?,
        };
        Ok(Target {
            addr: first,
            server_name,
            host_header: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> Target {
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Target {
            path,
            ..self.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(t.path, "/");
        assert_eq!(t.host_header, "127.0.0.1:8443");
        let t = Target::parse("https://127.0.0.9/small.json").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (443, "/small.json"));
        let t = Target::parse("https://[::1]:9/x").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.with_path("targets/a").path, "/targets/a");
    }

    #[test]
    fn other_addresses_are_refused() {
        for url in [
            "https://10.0.0.1:8443",
            "https://192.0.2.1/",
            "https://[2001:db8::1]:443/",
            "https://0.0.0.0:8443",
        ] {
            let err = Target::parse(url).unwrap_err();
            assert!(
                matches!(err, TargetError::NotLoopback { .. }),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "http://127.0.0.1:80",
            "https://",
            "https://127.0.0.1:x",
            "https://[::1",
            "https://u@127.0.0.1/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::Syntax { .. })),
                "{url}"
            );
        }
    }
}
