//! Tests of the fleet index: the summary, group and phase counts kept from record changes,
//! and counts of new groups and deployments taken from shard copies while devices change.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

use super::*;
use crate::deployments::groups::{GroupFilter, Membership};
use crate::devices::LastStatus;
use crate::rollout::PhaseSpec;
use chrono::Utc;
use std::collections::{BTreeMap, HashSet};

fn rec(id: &str, status: DeviceStatus, version: Option<&str>) -> DeviceRecord {
    let mut r = DeviceRecord::new(id, status, "t", Utc::now());
    r.hardware_id = Some("hw".into());
    r.current_version = version.map(Into::into);
    r
}

fn with_status(mut r: DeviceRecord, state: UpdateState, version: &str) -> DeviceRecord {
    r.revision += 1;
    r.last_status = Some(LastStatus {
        state,
        target: "fw".into(),
        version: version.into(),
        at: Utc::now(),
    });
    r
}

/// The 1,000,000-device requirement, at 100,000: the summary's cost does not depend
/// on the number of devices, only on the number of versions.
#[test]
fn summary_of_100k_devices_is_kept_in_o_versions() {
    let index = FleetIndex::default();
    let versions = ["1.0.0", "1.1.0", "2.0.0"];
    let mut recs = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let status = match i % 10 {
            0 => DeviceStatus::Pending,
            1 => DeviceStatus::Rejected,
            _ => DeviceStatus::Accepted,
        };
        let r = rec(&format!("dev-{i:06}"), status, Some(versions[i % 3]));
        index.record_changed(None, Some(&r));
        recs.push(r);
    }
    // 20,000 of them start updating to 2.0.0; 1,000 roll back.
    for r in recs.iter_mut().take(20_000) {
        let next = with_status(r.clone(), UpdateState::Downloading, "2.0.0");
        index.record_changed(Some(r), Some(&next));
        *r = next;
    }
    for r in recs.iter_mut().take(1_000) {
        let next = with_status(r.clone(), UpdateState::RolledBack, "2.0.0");
        index.record_changed(Some(r), Some(&next));
        *r = next;
    }
    let fp = index.footprint();
    assert_eq!(
        fp,
        Footprint {
            versions: 3,
            silent: 0,
            groups: 0,
            deployments: 0
        }
    );
    let s = index.summary();
    assert_eq!(s.devices, 100_000);
    assert_eq!(s.by_status.accepted, 80_000);
    assert_eq!(s.by_status.pending, 10_000);
    assert_eq!(s.by_status.rejected, 10_000);
    assert_eq!(s.by_version.len(), 3);
    assert_eq!(s.by_version.values().sum::<u64>(), 80_000);
    // Of the first 20,000, 16,000 are accepted; a third of those already run 2.0.0.
    let u = s.by_update_state;
    assert_eq!(
        u.up_to_date + u.updating + u.failed + u.rolled_back + u.silent,
        80_000
    );
    let accepted_first = |n: usize| {
        (0..n)
            .filter(|i| i % 10 >= 2 && versions[i % 3] != "2.0.0")
            .count() as u64
    };
    assert_eq!(u.rolled_back, accepted_first(1_000));
    assert_eq!(u.updating, accepted_first(20_000) - accepted_first(1_000));
    // Silence moves a device between states and back.
    let r = &recs[2];
    assert!(index.set_silent(r, true));
    assert!(!index.set_silent(r, true));
    assert_eq!(index.summary().by_update_state.silent, 1);
    assert_eq!(index.footprint().silent, 1);
    assert!(index.set_silent(r, false));
    assert_eq!(index.summary().by_update_state, u);
    // A decommission removes the record and counts the tombstone.
    index.record_changed(Some(&recs[2]), None);
    index.tombstoned(&recs[2].id);
    let s = index.summary();
    assert_eq!((s.devices, s.by_status.decommissioned), (99_999, 1));
}

