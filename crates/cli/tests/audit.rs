//! `portcullis audit verify` on a log written by the audit layer's file sink, intact
//! and after an edit, a deletion and a reordering.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use http::Request;
use portcullis_audit::{AuditLayer, FileSink, Rotation};
use tower::{service_fn, Layer, ServiceExt};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A log of `count` real audit events.
fn write_log(name: &str, count: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-cli-audit-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let sink = FileSink::builder(&dir)
        .rotation(Rotation::Never)
        .hash_chain(true)
        .build()
        .unwrap();
    let layer = AuditLayer::new().tracing_event(false).sink(sink.clone());
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    }));
    for i in 0..count {
        let request = Request::get(format!("/v1/item/{i}")).body(()).unwrap();
        futures::executor::block_on(service.clone().oneshot(request)).unwrap();
    }
    sink.flush();
    sink.path().to_owned()
}

fn edit_lines(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    change(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn verify(path: &Path) -> Output {
    portcullis(&["audit", "verify", path.to_str().unwrap()])
}

#[test]
fn an_intact_log_verifies() {
    let path = write_log("intact", 5);
    let out = verify(&path);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("5 records, chain intact"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn edits_deletions_and_reorderings_are_reported_at_their_line() {
    let path = write_log("edited", 5);
    edit_lines(&path, |lines| {
        lines[1] = lines[1].replace("/v1/item/1", "/v1/item/9")
    });
    let out = verify(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(":2: the record was edited"),
        "{}",
        text(&out.stdout)
    );

    let path = write_log("deleted", 5);
    edit_lines(&path, |lines| {
        lines.remove(2);
    });
    let out = verify(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(":3: the chain is broken here"),
        "{}",
        text(&out.stdout)
    );

    // The moved-up record could continue an earlier file; the one after it cannot
    // follow it.
    let path = write_log("reordered", 5);
    edit_lines(&path, |lines| lines.swap(0, 1));
    let out = verify(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(":2: the chain is broken here"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = portcullis(&["audit", "verify", "/nonexistent/audit.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"));
}
