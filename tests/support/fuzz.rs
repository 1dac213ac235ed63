//! Mutation-based fuzzing of metadata parsing and of the whole client workflow.
//!
//! One copy, two drivers: `tests/fuzz_smoke.rs` runs a few thousand cases in CI and the
//! `fuzz-metadata` binary in `fuzz/` runs as many as asked. Cases are deterministic: case
//! `i` of seed `s` is built from its own generator, so any failure replays alone
//! (`fuzz-metadata --replay s i`).
//!
//! Each case takes a valid repository (see [`corpora`]), picks one file position (a served
//! file the client fetches, or one of the client's local files) and mutates that file:
//! bytes (flips, interesting values, insertions, deletions, truncation), JSON structure
//! (replace, delete, duplicate or graft a node), or, in "insider" cases, the `signed` part
//! re-signed with the role's legitimate keys, which drives the checks behind the
//! signatures (versions, expiry, delegations). The mutated bytes go through
//! [`RawSigned::parse`], every role's `decode` and what reads their fields, then through a
//! full refresh. The oracle:
//! - nothing panics;
//! - whatever a refresh accepts re-verifies: each role under the accepted root, and a second
//!   refresh from the accepted metadata over the same files reaches the same content;
//! - without re-signing, an accepted refresh trusts exactly the content the legitimate
//!   repository signed (a mutation may only touch what no signature covers).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use ota_common::cjson;
use ota_common::client::{ClientLimits, LocalMetadata, TrustedRepository};
use ota_common::metadata::{RoleType, Root, Snapshot, Targets, Timestamp};
use ota_common::release::ReleaseInfo;
use ota_common::signed::RawSigned;
use ota_common::target::TargetName;
use ota_common::verify::verify_role;
use serde_json::{json, Value};

use super::repo::{key, now, refresh_files, release, Files, Repo, TIMESTAMP_SEED};

/// SplitMix64: small, deterministic, and enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
}

/// Where a mutated file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A file the repository serves, by name.
    Served(String),
    /// The client's trusted root.
    LocalRoot,
    /// The client's last timestamp.
    LocalTimestamp,
    /// The client's last snapshot.
    LocalSnapshot,
    /// The client's last top-level targets.
    LocalTargets,
    /// The client's last copy of a delegated role.
    LocalDelegated(String),
}

/// A valid repository and a client that refreshed from an older state of it.
pub struct Corpus {
    /// What it exercises.
    pub name: &'static str,
    /// The served files.
    pub files: Files,
    /// The client's metadata before the refresh.
    pub local: LocalMetadata,
    /// The legitimate outcome: canonical signed bytes by role.
    pub baseline: BTreeMap<String, Vec<u8>>,
    /// Every position a case can mutate, with the seeds of the keys that legitimately sign
    /// the file there.
    pub slots: Vec<(Slot, Vec<u8>)>,
}

impl Corpus {
    fn original(&self, slot: &Slot) -> Option<&[u8]> {
        match slot {
            Slot::Served(name) => self.files.get(name).map(Vec::as_slice),
            Slot::LocalRoot => Some(&self.local.root),
            Slot::LocalTimestamp => self.local.timestamp.as_deref(),
            Slot::LocalSnapshot => self.local.snapshot.as_deref(),
            Slot::LocalTargets => self.local.targets.as_deref(),
            Slot::LocalDelegated(r) => self.local.delegated.get(r).map(Vec::as_slice),
        }
    }

    /// The files and local metadata with `bytes` in `slot`.
    fn with(&self, slot: &Slot, bytes: Vec<u8>) -> (Files, LocalMetadata) {
        let mut files = self.files.clone();
        let mut local = self.local.clone();
        match slot {
            Slot::Served(name) => {
                files.insert(name.clone(), bytes);
            }
            Slot::LocalRoot => local.root = bytes,
            Slot::LocalTimestamp => local.timestamp = Some(bytes),
            Slot::LocalSnapshot => local.snapshot = Some(bytes),
            Slot::LocalTargets => local.targets = Some(bytes),
            Slot::LocalDelegated(r) => {
                local.delegated.insert(r.clone(), bytes);
            }
        }
        (files, local)
    }
}

