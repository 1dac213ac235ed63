//! ota-server: the HTTPS server of the ota update system.
//!
//! # Layout
//! Transport (how bytes reach a handler):
//! - [`pki`]: the development PKI (server CA, server certificate, device CA), device
//!   certificate issuance and CSR signing for enrollment.
//! - [`tls`]: the rustls server configuration (TLS 1.3, ALPN h2/http1.1, optional client
//!   certificates from the device CA, session resumption) and the crypto provider.
//! - [`identity`]: the device identity read from a verified client certificate.
//! - [`limits`]: the documented resource limits of the transport, with safe defaults.
//! - [`serve`]: the accept loop: connection cap, handshake timeout, HTTP/1.1 and HTTP/2,
//!   graceful shutdown, transport metrics.
//! - [`fast_route`]: the device poll answered ahead of the router when it can be.
//!
//! Storage: [`store`], [`blobs`], [`audit`], with durable writes in [`fsutil`].
//!
//! # What this crate does NOT do
//! The transport authenticates devices (their certificate) but does not authorize them:
//! whether a device is accepted, rejected or decommissioned is looked up by the routes.
//! TLS protects the channel, not the images: integrity comes from TUF metadata, verified
//! by the device.

#![forbid(unsafe_code)]

#[deny(missing_docs)]
pub mod app;
#[deny(missing_docs)]
pub mod audit;
#[deny(missing_docs)]
pub mod auth;
#[deny(missing_docs)]
pub mod blobs;
#[deny(missing_docs)]
pub mod config;
#[deny(missing_docs)]
pub mod conn_threads;
#[deny(missing_docs)]
pub mod deployments;
#[deny(missing_docs)]
pub mod devices;
#[deny(missing_docs)]
pub mod devsetup;
#[deny(missing_docs)]
pub mod error;
#[deny(missing_docs)]
pub mod fast_route;
#[deny(missing_docs)]
pub mod fsutil;
#[deny(missing_docs)]
pub mod identity;
#[deny(missing_docs)]
pub mod limits;
#[deny(missing_docs)]
pub mod metrics;
#[deny(missing_docs)]
pub mod oplog_chain;
#[deny(missing_docs)]
pub mod pki;
#[deny(missing_docs)]
pub mod repo;
#[deny(missing_docs)]
pub mod rollout;
#[deny(missing_docs)]
pub mod routes;
#[deny(missing_docs)]
pub mod run;
#[deny(missing_docs)]
pub mod serve;
#[deny(missing_docs)]
pub mod store;
#[deny(missing_docs)]
pub mod tls;
#[deny(missing_docs)]
pub mod ui;
