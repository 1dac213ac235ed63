//! Path traversal: target names and role names come from metadata and end up in URLs and
//! file paths. A signed name like `../../etc/passwd` is valid TUF, so the refusal is
//! `TargetName`'s job; role names are percent-encoded into a single URL segment.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::ClientLimits;
use ota_common::target::{percent_encode, TargetName, TargetNameError, MAX_TARGET_NAME};
use support::repo::{now, Repo};

fn refused(name: &str) -> &'static str {
    match TargetName::new(name) {
        Err(TargetNameError { name: n, reason }) => {
            assert_eq!(n, name);
            reason
        }
        Ok(ok) => panic!("{ok:?} accepted"),
    }
}

#[test]
fn traversal_names_are_refused_with_the_reason() {
    let cases = [
        ("../../etc/passwd", "dot path component"),
        ("..", "dot path component"),
        ("fw/../../etc/shadow", "dot path component"),
        ("fw/./img.bin", "dot path component"),
        ("fw/..", "dot path component"),
        ("/etc/passwd", "absolute path"),
        ("//server/share", "absolute path"),
        ("..\\..\\windows\\system32", "backslash"),
        ("fw\\img.bin", "backslash"),
        ("fw//img.bin", "empty path component"),
        ("fw/", "empty path component"),
        ("", "empty"),
        ("fw/img\0.bin", "control character"),
        ("fw/img\n.bin", "control character"),
        ("fw/\u{7f}", "control character"),
    ];
    for (name, reason) in cases {
        assert_eq!(refused(name), reason, "{name:?}");
    }
    assert_eq!(refused(&"a".repeat(MAX_TARGET_NAME + 1)), "too long");
}

#[test]
fn ordinary_names_with_dots_are_accepted() {
    for name in [
        "fw/v1.2/img.bin",
        "a..b",
        "...",
        ".hidden",
        "fw/app 1.bin",
        "é/ü.bin",
        &"a".repeat(MAX_TARGET_NAME),
    ] {
        assert_eq!(TargetName::new(name).unwrap().as_str(), name);
    }
}

#[test]
fn a_signed_traversal_name_passes_tuf_but_not_target_name() {
    // The repository (or a compromised targets key) lists a traversal name: TUF verifies the
    // metadata, and the name is still refused before it becomes a path or URL.
    let mut repo = Repo::new();
    repo.add_target("targets", "../../etc/passwd", b"root::0:0::/:/bin/sh", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(trusted.find_target("../../etc/passwd").is_some());
    let unsafe_names: Vec<&str> = trusted
        .all_targets()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| TargetName::new(n).is_err())
        .collect();
    assert_eq!(unsafe_names, ["../../etc/passwd"]);
}

#[test]
fn consistent_paths_of_accepted_names_stay_below_targets() {
    let sha = "ab".repeat(32);
    for name in [
        "fw/img.bin",
        "a..b/..c",
        "x/y/z.bin",
        "sp ace/%2e%2e/q?.bin",
        "...",
        "é.bin",
    ] {
        let path = TargetName::new(name).unwrap().consistent_path(&sha);
        assert!(!path.starts_with('/'), "{path}");
        assert!(!path.contains('\\'), "{path}");
        for part in path.split('/') {
            assert!(
                !part.is_empty() && part != "." && part != "..",
                "{name:?} -> {path}"
            );
        }
        // Components are kept, only the last is hash-prefixed.
        assert_eq!(path.split('/').count(), name.split('/').count());
        assert!(path.rsplit('/').next().unwrap().starts_with(&sha));
    }
    // A literal "%2e%2e" is encoded again ("%252e"), so no later decoding turns it into "..".
    let path = TargetName::new("a/%2e%2e/b").unwrap().consistent_path(&sha);
    assert!(path.contains("%252e%252e"), "{path}");
}

#[test]
fn delegated_role_names_become_one_url_segment() {
    let evil = "../../etc/evil";
    let mut repo = Repo::new();
    repo.delegate("targets", evil, &["fw/*"], false);
    repo.add_target(evil, "fw/x.bin", b"x", None);
    repo.publish();
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    let fetched: Vec<&str> = out.files();
    let role_file = format!("1.{}.json", percent_encode(evil));
    assert!(fetched.contains(&role_file.as_str()), "{fetched:?}");
    for f in &fetched {
        assert!(!f.contains('/') && !f.contains('\\'), "{f}");
    }
    // The role still works as a role: its own name is only used in the snapshot's meta.
    assert_eq!(out.result.unwrap().find_target("fw/x.bin").unwrap().1, evil);
}

#[test]
fn percent_encoding_leaves_only_unreserved_characters() {
    let all: String = (1u8..=127).map(char::from).collect::<String>() + "é/\\";
    let enc = percent_encode(&all);
    assert!(
        enc.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "{enc}"
    );
    assert!(!enc.contains('/'));
}
