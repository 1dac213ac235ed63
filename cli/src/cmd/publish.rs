//! `ota publish`: the two ways a release reaches the server.
//!
//! - Development server (it holds the targets key): upload the image (and with `--zstd` its
//!   compressed form, made locally in constant memory), then ask the server to list and
//!   sign it (`POST /api/v1/releases`); the server checks the form decodes to the image.
//! - Production (`--signed-targets REPO_DIR`): the release engineers signed a targets
//!   version with `ota-keys`; upload the images it lists that are present in the
//!   repository (and the compressed forms `ota-keys add-target --zstd` wrote beside them),
//!   then post the signed metadata byte for byte (`POST /api/v1/targets`).
//!   Before uploading anything, the server's root is compared with the repository's
//!   signatures, so that gigabytes are not sent to a server that will refuse the metadata.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ota_common::metadata::{RoleType, Root, Targets};
use ota_common::release::{ReleaseInfo, ReleaseVersion};
use ota_common::signed::RawSigned;
use ota_common::target::TargetName;
use ota_keys::compress::{compress_frames, Compressed, DEFAULT_LEVEL};
use ota_keys::repo::RepoLayout;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{print_json, size, Format};
use crate::upload::{upload_file, Uploaded};

/// Largest targets metadata read from the repository (the server's own limit).
const MAX_TARGETS_BYTES: u64 = 5_000_000;

/// Options of `ota publish`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image file to upload and publish (development-mode server).
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "signed_targets",
        conflicts_with = "signed_targets"
    )]
    image: Option<PathBuf>,
    /// Target name of the release, e.g. firmware-1.4.0.bin.
    #[arg(long, required_unless_present = "signed_targets")]
    name: Option<String>,
    /// Release version (semantic version, no build metadata), e.g. 1.4.0.
    #[arg(
        long = "version",
        value_name = "VERSION",
        required_unless_present = "signed_targets"
    )]
    release_version: Option<String>,
    /// Hardware id the image fits (repeat for several).
    #[arg(
        long = "hardware-id",
        value_name = "ID",
        required_unless_present = "signed_targets"
    )]
    hardware_ids: Vec<String>,
    /// End of security support, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    support_until: Option<DateTime<Utc>>,
    /// Also publish a zstd-compressed form (8 MiB frames) that devices may download instead.
    #[arg(long)]
    zstd: bool,
    /// zstd level, 1 (fast) to 19 (small).
    #[arg(long, value_name = "N", requires = "zstd", default_value_t = DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Publish the latest targets metadata of this ota-keys repository (production).
    #[arg(long, value_name = "REPO_DIR", conflicts_with_all = ["name", "release_version", "hardware_ids", "support_until", "zstd"])]
    signed_targets: Option<PathBuf>,
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time (like 2027-01-01T00:00:00Z): {e}"))
}

/// The new metadata versions after a publish (`PublishOutcome` on the server).
#[derive(Debug, Deserialize)]
struct Outcome {
    targets_version: u64,
    snapshot_version: u64,
    timestamp_version: u64,
}

/// Runs `ota publish`.
pub async fn run(ctx: &Ctx, a: Args) -> Result<(), CliError> {
    match (a.signed_targets, a.image) {
        (Some(dir), _) => publish_signed(ctx, &dir).await,
        (None, Some(image)) => {
            let release = DevRelease::check(
                a.name.unwrap_or_default(),
                a.release_version.as_deref().unwrap_or_default(),
                a.hardware_ids,
                a.support_until,
            )?;
            let zstd_level = a.zstd.then_some(a.zstd_level);
            publish_dev(ctx, &image, release, zstd_level).await
        }
        // clap requires one of the two.
        (None, None) => Err(CliError::Usage(
            "give an IMAGE to publish, or --signed-targets REPO_DIR".into(),
        )),
    }
}

/// A development release, checked before anything is uploaded.
#[derive(Debug)]
struct DevRelease {
    name: String,
    version: ReleaseVersion,
    hardware_ids: Vec<String>,
    support_until: Option<DateTime<Utc>>,
}

