//! Development PKI: the certificates a server needs to run out of the box.
//!
//! [`DevPki::load_or_create`] keeps everything in one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the server CA, which devices and tools pin |
//! | `server.crt`, `server.key` | the TLS server certificate (SANs `localhost`, `127.0.0.1`, `::1`) |
//! | `device-ca.crt`, `device-ca.key` | the device CA: issues client certificates to devices |
//!
//! The device CA is separate from the server CA so that a device certificate can never
//! pass as a server certificate (and vice versa), and so that the device CA can be rotated
//! or moved to an HSM without touching the server's identity.
//!
//! Keys are ECDSA P-256. Key files are created `0600`, every file is written atomically
//! and durably through [`crate::fsutil`], and in each pair the key is written before the
//! certificate: a certificate file on disk means its key is there too. The first call
//! creates what is missing; later calls reuse the files (the server certificate is
//! re-issued when it no longer chains to the CA or is within 30 days of expiry).
//!
//! This is NOT a production CA: there is no revocation list and no HSM. Revocation of
//! devices is enforced by the server's device registry, not by certificates.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::{self, FsError};
use crate::identity::{validate_device_id, DeviceIdError};
use crate::tls::{MinTlsVersion, TlsSettings};

/// Validity of a device certificate signed from an enrollment CSR.
pub const DEFAULT_DEVICE_CERT_DAYS: u32 = 365;
/// Longest validity [`DevPki::issue_device_cert`] accepts, in days.
pub const MAX_DEVICE_CERT_DAYS: u32 = 10_000;

const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 365;
/// Re-issue the server certificate when it has less than this left.
const SERVER_RENEW_BEFORE_DAYS: i64 = 30;
/// Backdate `notBefore` so that a device whose clock is a little behind accepts the cert.
const BACKDATE: Duration = Duration::hours(1);
/// The names the development server certificate is valid for.
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const CA: &str = "ca";
const SERVER: &str = "server";
const DEVICE_CA: &str = "device-ca";

/// A failed PKI operation, with the file or input it concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The PKI directory could not be created.
    #[error("create PKI directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PKI file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PKI file could not be written durably.
    #[error("write PKI file: {0}")]
    Write(#[from] FsError),
    /// A key file holds no usable private key.
    #[error("load private key {path}: {source}")]
    LoadKey {
        /// The key file.
        path: PathBuf,
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate file holds no usable certificate.
    #[error("load certificate {path}: {reason}")]
    LoadCert {
        /// The certificate file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A certificate and the key stored next to it do not belong together.
    #[error("certificate {cert} does not match key {key}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Generating a key or signing a certificate failed.
    #[error("{op}: {source}")]
    Generate {
        /// What was being made ("sign device certificate", ...).
        op: &'static str,
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// The requested device id cannot go into a certificate.
    #[error("issue device certificate: {0}")]
    DeviceId(#[from] DeviceIdError),
    /// The requested validity is out of range.
    #[error(
        "issue device certificate: validity of {days} days, expected 1..={MAX_DEVICE_CERT_DAYS}"
    )]
    Validity {
        /// The requested number of days.
        days: u32,
    },
    /// The CSR is not a PEM/DER certification request.
    #[error("parse CSR: {reason}")]
    CsrParse {
        /// What the parser reported.
        reason: String,
    },
    /// The CSR's self-signature does not verify: the requester does not hold the key.
    #[error("verify CSR signature: signature does not match the requested public key")]
    CsrSignature,
    /// The CSR's public key is of a type we do not issue certificates for.
    #[error(
        "sign CSR: unsupported public key algorithm {oid} (expected ECDSA P-256/P-384 or Ed25519)"
    )]
    CsrKeyAlgorithm {
        /// The algorithm OID of the subject public key.
        oid: String,
    },
}

/// The development PKI: server CA, server certificate and device CA, backed by files.
pub struct DevPki {
    dir: PathBuf,
    ca: Authority,
    device_ca: Authority,
}

/// A CA that can sign: its PEM as on disk, and rcgen's view of it for signing.
struct Authority {
    cert_pem: String,
    issuer: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevPki {
    // Hand-written so that key material can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").field("dir", &self.dir).finish()
    }
}

