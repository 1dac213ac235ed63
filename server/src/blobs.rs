//! Content-addressed blob store for images: one file per blob, named by its sha256.
//!
//! A write streams into a temporary file in the blob directory while computing sha256 and
//! sha512 (TUF targets carry both), enforces a length limit as it goes, then makes the file
//! durable under its final name through [`crate::fsutil::persist`] (fsync, rename, fsync
//! directory). So a blob under its final name is always complete and matches its name;
//! a crash mid-write leaves only a temporary file, removed by [`BlobStore::sweep_temp`] at
//! startup. Names from outside are checked to be 64 lowercase hex digits before they touch
//! a path.
//!
//! Hashing runs on the async task in 256 KiB steps (about a millisecond each), which keeps
//! the runtime responsive without a thread hop per chunk.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::fsutil::{self, FsError};

/// Size of the read and write buffers.
pub const BUF_SIZE: usize = 256 * 1024;

/// Error from a blob stream's source (e.g. an HTTP body), boxed.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What a completed write stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// sha256 of the content, lowercase hex; also the blob's file name.
    pub sha256_hex: String,
    /// sha512 of the content, lowercase hex.
    pub sha512_hex: String,
    /// Content length in bytes.
    pub length: u64,
}

/// Everything that can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// A blob name is not 64 lowercase hex digits; no path was built from it.
    #[error("invalid blob name {name:?}: expected 64 lowercase hex digits (a sha256)")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The content exceeded the allowed length; the temporary file was removed.
    #[error("blob exceeds the limit of {max_len} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        max_len: u64,
    },
    /// The content's sha256 is not the expected one; nothing was stored.
    #[error("blob content has sha256 {actual}, expected {expected}")]
    HashMismatch {
        /// The sha256 the caller required.
        expected: String,
        /// The sha256 of what was received.
        actual: String,
    },
    /// The stream or reader feeding the blob failed.
    #[error("reading blob content failed after {received} bytes: {source}")]
    Source {
        /// Bytes received before the failure.
        received: u64,
        /// The source's error.
        #[source]
        source: SourceError,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Making a file or directory durable failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A blocking file-system task panicked or was cancelled.
    #[error("blocking task for {op} failed: {source}")]
    Join {
        /// What the task was doing.
        op: &'static str,
        /// tokio's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl BlobError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks that `name` is a sha256 in lowercase hex (64 of `[0-9a-f]`), the only shape a
/// blob file name may have.
pub fn validate_sha256_hex(name: &str) -> Result<(), BlobError> {
    let ok = name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// A directory of blobs named by sha256.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Uses `dir` (created if missing) as the blob directory. Call [`BlobStore::sweep_temp`]
    /// once at startup, before accepting uploads.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|e| BlobError::io("create blob directory", dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The blob directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of blob `sha256` (validated first; the file may not exist).
    pub fn blob_path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        validate_sha256_hex(sha256)?;
        Ok(self.dir.join(sha256))
    }

    /// Stores the content of `stream`, refusing more than `max_len` bytes. Idempotent: if
    /// the blob already exists it is kept and the same [`BlobInfo`] returned.
    pub async fn write_stream<S, E>(&self, stream: S, max_len: u64) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<SourceError>,
    {
        self.write_stream_inner(stream, max_len, None).await
    }

    /// Like [`BlobStore::write_stream`], but stores nothing unless the content's sha256 is
    /// `expected` (as for a target whose hash is already signed). Use this rather than
    /// writing and removing on mismatch: the removal could hit a blob that others use.
    pub async fn write_stream_expecting<S, E>(
        &self,
        stream: S,
        max_len: u64,
        expected: &str,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<SourceError>,
    {
        validate_sha256_hex(expected)?;
        self.write_stream_inner(stream, max_len, Some(expected))
            .await
    }

    /// Stores everything `reader` yields, refusing more than `max_len` bytes.
    pub async fn write_reader<R>(&self, reader: R, max_len: u64) -> Result<BlobInfo, BlobError>
    where
        R: AsyncRead,
    {
        let mut reader = pin!(reader);
        let mut temp = TempBlob::create(&self.dir, max_len).await?;
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| BlobError::Source {
                received: temp.len,
                source: Box::new(e),
            })?;
            if n == 0 {
                break;
            }
            temp.push(&buf[..n]).await?;
        }
        temp.finish(&self.dir, None).await
    }

    async fn write_stream_inner<S, E>(
        &self,
        stream: S,
        max_len: u64,
        expected: Option<&str>,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<SourceError>,
    {
        let mut stream = pin!(stream);
        let mut temp = TempBlob::create(&self.dir, max_len).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BlobError::Source {
                received: temp.len,
                source: e.into(),
            })?;
            temp.push(&chunk).await?;
        }
        temp.finish(&self.dir, expected).await
    }

    /// Opens blob `sha256` for reading, with its length; `None` if it is not stored.
    pub async fn open_blob(
        &self,
        sha256: &str,
    ) -> Result<Option<(tokio::fs::File, u64)>, BlobError> {
        let path = self.blob_path(sha256)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BlobError::io("open blob", &path, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| BlobError::io("stat blob", &path, e))?;
        Ok(Some((file, meta.len())))
    }

    /// Whether blob `sha256` is stored.
    pub async fn contains(&self, sha256: &str) -> Result<bool, BlobError> {
        let path = self.blob_path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::io("stat blob", &path, e)),
        }
    }

    /// Removes blob `sha256` durably (fsyncs the directory); returns whether it existed.
    /// Callers make sure no release still refers to it.
    pub async fn remove(&self, sha256: &str) -> Result<bool, BlobError> {
        let path = self.blob_path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(BlobError::io("remove blob", &path, e)),
        }
        let dir = self.dir.clone();
        blocking("fsync blob directory", move || fsutil::fsync_dir(&dir)).await?;
        Ok(true)
    }

    /// Removes temporary files left by writes that a crash interrupted; returns how many.
    /// Call at startup only: it would also remove the temporary file of a write in flight.
    pub async fn sweep_temp(&self) -> Result<usize, BlobError> {
        let dir = self.dir.clone();
        blocking("sweep temporary blobs", move || fsutil::sweep_temp(&dir)).await
    }
}