impl DevRelease {
    fn check(
        name: String,
        version: &str,
        hardware_ids: Vec<String>,
        support_until: Option<DateTime<Utc>>,
    ) -> Result<DevRelease, CliError> {
        TargetName::new(&name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
        let version = version
            .parse::<ReleaseVersion>()
            .map_err(|e| CliError::Usage(format!("--version: {e}")))?;
        if hardware_ids.is_empty() || hardware_ids.iter().any(|h| h.trim().is_empty()) {
            return Err(CliError::Usage(
                "--hardware-id must name at least one board, and none may be empty".into(),
            ));
        }
        Ok(DevRelease {
            name,
            version,
            hardware_ids,
            support_until,
        })
    }
}

/// A compressed form made for upload, in a temporary file removed on drop.
struct LocalForm {
    file: tempfile::NamedTempFile,
    compressed: Compressed,
}

/// Compresses `image` into a temporary file on a blocking thread (constant memory).
async fn compress_image(image: &Path, level: i32) -> Result<LocalForm, CliError> {
    let image = image.to_path_buf();
    eprintln!("compressing {} (zstd level {level})", image.display());
    tokio::task::spawn_blocking(move || {
        let src = std::fs::File::open(&image).map_err(|source| CliError::ReadFile {
            what: "reading the image",
            path: image.clone(),
            source,
        })?;
        let mut file = tempfile::NamedTempFile::new().map_err(|source| CliError::ReadFile {
            what: "creating a temporary file for the compressed image in",
            path: std::env::temp_dir(),
            source,
        })?;
        let compressed = compress_frames(src, file.as_file_mut(), level)
            .map_err(|source| CliError::Compress { image, source })?;
        Ok(LocalForm { file, compressed })
    })
    .await
    .map_err(|e| CliError::Usage(format!("compression task failed: {e}")))?
}

/// Uploads a compressed form and checks the server stored exactly it.
async fn upload_form(ctx: &Ctx, form: &LocalForm, label: &str) -> Result<Uploaded, CliError> {
    let stored = upload_file(&ctx.client, form.file.path(), label).await?;
    let sha256 = hex::encode(form.compressed.sha256);
    if stored.sha256 != sha256 || stored.length != form.compressed.length {
        return Err(CliError::UploadMismatch {
            path: form.file.path().to_path_buf(),
            what: "compressed form",
            expected: format!("{} bytes, sha256 {sha256}", form.compressed.length),
            actual: format!("{} bytes, sha256 {}", stored.length, stored.sha256),
        });
    }
    Ok(stored)
}

/// `part` as a percentage of `whole` (100 for an empty whole).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

async fn publish_dev(
    ctx: &Ctx,
    image: &Path,
    r: DevRelease,
    zstd_level: Option<i32>,
) -> Result<(), CliError> {
    // Compressed first: a failure there costs no upload.
    let form = match zstd_level {
        Some(level) => Some(compress_image(image, level).await?),
        None => None,
    };
    let uploaded = upload_file(&ctx.client, image, &r.name).await?;
    if let Some(f) = &form {
        if f.compressed.input_length != uploaded.length {
            return Err(CliError::UploadMismatch {
                path: image.to_path_buf(),
                what: "length (the image changed while it was compressed)",
                expected: f.compressed.input_length.to_string(),
                actual: uploaded.length.to_string(),
            });
        }
        upload_form(ctx, f, &format!("{}.zst", r.name)).await?;
    }
    let zstd = form.as_ref().map(|f| f.compressed.form());
    let body = json!({
        "name": r.name,
        "sha256": uploaded.sha256,
        "version": r.version.to_string(),
        "hardware_ids": r.hardware_ids,
        "support_until": r.support_until.map(|t| crate::output::time(&t)),
        "zstd": zstd,
    });
    let answer = ctx
        .client
        .post(&["api", "v1", "releases"], &body)
        .await
        .map_err(|e| match e {
            CliError::Conflict { code, message } if code == "no_targets_key" => {
                CliError::Conflict {
                    code,
                    message: format!(
                        "{message}\nThis is a production server: sign the release with `ota-keys \
                     add-target` and publish it with `ota publish --signed-targets REPO_DIR`"
                    ),
                }
            }
            other => other,
        })?;
    let outcome: Outcome = decode("POST /api/v1/releases", answer.clone())?;
    match ctx.format {
        Format::Json => print_json(&json!({
            "name": r.name,
            "version": r.version.to_string(),
            "sha256": uploaded.sha256,
            "length": uploaded.length,
            "zstd": zstd.as_ref().map(|z| json!({
                "length": z.length,
                "sha256": z.sha256,
                "percent_of_image": percent(z.length, uploaded.length),
            })),
            "outcome": answer,
        })),
        Format::Human => {
            println!(
                "published {} version {} ({} bytes, sha256 {})",
                r.name, r.version, uploaded.length, uploaded.sha256
            );
            if let Some(z) = &zstd {
                println!(
                    "zstd form: {} bytes, {} -> {} ({:.1}% of the image), sha256 {}",
                    z.length,
                    size(uploaded.length),
                    size(z.length),
                    percent(z.length, uploaded.length),
                    z.sha256
                );
            }
            print_outcome(&outcome);
            Ok(())
        }
    }
}

fn print_outcome(o: &Outcome) {
    println!(
        "repository now at targets v{}, snapshot v{}, timestamp v{}",
        o.targets_version, o.snapshot_version, o.timestamp_version
    );
}

/// The latest targets metadata of a repository directory.
struct RepoTargets {
    layout: RepoLayout,
    path: PathBuf,
    bytes: Vec<u8>,
    raw: RawSigned,
    targets: Targets,
}

fn read_repo_targets(dir: &Path) -> Result<RepoTargets, CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "--signed-targets {}: not a directory",
            dir.display()
        )));
    }
    let layout = RepoLayout::new(dir);
    let repo_err = |source| CliError::Repo {
        dir: dir.to_path_buf(),
        source,
    };
    let version = layout
        .latest_version(RoleType::Targets)
        .map_err(repo_err)?
        .ok_or_else(|| CliError::Metadata {
            what: layout.metadata_dir().display().to_string(),
            reason: "holds no N.targets.json: is this an ota-keys repository?".into(),
        })?;
    let path = layout.role_file(RoleType::Targets, version);
    let read_err = |source| CliError::ReadFile {
        what: "reading targets metadata",
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(&path).map_err(read_err)?.len();
    if len > MAX_TARGETS_BYTES {
        return Err(CliError::Metadata {
            what: path.display().to_string(),
            reason: format!("{len} bytes is over the server's limit of {MAX_TARGETS_BYTES}"),
        });
    }
    let bytes = std::fs::read(&path).map_err(read_err)?;
    let bad = |reason: String| CliError::Metadata {
        what: path.display().to_string(),
        reason,
    };
    let raw = RawSigned::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let targets: Targets = raw.decode().map_err(|e| bad(e.to_string()))?;
    if targets.version != version {
        return Err(bad(format!(
            "file name says version {version}, contents say {}",
            targets.version
        )));
    }
    Ok(RepoTargets {
        layout,
        path,
        bytes,
        raw,
        targets,
    })
}

