//! Benchmarks of the verification core, with fixed inputs and a fixed time:
//! canonical JSON, ed25519 threshold verification, a full TUF refresh of a
//! 10,000-target repository from bytes in memory, and the streaming hash of an image.
//!
//! `cargo bench --bench tuf`

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ota_common::client::{refresh_with, ClientLimits, FetchRequest, FetchResponse, LocalMetadata};
use ota_common::keys::SigningKey;
use ota_common::metadata::{MetaFile, RoleType, Root, Snapshot, TargetFile, Targets, Timestamp};
use ota_common::signed::{sign_role, RawSigned};
use ota_common::target::TargetVerifier;
use ota_common::verify::verify_role;
use serde_json::json;
use sha2::{Digest, Sha256};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("fixed date")
}

fn far() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0)
        .single()
        .expect("fixed date")
}

struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    root: Vec<u8>,
}

/// A consistent-snapshot repository with `n` targets; root and targets 2-of-3.
fn repository(n: usize) -> Repo {
    let keys: Vec<SigningKey> = (1..=8u8).map(|i| SigningKey::from_seed(&[i; 32])).collect();
    let mut root = Root::new(1, far());
    root.set_role(
        RoleType::Root,
        &[keys[0].public(), keys[1].public(), keys[2].public()],
        2,
    )
    .expect("root role");
    root.set_role(
        RoleType::Targets,
        &[keys[3].public(), keys[4].public(), keys[5].public()],
        2,
    )
    .expect("targets role");
    root.set_role(RoleType::Snapshot, &[keys[6].public()], 1)
        .expect("snapshot role");
    root.set_role(RoleType::Timestamp, &[keys[7].public()], 1)
        .expect("timestamp role");
    let root_bytes = sign_role(&root, &[&keys[0], &keys[1]]).expect("sign root");
    let mut targets = Targets::new(1, far());
    for i in 0..n {
        let data = format!("image {i}");
        targets.targets.insert(
            format!("firmware/board-{}/fw-{i}.bin", i % 16),
            TargetFile {
                length: data.len() as u64,
                hashes: BTreeMap::from([("sha256".into(), hex::encode(Sha256::digest(data.as_bytes())))]),
                custom: Some(json!({"version": format!("1.{}.{}", i / 100, i % 100), "hardware_ids": [format!("board-{}", i % 16)]})),
                extra: BTreeMap::new(),
            },
        );
    }
    let targets_bytes = sign_role(&targets, &[&keys[3], &keys[4]]).expect("sign targets");
    let mut snapshot = Snapshot::new(1, far());
    snapshot
        .meta
        .insert("targets.json".into(), MetaFile::version_only(1));
    let snapshot_bytes = sign_role(&snapshot, &[&keys[6]]).expect("sign snapshot");
    let mut meta = MetaFile::version_only(1);
    meta.length = Some(snapshot_bytes.len() as u64);
    meta.hashes = Some(BTreeMap::from([(
        "sha256".into(),
        hex::encode(Sha256::digest(&snapshot_bytes)),
    )]));
    let timestamp_bytes =
        sign_role(&Timestamp::new(1, far(), meta), &[&keys[7]]).expect("sign timestamp");
    let files = BTreeMap::from([
        ("timestamp.json".to_string(), timestamp_bytes),
        ("1.snapshot.json".to_string(), snapshot_bytes),
        ("1.targets.json".to_string(), targets_bytes),
    ]);
    Repo {
        files,
        root: root_bytes,
    }
}

fn fetch<'a>(
    repo: &'a Repo,
) -> impl FnMut(&FetchRequest) -> Result<FetchResponse, std::convert::Infallible> + 'a {
    move |req| {
        Ok(match repo.files.get(&req.file) {
            Some(b) => FetchResponse::Found(b.clone()),
            None => FetchResponse::NotFound,
        })
    }
}

fn benches(c: &mut Criterion) {
    let repo = repository(10_000);
    let targets_bytes = repo.files["1.targets.json"].clone();

    let mut g = c.benchmark_group("canonical_json");
    let value: serde_json::Value = serde_json::from_slice(&targets_bytes).expect("json");
    let signed = value["signed"].clone();
    g.throughput(Throughput::Bytes(targets_bytes.len() as u64));
    g.bench_function("encode_10k_targets", |b| {
        b.iter(|| ota_common::cjson::to_canonical(&signed).expect("canonical"))
    });
    g.finish();

    let mut g = c.benchmark_group("threshold_verify");
    let root: Root = RawSigned::parse(&repo.root)
        .expect("parse")
        .decode()
        .expect("root");
    let small = {
        let mut t = Targets::new(1, far());
        t.targets.clear();
        let k3 = SigningKey::from_seed(&[4; 32]);
        let k4 = SigningKey::from_seed(&[5; 32]);
        sign_role(&t, &[&k3, &k4]).expect("sign")
    };
    let raw_small = RawSigned::parse(&small).expect("parse");
    let role = root.role(RoleType::Targets).expect("targets role");
    g.bench_function("ed25519_2_of_3_small_targets", |b| {
        b.iter(|| {
            verify_role::<Targets>(
                &raw_small,
                "targets",
                &root.keys,
                &role.keyids,
                role.threshold,
            )
            .expect("verify")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tuf_refresh");
    g.sample_size(20);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("full_refresh_10k_targets", |b| {
        b.iter_batched(
            || LocalMetadata {
                root: repo.root.clone(),
                ..Default::default()
            },
            |local| {
                let trusted = refresh_with(local, now(), ClientLimits::default(), fetch(&repo))
                    .expect("refresh");
                assert_eq!(trusted.targets().targets.len(), 10_000);
                trusted
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("image_stream");
    let image: Vec<u8> = (0..64u32 * 1024 * 1024 / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let file = TargetFile {
        length: image.len() as u64,
        hashes: BTreeMap::from([("sha256".into(), hex::encode(Sha256::digest(&image)))]),
        custom: None,
        extra: BTreeMap::new(),
    };
    g.throughput(Throughput::Bytes(image.len() as u64));
    g.sample_size(10);
    g.bench_function("verify_64MiB_in_256KiB_chunks", |b| {
        b.iter(|| {
            let mut v = TargetVerifier::new(&file).expect("verifier");
            for chunk in image.chunks(256 * 1024) {
                v.update(chunk).expect("update");
            }
            v.finish().expect("verified")
        })
    });
    g.finish();
}

criterion_group!(tuf, benches);
criterion_main!(tuf);
