//! ota's release fields on each target, and the rule that picks a device's image.
//!
//! A target's `custom` object carries `version` (a semantic version without build metadata,
//! so that ordering is total and agrees with equality), `hardware_ids` (the boards it fits)
//! and optionally `support_until` (end of security support, shown to operators and users)
//! and `zstd` (a compressed form of the image that devices may download instead).
//! The choice is pure: no clock, no I/O.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::metadata::TargetFile;

/// A release version: semver, no build metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReleaseVersion(semver::Version);

/// Why a string is not a release version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid release version {input:?}: {reason}")]
pub struct VersionError {
    input: String,
    reason: String,
}

impl ReleaseVersion {
    /// The semantic version.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl FromStr for ReleaseVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = semver::Version::parse(s).map_err(|e| VersionError {
            input: s.into(),
            reason: e.to_string(),
        })?;
        if !v.build.is_empty() {
            // semver orders build metadata but says it must not matter for precedence:
            // refusing it keeps "newer than" unambiguous.
            return Err(VersionError {
                input: s.into(),
                reason: "build metadata (+...) has no precedence; leave it out".into(),
            });
        }
        Ok(ReleaseVersion(v))
    }
}

impl Ord for ReleaseVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for ReleaseVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ReleaseVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for ReleaseVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The release fields of a target's `custom` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// The release version.
    pub version: ReleaseVersion,
    /// Hardware ids the image fits; empty means none (an image must name its boards).
    pub hardware_ids: Vec<String>,
    /// End of security support for this release, if announced.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_time"
    )]
    pub support_until: Option<DateTime<Utc>>,
    /// A zstd-compressed form of the image, served beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<CompressedForm>,
}

/// The largest zstd window (as a power of two: 8 MiB) that a compressed form may need.
/// Devices decode with this bound, so their memory stays small whatever the image; the
/// server refuses to publish a compressed form that needs more.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A compressed form of a target's image, described in the target's signed `custom` object.
///
/// The TUF `length` and `hashes` of the target stay those of the image itself, so every
/// TUF client (python-tuf included) sees an ordinary target, and what a device writes into
/// its slot is checked against them. The compressed file is served at
/// `targets/<dir>/<sha256>.<basename>.zst` (see [`CompressedForm::consistent_path`]); its
/// signed length bounds what a device downloads, and the server checked at publication that
/// it decodes to the image, as a sequence of independent zstd frames within
/// [`ZSTD_WINDOW_LOG_MAX`]. Frame boundaries are where a device can resume an interrupted
/// download.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedForm {
    /// Length in bytes of the compressed file.
    pub length: u64,
    /// SHA-256 of the compressed file, lowercase hex.
    #[serde(deserialize_with = "sha256_hex")]
    pub sha256: String,
}

impl CompressedForm {
    /// The compressed file's path below the repository's `targets/`, for target `name`.
    pub fn consistent_path(&self, name: &crate::target::TargetName) -> String {
        format!("{}.zst", name.consistent_path(&self.sha256))
    }
}

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(
            "zstd.sha256 must be 64 lowercase hex digits",
        ))
    }
}

mod optional_time {
    use super::*;
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => crate::metadata::expiry::serialize(t, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        crate::metadata::expiry::deserialize(d).map(Some)
    }
}

/// Why a target's release fields cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("target {target:?} has no valid ota release fields in `custom`: {reason}")]
pub struct ReleaseFieldsError {
    /// The target.
    pub target: String,
    /// What was wrong.
    pub reason: String,
}

impl ReleaseInfo {
    /// Reads the fields from a target.
    pub fn from_target(name: &str, file: &TargetFile) -> Result<Self, ReleaseFieldsError> {
        let custom = file.custom.as_ref().ok_or_else(|| ReleaseFieldsError {
            target: name.into(),
            reason: "no custom object".into(),
        })?;
        Self::from_custom(name, custom)
    }

    /// Reads the fields from a `custom` value (unknown fields are ignored).
    pub fn from_custom(name: &str, custom: &Value) -> Result<Self, ReleaseFieldsError> {
        ReleaseInfo::deserialize(custom).map_err(|e| ReleaseFieldsError {
            target: name.into(),
            reason: e.to_string(),
        })
    }

    /// Whether the image fits `hardware_id`.
    pub fn fits(&self, hardware_id: &str) -> bool {
        self.hardware_ids.iter().any(|h| h == hardware_id)
    }
}

