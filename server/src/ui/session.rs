//! Dashboard sessions and CSRF tokens.
//!
//! An operator signs in by pasting an API token. The server checks it with
//! [`Tokens::authenticate`] and makes a session: a random 256-bit id, sent to the browser
//! once in the `ota_session` cookie (`Secure; HttpOnly; SameSite=Strict; Path=/ui`) and
//! stored only as a domain-separated SHA-256 hash in the [`SESSIONS_TREE`] tree, with its
//! expiry and the token it was made from (its storage key, public id and role). Every
//! request re-reads that token: a revoked (or deleted, or re-roled) token ends its sessions
//! at the next request. Logging out deletes the session.
//!
//! CSRF: each session has one CSRF token, a second domain-separated hash of the session id.
//! It is never stored (a store dump does not yield it, and the stored session hash does not
//! derive it) and it is compared in constant time. The login form, which has no session
//! yet, uses a double-submit nonce instead: a random value both in a short-lived
//! `ota_login` cookie and in the form.
//!
//! Sessions live in the store (not in process memory) so they survive a restart and work
//! behind several replicas; they are written only at login and logout, never on the hot
//! paths. Expired sessions are deleted when met and swept at each login.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::auth::{Caller, Role, TokenRecord, Tokens, TOKENS_TREE};
use crate::store::{Op, Store, StoreError, StoreExt};

use super::error::UiError;

/// Store tree of sessions, keyed by [`SessionId::storage_key`].
pub const SESSIONS_TREE: &str = "ui_sessions";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "ota_session";
/// Name of the login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "ota_login";
/// How long a session lasts from login (absolute, not sliding).
pub const SESSION_LIFETIME_SECS: i64 = 12 * 3600;
/// How long the login form stays valid.
pub const LOGIN_NONCE_LIFETIME_SECS: i64 = 15 * 60;
/// Most expired sessions deleted by one sweep (a sweep runs at each login).
const SWEEP_LIMIT: usize = 10_000;

const SESSION_DOMAIN: &[u8] = b"ota-ui-session-v1\n";
const CSRF_DOMAIN: &[u8] = b"ota-ui-csrf-v1\n";

/// A session id: 32 random bytes. Its `Debug` form hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

impl SessionId {
    /// A fresh id from the operating system's generator.
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        SessionId(raw)
    }

    /// Parses a cookie value (64 hex digits); anything else is no session.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let bytes = hex::decode(text).ok()?;
        bytes.try_into().ok().map(SessionId)
    }

    /// The value sent in the cookie.
    pub fn cookie_value(&self) -> String {
        hex::encode(self.0)
    }

    /// The key its record is stored under (the id itself is never stored).
    pub fn storage_key(&self) -> String {
        domain_hash(SESSION_DOMAIN, &self.0)
    }

    /// The CSRF token every form of this session carries.
    pub fn csrf_token(&self) -> String {
        domain_hash(CSRF_DOMAIN, &self.0)
    }

    /// Whether `submitted` is this session's CSRF token (constant-time comparison).
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        ct_eq(&self.csrf_token(), submitted)
    }
}

fn domain_hash(domain: &[u8], raw: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(raw);
    hex::encode(h.finalize())
}

/// Constant-time equality of two strings (their lengths are not secret).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A random value for the login form's double-submit check.
pub fn login_nonce() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Whether a login form's nonce matches its cookie's (both present, 64 hex, equal).
pub fn login_nonce_matches(cookie: Option<&str>, submitted: &str) -> bool {
    match cookie {
        Some(c) if c.len() == 64 => ct_eq(c, submitted),
        _ => false,
    }
}

/// What is stored for a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Storage key of the token in [`TOKENS_TREE`] (the SHA-256 of its secret, which the
    /// tokens tree already holds as its key).
    pub token_key: String,
    /// The token's public id.
    pub token_id: String,
    /// The role the token had at login.
    pub role: Role,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// End of the session.
    pub expires_at: DateTime<Utc>,
}

