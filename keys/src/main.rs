//! `ota-keys`: the release engineer's command line. See the `ota_keys` library for the
//! design, and `ota-keys --help` for usage.

#![forbid(unsafe_code)]

mod cmd;

use std::error::Error as _;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, skipping causes whose text the message already carries.
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            let mut cause = e.source();
            while let Some(c) = cause {
                let text = c.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown.push_str(&text);
                }
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}
