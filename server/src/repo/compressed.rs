//! Compressed forms at publication. A target's `custom.zstd` names an uploaded blob that
//! devices may download instead of the image; before any targets naming one are signed or
//! published, the blob is decoded in full ([`ota_keys::compress::check_compressed_form`]:
//! streaming, within the devices' window, never buffering past the image's length) and
//! must give exactly the image. Blobs are content-addressed and never change, so the check
//! runs before the repository's write lock is taken: a large image does not hold up other
//! publishes. These functions block on disk I/O and CPU: call them from a blocking thread.

use std::collections::BTreeSet;
use std::fs::File;

use ota_common::metadata::Targets;
use ota_common::release::{CompressedForm, ReleaseInfo};
use ota_keys::compress::{check_compressed_form, CompressedFormError};

use super::publish::{BlobFacts, PublishError};
use super::{Repository, BLOBS_TREE};
use crate::blobs::BlobStore;
use crate::store::StoreExt;

impl Repository {
    /// Checks that the uploaded blob `form` names decodes to the uploaded image `image` of
    /// target `target`. A blob that was never uploaded is [`PublishError::MissingCompressedBlob`]; a
    /// form that does not match is [`PublishError::CompressedForm`] naming the failed check.
    pub fn check_compressed_form(
        &self,
        target: &str,
        image: &BlobFacts,
        form: &CompressedForm,
        blobs: &BlobStore,
    ) -> Result<(), PublishError> {
        let missing = || PublishError::MissingCompressedBlob {
            target: target.into(),
            sha256: form.sha256.clone(),
        };
        let refused = |source| PublishError::CompressedForm {
            target: target.into(),
            sha256: form.sha256.clone(),
            source,
        };
        let facts: BlobFacts = self
            .store
            .get_json(BLOBS_TREE, form.sha256.as_bytes())?
            .ok_or_else(missing)?;
        // The recorded length answers at once for a form that names the wrong length.
        if facts.length != form.length {
            return Err(refused(CompressedFormError::CompressedLength {
                expected: form.length,
                actual: facts.length,
            }));
        }
        let image_sha256: [u8; 32] = hex::decode(&image.sha256)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                PublishError::Malformed(format!(
                    "target {target:?}: image sha256 {:?} is not 64 hex digits",
                    image.sha256
                ))
            })?;
        let path = blobs
            .blob_path(&form.sha256)
            .map_err(|_| PublishError::Malformed(format!("target {target:?}: bad zstd.sha256")))?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(source) => {
                return Err(PublishError::BlobRead {
                    sha256: form.sha256.clone(),
                    source,
                })
            }
        };
        check_compressed_form(file, image.length, &image_sha256, form).map_err(|e| match e {
            CompressedFormError::Read { source, .. } | CompressedFormError::Decoder(source) => {
                PublishError::BlobRead {
                    sha256: form.sha256.clone(),
                    source,
                }
            }
            e => refused(e),
        })
    }

    /// Checks every compressed form that `new` names and `current` does not already list
    /// for the same image (those were checked when they were published). Targets that
    /// fail other checks (no sha256, image not uploaded, bad release fields) are left to
    /// the publish's own checks, except that a form's image must have been uploaded.
    pub(crate) fn check_new_forms(
        &self,
        current: &Targets,
        new: &Targets,
        blobs: &BlobStore,
    ) -> Result<(), PublishError> {
        // (image sha256, form sha256, form length): CompressedForm has no ordering.
        let key = |image: &str, f: &CompressedForm| (image.to_string(), f.sha256.clone(), f.length);
        let known: BTreeSet<(String, String, u64)> = current
            .targets
            .iter()
            .filter_map(|(name, file)| {
                let form = ReleaseInfo::from_target(name, file).ok()?.zstd?;
                Some(key(file.sha256()?, &form))
            })
            .collect();
        for (name, file) in &new.targets {
            let Some(form) = ReleaseInfo::from_target(name, file)
                .ok()
                .and_then(|i| i.zstd)
            else {
                continue;
            };
            let Some(sha) = file.sha256() else {
                return Err(PublishError::MissingHash(name.clone()));
            };
            if known.contains(&key(sha, &form)) {
                continue;
            }
            let image = self.uploaded_image(name, sha, file.length)?;
            self.check_compressed_form(name, &image, &form, blobs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use ota_common::metadata::TargetFile;
    use ota_keys::compress::compress_frames;

    use super::*;
    use crate::app::AppState;
    use crate::devices::testing::state;
    use crate::repo::publish::NewRelease;
    use crate::repo::signer::sign_targets;

    async fn upload(state: &AppState, bytes: &[u8]) -> BlobFacts {
        let info = state
            .blobs
            .write_reader(bytes, bytes.len() as u64)
            .await
            .unwrap();
        let facts = BlobFacts {
            sha256: info.sha256_hex,
            sha512: info.sha512_hex,
            length: info.length,
        };
        state.repo.record_blob(&facts).unwrap();
        facts
    }

    fn zstd(bytes: &[u8]) -> (Vec<u8>, CompressedForm) {
        let mut out = Vec::new();
        let c = compress_frames(bytes, &mut out, 3).unwrap();
        (out, c.form())
    }

    fn release(name: &str, image: &BlobFacts, form: Option<CompressedForm>) -> NewRelease {
        NewRelease {
            name: name.into(),
            blob: image.clone(),
            info: ReleaseInfo {
                version: "1.0.0".parse().unwrap(),
                hardware_ids: vec!["hw".into()],
                support_until: None,
                zstd: form,
            },
        }
    }

    #[tokio::test]
    async fn dev_publish_checks_the_form_and_serves_it_only_once_published() {
        let (state, _dir) = state();
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let facts = upload(&state, &image).await;
        let (zst, form) = zstd(&image);
        let name = ota_common::target::TargetName::new("fw/a.bin").unwrap();
        let served = form.consistent_path(&name);
        let repo = &state.repo;
        let v0 = repo.view().targets_signed.version;

        // Not uploaded yet: a clear refusal, nothing published.
        let e = repo
            .publish_release_checked(
                &release("fw/a.bin", &facts, Some(form.clone())),
                &state.blobs,
                Utc::now(),
            )
            .unwrap_err();
        assert!(
            matches!(e, PublishError::MissingCompressedBlob { .. }),
            "{e}"
        );
        upload(&state, &zst).await;
        assert!(
            !repo.view().files.contains_key(&served),
            "not public before publishing"
        );

        // Refusals, each naming its check; nothing published.
        let other: Vec<u8> = image.iter().map(|b| b ^ 1).collect();
        let (other_zst, other_form) = zstd(&other);
        upload(&state, &other_zst).await;
        let not_zstd = upload(&state, b"plain bytes, no zstd frame here").await;
        let bad = [
            CompressedForm {
                length: form.length + 1,
                ..form.clone()
            },
            other_form,
            CompressedForm {
                length: not_zstd.length,
                sha256: not_zstd.sha256.clone(),
            },
        ];
        for f in bad {
            let e = repo
                .publish_release_checked(
                    &release("fw/a.bin", &facts, Some(f)),
                    &state.blobs,
                    Utc::now(),
                )
                .unwrap_err();
            assert!(matches!(e, PublishError::CompressedForm { .. }), "{e}");
        }
        // The unchecked entry point refuses any form.
        let e = repo
            .publish_release(&release("fw/a.bin", &facts, Some(form.clone())), Utc::now())
            .unwrap_err();
        assert!(matches!(e, PublishError::UncheckedCompressedForm(_)), "{e}");
        assert_eq!(repo.view().targets_signed.version, v0);

        repo.publish_release_checked(
            &release("fw/a.bin", &facts, Some(form.clone())),
            &state.blobs,
            Utc::now(),
        )
        .unwrap();
        let view = repo.view();
        let t = &view.targets_signed.targets["fw/a.bin"];
        assert_eq!(
            t.length,
            image.len() as u64,
            "the TUF length stays the image's"
        );
        assert_eq!(
            ReleaseInfo::from_target("fw/a.bin", t).unwrap().zstd,
            Some(form.clone())
        );
        let s = &view.files[&served];
        assert_eq!(
            (s.sha256.as_str(), s.length),
            (form.sha256.as_str(), form.length)
        );
    }

    #[tokio::test]
    async fn signed_targets_naming_a_bad_form_are_refused() {
        let (state, _dir) = state();
        let repo = &state.repo;
        let image: Vec<u8> = (0..100_000u32).map(|i| (i % 11) as u8).collect();
        let facts = upload(&state, &image).await;
        let (zst, form) = zstd(&image);
        upload(&state, &zst).await;
        let (_, unknown) = zstd(b"never uploaded");
        let key = repo.keys().targets.as_ref().unwrap();
        let signed = |form: &CompressedForm| {
            let view = repo.view();
            let mut t = view.targets_signed.clone();
            t.version += 1;
            let custom = serde_json::to_value(release("a.bin", &facts, Some(form.clone())).info);
            t.targets.insert(
                "a.bin".into(),
                TargetFile {
                    length: facts.length,
                    hashes: BTreeMap::from([("sha256".to_string(), facts.sha256.clone())]),
                    custom: Some(custom.unwrap()),
                    extra: BTreeMap::new(),
                },
            );
            sign_targets(key, &t).unwrap()
        };
        let wrong_sha = CompressedForm {
            sha256: facts.sha256.clone(),
            length: facts.length,
        };
        let e = repo
            .publish_targets(&signed(&wrong_sha), &state.blobs, Utc::now())
            .unwrap_err();
        assert!(matches!(e, PublishError::CompressedForm { .. }), "{e}");
        let e = repo
            .publish_targets(&signed(&unknown), &state.blobs, Utc::now())
            .unwrap_err();
        assert!(
            matches!(e, PublishError::MissingCompressedBlob { .. }),
            "{e}"
        );
        repo.publish_targets(&signed(&form), &state.blobs, Utc::now())
            .unwrap();
        let name = ota_common::target::TargetName::new("a.bin").unwrap();
        assert!(repo.view().files.contains_key(&form.consistent_path(&name)));
    }
}
