//! Who is on the other end of a TLS connection.
//!
//! A device proves its identity with a client certificate issued by the device CA (see
//! [`crate::pki`]). rustls has already verified the chain and the clientAuth EKU by the
//! time this module sees the certificate; here we only read the identity out of the leaf:
//! the subject common name is the device id, and the SHA-256 of the leaf's DER is a
//! fingerprint that routes can pin (a re-enrolled device gets a new fingerprint).
//!
//! This module does NOT decide whether the device is accepted, rejected or decommissioned:
//! that is the store's job, keyed by [`PeerIdentity::device_id`].

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest accepted device id, in bytes (the X.520 upper bound for a common name).
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// The verified identity of a TLS peer that presented a device certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The device id: the subject common name of the leaf certificate.
    pub device_id: String,
    /// Lowercase hex SHA-256 of the leaf certificate's DER encoding.
    pub cert_sha256: String,
}

/// Why no identity could be read from a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer presented an empty certificate chain.
    #[error("read peer identity: empty certificate chain")]
    EmptyChain,
    /// The leaf certificate is not valid DER X.509.
    #[error("parse leaf certificate: {reason}")]
    Parse {
        /// What the parser reported.
        reason: String,
    },
    /// The leaf's subject has no common name.
    #[error("read device id: certificate subject has no common name")]
    MissingCommonName,
    /// The leaf's subject has more than one common name, so the device id is ambiguous.
    #[error("read device id: certificate subject has {count} common names, expected 1")]
    MultipleCommonNames {
        /// How many common names the subject holds.
        count: usize,
    },
    /// The common name is not a string type that decodes to UTF-8.
    #[error("read device id: common name is not a UTF-8 string")]
    CommonNameNotString,
    /// The common name is not an acceptable device id.
    #[error("read device id: {0}")]
    InvalidDeviceId(#[from] DeviceIdError),
}

/// Why a string is not an acceptable device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceIdError {
    /// The id is empty.
    #[error("device id is empty")]
    Empty,
    /// The id is longer than [`MAX_DEVICE_ID_LEN`].
    #[error("device id is {len} bytes long, at most {MAX_DEVICE_ID_LEN} allowed")]
    TooLong {
        /// The actual length in bytes.
        len: usize,
    },
    /// The id holds a character outside `[A-Za-z0-9._-]`, or does not start with a letter
    /// or digit.
    #[error("device id {id:?} must be [A-Za-z0-9._-] starting with a letter or digit")]
    BadCharacter {
        /// The rejected id (already known to be at most [`MAX_DEVICE_ID_LEN`] bytes).
        id: String,
    },
}

/// Checks that `id` is a device id we are willing to put in a certificate and use as a
/// store key: 1 to 64 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit (so it
/// can never be `.`, `..` or look like a command-line option).
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong { len: id.len() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let starts_well = id.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !starts_well || !id.chars().all(allowed) {
        return Err(DeviceIdError::BadCharacter { id: id.to_owned() });
    }
    Ok(())
}

impl PeerIdentity {
    /// Reads the identity from a verified peer chain (leaf first, as rustls gives it).
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
        Self::from_certificate(leaf)
    }

    /// Reads the identity from one DER certificate. The caller must have verified it.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (rest, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| IdentityError::Parse {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(IdentityError::Parse {
                reason: format!("{} trailing bytes after the certificate", rest.len()),
            });
        }
        let device_id = common_name(&cert)?;
        validate_device_id(&device_id)?;
        Ok(Self {
            device_id,
            cert_sha256: hex::encode(Sha256::digest(der.as_ref())),
        })
    }
}

/// The single common name of the subject.
fn common_name(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    match names.as_slice() {
        [] => Err(IdentityError::MissingCommonName),
        [one] => one
            .as_str()
            .map(str::to_owned)
            .map_err(|_| IdentityError::CommonNameNotString),
        many => Err(IdentityError::MultipleCommonNames { count: many.len() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::pki::DevPki;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use rustls_pki_types::pem::PemObject;

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn reads_device_id_and_fingerprint_from_issued_cert() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let (cert_pem, _key) = pki.issue_device_cert("dev-0042", 30).unwrap();
        let der = der_of(&cert_pem);
        let id = PeerIdentity::from_chain(std::slice::from_ref(&der)).unwrap();
        assert_eq!(id.device_id, "dev-0042");
        assert_eq!(id.cert_sha256, hex::encode(Sha256::digest(der.as_ref())));
        assert_eq!(id.cert_sha256.len(), 64);
    }

    #[test]
    fn two_certs_for_one_device_have_different_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let a = PeerIdentity::from_certificate(&der_of(&pki.issue_device_cert("d1", 1).unwrap().0));
        let b = PeerIdentity::from_certificate(&der_of(&pki.issue_device_cert("d1", 1).unwrap().0));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.device_id, b.device_id);
        assert_ne!(a.cert_sha256, b.cert_sha256);
    }

    fn self_signed_with(dn: &[(DnType, &str)]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, v) in dn {
            params.distinguished_name.push(ty.clone(), *v);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn rejects_missing_common_name() {
        let der = self_signed_with(&[(DnType::OrganizationName, "acme")]);
        let err = PeerIdentity::from_certificate(&der).unwrap_err();
        assert!(matches!(err, IdentityError::MissingCommonName), "{err}");
    }

    #[test]
    fn rejects_bad_device_id_in_cert() {
        let der = self_signed_with(&[(DnType::CommonName, "../etc")]);
        let err = PeerIdentity::from_certificate(&der).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::InvalidDeviceId(DeviceIdError::BadCharacter { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_garbage_and_empty_chain() {
        let err = PeerIdentity::from_certificate(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]));
        assert!(matches!(err, Err(IdentityError::Parse { .. })));
        assert!(matches!(
            PeerIdentity::from_chain(&[]),
            Err(IdentityError::EmptyChain)
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = self_signed_with(&[(DnType::CommonName, "d1")]).to_vec();
        bytes.push(0);
        let err = PeerIdentity::from_certificate(&CertificateDer::from(bytes)).unwrap_err();
        assert!(matches!(err, IdentityError::Parse { .. }), "{err}");
    }

    #[test]
    fn device_id_rules() {
        for ok in ["a", "dev-1", "A.b_c-9", &"x".repeat(MAX_DEVICE_ID_LEN)] {
            assert_eq!(validate_device_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_device_id(""), Err(DeviceIdError::Empty));
        assert_eq!(
            validate_device_id(&"x".repeat(MAX_DEVICE_ID_LEN + 1)),
            Err(DeviceIdError::TooLong {
                len: MAX_DEVICE_ID_LEN + 1
            })
        );
        for bad in [".", "..", "-rf", "_x", "a b", "a/b", "é", "a\0"] {
            assert!(
                matches!(
                    validate_device_id(bad),
                    Err(DeviceIdError::BadCharacter { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
