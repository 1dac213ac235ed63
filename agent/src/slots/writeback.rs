//! The slot's write-back thread. An O_DIRECT write blocks its caller for the whole device
//! transfer, so [`SlotWriter`](super::SlotWriter) hands each full window to this thread and
//! goes on hashing and copying the next bytes into another window meanwhile: the writer's
//! critical path is CPU only (profile of a 512 MiB install, 2 vCPUs: 434 ms on CPU and
//! 303 ms blocked in the device write, one after the other, before this thread existed).
//!
//! Memory stays fixed: [`WINDOWS`] windows in all, one filling and the others queued or
//! being written.
//! Windows are written in the order they were queued; an error comes back with the window
//! it failed on and the thread writes nothing after it, so the writer hears of it when it
//! next waits for a window (its next write, checkpoint or finish), and a checkpoint, which
//! waits for every window first ([`Writeback::drain`]), never covers a failed write.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::direct_io::{einval, is_einval, set_direct, AlignedBuf, Seam};

/// Windows in all: one being filled while the others wait to be written or are. More than
/// two absorbs the device's jitter (a write taking several times its average) at the same
/// memory, as each is [`WRITE_CHUNK`] = 512 KiB.
pub(super) const WINDOWS: usize = 4;

/// Write `buf`'s first `len` bytes at `offset`.
struct Job {
    buf: AlignedBuf,
    len: usize,
    offset: u64,
}

/// A job done: its window comes back for reuse.
struct Done {
    buf: AlignedBuf,
    result: io::Result<()>,
    /// O_DIRECT is still on (false once the thread fell back to the page cache).
    direct: bool,
}

/// A failed write-back operation, for the writer to wrap with its path.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) op: &'static str,
    pub(super) source: io::Error,
}

fn lost() -> Failed {
    Failed {
        op: "slot write thread",
        source: io::Error::other("the slot write thread stopped unexpectedly"),
    }
}

/// The write-back thread and the windows it shares with the writer.
pub(super) struct Writeback {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Windows back from the thread, ready to fill.
    spare: Vec<AlignedBuf>,
    /// Windows allocated so far, including the writer's first (at most [`WINDOWS`]).
    made: usize,
    in_flight: usize,
    direct: bool,
}

impl std::fmt::Debug for Writeback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writeback({} in flight)", self.in_flight)
    }
}

impl Writeback {
    /// Starts the thread writing to `file` (O_DIRECT on it if `direct`). The writer's own
    /// window counts as the first of [`WINDOWS`]; the others are allocated as needed.
    pub(super) fn start(
        file: Arc<File>,
        path: PathBuf,
        direct: bool,
        seam: Seam,
    ) -> io::Result<Self> {
        let (jobs_tx, jobs_rx) = sync_channel(WINDOWS);
        let (done_tx, done_rx) = channel();
        let thread = std::thread::Builder::new()
            .name("ota-slot-write".into())
            .spawn(move || run(&file, &path, direct, &seam, jobs_rx, done_tx))?;
        Ok(Writeback {
            jobs: Some(jobs_tx),
            done: done_rx,
            thread: Some(thread),
            spare: Vec::new(),
            made: 1,
            in_flight: 0,
            direct,
        })
    }

    /// Whether O_DIRECT is still on, as of the last window that came back.
    pub(super) fn direct(&self) -> bool {
        self.direct
    }

    /// Windows allocated so far (never more than [`WINDOWS`]).
    #[cfg(test)]
    pub(super) fn windows(&self) -> usize {
        self.made
    }

    /// Queues `buf`'s first `n` bytes to be written at `offset` and gives the writer a
    /// free window in its place, holding `buf`'s bytes after `n` at its front. Waits for
    /// a window to come back when none is free; on an error nothing was queued and `buf`
    /// is unchanged.
    pub(super) fn submit(
        &mut self,
        buf: &mut AlignedBuf,
        n: usize,
        offset: u64,
    ) -> Result<(), Failed> {
        let mut next = self.free_window()?;
        next.len = 0;
        next.push(&buf.window()[n..buf.len]);
        std::mem::swap(buf, &mut next);
        let job = Job {
            buf: next,
            len: n,
            offset,
        };
        let sent = self.jobs.as_ref().map(|tx| tx.send(job));
        match sent {
            Some(Ok(())) => {
                self.in_flight += 1;
                Ok(())
            }
            Some(Err(std::sync::mpsc::SendError(job))) => {
                // Put things back as they were; the thread is gone.
                let mut job = job;
                std::mem::swap(buf, &mut job.buf);
                self.spare.push(job.buf);
                Err(lost())
            }
            None => Err(lost()),
        }
    }

