//! `ota-keys rotate-key ROLE`: replace one key of a role (a lost or retiring key).
//!
//! Writes a new root with the key replaced, signed by the root keys available here (the
//! previous root's threshold and the new one's both apply), then re-signs the role's
//! metadata with the new key so that clients keep verifying once the root is complete.

use ota_common::metadata::RoleType;
use ota_keys::error::{Error, Result};
use ota_keys::RepoEditor;

use super::{finish_root_change, parse_role, role_key_id, Context};

/// Which key, and its replacement.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The role: root, targets, snapshot or timestamp.
    #[arg(value_parser = parse_role)]
    role: RoleType,
    /// The key to replace (id or unique prefix); needed when the role has several.
    #[arg(long, value_name = "KEYID")]
    old: Option<String>,
    /// The replacement (id, id prefix or key file here); default: a new key, stored here.
    #[arg(long, value_name = "KEY")]
    new: Option<String>,
    /// Key to sign the new root with (default: every old or new root key here).
    #[arg(long = "key", value_name = "KEY")]
    sign_with: Vec<String>,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let mut editor = RepoEditor::load(ctx.layout.dir(), ctx.now)?;
    let root = editor.root().clone();
    let old = match &a.old {
        Some(spec) => role_key_id(&root, a.role, spec)?,
        None => match editor.role_key_ids(a.role).as_slice() {
            [only] => only.clone(),
            ids => {
                return Err(Error::Invalid(format!(
                    "{} has {} keys: name the one to replace with --old",
                    a.role,
                    ids.len()
                )))
            }
        },
    };
    let new = match &a.new {
        Some(spec) => ctx.store.find(spec)?.public().clone(),
        None => ctx.generate_key(a.role.name())?.public(),
    };
    editor.replace_key(a.role, &old, new)?;
    println!("{}: replacing {old}", a.role);
    finish_root_change(ctx, &mut editor, Some(a.role), &a.sign_with, false)?;
    editor.commit()?;
    Ok(())
}
