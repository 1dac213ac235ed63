//! Compressed forms of images: making them ([`compress_frames`]) and checking that one
//! decodes to its image within the bounds devices decode with ([`check_compressed_form`]).
//!
//! The CLI (`ota publish --zstd`), `ota-keys add-target --zstd` and the server (which checks
//! every compressed form before it is signed or published) share this one implementation.
//! Both directions stream in constant memory whatever the image size: compression holds
//! one frame's input and output, checking one read buffer and one output buffer.

use std::io::{self, Read, Write};
use std::ops::RangeInclusive;

use ota_common::release::{CompressedForm, ZSTD_WINDOW_LOG_MAX};
use sha2::{Digest, Sha256};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::CParameter;

/// Image bytes per zstd frame: 8 MiB, the largest window devices decode with, so no frame
/// can refer back further than a device keeps.
pub const FRAME_INPUT_BYTES: usize = 1 << ZSTD_WINDOW_LOG_MAX;

/// Compression levels offered (zstd's "ultra" levels above 19 want windows beyond the cap).
pub const LEVELS: RangeInclusive<i32> = 1..=19;

/// The default level: most of the gain of the high levels at a fraction of their time.
pub const DEFAULT_LEVEL: i32 = 9;

/// Read size when checking.
const CHECK_BUF: usize = 128 * 1024;

/// libzstd's text for `ZSTD_error_frameParameter_windowTooLarge`, the one decoder error
/// that is told apart (the `zstd` crate turns error codes into `io::Error` messages).
const WINDOW_TOO_LARGE: &str = "Frame requires too much memory for decoding";

/// What [`compress_frames`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compressed {
    /// Length of the compressed output.
    pub length: u64,
    /// SHA-256 of the compressed output.
    pub sha256: [u8; 32],
    /// Bytes of input read (the image's length).
    pub input_length: u64,
    /// zstd frames written.
    pub frames: u64,
}

impl Compressed {
    /// The form as a target's `custom.zstd` names it.
    pub fn form(&self) -> CompressedForm {
        CompressedForm {
            length: self.length,
            sha256: hex::encode(self.sha256),
        }
    }
}

/// Why compressing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressError {
    /// The level is outside [`LEVELS`].
    #[error("zstd level {level} is outside {}..={}", LEVELS.start(), LEVELS.end())]
    Level {
        /// The level asked for.
        level: i32,
    },
    /// Reading the image failed.
    #[error("reading the image after {offset} bytes: {source}")]
    Read {
        /// Image bytes read before the failure.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing the compressed output failed.
    #[error("writing the compressed output after {offset} bytes: {source}")]
    Write {
        /// Compressed bytes written before the failure.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// libzstd refused a parameter or failed to compress.
    #[error("zstd: {op}: {source}")]
    Zstd {
        /// What was being done.
        op: &'static str,
        /// libzstd's error.
        #[source]
        source: io::Error,
    },
}

/// Compresses `src` into `dst` as a sequence of independent zstd frames, one per
/// [`FRAME_INPUT_BYTES`] (8 MiB) of input, at `level` (within [`LEVELS`]).
///
/// Each frame records its content size in its header, carries a content checksum, and
/// needs a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`] bytes (the level's window, never
/// more than the frame's input). Frames share no history, so
/// frame boundaries are where a device can resume an interrupted download: it restarts
/// decoding at the start of the first incomplete frame, knowing how many image bytes the
/// complete ones produced. An empty input gives one empty frame, so the output is always a
/// valid zstd stream. Memory is constant: one frame's input and output, whatever the image.
pub fn compress_frames(
    mut src: impl Read,
    mut dst: impl Write,
    level: i32,
) -> Result<Compressed, CompressError> {
    if !LEVELS.contains(&level) {
        return Err(CompressError::Level { level });
    }
    let zstd = |op| move |source| CompressError::Zstd { op, source };
    let mut compressor =
        zstd::bulk::Compressor::new(level).map_err(zstd("create the compressor"))?;
    // No window log is set: each frame's size is known in advance and at most
    // FRAME_INPUT_BYTES, and libzstd never uses a window larger than a known input, so the
    // level's own window applies (4 MiB at the default level 9, 2 MiB at 3), capped at 8 MiB.
    for (param, op) in [
        (
            CParameter::ContentSizeFlag(true),
            "set the content size flag",
        ),
        (CParameter::ChecksumFlag(true), "set the checksum flag"),
    ] {
        compressor.set_parameter(param).map_err(zstd(op))?;
    }
    let mut input = vec![0u8; FRAME_INPUT_BYTES];
    let mut output = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME_INPUT_BYTES));
    let mut hasher = Sha256::new();
    let mut out = Compressed {
        length: 0,
        sha256: [0; 32],
        input_length: 0,
        frames: 0,
    };
    loop {
        let n = read_full(&mut src, &mut input).map_err(|source| CompressError::Read {
            offset: out.input_length,
            source,
        })?;
        if n == 0 && out.frames > 0 {
            break;
        }
        output.clear();
        compressor
            .compress_to_buffer(&input[..n], &mut output)
            .map_err(zstd("compress a frame"))?;
        dst.write_all(&output)
            .map_err(|source| CompressError::Write {
                offset: out.length,
                source,
            })?;
        hasher.update(&output);
        out.length += output.len() as u64;
        out.input_length += n as u64;
        out.frames += 1;
        if n < input.len() {
            break;
        }
    }
    dst.flush().map_err(|source| CompressError::Write {
        offset: out.length,
        source,
    })?;
    out.sha256 = hasher.finalize().into();
    Ok(out)
}

