//! O_DIRECT for the slot writer: the block-aligned buffer that unbuffered writes must come
//! from, and switching the flag on the open slot (fcntl through rustix: no `unsafe`).
//! With O_DIRECT the kernel DMAs the image from the writer's buffer instead of copying it
//! into the page cache: one memory pass over the image less, and a whole image no longer
//! evicts what the device keeps cached (BENCHMARKS.md: 0.79 -> 0.74 s for 512 MiB here).

use std::fs::File;
use std::io;

use rustix::fs::OFlags;

use super::WRITE_CHUNK;

/// How a [`SlotWriter`](super::SlotWriter) writes to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotOptions {
    /// Write with O_DIRECT (DMA from the writer's aligned buffer, no copy into the page
    /// cache), falling back to buffered writes where the filesystem refuses it (EINVAL).
    pub direct_io: bool,
}

impl Default for SlotOptions {
    fn default() -> Self {
        SlotOptions { direct_io: true }
    }
}

impl SlotOptions {
    /// Options with O_DIRECT on or off.
    pub fn direct_io(direct_io: bool) -> Self {
        SlotOptions { direct_io }
    }
}

/// Test seam: pretend the filesystem refuses O_DIRECT (tmpfs-like) at open or on the
/// first write, make the write-back thread fail (EIO from `fail_writes_from` on) or die,
/// or hold its writes while a test holds `gate`. Always off outside tests.
#[derive(Debug, Clone, Default)]
pub(super) struct Seam {
    pub(super) refuse_open: bool,
    pub(super) refuse_first_write: bool,
    pub(super) fail_writes_from: Option<u64>,
    pub(super) die_on_write: bool,
    pub(super) gate: Option<std::sync::Arc<std::sync::Mutex<()>>>,
}

/// O_DIRECT's alignment for offsets, lengths and memory: 4096 covers 512-byte and
/// 4K-sector devices and the page size.
pub(super) const BLOCK: usize = 4096;

/// One of the writer's buffers: a [`WRITE_CHUNK`]-byte window aligned to [`BLOCK`] inside a
/// slightly larger allocation (safe Rust cannot ask the allocator to align a byte buffer).
pub(super) struct AlignedBuf {
    pub(super) mem: Vec<u8>,
    start: usize,
    /// Pending bytes at the window's start.
    pub(super) len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} pending)", self.len)
    }
}

impl AlignedBuf {
    pub(super) fn new() -> Self {
        let mem = vec![0u8; WRITE_CHUNK + BLOCK];
        // align_offset may in principle answer "cannot" (usize::MAX): the window is then
        // unaligned, the first O_DIRECT write fails with EINVAL and the writer falls back
        // to buffered I/O.
        let start = mem.as_ptr().align_offset(BLOCK).min(BLOCK);
        AlignedBuf { mem, start, len: 0 }
    }

    pub(super) fn window(&self) -> &[u8] {
        &self.mem[self.start..self.start + WRITE_CHUNK]
    }

    pub(super) fn window_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + WRITE_CHUNK]
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub(super) fn push(&mut self, data: &[u8]) -> usize {
        let n = (WRITE_CHUNK - self.len).min(data.len());
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// Sets or clears O_DIRECT on an open file (F_SETFL). Fails with EINVAL where the
/// filesystem does not support it (tmpfs on older kernels, some FUSE and network ones).
pub(super) fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    Ok(rustix::fs::fcntl_setfl(file, flags)?)
}

pub(super) fn einval() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error())
}