/// Canonical signed bytes of every role a refresh trusted, by role name.
pub fn signed_content(trusted: &TrustedRepository) -> BTreeMap<String, Vec<u8>> {
    let canon = |raw: &[u8]| RawSigned::parse(raw).unwrap().canonical_signed().unwrap();
    let mut out = BTreeMap::from([
        ("root".to_string(), canon(trusted.root().raw())),
        ("timestamp".to_string(), canon(trusted.timestamp().raw())),
        ("snapshot".to_string(), canon(trusted.snapshot().raw())),
        ("targets".to_string(), canon(trusted.targets().raw())),
    ]);
    for (name, v) in trusted.delegated() {
        out.insert(format!("delegated:{name}"), canon(v.raw()));
    }
    out
}

fn seeds_of(keys: &[ota_common::keys::SigningKey]) -> Vec<u8> {
    keys.iter().map(|k| k.seed()[0]).collect()
}

/// Builds a corpus: `publish_old` makes the state the client refreshed from, then
/// `publish_new` the state it refreshes to.
fn corpus(name: &'static str, mut repo: Repo, publish_new: impl FnOnce(&mut Repo)) -> Corpus {
    let local = repo.refresh(repo.local()).unwrap().to_local();
    let local_keys = (
        seeds_of(&repo.root_keys),
        seeds_of(&repo.timestamp_keys),
        seeds_of(&repo.snapshot_keys),
        seeds_of(&repo.targets_keys),
    );
    publish_new(&mut repo);
    let out = refresh_files(&repo.files, local.clone(), now(), ClientLimits::default());
    let trusted = out.result.as_ref().unwrap();
    let mut slots = Vec::new();
    for file in out.files() {
        if !repo.files.contains_key(file) {
            continue; // the 404 that ends the root step
        }
        let role = file
            .trim_end_matches(".json")
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start_matches('.');
        let signers = match role {
            // Old and new root keys: a re-signed rotation needs both.
            "root" => [seeds_of(&repo.root_keys), local_keys.0.clone()].concat(),
            "timestamp" => seeds_of(&repo.timestamp_keys),
            "snapshot" => seeds_of(&repo.snapshot_keys),
            "targets" => seeds_of(&repo.targets_keys),
            other => seeds_of(&repo.delegated[other].keys),
        };
        slots.push((Slot::Served(file.to_string()), signers));
    }
    slots.push((Slot::LocalRoot, local_keys.0.clone()));
    slots.push((Slot::LocalTimestamp, local_keys.1.clone()));
    slots.push((Slot::LocalSnapshot, local_keys.2.clone()));
    slots.push((Slot::LocalTargets, local_keys.3.clone()));
    for role in local.delegated.keys() {
        slots.push((
            Slot::LocalDelegated(role.clone()),
            seeds_of(&repo.delegated[role].keys),
        ));
    }
    Corpus {
        name,
        files: repo.files.clone(),
        local,
        baseline: signed_content(trusted),
        slots,
    }
}

fn with_delegations(repo: &mut Repo) {
    repo.delegate("targets", "apps", &["apps/*", "apps/beta/*"], false);
    repo.delegate("apps", "apps-beta", &["apps/beta/*"], true);
    repo.delegate("targets", "fallback", &["*", "*/*"], false);
    repo.delegate("apps-beta", "apps", &["apps/beta/*"], false); // a cycle
    repo.add_target(
        "apps",
        "apps/a.bin",
        b"app a",
        Some(release("1.0.0", &["hw-a"])),
    );
    repo.add_target("apps-beta", "apps/beta/b.bin", b"app b", None);
    repo.add_target(
        "fallback",
        "other/c.bin",
        b"other",
        Some(json!({"note": "x"})),
    );
}

/// The valid repositories cases start from.
pub fn corpora() -> Vec<Corpus> {
    // Consistent snapshots, no meta hashes (mutations reach the parsers and signature
    // checks), delegations with a cycle, and a root rotation that changes the timestamp key.
    let mut a = Repo::unpublished();
    with_delegations(&mut a);
    a.publish_root();
    a.publish();
    let a = corpus("delegations_rotation", a, |r| {
        r.bump();
        r.add_target(
            "targets",
            "fw-2.0.0.bin",
            b"v2",
            Some(release("2.0.0", &["hw-a"])),
        );
        r.root.version = 2;
        r.set_keys(RoleType::Timestamp, vec![key(TIMESTAMP_SEED + 1)], 1);
        r.publish_root();
        r.publish();
    });
    // Plain file names and length+hashes in every meta entry; same keys throughout, so the
    // local files take part in the rollback checks and are reused.
    let mut b = Repo::unpublished();
    b.root.consistent_snapshot = false;
    b.meta_hashes = true;
    with_delegations(&mut b);
    b.publish_root();
    b.publish();
    let b = corpus("hashed_plain_names", b, |r| {
        r.timestamp.version += 1;
        r.snapshot.version += 1;
        r.delegated.get_mut("apps").unwrap().targets.version += 1;
        r.add_target("apps", "apps/a2.bin", b"app a2", None);
        r.publish();
    });
    vec![a, b]
}

