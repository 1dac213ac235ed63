//! The shared language of ota: what the signing server, the release tool and the device
//! agent agree on.
//!
//! # Layout
//! - [`api`]: wire types of the device, publisher and operator APIs.
//! - [`cjson`]: canonical JSON, the bytes that TUF signs.
//! - [`keys`]: TUF keys, key ids, signature verification (ed25519, ECDSA P-256, RSA-PSS),
//!   and ed25519 signing behind the `sign` feature.
//! - [`metadata`]: the four roles and delegated targets, keeping unknown fields.
//! - [`signed`]: envelopes kept as the exact bytes received.
//! - [`verify`]: threshold verification returning [`verify::Verified`], a proof type.
//! - [`client`]: the TUF client workflow (spec section 5) as a sans-I/O state machine.
//! - [`target`]: safe target names and streaming verification of image bytes.
//! - [`oplog`]: the operation-log record format and its hash chain.
//! - [`release`]: ota's release fields (version, hardware, support period) and the rule
//!   that picks a device's image, anti-rollback included.
//!
//! # What this crate does not do
//! No sockets, no files, no clock: callers pass bytes in and the current time as a value, so
//! every rule here is tested without a network or a real clock.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod cjson;
pub mod client;
pub mod keys;
pub mod metadata;
pub mod oplog;
pub mod release;
pub mod signed;
pub mod target;
pub mod verify;
