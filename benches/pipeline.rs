//! The agent's streaming install pipeline with fixed inputs: [`SlotWriter`] taking a
//! 64 MiB image in network-sized chunks (1 MiB and 256 KiB), hashing every byte with
//! SHA-256, writing the slot (a temporary file) in 1 MiB writes and finishing with the
//! length and hash check and an fsync, against SHA-256 of the same bytes alone (the
//! floor: what hashing costs without any I/O).
//!
//! `cargo bench --bench pipeline`. The write figures include the final fsync, so they
//! move with the disk and whatever else writes to it; compare runs on one machine only.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ota_agent::slots::{ImageSpec, SlotWriter};
use sha2::{Digest, Sha256};

const IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// A fixed, incompressible-looking image (xorshift), the same on every run.
fn image() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(IMAGE_BYTES);
    while out.len() < IMAGE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out
}

fn pipeline(c: &mut Criterion) {
    let data = image();
    let spec = ImageSpec {
        length: data.len() as u64,
        sha256: Sha256::digest(&data).into(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let slot = dir.path().join("slot-b");

    let mut g = c.benchmark_group("install_64MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("sha256_only", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            for chunk in data.chunks(1 << 20) {
                h.update(chunk);
            }
            assert_eq!(<[u8; 32]>::from(h.finalize()), spec.sha256);
        })
    });
    for (name, chunk) in [
        ("slot_writer_1MiB_chunks", 1 << 20),
        ("slot_writer_256KiB_chunks", 256 << 10),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                // A fresh file each time, as for a slot file that an update recreates.
                || {
                    let _ = std::fs::remove_file(&slot);
                },
                |()| {
                    let mut w = SlotWriter::open(&slot, spec, 0).expect("open slot");
                    for part in data.chunks(chunk) {
                        w.write(part).expect("write slot");
                    }
                    let verified = w.finish().expect("finish slot");
                    assert_eq!(verified.length(), spec.length);
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