impl DevPki {
    /// Loads the PKI from `dir`, creating the directory and whatever is missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        create_private_dir(dir)?;
        let (ca, ca_created) = Authority::load_or_create(dir, CA, "ota development CA")?;
        if ca_created || !server_cert_usable(dir, &ca)? {
            issue_server_cert(dir, &ca)?;
        }
        let (device_ca, _) =
            Authority::load_or_create(dir, DEVICE_CA, "ota development device CA")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            device_ca,
        })
    }

    /// The directory holding the PKI files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server CA certificate (PEM): what clients pin.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Path of `ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        cert_path(&self.dir, CA)
    }

    /// Path of `server.crt`.
    pub fn server_cert_path(&self) -> PathBuf {
        cert_path(&self.dir, SERVER)
    }

    /// Path of `server.key`.
    pub fn server_key_path(&self) -> PathBuf {
        key_path(&self.dir, SERVER)
    }

    /// The device CA certificate (PEM): what the server trusts for client certificates.
    pub fn device_ca_cert_pem(&self) -> &str {
        &self.device_ca.cert_pem
    }

    /// Path of `device-ca.crt`.
    pub fn device_ca_cert_path(&self) -> PathBuf {
        cert_path(&self.dir, DEVICE_CA)
    }

    /// TLS settings (TLS 1.3 only) that serve with this PKI's server certificate and trust
    /// its device CA for client certificates.
    pub fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            cert_path: self.server_cert_path(),
            key_path: self.server_key_path(),
            device_ca_path: self.device_ca_cert_path(),
            min_version: MinTlsVersion::Tls13,
        }
    }

    /// Factory provisioning: makes a new P-256 key for `device_id` and a client certificate
    /// for it, valid for `days`. Returns `(cert_pem, key_pem)`; the key is not stored here.
    pub fn issue_device_cert(
        &self,
        device_id: &str,
        days: u32,
    ) -> Result<(String, String), PkiError> {
        let params = device_params(device_id, days)?;
        let key = generate_key("generate device key")?;
        let cert = params
            .signed_by(&key, &self.device_ca.issuer, &self.device_ca.key)
            .map_err(generate("sign device certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Enrollment: signs a device's CSR (PEM) for [`DEFAULT_DEVICE_CERT_DAYS`].
    ///
    /// Only the CSR's public key is used, after its self-signature verifies (proof that
    /// the requester holds the private key). Everything else the CSR asks for (subject,
    /// SANs, key usages) is ignored: the subject CN is forced to `device_id` and the
    /// certificate gets exactly the clientAuth EKU.
    pub fn sign_device_csr(&self, csr_pem: &str, device_id: &str) -> Result<String, PkiError> {
        let params = device_params(device_id, DEFAULT_DEVICE_CERT_DAYS)?;
        let csr_der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
                PkiError::CsrParse {
                    reason: e.to_string(),
                }
            })?;
        let public_key = verified_csr_key(&csr_der)?;
        let cert = params
            .signed_by(&public_key, &self.device_ca.issuer, &self.device_ca.key)
            .map_err(generate("sign device CSR"))?;
        Ok(cert.pem())
    }
}

impl Authority {
    /// Loads `<name>.crt`/`<name>.key`, or creates a new CA if the certificate is missing.
    /// Returns whether it was created.
    fn load_or_create(dir: &Path, name: &str, cn: &str) -> Result<(Self, bool), PkiError> {
        let crt = cert_path(dir, name);
        if crt.exists() {
            return Ok((Self::load(dir, name)?, false));
        }
        tracing::info!(dir = %dir.display(), name, "creating development CA");
        let key = generate_key("generate CA or server key")?;
        let mut params = base_params(cn, Duration::days(CA_DAYS));
        // Path length 0: these CAs sign leaf certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = params
            .self_signed(&key)
            .map_err(generate("self-sign CA certificate"))?;
        let cert_pem = issuer.pem();
        write_pair(dir, name, &cert_pem, &key)?;
        Ok((
            Self {
                cert_pem,
                issuer,
                key,
            },
            true,
        ))
    }