async fn publish_signed(ctx: &Ctx, dir: &Path) -> Result<(), CliError> {
    let repo = read_repo_targets(dir)?;
    let version = repo.targets.version;
    let server_root = fetch_server_root(ctx).await?;
    check_trust(&server_root, &repo)?;

    let live = server_targets_version(ctx).await?;
    if live >= version {
        if already_published(ctx, &repo).await? {
            return report_already(ctx, version);
        }
        return Err(CliError::Conflict {
            code: "conflict".into(),
            message: format!(
                "the server is at targets v{live} but {} is v{version}: another publish landed \
                 first. Fetch the server's targets, re-apply your change with ota-keys, sign \
                 v{} and publish again",
                repo.layout.display(&repo.path),
                live + 1
            ),
        });
    }

    let (mut uploaded, mut absent) = (0usize, Vec::new());
    for (name, file) in &repo.targets.targets {
        let Some(sha256) = file.sha256() else {
            return Err(CliError::Metadata {
                what: format!("target {name:?}"),
                reason: "lists no sha256 hash; the server will refuse it".into(),
            });
        };
        let target = TargetName::new(name).map_err(|e| CliError::Metadata {
            what: format!("target {name:?}"),
            reason: e.to_string(),
        })?;
        let path = repo.layout.target_path(&target, sha256);
        let Ok(meta) = std::fs::metadata(&path) else {
            absent.push(name.clone());
            continue;
        };
        // Refuse before sending: a changed file would be stored but never publishable.
        if meta.len() != file.length {
            return Err(CliError::UploadMismatch {
                path,
                what: "length",
                expected: file.length.to_string(),
                actual: meta.len().to_string(),
            });
        }
        let stored = upload_file(&ctx.client, &path, name).await?;
        if !stored.sha256.eq_ignore_ascii_case(sha256) {
            return Err(CliError::UploadMismatch {
                path,
                what: "sha256",
                expected: sha256.to_string(),
                actual: stored.sha256,
            });
        }
        uploaded += 1;
    }
    let forms = upload_repo_forms(ctx, &repo, &mut absent).await?;
    for name in &absent {
        eprintln!(
            "note: {name} is not under {}; not uploaded (the server must already have it)",
            repo.layout.targets_dir().display()
        );
    }

    let answer = ctx
        .client
        .post_bytes(&["api", "v1", "targets"], repo.bytes.clone())
        .await
        .map_err(|e| explain_targets_refusal(e, &repo))?;
    let outcome: Outcome = decode("POST /api/v1/targets", answer.clone())?;
    match ctx.format {
        Format::Json => print_json(&json!({
            "targets_file": repo.path,
            "uploaded": uploaded,
            "compressed_forms_uploaded": forms,
            "not_present_locally": absent,
            "outcome": answer,
        })),
        Format::Human => {
            let forms = if forms > 0 {
                format!(", {forms} compressed form(s)")
            } else {
                String::new()
            };
            println!(
                "published {} ({} target(s); {uploaded} image(s){forms} uploaded)",
                repo.layout.display(&repo.path),
                repo.targets.targets.len()
            );
            print_outcome(&outcome);
            Ok(())
        }
    }
}

