//! The example programs, as built by `cargo test`, run to the end: the gRPC example's
//! client meets every refusal as the expected `Status`, the hyper example's demo gets
//! every expected answer. Each exits non-zero on any surprise; the tests also read
//! what they printed. (The gateway binary is driven in `gateway.rs`.)

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// The example binary `cargo test` built beside this test binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    let binary = target
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test --workspace` builds the examples",
        binary.display()
    );
    binary
}

async fn run(name: &str, args: &[&str]) -> (Output, String, String) {
    let run = tokio::process::Command::new(binary(name))
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the example ran for two minutes")
        .unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(output.status.success(), "{name}: {stderr}");
    (output, stdout, stderr)
}

#[tokio::test]
async fn the_grpc_example_meets_each_refusal_as_a_status() {
    let (_, stdout, stderr) = run("grpc", &[]).await;
    for line in [
        "List with connector-7's certificate: OK, keys [\"default\"]",
        "Sign with connector-7's certificate: OK",
        "List without credentials: Unauthenticated \"unauthenticated:",
        "List with an approver's API key: PermissionDenied \"forbidden:",
        "List with a malformed API key: Unauthenticated \"malformed_api_key:",
        "List with a certificate no connector registered: Unauthenticated \"unknown_connector:",
        "List from a denied address: PermissionDenied \"ip_denied:",
        "Sign, the fourth call this minute: ResourceExhausted \"rate_limited:",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    // One audit event per call on stdout, the refusals named.
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(events.len(), 9, "{stdout}");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        [
            "unauthenticated",
            "forbidden",
            "malformed_api_key",
            "unknown_connector",
            "ip_denied",
            "rate_limited"
        ]
    );
    assert_eq!(events[0]["path"], "/portcullis.example.v1.Keys/List");
    assert_eq!(events[0]["principals"][0]["id"], "connector-7");
}

#[tokio::test]
async fn the_hyper_example_needs_no_axum() {
    let (_, stdout, stderr) = run("hyper", &["--demo"]).await;
    assert!(
        stderr.contains("GET /reports/q3 as the reader: 200 OK hello, reader-app"),
        "{stderr}"
    );
    assert!(
        stderr.contains("GET /admin/users as the reader: 403 Forbidden"),
        "{stderr}"
    );
    assert!(stderr.contains("sixth report this minute: 429"), "{stderr}");
    let events = stdout
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        .count();
    assert_eq!(events, 11, "{stdout}");
}
