//! Hashing and writing a download on a second thread, so that receiving (and decrypting)
//! the next chunk overlaps hashing and writing the last one. (The [`SlotWriter`] in turn
//! hands its device writes to a third thread, so hashing also overlaps the disk.) All
//! checks stay [`SlotWriter`]'s; this only moves it behind a bounded queue, in order, so a
//! checkpoint still covers exactly the bytes queued before it.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::slots::{SlotError, SlotWriter};

/// Chunks in flight. Small on purpose: overlapping needs only one or two, and a chunk is
/// ~400 KiB on a fast link (hyper's receive buffer), so the queue bounds the agent's memory.
/// Measured on a 512 MiB install: 12 was no faster than 4, nor 4 than 2; 4 put the peak RSS
/// for a 1 GiB image within 0.3 MiB of the 16 MiB budget, 2 leaves ~1 MiB.
const QUEUE: usize = 2;

enum Msg {
    Data(Bytes),
    Checkpoint(SyncSender<Result<u64, SlotError>>),
}

/// A [`SlotWriter`] running on its own thread.
pub struct PipedWriter {
    tx: Option<SyncSender<Msg>>,
    worker: Option<JoinHandle<Result<SlotWriter, SlotError>>>,
    queued: u64,
    /// The answer to a checkpoint started with [`PipedWriter::begin_checkpoint`].
    pending: Option<Receiver<Result<u64, SlotError>>>,
}

/// The worker thread died without saying why (it panicked).
fn worker_lost() -> SlotError {
    SlotError::Io {
        op: "slot writer thread",
        path: std::path::PathBuf::new(),
        source: std::io::Error::other("the slot writer thread stopped unexpectedly"),
    }
}

fn run(mut writer: SlotWriter, rx: Receiver<Msg>) -> Result<SlotWriter, SlotError> {
    for msg in rx {
        match msg {
            Msg::Data(chunk) => writer.write(&chunk)?,
            // A failed checkpoint is reported to the caller, which then stops.
            Msg::Checkpoint(reply) => {
                let _ = reply.send(writer.checkpoint());
            }
        }
    }
    Ok(writer)
}

impl PipedWriter {
    /// Moves `writer` to a new thread.
    pub fn start(writer: SlotWriter) -> Self {
        let queued = writer.position();
        let (tx, rx) = sync_channel(QUEUE);
        let worker = std::thread::spawn(move || run(writer, rx));
        PipedWriter {
            tx: Some(tx),
            worker: Some(worker),
            queued,
            pending: None,
        }
    }

    /// Bytes handed over so far (written, or queued to be).
    pub fn position(&self) -> u64 {
        self.queued
    }

    /// The worker's error, once it stopped on one.
    fn failure(&mut self) -> SlotError {
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => worker_lost(),
        }
    }

    /// Queues a chunk (blocks while the queue is full: back-pressure on the download).
    pub fn write(&mut self, chunk: Bytes) -> Result<(), SlotError> {
        let len = chunk.len() as u64;
        let sent = self.tx.as_ref().map(|tx| tx.send(Msg::Data(chunk)));
        match sent {
            Some(Ok(())) => {
                self.queued += len;
                Ok(())
            }
            _ => Err(self.failure()),
        }
    }

    /// Starts a checkpoint of everything queued so far without waiting for it: the
    /// download goes on while the worker syncs. Collect the durable offset with
    /// [`PipedWriter::poll_checkpoint`] or [`PipedWriter::wait_checkpoint`] (a checkpoint
    /// still pending is waited for first, so at most one is in flight).
    pub fn begin_checkpoint(&mut self) -> Result<Option<u64>, SlotError> {
        let previous = self.wait_checkpoint().transpose()?;
        let (reply_tx, reply_rx) = sync_channel(1);
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(Msg::Checkpoint(reply_tx)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.failure());
        }
        self.pending = Some(reply_rx);
        Ok(previous)
    }

    /// The offset made durable by the pending checkpoint, if it has completed.
    pub fn poll_checkpoint(&mut self) -> Option<Result<u64, SlotError>> {
        let result = match self.pending.as_ref()?.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(self.failure()),
        };
        self.pending = None;
        Some(result)
    }

    /// Waits for the pending checkpoint, if any, and returns its durable offset.
    pub fn wait_checkpoint(&mut self) -> Option<Result<u64, SlotError>> {
        let reply = self.pending.take()?;
        Some(match reply.recv() {
            Ok(r) => r,
            Err(_) => Err(self.failure()),
        })
    }

    /// Waits until everything queued is written, then makes it durable; returns the
    /// durable offset (see [`SlotWriter::checkpoint`]).
    pub fn checkpoint(&mut self) -> Result<u64, SlotError> {
        self.begin_checkpoint()?;
        match self.wait_checkpoint() {
            Some(r) => r,
            None => Err(self.failure()),
        }
    }

    /// Waits for the queue to drain and gives the writer back (to `finish` it).
    pub fn into_inner(mut self) -> Result<SlotWriter, SlotError> {
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(worker_lost()),
        }
    }
}

