//! Decoding a release's zstd-compressed form on its way into the slot.
//!
//! A release may carry a compressed form of its image
//! ([`ota_common::release::CompressedForm`]): a sequence of independent zstd frames. The
//! [`ZstdSink`] sits between the network chunks and the [`SlotWriter`] on the pipeline's
//! worker thread ([`crate::pipeline`]) and decodes in push mode, in constant memory: a fixed
//! output buffer, and a decoder whose window is bounded by
//! [`ota_common::release::ZSTD_WINDOW_LOG_MAX`] (a frame that needs more is refused).
//!
//! What goes into the slot is checked exactly as for the plain image, by the
//! [`SlotWriter`]: nothing past the signed image length (so a decompression bomb stops at
//! the image length), and length and SHA-256 at the end. The sink adds the compressed
//! file's own bound: not a byte past its signed length, and all of them by the end.
//!
//! The compressed file's SHA-256 is deliberately not checked: what is installed is covered
//! by the signed image hash, a compressed file that decodes to the right image is harmless
//! whatever its bytes, a resumed download could not check it anyway (the agent keeps no
//! hasher state across runs), and hashing it would add CPU on the device for no protection.
//!
//! Resuming: libzstd reports the end of each frame (its `run` returns 0 once a frame is
//! decoded and flushed). There the image offset and the compressed offset match, and a new
//! decoder can start from the next frame. A checkpoint reports the last such boundary
//! that is durable in the slot ([`crate::pipeline::ResumePoint`]).

use std::collections::VecDeque;
use std::io;

use ota_common::release::ZSTD_WINDOW_LOG_MAX;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use crate::pipeline::{ResumePoint, SinkError};
use crate::slots::{SlotWriter, VerifiedImage};

/// Decoded bytes handed to the slot writer per decoder step. The writer copies them into
/// its own buffer, so this only bounds one step's output.
const OUT_BUF: usize = 256 * 1024;

/// Frame boundaries remembered for the next checkpoint to choose from. A checkpoint under
/// O_DIRECT may leave the last partial block (< 4096 bytes) unsynced, so the newest
/// boundary is not always durable; with frames of megabytes the one before it is.
const RECENT: usize = 8;

/// Bounds on the decoder's steps without any progress before the stream is called corrupt
/// (libzstd reports that itself; this keeps the worker from spinning whatever happens).
const STALLS: u32 = 16;

/// A refused or incomplete compressed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The decoder could not be set up (allocation failed).
    #[error("setting up the zstd decoder for {file}")]
    Setup {
        /// The compressed file (below `targets/`).
        file: String,
        /// The libzstd error.
        source: io::Error,
    },
    /// More compressed bytes than signed.
    #[error(
        "compressed image {file} is longer than signed: {offered} bytes offered, {expected} expected"
    )]
    TooLong {
        /// The compressed file.
        file: String,
        /// The signed compressed length.
        expected: u64,
        /// The length the stream would have reached.
        offered: u64,
    },
    /// libzstd refused the stream (corrupt data, a frame needing a larger window than
    /// allowed, a frame whose content size is wrong), or the signed bytes end inside a
    /// frame or decode to less than the image.
    #[error("compressed image {file} is corrupt at compressed byte {offset}: {reason}")]
    Corrupt {
        /// The compressed file.
        file: String,
        /// Compressed bytes consumed when it was noticed.
        offset: u64,
        /// What libzstd (or the length check) said.
        reason: String,
    },
    /// The stream ended before the signed compressed length: a cut download, resumed later.
    #[error(
        "compressed image {file} is shorter than signed: {received} bytes received, {expected} expected"
    )]
    Short {
        /// The compressed file.
        file: String,
        /// The signed compressed length.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
}

/// Decodes a compressed form into a [`SlotWriter`]. See the module docs.
pub struct ZstdSink {
    writer: SlotWriter,
    decoder: Decoder<'static>,
    out: Box<[u8]>,
    /// The compressed file, for errors.
    file: String,
    /// Its signed length.
    length: u64,
    /// Compressed bytes received (and consumed by the decoder), from the file's start.
    received: u64,
    /// The decoder is inside a frame: its last step did not end one.
    in_frame: bool,
    /// Where this run started: always a boundary, and durable.
    origin: ResumePoint,
    /// The newest boundary dropped from `recent`.
    settled: ResumePoint,
    /// The newest boundaries, oldest first.
    recent: VecDeque<ResumePoint>,
}

