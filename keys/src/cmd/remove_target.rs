//! `ota-keys remove-target`: drop a target from a new targets version and sign it.

use ota_common::metadata::RoleType;
use ota_keys::error::{Error, Result};
use ota_keys::RepoEditor;

use super::{refs, report_signed, sign_online, Context};

/// The target to remove.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target name as listed in the targets metadata.
    name: String,
    /// Targets key to sign with (id, id prefix or key file); default: every one here.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let mut editor = RepoEditor::load(ctx.layout.dir(), ctx.now)?;
    editor.remove_target(&a.name)?;
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
    sign_online(ctx, &mut editor, RoleType::Snapshot)?;
    editor.commit()?;
    println!(
        "removed {} (its image stays in targets/ for older snapshots)",
        a.name
    );
    Ok(())
}
