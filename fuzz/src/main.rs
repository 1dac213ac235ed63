//! `fuzz-metadata`: runs the metadata fuzzer of `tests/support/fuzz.rs` for a bounded
//! number of cases.
//!
//! ```text
//! fuzz-metadata [CASES] [--seed SEED]     CASES defaults to 100000; SEED to the clock
//! fuzz-metadata --replay SEED CASE        re-runs one case, printing its input
//! ```
//! A violation panics with the seed and case to replay; the exit status is then non-zero.

#![forbid(unsafe_code)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn usage() -> ExitCode {
    eprintln!("usage: fuzz-metadata [CASES] [--seed SEED] | --replay SEED CASE");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &String| s.parse::<u64>().ok();
    match args.as_slice() {
        [flag, seed, case] if flag == "--replay" => {
            let (Some(seed), Some(case)) = (num(seed), num(case)) else {
                return usage();
            };
            let stats = support::fuzz::replay(seed, case);
            println!("{stats:#?}");
            ExitCode::SUCCESS
        }
        _ => {
            let mut cases = 100_000;
            let mut seed = None;
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match (a.as_str(), num(a)) {
                    ("--seed", _) => match it.next().and_then(num) {
                        Some(s) => seed = Some(s),
                        None => return usage(),
                    },
                    (_, Some(n)) => cases = n,
                    _ => return usage(),
                }
            }
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            eprintln!("fuzz-metadata: {cases} cases, seed {seed}");
            let started = Instant::now();
            let stats = support::fuzz::run(cases, seed);
            println!("{stats:#?}");
            eprintln!("done in {:.1?}", started.elapsed());
            ExitCode::SUCCESS
        }
    }
}