#[test]
fn group_and_phase_counts_follow_membership() {
    let index = FleetIndex::default();
    let group = Arc::new(Group {
        name: "eu".into(),
        members: Membership::Dynamic {
            filter: GroupFilter {
                hardware_id: None,
                attributes: [("site".to_string(), "eu".to_string())].into(),
            },
        },
        created_at: Utc::now(),
        created_by: "op".into(),
    });
    let policy = RolloutPolicy {
        phases: vec![
            PhaseSpec {
                percent: 50,
                min_wait_secs: 0,
            },
            PhaseSpec {
                percent: 100,
                min_wait_secs: 0,
            },
        ],
        failure_threshold_percent: 50,
        min_devices: 1,
    };
    let target = release_2();
    index.add_group(Arc::clone(&group), 0);
    index.add_deployment(
        "dep-x",
        Arc::clone(&group),
        policy.clone(),
        target.clone(),
        Audience::default(),
    );
    let zero = Audience::count("dep-x", &group, &policy, &target, std::iter::empty());
    assert_eq!(zero.first_reached, [0, 0]);
    let mut recs: Vec<DeviceRecord> = (0..200)
        .map(|i| rec(&format!("d{i}"), DeviceStatus::Accepted, Some("1.0.0")))
        .collect();
    for r in &recs {
        index.record_changed(None, Some(r));
    }
    assert_eq!(index.group_members("eu"), Some(0));
    for r in recs.iter_mut().take(120) {
        let mut next = r.clone();
        next.revision += 1;
        next.attributes.insert("site".into(), "eu".into());
        index.record_changed(Some(r), Some(&next));
        *r = next;
    }
    assert_eq!(index.group_members("eu"), Some(120));
    let expected = Audience::count("dep-x", &group, &policy, &target, recs.iter());
    let targeted = index.targeted("dep-x").unwrap();
    assert_eq!(targeted, cumulative(&expected.first_reached));
    assert_eq!(
        (expected.outstanding, index.outstanding("dep-x")),
        (120, Some(120))
    );
    // Updating takes a member out of the audience still waiting.
    let mut updated = recs[5].clone();
    updated.revision += 1;
    updated.current_version = Some("2.0.0".into());
    index.record_changed(Some(&recs[5]), Some(&updated));
    recs[5] = updated;
    assert_eq!(index.outstanding("dep-x"), Some(119));
    assert_eq!(targeted[1], 120);
    assert!(targeted[0] > 30 && targeted[0] < 90, "{targeted:?}");
    // Leaving the group, and decommissioning, take members away.
    index.record_changed(Some(&recs[0]), None);
    let mut moved = recs[1].clone();
    moved.attributes.clear();
    index.record_changed(Some(&recs[1]), Some(&moved));
    assert_eq!(index.group_members("eu"), Some(118));
    assert_eq!(index.outstanding("dep-x"), Some(117));
    assert_eq!(index.remove_deployment("dep-x").unwrap()[1], 118);
    assert!(index.targeted("dep-x").is_none());
}

/// Devices in the fleet of [`counts_from_shard_copies_count_each_change_once`].
const FLEET: usize = 1200;

/// Fleet device `n`: on board "hw" (a member of [`hw_group`]) when `n` is even, and
/// accepted unless `n` is a multiple of 3.
fn fleet_id(n: usize) -> String {
    format!("d{n:04}")
}

fn on_hw(n: usize) -> bool {
    n.is_multiple_of(2)
}

fn accepted(n: usize) -> bool {
    !n.is_multiple_of(3)
}

/// The devices on board "hw".
fn hw_group() -> Arc<Group> {
    Arc::new(Group {
        name: "hw".into(),
        members: Membership::Dynamic {
            filter: GroupFilter {
                hardware_id: Some("hw".into()),
                attributes: BTreeMap::new(),
            },
        },
        created_at: Utc::now(),
        created_by: "op".into(),
    })
}

fn two_phases() -> RolloutPolicy {
    RolloutPolicy {
        phases: [30, 100]
            .map(|percent| PhaseSpec {
                percent,
                min_wait_secs: 0,
            })
            .to_vec(),
        failure_threshold_percent: 50,
        min_devices: 1,
    }
}

fn release_2() -> ReleaseTarget {
    ReleaseTarget {
        version_text: "2.0.0".into(),
        version: "2.0.0".parse().ok(),
        hardware_ids: vec!["hw".into()],
    }
}

/// Members of group "hw", reached per phase of "dep-x", and its outstanding devices.
type Counts = (Option<u64>, Option<Vec<u64>>, Option<u64>);

fn counts(index: &FleetIndex) -> Counts {
    (
        index.group_members("hw"),
        index.targeted("dep-x"),
        index.outstanding("dep-x"),
    )
}

/// [`counts`] from a full recount of the cache on a fresh index.
fn recount(d: &Devices) -> Counts {
    let fresh = FleetIndex::default();
    fresh.add_group(hw_group(), 0);
    fresh.add_deployment(
        "dep-x",
        hw_group(),
        two_phases(),
        release_2(),
        Audience::default(),
    );
    d.visit_cached(|r, _| fresh.record_changed(None, Some(r)));
    counts(&fresh)
}

