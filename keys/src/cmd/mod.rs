//! The command line: global options, the shared context, and one module per subcommand.

mod add_target;
mod init;
mod list_keys;
mod refresh;
mod remove_target;
mod rotate_key;
mod rotate_root;
mod sign;
mod verify;

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use ota_common::keys::{KeyId, SigningKey};
use ota_common::metadata::{RoleType, Root};
use ota_keys::authority::SignedFile;
use ota_keys::error::{Error, Result};
use ota_keys::keyfile::KdfParams;
use ota_keys::keystore::{self, KeyStore};
use ota_keys::passphrase::{self, Passphrase, Purpose};
use ota_keys::repo::RepoLayout;
use ota_keys::RepoEditor;

/// CAUTION: set to `1` only in tests. New keys are then encrypted with trivially cheap
/// Argon2 parameters, so a stolen key file's passphrase is far easier to guess.
pub const INSECURE_FAST_KDF_ENV: &str = "OTA_KEYS_INSECURE_FAST_KDF";

/// ota-keys: keys, root rotation and signing for an ota TUF repository.
#[derive(Parser, Debug)]
#[command(name = "ota-keys", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Global {
    /// Repository directory (holds metadata/ and targets/).
    #[arg(long, global = true, env = "OTA_REPO", default_value = "repo")]
    repo: PathBuf,
    /// Directory of encrypted key files.
    #[arg(long, global = true, env = "OTA_KEYS_DIR", default_value = "keys")]
    keys_dir: PathBuf,
    /// Read the passphrase from this file (one trailing newline removed). Otherwise the
    /// OTA_KEY_PASSPHRASE environment variable, otherwise a prompt on the terminal.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Act as if the time were this (RFC 3339 or YYYY-MM-DD): for expiries and checks.
    /// Default: the system clock.
    #[arg(long, global = true, value_name = "TIME", value_parser = parse_time)]
    now: Option<DateTime<Utc>>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create keys for every role and a new repository (root v1, empty targets).
    Init(init::Args),
    /// Add a release image: hash it, list it in a new targets version, sign.
    AddTarget(add_target::Args),
    /// Remove a target from a new targets version, sign.
    RemoveTarget(remove_target::Args),
    /// Add this holder's signature to an existing metadata file (k-of-n signing).
    Sign(sign::Args),
    /// Write a new root version, changing a role's keys or threshold (or just renewing it).
    RotateRoot(rotate_root::Args),
    /// Replace one key of a role: new root, and the role's metadata re-signed.
    RotateKey(rotate_key::Args),
    /// Re-sign targets, snapshot and timestamp that expire soon (new version and expiry).
    Refresh(refresh::Args),
    /// Verify the repository offline with the device's client workflow, and report.
    Verify(verify::Args),
    /// List key files and the roles that use them.
    ListKeys(list_keys::Args),
}

/// Runs the command line.
pub fn run(cli: Cli) -> Result<()> {
    let mut ctx = Context::new(cli.global);
    match cli.command {
        Command::Init(a) => init::run(&mut ctx, a),
        Command::AddTarget(a) => add_target::run(&mut ctx, a),
        Command::RemoveTarget(a) => remove_target::run(&mut ctx, a),
        Command::Sign(a) => sign::run(&mut ctx, a),
        Command::RotateRoot(a) => rotate_root::run(&mut ctx, a),
        Command::RotateKey(a) => rotate_key::run(&mut ctx, a),
        Command::Refresh(a) => refresh::run(&mut ctx, a),
        Command::Verify(a) => verify::run(&mut ctx, a),
        Command::ListKeys(a) => list_keys::run(&mut ctx, a),
    }
}

/// What every command shares: paths, time, KDF choice, and the passphrase (asked once).
pub struct Context {
    layout: RepoLayout,
    store: KeyStore,
    now: DateTime<Utc>,
    kdf: KdfParams,
    passphrase_file: Option<PathBuf>,
    passphrase: Option<Passphrase>,
}

