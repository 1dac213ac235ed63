//! The A/B slots: where an image is written, resumably and in constant memory.
//!
//! A slot is a regular file or a block device (a partition), named in the agent's
//! configuration ([`SlotSet`]). [`SlotWriter`] streams a signed target into the inactive
//! slot: it buffers into fixed [`WRITE_CHUNK`]-sized writes, hashes every byte with SHA-256
//! as it is accepted, refuses anything past the signed length, and only
//! [`SlotWriter::finish`] (length and hash equal to the signed target, data synced) yields
//! a [`VerifiedImage`], the proof the bootloader switch requires.
//!
//! Resuming after a power cut: [`SlotWriter::checkpoint`] syncs and returns an offset that
//! is durable in the slot; the caller records it in the agent state *after* the checkpoint
//! returns. On restart, [`SlotWriter::open`] with that offset re-hashes the prefix already
//! in the slot, so the final hash covers the bytes actually on disk, not a remembered
//! hasher state.
//!
//! With `direct_io` in [`SlotOptions`] (the default) the slot is written with O_DIRECT
//! (see `slots/direct_io.rs`): whole 4096-byte blocks from the aligned buffer, so checkpoints are
//! block-aligned and the image's last partial block is written through the page cache
//! by `finish`. Filesystems that refuse O_DIRECT are written through the cache.
//!
//! Full windows are written by a thread of the writer's own (`slots/writeback.rs`) while
//! the writer hashes and copies the next bytes into another window; a checkpoint waits
//! for every window handed over before it syncs, and a failed write surfaces at the
//! writer's next write, checkpoint or finish, after which the writer refuses to go on.

mod direct_io;
mod writeback;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::boot::Slot;
pub use direct_io::SlotOptions;
use direct_io::{einval, is_einval, set_direct, AlignedBuf, Seam, BLOCK};
use writeback::Writeback;

/// Size of each write to the slot (and of each of the writer's buffers, four in all:
/// 2 MiB, as much as one 1 MiB buffer and a second for write-back).
pub const WRITE_CHUNK: usize = 1 << 19;

/// Without O_DIRECT, chunks at least this long are written as they come, unbuffered.
const DIRECT_WRITE: usize = 64 * 1024;

/// SHA-256 of an image stream (aws-lc: SHA-NI where the CPU has it).
struct ImageHasher(aws_lc_rs::digest::Context);

impl std::fmt::Debug for ImageHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageHasher(SHA-256)")
    }
}

impl ImageHasher {
    fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// The two slots' targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSet {
    a: PathBuf,
    b: PathBuf,
}

impl SlotSet {
    /// Slot A at `a`, slot B at `b` (files or block devices).
    pub fn new(a: impl Into<PathBuf>, b: impl Into<PathBuf>) -> Self {
        SlotSet {
            a: a.into(),
            b: b.into(),
        }
    }

    /// The target of `slot`.
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The slot not running now, and its target: the only one an update may write.
    pub fn inactive(&self, booted: Slot) -> (Slot, &Path) {
        let slot = booted.other();
        (slot, self.path(slot))
    }
}

/// What the signed target promises: the writer holds the image to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the whole image.
    pub sha256: [u8; 32],
}

/// An image whose length and SHA-256 were checked against its [`ImageSpec`] after all its
/// bytes were synced to the slot. Only [`SlotWriter::finish`] and [`verify_slot`] make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    path: PathBuf,
    length: u64,
    sha256: [u8; 32],
}

