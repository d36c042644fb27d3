//! `portcullis policy check` and `portcullis policy explain`, run as a user would.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn hsm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/policies/hsm.toml")
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_hsm_policy() {
    let out = portcullis(&["policy", "check", hsm().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).ends_with("7 rules, 0 warning(s)\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_reports_shadowed_rules_and_bad_lines() {
    let shadowed = temp_file(
        "shadowed.toml",
        "[[rule]]\nname = \"all keys\"\npath = \"/v1/key/**\"\nauthenticated = true\n\n[[rule]]\nname = \"one key\"\npath = \"/v1/key/{id}\"\npublic = true\n",
    );
    let out = portcullis(&["policy", "check", shadowed.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(
            "warning: rule \"one key\" (line 6) can never match: rule \"all keys\" (line 1)"
        ),
        "{}",
        stdout(&out)
    );
    let strict = portcullis(&[
        "policy",
        "check",
        "--deny-warnings",
        shadowed.to_str().unwrap(),
    ]);
    assert_eq!(strict.status.code(), Some(1));

    let broken = temp_file("broken.toml", "[[rule]]\npath = \"/a\"\npublik = true\n");
    let out = portcullis(&["policy", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("broken.toml:3:") && stderr.contains("publik"),
        "{stderr}"
    );

    let missing = portcullis(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn explain_names_the_rule_and_the_decision() {
    let file = hsm();
    let file = file.to_str().unwrap();
    let out = portcullis(&[
        "policy",
        "explain",
        file,
        "PUT",
        "/v1/key/k1/attributes",
        "--role",
        "key-admin",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "rule:     \"key attributes (write)\" (line 22): PUT,PATCH /v1/key/**/attributes"
        ),
        "{text}"
    );
    assert!(text.contains("decision: allow"), "{text}");

    let out = portcullis(&[
        "policy",
        "explain",
        file,
        "POST",
        "/v1/key/k1/sign",
        "--auth",
        "jwt",
        "--role",
        "signer",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("decision: deny 401 unauthenticated"),
        "{}",
        stdout(&out)
    );

    let out = portcullis(&[
        "policy",
        "explain",
        file,
        "POST",
        "/v1/key/k1/sign",
        "--auth",
        "jwt",
        "--auth",
        "certificate",
        "--role",
        "signer",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    let out = portcullis(&[
        "policy",
        "explain",
        file,
        "GET",
        "/v1/user/u1",
        "--role",
        "key-admin",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("decision: deny 403 forbidden: a required role is missing"));

    let out = portcullis(&["policy", "explain", file, "GET", "/elsewhere"]);
    assert!(
        stdout(&out).contains("rule:     none matches"),
        "{}",
        stdout(&out)
    );

    let out = portcullis(&["policy", "explain", file, "GET", "/v1/key/../user"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("deny 400 ambiguous_path"));

    let out = portcullis(&[
        "policy", "explain", file, "GET", "/v1/key", "--auth", "password",
    ]);
    assert_eq!(out.status.code(), Some(1));
}
