//! ota-keys: the release engineer's tool, as a library (the `ota-keys` binary is a thin
//! command line over it, and the server uses it to make development repositories).
//!
//! # Layout
//! - [`keyfile`]: one private key encrypted at rest (Argon2id + XChaCha20-Poly1305, 0600).
//! - [`passphrase`]: where passphrases come from (file, environment, prompt), zeroized.
//! - [`keystore`]: a directory of key files; finding and unlocking keys.
//! - [`repo`]: the repository directory layout, reading metadata, expiry defaults.
//! - [`editor`]: [`editor::RepoEditor`], load → edit in memory → sign → commit.
//! - [`image`]: release images: `custom` fields, streaming hashes, copying into `targets/`.
//! - [`compress`]: zstd-compressed forms of images: making them, and checking one decodes
//!   to its image (shared with the CLI and the server).
//! - [`authority`]: which keys must sign a file, threshold status, k-of-n co-signing.
//! - [`verification`]: offline verification with the real client workflow of `ota-common`.
//! - [`dev`]: development repositories for the server's `--dev` mode.
//! - [`durable`]: the one helper that writes files (temp file, fsync, rename, fsync dir).
//! - [`error`]: the crate's error type.
//!
//! # What this crate does not do
//! No TUF logic of its own: metadata types, canonical JSON, signing and verification, and
//! the client workflow all come from `ota-common`. No clock reads in the library: callers
//! pass `now`. No network: publishing to a server is a separate, later command.
//!
//! # Test-only knob
//! CAUTION: the binary honours `OTA_KEYS_INSECURE_FAST_KDF=1`, which encrypts *new* keys with
//! trivially cheap Argon2 parameters so that end-to-end tests run fast. Keys made with it
//! resist passphrase guessing far less. Never set it outside tests.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authority;
pub mod compress;
pub mod dev;
pub mod durable;
pub mod editor;
pub mod error;
pub mod image;
pub mod keyfile;
pub mod keystore;
pub mod passphrase;
pub mod repo;
pub mod verification;

pub use editor::{RepoEditor, RoleSpec, TargetCustom};
pub use error::{Error, Result};
