//! Release images: the `custom` fields a target carries, hashing an image in one streaming
//! pass (compressing it in the same pass when asked), and copying it into the repository's
//! content-addressed `targets/` directory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ota_common::cjson;
use ota_common::release::ReleaseInfo;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};

use crate::compress::{compress_frames, Compressed};
use crate::durable::{self, AtomicFile, Overwrite};
use crate::error::{Error, Result};

/// A target's `custom` object: ota's release fields plus free-form extra fields.
#[derive(Clone, Debug)]
pub struct TargetCustom {
    /// Version, hardware ids, support period.
    pub release: ReleaseInfo,
    /// Further fields (they must not reuse the release fields' names).
    pub extra: Map<String, Value>,
}

impl TargetCustom {
    /// The `custom` value, checked to read back as the same release fields and to have a
    /// canonical form (no floats), so that signing cannot fail later.
    pub fn to_value(&self, name: &str) -> Result<Value> {
        let bad = |reason: String| Error::Target {
            name: name.into(),
            reason,
        };
        if self.release.hardware_ids.is_empty() {
            return Err(bad(
                "no hardware id: an image must name the boards it fits".into()
            ));
        }
        let mut obj = match serde_json::to_value(&self.release) {
            Ok(Value::Object(m)) => m,
            Ok(_) | Err(_) => {
                return Err(bad("release fields do not serialise to an object".into()))
            }
        };
        for (k, v) in &self.extra {
            if obj.contains_key(k) {
                return Err(bad(format!(
                    "custom field {k:?} conflicts with a release field"
                )));
            }
            obj.insert(k.clone(), v.clone());
        }
        let value = Value::Object(obj);
        cjson::to_canonical(&value).map_err(|e| bad(format!("custom fields: {e}")))?;
        ReleaseInfo::from_custom(name, &value).map_err(|e| bad(e.reason))?;
        Ok(value)
    }
}

/// An image to copy into `targets/` when the editor commits.
pub(crate) struct PendingImage {
    /// The file given by the user.
    pub(crate) src: PathBuf,
    /// Its content-addressed path in the repository.
    pub(crate) dest: PathBuf,
    /// The SHA-256 computed when it was added.
    pub(crate) sha256: String,
    /// Its compressed form, if one was made.
    pub(crate) compressed: Option<PendingCompressed>,
}

/// A compressed form, written to a temporary file beside its destination when the target
/// was added and placed there on commit (dropped uncommitted, the temporary file goes).
pub(crate) struct PendingCompressed {
    /// The temporary file.
    pub(crate) file: AtomicFile,
    /// Its content-addressed path in the repository.
    pub(crate) dest: PathBuf,
}

/// Length, SHA-256 and SHA-512 of an image, hex.
pub(crate) type ImageHashes = (u64, String, String);

/// Counts and hashes what passes through a reader.
struct HashingReader<R> {
    inner: R,
    length: u64,
    sha256: Sha256,
    sha512: Sha512,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }
}

/// Hashes an image and compresses it ([`compress_frames`] at `level`) in one streaming
/// pass into a temporary file in `dir`, so the form is made from exactly the bytes hashed.
pub(crate) fn hash_and_compress(
    path: &Path,
    dir: &Path,
    level: i32,
) -> Result<(ImageHashes, AtomicFile, Compressed)> {
    let f = File::open(path).map_err(|e| Error::io("open image", path, e))?;
    let mut reader = HashingReader {
        inner: f,
        length: 0,
        sha256: Sha256::new(),
        sha512: Sha512::new(),
    };
    let mut out = AtomicFile::create_in(dir, durable::PUBLIC)?;
    let compressed =
        compress_frames(&mut reader, &mut out, level).map_err(|source| Error::Compress {
            image: path.to_path_buf(),
            source,
        })?;
    let hashes = (
        reader.length,
        hex::encode(reader.sha256.finalize()),
        hex::encode(reader.sha512.finalize()),
    );
    Ok((hashes, out, compressed))
}

/// Places a compressed form at its content-addressed path. Returns false if it was already
/// there (same name, same content).
pub(crate) fn place_compressed(c: PendingCompressed) -> Result<bool> {
    if c.dest.exists() {
        return Ok(false);
    }
    c.file.commit(&c.dest, Overwrite::Refuse)?;
    Ok(true)
}