const INTERESTING: &[u8] = b"\x00\xff\"{}[],:09-e.\\ \n";

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let len = bytes.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            bytes[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            bytes.drain(start..end);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(256)).min(len);
            let copy = bytes[start..end].to_vec();
            let at = rng.below(len + 1);
            bytes.splice(at..at, copy);
        }
        4 => bytes.truncate(rng.below(len + 1)),
        5 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(32);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, junk);
        }
        _ => {
            // Replace a digit run by a boundary number.
            let digits: Vec<usize> = (0..len).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                let i = digits[rng.below(digits.len())];
                let options: [&[u8]; 5] = [
                    b"18446744073709551615",
                    b"0",
                    b"-1",
                    b"1e3",
                    b"9007199254740993",
                ];
                let replacement = options[rng.below(options.len())];
                bytes.splice(i..i + 1, replacement.iter().copied());
            }
        }
    }
}

/// JSON pointers of every node below `v` (the root included).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                pointers(
                    child,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn interesting_value(rng: &mut Rng) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(""),
        json!("x".repeat(300)),
        Value::Null,
        json!(true),
        json!({}),
        json!([]),
        json!("1970-01-01T00:00:00Z"),
        json!("9999-12-31T23:59:59Z"),
        json!("2026-01-01T00:00:00Z"),
        json!("../../etc/passwd"),
        json!("*"),
        json!("[!a-"),
        json!("root"),
        json!("targets"),
        json!("ed25519"),
        json!("ecdsa-sha2-nistp256"),
        json!("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        json!({"sha256": "00"}),
    ];
    choices[rng.below(choices.len())].clone()
}

/// One structural mutation of `v`; `donors` supply grafts.
fn mutate_json(v: &mut Value, rng: &mut Rng, donors: &[Value]) {
    let mut ptrs = Vec::new();
    pointers(v, String::new(), &mut ptrs);
    let ptr = ptrs[rng.below(ptrs.len())].clone();
    let graft = {
        let donor = &donors[rng.below(donors.len())];
        let mut dp = Vec::new();
        pointers(donor, String::new(), &mut dp);
        donor.pointer(&dp[rng.below(dp.len())]).cloned()
    };
    let Some(node) = v.pointer_mut(&ptr) else {
        return;
    };
    match rng.below(5) {
        0 => {
            *node = interesting_value(rng);
            return;
        }
        1 => {
            if let Some(g) = graft {
                *node = g;
            }
            return;
        }
        _ => {}
    }
    let replacement = match node {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            if rng.chance(1, 2) {
                m.remove(k);
            } else {
                let copy = m[k].clone();
                m.insert(format!("{k}_x"), copy);
            }
            None
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            match rng.below(3) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let copy = a[i].clone();
                    a.push(copy);
                }
                _ => a.reverse(),
            }
            None
        }
        Value::Number(n) => {
            let x = n.as_u64().unwrap_or(0);
            let choices = [x.wrapping_add(1), x.wrapping_sub(1), x.wrapping_mul(2), 0];
            Some(json!(choices[rng.below(choices.len())]))
        }
        Value::String(s) => {
            if s.is_empty() || rng.chance(1, 2) {
                s.push(['a', '0', '/', '*', '.', 'é'][rng.below(6)]);
            } else {
                let cut = s
                    .char_indices()
                    .nth(rng.below(s.chars().count()))
                    .map_or(0, |(i, _)| i);
                s.truncate(cut);
            }
            None
        }
        _ => Some(interesting_value(rng)),
    };
    if let Some(r) = replacement {
        *node = r;
    }
}

