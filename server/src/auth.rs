//! API tokens for people and tools: random secrets shown once, stored only as SHA-256
//! hashes, each carrying one role. The extractor [`Caller`] authenticates a request from
//! its `Authorization: Bearer` header (or the dashboard's session cookie, later) and
//! handlers check the permission they need with [`Caller::require`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiFailure;
use crate::store::{Store, StoreError, StoreExt};

/// Store tree of tokens, keyed by the hex SHA-256 of the secret.
pub const TOKENS_TREE: &str = "tokens";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read fleet status, releases and the audit log.
    Viewer,
    /// Viewer, plus device decisions and deployments.
    Operator,
    /// Viewer, plus uploading images and publishing releases.
    Publisher,
    /// Everything, including tokens and root rotation.
    Admin,
}

/// An action a handler needs permission for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read anything but secrets.
    Read,
    /// Accept, reject, decommission devices; manage groups and deployments.
    Operate,
    /// Upload images, publish and withdraw releases.
    Publish,
    /// Manage tokens and keys.
    Administer,
}

impl Role {
    /// Whether this role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        matches!(
            (self, p),
            (Role::Admin, _)
                | (_, Permission::Read)
                | (Role::Operator, Permission::Operate)
                | (Role::Publisher, Permission::Publish)
        )
    }

    /// Parses `admin`, `publisher`, `operator` or `viewer`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "publisher" => Some(Role::Publisher),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A stored token (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (first 8 hex of the hash), for listing and revoking.
    pub id: String,
    /// Human name ("ci-publisher", "alice").
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Token prefix, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "ota_";

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Token management over the store.
#[derive(Clone, Debug)]
pub struct Tokens {
    store: Arc<dyn Store>,
}

impl Tokens {
    /// Tokens kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Tokens { store }
    }

    /// Creates a token; returns the secret (shown once) and its record.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<(String, TokenRecord), StoreError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let hash = hash_secret(&secret);
        let record = TokenRecord {
            id: hash[..8].to_string(),
            name: name.to_string(),
            role,
            created_at: now,
            revoked_at: None,
        };
        self.store
            .put_json_durable(TOKENS_TREE, hash.as_bytes(), &record)?;
        Ok((secret, record))
    }

    /// The record of a secret, if it is valid and not revoked.
    pub fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>, StoreError> {
        let rec: Option<TokenRecord> = self
            .store
            .get_json(TOKENS_TREE, hash_secret(secret).as_bytes())?;
        Ok(rec.filter(|r| r.revoked_at.is_none()))
    }

    /// All tokens, revoked ones included.
    pub fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self
            .store
            .scan_json::<TokenRecord>(TOKENS_TREE, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Revokes the token with public id `id`; false if there is none.
    pub fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        for (key, mut rec) in
            self.store
                .scan_json::<TokenRecord>(TOKENS_TREE, b"", None, usize::MAX)?
        {
            if rec.id == id && rec.revoked_at.is_none() {
                rec.revoked_at = Some(now);
                self.store.put_json_durable(TOKENS_TREE, &key, &rec)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// An authenticated person or tool.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token record.
    pub token: TokenRecord,
}

impl Caller {
    /// Refuses with 403 unless the caller's role grants `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiFailure> {
        if self.token.role.allows(p) {
            Ok(())
        } else {
            Err(ApiFailure::forbidden(
                "forbidden",
                format!(
                    "token {:?} has role {:?}, which may not {:?}",
                    self.token.name, self.token.role, p
                ),
            ))
        }
    }

    /// Name used in the audit log.
    pub fn actor(&self) -> String {
        format!("token:{}:{}", self.token.id, self.token.name)
    }
}

/// Where the extractor finds tokens.
pub trait HasTokens {
    /// The token store.
    fn tokens(&self) -> &Tokens;
}

impl<S> FromRequestParts<S> for Caller
where
    S: HasTokens + Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiFailure::unauthorized("send an API token: Authorization: Bearer <token>")
            })?;
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or_else(|| {
                ApiFailure::unauthorized("the Authorization header must be 'Bearer <token>'")
            })?;
        let tokens = state.tokens().clone();
        let secret = secret.to_string();
        let rec = tokio::task::spawn_blocking(move || tokens.authenticate(&secret))
            .await
            .map_err(|e| ApiFailure::internal("token lookup", e))?
            .map_err(|e| ApiFailure::internal("token lookup", e))?;
        match rec {
            Some(token) => Ok(Caller { token }),
            None => Err(ApiFailure::unauthorized("unknown or revoked API token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn tokens_are_hashed_and_revocable() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let t = Tokens::new(store.clone());
        let now = Utc::now();
        let (secret, rec) = t.create("ci", Role::Publisher, now).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        // The secret is not stored anywhere.
        for (k, v) in store.scan_prefix(TOKENS_TREE, b"").unwrap() {
            assert!(!String::from_utf8_lossy(&k).contains(&secret));
            assert!(!String::from_utf8_lossy(&v).contains(&secret));
        }
        assert_eq!(
            t.authenticate(&secret).unwrap().unwrap().role,
            Role::Publisher
        );
        assert!(t.authenticate("ota_wrong").unwrap().is_none());
        assert!(t.revoke(&rec.id, now).unwrap());
        assert!(t.authenticate(&secret).unwrap().is_none());
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(Role::Viewer.allows(Permission::Read));
        assert!(!Role::Viewer.allows(Permission::Publish));
        assert!(!Role::Viewer.allows(Permission::Operate));
        assert!(Role::Publisher.allows(Permission::Publish));
        assert!(!Role::Publisher.allows(Permission::Operate));
        assert!(Role::Operator.allows(Permission::Operate));
        assert!(!Role::Operator.allows(Permission::Administer));
        assert!(Role::Admin.allows(Permission::Administer));
    }
}
