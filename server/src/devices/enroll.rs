//! Enrollment: a device that made its own key gets a certificate with a one-time token.
//!
//! An operator creates a token ([`Devices::create_enroll_token`]); the secret is shown
//! once and stored only as its SHA-256. A token expires, is used at most once, and is
//! either bound to one device id or open to any new id. Enrolling
//! ([`Devices::enroll`]) signs the device's CSR with the device CA and accepts the
//! device; the token's use, the device record and the audit entry are one atomic batch,
//! so a token can never enroll twice, even under concurrent requests.
//!
//! An open (unbound) token enrolls only an id the registry has never seen: otherwise
//! anyone holding it could obtain a certificate for an existing device and impersonate
//! it. Re-enrolling an existing device takes a token bound to its id.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ota_common::api::EnrollRequest;
use rand::RngCore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::record::ENROLL_TOKENS_TREE;
use super::{DeviceRecord, DeviceStatus, Devices};
use crate::audit::{AuditError, AuditLog};
use crate::identity::{validate_device_id, DeviceIdError, PeerIdentity};
use crate::pki::{DevPki, PkiError};
use crate::store::{Op, StoreError};

/// Prefix of enrollment token secrets (recognisable by secret scanners).
pub const ENROLL_TOKEN_PREFIX: &str = "otae_";
/// Lifetime of a token when none is asked for: one day.
pub const DEFAULT_ENROLL_TTL_SECS: u64 = 86_400;
/// Longest lifetime of a token: 30 days.
pub const MAX_ENROLL_TTL_SECS: u64 = 30 * 86_400;

/// A stored enrollment token (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollToken {
    /// Public id: the first 8 hex of the secret's hash.
    pub id: String,
    /// The only device id it enrolls, or `None` for any new id.
    pub device_id: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who made it.
    pub created_by: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was used, if it was.
    #[serde(default)]
    pub used_at: Option<DateTime<Utc>>,
    /// The device it enrolled.
    #[serde(default)]
    pub used_for: Option<String>,
}

