//! `ota-keys sign`: add signatures to an existing metadata file (k-of-n signing).

use std::path::PathBuf;

use ota_keys::authority::{add_signatures, FileAuthority};
use ota_keys::error::{Error, Result};

use super::{refs, report_signed, Context};

/// The file and the keys.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata file, e.g. repo/metadata/2.root.json. A root vN is checked against the root
    /// keys of the repository's root vN-1 and its own; other roles against the latest root.
    file: PathBuf,
    /// Key to sign with (id, id prefix or key file); default: every authorised key here
    /// that the passphrase opens.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

pub fn run(ctx: &mut Context, a: Args) -> Result<()> {
    let authority = FileAuthority::read(&ctx.layout, &a.file)?;
    let ids = authority.authorised_ids();
    let keys = ctx.signing_keys(&ids, &a.keys, authority.role.name())?;
    if keys.is_empty() {
        return Err(Error::Invalid(format!(
            "none of the keys in {} may sign {} ({} metadata)",
            ctx.store.dir().display(),
            a.file.display(),
            authority.role
        )));
    }
    for k in &keys {
        println!("signing with {}", k.key_id());
    }
    let signed = add_signatures(&ctx.layout, &a.file, &refs(&keys))?;
    report_signed(&ctx.layout, &signed);
    Ok(())
}
