//! Device identities for a simulated fleet: cheap, deterministic, and signed by the
//! server's own development device CA, so that the server sees real mutual-TLS devices.
//!
//! Device `i` of seed `s` always gets the same P-256 key (SHA-256 of `s` and `i`, as a
//! scalar) and the same certificate bytes: fixed validity, a serial derived from the key,
//! and a deterministic ECDSA signature by the CA key. Identical certificate bytes matter:
//! the server pins each device's certificate fingerprint, so a fleet registered by one run
//! polls on the server's fast path in the next run.
//!
//! Cost: about 100 µs per device, made on first use (or ahead of a timed run); nothing is
//! written to disk. Both base-point multiplications per device (its public key, and the
//! nonce point of the CA's signature) run in aws-lc, 10x faster than the pure-Rust `p256`
//! arithmetic, which only does the scalar algebra of the signature.

use std::path::{Path, PathBuf};

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::{Field, PrimeField};
use p256::pkcs8::DecodePrivateKey;
use p256::{FieldBytes, Scalar, U256};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, RemoteKeyPair, SerialNumber, SignatureAlgorithm, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Longest id prefix accepted: leaves room for `-` and the index in a 64-byte device id.
pub const MAX_PREFIX_LEN: usize = 40;

/// Why an identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A CA file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A CA file holds no usable certificate or P-256 key.
    #[error("load {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Encoding a key or signing a certificate failed.
    #[error("make identity of device {index}: {reason}")]
    Make {
        /// The device index.
        index: u64,
        /// What failed.
        reason: String,
    },
    /// The id prefix cannot make valid device ids.
    #[error("id prefix {0:?}: use 1 to {MAX_PREFIX_LEN} of [A-Za-z0-9._-], starting with a letter or digit")]
    Prefix(String),
}

/// One simulated device: its id (the certificate's CN), certificate and private key.
#[derive(Debug)]
pub struct Identity {
    /// Device id.
    pub id: String,
    /// Leaf certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Private key, PKCS#8 DER.
    pub key: PrivateKeyDer<'static>,
}

/// The device CA of a server's development PKI (`<data dir>/pki/device-ca.{crt,key}`).
pub struct DeviceCa {
    issuer: rcgen::Certificate,
    key: KeyPair,
    seed: String,
    prefix: String,
}

impl std::fmt::Debug for DeviceCa {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa")
            .field("seed", &self.seed)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Checks that `prefix-<index>` is always a valid device id.
pub fn validate_prefix(prefix: &str) -> Result<(), IdentityError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Prefix(prefix.to_owned()))
    }
}

/// The device id of device `index`.
pub fn device_id(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index:07}")
}

impl DeviceCa {
    /// Loads `device-ca.crt` and `device-ca.key` from a server's PKI directory.
    pub fn load(pki_dir: &Path, seed: &str, prefix: &str) -> Result<Self, IdentityError> {
        validate_prefix(prefix)?;
        let crt_path = pki_dir.join("device-ca.crt");
        let key_path = pki_dir.join("device-ca.key");
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| IdentityError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let (crt_pem, key_pem) = (read(&crt_path)?, read(&key_path)?);
        let load_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: String| IdentityError::Load { path, reason: e }
        };
        let secret = p256::SecretKey::from_pkcs8_pem(&key_pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(&key_pem))
            .map_err(|e| load_err(&key_path)(format!("not a P-256 private key: {e}")))?;
        let signer = DeterministicSigner::new(&secret).map_err(load_err(&key_path))?;
        let key = KeyPair::from_remote(Box::new(signer))
            .map_err(|e| load_err(&key_path)(e.to_string()))?;
        let der = CertificateDer::from_pem_slice(crt_pem.as_bytes())
            .map_err(|e| load_err(&crt_path)(e.to_string()))?;
        // rcgen signs with a `Certificate` as issuer: rebuild it from the stored CA's
        // subject and key identifier, as the server does (pki.rs).
        let issuer = CertificateParams::from_ca_cert_der(&der)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| load_err(&crt_path)(e.to_string()))?;
        Ok(DeviceCa {
            issuer,
            key,
            seed: seed.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The id of device `index`.
    pub fn device_id(&self, index: u64) -> String {
        device_id(&self.prefix, index)
    }

    /// Makes the identity of device `index` (same bytes for the same seed and index).
    pub fn identity(&self, index: u64) -> Result<Identity, IdentityError> {
        let make = |reason: String| IdentityError::Make { index, reason };
        let scalar =
            derive_scalar(&self.seed, index).ok_or_else(|| make("no valid scalar".into()))?;
        let key = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &scalar.to_repr())
            .map_err(|e| make(format!("device key: {e}")))?;
        let spki: PublicKeyX509Der<'static> = key
            .compute_public_key()
            .and_then(|p| p.as_der())
            .map_err(|e| make(format!("device public key: {e}")))?;
        let pkcs8: Pkcs8V1Der<'static> = key
            .as_der()
            .map_err(|e| make(format!("device key encoding: {e}")))?;
        let public =
            SubjectPublicKeyInfo::from_der(spki.as_ref()).map_err(|e| make(e.to_string()))?;
        let id = self.device_id(index);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        params.distinguished_name = dn;
        // Fixed validity, so that the certificate bytes do not depend on when they are made.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2044, 1, 1);
        let mut serial: [u8; 16] = Sha256::digest(spki.as_ref())[..16]
            .try_into()
            .map_err(|_| make("serial".into()))?;
        // A positive, minimally encoded DER integer.
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&public, &self.issuer, &self.key)
            .map_err(|e| make(e.to_string()))?;
        Ok(Identity {
            id,
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec())),
        })
    }
}

