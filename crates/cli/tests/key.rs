//! `portcullis key new | list | revoke`, run as a user would, checked against the
//! api-key crate's own reading of the file.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

use portcullis_api_key::{FileKeyStore, KeyPrefix, PresentedKey};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

fn key_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn new_prints_the_secret_once_and_stores_only_its_digest() {
    let file = key_file("new.toml");
    let path = file.to_str().unwrap();
    let out = portcullis(&[
        "key",
        "new",
        "--file",
        path,
        "--owner",
        "partner-acme",
        "--roles",
        "reader,ops",
        "--expires",
        "90d",
        "--networks",
        "203.0.113.0/24",
        "--tier",
        "gold",
        "--label",
        "ticket=OPS-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let secret = text(&out.stdout).trim().to_owned();
    let presented = PresentedKey::parse(&KeyPrefix::default(), &secret).unwrap();
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        !stored.contains(&secret[secret.len() - 38..]),
        "the file holds the secret"
    );

    let store = FileKeyStore::open(&file).unwrap();
    let key = store.get(presented.id()).unwrap();
    assert!(key.record().digest().matches(presented.digest()));
    assert_eq!(key.record().owner(), "partner-acme");
    assert_eq!(key.record().role_list(), ["reader", "ops"]);
    assert_eq!(key.record().tier_name(), Some("gold"));
    assert!(key.record().expires_at().is_some());
    assert!(key.record().network_set().is_some());

    // A second key for the same owner (rotation) appends; both are listed.
    let out = portcullis(&[
        "key",
        "new",
        "--file",
        path,
        "--owner",
        "partner-acme",
        "--id",
        "acme-2027",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = portcullis(&["key", "list", "--file", path]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains(presented.id()) && listing.contains("acme-2027"),
        "{listing}"
    );
    assert!(listing.contains("active until"), "{listing}");
    assert!(!listing.contains("sha256"), "{listing}");
}

/// Makes a key of owner `o` for each id in the file at `path`.
fn new_keys(path: &str, ids: &[&str]) {
    for id in ids {
        let out = portcullis(&["key", "new", "--file", path, "--owner", "o", "--id", id]);
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn revoke_marks_the_key_and_a_reload_sees_it() {
    let file = key_file("revoke.toml");
    let path = file.to_str().unwrap();
    new_keys(path, &["old", "new"]);
    let store = FileKeyStore::open(&file).unwrap();
    assert!(!store.get("old").unwrap().is_revoked());
    let out = portcullis(&["key", "revoke", "--file", path, "old"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(store.reload().unwrap(), 2);
    assert!(store.get("old").unwrap().is_revoked());
    assert!(!store.get("new").unwrap().is_revoked());

    let out = portcullis(&["key", "revoke", "--file", path, "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no key with the id \"missing\""));
}

/// Revoking edits the one key in place: the operator's comments, blank lines and the
/// order of keys survive, and only `revoked` changes.
#[test]
fn revoke_keeps_the_files_comments_and_layout() {
    let file = key_file("commented.toml");
    let path = file.to_str().unwrap();
    new_keys(path, &["old", "new"]);
    let written = std::fs::read_to_string(&file).unwrap();
    let commented = format!(
        "# Partner keys. Ticket OPS-1234.\n\n{}",
        written.replacen("owner = \"o\"", "owner = \"o\"   # rotate by 2027", 1)
    );
    std::fs::write(&file, &commented).unwrap();
    let out = portcullis(&["key", "revoke", "--file", path, "new"]);
    assert!(out.status.success(), "{out:?}");
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(
        after.starts_with("# Partner keys. Ticket OPS-1234.\n\n[[key]]\nid = \"old\""),
        "{after}"
    );
    assert!(
        after.contains("owner = \"o\"   # rotate by 2027"),
        "{after}"
    );
    assert_eq!(after.matches("revoked = true").count(), 1, "{after}");
    // Nothing else changed: removing the one new line gives the file back.
    assert_eq!(after.replacen("revoked = true\n", "", 1), commented);
    let store = FileKeyStore::open(&file).unwrap();
    assert!(store.get("new").unwrap().is_revoked());
    assert!(!store.get("old").unwrap().is_revoked());

    // A file with an error is refused, not rewritten.
    std::fs::write(
        &file,
        "[[key]]\nid = \"x\"\nexpire = \"2027-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    let out = portcullis(&["key", "revoke", "--file", path, "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[[key]]\nid = \"x\"\nexpire = \"2027-01-01T00:00:00Z\"\n"
    );
}

#[test]
fn bad_arguments_are_refused_and_nothing_is_written() {
    let file = key_file("bad.toml");
    let path = file.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--expires", "someday"], "--expires"),
        // A duration too far away to add to the clock used to panic.
        (
            &["--expires", "500000000000y"],
            "further away than any time",
        ),
        (&["--networks", "10.0.0.1/8"], "--networks"),
        (&["--id", "a b"], "key id"),
        (&["--prefix", "Bad"], "--prefix"),
        (&["--label", "novalue"], "NAME=VALUE"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["key", "new", "--file", path, "--owner", "o"];
        args.extend_from_slice(extra);
        let out = portcullis(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(
            text(&out.stderr).contains(expected),
            "{extra:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "no secret for a refused key");
    }
    assert!(!file.exists());
    assert!(
        portcullis(&["key", "new", "--file", path, "--owner", "o", "--id", "k"])
            .status
            .success()
    );
    let out = portcullis(&["key", "new", "--file", path, "--owner", "o", "--id", "k"]);
    assert!(text(&out.stderr).contains("already has a key"), "{out:?}");
}