    fn load(dir: &Path, name: &str) -> Result<Self, PkiError> {
        let (crt, key_file) = (cert_path(dir, name), key_path(dir, name));
        let cert_pem = read_string(&crt)?;
        let key = load_key(&key_file)?;
        let der = cert_der(&crt, &cert_pem)?;
        if !cert_matches_key(&crt, &der, &key)? {
            return Err(PkiError::KeyMismatch {
                cert: crt,
                key: key_file,
            });
        }
        // rcgen signs with a `Certificate` as issuer; rebuild one from the stored CA's
        // subject and key identifier (re-signing does not change either, so certificates
        // issued now chain to the stored `ca.crt`).
        let params = CertificateParams::from_ca_cert_der(&der).map_err(|e| PkiError::LoadCert {
            path: crt.clone(),
            reason: e.to_string(),
        })?;
        let issuer = params
            .self_signed(&key)
            .map_err(generate("rebuild CA issuer"))?;
        Ok(Self {
            cert_pem,
            issuer,
            key,
        })
    }
}

/// Whether `server.crt`/`server.key` exist, match, chain to `ca` and are not about to expire.
fn server_cert_usable(dir: &Path, ca: &Authority) -> Result<bool, PkiError> {
    let (crt, key_file) = (cert_path(dir, SERVER), key_path(dir, SERVER));
    if !crt.exists() || !key_file.exists() {
        return Ok(false);
    }
    let der = cert_der(&crt, &read_string(&crt)?)?;
    let key = load_key(&key_file)?;
    if !cert_matches_key(&crt, &der, &key)? {
        return Ok(false);
    }
    let ca_der = cert_der(&cert_path(dir, CA), &ca.cert_pem)?;
    let (cert, ca_cert) = (parse_cert(&crt, &der)?, parse_cert(&crt, &ca_der)?);
    let chains = cert.verify_signature(Some(ca_cert.public_key())).is_ok();
    let renew_at = OffsetDateTime::now_utc() + Duration::days(SERVER_RENEW_BEFORE_DAYS);
    let fresh = cert.validity().not_after.to_datetime() > renew_at;
    Ok(chains && fresh)
}

fn issue_server_cert(dir: &Path, ca: &Authority) -> Result<(), PkiError> {
    tracing::info!(dir = %dir.display(), "issuing development server certificate");
    let key = generate_key("generate CA or server key")?;
    let mut params = base_params("localhost", Duration::days(SERVER_DAYS));
    let sans = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())
        .map_err(generate("build server certificate names"))?;
    params.subject_alt_names = sans.subject_alt_names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &ca.issuer, &ca.key)
        .map_err(generate("sign server certificate"))?;
    write_pair(dir, SERVER, &cert.pem(), &key)
}

/// Leaf parameters for a device certificate: CN = device id, clientAuth only.
fn device_params(device_id: &str, days: u32) -> Result<CertificateParams, PkiError> {
    validate_device_id(device_id)?;
    if days == 0 || days > MAX_DEVICE_CERT_DAYS {
        return Err(PkiError::Validity { days });
    }
    let mut params = base_params(device_id, Duration::days(i64::from(days)));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parameters shared by every certificate: CN, validity from an hour ago, random serial.
fn base_params(cn: &str, valid_for: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
    // rcgen's default serial is a hash of the public key, so two certificates for one key
    // would share it; RFC 5280 wants serials unique per CA.
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive and full length
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

/// Parses a CSR, checks its self-signature and returns its public key.
fn verified_csr_key(
    der: &CertificateSigningRequestDer<'_>,
) -> Result<SubjectPublicKeyInfo, PkiError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|e| PkiError::CsrParse {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::CsrParse {
            reason: format!("{} trailing bytes after the CSR", rest.len()),
        });
    }
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    let unsupported = || PkiError::CsrKeyAlgorithm {
        oid: spki.algorithm.algorithm.to_id_string(),
    };
    let key = SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| unsupported())?;
    let alg = rcgen::PublicKeyData::algorithm(&key);
    let allowed = [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_ED25519,
    ];
    if !allowed.contains(&alg) {
        return Err(unsupported());
    }
    Ok(key)
}

/// Maps an rcgen failure to [`PkiError::Generate`] for the step `op`.
fn generate(op: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { op, source }
}

