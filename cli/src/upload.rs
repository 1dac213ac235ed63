//! Uploading an image: streamed from the file in fixed-size chunks (constant memory, any
//! image size), hashed on the way, with a progress bar on a terminal and plain log lines
//! otherwise. The server's answer is checked against the local hash, so an upload that was
//! altered in transit or stored wrongly is never published.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;

use crate::client::{decode, Client};
use crate::error::CliError;
use crate::output::size;

/// Read size: large enough that a GiB image is a few thousand writes.
const CHUNK: usize = 256 * 1024;

/// What the server recorded for an upload (`BlobFacts` on the server).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Uploaded {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// SHA-512, lowercase hex.
    pub sha512: String,
    /// Length in bytes.
    pub length: u64,
}

/// Uploads `path` to `PUT /api/v1/blobs`; `label` names it in progress output.
pub async fn upload_file(client: &Client, path: &Path, label: &str) -> Result<Uploaded, CliError> {
    let read_err = |source| CliError::ReadFile {
        what: "reading the image",
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let length = file.metadata().await.map_err(read_err)?.len();
    let progress = Progress::start(label, length);
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let stream = {
        let (hasher, progress) = (Arc::clone(&hasher), progress.clone());
        ReaderStream::with_capacity(file, CHUNK).inspect_ok(move |chunk| {
            hasher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .update(chunk);
            progress.advance(chunk.len() as u64);
        })
    };
    let answer = client
        .put_stream(
            &["api", "v1", "blobs"],
            reqwest::Body::wrap_stream(stream),
            length,
        )
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };
    let stored: Uploaded = decode("PUT /api/v1/blobs", answer)?;
    let local = hex::encode(
        hasher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .finalize(),
    );
    progress.finish(&stored);
    check_matches(path, &stored, &local, length)?;
    Ok(stored)
}

/// Checks that the server stored what was sent.
fn check_matches(
    path: &Path,
    stored: &Uploaded,
    sha256: &str,
    length: u64,
) -> Result<(), CliError> {
    if stored.length != length {
        return Err(CliError::UploadMismatch {
            path: path.to_path_buf(),
            what: "length",
            expected: length.to_string(),
            actual: stored.length.to_string(),
        });
    }
    if !stored.sha256.eq_ignore_ascii_case(sha256) {
        return Err(CliError::UploadMismatch {
            path: path.to_path_buf(),
            what: "sha256",
            expected: sha256.to_string(),
            actual: stored.sha256.clone(),
        });
    }
    Ok(())
}

/// Upload progress on stderr: a bar on a terminal, start and end lines otherwise.
#[derive(Clone)]
enum Progress {
    Bar(ProgressBar),
    Log { label: String, started: Instant },
}

impl Progress {
    fn start(label: &str, length: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(length);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(format!("uploading {label}"));
            Progress::Bar(bar)
        } else {
            eprintln!("uploading {label} ({})", size(length));
            Progress::Log {
                label: label.to_string(),
                started: Instant::now(),
            }
        }
    }

    fn advance(&self, n: u64) {
        if let Progress::Bar(bar) = self {
            bar.inc(n);
        }
    }

    fn finish(&self, stored: &Uploaded) {
        match self {
            Progress::Bar(bar) => {
                bar.finish_and_clear();
                eprintln!("uploaded sha256 {}", stored.sha256);
            }
            Progress::Log { label, started } => eprintln!(
                "uploaded {label}: {} in {:.1}s, sha256 {}",
                size(stored.length),
                started.elapsed().as_secs_f64(),
                stored.sha256
            ),
        }
    }

    fn abandon(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(sha256: &str, length: u64) -> Uploaded {
        Uploaded {
            sha256: sha256.into(),
            sha512: String::new(),
            length,
        }
    }

    #[test]
    fn server_answer_must_match_what_was_sent() {
        let p = Path::new("img.bin");
        assert!(check_matches(p, &stored("ab", 3), "ab", 3).is_ok());
        assert!(check_matches(p, &stored("AB", 3), "ab", 3).is_ok());
        let e = check_matches(p, &stored("ab", 4), "ab", 3).unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
        let e = check_matches(p, &stored("cd", 3), "ab", 3).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
    }
}
