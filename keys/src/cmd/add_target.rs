//! `ota-keys add-target`: list a release image in a new targets version and sign it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ota_common::metadata::RoleType;
use ota_common::release::{ReleaseInfo, ReleaseVersion};
use ota_keys::compress::DEFAULT_LEVEL;
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
    /// Also make a zstd-compressed form (8 MiB frames), listed in `custom.zstd` and written
    /// beside the image in targets/ for `ota publish --signed-targets` to upload.
    #[arg(long)]
    zstd: bool,
    /// zstd level, 1 (fast) to 19 (small).
    #[arg(long, value_name = "N", requires = "zstd", default_value_t = DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
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
    let (file, compressed) = if a.zstd {
        let (file, c) =
            editor.add_target_from_file_compressed(&name, &a.image, &custom, a.zstd_level)?;
        (file, Some(c))
    } else {
        (editor.add_target_from_file(&name, &a.image, &custom)?, None)
    };
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
    if let Some(c) = compressed {
        println!(
            "zstd form {} bytes ({:.1}% of the image, {} frame(s)), sha256 {}",
            c.length,
            percent(c.length, file.length),
            c.frames,
            hex::encode(c.sha256)
        );
    }
    Ok(())
}

/// `part` as a percentage of `whole` (100 for an empty whole).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
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
