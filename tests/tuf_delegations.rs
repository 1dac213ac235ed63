//! Delegations (spec 5.6.7): roles are searched pre-order in listed order, a terminating
//! role that covers a path ends the search, a role is trusted only for the paths its
//! delegator gave it, cycles terminate, and a repository cannot make the client load more
//! than `max_delegated_roles` roles.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::ClientLimits;
use sha2::{Digest, Sha256};
use support::repo::{now, Repo};

fn delegated_requests(out: &support::repo::Outcome) -> Vec<String> {
    out.files()
        .into_iter()
        .filter(|f| {
            !f.ends_with("root.json")
                && !f.starts_with("timestamp")
                && !f.ends_with(".snapshot.json")
                && !f.ends_with(".targets.json")
        })
        .map(String::from)
        .collect()
}

#[test]
fn search_is_pre_order_in_listed_order() {
    // targets -> a -> a1, then targets -> b. All cover fw/*.
    let mut repo = Repo::new();
    repo.delegate("targets", "a", &["fw/*"], false);
    repo.delegate("a", "a1", &["fw/*"], false);
    repo.delegate("targets", "b", &["fw/*"], false);
    repo.add_target("a1", "fw/x.bin", b"from a1", None);
    repo.add_target("b", "fw/x.bin", b"from b", None);
    repo.add_target("a", "fw/y.bin", b"from a", None);
    repo.add_target("a1", "fw/y.bin", b"from a1", None);
    repo.add_target("b", "fw/z.bin", b"from b", None);
    repo.publish();
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(
        delegated_requests(&out),
        ["1.a.json", "1.a1.json", "1.b.json"]
    );
    let trusted = out.result.unwrap();
    // a's subtree before b; a parent before its child.
    assert_eq!(trusted.find_target("fw/x.bin").unwrap().1, "a1");
    assert_eq!(trusted.find_target("fw/y.bin").unwrap().1, "a");
    assert_eq!(trusted.find_target("fw/z.bin").unwrap().1, "b");
    let (file, _) = trusted.find_target("fw/x.bin").unwrap();
    support::repo::verify_target(file, b"from a1").unwrap();
    // The top-level role comes first of all.
    repo.add_target("targets", "fw/x.bin", b"from top", None);
    repo.bump();
    repo.publish();
    assert_eq!(
        repo.refresh(repo.local())
            .unwrap()
            .find_target("fw/x.bin")
            .unwrap()
            .1,
        "targets"
    );
}

#[test]
fn a_terminating_role_that_covers_the_path_ends_the_search() {
    for terminating in [true, false] {
        let mut repo = Repo::new();
        repo.delegate("targets", "apps", &["apps/*"], terminating);
        repo.delegate("targets", "fallback", &["*/*"], false);
        repo.add_target("fallback", "apps/hidden.bin", b"hidden", None);
        repo.add_target("fallback", "other/ok.bin", b"ok", None);
        repo.publish();
        let trusted = repo.refresh(repo.local()).unwrap();
        let found = trusted.find_target("apps/hidden.bin").map(|(_, r)| r);
        assert_eq!(
            found,
            if terminating { None } else { Some("fallback") },
            "terminating={terminating}"
        );
        // A terminating role that does not cover the path does not end anything.
        assert_eq!(trusted.find_target("other/ok.bin").unwrap().1, "fallback");
        let all: Vec<&str> = trusted.all_targets().into_iter().map(|(n, _)| n).collect();
        assert_eq!(all.contains(&"apps/hidden.bin"), !terminating);
    }
}

