//! `ota-keys refresh`: re-sign targets, snapshot and timestamp before they expire.
//!
//! A role is due when less than half of its default lifetime remains (timestamp: 12 hours,
//! snapshot: 3.5 days, targets: 45 days) or with `--force`. Re-signing a role re-signs what
//! names it: targets → snapshot → timestamp.

use ota_common::metadata::{Role, RoleType};
use ota_keys::error::{Error, Result};
use ota_keys::repo::ExpiryPolicy;
use ota_keys::RepoEditor;

use super::{parse_role, refs, report_signed, Context};

/// Which roles.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Role to consider (repeatable; default: targets, snapshot and timestamp).
    #[arg(long = "role", value_parser = parse_role)]
    roles: Vec<RoleType>,
    /// Re-sign even if not due.
    #[arg(long)]
    force: bool,
}

const CHAIN: [RoleType; 3] = [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    if a.roles.contains(&RoleType::Root) {
        return Err(Error::Invalid(
            "root is renewed with `ota-keys rotate-root` (k-of-n, offline)".into(),
        ));
    }
    let explicit = !a.roles.is_empty();
    let considered: Vec<RoleType> = if explicit {
        a.roles.clone()
    } else {
        CHAIN.to_vec()
    };
    let mut editor = RepoEditor::load(ctx.layout.dir(), ctx.now)?;
    let policy = ExpiryPolicy::default();
    let due = |role: RoleType, editor: &RepoEditor| {
        let expires = match role {
            RoleType::Targets => editor.targets().expires(),
            RoleType::Snapshot => editor.snapshot().expires(),
            _ => editor.timestamp().expires(),
        };
        a.force || expires - ctx.now < policy.lifetime(role) / 2
    };
    // The first due role in chain order; everything after it must follow.
    let Some(start) = CHAIN
        .iter()
        .position(|&r| considered.contains(&r) && due(r, &editor))
    else {
        println!("nothing is due: every role has more than half its lifetime left (use --force)");
        return Ok(());
    };
    for &role in &CHAIN[start..] {
        let keys = ctx.role_keys(editor.root(), role, &[])?;
        if keys.is_empty() {
            let msg = format!(
                "no {role} key of root v{} in {}",
                editor.root().version,
                ctx.store.dir().display()
            );
            if explicit || role == CHAIN[start] {
                return Err(Error::Invalid(msg));
            }
            println!("note: {msg}: {role} not re-signed; the holder of the online keys must do it");
            break;
        }
        let signed = match role {
            RoleType::Targets => editor.sign_targets(&refs(&keys))?,
            RoleType::Snapshot => editor.sign_snapshot(&refs(&keys))?,
            _ => editor.sign_timestamp(&refs(&keys))?,
        };
        report_signed(&ctx.layout, &signed);
    }
    editor.commit()?;
    Ok(())
}
