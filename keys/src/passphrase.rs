//! Where passphrases come from, and how they are held.
//!
//! In order: `--passphrase-file` (first line, one trailing newline removed), the
//! `OTA_KEY_PASSPHRASE` environment variable, then an interactive prompt on the terminal.
//! A passphrase is never logged or printed: [`Passphrase`] has no `Display`, its `Debug` is
//! redacted, and its memory is zeroized on drop.

use std::fmt;
use std::fs;
use std::path::Path;

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The environment variable holding a passphrase (for scripts; a file is safer, since the
/// environment of a process can be read by its user's other processes).
pub const PASSPHRASE_ENV: &str = "OTA_KEY_PASSPHRASE";

/// A passphrase, zeroized on drop.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; an empty one is refused (it would encrypt keys with nothing).
    pub fn new(s: String) -> Result<Self> {
        let s = Zeroizing::new(s);
        if s.is_empty() {
            return Err(Error::Passphrase {
                reason: "empty passphrase".into(),
            });
        }
        Ok(Passphrase(s))
    }

    /// A random passphrase (32 random bytes, hex), for development repositories.
    pub fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(raw.as_mut());
        Passphrase(Zeroizing::new(hex::encode(raw.as_ref())))
    }

    /// The bytes fed to the KDF.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Reads a passphrase file: its content with one trailing newline removed.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(
            fs::read_to_string(path).map_err(|e| Error::io("read passphrase file", path, e))?,
        );
        let line = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Self::new(line.to_string()).map_err(|_| Error::Passphrase {
            reason: format!("passphrase file {} is empty", path.display()),
        })
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why a passphrase is asked for: a new key is encrypted with it (the prompt asks twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Decrypting existing keys.
    Unlock,
    /// Encrypting new keys.
    NewKey,
}

/// Gets a passphrase from `file`, else the environment, else the terminal.
pub fn obtain(file: Option<&Path>, purpose: Purpose) -> Result<Passphrase> {
    if let Some(path) = file {
        return Passphrase::from_file(path);
    }
    if let Some(v) = std::env::var_os(PASSPHRASE_ENV) {
        let v = Zeroizing::new(v.into_string().map_err(|_| Error::Passphrase {
            reason: format!("{PASSPHRASE_ENV} is not valid UTF-8"),
        })?);
        return Passphrase::new(v.to_string()).map_err(|_| Error::Passphrase {
            reason: format!("{PASSPHRASE_ENV} is set but empty"),
        });
    }
    prompt(purpose)
}

fn prompt(purpose: Purpose) -> Result<Passphrase> {
    let no_tty = |e: std::io::Error| {
        Error::Passphrase {
        reason: format!(
            "no --passphrase-file given, {PASSPHRASE_ENV} unset, and cannot prompt on a terminal: {e}"
        ),
    }
    };
    let first =
        Zeroizing::new(rpassword::prompt_password("ota-keys passphrase: ").map_err(no_tty)?);
    if purpose == Purpose::NewKey {
        let again =
            Zeroizing::new(rpassword::prompt_password("repeat passphrase: ").map_err(no_tty)?);
        if *first != *again {
            return Err(Error::Passphrase {
                reason: "the two passphrases differ".into(),
            });
        }
    }
    Passphrase::new(first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_strips_one_newline_and_refuses_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pass");
        fs::write(&p, "secret words\n\n").unwrap();
        assert_eq!(
            Passphrase::from_file(&p).unwrap().as_bytes(),
            b"secret words\n"
        );
        fs::write(&p, "secret\r\n").unwrap();
        assert_eq!(Passphrase::from_file(&p).unwrap().as_bytes(), b"secret");
        fs::write(&p, "\n").unwrap();
        assert!(matches!(
            Passphrase::from_file(&p),
            Err(Error::Passphrase { .. })
        ));
        assert!(matches!(
            Passphrase::from_file(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn debug_is_redacted_and_generated_ones_differ() {
        let p = Passphrase::new("hunter2".into()).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_ne!(
            Passphrase::generate().as_bytes(),
            Passphrase::generate().as_bytes()
        );
        assert_eq!(Passphrase::generate().as_bytes().len(), 64);
    }
}