impl VerifiedImage {
    /// The slot target holding the image.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// SHA-256 of the image.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

/// Streams one image into a slot target. See the module docs.
#[derive(Debug)]
pub struct SlotWriter {
    file: Arc<File>,
    path: PathBuf,
    spec: ImageSpec,
    kind: TargetKind,
    /// Bytes accepted so far (flushed or pending in the buffer).
    accepted: u64,
    /// Bytes handed to the slot (written, or queued on the write-back thread): the buffer
    /// holds `accepted - flushed` more.
    flushed: u64,
    /// The window being filled; the write-back thread holds the other.
    buf: AlignedBuf,
    hasher: ImageHasher,
    /// O_DIRECT is set on `file`: every write is whole blocks from `buf`, at a block offset.
    /// (The write-back thread may have cleared it since: see [`SlotWriter::direct`].)
    direct: bool,
    /// A write or sync failed: what is in the slot is unknown, so the writer refuses to go
    /// on (resume from the last checkpoint with a new one).
    failed: bool,
    writeback: Writeback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    File,
    BlockDevice,
}

impl SlotWriter {
    /// Opens `path` to write the image described by `spec`, continuing after the first
    /// `resume_from` bytes (0 for a fresh start), which are read back and hashed. A missing
    /// regular file is created; a block device must be at least `spec.length` bytes.
    /// Uses the default [`SlotOptions`] (O_DIRECT where the filesystem allows it).
    pub fn open(path: &Path, spec: ImageSpec, resume_from: u64) -> Result<Self, SlotError> {
        Self::open_with(path, spec, resume_from, SlotOptions::default())
    }

    /// [`SlotWriter::open`] with explicit options.
    pub fn open_with(
        path: &Path,
        spec: ImageSpec,
        resume_from: u64,
        options: SlotOptions,
    ) -> Result<Self, SlotError> {
        Self::open_seam(path, spec, resume_from, options, Seam::default())
    }