/// Errors of the session store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed.
    #[error("dashboard sessions: {0}")]
    Store(#[from] StoreError),
    /// The token authenticated but is not stored where sessions look it up.
    #[error("token {id} authenticated but is not stored under the SHA-256 of its secret")]
    TokenKey {
        /// The token's public id.
        id: String,
    },
}

/// Sessions kept in a store.
#[derive(Clone, Debug)]
pub struct Sessions {
    store: Arc<dyn Store>,
    lifetime: Duration,
}

impl Sessions {
    /// Sessions in `store`, lasting [`SESSION_LIFETIME_SECS`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Sessions {
            store,
            lifetime: Duration::seconds(SESSION_LIFETIME_SECS),
        }
    }

    /// Checks an API token and opens a session for it; `None` if the token is unknown or
    /// revoked. Sweeps expired sessions first. Durable before it returns.
    pub fn login(
        &self,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(SessionId, Caller)>, SessionError> {
        let tokens = Tokens::new(Arc::clone(&self.store));
        let Some(token) = tokens.authenticate(secret)? else {
            return Ok(None);
        };
        // The tokens tree is keyed by the hex SHA-256 of the secret; check that the record
        // is really there, so that a change of that scheme fails here, loudly, instead of
        // making every later request look signed out.
        let token_key = hex::encode(Sha256::digest(secret.as_bytes()));
        let stored: Option<TokenRecord> = self.store.get_json(TOKENS_TREE, token_key.as_bytes())?;
        if stored.as_ref() != Some(&token) {
            return Err(SessionError::TokenKey { id: token.id });
        }
        self.sweep(now)?;
        let id = SessionId::generate();
        let record = SessionRecord {
            token_key,
            token_id: token.id.clone(),
            role: token.role,
            created_at: now,
            expires_at: now + self.lifetime,
        };
        self.store
            .put_json_durable(SESSIONS_TREE, id.storage_key().as_bytes(), &record)?;
        Ok(Some((id, Caller { token })))
    }

    /// The caller behind a session, if it is live: not expired, and its token still
    /// exists, unrevoked, with the same id and role. A dead session is deleted.
    pub fn resolve(
        &self,
        id: &SessionId,
        now: DateTime<Utc>,
    ) -> Result<Option<Caller>, SessionError> {
        let key = id.storage_key();
        let Some(rec) = self
            .store
            .get_json::<SessionRecord>(SESSIONS_TREE, key.as_bytes())?
        else {
            return Ok(None);
        };
        let token: Option<TokenRecord> = if rec.expires_at <= now {
            None
        } else {
            self.store
                .get_json::<TokenRecord>(TOKENS_TREE, rec.token_key.as_bytes())?
                .filter(|t| t.revoked_at.is_none() && t.id == rec.token_id && t.role == rec.role)
        };
        match token {
            Some(token) => Ok(Some(Caller { token })),
            None => {
                self.store.delete(SESSIONS_TREE, key.as_bytes())?;
                self.store.flush()?;
                Ok(None)
            }
        }
    }

    /// Ends a session; returns whether it existed. Durable before it returns.
    pub fn logout(&self, id: &SessionId) -> Result<bool, SessionError> {
        let existed = self
            .store
            .delete(SESSIONS_TREE, id.storage_key().as_bytes())?;
        self.store.flush()?;
        Ok(existed)
    }

    /// Deletes up to [`SWEEP_LIMIT`] expired sessions (not flushed: the caller's next
    /// durable write covers it); returns how many.
    fn sweep(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let ops: Vec<Op> = self
            .store
            .scan_json::<SessionRecord>(SESSIONS_TREE, b"", None, usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.expires_at <= now)
            .take(SWEEP_LIMIT)
            .map(|(k, _)| Op::delete(SESSIONS_TREE, k))
            .collect();
        let n = ops.len();
        if n > 0 {
            self.store.apply_batch(ops)?;
        }
        Ok(n)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may send several).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn cookie_attrs(max_age: i64) -> String {
    format!("Path=/ui; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` value carrying a new session.
pub fn session_cookie(id: &SessionId) -> String {
    format!(
        "{SESSION_COOKIE}={}; {}",
        id.cookie_value(),
        cookie_attrs(SESSION_LIFETIME_SECS)
    )
}

/// `Set-Cookie` value that removes the session cookie.
pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; {}", cookie_attrs(0))
}

/// `Set-Cookie` value carrying the login form's nonce.
pub fn login_cookie(nonce: &str) -> String {
    format!(
        "{LOGIN_COOKIE}={nonce}; {}",
        cookie_attrs(LOGIN_NONCE_LIFETIME_SECS)
    )
}

/// `Set-Cookie` value that removes the login nonce cookie.
pub fn clear_login_cookie() -> String {
    format!("{LOGIN_COOKIE}=; {}", cookie_attrs(0))
}

/// A signed-in dashboard user: the API caller behind the session, and the session (for
/// its CSRF token). Extracting it from a request without a live session answers with a
/// redirect to the login page.
#[derive(Clone, Debug)]
pub struct UiUser {
    /// The caller, with the same role checks as the API.
    pub caller: Caller,
    /// The session.
    pub session: SessionId,
}

impl UiUser {
    /// The CSRF token to put in forms.
    pub fn csrf(&self) -> String {
        self.session.csrf_token()
    }

    /// Refuses with 403 unless `submitted` is this session's CSRF token.
    pub fn check_csrf(&self, submitted: &str) -> Result<(), UiError> {
        if self.session.csrf_matches(submitted) {
            Ok(())
        } else {
            Err(UiError::Forbidden(
                "the form's CSRF token is missing or wrong; reload the page and try again".into(),
            ))
        }
    }

    /// Whether the role grants `p` (to decide which buttons to show).
    pub fn may(&self, p: crate::auth::Permission) -> bool {
        self.caller.token.role.allows(p)
    }
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, UiError> {
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE).and_then(SessionId::parse)
        else {
            return Err(UiError::SignedOut);
        };
        let sessions = Sessions::new(Arc::clone(&state.store));
        let (id, now) = (session.clone(), state.now());
        let caller = tokio::task::spawn_blocking(move || sessions.resolve(&id, now))
            .await
            .map_err(|e| UiError::internal("reading the session", e))?
            .map_err(|e| UiError::internal("reading the session", e))?;
        match caller {
            Some(caller) => Ok(UiUser { caller, session }),
            None => Err(UiError::SignedOut),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use axum::http::HeaderValue;

    fn setup() -> (Arc<dyn Store>, Tokens, Sessions) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (
            Arc::clone(&store),
            Tokens::new(Arc::clone(&store)),
            Sessions::new(store),
        )
    }

    #[test]
    fn login_makes_a_session_stored_only_as_a_hash() {
        let (store, tokens, sessions) = setup();
        let now = Utc::now();
        let (secret, rec) = tokens.create("alice", Role::Operator, now).unwrap();
        let (id, caller) = sessions.login(&secret, now).unwrap().unwrap();
        assert_eq!(caller.token.id, rec.id);
        let resolved = sessions.resolve(&id, now).unwrap().unwrap();
        assert_eq!(resolved.token.role, Role::Operator);
        // Neither the session id, its CSRF token nor the API secret is stored.
        let (cookie, csrf) = (id.cookie_value(), id.csrf_token());
        for (k, v) in store.scan_prefix(SESSIONS_TREE, b"").unwrap() {
            for text in [String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)] {
                assert!(!text.contains(&cookie) && !text.contains(&csrf));
                assert!(!text.contains(&secret));
            }
        }
        // An unknown id, or a wrong secret, gets nothing.
        assert!(sessions
            .resolve(&SessionId::generate(), now)
            .unwrap()
            .is_none());
        assert!(sessions.login("ota_wrong", now).unwrap().is_none());
    }

    #[test]
    fn sessions_expire_and_are_swept() {
        let (store, tokens, sessions) = setup();
        let t0 = Utc::now();
        let (secret, _) = tokens.create("bob", Role::Viewer, t0).unwrap();
        let (old, _) = sessions.login(&secret, t0).unwrap().unwrap();
        let later = t0 + Duration::seconds(SESSION_LIFETIME_SECS - 1);
        assert!(sessions.resolve(&old, later).unwrap().is_some());
        let expired = t0 + Duration::seconds(SESSION_LIFETIME_SECS);
        assert!(sessions.resolve(&old, expired).unwrap().is_none());
        // Met once expired, it is gone from the store.
        assert!(store.scan_prefix(SESSIONS_TREE, b"").unwrap().is_empty());
        // A login sweeps the expired sessions it did not meet.
        let (stale, _) = sessions.login(&secret, t0).unwrap().unwrap();
        let (fresh, _) = sessions.login(&secret, expired).unwrap().unwrap();
        assert_eq!(store.scan_prefix(SESSIONS_TREE, b"").unwrap().len(), 1);
        assert!(sessions.resolve(&stale, t0).unwrap().is_none());
        assert!(sessions.resolve(&fresh, expired).unwrap().is_some());
    }

    #[test]
    fn revoking_the_token_kills_its_sessions_and_logout_deletes() {
        let (_store, tokens, sessions) = setup();
        let now = Utc::now();
        let (secret, rec) = tokens.create("carol", Role::Operator, now).unwrap();
        let (a, _) = sessions.login(&secret, now).unwrap().unwrap();
        let (b, _) = sessions.login(&secret, now).unwrap().unwrap();
        assert_ne!(a, b);
        assert!(sessions.logout(&a).unwrap());
        assert!(!sessions.logout(&a).unwrap());
        assert!(sessions.resolve(&a, now).unwrap().is_none());
        assert!(sessions.resolve(&b, now).unwrap().is_some());
        assert!(tokens.revoke(&rec.id, now).unwrap());
        assert!(sessions.resolve(&b, now).unwrap().is_none());
        // And a revoked token cannot log in again.
        assert!(sessions.login(&secret, now).unwrap().is_none());
    }

    #[test]
    fn csrf_tokens_are_per_session_and_checked_exactly() {
        let (a, b) = (SessionId::generate(), SessionId::generate());
        assert_ne!(a.csrf_token(), b.csrf_token());
        assert_ne!(a.csrf_token(), a.storage_key());
        assert_ne!(a.csrf_token(), a.cookie_value());
        assert!(a.csrf_matches(&a.csrf_token()));
        assert!(!a.csrf_matches(&b.csrf_token()));
        assert!(!a.csrf_matches(""));
        let mut almost = a.csrf_token();
        let last = if almost.ends_with('0') { "1" } else { "0" };
        almost.replace_range(63.., last);
        assert!(!a.csrf_matches(&almost));
        assert!(!a.csrf_matches(&a.csrf_token()[..63]));
        assert!(!a.csrf_matches(&format!("{}0", a.csrf_token())));
    }

    #[test]
    fn session_ids_parse_only_from_their_own_form() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse(&id.cookie_value()), Some(id.clone()));
        assert_eq!(SessionId::parse(""), None);
        assert_eq!(SessionId::parse(&id.cookie_value()[..62]), None);
        assert_eq!(SessionId::parse(&"zz".repeat(32)), None);
        assert_eq!(format!("{id:?}"), "SessionId(..)");
    }

    #[test]
    fn login_nonce_must_match_its_cookie() {
        let n = login_nonce();
        assert!(login_nonce_matches(Some(&n), &n));
        assert!(!login_nonce_matches(None, &n));
        assert!(!login_nonce_matches(Some(&n), &login_nonce()));
        assert!(!login_nonce_matches(Some(""), ""));
    }

    #[test]
    fn cookies_are_found_across_headers_and_set_with_strict_attributes() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; ota_login=xyz"));
        h.append(COOKIE, HeaderValue::from_static("ota_session=abc"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "ota"), None);
        let set = session_cookie(&SessionId::generate());
        for attr in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/ui",
            "Max-Age=43200",
        ] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(clear_session_cookie().contains("Max-Age=0"));
    }
}