/// Changes fleet devices through the registry's API, each device at most once (so that
/// [`on_hw`] and [`accepted`] still describe the ones not changed yet).
struct Changer<'a> {
    d: &'a Devices,
    audit: &'a crate::audit::AuditLog,
    used: HashSet<usize>,
    new: usize,
}

impl Changer<'_> {
    /// An unchanged fleet device for which `want` holds, in a shard `<= split` when
    /// `copied` (already copied when `after_shard(split)` runs), else `> split`.
    fn pick(&mut self, copied: bool, split: usize, want: impl Fn(usize) -> bool) -> String {
        let n = (0..FLEET)
            .find(|&n| {
                !self.used.contains(&n) && (shard_of(&fleet_id(n)) <= split) == copied && want(n)
            })
            .unwrap();
        self.used.insert(n);
        fleet_id(n)
    }

    /// Changes the membership of group "hw", or whether a member wants release 2.0.0, of
    /// devices on one side of `split`, in each way the registry allows. Net effect of a
    /// call: one more member, one fewer member wanting the release.
    fn change(&mut self, copied: bool, split: usize) {
        use crate::devices::testing::{ident, peer, req};
        let (d, audit, now) = (self.d, self.audit, Utc::now());
        let poll = |id: &str, r: ota_common::api::PollRequest| {
            d.poll(&ident(id, "F"), &r, peer(), now).unwrap();
        };
        // Decisions: a pending member comes to want the release, an accepted one stops.
        let id = self.pick(copied, split, |n| on_hw(n) && !accepted(n));
        d.decide(&id, DeviceStatus::Accepted, audit, "op", now)
            .unwrap();
        let id = self.pick(copied, split, |n| on_hw(n) && accepted(n));
        d.decide(&id, DeviceStatus::Rejected, audit, "op", now)
            .unwrap();
        // New inventory: two devices move onto board "hw" (one pending), a member moves
        // off it, and a member installs 2.0.0 (it stays a member but no longer wants it).
        poll(
            &self.pick(copied, split, |n| !on_hw(n) && !accepted(n)),
            req("hw"),
        );
        poll(
            &self.pick(copied, split, |n| !on_hw(n) && accepted(n)),
            req("hw"),
        );
        poll(
            &self.pick(copied, split, |n| on_hw(n) && accepted(n)),
            req("other"),
        );
        let mut updated = req("hw");
        updated.current_version = Some("2.0.0".into());
        poll(
            &self.pick(copied, split, |n| on_hw(n) && accepted(n)),
            updated,
        );
        // A member is decommissioned.
        let id = self.pick(copied, split, |n| on_hw(n) && accepted(n));
        d.decommission(&id, audit, "op", now).unwrap();
        // A new device registers on board "hw" (pending), then is accepted.
        let id = loop {
            self.new += 1;
            let id = format!("new{}", self.new);
            if (shard_of(&id) <= split) == copied {
                break id;
            }
        };
        poll(&id, req("hw"));
        d.decide(&id, DeviceStatus::Accepted, audit, "op", now)
            .unwrap();
    }
}