    fn open_seam(
        path: &Path,
        spec: ImageSpec,
        resume_from: u64,
        options: SlotOptions,
        seam: Seam,
    ) -> Result<Self, SlotError> {
        let err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| SlotError::Io { op, path, source }
        };
        if resume_from > spec.length {
            return Err(SlotError::ResumePastEnd {
                path: path.to_path_buf(),
                offset: resume_from,
                available: spec.length,
            });
        }
        let kind = match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => TargetKind::BlockDevice,
            Ok(meta) if meta.is_file() => TargetKind::File,
            Ok(_) => {
                return Err(SlotError::UnsupportedTarget {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => TargetKind::File,
            Err(e) => return Err(err("inspecting slot")(e)),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(kind == TargetKind::File)
            .truncate(false)
            .open(path)
            .map_err(err("opening slot"))?;
        let size = file.seek(SeekFrom::End(0)).map_err(err("sizing slot"))?;
        if kind == TargetKind::BlockDevice && size < spec.length {
            return Err(SlotError::SlotTooSmall {
                path: path.to_path_buf(),
                size,
                needed: spec.length,
            });
        }
        if resume_from > size {
            return Err(SlotError::ResumePastEnd {
                path: path.to_path_buf(),
                offset: resume_from,
                available: size,
            });
        }

        let mut buf = AlignedBuf::new();
        let mut hasher = ImageHasher::new();
        // Read back before O_DIRECT is set: buffered reads need no alignment.
        file.rewind().map_err(err("seeking slot"))?;
        hash_prefix(&mut file, resume_from, buf.window_mut(), &mut hasher)
            .map_err(err("re-reading written prefix of slot"))?;
        // O_DIRECT writes start at a block boundary: a resume point inside a block (from
        // a buffered run) restarts at the block's start, its head re-read into the buffer.
        let flushed = if options.direct_io {
            resume_from - resume_from % BLOCK as u64
        } else {
            resume_from
        };
        let head = (resume_from - flushed) as usize;
        file.read_exact_at(&mut buf.window_mut()[..head], flushed)
            .map_err(err("re-reading written prefix of slot"))?;
        buf.len = head;

        let mut direct = false;
        if options.direct_io {
            let set = if seam.refuse_open {
                Err(einval())
            } else {
                set_direct(&file, true)
            };
            match set {
                Ok(()) => direct = true,
                Err(e) if is_einval(&e) => tracing::info!(
                    path = %path.display(),
                    error = %e,
                    "slot refuses O_DIRECT; writing it through the page cache"
                ),
                Err(e) => return Err(err("setting O_DIRECT on slot")(e)),
            }
        }
        let file = Arc::new(file);
        let writeback = Writeback::start(Arc::clone(&file), path.to_path_buf(), direct, seam)
            .map_err(err("starting the slot write thread"))?;
        Ok(SlotWriter {
            file,
            path: path.to_path_buf(),
            spec,
            kind,
            accepted: resume_from,
            flushed,
            buf,
            hasher,
            direct,
            failed: false,
            writeback,
        })
    }

    /// Test helper for other modules: a writer whose write-back thread fails (EIO) every
    /// write at or past offset `at`.
    #[cfg(test)]
    pub(crate) fn open_failing_from(
        path: &Path,
        spec: ImageSpec,
        at: u64,
    ) -> Result<Self, SlotError> {
        let seam = Seam {
            fail_writes_from: Some(at),
            ..Seam::default()
        };
        Self::open_seam(path, spec, 0, SlotOptions::default(), seam)
    }

    /// Whether the slot is being written with O_DIRECT (false: buffered, by choice or
    /// because the filesystem refused it, as learnt from the last write that completed).
    pub fn direct(&self) -> bool {
        self.direct && self.writeback.direct()
    }

    /// Accepts the next bytes of the image. Refuses, without writing anything, bytes that
    /// would go past the signed length. After an I/O error the writer's position is
    /// unreliable: drop it and resume from the last [`SlotWriter::checkpoint`].
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SlotError> {
        self.check_usable()?;
        let offered = self.accepted.saturating_add(data.len() as u64);
        if offered > self.spec.length {
            return Err(SlotError::TooLong {
                path: self.path.clone(),
                expected: self.spec.length,
                offered,
            });
        }
        self.hasher.update(data);
        self.accepted = offered;
        if !self.direct() && self.buf.len == 0 && data.len() >= DIRECT_WRITE {
            // Buffered I/O: large chunks go straight to the file, as copying them through
            // the buffer first would add a memory pass over the whole image. (O_DIRECT
            // needs the aligned buffer, and its copy replaces the kernel's.)
            return self.write_at_flushed(data);
        }
        while !data.is_empty() {
            let n = self.buf.push(data);
            data = &data[n..];
            if self.buf.len == WRITE_CHUNK {
                self.flush_buf()?;
            }
        }
        Ok(())
    }

    /// Bytes accepted so far (including the resumed prefix).
    pub fn position(&self) -> u64 {
        self.accepted
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.spec.length - self.accepted
    }

    /// Writes out buffered bytes and syncs them; returns the offset that is now durable,
    /// to be recorded as the resume point. Under O_DIRECT only whole blocks are written:
    /// the offset is a multiple of 4096 and may be up to 4095 bytes short of
    /// [`SlotWriter::position`]; the rest stays buffered (resuming from the returned
    /// offset fetches it again).
    pub fn checkpoint(&mut self) -> Result<u64, SlotError> {
        self.check_usable()?;
        self.flush_buf()?;
        self.drain()?;
        // fdatasync also after O_DIRECT writes: they bypass the cache, but a grown file's
        // size (and the allocation of its blocks) is metadata only a sync makes durable.
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail("syncing slot", e));
        }
        Ok(self.flushed)
    }

    /// Completes the image: checks that exactly `spec.length` bytes were written, syncs
    /// them (a regular file is also cut to that length), and checks the SHA-256.
    pub fn finish(mut self) -> Result<VerifiedImage, SlotError> {
        self.check_usable()?;
        if self.accepted != self.spec.length {
            return Err(SlotError::Short {
                path: self.path.clone(),
                expected: self.spec.length,
                written: self.accepted,
            });
        }
        self.flush_buf()?;
        self.drain()?;
        if self.buf.len > 0 {
            // The image's last, partial block: O_DIRECT cannot write it, the cache can.
            set_direct(&self.file, false).map_err(self.io_err("clearing O_DIRECT on slot"))?;
            self.direct = false;
            let tail = self.buf.len;
            self.file
                .write_all_at(&self.buf.window()[..tail], self.flushed)
                .map_err(self.io_err("writing slot"))?;
            self.flushed += tail as u64;
            self.buf.len = 0;
        }
        if self.kind == TargetKind::File {
            // A previous, longer image must not linger after this one.
            self.file
                .set_len(self.spec.length)
                .map_err(self.io_err("truncating slot file"))?;
        }
        self.file.sync_all().map_err(self.io_err("syncing slot"))?;
        check_hash(&self.path, &self.spec, self.hasher.finish())
    }