impl Context {
    fn new(g: Global) -> Self {
        let kdf = if std::env::var(INSECURE_FAST_KDF_ENV).as_deref() == Ok("1") {
            KdfParams::dangerous_fast()
        } else {
            KdfParams::default()
        };
        // The one clock read: everything below takes `now` as a value.
        #[allow(clippy::disallowed_methods)]
        let now = g
            .now
            .unwrap_or_else(|| DateTime::<Utc>::from(std::time::SystemTime::now()));
        Context {
            layout: RepoLayout::new(g.repo),
            store: KeyStore::new(g.keys_dir),
            now,
            kdf,
            passphrase_file: g.passphrase_file,
            passphrase: None,
        }
    }

    /// The passphrase, obtained on first use.
    fn passphrase(&mut self, purpose: Purpose) -> Result<&Passphrase> {
        if self.passphrase.is_none() {
            self.passphrase = Some(passphrase::obtain(
                self.passphrase_file.as_deref(),
                purpose,
            )?);
        }
        self.passphrase
            .as_ref()
            .ok_or_else(|| Error::Invalid("passphrase unavailable".into()))
    }

    /// The KDF parameters for new keys, warning loudly when the test-only knob is set.
    fn kdf_for_new_keys(&self) -> KdfParams {
        if self.kdf != KdfParams::default() {
            eprintln!(
                "WARNING: {INSECURE_FAST_KDF_ENV}=1: this key gets trivially cheap KDF parameters (tests only)"
            );
        }
        self.kdf
    }

    /// Generates a key for `label` and stores it encrypted.
    fn generate_key(&mut self, label: &str) -> Result<SigningKey> {
        let kdf = self.kdf_for_new_keys();
        let store = self.store.clone();
        let pass = self.passphrase(Purpose::NewKey)?;
        let (key, enc) = store.generate(label, pass, kdf)?;
        println!(
            "generated {label} key {} ({})",
            key.key_id(),
            enc.path()
                .map_or_else(String::new, |p| p.display().to_string())
        );
        Ok(key)
    }