fn resign(signed: &Value, signer_seeds: &[u8]) -> Option<Vec<u8>> {
    let msg = cjson::to_canonical(signed).ok()?;
    let sigs: Vec<Value> = signer_seeds
        .iter()
        .map(|s| serde_json::to_value(key(*s).sign(&msg)).unwrap())
        .collect();
    serde_json::to_vec(&json!({"signed": signed, "signatures": sigs})).ok()
}

/// One generated case.
#[derive(Debug)]
pub struct Case {
    /// Index into [`corpora`].
    pub corpus: usize,
    /// Where the mutated file goes.
    pub slot: Slot,
    /// The mutated file.
    pub bytes: Vec<u8>,
    /// Whether the `signed` part was re-signed with the legitimate keys.
    pub resigned: bool,
}

/// Builds case `i` of run `seed` (the same inputs give the same case).
pub fn make_case(corpora: &[Corpus], seed: u64, i: u64) -> Case {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    let ci = rng.below(corpora.len());
    let c = &corpora[ci];
    // Round-robin over positions so every one is exercised in short runs too.
    let (slot, signers) = c.slots[(i as usize / corpora.len()) % c.slots.len()].clone();
    let original = c.original(&slot).unwrap_or_default().to_vec();
    let donors: Vec<Value> = c
        .files
        .values()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    let mut bytes = original.clone();
    let mut resigned = false;
    match rng.below(3) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                mutate_bytes(&mut bytes, &mut rng);
            }
        }
        1 => {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&original) {
                for _ in 0..1 + rng.below(3) {
                    mutate_json(&mut v, &mut rng, &donors);
                }
                bytes = if rng.chance(1, 2) {
                    serde_json::to_vec(&v).unwrap()
                } else {
                    serde_json::to_vec_pretty(&v).unwrap()
                };
            }
        }
        _ => {
            if let Ok(env) = serde_json::from_slice::<Value>(&original) {
                let mut signed = env["signed"].clone();
                for _ in 0..1 + rng.below(2) {
                    mutate_json(&mut signed, &mut rng, &donors);
                }
                if let Some(b) = resign(&signed, &signers) {
                    bytes = b;
                    resigned = true;
                }
            }
        }
    }
    Case {
        corpus: ci,
        slot,
        bytes,
        resigned,
    }
}

/// Feeds bytes to every parser and to what reads the parsed fields; only panics matter.
pub fn exercise_parsers(bytes: &[u8]) -> bool {
    let Ok(raw) = RawSigned::parse(bytes) else {
        return false;
    };
    let _ = raw.role_type();
    let canon = raw.canonical_signed().ok();
    let check_keys = |keys: &BTreeMap<_, ota_common::keys::Key>| {
        for k in keys.values() {
            let _ = k.validate();
            let _ = k.key_id();
            if let Some(msg) = &canon {
                for s in raw.signatures() {
                    let _ = k.verify(msg, &s.sig);
                }
            }
        }
    };
    if let Ok(root) = raw.decode::<Root>() {
        check_keys(&root.keys);
    }
    if let Ok(t) = raw.decode::<Timestamp>() {
        let _ = t.snapshot_meta();
    }
    if let Ok(s) = raw.decode::<Snapshot>() {
        let _ = s.role_meta("targets");
    }
    if let Ok(t) = raw.decode::<Targets>() {
        for (name, file) in &t.targets {
            if let Ok(n) = TargetName::new(name) {
                let _ = n.consistent_path(file.sha256().unwrap_or("00"));
            }
            let _ = ReleaseInfo::from_target(name, file);
        }
        if let Some(d) = &t.delegations {
            check_keys(&d.keys);
            for role in &d.roles {
                for probe in t
                    .targets
                    .keys()
                    .map(String::as_str)
                    .chain(["a/b/c", "", "*", "[x]"])
                {
                    let _ = role.is_trusted_for(probe);
                }
            }
        }
    }
    true
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Cases run.
    pub cases: u64,
    /// Cases whose bytes parsed as an envelope.
    pub parsed: u64,
    /// Refreshes accepted without re-signing.
    pub accepted: u64,
    /// Refreshes accepted after an insider re-signed the mutation.
    pub accepted_resigned: u64,
    /// Refusals by [`ota_common::client::ClientError::kind`].
    pub refused: BTreeMap<&'static str, u64>,
}