/// The private scalar of device `index`: SHA-256 over a label, the seed and the index,
/// retried with a counter in the (2^-32-likely) case that it is not a valid scalar.
fn derive_scalar(seed: &str, index: u64) -> Option<Scalar> {
    (0u32..64).find_map(|counter| {
        let mut h = Sha256::new();
        h.update(b"ota-loadgen device key v1\0");
        h.update((seed.len() as u64).to_le_bytes());
        h.update(seed.as_bytes());
        h.update(index.to_le_bytes());
        h.update(counter.to_le_bytes());
        nonzero_scalar(&h.finalize())
    })
}

/// The scalar of 32 big-endian bytes, if it is in 1..n.
fn nonzero_scalar(bytes: &FieldBytes) -> Option<Scalar> {
    Option::<Scalar>::from(Scalar::from_repr(*bytes)).filter(|s| !bool::from(s.is_zero()))
}

/// The x coordinate of `k`·G, computed by aws-lc.
fn base_mul_x(k: &Scalar) -> Result<FieldBytes, String> {
    let key = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &k.to_repr())
        .map_err(|e| e.to_string())?;
    let point = key.compute_public_key().map_err(|e| e.to_string())?;
    // Uncompressed SEC1 point: 0x04, x (32 bytes), y (32 bytes).
    match point.as_ref() {
        [0x04, rest @ ..] if rest.len() == 64 => {
            let mut x = FieldBytes::default();
            x.copy_from_slice(&rest[..32]);
            Ok(x)
        }
        other => Err(format!("unexpected public point of {} bytes", other.len())),
    }
}

/// The CA key as an rcgen signer with deterministic ECDSA P-256/SHA-256, so that a
/// device's certificate is the same every time it is made (aws-lc's ECDSA is randomized).
///
/// The nonce is a hash of a label, the private key, the message digest and a counter: a
/// secret, message-bound nonce as in RFC 6979 and EdDSA, never reused for two messages.
/// Only `k`·G runs in aws-lc; the rest is the textbook `s = k⁻¹(z + r·d) mod n`.
/// The tests check every signature with the `p256` crate's verifier.
struct DeterministicSigner {
    d: Scalar,
    public: Vec<u8>,
}

impl DeterministicSigner {
    fn new(secret: &p256::SecretKey) -> Result<Self, String> {
        let d = *secret.to_nonzero_scalar();
        let key = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &d.to_repr())
            .map_err(|e| e.to_string())?;
        let public = key
            .compute_public_key()
            .map_err(|e| e.to_string())?
            .as_ref()
            .to_vec();
        Ok(DeterministicSigner { d, public })
    }

    fn sign_digest(&self, digest: &FieldBytes) -> Result<p256::ecdsa::Signature, String> {
        let z = <Scalar as Reduce<U256>>::reduce_bytes(digest);
        for counter in 0u32..64 {
            let mut h = Sha256::new();
            h.update(b"ota-loadgen ecdsa nonce v1\0");
            h.update(self.d.to_repr());
            h.update(digest);
            h.update(counter.to_le_bytes());
            let Some(k) = nonzero_scalar(&h.finalize()) else {
                continue;
            };
            let r = <Scalar as Reduce<U256>>::reduce_bytes(&base_mul_x(&k)?);
            let Some(k_inv) = Option::<Scalar>::from(k.invert()) else {
                continue;
            };
            let s = k_inv * (z + r * self.d);
            if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
                continue;
            }
            return p256::ecdsa::Signature::from_scalars(r, s).map_err(|e| e.to_string());
        }
        Err("no usable nonce".into())
    }
}