/// Uploads the compressed forms the targets name (`custom.zstd`) that `ota-keys add-target
/// --zstd` wrote into the repository; names a form absent locally in `absent` (as
/// `NAME (zstd)`). Returns how many were uploaded.
async fn upload_repo_forms(
    ctx: &Ctx,
    repo: &RepoTargets,
    absent: &mut Vec<String>,
) -> Result<usize, CliError> {
    let mut uploaded = 0;
    for (name, file) in &repo.targets.targets {
        // Targets without valid release fields are the server's to refuse.
        let Some(form) = ReleaseInfo::from_target(name, file)
            .ok()
            .and_then(|i| i.zstd)
        else {
            continue;
        };
        let target = TargetName::new(name).map_err(|e| CliError::Metadata {
            what: format!("target {name:?}"),
            reason: e.to_string(),
        })?;
        let path = repo.layout.compressed_path(&target, &form);
        let Ok(meta) = std::fs::metadata(&path) else {
            absent.push(format!("{name} (zstd)"));
            continue;
        };
        if meta.len() != form.length {
            return Err(CliError::UploadMismatch {
                path,
                what: "length",
                expected: form.length.to_string(),
                actual: meta.len().to_string(),
            });
        }
        let stored = upload_file(&ctx.client, &path, &format!("{name}.zst")).await?;
        if stored.sha256 != form.sha256 {
            return Err(CliError::UploadMismatch {
                path,
                what: "sha256",
                expected: form.sha256,
                actual: stored.sha256,
            });
        }
        uploaded += 1;
    }
    Ok(uploaded)
}

fn explain_targets_refusal(e: CliError, repo: &RepoTargets) -> CliError {
    match e {
        CliError::Conflict { code, message } => CliError::Conflict {
            code,
            message: format!(
                "{message}\nAnother publish landed first (the server's targets changed since \
                 {} was signed): fetch the current targets, re-apply your change with ota-keys, \
                 sign the next version and publish again",
                repo.layout.display(&repo.path)
            ),
        },
        CliError::Forbidden { code, message } if code == "bad_signature" => {
            CliError::UntrustedRepo { detail: message }
        }
        other => other,
    }
}

/// The server's latest root (public TUF metadata).
async fn fetch_server_root(ctx: &Ctx) -> Result<Root, CliError> {
    let (status, bytes) = ctx.client.get_public(&["metadata", "root.json"]).await?;
    if !status.is_success() {
        return Err(CliError::BadResponse {
            url: "/metadata/root.json".into(),
            reason: format!("HTTP {status}"),
        });
    }
    let bad = |reason: String| CliError::Metadata {
        what: "the server's root.json".into(),
        reason,
    };
    RawSigned::parse(&bytes)
        .map_err(|e| bad(e.to_string()))?
        .decode::<Root>()
        .map_err(|e| bad(e.to_string()))
}

