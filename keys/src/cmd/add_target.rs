//! `ota-keys add-target`: list a release image in a new targets version and sign it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ota_common::metadata::RoleType;
use ota_common::release::{ReleaseInfo, ReleaseVersion};
use ota_keys::error::{Error, Result};
use ota_keys::{RepoEditor, TargetCustom};
use serde_json::{Map, Value};

use super::{parse_time, refs, report_signed, sign_online, Context};

/// The image and its release fields.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image file.
    image: PathBuf,
    /// Target name (default: the image's file name). May contain `/`.
    #[arg(long)]
    name: Option<String>,
    /// Release version (semantic version, no build metadata), e.g. 1.4.0.
    #[arg(long = "version", value_name = "VERSION")]
    release_version: String,
    /// Hardware id the image fits (repeat for several).
    #[arg(long = "hardware-id", value_name = "ID", required = true)]
    hardware_ids: Vec<String>,
    /// End of security support (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    support_until: Option<DateTime<Utc>>,
    /// Extra custom field, KEY=VALUE; VALUE is parsed as JSON, else taken as a string.
    #[arg(long = "custom", value_name = "KEY=VALUE")]
    custom: Vec<String>,
    /// Targets key to sign with (id, id prefix or key file); default: every one here.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .image
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{} has no file name: give --name",
                    a.image.display()
                ))
            })?,
    };
    let version: ReleaseVersion = a.release_version.parse().map_err(|e| Error::Target {
        name: name.clone(),
        reason: format!("{e}"),
    })?;
    let custom = TargetCustom {
        release: ReleaseInfo {
            version,
            hardware_ids: a.hardware_ids.clone(),
            support_until: a.support_until,
            zstd: None,
        },
        extra: parse_custom(&name, &a.custom)?,
    };
    let mut editor = RepoEditor::load(ctx.layout.dir(), ctx.now)?;
    let file = editor.add_target_from_file(&name, &a.image, &custom)?;
    let keys = ctx.role_keys(editor.root(), RoleType::Targets, &a.keys)?;
    if keys.is_empty() {
        return Err(Error::Invalid(format!(
            "no targets key of root v{} in {}",
            editor.root().version,
            ctx.store.dir().display()
        )));
    }
    let targets = editor.sign_targets(&refs(&keys))?;
    report_signed(&ctx.layout, &targets);
    // Snapshot and timestamp name the targets by version only, so they are signed now even
    // when the targets still lack co-signatures: `verify` fails until the other holders
    // have run `ota-keys sign` on the targets file, and then passes without re-signing.
    sign_online(ctx, &mut editor, RoleType::Snapshot)?;
    editor.commit()?;
    println!(
        "added {name} ({} bytes, sha256 {}) version {}",
        file.length,
        file.sha256().unwrap_or("-"),
        custom.release.version
    );
    Ok(())
}

/// `KEY=VALUE` pairs into a JSON object.
pub fn parse_custom(target: &str, pairs: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| Error::Target {
            name: target.into(),
            reason: format!("--custom {pair:?} is not KEY=VALUE"),
        })?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
        out.insert(k.into(), value);
    }
    Ok(out)
}