    /// Hands the buffer to the write-back thread: under O_DIRECT its whole blocks (the
    /// rest moves to the front of the next window), otherwise all of it.
    fn flush_buf(&mut self) -> Result<(), SlotError> {
        let n = if self.direct() {
            self.buf.len - self.buf.len % BLOCK
        } else {
            self.buf.len
        };
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = self.writeback.submit(&mut self.buf, n, self.flushed) {
            return Err(self.fail(e.op, e.source));
        }
        self.flushed += n as u64;
        Ok(())
    }

    /// Waits until everything handed to the write-back thread is written.
    fn drain(&mut self) -> Result<(), SlotError> {
        match self.writeback.drain() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e.op, e.source)),
        }
    }

    /// Writes `data` (buffered I/O only) where the slot's written part ends.
    fn write_at_flushed(&mut self, data: &[u8]) -> Result<(), SlotError> {
        if let Err(e) = self.file.write_all_at(data, self.flushed) {
            return Err(self.fail("writing slot", e));
        }
        self.flushed += data.len() as u64;
        Ok(())
    }

    /// Refuses to go on after a failed write or sync.
    fn check_usable(&self) -> Result<(), SlotError> {
        if !self.failed {
            return Ok(());
        }
        Err(SlotError::Io {
            op: "writing slot",
            path: self.path.clone(),
            source: io::Error::other(
                "an earlier write to the slot failed; resume from the last checkpoint",
            ),
        })
    }

    /// Marks the writer failed and names the error.
    fn fail(&mut self, op: &'static str, source: io::Error) -> SlotError {
        self.failed = true;
        SlotError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> SlotError {
        let path = self.path.clone();
        move |source| SlotError::Io { op, path, source }
    }
}

/// Re-reads the first `spec.length` bytes of a slot and checks them against `spec`: for an
/// image written before a crash, before the bootloader is switched to it.
pub fn verify_slot(path: &Path, spec: ImageSpec) -> Result<VerifiedImage, SlotError> {
    let err = |op| {
        let path = path.to_path_buf();
        move |source| SlotError::Io { op, path, source }
    };
    let mut file = File::open(path).map_err(err("opening slot"))?;
    let size = file.seek(SeekFrom::End(0)).map_err(err("sizing slot"))?;
    if size < spec.length {
        return Err(SlotError::Short {
            path: path.to_path_buf(),
            expected: spec.length,
            written: size,
        });
    }
    file.rewind().map_err(err("seeking slot"))?;
    let mut hasher = ImageHasher::new();
    let mut buf = vec![0u8; WRITE_CHUNK];
    hash_prefix(&mut file, spec.length, &mut buf, &mut hasher).map_err(err("reading slot"))?;
    check_hash(path, &spec, hasher.finish())
}

fn check_hash(path: &Path, spec: &ImageSpec, actual: [u8; 32]) -> Result<VerifiedImage, SlotError> {
    if actual != spec.sha256 {
        return Err(SlotError::HashMismatch {
            path: path.to_path_buf(),
            expected: hex::encode(spec.sha256),
            actual: hex::encode(actual),
        });
    }
    Ok(VerifiedImage {
        path: path.to_path_buf(),
        length: spec.length,
        sha256: actual,
    })
}

