//! `register`: makes a simulated fleet known to the server and accepted, as an operator
//! would, so that later `poll` runs measure accepted devices on the server's fast path.
//!
//! 1. every device polls once, on its own new TLS session (unknown devices become pending);
//! 2. all ids are accepted with `POST /api/v1/devices/preauthorize` in batches, with the
//!    admin (or operator) token;
//! 3. every device polls once more, and must now be answered 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use crate::client::{request, ClientError, Conn};
use crate::engine::{self, Fleet, FleetError, Plan};
use crate::stats::Report;
use crate::target::Target;

/// The server's cap on ids per preauthorize request.
pub const MAX_BATCH: usize = 1000;

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The batch size is out of range.
    #[error("--batch must be 1..={MAX_BATCH}, got {0}")]
    Batch(usize),
    /// The fleet has no device identities.
    #[error("no device identities (give --pki)")]
    NoDevices,
    /// The operator connection or request failed.
    #[error("preauthorize batch starting at {first}: {source}")]
    Client {
        /// First id of the batch.
        first: String,
        /// The failure.
        #[source]
        source: ClientError,
    },
    /// The server refused a batch.
    #[error("preauthorize batch starting at {first}: HTTP {status}: {body}")]
    Refused {
        /// First id of the batch.
        first: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The anonymous TLS configuration could not be made.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Runs the three steps; prints each step's figures. Returns whether every device was
/// accepted in the end.
pub async fn register(
    plan: Plan,
    fleet: Arc<Fleet>,
    target: Target,
    token: &str,
    batch: usize,
    label: &str,
) -> Result<bool, RegisterError> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(RegisterError::Batch(batch));
    }
    let n = fleet.devices();
    if !fleet.has_identities() {
        return Err(RegisterError::NoDevices);
    }
    let (first, took) = engine::run(plan.clone(), fleet.clone(), target.clone()).await;
    print(&format!("{label}_first_poll"), &first, took);

    let start = Instant::now();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut conn: Option<Conn> = None;
    let ids: Vec<String> = (0..n).filter_map(|i| fleet.device_id(i)).collect();
    for chunk in ids.chunks(batch) {
        let first_id = chunk.first().cloned().unwrap_or_default();
        let client_err = |source| RegisterError::Client {
            first: first_id.clone(),
            source,
        };
        if !conn.as_ref().is_some_and(Conn::is_usable) {
            let c = Conn::open(&target, fleet.anonymous()?)
                .await
                .map_err(client_err)?;
            conn = Some(c);
        }
        let body = Bytes::from(json!({ "ids": chunk }).to_string());
        let auth = format!("Bearer {token}");
        let req = request(
            Method::POST,
            &target,
            "/api/v1/devices/preauthorize",
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            body,
        )
        .map_err(|e| client_err(ClientError::Setup(e.to_string())))?;
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let answer = c.send(req).await.map_err(client_err)?;
        let text = answer
            .body
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if !answer.status.is_success() {
            return Err(RegisterError::Refused {
                first: first_id,
                status: answer.status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(results) = parsed.get("results").and_then(Value::as_object) {
            for outcome in results.values() {
                let key = outcome
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| outcome.to_string());
                *outcomes.entry(key).or_default() += 1;
            }
        }
    }
    println!(
        "{label}_preauthorize_elapsed {:.3} s",
        start.elapsed().as_secs_f64()
    );
    for (outcome, count) in &outcomes {
        println!("{label}_preauthorize_{outcome} {count} count");
    }

    let (check, took) = engine::run(plan, fleet, target).await;
    print(&format!("{label}_check_poll"), &check, took);
    println!("{label}_accepted {} count", check.ok);
    if check.ok != n {
        eprintln!(
            "# WARNING: {} of {n} devices were not answered 200 after preauthorization",
            n - check.ok
        );
    }
    Ok(check.ok == n)
}

fn print(label: &str, stats: &crate::stats::Stats, elapsed: std::time::Duration) {
    let report = Report {
        label,
        stats,
        elapsed,
        server_cpu_us: None,
    };
    for line in report.lines() {
        println!("{line}");
    }
}