    /// Waits until every queued window is written; the first error, if any.
    pub(super) fn drain(&mut self) -> Result<(), Failed> {
        let mut first = Ok(());
        while self.in_flight > 0 {
            if let Err(e) = self.wait_one() {
                first = first.and(Err(e));
            }
        }
        first
    }

    fn free_window(&mut self) -> Result<AlignedBuf, Failed> {
        if let Some(buf) = self.spare.pop() {
            return Ok(buf);
        }
        if self.made < WINDOWS {
            self.made += 1;
            return Ok(AlignedBuf::new());
        }
        if self.in_flight == 0 {
            // Every window is accounted for and none is coming back: one was lost with
            // the thread. (Waiting here would never end.)
            return Err(lost());
        }
        self.wait_one()?;
        self.spare.pop().ok_or_else(lost)
    }

    fn wait_one(&mut self) -> Result<(), Failed> {
        match self.done.recv() {
            Ok(done) => {
                self.in_flight -= 1;
                self.spare.push(done.buf);
                self.direct = done.direct;
                done.result.map_err(|source| Failed {
                    op: "writing slot",
                    source,
                })
            }
            Err(_) => {
                // The thread is gone, and the windows it held with it.
                self.in_flight = 0;
                Err(lost())
            }
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it holds; wait for
        // it so that nothing writes to the slot after its writer is gone.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    file: &File,
    path: &std::path::Path,
    mut direct: bool,
    seam: &Seam,
    jobs: Receiver<Job>,
    done: Sender<Done>,
) {
    // No O_DIRECT write has succeeded yet: EINVAL from one means the filesystem refuses
    // O_DIRECT after all (some accept the flag but not the I/O), not a bad request.
    let mut unproven = true;
    let mut failed = false;
    for job in jobs {
        if seam.die_on_write {
            return;
        }
        if let Some(gate) = &seam.gate {
            // Held by a test: the write waits until it lets go.
            drop(gate.lock());
        }
        let data = &job.buf.window()[..job.len];
        let result = if failed {
            Err(io::Error::other(
                "not written: an earlier write to the slot failed",
            ))
        } else if seam.fail_writes_from.is_some_and(|at| job.offset >= at) {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            ))
        } else {
            let refuse = seam.refuse_first_write && direct && unproven;
            let mut written = if refuse {
                Err(einval())
            } else {
                file.write_all_at(data, job.offset)
            };
            if let Err(e) = &written {
                if direct && unproven && is_einval(e) {
                    written = set_direct(file, false).and_then(|()| {
                        direct = false;
                        tracing::info!(
                            path = %path.display(),
                            error = %e,
                            "slot refuses O_DIRECT; writing it through the page cache"
                        );
                        file.write_all_at(data, job.offset)
                    });
                }
            }
            unproven &= !(written.is_ok() && direct);
            written
        };
        failed |= result.is_err();
        let reply = Done {
            buf: job.buf,
            result,
            direct,
        };
        if done.send(reply).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{feed, image, spec};
    use super::super::{SlotError, SlotOptions, SlotWriter, BLOCK, WRITE_CHUNK};
    use super::*;
    use std::sync::Mutex;

    fn open(path: &std::path::Path, data: &[u8], seam: Seam) -> SlotWriter {
        SlotWriter::open_seam(path, spec(data), 0, SlotOptions::default(), seam).unwrap()
    }

    /// The durable offset a checkpoint after `at` accepted bytes must return.
    fn durable_after(w: &SlotWriter, at: usize) -> u64 {
        let at = at as u64;
        if w.direct() {
            at - at % BLOCK as u64
        } else {
            at
        }
    }

    /// Pieces below the buffered path's bypass size, so every byte goes through a window.
    fn write_small(w: &mut SlotWriter, data: &[u8]) -> Result<(), SlotError> {
        data.chunks(4000).try_for_each(|piece| w.write(piece))
    }

    fn assert_thread_lost(err: &SlotError) {
        assert!(
            matches!(
                err,
                SlotError::Io {
                    op: "slot write thread",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    fn assert_eio(err: &SlotError) {
        match err {
            SlotError::Io { op, source, .. } => {
                assert_eq!(*op, "writing slot", "{err:?}");
                assert_eq!(source.raw_os_error(), Some(5), "{err:?}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn the_writer_fills_the_next_window_while_the_last_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image((WINDOWS + 2) * WRITE_CHUNK + 5000);
        let gate = Arc::new(Mutex::new(()));
        let seam = Seam {
            gate: Some(Arc::clone(&gate)),
            ..Seam::default()
        };
        let mut w = open(&path, &data, seam);
        // Declared after the writer, so a failing test lets the thread go before joining it.
        let held = gate.lock().unwrap();
        let first = (WINDOWS - 1) * WRITE_CHUNK + 40_000;
        write_small(&mut w, &data[..first]).unwrap();
        // Full windows went to the thread, which cannot write them yet: the writer did not
        // wait for the device, and holds the next bytes in its last window.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(w.position(), first as u64);
        assert_eq!(w.writeback.windows(), WINDOWS);
        drop(held);
        // The checkpoint waits for that window, then writes and syncs the rest.
        let durable = w.checkpoint().unwrap();
        assert_eq!(durable, durable_after(&w, first));
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[..durable as usize] == data[..durable as usize]);
        feed(&mut w, &data[first..]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn checkpoints_cover_exactly_what_came_before_and_resume_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(9 * WRITE_CHUNK + 777);
        let mut w = open(&path, &data, Seam::default());
        let mut durable = 0;
        let mut at = 0;
        for (i, piece) in data[..6 * WRITE_CHUNK].chunks(300_001).enumerate() {
            w.write(piece).unwrap();
            at += piece.len();
            if i % 7 == 6 {
                durable = w.checkpoint().unwrap();
                assert_eq!(durable, durable_after(&w, at), "after {at}");
                let on_disk = std::fs::read(&path).unwrap();
                assert!(on_disk.len() as u64 >= durable);
                assert!(on_disk[..durable as usize] == data[..durable as usize]);
            }
        }
        // More windows handed over, then a "crash": the writer goes without a checkpoint.
        write_small(&mut w, &data[at..at + 2 * WRITE_CHUNK]).unwrap();
        drop(w);

        let mut w = SlotWriter::open(&path, spec(&data), durable).unwrap();
        assert_eq!(w.position(), durable);
        feed(&mut w, &data[durable as usize..]);
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn a_failed_write_surfaces_at_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image((WINDOWS + 2) * WRITE_CHUNK);
        let seam = Seam {
            fail_writes_from: Some(WRITE_CHUNK as u64),
            ..Seam::default()
        };
        let mut w = open(&path, &data, seam);
        // The second window fails on the thread; the writer hears of it when it needs that
        // window back: when all are in use and one more is full.
        let full = (WINDOWS + 1) * WRITE_CHUNK;
        write_small(&mut w, &data[..full - 1]).unwrap();
        let err = w.write(&data[full - 1..full]);
        assert_eio(&err.unwrap_err());
        // And it stays failed: no checkpoint may cover the lost window.
        assert!(matches!(w.checkpoint(), Err(SlotError::Io { .. })));
        assert!(matches!(w.write(&[0]), Err(SlotError::Io { .. })));
        assert!(matches!(w.finish(), Err(SlotError::Io { .. })));
    }

    #[test]
    fn a_failed_write_surfaces_at_the_next_checkpoint_or_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image(2 * WRITE_CHUNK);
        let seam = Seam {
            fail_writes_from: Some(WRITE_CHUNK as u64),
            ..Seam::default()
        };
        let mut w = open(&path, &data, seam.clone());
        write_small(&mut w, &data[..2 * WRITE_CHUNK - 10]).unwrap();
        assert_eio(&w.checkpoint().unwrap_err());

        let mut w = open(&path, &data, seam);
        write_small(&mut w, &data).unwrap();
        assert_eio(&w.finish().unwrap_err());
    }

    #[test]
    fn a_write_thread_that_dies_is_reported_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let data = image((WINDOWS + 2) * WRITE_CHUNK);
        let seam = Seam {
            die_on_write: true,
            ..Seam::default()
        };
        let mut w = open(&path, &data, seam.clone());
        // The thread exits on the first window; whether the writer notices when it next
        // queues a window or when it waits for one depends on the thread, but it does
        // within the windows there are.
        let err = data
            .chunks(4000)
            .find_map(|piece| w.write(piece).err())
            .expect("the lost thread is reported");
        assert_thread_lost(&err);
        assert!(matches!(w.checkpoint(), Err(SlotError::Io { .. })));

        let mut w = open(&path, &data, seam);
        write_small(&mut w, &data[..WRITE_CHUNK + 1]).unwrap();
        let err = w.checkpoint().unwrap_err();
        assert_thread_lost(&err);
    }
}
