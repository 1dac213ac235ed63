//! `ota-keys verify`: the device's client workflow, run offline over the directory.

use std::fs;
use std::path::PathBuf;

use ota_common::metadata::RoleType;
use ota_keys::error::{Error, Result};
use ota_keys::verification::{verify_repository, TargetFiles};

use super::Context;

/// What to trust and what to check.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The root to start from (default: metadata/1.root.json, what devices ship with).
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// Check the metadata only, not the images in targets/.
    #[arg(long)]
    skip_images: bool,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let root_path = a
        .trusted_root
        .unwrap_or_else(|| ctx.layout.role_file(RoleType::Root, 1));
    let root = fs::read(&root_path).map_err(|e| Error::io("read trusted root", &root_path, e))?;
    let images = if a.skip_images {
        TargetFiles::Skip
    } else {
        TargetFiles::Check
    };
    let report = verify_repository(&ctx.layout, &root, ctx.now, images)?;
    print!("{report}");
    println!("OK");
    Ok(())
}