fn generate_key(op: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate(op))
}

/// Writes `<name>.key` (0600) then `<name>.crt`: a certificate on disk implies its key.
fn write_pair(dir: &Path, name: &str, cert_pem: &str, key: &KeyPair) -> Result<(), PkiError> {
    write_private(&key_path(dir, name), key.serialize_pem().as_bytes())?;
    fsutil::write_atomic(&cert_path(dir, name), cert_pem.as_bytes())?;
    Ok(())
}

/// Durable atomic write of secret bytes: the temp file is made 0600 before any byte of the
/// secret is in it, so the key is never readable by others, not even for a moment.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (mut file, tmp) = fsutil::create_temp(dir)?;
    let result = restrict(&file, &tmp)
        .and_then(|()| {
            file.write_all(bytes).map_err(|source| FsError {
                op: "write temp file",
                path: tmp.clone(),
                source,
            })
        })
        .and_then(|()| fsutil::persist(file, &tmp, path));
    if result.is_err() {
        // Best effort: the temp file is garbage now, and a startup sweep would remove it.
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}

fn restrict(file: &fs::File, path: &Path) -> Result<(), FsError> {
    let err = |source| FsError {
        op: "chmod 0600",
        path: path.to_path_buf(),
        source,
    };
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut perms = file.metadata().map_err(err)?.permissions();
    #[cfg(unix)]
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    file.set_permissions(perms).map_err(err)
}