#[test]
fn a_terminating_role_ends_the_search_below_it_too() {
    // targets -> a (fw/*) -> a1 (fw/*, terminating); a -> a2 (fw/*); targets -> b (fw/*).
    // A target only in a2 or b is hidden by a1.
    let mut repo = Repo::new();
    repo.delegate("targets", "a", &["fw/*"], false);
    repo.delegate("a", "a1", &["fw/*"], true);
    repo.delegate("a", "a2", &["fw/*"], false);
    repo.delegate("targets", "b", &["fw/*"], false);
    repo.add_target("a2", "fw/x.bin", b"x", None);
    repo.add_target("b", "fw/y.bin", b"y", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(trusted.find_target("fw/x.bin").is_none());
    assert!(trusted.find_target("fw/y.bin").is_none());
}

#[test]
fn a_role_is_not_trusted_for_paths_it_was_not_given() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    // apps lists a firmware path, and delegates further with a broader pattern.
    repo.add_target("apps", "fw/evil.bin", b"evil", None);
    repo.add_target("apps", "apps/ok.bin", b"ok", None);
    repo.delegate("apps", "wide", &["*/*"], false);
    repo.add_target("wide", "fw/evil2.bin", b"evil2", None);
    repo.add_target("wide", "apps/ok2.bin", b"ok2", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(trusted.delegated()["apps"]
        .targets
        .contains_key("fw/evil.bin"));
    assert!(trusted.find_target("fw/evil.bin").is_none());
    // The child's broader pattern is cut to what its parent was given.
    assert!(trusted.find_target("fw/evil2.bin").is_none());
    assert_eq!(trusted.find_target("apps/ok.bin").unwrap().1, "apps");
    assert_eq!(trusted.find_target("apps/ok2.bin").unwrap().1, "wide");
    let mut all: Vec<&str> = trusted.all_targets().into_iter().map(|(n, _)| n).collect();
    all.sort();
    assert_eq!(
        all,
        ["apps/ok.bin", "apps/ok2.bin", support::repo::FIRMWARE]
    );
}

#[test]
fn star_does_not_cross_a_slash() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.add_target("apps", "apps/deep/x.bin", b"deep", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(trusted.find_target("apps/deep/x.bin").is_none());
}

#[test]
fn a_delegation_cycle_terminates() {
    // a -> b -> a, and each also lists targets.
    let mut repo = Repo::new();
    repo.delegate("targets", "a", &["fw/*"], false);
    repo.delegate("a", "b", &["fw/*"], false);
    repo.delegate("b", "a", &["fw/*"], false);
    repo.add_target("b", "fw/in-b.bin", b"b", None);
    repo.publish();
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(delegated_requests(&out), ["1.a.json", "1.b.json"]);
    let trusted = out.result.unwrap();
    assert!(!trusted.delegations_truncated());
    assert_eq!(trusted.find_target("fw/in-b.bin").unwrap().1, "b");
    // A miss walks the whole cycle and stops.
    assert!(trusted.find_target("fw/absent.bin").is_none());
}

#[test]
fn a_role_delegated_twice_is_loaded_once() {
    let mut repo = Repo::new();
    repo.delegate("targets", "a", &["fw/*"], false);
    repo.delegate("targets", "b", &["fw/*"], false);
    repo.delegate("a", "shared", &["fw/*"], false);
    repo.delegate("b", "shared", &["fw/*"], false);
    repo.publish();
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(
        delegated_requests(&out),
        ["1.a.json", "1.shared.json", "1.b.json"]
    );
}

#[test]
fn the_delegated_roles_bound_is_honoured() {
    // A chain of 10 roles; the client loads at most 3 and says it stopped.
    let mut repo = Repo::new();
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let mut parent = "targets".to_string();
    for name in &names {
        repo.delegate(&parent, name, &["fw/*"], false);
        parent = name.clone();
    }
    repo.add_target("r2", "fw/reachable.bin", b"r2", None);
    repo.add_target("r9", "fw/deep.bin", b"r9", None);
    repo.publish();
    let limits = ClientLimits {
        max_delegated_roles: 3,
        ..ClientLimits::default()
    };
    let out = repo.refresh_logged(repo.local(), now(), limits);
    assert_eq!(
        delegated_requests(&out),
        ["1.r0.json", "1.r1.json", "1.r2.json"]
    );
    let trusted = out.result.unwrap();
    assert!(trusted.delegations_truncated());
    assert_eq!(trusted.delegated().len(), 3);
    assert_eq!(trusted.find_target("fw/reachable.bin").unwrap().1, "r2");
    assert!(trusted.find_target("fw/deep.bin").is_none());
    // With the default bound the whole chain loads.
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(!trusted.delegations_truncated());
    assert_eq!(trusted.find_target("fw/deep.bin").unwrap().1, "r9");
}

#[test]
fn the_bound_also_caps_a_wide_fan_out() {
    let mut repo = Repo::new();
    for i in 0..50 {
        repo.delegate("targets", &format!("w{i:02}"), &["*"], false);
    }
    repo.publish();
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(
        delegated_requests(&out).len(),
        ClientLimits::default().max_delegated_roles as usize
    );
    assert!(out.result.unwrap().delegations_truncated());
}

#[test]
fn hash_prefix_delegations_select_by_digest() {
    let mut repo = Repo::new();
    repo.delegate("targets", "bin0", &[], false);
    let digest = hex::encode(Sha256::digest(b"fw/x.bin"));
    let role = &mut repo.targets.delegations.as_mut().unwrap().roles[0];
    role.paths = None;
    role.path_hash_prefixes = Some(vec![digest[..2].to_string()]);
    repo.add_target("bin0", "fw/x.bin", b"x", None);
    // A name whose digest starts otherwise is not this role's.
    let other = (0..)
        .map(|i| format!("fw/other{i}.bin"))
        .find(|n| !hex::encode(Sha256::digest(n.as_bytes())).starts_with(&digest[..2]))
        .unwrap();
    repo.add_target("bin0", &other, b"o", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert_eq!(trusted.find_target("fw/x.bin").unwrap().1, "bin0");
    assert!(trusted.find_target(&other).is_none());
}