impl std::fmt::Debug for ZstdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdSink")
            .field("file", &self.file)
            .field("length", &self.length)
            .field("received", &self.received)
            .field("image", &self.writer.position())
            .finish_non_exhaustive()
    }
}

impl ZstdSink {
    /// Decodes the compressed file `file` (signed length `length`) into `writer`, from
    /// the frame boundary where the writer stands: `source_offset` is where the next frame
    /// starts in the compressed file (0 for a fresh start).
    pub fn new(
        writer: SlotWriter,
        file: String,
        length: u64,
        source_offset: u64,
    ) -> Result<Self, DecodeError> {
        if source_offset > length {
            return Err(DecodeError::TooLong {
                file,
                expected: length,
                offered: source_offset,
            });
        }
        let setup = |file: &str| {
            let file = file.to_string();
            move |source| DecodeError::Setup { file, source }
        };
        let mut decoder = Decoder::new().map_err(setup(&file))?;
        decoder
            .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(setup(&file))?;
        let origin = ResumePoint {
            image: writer.position(),
            source: source_offset,
        };
        Ok(ZstdSink {
            writer,
            decoder,
            out: vec![0u8; OUT_BUF].into_boxed_slice(),
            file,
            length,
            received: source_offset,
            in_frame: false,
            origin,
            settled: origin,
            recent: VecDeque::with_capacity(RECENT + 1),
        })
    }

    /// Compressed bytes received so far, from the file's start.
    pub fn position(&self) -> u64 {
        self.received
    }

    /// Image bytes decoded into the writer so far.
    pub fn image_position(&self) -> u64 {
        self.writer.position()
    }

