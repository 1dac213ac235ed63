//! Target names made safe, target URLs, and streaming verification of target bytes.
//!
//! An image is trusted only through [`VerifiedImage`], which [`TargetVerifier::finish`] alone
//! builds after the length and every known hash matched the signed target.

use std::fmt;

use sha2::{Digest, Sha256, Sha512};

use crate::metadata::TargetFile;

/// A target name that is safe to use in a URL or below a directory: no absolute paths, no
/// `.`/`..` components, no empty components, no backslashes, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetName(String);

/// Why a target name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsafe target name {name:?}: {reason}")]
pub struct TargetNameError {
    /// The name.
    pub name: String,
    /// Why.
    pub reason: &'static str,
}

/// Longest target name accepted.
pub const MAX_TARGET_NAME: usize = 512;

impl TargetName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, TargetNameError> {
        let err = |reason| TargetNameError {
            name: name.into(),
            reason,
        };
        if name.is_empty() {
            return Err(err("empty"));
        }
        if name.len() > MAX_TARGET_NAME {
            return Err(err("too long"));
        }
        if name.starts_with('/') {
            return Err(err("absolute path"));
        }
        if name.contains('\\') {
            return Err(err("backslash"));
        }
        if name.chars().any(char::is_control) {
            return Err(err("control character"));
        }
        for part in name.split('/') {
            match part {
                "" => return Err(err("empty path component")),
                "." | ".." => return Err(err("dot path component")),
                _ => {}
            }
        }
        Ok(TargetName(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file's path below the repository's `targets/` in a consistent-snapshot
    /// repository: `dir/<sha256>.<basename>`, each component percent-encoded.
    pub fn consistent_path(&self, sha256_hex: &str) -> String {
        let (dir, base) = match self.0.rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, self.0.as_str()),
        };
        let file = format!("{sha256_hex}.{base}");
        match dir {
            Some(d) => {
                let mut out: Vec<String> = d.split('/').map(percent_encode).collect();
                out.push(percent_encode(&file));
                out.join("/")
            }
            None => percent_encode(&file),
        }
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why target bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// More bytes arrived than the signed length.
    #[error("target is longer than its signed length {expected}")]
    TooLong {
        /// Signed length.
        expected: u64,
    },
    /// The stream ended early.
    #[error("target ended at {got} bytes, signed length is {expected}")]
    TooShort {
        /// Signed length.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// A hash differs.
    #[error("target {algorithm} mismatch: signed {expected}, got {got}")]
    HashMismatch {
        /// Algorithm.
        algorithm: &'static str,
        /// Signed hash.
        expected: String,
        /// Computed hash.
        got: String,
    },
    /// The signed target lists no hash we can check.
    #[error("target lists no sha256 or sha512 hash")]
    NoKnownHash,
}

/// Hashes target bytes as they stream past, within the signed length.
pub struct TargetVerifier {
    expected_len: u64,
    seen: u64,
    sha256: Option<(String, Sha256)>,
    sha512: Option<(String, Sha512)>,
}

impl TargetVerifier {
    /// Starts verifying against a signed target.
    pub fn new(file: &TargetFile) -> Result<Self, TargetError> {
        let sha256 = file
            .hashes
            .get("sha256")
            .map(|h| (h.to_ascii_lowercase(), Sha256::new()));
        let sha512 = file
            .hashes
            .get("sha512")
            .map(|h| (h.to_ascii_lowercase(), Sha512::new()));
        if sha256.is_none() && sha512.is_none() {
            return Err(TargetError::NoKnownHash);
        }
        Ok(TargetVerifier {
            expected_len: file.length,
            seen: 0,
            sha256,
            sha512,
        })
    }

    /// Bytes seen so far.
    pub fn position(&self) -> u64 {
        self.seen
    }

    /// Feeds the next chunk; refuses it whole if it would pass the signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), TargetError> {
        let next = self.seen.saturating_add(chunk.len() as u64);
        if next > self.expected_len {
            return Err(TargetError::TooLong {
                expected: self.expected_len,
            });
        }
        self.seen = next;
        if let Some((_, h)) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some((_, h)) = &mut self.sha512 {
            h.update(chunk);
        }
        Ok(())
    }

    /// Checks the length and every known hash.
    pub fn finish(self) -> Result<VerifiedImage, TargetError> {
        if self.seen != self.expected_len {
            return Err(TargetError::TooShort {
                expected: self.expected_len,
                got: self.seen,
            });
        }
        let mut sha256_hex = None;
        if let Some((want, h)) = self.sha256 {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(TargetError::HashMismatch {
                    algorithm: "sha256",
                    expected: want,
                    got,
                });
            }
            sha256_hex = Some(got);
        }
        if let Some((want, h)) = self.sha512 {
            let got = hex::encode(h.finalize());
            if got != want {
                return Err(TargetError::HashMismatch {
                    algorithm: "sha512",
                    expected: want,
                    got,
                });
            }
        }
        Ok(VerifiedImage {
            length: self.seen,
            sha256: sha256_hex,
        })
    }
}

/// Proof that a stream of bytes matched a signed target. Built only by
/// [`TargetVerifier::finish`]; code that switches a boot slot takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    length: u64,
    sha256: Option<String>,
}

impl VerifiedImage {
    /// Verified length.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Verified SHA-256, if the target listed one.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn target(data: &[u8]) -> TargetFile {
        TargetFile {
            length: data.len() as u64,
            hashes: BTreeMap::from([
                ("sha256".into(), hex::encode(Sha256::digest(data))),
                ("sha512".into(), hex::encode(Sha512::digest(data))),
            ]),
            custom: None,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn path_traversal_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            "a/./b",
            "a\nb",
            "a/",
        ] {
            assert!(TargetName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TargetName::new("firmware/v1.2/img.bin").is_ok());
    }

    #[test]
    fn consistent_path_prefixes_basename() {
        let n = TargetName::new("fw/app 1.bin").unwrap();
        assert_eq!(n.consistent_path("ab"), "fw/ab.app%201.bin");
    }

    #[test]
    fn streaming_verification() {
        let data = b"firmware image bytes";
        let mut v = TargetVerifier::new(&target(data)).unwrap();
        v.update(&data[..5]).unwrap();
        v.update(&data[5..]).unwrap();
        let ok = v.finish().unwrap();
        assert_eq!(ok.length(), data.len() as u64);

        let mut v = TargetVerifier::new(&target(data)).unwrap();
        assert!(matches!(
            v.update(&[0; 64]),
            Err(TargetError::TooLong { .. })
        ));

        let mut v = TargetVerifier::new(&target(data)).unwrap();
        v.update(&data[..3]).unwrap();
        assert!(matches!(v.finish(), Err(TargetError::TooShort { .. })));

        let mut evil = data.to_vec();
        evil[0] ^= 1;
        let mut v = TargetVerifier::new(&target(data)).unwrap();
        v.update(&evil).unwrap();
        assert!(matches!(
            v.finish(),
            Err(TargetError::HashMismatch {
                algorithm: "sha256",
                ..
            })
        ));
    }
}
