//! `ota-keys init`: keys for every role and a new repository.

use ota_common::keys::SigningKey;
use ota_common::metadata::RoleType;
use ota_keys::editor::{RoleSpec, ROLES};
use ota_keys::error::{Error, Result};
use ota_keys::passphrase::Purpose;
use ota_keys::RepoEditor;

use super::{refs, report_signed, Context};

/// Keys and thresholds per role (each defaults to one key, threshold one).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of root keys (offline; give one to each holder).
    #[arg(long, default_value_t = 1)]
    root_keys: usize,
    /// Root signatures required.
    #[arg(long, default_value_t = 1)]
    root_threshold: u64,
    /// Number of targets keys.
    #[arg(long, default_value_t = 1)]
    targets_keys: usize,
    /// Targets signatures required.
    #[arg(long, default_value_t = 1)]
    targets_threshold: u64,
    /// Number of snapshot keys.
    #[arg(long, default_value_t = 1)]
    snapshot_keys: usize,
    /// Snapshot signatures required.
    #[arg(long, default_value_t = 1)]
    snapshot_threshold: u64,
    /// Number of timestamp keys.
    #[arg(long, default_value_t = 1)]
    timestamp_keys: usize,
    /// Timestamp signatures required.
    #[arg(long, default_value_t = 1)]
    timestamp_threshold: u64,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let plan = [
        (RoleType::Root, a.root_keys, a.root_threshold),
        (RoleType::Targets, a.targets_keys, a.targets_threshold),
        (RoleType::Snapshot, a.snapshot_keys, a.snapshot_threshold),
        (RoleType::Timestamp, a.timestamp_keys, a.timestamp_threshold),
    ];
    // Keys are made in memory first: the editor checks thresholds and the directory before
    // any key file is written, so a refused init leaves no orphan keys.
    let keys: Vec<Vec<SigningKey>> = plan
        .iter()
        .map(|&(_, n, _)| (0..n).map(|_| SigningKey::generate()).collect())
        .collect();
    let specs: Vec<RoleSpec> = plan
        .iter()
        .zip(&keys)
        .map(|(&(role, _, threshold), ks)| RoleSpec {
            role,
            keys: ks.iter().map(SigningKey::public).collect(),
            threshold,
        })
        .collect();
    let mut editor = RepoEditor::create(ctx.layout.dir(), ctx.now, &specs)?;
    let signed = vec![
        editor.sign_root(&refs(&keys[0]))?,
        editor.sign_targets(&refs(&keys[1]))?,
        editor.sign_snapshot(&refs(&keys[2]))?,
        editor.sign_timestamp(&refs(&keys[3]))?,
    ];
    let (kdf, store) = (ctx.kdf_for_new_keys(), ctx.store.clone());
    let pass = ctx.passphrase(Purpose::NewKey)?;
    for (role, ks) in ROLES.iter().zip(&keys) {
        for k in ks {
            let enc = store.store(k, role.name(), pass, kdf)?;
            let path = enc
                .path()
                .ok_or_else(|| Error::Invalid("key file has no path".into()))?;
            println!("{role} key {} -> {}", k.key_id(), path.display());
        }
    }
    editor.commit()?;
    for s in &signed {
        report_signed(&ctx.layout, s);
    }
    println!(
        "initialised {}; devices must trust {}",
        ctx.layout.dir().display(),
        ctx.layout.display(&ctx.layout.role_file(RoleType::Root, 1))
    );
    Ok(())
}