/// Runs one case and checks the oracle (panics on a violation).
pub fn check_case(corpora: &[Corpus], case: &Case, stats: &mut Stats) {
    let c = &corpora[case.corpus];
    stats.cases += 1;
    if exercise_parsers(&case.bytes) {
        stats.parsed += 1;
    }
    let (files, local) = c.with(&case.slot, case.bytes.clone());
    let out = refresh_files(&files, local, now(), ClientLimits::default());
    let trusted = match out.result {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            *stats.refused.entry(e.kind()).or_default() += 1;
            return;
        }
        Ok(t) => t,
    };
    if case.resigned {
        stats.accepted_resigned += 1;
    } else {
        stats.accepted += 1;
        assert_eq!(
            signed_content(&trusted),
            c.baseline,
            "accepted content that the legitimate keys did not sign"
        );
    }
    // Each role re-verifies under the accepted root...
    let root = trusted.root();
    let by_root = |raw: &[u8], role: RoleType| {
        let rk = root.role(role).unwrap();
        let parsed = RawSigned::parse(raw).unwrap();
        match role {
            RoleType::Root => {
                verify_role::<Root>(&parsed, "root", &root.keys, &rk.keyids, rk.threshold)
                    .map(|_| ())
            }
            RoleType::Timestamp => {
                verify_role::<Timestamp>(&parsed, "timestamp", &root.keys, &rk.keyids, rk.threshold)
                    .map(|_| ())
            }
            RoleType::Snapshot => {
                verify_role::<Snapshot>(&parsed, "snapshot", &root.keys, &rk.keyids, rk.threshold)
                    .map(|_| ())
            }
            RoleType::Targets => {
                verify_role::<Targets>(&parsed, "targets", &root.keys, &rk.keyids, rk.threshold)
                    .map(|_| ())
            }
        }
        .unwrap_or_else(|e| panic!("accepted {role} does not re-verify: {e}"))
    };
    by_root(root.raw(), RoleType::Root);
    by_root(trusted.timestamp().raw(), RoleType::Timestamp);
    by_root(trusted.snapshot().raw(), RoleType::Snapshot);
    by_root(trusted.targets().raw(), RoleType::Targets);
    // ...and a client starting from what was accepted reaches the same content again.
    let again = refresh_files(&files, trusted.to_local(), now(), ClientLimits::default());
    let again = again
        .result
        .unwrap_or_else(|e| panic!("accepted metadata refused on the next refresh: {e}"));
    assert_eq!(signed_content(&again), signed_content(&trusted));
    // Every target the search returns is listed by the role it names.
    for (name, file) in trusted.all_targets() {
        let (found, role) = trusted.find_target(name).unwrap();
        assert_eq!(found, file);
        let lister = if role == "targets" {
            &**trusted.targets()
        } else {
            &**trusted.delegated().get(role).unwrap()
        };
        assert_eq!(lister.targets.get(name), Some(file));
    }
}

/// Runs cases `0..iterations` of `seed`; on a panic, prints how to replay the case.
pub fn run(iterations: u64, seed: u64) -> Stats {
    let corpora = corpora();
    let mut stats = Stats::default();
    for i in 0..iterations {
        let case = make_case(&corpora, seed, i);
        let result = catch_unwind(AssertUnwindSafe(|| check_case(&corpora, &case, &mut stats)));
        if let Err(panic) = result {
            eprintln!(
                "fuzz case failed: seed {seed} case {i} corpus {} slot {:?} resigned {}\n\
                 replay: cargo run --release --manifest-path fuzz/Cargo.toml -- --replay {seed} {i}\n\
                 input: {}",
                corpora[case.corpus].name,
                case.slot,
                case.resigned,
                String::from_utf8_lossy(&case.bytes)
            );
            resume_unwind(panic);
        }
    }
    stats
}

/// Runs case `i` of `seed` alone (a replay).
pub fn replay(seed: u64, i: u64) -> Stats {
    let corpora = corpora();
    let mut stats = Stats::default();
    let case = make_case(&corpora, seed, i);
    eprintln!(
        "corpus {} slot {:?} resigned {}\ninput: {}",
        corpora[case.corpus].name,
        case.slot,
        case.resigned,
        String::from_utf8_lossy(&case.bytes)
    );
    check_case(&corpora, &case, &mut stats);
    stats
}