/// Why a token could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// This server holds no device CA key, so it cannot sign certificates.
    #[error("enroll: this server has no device CA key; provision device certificates at the factory or run the server with its development PKI")]
    NoDeviceCa,
    /// No such token.
    #[error("enroll: unknown enrollment token")]
    UnknownToken,
    /// The token expired.
    #[error("enroll: enrollment token {id} expired at {at}")]
    Expired {
        /// Token id.
        id: String,
        /// Expiry.
        at: DateTime<Utc>,
    },
    /// The token was used before.
    #[error("enroll: enrollment token {id} was already used")]
    Used {
        /// Token id.
        id: String,
    },
    /// The token is bound to another device id.
    #[error("enroll: enrollment token {id} is for device {bound}, not {asked}")]
    WrongDevice {
        /// Token id.
        id: String,
        /// Its device.
        bound: String,
        /// The device asked for.
        asked: String,
    },
    /// An unbound token cannot take an id the registry knows.
    #[error("enroll: device id {device} is already registered; re-enrolling it needs a token bound to it")]
    IdTaken {
        /// The id.
        device: String,
    },
    /// The id was decommissioned.
    #[error("enroll: device {device} was decommissioned; the identity cannot be used again")]
    Decommissioned {
        /// The id.
        device: String,
    },
    /// The device id is not valid.
    #[error("enroll: {0}")]
    InvalidId(#[from] DeviceIdError),
    /// The token lifetime is out of range.
    #[error("create enrollment token: ttl_secs {ttl} out of range 1..={MAX_ENROLL_TTL_SECS}")]
    Ttl {
        /// The asked lifetime.
        ttl: u64,
    },
    /// The CSR could not be signed (unparseable, bad signature, unsupported key).
    #[error("enroll: {0}")]
    Csr(#[source] PkiError),
    /// The signed certificate could not be read back (a server bug).
    #[error("enroll: reading the issued certificate: {0}")]
    Issued(String),
    /// The store failed.
    #[error("enroll: storage: {0}")]
    Store(#[from] StoreError),
    /// The audit log failed (nothing was changed).
    #[error("enroll: audit: {0}")]
    Audit(#[from] AuditError),
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Devices {
    /// Creates a one-time enrollment token valid for `ttl_secs` (default one day), bound to
    /// `device_id` if given. Returns the secret (shown once) and the stored token.
    pub fn create_enroll_token(
        &self,
        device_id: Option<&str>,
        ttl_secs: Option<u64>,
        audit: &AuditLog,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, EnrollToken), EnrollError> {
        let ttl = ttl_secs.unwrap_or(DEFAULT_ENROLL_TTL_SECS);
        if ttl == 0 || ttl > MAX_ENROLL_TTL_SECS {
            return Err(EnrollError::Ttl { ttl });
        }
        if let Some(id) = device_id {
            validate_device_id(id)?;
            if self.decommissioned_at(id).is_some() {
                return Err(EnrollError::Decommissioned { device: id.into() });
            }
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("{ENROLL_TOKEN_PREFIX}{}", hex::encode(raw));
        let hash = hash_secret(&secret);
        // ttl is at most MAX_ENROLL_TTL_SECS, far inside i64.
        let ttl = Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 1000));
        let token = EnrollToken {
            id: hash[..8].to_owned(),
            device_id: device_id.map(str::to_owned),
            created_at: now,
            created_by: actor.to_owned(),
            expires_at: now + ttl,
            used_at: None,
            used_for: None,
        };
        let ops = vec![
            Op::expect(ENROLL_TOKENS_TREE, hash.as_bytes(), None),
            Op::put_json(ENROLL_TOKENS_TREE, hash.as_bytes(), &token)?,
        ];
        audit.append_with(
            ops,
            actor,
            "enroll_token.create",
            &token.id,
            json!({ "device_id": token.device_id, "expires_at": token.expires_at }),
            now,
        )?;
        Ok((secret, token))
    }

    /// Enrolls a device: checks the token, signs the CSR with the device CA, accepts the
    /// device and spends the token, atomically. Returns the certificate (PEM) and the
    /// device's record.
    pub fn enroll(
        &self,
        req: &EnrollRequest,
        device_ca: Option<&DevPki>,
        audit: &AuditLog,
        now: DateTime<Utc>,
    ) -> Result<(String, DeviceRecord), EnrollError> {
        let pki = device_ca.ok_or(EnrollError::NoDeviceCa)?;
        let device = req.device_id.as_str();
        validate_device_id(device)?;
        let hash = hash_secret(req.token.trim());
        let token_raw = self
            .store
            .get(ENROLL_TOKENS_TREE, hash.as_bytes())?
            .ok_or(EnrollError::UnknownToken)?;
        let token: EnrollToken =
            crate::store::decode_json(ENROLL_TOKENS_TREE, hash.as_bytes(), &token_raw)?;
        if token.used_at.is_some() {
            return Err(EnrollError::Used { id: token.id });
        }
        if now >= token.expires_at {
            return Err(EnrollError::Expired {
                id: token.id,
                at: token.expires_at,
            });
        }
        if let Some(bound) = &token.device_id {
            if bound != device {
                return Err(EnrollError::WrongDevice {
                    id: token.id,
                    bound: bound.clone(),
                    asked: device.into(),
                });
            }
        }
        let guard = self.write_guard();
        if self.decommissioned_at(device).is_some() {
            return Err(EnrollError::Decommissioned {
                device: device.into(),
            });
        }
        let existing = self.read_raw(device)?;
        if existing.is_some() && token.device_id.is_none() {
            return Err(EnrollError::IdTaken {
                device: device.into(),
            });
        }
        let cert_pem = pki
            .sign_device_csr(&req.csr_pem, device)
            .map_err(EnrollError::Csr)?;
        let fp = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| EnrollError::Issued(e.to_string()))
            .and_then(|der| {
                PeerIdentity::from_certificate(&der).map_err(|e| EnrollError::Issued(e.to_string()))
            })?
            .cert_sha256;
        let actor = format!("enroll:{}", token.id);
        let (old, mut rec) = match existing {
            Some((raw, rec)) => (Some(raw), rec),
            None => (
                None,
                DeviceRecord::new(device, DeviceStatus::Accepted, &actor, now),
            ),
        };
        let was = rec.status;
        if rec.status != DeviceStatus::Accepted {
            rec.status = DeviceStatus::Accepted;
            rec.status_changed_at = now;
            rec.status_changed_by.clone_from(&actor);
        }
        // The enrolled certificate becomes the one in use; a re-enrollment is a re-issue.
        let change = if rec.cert_sha256.is_none() {
            super::CertChange::First
        } else {
            super::CertChange::Reissued
        };
        if rec.cert_sha256.as_deref() != Some(fp.as_str()) {
            super::record::apply_cert(&mut rec, &fp, change, now);
        }
        let mut spent = token.clone();
        spent.used_at = Some(now);
        spent.used_for = Some(device.to_owned());
        // A re-enrolled device was usually wiped: its agent starts a new operation log at
        // seq 1. Mark the stored chain so that restart is accepted, not flagged as a break.
        let is_reenrollment = old.is_some();
        let mut ops = Self::record_ops(old, &mut rec)?;
        let oplog_reset = if is_reenrollment {
            let (reset_ops, detail) = self.oplog_reset_ops(device, now)?;
            ops.extend(reset_ops);
            detail
        } else {
            serde_json::Value::Null
        };
        ops.push(Op::expect(
            ENROLL_TOKENS_TREE,
            hash.as_bytes(),
            Some(token_raw),
        ));
        ops.push(Op::put_json(ENROLL_TOKENS_TREE, hash.as_bytes(), &spent)?);
        match audit.append_with(
            ops,
            &actor,
            "device.enroll",
            device,
            json!({ "token": token.id, "was": was, "cert_sha256": fp, "oplog_reset": oplog_reset }),
            now,
        ) {
            Ok(_) => {}
            Err(AuditError::Store(StoreError::Conflict(c))) if c.tree == ENROLL_TOKENS_TREE => {
                return Err(EnrollError::Used { id: token.id });
            }
            Err(e) => return Err(e.into()),
        }
        self.cache_put(Arc::new(rec.clone()));
        drop(guard);
        tracing::info!(device, token = %token.id, "device enrolled");
        Ok((cert_pem, rec))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::DeviceConfig;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;

    struct Env {
        _dir: tempfile::TempDir,
        pki: DevPki,
        devices: Devices,
        audit: AuditLog,
        store: Arc<dyn Store>,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        Env {
            _dir: dir,
            pki,
            devices: Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap(),
            audit: AuditLog::new(Arc::clone(&store)),
            store,
        }
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn req(token: &str, device: &str) -> EnrollRequest {
        EnrollRequest {
            token: token.into(),
            device_id: device.into(),
            csr_pem: csr(),
        }
    }

    #[test]
    fn token_enrolls_once_and_is_stored_hashed() {
        let e = env();
        let now = Utc::now();
        let (secret, tok) = e
            .devices
            .create_enroll_token(None, None, &e.audit, "op", now)
            .unwrap();
        assert!(secret.starts_with(ENROLL_TOKEN_PREFIX));
        for (k, v) in e.store.scan_prefix(ENROLL_TOKENS_TREE, b"").unwrap() {
            assert!(!String::from_utf8_lossy(&k).contains(&secret));
            assert!(!String::from_utf8_lossy(&v).contains(&secret));
        }
        let (pem, rec) = e
            .devices
            .enroll(&req(&secret, "new-1"), Some(&e.pki), &e.audit, now)
            .unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(rec.status, DeviceStatus::Accepted);
        assert!(rec.cert_sha256.is_some());
        let err = e
            .devices
            .enroll(&req(&secret, "new-2"), Some(&e.pki), &e.audit, now)
            .unwrap_err();
        assert!(
            matches!(err, EnrollError::Used { ref id } if *id == tok.id),
            "{err}"
        );
        let actions: Vec<String> = e
            .audit
            .list(0, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["enroll_token.create", "device.enroll"]);
    }

    #[test]
    fn refusals() {
        let e = env();
        let now = Utc::now();
        let d = &e.devices;
        assert!(matches!(
            d.enroll(&req("otae_nope", "x"), None, &e.audit, now),
            Err(EnrollError::NoDeviceCa)
        ));
        assert!(matches!(
            d.enroll(&req("otae_nope", "x"), Some(&e.pki), &e.audit, now),
            Err(EnrollError::UnknownToken)
        ));
        let (bound, _) = d
            .create_enroll_token(Some("dev-a"), Some(60), &e.audit, "op", now)
            .unwrap();
        assert!(matches!(
            d.enroll(&req(&bound, "dev-b"), Some(&e.pki), &e.audit, now),
            Err(EnrollError::WrongDevice { .. })
        ));
        let later = now + Duration::seconds(61);
        assert!(matches!(
            d.enroll(&req(&bound, "dev-a"), Some(&e.pki), &e.audit, later),
            Err(EnrollError::Expired { .. })
        ));
        // A bad CSR does not spend the token.
        let mut bad = req(&bound, "dev-a");
        bad.csr_pem = "not a csr".into();
        assert!(matches!(
            d.enroll(&bad, Some(&e.pki), &e.audit, now),
            Err(EnrollError::Csr(_))
        ));
        d.enroll(&req(&bound, "dev-a"), Some(&e.pki), &e.audit, now)
            .unwrap();
        // An open token cannot take an id that exists.
        let (open, _) = d
            .create_enroll_token(None, None, &e.audit, "op", now)
            .unwrap();
        assert!(matches!(
            d.enroll(&req(&open, "dev-a"), Some(&e.pki), &e.audit, now),
            Err(EnrollError::IdTaken { .. })
        ));
        assert!(matches!(
            d.create_enroll_token(None, Some(0), &e.audit, "op", now),
            Err(EnrollError::Ttl { .. })
        ));
        d.decommission("dev-a", &e.audit, "op", now).unwrap();
        assert!(matches!(
            d.create_enroll_token(Some("dev-a"), None, &e.audit, "op", now),
            Err(EnrollError::Decommissioned { .. })
        ));
    }

    #[test]
    fn bound_token_re_enrolls_an_existing_device() {
        let e = env();
        let now = Utc::now();
        let d = &e.devices;
        let (t1, _) = d
            .create_enroll_token(Some("dev-a"), None, &e.audit, "op", now)
            .unwrap();
        let (_, first) = d
            .enroll(&req(&t1, "dev-a"), Some(&e.pki), &e.audit, now)
            .unwrap();
        d.decide("dev-a", DeviceStatus::Rejected, &e.audit, "op", now)
            .unwrap();
        let (t2, _) = d
            .create_enroll_token(Some("dev-a"), None, &e.audit, "op", now)
            .unwrap();
        let (_, second) = d
            .enroll(&req(&t2, "dev-a"), Some(&e.pki), &e.audit, now)
            .unwrap();
        assert_eq!(second.status, DeviceStatus::Accepted);
        assert_ne!(second.cert_sha256, first.cert_sha256);
        assert_eq!(second.previous_cert_sha256, first.cert_sha256);
        assert_eq!(second.first_cert_sha256, first.cert_sha256);
    }

    fn oplog(life: &str, n: u64) -> Vec<ota_common::api::OplogRecord> {
        let mut head = crate::oplog_chain::ChainHead::genesis();
        (0..n)
            .map(|i| {
                let r = ota_common::api::OplogRecord::next(
                    &head,
                    "2025-02-01T00:00:00.000Z".into(),
                    "boot".into(),
                    json!({ "life": life, "i": i }),
                );
                head = crate::oplog_chain::head_after(&r);
                r
            })
            .collect()
    }

    #[test]
    fn a_wiped_device_that_re_enrolls_starts_a_new_oplog_without_alarm() {
        let e = env();
        let now = Utc::now();
        let d = &e.devices;
        let (t1, _) = d
            .create_enroll_token(Some("dev-a"), None, &e.audit, "op", now)
            .unwrap();
        d.enroll(&req(&t1, "dev-a"), Some(&e.pki), &e.audit, now)
            .unwrap();
        assert!(
            d.record_oplog("dev-a", &oplog("one", 5), now)
                .unwrap()
                .chain_ok
        );
        // Wiped, then re-enrolled with a token bound to its id: its log restarts at seq 1.
        let (t2, _) = d
            .create_enroll_token(Some("dev-a"), None, &e.audit, "op", now)
            .unwrap();
        d.enroll(&req(&t2, "dev-a"), Some(&e.pki), &e.audit, now)
            .unwrap();
        let ack = d.record_oplog("dev-a", &oplog("two", 2), now).unwrap();
        assert!(ack.chain_ok, "{ack:?}");
        assert!(d.list_anomalies(None, 10).unwrap().0.is_empty());
        // The reset is on the audit record of the re-enrollment.
        let entries = e.audit.list(0, 100).unwrap();
        let enroll = entries
            .iter()
            .rfind(|en| en.action == "device.enroll")
            .unwrap();
        assert_eq!(enroll.detail["oplog_reset"]["oplog_head_seq"], 5);
        // Without the re-enrollment, a second restart is a rewritten log.
        assert!(
            !d.record_oplog("dev-a", &oplog("three", 1), now)
                .unwrap()
                .chain_ok
        );
    }
}