impl RemoteKeyPair for DeterministicSigner {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = Sha256::digest(msg);
        let sig = self
            .sign_digest(&digest)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// Writes a device CA like the server's (`device-ca.crt`, `device-ca.key`) and a
    /// server CA and certificate for 127.0.0.1 (`ca.crt`, `server.crt`, `server.key`).
    pub(crate) fn write_pki(dir: &Path) {
        let ca = |cn: &str| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            (p.self_signed(&key).unwrap(), key)
        };
        let (dca, dkey) = ca("device ca");
        std::fs::write(dir.join("device-ca.crt"), dca.pem()).unwrap();
        std::fs::write(dir.join("device-ca.key"), dkey.serialize_pem()).unwrap();
        let (sca, skey) = ca("server ca");
        std::fs::write(dir.join("ca.crt"), sca.pem()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &sca, &skey).unwrap();
        std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    }

    fn verify_client(dir: &Path, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(dir.join("device-ca.crt")).unwrap();
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_client_cert(cert, &[], now).map(|_| ())
    }

    #[test]
    fn identities_are_deterministic_and_chain_to_the_device_ca() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let ca = DeviceCa::load(dir.path(), "seed-1", "lg").unwrap();
        let a = ca.identity(7).unwrap();
        assert_eq!(a.id, "lg-0000007");
        verify_client(dir.path(), &a.cert).unwrap();
        // A second load (another run) makes byte-identical certificates and keys.
        let again = DeviceCa::load(dir.path(), "seed-1", "lg")
            .unwrap()
            .identity(7)
            .unwrap();
        assert_eq!(a.cert, again.cert);
        assert_eq!(a.key.secret_der(), again.key.secret_der());
        // Other indexes and other seeds give other keys.
        let b = ca.identity(8).unwrap();
        assert_ne!(a.key.secret_der(), b.key.secret_der());
        let other = DeviceCa::load(dir.path(), "seed-2", "lg")
            .unwrap()
            .identity(7)
            .unwrap();
        assert_ne!(a.key.secret_der(), other.key.secret_der());
    }

    #[test]
    fn ca_signatures_verify_and_are_deterministic() {
        use p256::ecdsa::signature::Verifier;
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let signer = DeterministicSigner::new(&secret).unwrap();
        let verifying = p256::ecdsa::VerifyingKey::from(secret.public_key());
        assert_eq!(
            signer.public_key(),
            verifying.to_encoded_point(false).as_bytes()
        );
        for i in 0..32u32 {
            let msg = format!("message {i}");
            let der = signer.sign(msg.as_bytes()).unwrap();
            let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
            verifying.verify(msg.as_bytes(), &sig).unwrap();
            assert!(verifying.verify(b"another message", &sig).is_err());
            assert_eq!(der, signer.sign(msg.as_bytes()).unwrap());
        }
        assert_ne!(signer.sign(b"a").unwrap(), signer.sign(b"b").unwrap());
    }

    #[test]
    fn foreign_device_ca_does_not_verify() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_pki(d1.path());
        write_pki(d2.path());
        let id = DeviceCa::load(d1.path(), "s", "lg")
            .unwrap()
            .identity(1)
            .unwrap();
        assert!(verify_client(d2.path(), &id.cert).is_err());
    }

    #[test]
    fn bad_prefixes_and_missing_files_are_errors() {
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        validate_prefix("fleet_1.a-b").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = DeviceCa::load(dir.path(), "s", "lg").unwrap_err();
        assert!(err.to_string().contains("device-ca.crt"), "{err}");
        std::fs::write(dir.path().join("device-ca.crt"), "x").unwrap();
        std::fs::write(dir.path().join("device-ca.key"), "not a key").unwrap();
        let err = DeviceCa::load(dir.path(), "s", "lg").unwrap_err();
        assert!(matches!(err, IdentityError::Load { .. }), "{err}");
    }
}
