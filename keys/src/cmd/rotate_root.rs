//! `ota-keys rotate-root`: a new root version with a role's keys or threshold changed.
//!
//! The new root must be signed by a threshold of the previous root's root keys and of its
//! own. Signatures from the keys available here are added; `--unsigned` writes it with none.
//! The file is `metadata/{N}.root.json`; until both thresholds are met `verify` fails, and
//! the other holders add theirs with `ota-keys sign`. `root.json` follows once it is complete.

use ota_common::keys::Key;
use ota_common::metadata::RoleType;
use ota_keys::editor::RoleSpec;
use ota_keys::error::{Error, Result};
use ota_keys::RepoEditor;

use super::{finish_root_change, parse_role, role_key_id, Context};

/// The change.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The role whose keys or threshold change. Without it, the root is renewed only (new
    /// version and expiry).
    #[arg(long, value_parser = parse_role)]
    role: Option<RoleType>,
    /// Add a key (id, id prefix or key file in the key directory). Repeatable.
    #[arg(long = "add-key", value_name = "KEY", requires = "role")]
    add_keys: Vec<String>,
    /// Generate this many new keys for the role (stored encrypted here).
    #[arg(long, default_value_t = 0, requires = "role")]
    generate: usize,
    /// Remove a key from the role (id or unique prefix). Repeatable.
    #[arg(long = "remove-key", value_name = "KEYID", requires = "role")]
    remove_keys: Vec<String>,
    /// Remove every current key of the role (with --generate or --add-key: a full rotation).
    #[arg(long, requires = "role")]
    remove_all: bool,
    /// The role's new threshold (default: unchanged).
    #[arg(long, requires = "role")]
    threshold: Option<u64>,
    /// Key to sign the new root with (default: every old or new root key here).
    #[arg(long = "key", value_name = "KEY", conflicts_with = "unsigned")]
    sign_with: Vec<String>,
    /// Write the new root without signatures (holders add them with `ota-keys sign`).
    #[arg(long)]
    unsigned: bool,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let mut editor = RepoEditor::load(ctx.layout.dir(), ctx.now)?;
    if let Some(role) = a.role {
        let root = editor.root().clone();
        let current = root
            .role(role)
            .ok_or_else(|| Error::Invalid(format!("root v{} has no {role} role", root.version)))?;
        let mut keep = current.keyids.clone();
        if a.remove_all {
            keep.clear();
        }
        for spec in &a.remove_keys {
            let id = role_key_id(&root, role, spec)?;
            keep.retain(|k| *k != id);
        }
        let mut keys: Vec<Key> = keep
            .iter()
            .filter_map(|id| root.keys.get(id).cloned())
            .collect();
        for spec in &a.add_keys {
            let public = ctx.store.find(spec)?.public().clone();
            if !keys.contains(&public) {
                keys.push(public);
            }
        }
        for _ in 0..a.generate {
            keys.push(ctx.generate_key(role.name())?.public());
        }
        let threshold = a.threshold.unwrap_or(current.threshold);
        editor.set_role(&RoleSpec {
            role,
            keys,
            threshold,
        })?;
        println!(
            "{role}: {} key(s), threshold {threshold}",
            editor.role_key_ids(role).len()
        );
    }
    finish_root_change(ctx, &mut editor, a.role, &a.sign_with, a.unsigned)?;
    editor.commit()?;
    Ok(())
}
