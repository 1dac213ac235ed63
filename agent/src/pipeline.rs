//! Hashing and writing a download on a second thread, so that receiving (and decrypting)
//! the next chunk overlaps hashing and writing the last one. (The [`SlotWriter`] in turn
//! hands its device writes to a third thread, so hashing also overlaps the disk.) All
//! checks stay the [`Sink`]'s: this only moves it behind a bounded queue, in order, so a
//! checkpoint still covers exactly the bytes queued before it.
//!
//! The sink is the [`SlotWriter`] itself for a plain image, or a [`ZstdSink`] decoding a
//! compressed form into one ([`crate::decode`]).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::decode::{DecodeError, ZstdSink};
use crate::slots::{SlotError, SlotWriter, VerifiedImage};

/// Chunks in flight. Small on purpose: overlapping needs only one or two, and a chunk is
/// ~400 KiB on a fast link (hyper's receive buffer), so the queue bounds the agent's memory.
/// Measured on a 512 MiB install: 12 was no faster than 4, nor 4 than 2; 4 put the peak RSS
/// for a 1 GiB image within 0.3 MiB of the 16 MiB budget, 2 leaves ~1 MiB.
const QUEUE: usize = 2;

/// A durable place to resume a download from: the first `image` bytes of the image are in
/// the slot, and the download continues at byte `source` of what is fetched (the image
/// itself, where the two are equal, or its compressed form, at a frame boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// Image bytes durable in the slot.
    pub image: u64,
    /// Offset in the downloaded file where the rest starts.
    pub source: u64,
}

impl ResumePoint {
    /// The start.
    pub const ZERO: ResumePoint = ResumePoint {
        image: 0,
        source: 0,
    };
}

/// Where downloaded bytes go.
#[derive(Debug)]
pub enum Sink {
    /// The image itself: straight into the slot.
    Plain(SlotWriter),
    /// A compressed form: decoded into the slot.
    Zstd(ZstdSink),
}

/// A refused or failed download stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The slot writer refused the image bytes or failed to write them.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The compressed form was refused or is incomplete.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl From<SlotWriter> for Sink {
    fn from(w: SlotWriter) -> Self {
        Sink::Plain(w)
    }
}

impl Sink {
    /// Bytes of the downloaded file taken so far (including a resumed prefix).
    pub fn position(&self) -> u64 {
        match self {
            Sink::Plain(w) => w.position(),
            Sink::Zstd(z) => z.position(),
        }
    }

    /// Accepts the next downloaded bytes.
    #[inline]
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        match self {
            Sink::Plain(w) => Ok(w.write(chunk)?),
            Sink::Zstd(z) => z.write(chunk),
        }
    }

    /// Makes what was written durable and returns where to resume from.
    pub fn checkpoint(&mut self) -> Result<ResumePoint, SinkError> {
        match self {
            Sink::Plain(w) => {
                let at = w.checkpoint()?;
                Ok(ResumePoint {
                    image: at,
                    source: at,
                })
            }
            Sink::Zstd(z) => z.checkpoint(),
        }
    }

    /// Completes the image: every check of [`SlotWriter::finish`], and for a compressed
    /// form those of [`ZstdSink::finish`] first.
    pub fn finish(self) -> Result<VerifiedImage, SinkError> {
        match self {
            Sink::Plain(w) => Ok(w.finish()?),
            Sink::Zstd(z) => z.finish(),
        }
    }
}

enum Msg {
    Data(Bytes),
    Checkpoint(SyncSender<Result<ResumePoint, SinkError>>),
}

/// A [`Sink`] running on its own thread.
pub struct PipedWriter {
    tx: Option<SyncSender<Msg>>,
    worker: Option<JoinHandle<Result<Sink, SinkError>>>,
    queued: u64,
    /// The answer to a checkpoint started with [`PipedWriter::begin_checkpoint`].
    pending: Option<Receiver<Result<ResumePoint, SinkError>>>,
}

