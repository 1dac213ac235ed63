//! Smoke run of the metadata fuzzer (`tests/support/fuzz.rs`, also driven at length by the
//! `fuzz-metadata` binary in `fuzz/`): a few thousand mutated files through the parsers and
//! full refreshes, with no panic and nothing accepted that the legitimate keys did not sign.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use support::fuzz;

/// Fixed, so CI runs the same cases every time; `OTA_FUZZ_SEED` explores others.
const SEED: u64 = 0x07A_F022;
const CASES: u64 = 3000;

#[test]
fn mutated_metadata_never_panics_or_is_wrongly_accepted() {
    let seed = std::env::var("OTA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let stats = fuzz::run(CASES, seed);
    eprintln!("{stats:#?}");
    assert_eq!(stats.cases, CASES);
    // The harness must reach every layer, or it is not testing what it claims: parsers,
    // refusals of several kinds, and acceptances (harmless mutations and insider ones).
    assert!(
        stats.parsed > CASES / 4,
        "too few mutations parse: {stats:?}"
    );
    assert!(
        stats.accepted > 0,
        "no harmless mutation was accepted: {stats:?}"
    );
    assert!(
        stats.accepted_resigned > 0,
        "no re-signed mutation was accepted: {stats:?}"
    );
    for kind in ["malformed_metadata", "bad_signature", "mix_and_match"] {
        assert!(
            stats.refused.contains_key(kind),
            "no {kind} refusal: {stats:?}"
        );
    }
}

#[test]
fn a_case_replays_identically() {
    let corpora = fuzz::corpora();
    let a = fuzz::make_case(&corpora, 7, 42);
    let b = fuzz::make_case(&corpora, 7, 42);
    assert_eq!(
        (a.corpus, &a.slot, &a.bytes, a.resigned),
        (b.corpus, &b.slot, &b.bytes, b.resigned)
    );
}

#[test]
fn every_position_is_mutated_in_a_short_run() {
    let corpora = fuzz::corpora();
    let positions: usize = corpora.iter().map(|c| c.slots.len()).sum();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..(positions * corpora.len() * 4) as u64 {
        let case = fuzz::make_case(&corpora, SEED, i);
        seen.insert((case.corpus, format!("{:?}", case.slot)));
    }
    assert_eq!(seen.len(), positions);
}