/// Creates `dir` (0700 on Unix) if it does not exist; an existing directory is left as is.
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn load_key(path: &Path) -> Result<KeyPair, PkiError> {
    warn_if_readable_by_others(path);
    let pem = read_string(path)?;
    KeyPair::from_pem(&pem).map_err(|source| PkiError::LoadKey {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key file is accessible to group or others");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn cert_der(path: &Path, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::LoadCert {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::LoadCert {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Whether the certificate's subject public key is `key`'s public key.
fn cert_matches_key(path: &Path, der: &[u8], key: &KeyPair) -> Result<bool, PkiError> {
    let cert = parse_cert(path, der)?;
    Ok(cert.public_key().raw == key.public_key_der().as_slice())
}

fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.crt"))
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::identity::PeerIdentity;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::UnixTime;
    use std::sync::Arc;

    fn device_verifier(pki: &DevPki) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.device_ca_cert_pem().as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap()
    }

    /// Verifies `cert_pem` as a client certificate with webpki, as the TLS server would.
    fn verify_client(pki: &DevPki, cert_pem: &str) -> Result<(), rustls::Error> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        device_verifier(pki)
            .verify_client_cert(&der, &[], UnixTime::now())
            .map(|_| ())
    }

    fn read(path: PathBuf) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    #[test]
    fn creates_all_files_once_then_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pki");
        let first = DevPki::load_or_create(&root).unwrap();
        // Sorted, to compare with the directory listing.
        let names = [
            "ca.crt",
            "ca.key",
            "device-ca.crt",
            "device-ca.key",
            "server.crt",
            "server.key",
        ];
        let before: Vec<Vec<u8>> = names.iter().map(|n| read(root.join(n))).collect();
        let second = DevPki::load_or_create(&root).unwrap();
        let after: Vec<Vec<u8>> = names.iter().map(|n| read(root.join(n))).collect();
        assert_eq!(before, after);
        assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
        assert_ne!(first.ca_cert_pem(), first.device_ca_cert_pem());
        let mut on_disk: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, names, "no temp files left behind");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        for key in ["ca.key", "server.key", "device-ca.key"] {
            let mode = fs::metadata(pki.dir().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn server_cert_names_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let der = CertificateDer::from_pem_file(pki.server_cert_path()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        use x509_parser::extensions::GeneralName;
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, vec!["localhost".to_string()]);
        let v6_loopback = std::net::Ipv6Addr::LOCALHOST.octets().to_vec();
        assert_eq!(ips, vec![vec![127, 0, 0, 1], v6_loopback]);
        let ca_der = CertificateDer::from_pem_slice(pki.ca_cert_pem().as_bytes()).unwrap();
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn server_cert_is_reissued_when_it_does_not_chain() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        // Replace the server pair with one signed by an unrelated CA.
        let other = tempfile::tempdir().unwrap();
        DevPki::load_or_create(other.path()).unwrap();
        for f in ["server.crt", "server.key"] {
            fs::copy(other.path().join(f), dir.path().join(f)).unwrap();
        }
        let foreign = read(pki.server_cert_path());
        DevPki::load_or_create(dir.path()).unwrap();
        assert_ne!(read(pki.server_cert_path()), foreign);
    }

    #[test]
    fn mismatched_ca_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        DevPki::load_or_create(dir.path()).unwrap();
        fs::copy(dir.path().join("device-ca.key"), dir.path().join("ca.key")).unwrap();
        let err = DevPki::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn issued_device_cert_verifies_after_reload() {
        let dir = tempfile::tempdir().unwrap();
        DevPki::load_or_create(dir.path()).unwrap();
        // Issue from a reloaded PKI: the rebuilt issuer must chain to the stored CA.
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let (cert, key) = pki.issue_device_cert("dev-1", 30).unwrap();
        verify_client(&pki, &cert).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(
            PeerIdentity::from_certificate(&der).unwrap().device_id,
            "dev-1"
        );
    }

    #[test]
    fn device_cert_is_not_trusted_by_another_device_ca() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pki_a = DevPki::load_or_create(a.path()).unwrap();
        let pki_b = DevPki::load_or_create(b.path()).unwrap();
        let (cert, _) = pki_a.issue_device_cert("dev-1", 30).unwrap();
        assert!(verify_client(&pki_b, &cert).is_err());
    }

    #[test]
    fn server_cert_is_not_a_client_cert() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let server = fs::read_to_string(pki.server_cert_path()).unwrap();
        assert!(verify_client(&pki, &server).is_err());
    }

    #[test]
    fn issue_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        assert!(matches!(
            pki.issue_device_cert("../x", 30),
            Err(PkiError::DeviceId(_))
        ));
        assert!(matches!(
            pki.issue_device_cert("d", 0),
            Err(PkiError::Validity { days: 0 })
        ));
    }

    fn csr_for(key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn csr_is_signed_with_forced_cn_and_kept_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = csr_for(&device_key, "someone-else");
        let cert = pki.sign_device_csr(&csr, "dev-7").unwrap();
        verify_client(&pki, &cert).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            parsed.public_key().raw,
            device_key.public_key_der().as_slice()
        );
        assert_eq!(
            PeerIdentity::from_certificate(&der).unwrap().device_id,
            "dev-7"
        );
        // The requested SAN is not copied into the certificate.
        assert!(parsed.subject_alternative_name().unwrap().is_none());
    }

    #[test]
    fn tampered_csr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let (k1, k2) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let csr = csr_for(&k1, "aaaa");
        // The signed subject changed: still well-formed, but the signature is stale.
        let changed_cn = tampered(&csr, b"aaaa", b"bbbb");
        // Another key swapped in: a request for a key the requester cannot prove it holds.
        let changed_key = tampered(&csr, k1.public_key_raw(), k2.public_key_raw());
        for bad in [changed_cn, changed_key] {
            let err = pki.sign_device_csr(&bad, "dev-7").unwrap_err();
            assert!(matches!(err, PkiError::CsrSignature), "{err}");
        }
        pki.sign_device_csr(&csr, "dev-7").unwrap();
    }

    #[test]
    fn garbage_csr_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        for bad in [
            "",
            "not pem",
            &pem_of("CERTIFICATE REQUEST", &[0x30, 0x01, 0x00]),
        ] {
            let err = pki.sign_device_csr(bad, "d").unwrap_err();
            assert!(matches!(err, PkiError::CsrParse { .. }), "{bad:?}: {err}");
        }
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    /// The CSR with the first occurrence of `from` replaced by the same-length `to`.
    fn tampered(csr_pem: &str, from: &[u8], to: &[u8]) -> String {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).unwrap();
        let mut der = der.as_ref().to_vec();
        let at = der.windows(from.len()).position(|w| w == from).unwrap();
        der[at..at + from.len()].copy_from_slice(to);
        pem_of("CERTIFICATE REQUEST", &der)
    }
}
