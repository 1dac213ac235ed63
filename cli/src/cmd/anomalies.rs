//! `ota anomalies [--limit N] [--after CURSOR]`: what devices reported and the server
//! detected, newest first (`GET /api/v1/anomalies` → `{"anomalies", "next_after"}`).

use serde::Deserialize;
use serde_json::Value;

use super::devices::anomaly_table;
use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{print_json, Format};

/// Options of `ota anomalies`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// At most this many (server default 100, at most 1000).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Continue after this cursor (printed when more follow).
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Feed {
    anomalies: Vec<Value>,
    #[serde(default)]
    next_after: Option<String>,
}

/// Runs `ota anomalies`.
pub async fn run(ctx: &Ctx, a: Args) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(n) = a.limit {
        query.push(("limit", n.to_string()));
    }
    if let Some(c) = a.after {
        query.push(("after", c));
    }
    let value = ctx.client.get(&["api", "v1", "anomalies"], &query).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let feed: Feed = decode("GET /api/v1/anomalies", value)?;
    anomaly_table(&feed.anomalies).print_or("no anomalies");
    if let Some(next) = feed.next_after {
        eprintln!("more anomalies: ota anomalies --after {next}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_rows_take_the_named_fields() {
        let feed: Feed = decode(
            "t",
            serde_json::json!({"anomalies": [{
                "at": "2030-01-01T00:00:00Z", "device_id": "d1", "source": "device",
                "kind": "bad_signature", "message": "targets signature invalid",
                "id": "x", "detail": {}, "received_at": "2030-01-01T00:00:01Z"
            }], "next_after": null}),
        )
        .unwrap();
        let text = anomaly_table(&feed.anomalies).render();
        assert!(text.contains("d1      device"), "{text}");
        assert!(
            text.contains("bad_signature  targets signature invalid"),
            "{text}"
        );
        assert!(feed.next_after.is_none());
    }
}