/// Counting a new group and a new deployment from shard copies, while devices change
/// both in shards already copied and in shards not copied yet, ends with the counts a
/// full recount gives: each change is counted exactly once, either through the copy of
/// its shard or through the observer, never both, never neither. The changes are made
/// from the count's `after_shard` seam, so they land between copies deterministically;
/// the two sides get different numbers of changes, so that an error on one side cannot
/// cancel an error on the other.
#[test]
fn counts_from_shard_copies_count_each_change_once() {
    use crate::devices::testing::{ident, peer, registry, req};
    let (_s, d, audit) = registry();
    let index = Arc::new(FleetIndex::default());
    assert!(d.set_observer(Arc::clone(&index) as Arc<dyn RecordObserver>));
    let now = Utc::now();
    for n in 0..FLEET {
        let id = fleet_id(n);
        let hw = if on_hw(n) { "hw" } else { "other" };
        d.poll(&ident(&id, "F"), &req(hw), peer(), now).unwrap();
        if accepted(n) {
            d.decide(&id, DeviceStatus::Accepted, &audit, "op", now)
                .unwrap();
        }
    }
    let before = recount(&d);
    let mut changer = Changer {
        d: &d,
        audit: &audit,
        used: HashSet::new(),
        new: 0,
    };

    // The group, with changes halfway through the copies.
    let split = shard_count() / 2;
    let mut seen = Vec::new();
    index.count_and_add_with(&d, Counted::Group(hw_group()), |i| {
        seen.push(i);
        if i == split {
            changer.change(true, split);
            changer.change(false, split);
            changer.change(false, split);
        }
    });
    assert_eq!(seen, (0..shard_count()).collect::<Vec<_>>());
    assert_eq!(index.group_members("hw"), recount(&d).0);
    assert_ne!(
        index.group_members("hw"),
        before.0,
        "the changes must matter"
    );

    // The deployment, with changes after the first shard; the group is kept meanwhile.
    let deployment = Counted::Deployment {
        id: "dep-x".into(),
        group: hw_group(),
        policy: two_phases(),
        target: release_2(),
    };
    index.count_and_add_with(&d, deployment, |i| {
        if i == 0 {
            changer.change(true, 0);
            changer.change(true, 0);
            changer.change(false, 0);
        }
    });
    let after = recount(&d);
    assert_eq!(counts(&index), after);
    assert_ne!(after.1, before.1, "the changes must matter");
    assert_ne!(after.2, before.2, "the changes must matter");
    assert!(index.lock().counting.is_empty());

    // first_phase agrees with the rollout's phase_of.
    d.visit_cached(|r, _| {
        assert_eq!(
            first_phase("dep-x", &r.id, &two_phases()),
            crate::rollout::phase_of("dep-x", &r.id, &two_phases())
        );
    });
}

/// Rough release-mode timings at 100,000 devices (run by hand:
/// `cargo test -p ota-server --release --lib scale_timings -- --ignored --nocapture`).
/// Prints, asserts nothing about speed.
#[test]
#[ignore = "a measurement, run by hand"]
fn scale_timings() {
    use crate::devices::testing::{ident, peer, registry, req};
    use crate::devices::DeviceFilter;
    use std::time::Instant;
    let (_s, d, audit) = registry();
    let index = Arc::new(FleetIndex::default());
    d.set_observer(Arc::clone(&index) as Arc<dyn RecordObserver>);
    d.load_all().unwrap();
    let now = Utc::now();
    for i in 0..100_000 {
        let hw = if i % 1000 == 0 { "rare" } else { "hw" };
        d.poll(&ident(&format!("d{i:06}"), "F"), &req(hw), peer(), now)
            .unwrap();
    }
    for i in (0..100_000).step_by(2) {
        d.decide(
            &format!("d{i:06}"),
            DeviceStatus::Accepted,
            &audit,
            "op",
            now,
        )
        .unwrap();
    }
    d.decide("d099999", DeviceStatus::Rejected, &audit, "op", now)
        .unwrap();
    let f = DeviceFilter {
        status: Some(DeviceStatus::Rejected),
        hardware_id: None,
    };
    let t = Instant::now();
    let (page, _) = d.list(&f, None, 100).unwrap();
    println!(
        "indexed list status=rejected: {:?} ({} rows)",
        t.elapsed(),
        page.len()
    );
    let f = DeviceFilter {
        status: None,
        hardware_id: Some("rare".into()),
    };
    let t = Instant::now();
    let (page, _) = d.list(&f, None, 100).unwrap();
    println!(
        "indexed list hardware_id=rare: {:?} ({} rows)",
        t.elapsed(),
        page.len()
    );
    let group = Arc::new(Group {
        name: "all".into(),
        members: Membership::Dynamic {
            filter: GroupFilter::default(),
        },
        created_at: now,
        created_by: "op".into(),
    });
    let policy = RolloutPolicy {
        phases: [10, 50, 100]
            .map(|percent| PhaseSpec {
                percent,
                min_wait_secs: 0,
            })
            .to_vec(),
        failure_threshold_percent: 50,
        min_devices: 1,
    };
    let target = release_2();
    let t = Instant::now();
    index.count_and_add(&d, Counted::Group(Arc::clone(&group)));
    println!("new group count (shard copies): {:?}", t.elapsed());
    let t = Instant::now();
    index.count_and_add(
        &d,
        Counted::Deployment {
            id: "dep-x".into(),
            group,
            policy,
            target,
        },
    );
    println!(
        "new deployment count (shard copies, one hash): {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    d.snapshot_shards(|_| {}, |_, _| {});
    println!(
        "longest lock hold is one shard's pointer copy; all copies: {:?}",
        t.elapsed()
    );
}