/// The worker thread died without saying why (it panicked).
fn worker_lost() -> SinkError {
    SinkError::Slot(SlotError::Io {
        op: "slot writer thread",
        path: std::path::PathBuf::new(),
        source: std::io::Error::other("the slot writer thread stopped unexpectedly"),
    })
}

fn run(mut sink: Sink, rx: Receiver<Msg>) -> Result<Sink, SinkError> {
    for msg in rx {
        match msg {
            Msg::Data(chunk) => sink.write(&chunk)?,
            // A failed checkpoint is reported to the caller, which then stops.
            Msg::Checkpoint(reply) => {
                let _ = reply.send(sink.checkpoint());
            }
        }
    }
    Ok(sink)
}

impl PipedWriter {
    /// Moves `sink` to a new thread.
    pub fn start(sink: impl Into<Sink>) -> Self {
        let sink = sink.into();
        let queued = sink.position();
        let (tx, rx) = sync_channel(QUEUE);
        let worker = std::thread::spawn(move || run(sink, rx));
        PipedWriter {
            tx: Some(tx),
            worker: Some(worker),
            queued,
            pending: None,
        }
    }

    /// Bytes of the downloaded file handed over so far (taken, or queued to be).
    pub fn position(&self) -> u64 {
        self.queued
    }

    /// The worker's error, once it stopped on one.
    fn failure(&mut self) -> SinkError {
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => worker_lost(),
        }
    }

    /// Queues a chunk (blocks while the queue is full: back-pressure on the download).
    pub fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
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
    /// download goes on while the worker syncs. Collect the resume point with
    /// [`PipedWriter::poll_checkpoint`] or [`PipedWriter::wait_checkpoint`] (a checkpoint
    /// still pending is waited for first, so at most one is in flight).
    pub fn begin_checkpoint(&mut self) -> Result<Option<ResumePoint>, SinkError> {
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

    /// The resume point made durable by the pending checkpoint, if it has completed.
    pub fn poll_checkpoint(&mut self) -> Option<Result<ResumePoint, SinkError>> {
        let result = match self.pending.as_ref()?.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(self.failure()),
        };
        self.pending = None;
        Some(result)
    }

    /// Waits for the pending checkpoint, if any, and returns its resume point.
    pub fn wait_checkpoint(&mut self) -> Option<Result<ResumePoint, SinkError>> {
        let reply = self.pending.take()?;
        Some(match reply.recv() {
            Ok(r) => r,
            Err(_) => Err(self.failure()),
        })
    }

    /// Waits until everything queued is taken, then makes it durable; returns the resume
    /// point (see [`Sink::checkpoint`]).
    pub fn checkpoint(&mut self) -> Result<ResumePoint, SinkError> {
        self.begin_checkpoint()?;
        match self.wait_checkpoint() {
            Some(r) => r,
            None => Err(self.failure()),
        }
    }

    /// Waits for the queue to drain and gives the sink back (to `finish` it).
    pub fn into_inner(mut self) -> Result<Sink, SinkError> {
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
                let at = 101 * 16 * 1024;
                let want = ResumePoint {
                    image: at,
                    source: at,
                };
                assert_eq!(pipe.checkpoint().unwrap(), want);
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
                durable.push(r.unwrap().image);
            }
            if i % 8 == 7 {
                if let Some(previous) = pipe.begin_checkpoint().unwrap() {
                    durable.push(previous.image);
                }
            }
        }
        if let Some(r) = pipe.wait_checkpoint() {
            durable.push(r.unwrap().image);
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
        assert!(
            matches!(err, SinkError::Slot(SlotError::TooLong { .. })),
            "{err:?}"
        );
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
                    Ok(at) => durable.push(at.image),
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
                SinkError::Slot(SlotError::Io {
                    op: "writing slot",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(durable, vec![512 * 1024, 1024 * 1024]);
        assert!(pipe.checkpoint().is_err());
    }
}