/// What the device knows about itself when choosing.
#[derive(Clone, Debug)]
pub struct DeviceFacts<'a> {
    /// Its hardware id.
    pub hardware_id: &'a str,
    /// The highest version it ever committed: nothing at or below it is installed again,
    /// whichever slot holds what.
    pub floor: Option<&'a ReleaseVersion>,
}

/// The outcome of choosing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Nothing newer fits this device.
    UpToDate,
    /// Install this target.
    Install {
        /// Target name.
        name: String,
        /// Its release fields.
        info: ReleaseInfo,
    },
}

/// Why a target offered to the device was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The server named a target that the signed metadata does not list.
    #[error("target {0:?} is not in the signed targets metadata")]
    UnknownTarget(String),
    /// The named target has no usable release fields.
    #[error("target {target:?}: {reason}")]
    BadReleaseFields {
        /// Target.
        target: String,
        /// Why.
        reason: String,
    },
    /// The named target is for other hardware.
    #[error("target {target:?} does not fit hardware {hardware_id:?} (fits {fits:?})")]
    WrongHardware {
        /// Target.
        target: String,
        /// This device's hardware.
        hardware_id: String,
        /// What it fits.
        fits: Vec<String>,
    },
    /// The named target is older than what the device already committed.
    #[error("target {target:?} is version {offered}, below the committed floor {floor}: downgrade refused")]
    Downgrade {
        /// Target.
        target: String,
        /// Its version.
        offered: ReleaseVersion,
        /// The device's floor.
        floor: ReleaseVersion,
    },
}

