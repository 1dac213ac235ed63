//! ota-agent: the device side of ota.
//!
//! The agent polls the server, verifies updates with TUF, streams the image into the
//! inactive A/B slot, switches the bootloader to try it once, and after the reboot runs a
//! health check that commits the update or rolls it back. Every step survives a power cut.
//!
//! # Layout
//!
//! - [`boot`]: the [`boot::Bootloader`] trait (A/B with a try counter) and its GRUB,
//!   U-Boot and file backends, plus the [`boot::BootSimulator`] that plays the boot script.
//! - [`slots`]: the slot targets and the [`slots::SlotWriter`] that streams, hashes and
//!   resumes an image write in constant memory.
//! - [`pipeline`] and [`decode`]: the download's worker thread, and the zstd decoding of a
//!   release's compressed form on its way into the slot, resumable at frame boundaries.
//! - [`state`]: the durable agent state, including the anti-rollback floor.
//! - [`oplog`]: the append-only, hash-chained operation log.
//! - [`anomaly_queue`]: anomaly reports waiting for the server.
//! - [`fsutil`]: the one durable-write helper (write, fsync, rename, fsync directory).
//!
//! # What this crate does not do
//!
//! It holds no signing keys and no server code; it meets the server only on the wire
//! types of `ota-common`. Its logic reads no clock: times are passed in.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod anomaly_queue;
pub mod boot;
pub mod config;
pub mod cycle;
pub mod decode;
pub mod fsutil;
pub mod health;
pub mod metadata_store;
pub mod oplog;
pub mod pipeline;
pub mod progress;
pub mod slots;
pub mod state;
pub mod transport;
