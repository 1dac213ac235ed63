//! One simulated device's TLS session store, small enough for a million devices in one
//! process.
//!
//! rustls's `ClientSessionMemoryCache` is made for a client of many servers: a bounded map of
//! server names, each with room for 8 TLS 1.3 tickets allocated up front (about 1 KiB per
//! device before any ticket). A device talks to one server, over TLS 1.3 only, and uses one
//! ticket per connection; the server sends two per handshake. This store keeps the newest
//! [`MAX_TICKETS`] tickets of the last server name, and nothing else.

use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

/// Tickets kept per device: one to use, one spare.
pub const MAX_TICKETS: usize = 2;

#[derive(Default)]
struct Inner {
    server: Option<ServerName<'static>>,
    kx_hint: Option<NamedGroup>,
    /// Oldest first.
    tickets: Vec<Tls13ClientSessionValue>,
}

impl Inner {
    /// Forgets everything if `name` is another server than the one remembered.
    fn for_server(&mut self, name: &ServerName<'_>) -> &mut Self {
        if self.server.as_ref() != Some(&name.to_owned()) {
            *self = Inner {
                server: Some(name.to_owned()),
                ..Inner::default()
            };
        }
        self
    }
}

/// The session store of one device (see the module documentation).
#[derive(Default)]
pub struct DeviceSessions {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DeviceSessions {
    // Never print session secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSessions")
            .field("tickets", &self.tickets())
            .finish()
    }
}

impl DeviceSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the store inconsistent: every edit is one step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tickets held now.
    pub fn tickets(&self) -> usize {
        self.lock().tickets.len()
    }
}

impl ClientSessionStore for DeviceSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.lock().for_server(&server_name).kx_hint = Some(group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let inner = self.lock();
        (inner.server.as_ref() == Some(&server_name.to_owned()))
            .then_some(inner.kx_hint)
            .flatten()
    }

    // TLS 1.3 only: no TLS 1.2 sessions to keep.
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut inner = self.lock();
        let inner = inner.for_server(&server_name);
        if inner.tickets.len() >= MAX_TICKETS {
            inner.tickets.remove(0);
        }
        inner.tickets.push(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut inner = self.lock();
        if inner.server.as_ref() != Some(server_name) {
            return None;
        }
        // The newest: the most time left before it expires.
        inner.tickets.pop()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    // Tickets cannot be made outside rustls; the engine's tests check that devices resume
    // through this store against a real TLS server. Here: the key-exchange hint per server.
    #[test]
    fn hints_belong_to_the_last_server() {
        let s = DeviceSessions::default();
        let a = ServerName::try_from("127.0.0.1").unwrap();
        let b = ServerName::try_from("localhost").unwrap();
        assert_eq!(s.kx_hint(&a), None);
        s.set_kx_hint(a.clone(), NamedGroup::X25519);
        assert_eq!(s.kx_hint(&a), Some(NamedGroup::X25519));
        assert_eq!(s.kx_hint(&b), None);
        s.set_kx_hint(b.clone(), NamedGroup::secp256r1);
        assert_eq!(s.kx_hint(&a), None);
        assert_eq!(s.kx_hint(&b), Some(NamedGroup::secp256r1));
        assert!(s.take_tls13_ticket(&a).is_none());
        assert_eq!(s.tickets(), 0);
        assert!(format!("{s:?}").contains("tickets: 0"));
    }
}
