//! One module per command group. Each takes the shared [`Ctx`] and prints its result.

pub mod anomalies;
pub mod audit;
pub mod deployments;
pub mod devices;
pub mod groups;
pub mod publish;
pub mod releases;
pub mod status;
pub mod tokens;

use crate::client::Client;
use crate::output::Format;

/// What every command shares.
#[derive(Debug)]
pub struct Ctx {
    /// The server.
    pub client: Client,
    /// Tables or JSON.
    pub format: Format,
}