/// Picks the image to install.
///
/// With a `directive` (the server names a target for this device), that target must be
/// listed, fit the hardware and not be older than the floor; equal to the floor means up to
/// date. Without one, the newest fitting target above the floor is chosen. Targets without
/// valid release fields are skipped when searching (they may be other kinds of files).
pub fn choose<'a>(
    targets: impl IntoIterator<Item = (&'a str, &'a TargetFile)>,
    device: &DeviceFacts<'_>,
    directive: Option<&str>,
) -> Result<Choice, PolicyError> {
    if let Some(wanted) = directive {
        let (name, file) = targets
            .into_iter()
            .find(|(n, _)| *n == wanted)
            .ok_or_else(|| PolicyError::UnknownTarget(wanted.into()))?;
        let info =
            ReleaseInfo::from_target(name, file).map_err(|e| PolicyError::BadReleaseFields {
                target: name.into(),
                reason: e.reason,
            })?;
        if !info.fits(device.hardware_id) {
            return Err(PolicyError::WrongHardware {
                target: name.into(),
                hardware_id: device.hardware_id.into(),
                fits: info.hardware_ids,
            });
        }
        return match device.floor {
            Some(floor) if info.version < *floor => Err(PolicyError::Downgrade {
                target: name.into(),
                offered: info.version,
                floor: floor.clone(),
            }),
            Some(floor) if info.version == *floor => Ok(Choice::UpToDate),
            _ => Ok(Choice::Install {
                name: name.into(),
                info,
            }),
        };
    }
    let best = targets
        .into_iter()
        .filter_map(|(n, f)| ReleaseInfo::from_target(n, f).ok().map(|i| (n, i)))
        .filter(|(_, i)| i.fits(device.hardware_id))
        .filter(|(_, i)| device.floor.is_none_or(|floor| i.version > *floor))
        // Highest version wins; among equal versions the smallest name, so the choice does
        // not depend on iteration order.
        .max_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| b.0.cmp(a.0)));
    Ok(match best {
        Some((name, info)) => Choice::Install {
            name: name.into(),
            info,
        },
        None => Choice::UpToDate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn file(version: &str, hw: &[&str]) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: BTreeMap::new(),
            custom: Some(json!({"version": version, "hardware_ids": hw})),
            extra: BTreeMap::new(),
        }
    }

    fn v(s: &str) -> ReleaseVersion {
        s.parse().unwrap()
    }

    #[test]
    fn compressed_form_is_read_checked_and_placed_beside_the_image() {
        let sha = "ab".repeat(32);
        let custom = json!({"version": "1.0.0", "hardware_ids": ["hw"],
            "zstd": {"length": 42, "sha256": sha}});
        let info = ReleaseInfo::from_custom("fw/a.bin", &custom).unwrap();
        let form = info.zstd.clone().unwrap();
        assert_eq!(form.length, 42);
        let name = crate::target::TargetName::new("fw/a.bin").unwrap();
        assert_eq!(form.consistent_path(&name), format!("fw/{sha}.a.bin.zst"));
        // Round trip, and absent stays absent.
        assert_eq!(serde_json::to_value(&info).unwrap(), custom);
        let plain = ReleaseInfo::from_custom("a", &json!({"version": "1.0.0", "hardware_ids": []}));
        assert_eq!(plain.unwrap().zstd, None);
        for bad in [
            json!({"length": 1, "sha256": "AB".repeat(32)}),
            json!({"length": 1, "sha256": "ab"}),
            json!({"length": -1, "sha256": sha}),
            json!({"sha256": sha}),
        ] {
            let custom = json!({"version": "1.0.0", "hardware_ids": [], "zstd": bad});
            let err = ReleaseInfo::from_custom("a", &custom).unwrap_err();
            assert!(
                ["zstd", "length", "u64"]
                    .iter()
                    .any(|w| err.reason.contains(w)),
                "{err}"
            );
        }
    }

    #[test]
    fn build_metadata_is_refused() {
        assert!("1.0.0+abc".parse::<ReleaseVersion>().is_err());
        assert!("1.0".parse::<ReleaseVersion>().is_err());
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
    }

    #[test]
    fn picks_newest_fitting_above_floor() {
        let t = [
            ("a", file("1.0.0", &["hw1"])),
            ("b", file("2.0.0", &["hw1"])),
            ("c", file("3.0.0", &["hw2"])),
        ];
        let floor = v("1.0.0");
        let dev = DeviceFacts {
            hardware_id: "hw1",
            floor: Some(&floor),
        };
        let got = choose(t.iter().map(|(n, f)| (*n, f)), &dev, None).unwrap();
        assert!(matches!(got, Choice::Install { ref name, .. } if name == "b"));
        let floor = v("2.0.0");
        let dev = DeviceFacts {
            hardware_id: "hw1",
            floor: Some(&floor),
        };
        assert_eq!(
            choose(t.iter().map(|(n, f)| (*n, f)), &dev, None).unwrap(),
            Choice::UpToDate
        );
    }

    #[test]
    fn directive_refusals_are_specific() {
        let t = [
            ("a", file("1.0.0", &["hw1"])),
            ("b", file("2.0.0", &["hw1"])),
        ];
        let it = || t.iter().map(|(n, f)| (*n, f));
        let floor = v("2.0.0");
        let dev = DeviceFacts {
            hardware_id: "hw1",
            floor: Some(&floor),
        };
        assert!(matches!(
            choose(it(), &dev, Some("a")),
            Err(PolicyError::Downgrade { .. })
        ));
        assert_eq!(choose(it(), &dev, Some("b")).unwrap(), Choice::UpToDate);
        assert!(matches!(
            choose(it(), &dev, Some("zz")),
            Err(PolicyError::UnknownTarget(_))
        ));
        let dev = DeviceFacts {
            hardware_id: "hw9",
            floor: None,
        };
        assert!(matches!(
            choose(it(), &dev, Some("b")),
            Err(PolicyError::WrongHardware { .. })
        ));
    }

    fn arb_version() -> impl Strategy<Value = ReleaseVersion> {
        (
            0u64..5,
            0u64..5,
            0u64..5,
            prop::option::of(prop_oneof![Just("alpha"), Just("rc.1"), Just("rc.2")]),
        )
            .prop_map(|(a, b, c, pre)| {
                let s = match pre {
                    Some(p) => format!("{a}.{b}.{c}-{p}"),
                    None => format!("{a}.{b}.{c}"),
                };
                s.parse().unwrap()
            })
    }

    proptest! {
        #[test]
        fn ordering_is_total_and_consistent(a in arb_version(), b in arb_version(), c in arb_version()) {
            // Antisymmetry and agreement with equality.
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
            // Transitivity.
            if a <= b && b <= c { prop_assert!(a <= c); }
            // Round trip through text.
            prop_assert_eq!(a.to_string().parse::<ReleaseVersion>().unwrap(), a.clone());
        }

        #[test]
        fn never_selects_at_or_below_floor(
            versions in prop::collection::vec(arb_version(), 0..8),
            floor in prop::option::of(arb_version()),
            directive_idx in prop::option::of(0usize..8),
        ) {
            let files: Vec<(String, TargetFile)> = versions.iter().enumerate()
                .map(|(i, v)| (format!("t{i}"), file(&v.to_string(), &["hw"]))).collect();
            let dev = DeviceFacts { hardware_id: "hw", floor: floor.as_ref() };
            let directive = directive_idx.and_then(|i| files.get(i)).map(|(n, _)| n.as_str());
            if let Ok(Choice::Install { info, .. }) = choose(files.iter().map(|(n, f)| (n.as_str(), f)), &dev, directive) {
                if let Some(f) = &floor { prop_assert!(info.version > *f); }
            }
        }
    }
}