/// Fills `buf` from `r` unless the input ends first; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Why a compressed form does not match what it claims. Each variant names the failed check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressedFormError {
    /// Reading the compressed file failed (a local I/O problem, not the form's fault).
    #[error("reading the compressed form after {offset} bytes: {source}")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// libzstd could not be set up (not the form's fault).
    #[error("setting up the zstd decoder: {0}")]
    Decoder(#[source] io::Error),
    /// The file is longer than the form's signed length (reading stopped there).
    #[error("the compressed form is longer than its signed length {expected}")]
    CompressedTooLong {
        /// The form's length.
        expected: u64,
    },
    /// The file's length is not the form's.
    #[error("the compressed form is {actual} bytes, its signed length is {expected}")]
    CompressedLength {
        /// The form's length.
        expected: u64,
        /// The file's.
        actual: u64,
    },
    /// The file's SHA-256 is not the form's.
    #[error("the compressed form has sha256 {actual}, its signed sha256 is {expected}")]
    CompressedSha256 {
        /// The form's.
        expected: String,
        /// The file's.
        actual: String,
    },
    /// A frame needs a larger window than devices decode with.
    #[error(
        "a zstd frame at compressed byte {offset} needs a window larger than 2^{max_log} bytes, \
         the most devices decode with (compress with --zstd, which makes 8 MiB frames)"
    )]
    WindowTooLarge {
        /// Where the decoder was in the compressed file.
        offset: u64,
        /// [`ZSTD_WINDOW_LOG_MAX`].
        max_log: u32,
    },
    /// Not zstd, or damaged.
    #[error("not a valid zstd stream at compressed byte {offset}: {reason}")]
    Corrupt {
        /// Where the decoder was in the compressed file.
        offset: u64,
        /// libzstd's message.
        reason: String,
    },
    /// The file holds no frame at all.
    #[error("the compressed form is empty: it holds no zstd frame")]
    NoFrame,
    /// The file ends inside a frame.
    #[error("the compressed form ends inside a zstd frame (truncated at {length} bytes)")]
    Truncated {
        /// Bytes read.
        length: u64,
    },
    /// Decoding produced more than the image's length (decoding stopped one byte past it).
    #[error("the compressed form decodes to more than the image's {image_length} bytes")]
    DecodesTooLong {
        /// The image's length.
        image_length: u64,
    },
    /// Decoding produced fewer bytes than the image's length.
    #[error("the compressed form decodes to {actual} bytes, the image is {expected}")]
    DecodedLength {
        /// The image's length.
        expected: u64,
        /// What decoding produced.
        actual: u64,
    },
    /// Decoding produced other bytes than the image.
    #[error("the compressed form decodes to sha256 {actual}, the image's sha256 is {expected}")]
    DecodedSha256 {
        /// The image's.
        expected: String,
        /// What decoding produced.
        actual: String,
    },
}

impl CompressedFormError {
    /// Whether the failure is local (reading, libzstd setup) rather than the form's fault.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Decoder(_))
    }
}