/// Runs blocking file-system work off the async runtime.
async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, BlobError>
where
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
    T: Send + 'static,
{
    let result = tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| BlobError::Join { op, source })?;
    Ok(result?)
}

/// A blob being written: temp file, running hashes, and a guard that removes the temp
/// file unless the write completes (error, limit, or the future being dropped).
struct TempBlob {
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    sha256: Sha256,
    sha512: Sha512,
    len: u64,
    max_len: u64,
    keep: bool,
}

impl TempBlob {
    async fn create(dir: &Path, max_len: u64) -> Result<Self, BlobError> {
        let dir = dir.to_path_buf();
        let (file, path) =
            blocking("create temporary blob", move || fsutil::create_temp(&dir)).await?;
        Ok(Self {
            path,
            file: Some(BufWriter::with_capacity(
                BUF_SIZE,
                tokio::fs::File::from_std(file),
            )),
            sha256: Sha256::new(),
            sha512: Sha512::new(),
            len: 0,
            max_len,
            keep: false,
        })
    }

    async fn push(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let new_len = self.len.saturating_add(chunk.len() as u64);
        if new_len > self.max_len {
            return Err(BlobError::TooLarge {
                max_len: self.max_len,
            });
        }
        self.sha256.update(chunk);
        self.sha512.update(chunk);
        if let Some(file) = self.file.as_mut() {
            file.write_all(chunk)
                .await
                .map_err(|e| BlobError::io("write temporary blob", &self.path, e))?;
        }
        self.len = new_len;
        Ok(())
    }