pub(super) fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{feed, image, spec};
    use super::super::SlotWriter;
    use super::*;

    /// A temporary directory on a filesystem that takes O_DIRECT, if this machine has one
    /// (the system temp dir, else the checkout's filesystem), and whether it does.
    fn direct_dir() -> (tempfile::TempDir, bool) {
        let cwd = std::env::current_dir().unwrap();
        for base in [std::env::temp_dir(), cwd.join("../target"), cwd] {
            if !base.is_dir() {
                continue;
            }
            let dir = tempfile::tempdir_in(&base).unwrap();
            let data = image(2 * BLOCK);
            let mut w = SlotWriter::open(&dir.path().join("probe"), spec(&data), 0).unwrap();
            w.write(&data).unwrap();
            w.checkpoint().unwrap();
            if w.direct() {
                return (dir, true);
            }
        }
        eprintln!("no filesystem here takes O_DIRECT: testing the buffered fallback only");
        (tempfile::tempdir().unwrap(), false)
    }

    #[test]
    fn the_buffer_window_is_block_aligned() {
        let mut buf = AlignedBuf::new();
        assert_eq!(buf.window().as_ptr() as usize % BLOCK, 0);
        assert_eq!(buf.window().len(), WRITE_CHUNK);
        assert_eq!(
            buf.push(&image(WRITE_CHUNK + 10)),
            WRITE_CHUNK,
            "fills up, no more"
        );
        assert_eq!(buf.len, WRITE_CHUNK);
        assert_eq!(buf.window()[..3], image(3)[..]);
    }

    #[test]
    fn direct_io_writes_exact_images() {
        let (dir, direct) = direct_dir();
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            WRITE_CHUNK - 1,
            WRITE_CHUNK + 1,
            (3 << 20) + 17,
        ] {
            let path = dir.path().join(format!("slot-{len}"));
            // A previous, longer image in the slot is cut off.
            std::fs::write(&path, vec![0xee; len + 5000]).unwrap();
            let data = image(len);
            let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
            assert_eq!(w.direct(), direct, "length {len}");
            feed(&mut w, &data);
            assert_eq!(w.direct(), direct, "length {len}: stayed on its path");
            let verified = w.finish().unwrap();
            assert_eq!(verified.sha256(), spec(&data).sha256, "length {len}");
            assert!(std::fs::read(&path).unwrap() == data, "length {len}");
        }
    }

    #[test]
    fn direct_io_checkpoints_whole_blocks_and_resumes_after_a_crash() {
        let (dir, direct) = direct_dir();
        let path = dir.path().join("b.img");
        let data = image((3 << 20) + 17);
        let mut w = SlotWriter::open(&path, spec(&data), 0).unwrap();
        let (mut at, mut durable) = (0usize, 0u64);
        for piece in [1usize, 5000, 4096, 700_000, 3, WRITE_CHUNK, 123_457] {
            w.write(&data[at..at + piece]).unwrap();
            at += piece;
            durable = w.checkpoint().unwrap();
            if direct {
                assert_eq!(durable % BLOCK as u64, 0, "{durable}");
                assert!(at as u64 - durable < BLOCK as u64, "{durable} for {at}");
            } else {
                assert_eq!(durable, at as u64);
            }
            assert_eq!(w.position(), at as u64, "the rest stays accepted");
            let on_disk = std::fs::read(&path).unwrap();
            assert!(on_disk[..durable as usize] == data[..durable as usize]);
        }
        // Accepted after the last checkpoint, lost in the "crash".
        w.write(&data[at..at + 10_000]).unwrap();
        drop(w);

        let mut w = SlotWriter::open(&path, spec(&data), durable).unwrap();
        assert_eq!(w.direct(), direct);
        assert_eq!(w.position(), durable);
        feed(&mut w, &data[durable as usize..]);
        let verified = w.finish().unwrap();
        assert_eq!(verified.sha256(), spec(&data).sha256);
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn direct_io_resumes_from_an_offset_inside_a_block() {
        let (dir, direct) = direct_dir();
        let path = dir.path().join("b.img");
        let data = image(300_009);
        // A buffered run (direct_io = false) left a resume point inside a block.
        let off = SlotOptions::direct_io(false);
        let mut w = SlotWriter::open_with(&path, spec(&data), 0, off).unwrap();
        assert!(!w.direct());
        w.write(&data[..10_001]).unwrap();
        assert_eq!(w.checkpoint().unwrap(), 10_001, "buffered: all of it");
        drop(w);

        let mut w = SlotWriter::open(&path, spec(&data), 10_001).unwrap();
        assert_eq!(w.direct(), direct);
        assert_eq!(w.position(), 10_001);
        w.write(&data[10_001..20_000]).unwrap();
        let at = w.checkpoint().unwrap();
        assert_eq!(at, if direct { 4 * BLOCK as u64 } else { 20_000 });
        feed(&mut w, &data[20_000..]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn falls_back_to_buffered_io_when_o_direct_is_refused_at_open() {
        let (dir, _) = direct_dir();
        let path = dir.path().join("b.img");
        let data = image(WRITE_CHUNK + 5000);
        let seam = Seam {
            refuse_open: true,
            ..Seam::default()
        };
        let mut w =
            SlotWriter::open_seam(&path, spec(&data), 0, SlotOptions::default(), seam).unwrap();
        assert!(!w.direct());
        w.write(&data[..5000]).unwrap();
        assert_eq!(
            w.checkpoint().unwrap(),
            5000,
            "buffered: every byte is durable"
        );
        feed(&mut w, &data[5000..]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn falls_back_to_buffered_io_when_the_first_direct_write_is_refused() {
        let (dir, direct) = direct_dir();
        let path = dir.path().join("b.img");
        let data = image(WRITE_CHUNK + 5000);
        let seam = Seam {
            refuse_first_write: true,
            ..Seam::default()
        };
        let mut w =
            SlotWriter::open_seam(&path, spec(&data), 0, SlotOptions::default(), seam).unwrap();
        assert_eq!(w.direct(), direct, "O_DIRECT accepted at open");
        w.write(&data[..5000]).unwrap();
        assert_eq!(w.direct(), direct, "nothing written yet");
        // The first write is refused with EINVAL and redone through the cache.
        assert_eq!(w.checkpoint().unwrap(), if direct { 4096 } else { 5000 });
        assert!(!w.direct());
        feed(&mut w, &data[5000..]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }
}