    /// Decodes the next compressed bytes into the slot. Refuses bytes past the signed
    /// compressed length before decoding any of them.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let offered = self.received.saturating_add(chunk.len() as u64);
        if offered > self.length {
            return Err(DecodeError::TooLong {
                file: self.file.clone(),
                expected: self.length,
                offered,
            }
            .into());
        }
        let start = self.received;
        let mut input = InBuffer::around(chunk);
        let mut stalls = 0;
        loop {
            let before = input.pos();
            let mut output = OutBuffer::around(&mut self.out[..]);
            let hint = match self.decoder.run(&mut input, &mut output) {
                Ok(h) => h,
                Err(e) => return Err(self.corrupt(start + input.pos() as u64, e.to_string())),
            };
            let produced = output.pos();
            if produced > 0 {
                // The writer refuses output past the image length (decompression bomb).
                self.writer.write(&self.out[..produced])?;
            }
            self.in_frame = hint != 0;
            if hint == 0 {
                // A frame is decoded and all its output is in the writer: a boundary.
                self.boundary(ResumePoint {
                    image: self.writer.position(),
                    source: start + input.pos() as u64,
                });
            }
            let more_input = input.pos() < chunk.len();
            // A full output buffer may leave decoded bytes inside libzstd; a finished
            // frame leaves none.
            let more_output = hint != 0 && produced == self.out.len();
            if !more_input && !more_output {
                break;
            }
            if produced == 0 && input.pos() == before {
                stalls += 1;
                if stalls > STALLS {
                    return Err(self.corrupt(
                        start + input.pos() as u64,
                        "the decoder makes no progress".into(),
                    ));
                }
            } else {
                stalls = 0;
            }
        }
        self.received = offered;
        Ok(())
    }

    /// Syncs the slot ([`SlotWriter::checkpoint`]) and returns the newest frame boundary
    /// within what is durable: where a new decoder can resume.
    pub fn checkpoint(&mut self) -> Result<ResumePoint, SinkError> {
        let durable = self.writer.checkpoint()?;
        Ok(self.resume_point(durable))
    }

    /// Checks that the whole signed compressed file was decoded, then finishes the image
    /// ([`SlotWriter::finish`]: length, sync, SHA-256).
    pub fn finish(self) -> Result<VerifiedImage, SinkError> {
        if self.received < self.length {
            return Err(DecodeError::Short {
                file: self.file,
                expected: self.length,
                received: self.received,
            }
            .into());
        }
        if self.in_frame {
            return Err(self.corrupt(self.received, "the file ends inside a frame".into()));
        }
        let expected = self.writer.position() + self.writer.remaining();
        if self.writer.remaining() > 0 {
            let reason = format!(
                "it decodes to {} bytes, the image has {expected}",
                self.writer.position()
            );
            return Err(self.corrupt(self.received, reason));
        }
        Ok(self.writer.finish()?)
    }

    fn corrupt(&self, offset: u64, reason: String) -> SinkError {
        DecodeError::Corrupt {
            file: self.file.clone(),
            offset,
            reason,
        }
        .into()
    }

    fn boundary(&mut self, at: ResumePoint) {
        // Empty frames repeat an image offset: the later boundary skips more input.
        if let Some(last) = self.recent.back_mut() {
            if last.image == at.image {
                *last = at;
                return;
            }
        }
        self.recent.push_back(at);
        if self.recent.len() > RECENT {
            if let Some(old) = self.recent.pop_front() {
                self.settled = old;
            }
        }
    }

    /// The newest boundary at or before `durable` image bytes. Frames shorter than the
    /// unsynced tail can push every remembered boundary past it: then the run's start,
    /// which is always durable (only slower to resume from).
    fn resume_point(&self, durable: u64) -> ResumePoint {
        self.recent
            .iter()
            .rev()
            .chain(std::iter::once(&self.settled))
            .find(|b| b.image <= durable)
            .copied()
            .unwrap_or(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{PipedWriter, Sink};
    use crate::slots::{ImageSpec, SlotError, SlotOptions};
    use bytes::Bytes;
    use sha2::{Digest, Sha256};
    use std::path::Path;

    const MIB: usize = 1024 * 1024;

    fn spec(data: &[u8]) -> ImageSpec {
        ImageSpec {
            length: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    /// Compressible, but only to about half: random bytes of 4 bits (xorshift, fixed seed).
    fn image(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0x0f) as u8
            })
            .collect()
    }

    /// One independent frame (with its content size) per `frame` bytes of `data`, as the
    /// publisher writes them; returns the file and the (image, compressed) frame ends.
    fn compress(data: &[u8], frame: usize) -> (Vec<u8>, Vec<ResumePoint>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let mut image = 0;
        for part in data.chunks(frame) {
            out.extend_from_slice(&zstd::bulk::compress(part, 3).unwrap());
            image += part.len();
            ends.push(ResumePoint {
                image: image as u64,
                source: out.len() as u64,
            });
        }
        (out, ends)
    }

    fn sink(slot: &Path, data: &[u8], file: &[u8], at: ResumePoint) -> ZstdSink {
        // Buffered slot writes: a checkpoint covers every accepted byte, so the tests can
        // say exactly which boundary it lands on.
        let options = SlotOptions::direct_io(false);
        let w = SlotWriter::open_with(slot, spec(data), at.image, options).unwrap();
        ZstdSink::new(w, "fw.img.zst".into(), file.len() as u64, at.source).unwrap()
    }

    /// Feeds `file` in uneven, network-like chunks.
    fn feed(s: &mut ZstdSink, file: &[u8]) -> Result<(), SinkError> {
        let sizes = [1usize, 7, 65536, 300_001, 4096];
        let mut rest = file;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                return Ok(());
            }
            let (now, tail) = rest.split_at((*size).min(rest.len()));
            s.write(now)?;
            rest = tail;
        }
        Ok(())
    }

    const ZERO: ResumePoint = ResumePoint {
        image: 0,
        source: 0,
    };

    #[test]
    fn multi_frame_file_decodes_into_a_verified_slot() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(5 * MIB + 123);
        let (file, ends) = compress(&data, MIB);
        assert_eq!(ends.len(), 6);
        assert!(file.len() < data.len() * 3 / 4, "{}", file.len());
        let mut s = sink(&slot, &data, &file, ZERO);
        feed(&mut s, &file).unwrap();
        assert_eq!(s.position(), file.len() as u64);
        assert_eq!(s.image_position(), data.len() as u64);
        assert_eq!(s.recent.back().copied(), ends.last().copied());
        let v = s.finish().unwrap();
        assert_eq!(v.sha256(), spec(&data).sha256);
        assert_eq!(std::fs::read(&slot).unwrap(), data);
    }

    #[test]
    fn checkpoints_land_on_frame_boundaries_and_a_new_decoder_resumes_there() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(4 * MIB + 4000);
        let (file, ends) = compress(&data, MIB);
        let mut s = sink(&slot, &data, &file, ZERO);
        let mut points = Vec::new();
        for chunk in file.chunks(50_000) {
            s.write(chunk).unwrap();
            points.push(s.checkpoint().unwrap());
        }
        // Every checkpoint is the start or a frame end, the newest one received.
        for (i, p) in points.iter().enumerate() {
            let received = ((i + 1) * 50_000).min(file.len()) as u64;
            let want = ends
                .iter()
                .rev()
                .find(|e| e.source <= received)
                .copied()
                .unwrap_or(ZERO);
            assert_eq!(*p, want, "checkpoint {i}");
        }
        let at = ends[1];
        assert!(points.contains(&at));
        // "Power cut" after the second frame: the slot's tail past it is garbage.
        drop(s);
        let mut bytes = std::fs::read(&slot).unwrap();
        bytes.truncate(at.image as usize + 1000);
        bytes[at.image as usize..].fill(0xee);
        std::fs::write(&slot, bytes).unwrap();

        // A fresh decoder from the compressed offset (as an HTTP Range would deliver).
        let mut s = sink(&slot, &data, &file, at);
        assert_eq!(s.position(), at.source);
        assert_eq!(s.checkpoint().unwrap(), at, "nothing new yet: the start");
        feed(&mut s, &file[at.source as usize..]).unwrap();
        s.finish().unwrap();
        assert_eq!(std::fs::read(&slot).unwrap(), data);
    }

    #[test]
    fn a_single_frame_file_has_no_boundary_before_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(3 * MIB);
        let (file, _) = compress(&data, data.len());
        let mut s = sink(&slot, &data, &file, ZERO);
        s.write(&file[..file.len() - 1]).unwrap();
        assert!(s.image_position() > 0);
        assert_eq!(s.checkpoint().unwrap(), ZERO);
        s.write(&file[file.len() - 1..]).unwrap();
        let end = ResumePoint {
            image: data.len() as u64,
            source: file.len() as u64,
        };
        assert_eq!(s.checkpoint().unwrap(), end);
        s.finish().unwrap();
    }

    #[test]
    fn a_checkpoint_short_of_the_newest_boundary_reports_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(2 * MIB);
        let (file, ends) = compress(&data, MIB);
        let mut s = sink(&slot, &data, &file, ZERO);
        feed(&mut s, &file).unwrap();
        // As if O_DIRECT had left the image's last bytes unsynced.
        assert_eq!(s.resume_point(data.len() as u64 - 1), ends[0]);
        assert_eq!(s.resume_point(ends[0].image - 1), ZERO);
        // Tiny frames push old boundaries out of `recent`: the answer stays durable.
        let (file, ends) = compress(&data[..4000], 100);
        let mut s = sink(&slot, &data[..4000], &file, ZERO);
        feed(&mut s, &file).unwrap();
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.resume_point(3999), ends[ends.len() - 2]);
        assert_eq!(s.resume_point(3250), ends[ends.len() - RECENT - 1]);
        assert_eq!(s.resume_point(3000), ZERO);
    }

    #[test]
    fn refuses_compressed_bytes_past_the_signed_length() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(MIB);
        let (file, _) = compress(&data, MIB / 4);
        let w = SlotWriter::open(&slot, spec(&data), 0).unwrap();
        let signed = file.len() as u64 - 10;
        let mut s = ZstdSink::new(w, "f.zst".into(), signed, 0).unwrap();
        s.write(&file[..100]).unwrap();
        let err = s.write(&file[100..]).unwrap_err();
        assert!(
            matches!(
                err,
                SinkError::Decode(DecodeError::TooLong { expected, offered, .. })
                    if expected == signed && offered == file.len() as u64
            ),
            "{err:?}"
        );
        // Nothing of the refused chunk was decoded.
        assert_eq!(s.position(), 100);
    }

    #[test]
    fn refuses_output_past_the_image_length() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        // A bomb: 64 MiB of zeros in a few KiB, offered for a 1 MiB image.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 * MIB], 19).unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let data = vec![0u8; MIB];
        let mut s = sink(&slot, &data, &bomb, ZERO);
        let err = feed(&mut s, &bomb).unwrap_err();
        assert!(
            matches!(
                &err,
                SinkError::Slot(SlotError::TooLong { expected, .. }) if *expected == MIB as u64
            ),
            "{err:?}"
        );
        // The writer stopped at the image length; the slot holds no more than that.
        assert!(s.image_position() <= MIB as u64);
        assert!(std::fs::metadata(&slot).unwrap().len() <= MIB as u64);
    }

    #[test]
    fn refuses_a_corrupt_frame() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(3 * MIB);
        let (file, ends) = compress(&data, MIB);
        // The second frame's header is damaged: libzstd refuses it, and the refusal names
        // the file and where it happened.
        let mut bad = file.clone();
        bad[ends[0].source as usize] ^= 0x55;
        let mut s = sink(&slot, &data, &bad, ZERO);
        let err = feed(&mut s, &bad).unwrap_err();
        let SinkError::Decode(DecodeError::Corrupt { offset, .. }) = &err else {
            panic!("{err:?}");
        };
        assert!((ends[0].source..ends[1].source).contains(offset), "{err}");
        assert!(err.to_string().contains("fw.img.zst"), "{err}");
        assert_eq!(s.image_position(), ends[0].image);
        // A byte flipped inside a frame's compressed blocks: libzstd refuses it, or (in
        // a literal, without a frame checksum) it decodes to other bytes that the image
        // hash refuses. Either way nothing is installed.
        let mut bad = file.clone();
        bad[(ends[0].source + (ends[1].source - ends[0].source) / 2) as usize] ^= 0x55;
        let mut s = sink(&slot, &data, &bad, ZERO);
        let err = match feed(&mut s, &bad) {
            Ok(()) => s.finish().unwrap_err(),
            Err(e) => e,
        };
        assert!(
            matches!(
                err,
                SinkError::Decode(DecodeError::Corrupt { .. })
                    | SinkError::Slot(SlotError::HashMismatch { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_a_frame_that_needs_a_larger_window() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(MIB);
        // No pledged size: the frame header keeps the 16 MiB window asked for.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(24))
            .unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let file = enc.finish().unwrap();
        // The same frame decodes with a large enough window.
        assert_eq!(zstd::stream::decode_all(&file[..]).unwrap(), data);
        let mut s = sink(&slot, &data, &file, ZERO);
        let err = feed(&mut s, &file).unwrap_err();
        assert!(
            matches!(&err, SinkError::Decode(DecodeError::Corrupt { reason, .. }) if reason.contains("memory")),
            "{err:?}"
        );
        assert_eq!(s.image_position(), 0);
    }

    #[test]
    fn a_cut_stream_is_short_and_a_cut_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(2 * MIB);
        let (file, ends) = compress(&data, MIB);
        // The download stops mid-frame: short, keep and retry.
        let mut s = sink(&slot, &data, &file, ZERO);
        feed(&mut s, &file[..ends[0].source as usize + 10]).unwrap();
        let err = s.finish().unwrap_err();
        assert!(
            matches!(err, SinkError::Decode(DecodeError::Short { .. })),
            "{err:?}"
        );
        // The signed file itself ends mid-frame, or decodes short of the image: corrupt.
        let cut = &file[..file.len() - 3];
        let mut s = sink(&slot, &data, cut, ZERO);
        feed(&mut s, cut).unwrap();
        let err = s.finish().unwrap_err();
        assert!(
            matches!(&err, SinkError::Decode(DecodeError::Corrupt { reason, .. }) if reason.contains("inside a frame")),
            "{err:?}"
        );
        let first = &file[..ends[0].source as usize];
        let mut s = sink(&slot, &data, first, ZERO);
        feed(&mut s, first).unwrap();
        let err = s.finish().unwrap_err();
        assert!(
            matches!(&err, SinkError::Decode(DecodeError::Corrupt { reason, .. }) if reason.contains("decodes to")),
            "{err:?}"
        );
    }

    #[test]
    fn a_compressed_form_of_other_bytes_fails_the_image_hash() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(MIB);
        let mut other = data.clone();
        other[1234] ^= 1;
        let (file, _) = compress(&other, MIB / 2);
        let mut s = sink(&slot, &data, &file, ZERO);
        feed(&mut s, &file).unwrap();
        let err = s.finish().unwrap_err();
        assert!(
            matches!(err, SinkError::Slot(SlotError::HashMismatch { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn through_the_pipeline_with_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let data = image(6 * MIB + 5);
        let (file, ends) = compress(&data, MIB);
        // Default options: O_DIRECT where the filesystem allows it.
        let w = SlotWriter::open(&slot, spec(&data), 0).unwrap();
        let s = ZstdSink::new(w, "f.zst".into(), file.len() as u64, 0).unwrap();
        let mut pipe = PipedWriter::start(Sink::Zstd(s));
        let mut points = Vec::new();
        for (i, chunk) in file.chunks(64 * 1024).enumerate() {
            pipe.write(Bytes::copy_from_slice(chunk)).unwrap();
            if i % 3 == 2 {
                points.push(pipe.checkpoint().unwrap());
            }
        }
        assert_eq!(pipe.position(), file.len() as u64);
        assert!(points.iter().all(|p| *p == ZERO || ends.contains(p)));
        assert!(points.iter().filter(|p| **p != ZERO).count() >= 4);
        let v = pipe.into_inner().unwrap().finish().unwrap();
        assert_eq!(v.length(), data.len() as u64);
        assert_eq!(std::fs::read(&slot).unwrap(), data);
    }
}