/// Length, SHA-256 and SHA-512 of a file, read in one streaming pass.
pub fn hash_file(path: &Path) -> Result<(u64, String, String)> {
    let mut f = File::open(path).map_err(|e| Error::io("open image", path, e))?;
    let (mut s256, mut s512, mut len) = (Sha256::new(), Sha512::new(), 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("read image", path, e))?;
        if n == 0 {
            break;
        }
        s256.update(&buf[..n]);
        s512.update(&buf[..n]);
        len += n as u64;
    }
    Ok((
        len,
        hex::encode(s256.finalize()),
        hex::encode(s512.finalize()),
    ))
}

/// Copies an image to its content-addressed path, re-hashing as it goes so that a file
/// changed since it was hashed is refused. Returns false if the image was already there.
pub(crate) fn copy_image(image: &PendingImage) -> Result<bool> {
    if image.dest.exists() {
        return Ok(false);
    }
    let dir = image
        .dest
        .parent()
        .ok_or_else(|| Error::Invalid("image path has no directory".into()))?;
    let mut src = File::open(&image.src).map_err(|e| Error::io("open image", &image.src, e))?;
    let mut out = AtomicFile::create_in(dir, durable::PUBLIC)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| Error::io("read image", &image.src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    if hex::encode(hasher.finalize()) != image.sha256 {
        return Err(Error::Target {
            name: image.src.display().to_string(),
            reason: "the image changed between hashing and copying".into(),
        });
    }
    out.commit(&image.dest, Overwrite::Refuse)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(extra: &[(&str, Value)], hw: &[&str]) -> TargetCustom {
        let release = ReleaseInfo::from_custom(
            "t",
            &serde_json::json!({"version": "1.0.0", "hardware_ids": hw}),
        )
        .unwrap();
        let extra = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        TargetCustom { release, extra }
    }

    #[test]
    fn custom_fields_merge_and_bad_ones_are_refused() {
        let v = custom(&[("channel", "beta".into())], &["hw"])
            .to_value("t")
            .unwrap();
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["channel"], "beta");
        assert!(v.get("support_until").is_none());
        for bad in [
            custom(&[], &[]),
            custom(&[("version", "9".into())], &["hw"]),
            custom(&[("ratio", serde_json::json!(0.5))], &["hw"]),
        ] {
            assert!(matches!(bad.to_value("t"), Err(Error::Target { .. })));
        }
    }

    #[test]
    fn hashes_stream_and_a_changed_image_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("img");
        std::fs::write(&src, b"abc").unwrap();
        let (len, sha256, sha512) = hash_file(&src).unwrap();
        assert_eq!(len, 3);
        assert_eq!(
            sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha512.starts_with("ddaf35a193617aba"));
        let dest = dir.path().join("targets/x.img");
        let pending = PendingImage {
            src: src.clone(),
            dest: dest.clone(),
            sha256,
            compressed: None,
        };
        std::fs::write(&src, b"abd").unwrap();
        assert!(matches!(copy_image(&pending), Err(Error::Target { .. })));
        assert!(!dest.exists());
        std::fs::write(&src, b"abc").unwrap();
        assert!(copy_image(&pending).unwrap());
        assert!(!copy_image(&pending).unwrap(), "already present");
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
    }

    #[test]
    fn hashing_and_compressing_agree_with_hashing_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("img");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let out_dir = dir.path().join("targets");
        let (hashes, file, c) = hash_and_compress(&src, &out_dir, 3).unwrap();
        assert_eq!(hashes, hash_file(&src).unwrap());
        let dest = out_dir.join("x.zst");
        let pending = PendingCompressed {
            file,
            dest: dest.clone(),
        };
        assert!(place_compressed(pending).unwrap());
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(bytes.len() as u64, c.length);
        assert_eq!(zstd::stream::decode_all(&bytes[..]).unwrap(), data);
        // Already there: the new temporary file is dropped, the file kept.
        let (_, file, _) = hash_and_compress(&src, &out_dir, 3).unwrap();
        let again = PendingCompressed { file, dest };
        assert!(!place_compressed(again).unwrap());
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }
}