/// Checks that `compressed` is the file `form` names (length and SHA-256) and that it
/// decodes, within a window of 2^[`ZSTD_WINDOW_LOG_MAX`] bytes, to exactly the image of
/// `image_length` bytes and SHA-256 `image_sha256`.
///
/// Streaming and bomb-safe: decoded bytes are hashed and dropped as they come, and the
/// decoder is never given room for more than one byte past the image's length, so a small
/// stream that expands without bound is refused after `image_length + 1` bytes of output.
/// Reading stops as soon as the file exceeds the form's length.
pub fn check_compressed_form(
    mut compressed: impl Read,
    image_length: u64,
    image_sha256: &[u8; 32],
    form: &CompressedForm,
) -> Result<(), CompressedFormError> {
    let mut decoder = Decoder::new().map_err(CompressedFormError::Decoder)?;
    decoder
        .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
        .map_err(CompressedFormError::Decoder)?;
    let mut input = vec![0u8; CHECK_BUF];
    let mut output = vec![0u8; CHECK_BUF];
    let (mut read, mut produced, mut frames) = (0u64, 0u64, 0u64);
    let mut in_frame = false;
    let (mut c_hash, mut d_hash) = (Sha256::new(), Sha256::new());
    loop {
        let n =
            read_some(&mut compressed, &mut input).map_err(|source| CompressedFormError::Read {
                offset: read,
                source,
            })?;
        if n == 0 {
            break;
        }
        let chunk_start = read;
        read += n as u64;
        if read > form.length {
            return Err(CompressedFormError::CompressedTooLong {
                expected: form.length,
            });
        }
        c_hash.update(&input[..n]);
        let mut src = InBuffer::around(&input[..n]);
        loop {
            // Room for at most one byte past the image: enough to see a bomb, never more.
            let room = usize::try_from((image_length - produced).saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(output.len());
            let before = src.pos();
            let mut dst = OutBuffer::around(&mut output[..room]);
            let hint = decoder
                .run(&mut src, &mut dst)
                .map_err(|e| decode_error(e, chunk_start + before as u64))?;
            let made = dst.pos();
            if src.pos() > before || made > 0 {
                in_frame = true;
            }
            produced += made as u64;
            if produced > image_length {
                return Err(CompressedFormError::DecodesTooLong { image_length });
            }
            d_hash.update(&output[..made]);
            if hint == 0 && in_frame {
                frames += 1;
                in_frame = false;
            }
            // Done with this chunk once it is consumed and the decoder had nothing more
            // to give (it did not fill the room it had).
            if src.pos() == n && made < room {
                break;
            }
        }
    }
    if read != form.length {
        return Err(CompressedFormError::CompressedLength {
            expected: form.length,
            actual: read,
        });
    }
    let c_sha = hex::encode(c_hash.finalize());
    if c_sha != form.sha256 {
        return Err(CompressedFormError::CompressedSha256 {
            expected: form.sha256.clone(),
            actual: c_sha,
        });
    }
    if in_frame {
        return Err(CompressedFormError::Truncated { length: read });
    }
    if frames == 0 {
        return Err(CompressedFormError::NoFrame);
    }
    if produced != image_length {
        return Err(CompressedFormError::DecodedLength {
            expected: image_length,
            actual: produced,
        });
    }
    let d_sha: [u8; 32] = d_hash.finalize().into();
    if &d_sha != image_sha256 {
        return Err(CompressedFormError::DecodedSha256 {
            expected: hex::encode(image_sha256),
            actual: hex::encode(d_sha),
        });
    }
    Ok(())
}

/// One read, retried on `Interrupted`.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn decode_error(e: io::Error, offset: u64) -> CompressedFormError {
    let reason = e.to_string();
    if reason.contains(WINDOW_TOO_LARGE) {
        CompressedFormError::WindowTooLarge {
            offset,
            max_log: ZSTD_WINDOW_LOG_MAX,
        }
    } else {
        CompressedFormError::Corrupt { offset, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that compress, but not to nothing (xorshift over a small
    /// alphabet, with runs).
    fn image(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = (x % 7) as usize + 1;
            let byte = b"abcdefgh"[(x >> 8) as usize % 8];
            out.extend(std::iter::repeat_n(byte, run.min(len - out.len())));
        }
        out
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    fn compress(data: &[u8], level: i32) -> (Vec<u8>, Compressed) {
        let mut out = Vec::new();
        let c = compress_frames(data, &mut out, level).unwrap();
        (out, c)
    }

    /// Frames in a stream, each with its declared content size.
    fn frames(mut stream: &[u8]) -> Vec<u64> {
        let mut sizes = Vec::new();
        while !stream.is_empty() {
            let size = zstd::zstd_safe::get_frame_content_size(stream)
                .unwrap()
                .expect("content size in every frame header");
            let len = zstd::zstd_safe::find_frame_compressed_size(stream).unwrap();
            sizes.push(size);
            stream = &stream[len..];
        }
        sizes
    }

    fn check(
        compressed: &[u8],
        image: &[u8],
        form: &CompressedForm,
    ) -> Result<(), CompressedFormError> {
        check_compressed_form(compressed, image.len() as u64, &sha(image), form)
    }

    #[test]
    fn round_trip_in_independent_8_mib_frames() {
        let data = image(20 * 1024 * 1024);
        let (out, c) = compress(&data, 3);
        assert_eq!(c.frames, 3);
        assert_eq!(c.input_length, data.len() as u64);
        assert_eq!(c.length, out.len() as u64);
        assert_eq!(c.sha256, sha(&out));
        assert!(c.length < data.len() as u64 / 2, "{} bytes", c.length);
        let mib8 = FRAME_INPUT_BYTES as u64;
        assert_eq!(frames(&out), [mib8, mib8, 4 * 1024 * 1024]);
        check(&out, &data, &c.form()).unwrap();
        // Each frame decodes alone: where a device resumes.
        let first = zstd::zstd_safe::find_frame_compressed_size(&out).unwrap();
        let second = zstd::stream::decode_all(&out[first..]).unwrap();
        assert!(second == data[FRAME_INPUT_BYTES..]);
        // The level's own window (2 MiB at level 3), not the 8 MiB cap: device memory.
        let decode_within = |log: u32| {
            let mut d = zstd::stream::read::Decoder::new(&out[..]).unwrap();
            d.window_log_max(log).unwrap();
            io::copy(&mut d, &mut io::sink())
        };
        assert_eq!(decode_within(21).unwrap(), data.len() as u64);
        assert!(decode_within(20).is_err());
    }

    #[test]
    fn small_and_empty_images_make_one_frame() {
        for len in [0usize, 1, 1000] {
            let data = image(len);
            let (out, c) = compress(&data, DEFAULT_LEVEL);
            assert_eq!(frames(&out), [len as u64], "{len}");
            check(&out, &data, &c.form()).unwrap();
        }
    }

    #[test]
    fn levels_outside_the_range_are_refused() {
        for level in [0, 20, -1] {
            let e = compress_frames(&b"x"[..], Vec::new(), level).unwrap_err();
            assert!(matches!(e, CompressError::Level { .. }), "{e}");
        }
    }

    #[test]
    fn each_mismatch_is_named() {
        let data = image(100_000);
        let (out, c) = compress(&data, 1);
        let form = c.form();

        let longer = CompressedForm {
            length: form.length + 1,
            ..form.clone()
        };
        assert!(matches!(
            check(&out, &data, &longer),
            Err(CompressedFormError::CompressedLength { expected, actual })
                if expected == form.length + 1 && actual == form.length
        ));
        let shorter = CompressedForm {
            length: form.length - 1,
            ..form.clone()
        };
        assert!(matches!(
            check(&out, &data, &shorter),
            Err(CompressedFormError::CompressedTooLong { .. })
        ));
        let other_sha = CompressedForm {
            sha256: "00".repeat(32),
            ..form.clone()
        };
        let e = check(&out, &data, &other_sha).unwrap_err();
        assert!(
            matches!(e, CompressedFormError::CompressedSha256 { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(&form.sha256), "{e}");

        // Decodes, but to another image.
        let mut other = data.clone();
        other[5000] ^= 1;
        let e = check(&out, &other, &form).unwrap_err();
        assert!(
            matches!(e, CompressedFormError::DecodedSha256 { .. }),
            "{e}"
        );
        let e = check_compressed_form(&out[..], data.len() as u64 + 10, &sha(&data), &form)
            .unwrap_err();
        assert!(matches!(
            e,
            CompressedFormError::DecodedLength { expected, actual }
                if expected == data.len() as u64 + 10 && actual == data.len() as u64
        ));

        // Not zstd at all.
        let garbage = image(5000);
        let g = CompressedForm {
            length: 5000,
            sha256: hex::encode(sha(&garbage)),
        };
        let e = check(&garbage, &data, &g).unwrap_err();
        assert!(
            matches!(e, CompressedFormError::Corrupt { offset: 0, .. }),
            "{e}"
        );
        assert!(!e.is_local());

        // Empty.
        let empty = CompressedForm {
            length: 0,
            sha256: hex::encode(sha(b"")),
        };
        assert!(matches!(
            check(b"", b"", &empty),
            Err(CompressedFormError::NoFrame)
        ));
    }

    #[test]
    fn truncated_and_trailing_bytes_are_refused() {
        let data = image(3 * 1024 * 1024);
        let (out, _) = compress(&data, 1);
        for cut in [out.len() - 1, out.len() / 2, 3] {
            let part = &out[..cut];
            let form = CompressedForm {
                length: cut as u64,
                sha256: hex::encode(sha(part)),
            };
            let e = check(part, &data, &form).unwrap_err();
            assert!(
                matches!(e, CompressedFormError::Truncated { length } if length == cut as u64),
                "{cut}: {e}"
            );
        }
        let mut extra = out.clone();
        extra.extend_from_slice(b"junk after the last frame");
        let form = CompressedForm {
            length: extra.len() as u64,
            sha256: hex::encode(sha(&extra)),
        };
        assert!(check(&extra, &data, &form).is_err());
    }

    #[test]
    fn a_window_beyond_8_mib_is_refused() {
        // One 9 MiB frame: its window (the whole frame) is beyond 2^23.
        let data = image(9 * 1024 * 1024);
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.set_parameter(CParameter::WindowLog(24)).unwrap();
        let out = c.compress(&data).unwrap();
        let form = CompressedForm {
            length: out.len() as u64,
            sha256: hex::encode(sha(&out)),
        };
        let e = check(&out, &data, &form).unwrap_err();
        assert!(
            matches!(
                e,
                CompressedFormError::WindowTooLarge {
                    offset: 0,
                    max_log: 23
                }
            ),
            "{e}"
        );
        // The same image in our frames passes.
        let (ok, c) = compress(&data, 1);
        check(&ok, &data, &c.form()).unwrap();
    }

    #[test]
    fn a_bomb_is_refused_without_buffering_its_output() {
        // One frame of 8 MiB of zeros is a few hundred bytes; repeated without end it is a
        // stream that decodes forever. Only the bound on output can stop the check.
        let zeros = vec![0u8; FRAME_INPUT_BYTES];
        let (frame, _) = compress(&zeros, 1);
        assert!(frame.len() < 4096, "{}", frame.len());

        /// The frame again and again, counting what the checker reads.
        struct Endless<'a> {
            frame: &'a [u8],
            pos: usize,
            read: u64,
        }
        impl Read for Endless<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let mut n = 0;
                while n < buf.len() {
                    let take = (self.frame.len() - self.pos).min(buf.len() - n);
                    buf[n..n + take].copy_from_slice(&self.frame[self.pos..self.pos + take]);
                    n += take;
                    self.pos = (self.pos + take) % self.frame.len();
                }
                self.read += n as u64;
                Ok(n)
            }
        }
        let mut reader = Endless {
            frame: &frame,
            pos: 0,
            read: 0,
        };
        let form = CompressedForm {
            length: u64::MAX,
            sha256: "00".repeat(32),
        };
        let small = vec![0u8; 1000];
        let e = check_compressed_form(&mut reader, 1000, &sha(&small), &form).unwrap_err();
        assert!(
            matches!(
                e,
                CompressedFormError::DecodesTooLong { image_length: 1000 }
            ),
            "{e}"
        );
        // Refused within the first read: the output was bounded as it was produced.
        assert_eq!(reader.read, CHECK_BUF as u64);
    }

    #[test]
    fn read_errors_are_local() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let form = CompressedForm {
            length: 1,
            sha256: "00".repeat(32),
        };
        let e = check_compressed_form(Failing, 1, &[0; 32], &form).unwrap_err();
        assert!(e.is_local(), "{e}");
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }
}