    /// Unlocks the keys that may sign for `authorised`: those named with `--key` (each must
    /// be authorised and open), or else every authorised key in the key directory that the
    /// passphrase opens. No passphrase is asked when the directory holds none of them.
    fn signing_keys(
        &mut self,
        authorised: &BTreeSet<KeyId>,
        named: &[String],
        what: &str,
    ) -> Result<Vec<SigningKey>> {
        let (candidates, strict) = if named.is_empty() {
            (self.store.with_ids(authorised)?, false)
        } else {
            let mut v = Vec::with_capacity(named.len());
            for spec in named {
                let k = self.store.find(spec)?;
                if !authorised.contains(k.key_id()) {
                    return Err(Error::NotAuthorised {
                        key_id: k.key_id().0.clone(),
                        role: what.into(),
                    });
                }
                v.push(k);
            }
            (v, true)
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let pass = self.passphrase(Purpose::Unlock)?;
        let unlocked = keystore::unlock(&candidates, pass, strict)?;
        for skipped in &unlocked.skipped {
            eprintln!("note: skipped: {skipped}");
        }
        Ok(unlocked.keys)
    }

    /// Keys for `role` under `root` (see [`Context::signing_keys`]).
    fn role_keys(
        &mut self,
        root: &Root,
        role: RoleType,
        named: &[String],
    ) -> Result<Vec<SigningKey>> {
        let ids: BTreeSet<KeyId> = root
            .role(role)
            .map(|r| r.keyids.iter().cloned().collect())
            .unwrap_or_default();
        self.signing_keys(&ids, named, role.name())
    }
}

/// Borrows a list of keys as the signing functions want them.
fn refs(keys: &[SigningKey]) -> Vec<&SigningKey> {
    keys.iter().collect()
}

/// Signs `first` (snapshot or timestamp) and the timestamp after it, with keys from the key
/// directory if they are there. Without them the new metadata waits for whoever holds the
/// online keys (the server).
fn sign_online(ctx: &mut Context, editor: &mut RepoEditor, first: RoleType) -> Result<()> {
    let roles: &[RoleType] = if first == RoleType::Timestamp {
        &[RoleType::Timestamp]
    } else {
        &[RoleType::Snapshot, RoleType::Timestamp]
    };
    for &role in roles {
        let keys = ctx.role_keys(editor.root(), role, &[])?;
        if keys.is_empty() {
            println!(
                "note: no {role} key in {}: {role} not re-signed; the holder of the online keys (the server) must publish it",
                ctx.store.dir().display()
            );
            return Ok(());
        }
        let signed = match role {
            RoleType::Snapshot => editor.sign_snapshot(&refs(&keys))?,
            _ => editor.sign_timestamp(&refs(&keys))?,
        };
        report_signed(&ctx.layout, &signed);
    }
    Ok(())
}

/// Prints what was signed and, if thresholds are not met, how to finish.
fn report_signed(layout: &RepoLayout, f: &SignedFile) {
    let file = layout.display(&f.path);
    let status: Vec<String> = f
        .checks
        .iter()
        .map(|c| format!("{}/{} {}", c.valid, c.threshold, c.key_set))
        .collect();
    println!(
        "{file} ({} v{}): signatures {}",
        f.role,
        f.version,
        status.join(", ")
    );
    if !f.complete() {
        println!("  threshold not met yet: other key holders run `ota-keys sign {file}`");
    }
}

/// Finds the key id of `role` in `root` that `spec` names (full id or unique prefix).
fn role_key_id(root: &Root, role: RoleType, spec: &str) -> Result<KeyId> {
    let spec_lc = spec.to_ascii_lowercase();
    let ids = root
        .role(role)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    let hits: Vec<&KeyId> = ids
        .iter()
        .filter(|id| {
            id.0 == spec_lc || (spec_lc.len() >= keystore::MIN_PREFIX && id.0.starts_with(&spec_lc))
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::UnknownKeyId {
            key_id: spec.into(),
            context: format!("not a {role} key of root v{}", root.version),
        }),
        many => Err(Error::AmbiguousKeyId {
            prefix: spec.into(),
            matches: many.iter().map(|id| id.0.clone()).collect(),
        }),
    }
}

/// Parses a role name.
fn parse_role(s: &str) -> std::result::Result<RoleType, String> {
    match s {
        "root" => Ok(RoleType::Root),
        "targets" => Ok(RoleType::Targets),
        "snapshot" => Ok(RoleType::Snapshot),
        "timestamp" => Ok(RoleType::Timestamp),
        _ => Err(format!(
            "{s:?} is not a role (root, targets, snapshot, timestamp)"
        )),
    }
}

/// Parses RFC 3339, or a date (midnight UTC).
fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("{s:?} is neither RFC 3339 (2030-01-31T00:00:00Z) nor a date (2030-01-31)")
        })
}

/// After a root edit: sign the new root, then re-sign the changed role's metadata (and what
/// depends on it) with the new keys, so clients keep verifying once the root is complete.
fn finish_root_change(
    ctx: &mut Context,
    editor: &mut RepoEditor,
    changed: Option<RoleType>,
    sign_with: &[String],
    unsigned: bool,
) -> Result<()> {
    let keys = if unsigned {
        Vec::new()
    } else {
        let ids: BTreeSet<KeyId> = editor
            .root_key_sets()?
            .iter()
            .flat_map(|s| s.ids.iter().cloned())
            .collect();
        ctx.signing_keys(&ids, sign_with, "root")?
    };
    let root = editor.sign_root(&refs(&keys))?;
    report_signed(&ctx.layout, &root);
    match changed {
        Some(RoleType::Targets) => {
            let keys = ctx.role_keys(editor.root(), RoleType::Targets, &[])?;
            if keys.is_empty() {
                println!("note: no new targets key here: targets not re-signed (sign them before clients update)");
            } else {
                let t = editor.sign_targets(&refs(&keys))?;
                report_signed(&ctx.layout, &t);
                sign_online(ctx, editor, RoleType::Snapshot)?;
            }
        }
        Some(role @ (RoleType::Snapshot | RoleType::Timestamp)) => sign_online(ctx, editor, role)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_roles_parse() {
        assert_eq!(
            parse_time("2030-01-31").unwrap().to_rfc3339(),
            "2030-01-31T00:00:00+00:00"
        );
        assert!(parse_time("2030-01-31T01:02:03+01:00").is_ok());
        assert!(parse_time("tomorrow").is_err());
        assert_eq!(parse_role("targets").unwrap(), RoleType::Targets);
        assert!(parse_role("admin").is_err());
    }
}