impl Drop for PipedWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread; wait so the slot file is closed.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::ImageSpec;
    use sha2::{Digest, Sha256};

    /// The signed length and hash of `data`.
    fn spec_of(data: &[u8]) -> ImageSpec {
        ImageSpec {
            length: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn writes_in_order_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(3 * 1024 * 1024 + 17);
        std::fs::write(&slot, vec![0u8; data.len()]).unwrap();
        let spec = spec_of(&data);
        let mut pipe = PipedWriter::start(SlotWriter::open(&slot, spec, 0).unwrap());
        for (i, chunk) in data.chunks(16 * 1024).enumerate() {
            pipe.write(Bytes::copy_from_slice(chunk)).unwrap();
            if i == 100 {
                assert_eq!(pipe.checkpoint().unwrap(), 101 * 16 * 1024);
            }
        }
        assert_eq!(pipe.position(), data.len() as u64);
        let v = pipe.into_inner().unwrap().finish().unwrap();
        assert_eq!(v.length(), data.len() as u64);
        assert_eq!(std::fs::read(&slot).unwrap(), data);
    }

    #[test]
    fn checkpoints_overlap_later_writes_and_cover_exactly_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(2 * 1024 * 1024);
        let spec = spec_of(&data);
        let mut pipe = PipedWriter::start(SlotWriter::open(&slot, spec, 0).unwrap());
        let chunks: Vec<&[u8]> = data.chunks(64 * 1024).collect();
        let mut durable = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            pipe.write(Bytes::copy_from_slice(chunk)).unwrap();
            if let Some(r) = pipe.poll_checkpoint() {
                durable.push(r.unwrap());
            }
            if i % 8 == 7 {
                if let Some(previous) = pipe.begin_checkpoint().unwrap() {
                    durable.push(previous);
                }
            }
        }
        if let Some(r) = pipe.wait_checkpoint() {
            durable.push(r.unwrap());
        }
        // One per 8 chunks, each at the position where it was started, in order.
        let want: Vec<u64> = (1..=chunks.len() / 8)
            .map(|k| (k * 8 * 64 * 1024) as u64)
            .collect();
        assert_eq!(durable, want);
        assert!(pipe.poll_checkpoint().is_none());
        let v = pipe.into_inner().unwrap().finish().unwrap();
        assert_eq!(v.length(), data.len() as u64);
        assert_eq!(std::fs::read(&slot).unwrap(), data);
    }

    #[test]
    fn a_refused_chunk_surfaces_as_the_writers_error() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(64 * 1024);
        std::fs::write(&slot, vec![0u8; data.len()]).unwrap();
        let spec = ImageSpec {
            length: 1024,
            sha256: Sha256::digest(&data[..1024]).into(),
        };
        let mut pipe = PipedWriter::start(SlotWriter::open(&slot, spec, 0).unwrap());
        // Too long for the signed length: the worker refuses; the caller hears it at the
        // latest when it checkpoints or finishes.
        let mut err = None;
        for chunk in data.chunks(4096) {
            if let Err(e) = pipe.write(Bytes::copy_from_slice(chunk)) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => pipe.checkpoint().unwrap_err(),
        };
        assert!(matches!(err, SlotError::TooLong { .. }), "{err:?}");
    }

    #[test]
    fn a_failed_slot_write_surfaces_at_the_next_write_or_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(6 * 1024 * 1024);
        let spec = spec_of(&data);
        // The slot's own write thread fails from the second MiB on: behind two threads,
        // the error still reaches the caller, and no checkpoint covers the lost bytes.
        let writer = SlotWriter::open_failing_from(&slot, spec, 1024 * 1024).unwrap();
        let mut pipe = PipedWriter::start(writer);
        let mut durable = Vec::new();
        let mut err = None;
        for chunk in data.chunks(64 * 1024) {
            if let Err(e) = pipe.write(Bytes::copy_from_slice(chunk)) {
                err = Some(e);
                break;
            }
            if pipe.position().is_multiple_of(512 * 1024) {
                match pipe.checkpoint() {
                    Ok(at) => durable.push(at),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
        }
        let err = err.expect("the failed write is reported");
        assert!(
            matches!(
                &err,
                SlotError::Io {
                    op: "writing slot",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(durable, vec![512 * 1024, 1024 * 1024]);
        assert!(pipe.checkpoint().is_err());
    }
}