/// Hashes the next `len` bytes of `reader`, through `buf` (scratch).
fn hash_prefix(
    reader: &mut impl Read,
    len: u64,
    buf: &mut [u8],
    hasher: &mut ImageHasher,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// A failed slot operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// An I/O operation on the slot failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The slot target.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The target is neither a regular file nor a block device.
    #[error("slot target {path} is neither a regular file nor a block device")]
    UnsupportedTarget {
        /// The slot target.
        path: PathBuf,
    },
    /// The block device cannot hold the image.
    #[error("slot {path} has {size} bytes, the image needs {needed}")]
    SlotTooSmall {
        /// The slot target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image length.
        needed: u64,
    },
    /// The resume offset is beyond what the slot (or the image) holds.
    #[error("cannot resume writing {path} at offset {offset}: only {available} bytes there")]
    ResumePastEnd {
        /// The slot target.
        path: PathBuf,
        /// The requested offset.
        offset: u64,
        /// Bytes available.
        available: u64,
    },
    /// More bytes were offered than the signed length.
    #[error(
        "image for {path} is longer than signed: {offered} bytes offered, {expected} expected"
    )]
    TooLong {
        /// The slot target.
        path: PathBuf,
        /// The signed length.
        expected: u64,
        /// The length the write would have reached.
        offered: u64,
    },
    /// Fewer bytes than the signed length.
    #[error("image in {path} is shorter than signed: {written} bytes, {expected} expected")]
    Short {
        /// The slot target.
        path: PathBuf,
        /// The signed length.
        expected: u64,
        /// Bytes written.
        written: u64,
    },
    /// The image's SHA-256 differs from the signed one.
    #[error("image in {path} has sha256 {actual}, signed {expected}")]
    HashMismatch {
        /// The slot target.
        path: PathBuf,
        /// The signed hash (hex).
        expected: String,
        /// The hash of the bytes in the slot (hex).
        actual: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Deterministic test image of `len` bytes.
    pub(super) fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    pub(super) fn spec(data: &[u8]) -> ImageSpec {
        ImageSpec {
            length: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    /// Feeds `data` in uneven pieces, as a network stream would.
    pub(super) fn feed(writer: &mut SlotWriter, data: &[u8]) {
        let sizes = [1usize, 4095, 3 << 20, 17, 65536];
        let mut rest = data;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, tail) = rest.split_at((*size).min(rest.len()));
            writer.write(now).unwrap();
            assert_eq!(writer.buf.mem.len(), WRITE_CHUNK + BLOCK, "constant memory");
            assert!(
                writer.writeback.windows() <= writeback::WINDOWS,
                "fixed windows"
            );
            rest = tail;
        }
    }

    #[test]
    fn writes_and_verifies_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotSet::new(dir.path().join("a.img"), dir.path().join("b.img"));
        let (slot, path) = slots.inactive(Slot::A);
        assert_eq!(slot, Slot::B);
        // A previous, longer image in the slot is cut off.
        std::fs::write(path, vec![0xee; 6 << 20]).unwrap();

        let data = image((5 << 20) + 123);
        let mut w = SlotWriter::open(path, spec(&data), 0).unwrap();
        feed(&mut w, &data);
        assert_eq!(w.remaining(), 0);
        let verified = w.finish().unwrap();
        assert_eq!(verified.length(), data.len() as u64);
        assert_eq!(verified.sha256(), spec(&data).sha256);
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert_eq!(verify_slot(path, spec(&data)).unwrap(), verified);
    }

    #[test]
    fn resumes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(3 << 20);
        let (first, second) = data.split_at(1_500_000);

        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        w.write(first).unwrap();
        let resume_at = w.checkpoint().unwrap();
        // O_DIRECT: only whole blocks are durable (buffered: everything).
        let lag = first.len() as u64 - resume_at;
        assert!(lag < BLOCK as u64, "{resume_at}");
        assert_eq!(lag == 0, !w.direct(), "{resume_at}");
        // Bytes accepted after the checkpoint are lost in the "crash".
        w.write(&second[..1000]).unwrap();
        drop(w);

        let mut w = SlotWriter::open(&path, spec(&data), resume_at).unwrap();
        assert_eq!(w.position(), resume_at);
        feed(&mut w, &data[resume_at as usize..]);
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn resume_rehashes_what_is_really_in_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(100_000);
        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        w.write(&data[..50_000]).unwrap();
        let at = w.checkpoint().unwrap();
        drop(w);
        // The prefix changes while the agent is down.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();

        let mut w = SlotWriter::open(&path, spec(&data), at).unwrap();
        w.write(&data[at as usize..]).unwrap();
        let err = w.finish().unwrap_err();
        assert!(matches!(err, SlotError::HashMismatch { .. }), "{err:?}");
    }

    #[test]
    fn refuses_bytes_past_the_signed_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(1000);
        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        w.write(&data[..900]).unwrap();
        let err = w.write(&[0u8; 101]).unwrap_err();
        assert!(
            matches!(
                err,
                SlotError::TooLong {
                    expected: 1000,
                    offered: 1001,
                    ..
                }
            ),
            "{err:?}"
        );
        // The refused write changed nothing: the right bytes still complete the image.
        w.write(&data[900..]).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn refuses_a_short_image_and_a_wrong_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(1000);
        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        w.write(&data[..999]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(SlotError::Short {
                expected: 1000,
                written: 999,
                ..
            })
        ));

        let mut other = data.clone();
        other[500] ^= 0xff;
        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        w.write(&other).unwrap();
        let err = w.finish().unwrap_err();
        assert!(
            err.to_string().contains(&hex::encode(spec(&data).sha256)),
            "{err}"
        );
        assert!(matches!(
            verify_slot(&path, spec(&data)),
            Err(SlotError::HashMismatch { .. })
        ));
    }

    #[test]
    fn refuses_bad_resume_offsets_and_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(1000);
        std::fs::write(&path, &data[..100]).unwrap();
        assert!(matches!(
            SlotWriter::open(&path, spec(&data), 101),
            Err(SlotError::ResumePastEnd {
                offset: 101,
                available: 100,
                ..
            })
        ));
        assert!(matches!(
            SlotWriter::open(&path, spec(&data), 1001),
            Err(SlotError::ResumePastEnd {
                available: 1000,
                ..
            })
        ));
        assert!(matches!(
            SlotWriter::open(Path::new("/dev/null"), spec(&data), 0),
            Err(SlotError::UnsupportedTarget { .. })
        ));
        assert!(matches!(
            SlotWriter::open(&dir.path().join("no/such/dir"), spec(&data), 0),
            Err(SlotError::Io { .. })
        ));
        assert!(matches!(
            verify_slot(&path, spec(&data)),
            Err(SlotError::Short { written: 100, .. })
        ));
    }

    #[test]
    fn empty_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let w = SlotWriter::open(&path, spec(&[]), 0).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    /// Writes into a real block device (a loop device over a temporary file). Needs root
    /// and loop devices, which CI containers may lack:
    /// `cargo test -p ota-agent -- --ignored block_device`.
    #[test]
    #[ignore = "needs root and a free loop device (losetup)"]
    fn block_device_slot() {
        struct Loop(String);
        impl Drop for Loop {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        std::fs::write(&backing, vec![0u8; 4 << 20]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
        let path = Path::new(&dev.0);

        let data = image((3 << 20) + 5);
        let mut w = SlotWriter::open(path, spec(&data), 0).unwrap();
        assert!(w.direct(), "loop devices take O_DIRECT");
        w.write(&data[..1 << 20]).unwrap();
        let at = w.checkpoint().unwrap();
        drop(w);
        let mut w = SlotWriter::open(path, spec(&data), at).unwrap();
        w.write(&data[1 << 20..]).unwrap();
        w.finish().unwrap();
        verify_slot(path, spec(&data)).unwrap();
        // The device keeps its size; a too-large image is refused up front.
        let big = ImageSpec {
            length: 5 << 20,
            sha256: [0; 32],
        };
        assert!(matches!(
            SlotWriter::open(path, big, 0),
            Err(SlotError::SlotTooSmall { .. })
        ));
    }
}
