//! `portcullis serve` as an operator runs it, through the built binary on loopback:
//! graceful shutdown under load (nothing in flight is cut, one audit line per answered
//! request, exit 0), a second signal, the exit codes, and the `[server]` limits on the
//! plain-HTTP path (slow and idle clients, 431 and 413 with problem+json, connections per
//! address, the probes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::gateway::cli_binary;

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-production-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `portcullis serve --config`.
struct Served {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr: Arc<std::sync::Mutex<String>>,
    /// Reads stderr until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    async fn start(dir: &Path, server: &str) -> Self {
        Self::start_with(dir, server, &[]).await
    }

    async fn start_with(dir: &Path, server: &str, args: &[&str]) -> Self {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[[layer]]\nkind = \"audit\"\ndirectory = \"audit\"\n"
        );
        std::fs::write(dir.join("gateway.toml"), config).unwrap();
        Self::spawn(&dir.join("gateway.toml"), args).await
    }

    /// `portcullis serve --config FILE ARGS…`, once it listens; its stderr is kept.
    async fn spawn(config: &Path, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(cli_binary())
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the gateway said nothing for a minute")
                .unwrap()
                .unwrap_or_else(|| panic!("the gateway exited: {}", stderr.lock().unwrap()));
            stderr.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(addr) = line.strip_prefix("gateway: listening on http://") {
                break addr.parse().unwrap();
            }
        };
        let log = stderr.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self {
            child,
            addr,
            stderr,
            reader: Some(reader),
        }
    }

    /// The address a line of the log names after `prefix`, if the gateway printed one.
    fn printed(&self, prefix: &str) -> Option<String> {
        self.log()
            .lines()
            .find_map(|line| line.strip_prefix(prefix).map(str::to_owned))
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([name, &self.child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, once the process has ended and its last lines are read.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running: {}", self.log()))
            .unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// The request events in `dir/audit`.
fn audited_requests(dir: &Path) -> Vec<Value> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir.join("audit")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        events.extend(
            text.lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .filter(|event| event.get("status").is_some()),
        );
    }
    events
}

/// Reads what the server sends until it closes the connection or 5 s pass.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// SIGTERM under load: a request whose body is still arriving finishes, new connections
/// are refused, keep-alive clients see their answers end with `connection: close`, the
/// process exits 0, and the audit files hold exactly one event per answered request,
/// in a chain that verifies.
#[tokio::test]
async fn sigterm_under_load_finishes_what_is_in_flight_and_audits_every_answer() {
    let dir = fresh_dir("graceful");
    let mut served = Served::start(&dir, "shutdown_grace = \"20s\"").await;
    let addr = served.addr;

    // A request in flight: its head and half its body are sent before the signal.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"PUT /v1/key/default/attributes HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"owner\":")
        .await
        .unwrap();

    // Load: keep-alive clients asking as fast as they can until the gateway is gone.
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let answered = answered.clone();
        let stop = stop.clone();
        let url = format!("http://{addr}/v1/key");
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(response) => {
                        assert_eq!(response.status(), 200);
                        if response.text().await.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Refused once the listener is closed: the gateway never saw it.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(answered.load(Ordering::Relaxed) > 0, "{}", served.log());

    served.signal("-TERM");
    // The listener closes: a new connection is refused.
    let refused = async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the listener still accepts after SIGTERM");
    // The request in flight is still served: the rest of its body, then its answer.
    slow.write_all(b"\"ops\"}").await.unwrap();
    let answer = read_all(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("{\"owner\":\"ops\"}"), "{answer}");

    let status = served.exit(Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(status.code(), Some(0), "{}", served.log());
    let log = served.log();
    assert!(log.contains("SIGTERM: shutting down gracefully"), "{log}");
    assert!(
        log.contains("0 cut") && log.contains("audit synced to disk"),
        "{log}"
    );

    // One audit event per answer: every answered request is on disk, and nothing the
    // clients did not get is claimed.
    let events = audited_requests(&dir);
    let answered = answered.load(Ordering::Relaxed) + 1;
    assert_eq!(events.len() as u64, answered, "{log}");
    assert!(events
        .iter()
        .any(|e| e["method"] == "PUT" && e["status"] == 200));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let verify = std::process::Command::new(cli_binary())
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second signal does not wait for the grace period: the process ends at once with 2.
#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let dir = fresh_dir("second");
    let mut served =
        Served::start_with(&dir, "shutdown_grace = \"60s\"", &["--log-format", "json"]).await;
    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(b"PUT /v1/key/default/attributes HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still waiting for the request in flight.
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "{}",
        served.log()
    );
    let started = Instant::now();
    served.signal("-INT");
    let status = served.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{}", served.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        served.log().contains("SIGINT again: stopping now"),
        "{}",
        served.log()
    );
    // With --log-format json the operational log is one JSON object per line.
    let log = served.log();
    let event = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["target"] == "portcullis::serve")
        .unwrap_or_else(|| panic!("no JSON line from portcullis::serve: {log}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert!(event["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("shutting down"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 1 for a configuration that is wrong (naming file, line and key), 2 for one that
/// cannot run (its address is taken).
#[tokio::test]
async fn the_exit_status_says_what_went_wrong() {
    let dir = fresh_dir("exit");
    // `portcullis serve --config NAME` on `text`: its exit status and stderr.
    let serve = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).unwrap();
        let output = std::process::Command::new(cli_binary())
            .args(["serve", "--config"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let (code, stderr) = serve(
        "typo.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timout = \"5s\"\n".into(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("typo.toml:3"), "{stderr}");
    assert!(stderr.contains("header_read_timout"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let (code, stderr) = serve("taken.toml", format!("[server]\nlisten = \"{address}\"\n"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");

    let output = std::process::Command::new(cli_binary())
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The plain-HTTP path has the same limits as TLS: trickled headers and idle clients
/// are closed while a normal client is served, heads and bodies over the limits get
/// problem+json, and an address holds at most its connections.
#[tokio::test]
async fn the_server_limits_hold_on_plain_http() {
    let dir = fresh_dir("limits");
    let served = Served::start(
        &dir,
        "health = true\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\nmax_headers = 20\nmax_header_bytes = 4096\nmax_body_bytes = 64\nmax_connections_per_address = 12\n[[server.body_limit]]\npath = \"/v1/sign\"\nmax_bytes = 16\n",
    )
    .await;
    let addr = served.addr;

    // Ten slowloris clients trickle a head that never ends; an idle one sends nothing.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /v1/key HTTP/1.1\r\nhost: g\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // A normal client is served meanwhile.
    let answer = reqwest::get(format!("http://{addr}/v1/key")).await.unwrap();
    assert_eq!(answer.status(), 200);
    for stream in &mut slow {
        let _ = stream.write_all(b"x-more: 1\r\n").await;
    }
    // Each is closed after the header timeout: the read ends (EOF or a 408).
    for mut stream in slow {
        let answer = read_all(&mut stream).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert_eq!(read_all(&mut idle).await, "");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The probes answer on the main listener with `health = true`.
    for probe in ["healthz", "readyz"] {
        let answer = reqwest::get(format!("http://{addr}/{probe}"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{probe}");
    }

    // 431 with problem+json: too many fields, and a head too large.
    let mut many = String::from("GET /v1/key HTTP/1.1\r\nhost: g\r\n");
    for index in 0..25 {
        many.push_str(&format!("x-field-{index}: 1\r\n"));
    }
    many.push_str("connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(many.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"too_many_headers\""), "{answer}");
    let big = format!(
        "GET /v1/key HTTP/1.1\r\nhost: g\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(5000)
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(big.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("\"code\":\"headers_too_large\""),
        "{answer}"
    );

    // 413 with problem+json over the default and over the route's own limit.
    let client = reqwest::Client::new();
    let put = client
        .put(format!("http://{addr}/v1/key/default/attributes"))
        .header("content-type", "application/json")
        .body(format!("{{\"a\":\"{}\"}}", "x".repeat(100)))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 413);
    assert!(put
        .text()
        .await
        .unwrap()
        .contains("\"code\":\"body_too_large\""));
    let fits = client
        .put(format!("http://{addr}/v1/key/default/attributes"))
        .header("content-type", "application/json")
        .body("{\"a\":\"b\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    let sign = client
        .post(format!("http://{addr}/v1/sign"))
        .header("content-type", "application/json")
        .body("{\"key\":\"default\",\"data\":\"aGVsbG8=\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(sign.status(), 413, "the route's own limit is 16 bytes");

    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Twelve connections from 127.0.0.1 at most: the thirteenth is closed at once,
    // and one more is accepted when one of the twelve ends.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(b"GET /v1/key HTTP/1.1\r\nhost: g\r\n\r\n")
        .await;
    assert_eq!(read_all(&mut over).await, "");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET /v1/key HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut again).await.starts_with("HTTP/1.1 200"));
    assert!(
        served.log().contains("the address holds its maximum"),
        "{}",
        served.log()
    );

    // A flood of refusals is logged once a second, with the count held back. The
    // twelve places are taken afresh (the idle ones close after a second).
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flood = Instant::now();
    for _ in 0..30 {
        let mut over = TcpStream::connect(addr).await.unwrap();
        let _ = over.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(read_all(&mut over).await, "");
    }
    let seconds = flood.elapsed().as_secs() + 2;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = served.log();
    let lines = log.matches("the address holds its maximum").count() as u64;
    assert!(lines <= seconds + 1, "{lines} lines in {seconds} s: {log}");
    assert!(log.contains("held_back"), "{log}");
    drop(held);
    drop(served);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve --check` builds what `serve` would, lints the role tables and exits without
/// listening: 0 for a valid file, 1 for a dead rule with `--deny-warnings`, 1 for a
/// file that names a missing policy. The shipped example, as `--dev` writes it, is clean.
#[tokio::test]
async fn serve_check_validates_without_listening() {
    let dir = fresh_dir("check");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listen.local_addr().unwrap();
    // The address is taken: a check does not care, it never listens.
    std::fs::write(
        dir.join("gateway.toml"),
        format!("[server]\nlisten = \"{taken}\"\n\n[[layer]]\nkind = \"role-router\"\npolicy = \"policy.toml\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"all keys\"\npath = \"/v1/key/**\"\npublic = true\n\n[[rule]]\nname = \"one key\"\npath = \"/v1/key/default\"\npublic = true\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        let mut command = std::process::Command::new(cli_binary());
        command
            .args(["serve", "--check", "--config"])
            .arg(dir.join("gateway.toml"))
            .args(extra);
        command.output().unwrap()
    };
    let output = check(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.contains("valid: layers [\"role-router\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule \"one key\" (line 6) can never match"),
        "{stdout}"
    );
    assert!(stdout.contains("2 rules, 1 warning(s)"), "{stdout}");
    assert_eq!(check(&["--deny-warnings"]).status.code(), Some(1));

    std::fs::remove_file(dir.join("policy.toml")).unwrap();
    let output = check(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("policy.toml"), "{stderr}");

    let output = std::process::Command::new(cli_binary())
        .args(["serve", "--dev", "--check", "--deny-warnings", "--dir"])
        .arg(dir.join("dev"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    drop(listen);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[metrics]`: Prometheus text on a listener of its own; requests by status class and
/// their latency, refusals by layer and code, and audit records written move with real
/// requests through the built binary.
#[tokio::test]
async fn metrics_are_scraped_and_move_with_requests() {
    let dir = fresh_dir("metrics");
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"audit\"\ndirectory = \"audit\"\n\n[[layer]]\nkind = \"role-router\"\ndefault = \"deny\"\n[[layer.rule]]\npath = \"/v1/key/**\"\npublic = true\n";
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    let served = Served::spawn(&dir.join("gateway.toml"), &[]).await;
    let main = served.addr;
    let metrics = served
        .printed("gateway: metrics on http://")
        .expect("no metrics address printed")
        .trim_end_matches("/metrics")
        .to_owned();
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let answer = client
            .get(format!("http://{main}/v1/key"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    for _ in 0..2 {
        let answer = client
            .get(format!("http://{main}/v1/approval"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403);
    }
    // The main listener does not serve /metrics.
    let answer = client
        .get(format!("http://{main}/metrics"))
        .send()
        .await
        .unwrap();
    assert_ne!(answer.status(), 200);

    let scrape = || async {
        let answer = client
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap()
    };
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    };
    // The audit writer reports once per batch: wait for it.
    let mut text = scrape().await;
    for _ in 0..50 {
        if value(&text, "portcullis_audit_records_written_total").unwrap_or(0.0) >= 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape().await;
    }
    assert_eq!(
        value(&text, "portcullis_requests_total{status=\"2xx\"}"),
        Some(3.0),
        "{text}"
    );
    // /metrics on the main listener is refused by the role table like any other route.
    assert_eq!(
        value(&text, "portcullis_requests_total{status=\"4xx\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "portcullis_refusals_total{layer=\"role-router\",code=\"forbidden\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "portcullis_allowed_total{layer=\"role-router\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.contains("portcullis_request_duration_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    assert_eq!(
        value(&text, "portcullis_request_duration_seconds_count"),
        Some(6.0),
        "{text}"
    );
    assert!(
        value(&text, "portcullis_audit_records_written_total").unwrap() >= 6.0,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts `portcullis serve` on a copy of a shipped example whose `listen` is moved to
/// a free port.
async fn serve_example(dir: &Path, example: &str) -> Served {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(example),
    )
    .unwrap()
    .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    Served::spawn(&dir.join("gateway.toml"), &[]).await
}

/// examples/gateway-strict-quota.toml: 25 calls per key in a fixed 5-minute window,
/// the 26th refused with 429 and a Retry-After within the window; another key has its
/// own 25.
#[tokio::test]
async fn the_strict_quota_example_allows_25_calls_per_key_and_window() {
    let dir = fresh_dir("strict");
    let new_key = |owner: &str| {
        let output = std::process::Command::new(cli_binary())
            .args(["key", "new", "--file"])
            .arg(dir.join("api-keys.toml"))
            .args(["--owner", owner])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout
            .split_whitespace()
            .find(|word| word.starts_with("pck_"))
            .unwrap_or_else(|| panic!("no key in {stdout}"))
            .to_owned()
    };
    let (first, second) = (new_key("first"), new_key("second"));
    let served = serve_example(&dir, "gateway-strict-quota.toml").await;
    let addr = served.addr;
    let client = reqwest::Client::new();
    let call = |key: &str| {
        client
            .get(format!("http://{addr}/v1/key"))
            .header("x-api-key", key)
            .send()
    };
    for n in 1..=25 {
        assert_eq!(call(&first).await.unwrap().status(), 200, "call {n}");
    }
    let refused = call(&first).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("\"code\":\"rate_limited\""));
    assert_eq!(call(&second).await.unwrap().status(), 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// examples/gateway-behind-envoy.toml: a certificate forwarded by the trusted proxy in
/// XFCC names its connector; without it, with a certificate of another CA, or with the
/// header from a client that is not the proxy, nothing passes.
#[tokio::test]
async fn the_envoy_example_believes_the_proxys_certificate_only() {
    use portcullis::mtls_identity::DevPki;
    let dir = fresh_dir("envoy");
    let pki = DevPki::generate(&["localhost"]).unwrap();
    let reader = pki.client("connector-7").unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(
        dir.join("connectors.toml"),
        format!(
            "[[connector]]\nid = \"connector-7\"\nroles = [\"key-reader\"]\nthumbprints = [\"{}\"]\n",
            reader.thumbprint()
        ),
    )
    .unwrap();
    let served = serve_example(&dir, "gateway-behind-envoy.toml").await;
    let addr = served.addr;
    let xfcc = |pem: &str| {
        format!(
            "Cert=\"{}\"",
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    let client = reqwest::Client::new();
    let get = |headers: Vec<(&'static str, String)>| {
        let mut request = client.get(format!("http://{addr}/v1/key"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let ok = get(vec![("x-forwarded-client-cert", xfcc(reader.cert_pem()))])
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(get(vec![]).await.unwrap().status(), 401);
    // A certificate of another CA: the gateway verifies it itself.
    let other = DevPki::generate(&["localhost"])
        .unwrap()
        .client("connector-7")
        .unwrap();
    let refused = get(vec![("x-forwarded-client-cert", xfcc(other.cert_pem()))])
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // The same good header from an address that is not the proxy: removed, unheard.
    let stranger = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let unheard = stranger
        .get(format!("http://{addr}/v1/key"))
        .header("x-forwarded-client-cert", xfcc(reader.cert_pem()))
        .send()
        .await
        .unwrap();
    assert_eq!(unheard.status(), 401);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `portcullis serve --dev`: every `curl` command it prints does what the line above it
/// says, run as curl would run it (its certificates, headers, method and body). The
/// example upstream sees the caller the gateway established, never the client's own
/// `x-caller-id`, and a verified assertion; around the gateway it refuses.
#[tokio::test]
async fn the_development_setup_prints_commands_that_work() {
    let dir = fresh_dir("dev");
    // The development setup keeps a file that exists: the example's, on a free port.
    let config = include_str!("../../examples/gateway.toml")
        .replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    let mut child = tokio::process::Command::new(cli_binary())
        .args(["serve", "--dev", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
            .await
            .expect("the gateway said nothing for a minute")
            .unwrap()
            .expect("the gateway exited before listening");
        if let Some(addr) = line.strip_prefix("gateway: listening on https://") {
            break addr.parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    // The printed sections, each a heading and its commands, up to the blank line.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    loop {
        let line = stdout.next_line().await.unwrap().unwrap();
        if line.is_empty() && !sections.is_empty() {
            break;
        }
        match line.strip_prefix("  curl ") {
            Some(command) => sections.last_mut().unwrap().1.push(command.to_owned()),
            None if !line.is_empty() => sections.push((line, Vec::new())),
            None => {}
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let headings: Vec<&str> = sections.iter().map(|(h, _)| &h[..12]).collect();
    assert_eq!(
        headings,
        [
            "Try (each su",
            "Refused (401",
            "Through the ",
            "Refused (401"
        ],
        "{sections:?}"
    );
    let counts: Vec<usize> = sections.iter().map(|(_, c)| c.len()).collect();
    assert_eq!(counts, [4, 1, 3, 1], "{sections:?}");

    for (heading, commands) in &sections {
        for command in commands {
            let (status, body) = run_curl(command, addr).await;
            let said = format!("{heading}\n  curl {command}\n-> {status} {body}");
            if heading.starts_with("Try") {
                assert!(status.is_success(), "{said}");
            } else if heading.starts_with("Refused") {
                assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{said}");
            } else {
                assert_eq!(status, reqwest::StatusCode::OK, "{said}");
                let echo: Value = serde_json::from_str(&body).unwrap();
                let caller = &echo["identity_headers"];
                let (id, roles) = match command.contains("x-api-key") {
                    true => ("partner-acme", "key-admin"),
                    false => ("connector-7", "signer,key-reader"),
                };
                assert_eq!(caller["x-caller-id"], id, "{said}");
                assert_eq!(caller["x-caller-roles"], roles, "{said}");
                assert_eq!(caller["x-caller-ip"], "127.0.0.1", "{said}");
                assert_eq!(echo["verified_assertion"]["id"], id, "{said}");
                assert_eq!(echo["x-forwarded-for"], "127.0.0.1", "{said}");
                assert_eq!(
                    echo["credentials_received"],
                    serde_json::json!([]),
                    "{said}"
                );
                // The route strips its prefix.
                assert!(
                    echo["path"].as_str().unwrap().starts_with("/orders"),
                    "{said}"
                );
            }
        }
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends what `curl ARGS` would send (the options the gateway prints: `--cacert`,
/// `--cert`, `-H`, `-X`, `-d`), `localhost` being `addr`; the status and the body.
async fn run_curl(args: &str, addr: SocketAddr) -> (reqwest::StatusCode, String) {
    let words = shlex::split(args).expect("a command a shell can read");
    let mut words = words.into_iter();
    let mut client = reqwest::Client::builder().resolve("localhost", addr);
    let mut method = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut url = None;
    while let Some(word) = words.next() {
        let mut value = || words.next().expect("an option without its value");
        match word.as_str() {
            "--cacert" => {
                let pem = std::fs::read(value()).unwrap();
                client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
            }
            "--cert" => {
                let pem = std::fs::read(value()).unwrap();
                client = client.identity(reqwest::Identity::from_pem(&pem).unwrap());
            }
            "-H" => {
                let header = value();
                let (name, text) = header.split_once(':').unwrap();
                headers.push((name.trim().to_owned(), text.trim().to_owned()));
            }
            "-X" => method = Some(value()),
            "-d" => body = Some(value()),
            option if option.starts_with('-') => panic!("curl option {option} not known here"),
            _ => url = Some(word),
        }
    }
    // curl's `-d` posts a form unless told otherwise.
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_owned());
    let mut request = client.build().unwrap().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        url.expect("a URL"),
    );
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        request = request.body(body);
    }
    for (name, text) in headers {
        request = request.header(name, text);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    (status, answer.text().await.unwrap())
}