    async fn finish(mut self, dir: &Path, expected: Option<&str>) -> Result<BlobInfo, BlobError> {
        let info = BlobInfo {
            sha256_hex: hex::encode(self.sha256.finalize_reset()),
            sha512_hex: hex::encode(self.sha512.finalize_reset()),
            length: self.len,
        };
        if let Some(expected) = expected {
            if expected != info.sha256_hex {
                return Err(BlobError::HashMismatch {
                    expected: expected.to_owned(),
                    actual: info.sha256_hex,
                });
            }
        }
        let Some(mut writer) = self.file.take() else {
            return Err(BlobError::io(
                "finish temporary blob",
                &self.path,
                io::Error::other("already finished"),
            ));
        };
        writer
            .flush()
            .await
            .map_err(|e| BlobError::io("write temporary blob", &self.path, e))?;
        let file = writer.into_inner().into_std().await;
        let dest = dir.join(&info.sha256_hex);
        let tmp = self.path.clone();
        let stored = blocking("store blob", move || {
            if dest.is_file() {
                // Same content already stored durably under this name; the guard drops
                // our temporary copy.
                return Ok(false);
            }
            fsutil::persist(file, &tmp, &dest).map(|()| true)
        })
        .await?;
        // After a successful persist the temp path no longer exists; don't touch it.
        self.keep = stored;
        Ok(info)
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort and quick; a leftover is removed by the startup sweep.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use futures_util::stream;

    use super::*;

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, io::Error>> {
        let v: Vec<Result<Bytes, io::Error>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        stream::iter(v)
    }

    fn expected_info(data: &[u8]) -> BlobInfo {
        BlobInfo {
            sha256_hex: hex::encode(Sha256::digest(data)),
            sha512_hex: hex::encode(Sha512::digest(data)),
            length: data.len() as u64,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(&dir.path().join("blobs")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn stream_roundtrip_hashes_and_reads_back() {
        let (_d, s) = store();
        let body = data(3 * BUF_SIZE + 17);
        let info = s
            .write_stream(chunks(&body, 10_000), u64::MAX)
            .await
            .unwrap();
        assert_eq!(info, expected_info(&body));
        assert_eq!(names(s.dir()), vec![info.sha256_hex.clone()]);
        assert!(s.contains(&info.sha256_hex).await.unwrap());
        let (mut f, len) = s.open_blob(&info.sha256_hex).await.unwrap().unwrap();
        assert_eq!(len, body.len() as u64);
        let mut back = Vec::new();
        f.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, body);
    }

    #[tokio::test]
    async fn reader_roundtrip_and_empty_blob() {
        let (_d, s) = store();
        let body = data(BUF_SIZE + 1);
        let info = s.write_reader(&body[..], body.len() as u64).await.unwrap();
        assert_eq!(info, expected_info(&body));
        let empty = s.write_reader(&b""[..], 0).await.unwrap();
        assert_eq!(empty, expected_info(b""));
        assert_eq!(names(s.dir()).len(), 2);
    }

    #[tokio::test]
    async fn max_len_is_inclusive_and_excess_leaves_nothing() {
        let (_d, s) = store();
        let body = data(1000);
        s.write_stream(chunks(&body, 100), 1000).await.unwrap();
        let (_d, s) = store();
        let err = s.write_stream(chunks(&body, 100), 999).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { max_len: 999 }), "{err}");
        let err = s.write_reader(&body[..], 10).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { max_len: 10 }), "{err}");
        assert!(names(s.dir()).is_empty(), "{:?}", names(s.dir()));
    }

    #[tokio::test]
    async fn writing_twice_is_idempotent() {
        let (_d, s) = store();
        let body = data(5000);
        let a = s.write_stream(chunks(&body, 777), u64::MAX).await.unwrap();
        let b = s.write_reader(&body[..], u64::MAX).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(names(s.dir()), vec![a.sha256_hex]);
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_any_path() {
        let (_d, s) = store();
        let good = hex::encode(Sha256::digest(b"x"));
        let bad = [
            "../../etc/passwd".to_string(),
            good.to_uppercase(),
            good[..63].to_string(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("{}/", &good[..63]),
            String::new(),
        ];
        for name in &bad {
            let invalid =
                |r: Result<(), BlobError>| matches!(r, Err(BlobError::InvalidName { .. }));
            assert!(invalid(s.open_blob(name).await.map(|_| ())), "{name}");
            assert!(invalid(s.contains(name).await.map(|_| ())), "{name}");
            assert!(invalid(s.remove(name).await.map(|_| ())), "{name}");
            assert!(invalid(s.blob_path(name).map(|_| ())), "{name}");
            let r = s.write_stream_expecting(chunks(b"x", 1), 10, name).await;
            assert!(invalid(r.map(|_| ())), "{name}");
        }
        assert!(names(s.dir()).is_empty());
        validate_sha256_hex(&good).unwrap();
    }

    #[tokio::test]
    async fn expected_hash_mismatch_stores_nothing_and_keeps_existing() {
        let (_d, s) = store();
        let existing = s.write_reader(&b"existing"[..], 100).await.unwrap();
        let err = s
            .write_stream_expecting(chunks(b"other content", 4), 100, &existing.sha256_hex)
            .await
            .unwrap_err();
        match &err {
            BlobError::HashMismatch { expected, actual } => {
                assert_eq!(expected, &existing.sha256_hex);
                assert_eq!(actual, &expected_info(b"other content").sha256_hex);
            }
            other => panic!("expected mismatch, got {other}"),
        }
        assert_eq!(names(s.dir()), vec![existing.sha256_hex.clone()]);
        let ok = s
            .write_stream_expecting(chunks(b"existing", 3), 100, &existing.sha256_hex)
            .await
            .unwrap();
        assert_eq!(ok, existing);
    }

    #[tokio::test]
    async fn source_error_removes_temp() {
        let (_d, s) = store();
        let items: Vec<Result<Bytes, io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer gone")),
        ];
        let err = s.write_stream(stream::iter(items), 100).await.unwrap_err();
        assert!(
            matches!(err, BlobError::Source { received: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("peer gone"));
        assert!(names(s.dir()).is_empty());
    }

    #[tokio::test]
    async fn dropped_write_removes_temp() {
        let (_d, s) = store();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        // One chunk, then tell the test it was consumed, then never end.
        let body = stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"partial"))]).chain(
            stream::poll_fn(move |_| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                std::task::Poll::Pending
            }),
        );
        tokio::select! {
            r = s.write_stream(body, 100) => panic!("write finished: {r:?}"),
            _ = rx => {}
        }
        assert!(names(s.dir()).is_empty(), "{:?}", names(s.dir()));
    }

    #[tokio::test]
    async fn remove_and_contains() {
        let (_d, s) = store();
        let info = s.write_reader(&b"gone soon"[..], 100).await.unwrap();
        assert!(s.remove(&info.sha256_hex).await.unwrap());
        assert!(!s.remove(&info.sha256_hex).await.unwrap());
        assert!(!s.contains(&info.sha256_hex).await.unwrap());
        assert!(s.open_blob(&info.sha256_hex).await.unwrap().is_none());
    }

    // ---- crash test: a writer killed with SIGKILL mid-blob ----

    const CRASH_DIR_ENV: &str = "OTA_BLOB_CRASH_CHILD_DIR";

    /// Child half of `killed_writer_leaves_no_partial_blob`: a no-op unless the parent
    /// re-executes this test binary with `CRASH_DIR_ENV` set.
    #[test]
    fn crash_child_blob_writer() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = BlobStore::open(Path::new(&dir)).unwrap();
            let done = s
                .write_reader(&data(BUF_SIZE * 2)[..], u64::MAX)
                .await
                .unwrap();
            // The leading newline ends libtest's "test <name> ... " line.
            println!("\nblob {}", done.sha256_hex);
            // Four buffers' worth of a second blob, then report and stall forever.
            let mut sent = 0;
            let body = stream::poll_fn(move |_| {
                sent += 1;
                if sent <= 4 {
                    return std::task::Poll::Ready(Some(Ok::<_, io::Error>(Bytes::from(data(
                        BUF_SIZE,
                    )))));
                }
                if sent == 5 {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "partial").unwrap();
                    out.flush().unwrap();
                }
                std::task::Poll::Pending
            });
            let r = s.write_stream(body, u64::MAX).await;
            panic!("stalled write finished: {r:?}");
        });
    }

    #[test]
    fn killed_writer_leaves_no_partial_blob() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        let test_path = module_path!().split_once("::").unwrap().1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{test_path}::crash_child_blob_writer")])
            .args(["--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, &blobs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut complete = None;
        loop {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(h) = line.strip_prefix("blob ") {
                complete = Some(h.to_owned());
            }
            if line == "partial" {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let complete = complete.expect("child reported no complete blob");

        // The finished blob is intact; the interrupted one exists only as a temp file.
        let listed = names(&blobs);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.contains(&complete));
        assert!(
            listed.iter().any(|n| n.starts_with(fsutil::TEMP_PREFIX)),
            "{listed:?}"
        );
        assert_eq!(
            std::fs::read(blobs.join(&complete)).unwrap(),
            data(BUF_SIZE * 2)
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = BlobStore::open(&blobs).unwrap();
            assert_eq!(s.sweep_temp().await.unwrap(), 1);
            assert_eq!(s.sweep_temp().await.unwrap(), 0);
            assert_eq!(names(&blobs), vec![complete.clone()]);
            assert!(s.contains(&complete).await.unwrap());
        });
    }
}
