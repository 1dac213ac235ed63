//! `ota-keys list-keys`: key files (no passphrase needed) and the roles that use them.

use ota_common::metadata::Root;
use ota_keys::editor::ROLES;
use ota_keys::error::Result;
use ota_keys::repo::read_role;

use super::Context;

/// No options beyond the global ones.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(ctx: &mut Context, _a: Args) -> Result<()> {
    let keys = ctx.store.list()?;
    let root: Option<Root> = match ctx
        .layout
        .latest_version(ota_common::metadata::RoleType::Root)?
    {
        Some(v) => Some(
            read_role::<Root>(
                &ctx.layout
                    .role_file(ota_common::metadata::RoleType::Root, v),
            )?
            .signed,
        ),
        None => None,
    };
    println!(
        "{} key file(s) in {}",
        keys.len(),
        ctx.store.dir().display()
    );
    for k in &keys {
        let roles: Vec<&str> = root
            .as_ref()
            .map(|r| {
                ROLES
                    .iter()
                    .filter(|&&role| {
                        r.role(role)
                            .is_some_and(|rk| rk.keyids.contains(k.key_id()))
                    })
                    .map(|role| role.name())
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  {}  {:<9}  roles: {:<20}  {}",
            k.key_id(),
            k.label(),
            if roles.is_empty() {
                "-".to_string()
            } else {
                roles.join(",")
            },
            k.path()
                .map_or_else(String::new, |p| p.display().to_string())
        );
    }
    if let Some(r) = &root {
        println!(
            "root v{} (expires {}):",
            r.version,
            ota_common::metadata::expiry::format(&r.expires)
        );
        for role in ROLES {
            if let Some(rk) = r.role(role) {
                let here = rk
                    .keyids
                    .iter()
                    .filter(|id| keys.iter().any(|k| k.key_id() == *id))
                    .count();
                println!(
                    "  {:<9}  threshold {} of {} key(s), {} in this key directory",
                    role.name(),
                    rk.threshold,
                    rk.keyids.len(),
                    here
                );
            }
        }
    }
    Ok(())
}