/// Refuses when the repository's targets are not signed by enough of the keys the server's
/// root names for the targets role. Counts key ids only: the server verifies signatures.
fn check_trust(server_root: &Root, repo: &RepoTargets) -> Result<(), CliError> {
    let role = server_root.roles.get(RoleType::Targets.name());
    let (trusted, threshold): (BTreeSet<&str>, u64) = match role {
        Some(r) => (r.keyids.iter().map(|k| k.0.as_str()).collect(), r.threshold),
        None => (BTreeSet::new(), 1),
    };
    let signers: BTreeSet<&str> = repo
        .raw
        .signatures()
        .iter()
        .map(|s| s.keyid.0.as_str())
        .collect();
    let matching = signers.intersection(&trusted).count() as u64;
    if matching >= threshold {
        return Ok(());
    }
    let short = |ids: &BTreeSet<&str>| {
        ids.iter()
            .map(|k| k.chars().take(12).collect::<String>())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(CliError::UntrustedRepo {
        detail: format!(
            "the server's root (v{}) requires {threshold} signature(s) by its targets keys [{}], \
             but {} is signed by [{}] ({matching} of them trusted). Nothing was uploaded. \
             A development server signs with its own keys and does not take an ota-keys \
             repository; a production server must be set up with this repository's root \
             (or have the root rotated to it) first",
            server_root.version,
            short(&trusted),
            repo.layout.display(&repo.path),
            short(&signers),
        ),
    })
}

/// The server's current targets version, from `/healthz` (public).
async fn server_targets_version(ctx: &Ctx) -> Result<u64, CliError> {
    let (_, bytes) = ctx.client.get_public(&["healthz"]).await?;
    let health: Value = serde_json::from_slice(&bytes).map_err(|e| CliError::BadResponse {
        url: "/healthz".into(),
        reason: e.to_string(),
    })?;
    health
        .get("targets_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| CliError::BadResponse {
            url: "/healthz".into(),
            reason: "no targets_version".into(),
        })
}

/// Whether the server already serves exactly these targets bytes (a repeated publish).
async fn already_published(ctx: &Ctx, repo: &RepoTargets) -> Result<bool, CliError> {
    let file = format!("{}.targets.json", repo.targets.version);
    let (status, bytes) = ctx.client.get_public(&["metadata", &file]).await?;
    Ok(status.is_success() && bytes == repo.bytes)
}

fn report_already(ctx: &Ctx, version: u64) -> Result<(), CliError> {
    match ctx.format {
        Format::Json => print_json(&json!({"already_published": true, "targets_version": version})),
        Format::Human => {
            println!("targets v{version} is already published on the server; nothing to do");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_release_is_checked_before_upload() {
        let ok = DevRelease::check("fw-1.0.bin".into(), "1.0.0", vec!["board".into()], None);
        assert!(ok.is_ok());
        let e = DevRelease::check("fw".into(), "1.0", vec!["board".into()], None).unwrap_err();
        assert!(e.to_string().contains("--version"), "{e}");
        let e = DevRelease::check("fw".into(), "1.0.0+build", vec!["b".into()], None).unwrap_err();
        assert!(e.to_string().contains("build"), "{e}");
        let e = DevRelease::check("../etc/passwd".into(), "1.0.0", vec!["b".into()], None);
        assert!(e.is_err());
        let e = DevRelease::check("fw".into(), "1.0.0", vec![" ".into()], None).unwrap_err();
        assert!(e.to_string().contains("--hardware-id"), "{e}");
    }

    #[test]
    fn support_until_is_rfc3339() {
        assert!(parse_rfc3339("2027-01-01T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2027-01-01T02:00:00+02:00").is_ok());
        assert!(parse_rfc3339("2027-01-01").is_err());
    }

    #[test]
    fn a_directory_without_targets_is_not_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_repo_targets(dir.path()).err().unwrap();
        assert!(e.to_string().contains("N.targets.json"), "{e}");
        let e = read_repo_targets(&dir.path().join("missing"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
