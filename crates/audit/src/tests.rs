//! The layer's events for every way a request can end, levels, request ids, and the
//! file sink's rotation, overflow modes and hash chain.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use portcullis_core::{AuditNote, AuditRecord, Decision, Denial, PeerAddr};
use serde_json::Value;
use tower::{service_fn, Layer, Service, ServiceExt};

use crate::*;

type Inner = tower::util::BoxCloneService<Request<()>, Response<()>, &'static str>;

/// An inner service that behaves as the request's path says.
fn inner() -> Inner {
    tower::util::BoxCloneService::new(service_fn(|request: Request<()>| async move {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            "/deny" => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::allow("api-key")
                        .principal_id("partner")
                        .credential_id("key-1")
                });
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new("role-router", Decision::Deny)
                        .code("forbidden")
                        .rule("admin routes")
                        .detail("a required role is missing")
                });
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::FORBIDDEN;
                response
                    .extensions_mut()
                    .insert(Denial::new("role-router", "forbidden"));
                Ok(response)
            }
            "/error" => Err("database unreachable"),
            "/panic" => panic!("the handler panicked"),
            _ => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::allow("api-key")
                        .principal_id("partner")
                        .credential_id("key-1")
                });
                AuditRecord::note(request.extensions(), || {
                    AuditNote::allow("role-router").rule("reads")
                });
                let id = request.headers().get("x-request-id").cloned();
                let mut response = Response::new(());
                if let Some(id) = id {
                    response.headers_mut().insert("x-seen-request-id", id);
                }
                Ok(response)
            }
        }
    }))
}

fn run(layer: &AuditLayer, request: Request<()>) -> Result<Response<()>, &'static str> {
    futures::executor::block_on(layer.layer(inner()).oneshot(request))
}

fn get(path: &str) -> Request<()> {
    let mut request = Request::get(path)
        .header("user-agent", "curl/8.5")
        .header("x-api-key", "pck_secret-that-must-not-appear")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr("192.0.2.7:5000".parse().unwrap()));
    request
}

fn quiet(sink: &MemorySink) -> AuditLayer {
    AuditLayer::new().tracing_event(false).sink(sink.clone())
}

#[test]
fn an_allowed_request_says_who_what_where() {
    let sink = MemorySink::new();
    let response = run(&quiet(&sink), get("/v1/key/k1?page=2")).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let event = &sink.events()[0];
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["method"], "GET");
    assert_eq!(event["path"], "/v1/key/k1");
    assert!(event.get("query").is_none(), "no query unless asked");
    assert_eq!(event["client_ip"], "192.0.2.7");
    assert_eq!(event["route"], "reads");
    assert_eq!(
        event["principals"][0],
        serde_json::json!({"layer": "api-key", "id": "partner", "credential": "key-1"})
    );
    assert_eq!(event["status"], 200);
    assert_eq!(event["user_agent"], "curl/8.5");
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert!(event["latency_us"].is_u64());
    assert!(!sink.lines()[0].contains("pck_secret"));
}

#[test]
fn a_refusal_names_the_layer_the_code_and_the_rule() {
    let sink = MemorySink::new();
    run(&quiet(&sink), get("/deny")).unwrap();
    let event = &sink.events()[0];
    assert_eq!(event["decision"], "deny");
    assert_eq!(event["refused_by"], "role-router");
    assert_eq!(event["reason"], "forbidden");
    assert_eq!(event["route"], "admin routes");
    assert_eq!(event["status"], 403);
    assert_eq!(event["notes"][1]["detail"], "a required role is missing");
}

#[test]
fn errors_panics_and_dropped_requests_are_audited() {
    let sink = MemorySink::new();
    let layer = quiet(&sink);
    assert!(run(&layer, get("/error")).is_err());

    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&layer, get("/panic"))));
    assert!(panicked.is_err());

    // A request whose future is dropped before it finishes (a client that went away).
    let mut service = layer.layer(tower::util::BoxCloneService::new(service_fn(
        |_: Request<()>| std::future::pending::<Result<Response<()>, &'static str>>(),
    )));
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut future = pin!(service.call(get("/slow")));
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }

    let decisions: Vec<Value> = sink
        .events()
        .iter()
        .map(|e| e["decision"].clone())
        .collect();
    assert_eq!(decisions, ["error", "panicked", "dropped"]);
    assert!(sink.events().iter().all(|e| e["status"].is_null()));
}

#[test]
fn levels_choose_which_requests_are_recorded() {
    let sink = MemorySink::new();
    let refusals = quiet(&sink).level(AuditLevel::RefusalsOnly);
    run(&refusals, get("/ok")).unwrap();
    run(&refusals, get("/deny")).unwrap();
    let _ = run(&refusals, get("/error"));
    assert_eq!(sink.events().len(), 2);

    sink.clear();
    let sampled = quiet(&sink).level(AuditLevel::RefusalsAndSample { one_in: 3 });
    for _ in 0..9 {
        run(&sampled, get("/ok")).unwrap();
    }
    run(&sampled, get("/deny")).unwrap();
    let events = sink.events();
    assert_eq!(
        events.iter().filter(|e| e["decision"] == "allow").count(),
        3
    );
    assert_eq!(events.iter().filter(|e| e["decision"] == "deny").count(), 1);
}

#[test]
fn request_ids_are_taken_or_generated_and_returned() {
    let sink = MemorySink::new();
    let layer = quiet(&sink);
    let mut request = get("/ok");
    request
        .headers_mut()
        .insert("x-request-id", "abc-123".parse().unwrap());
    let response = run(&layer, request).unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");

    let response = run(&layer, get("/ok")).unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.headers()["x-seen-request-id"],
        generated.as_str(),
        "the service sees it"
    );
    let second = run(&layer, get("/ok")).unwrap().headers()["x-request-id"].clone();
    assert_ne!(second, generated.as_str());

    // An unusable id is replaced, not recorded.
    let mut request = get("/ok");
    request
        .headers_mut()
        .insert("x-request-id", "bad id \"quoted\"".parse().unwrap());
    run(&layer, request).unwrap();
    let ids: Vec<Value> = sink
        .events()
        .iter()
        .map(|e| e["request_id"].clone())
        .collect();
    assert_eq!(ids[0], "abc-123");
    assert!(!ids[3].as_str().unwrap().contains("bad"));
}

#[test]
fn query_strings_only_on_request_and_redacted() {
    let sink = MemorySink::new();
    let layer = quiet(&sink).log_query(true).redact_query_keys(["Session"]);
    run(
        &layer,
        get("/ok?page=2&api_key=pck_live&session=s3cr3t&token=t"),
    )
    .unwrap();
    let event = &sink.events()[0];
    assert_eq!(
        event["query"],
        "page=2&api_key=REDACTED&session=REDACTED&token=REDACTED"
    );
    assert!(!sink.lines()[0].contains("s3cr3t"));
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_tracing_event_has_target_portcullis_audit_and_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_target(true)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        run(&AuditLayer::new(), get("/ok")).unwrap();
        run(&AuditLayer::new(), get("/deny")).unwrap();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(" INFO portcullis::audit:") && lines[0].contains("decision=\"allow\""),
        "{text}"
    );
    assert!(
        lines[1].contains(" WARN portcullis::audit:") && lines[1].contains("reason=\"forbidden\""),
        "{text}"
    );
    assert!(
        lines[0].contains("principals=api-key:partner(key-1)"),
        "{text}"
    );
    assert!(!text.contains("pck_secret"));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record_many(sink: &FileSink, count: usize) {
    let layer = AuditLayer::new().tracing_event(false).sink(sink.clone());
    for _ in 0..count {
        run(&layer, get("/ok")).unwrap();
    }
}

#[test]
fn size_rotation_keeps_whole_records_and_one_chain_across_files() {
    let dir = temp_dir("size");
    let sink = FileSink::builder(&dir)
        .rotation(Rotation::Size(2_000))
        .hash_chain(true)
        .build()
        .unwrap();
    record_many(&sink, 20);
    sink.flush();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &dir.join("audit.jsonl"))
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 3, "{rotated:?}");
    let mut all = rotated.clone();
    all.push(dir.join("audit.jsonl"));
    let mut records = 0;
    for path in &all {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.len() <= 2_000 || text.lines().count() == 1,
            "{path:?} too big"
        );
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["decision"], "allow");
            records += 1;
        }
    }
    assert_eq!(records, 20);
    let report = verify_files(&all).unwrap();
    assert_eq!((report.records, report.starts_from), (20, GENESIS));

    // A new sink on the same files continues the chain.
    drop(sink);
    let again = FileSink::builder(&dir)
        .rotation(Rotation::Size(1_000_000))
        .hash_chain(true)
        .build()
        .unwrap();
    record_many(&again, 2);
    again.flush();
    assert_eq!(verify_files(&all).unwrap().records, 22);
}

#[test]
fn daily_rotation_writes_todays_file() {
    let dir = temp_dir("daily");
    let sink = FileSink::builder(&dir).prefix("api").build().unwrap();
    record_many(&sink, 3);
    sink.flush();
    let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let path = dir.join(format!("api.{}.jsonl", &today[..10]));
    assert_eq!(sink.path(), path);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
}

/// `sync` waits for every recorded event (the lines are in the file when it returns,
/// for each kind of rotation), and says so when the files cannot be synced.
#[test]
fn sync_writes_every_recorded_event_and_reports_failures() {
    for (name, rotation, file) in [
        ("sync-daily", Rotation::Daily, None),
        ("sync-size", Rotation::Size(1_000_000), Some("audit.jsonl")),
        ("sync-never", Rotation::Never, Some("audit.jsonl")),
    ] {
        let dir = temp_dir(name);
        let sink = FileSink::builder(&dir)
            .rotation(rotation)
            .hash_chain(true)
            .build()
            .unwrap();
        record_many(&sink, 5);
        sink.sync().unwrap();
        let path = file.map_or_else(|| sink.path().to_owned(), |file| dir.join(file));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5, "{name}");
        assert!(text.ends_with('\n'), "{name}");
        assert_eq!(verify_files(&[path]).unwrap().records, 5, "{name}");

        // The directory is gone: the sync fails instead of claiming durability.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(sink.sync().is_err(), "{name}");
    }
    let captured = Captured::default();
    let sink = FileSink::to_writer(captured.clone()).build().unwrap();
    record_many(&sink, 2);
    sink.sync().unwrap();
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 2);
}

/// A writer that takes 2 ms a record, standing in for a slow disk.
#[derive(Clone, Default)]
struct SlowWriter(Captured);

impl Write for SlowWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(2));
        self.0.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines_of(writer: &SlowWriter) -> Vec<Value> {
    let bytes = writer.0 .0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn lossless_mode_blocks_and_keeps_everything() {
    let writer = SlowWriter::default();
    let sink = FileSink::to_writer(writer.clone())
        .capacity(2)
        .overflow(Overflow::Block)
        .build()
        .unwrap();
    record_many(&sink, 30);
    sink.flush();
    assert_eq!(sink.dropped(), 0);
    assert_eq!(lines_of(&writer).len(), 30);
}

#[test]
fn lossy_mode_drops_counts_and_audits_the_drops() {
    let writer = SlowWriter::default();
    let sink = FileSink::to_writer(writer.clone())
        .capacity(2)
        .overflow(Overflow::Drop)
        .build()
        .unwrap();
    record_many(&sink, 30);
    sink.flush();
    let dropped = sink.dropped();
    assert!(
        dropped > 0,
        "a 2 ms writer cannot keep up with 30 immediate records"
    );
    let lines = lines_of(&writer);
    let reports: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "audit_records_dropped")
        .collect();
    let written = lines.len() - reports.len();
    assert_eq!(
        written as u64 + dropped,
        30,
        "every record is written or counted"
    );
    let reported: u64 = reports.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(reported, dropped, "every drop is itself recorded");
}

/// A sink that keeps each event's `Debug` text.
#[derive(Clone, Default)]
struct DebugSink(Arc<Mutex<Vec<String>>>);

impl AuditSink for DebugSink {
    fn record(&self, event: &AuditEvent) {
        self.0.lock().unwrap().push(format!("{event:?}"));
    }
}

/// Percent-encodes the bytes of `text` whose bit is set in `mask` (cycling), once or
/// twice.
fn encode(text: &str, mask: u64, twice: bool) -> String {
    let mut out = String::new();
    for (index, byte) in text.bytes().enumerate() {
        if mask & (1 << (index % 64)) != 0
            || !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
        {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push(byte as char);
        }
    }
    if twice {
        out = out.replace('%', "%25");
    }
    out
}

/// Everything the audit layer wrote for one request: the sink's JSON line, the event's
/// `Debug` text and the `tracing` event.
fn everything_written(request: Request<()>) -> String {
    let sink = MemorySink::new();
    let debug = DebugSink::default();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let layer = AuditLayer::new()
        .log_query(true)
        .sink(sink.clone())
        .sink(debug.clone());
    tracing::subscriber::with_default(subscriber, || {
        run(&layer, request).unwrap();
    });
    let mut all = sink.lines().join("\n");
    for line in sink.lines() {
        serde_json::from_str::<Value>(&line).expect("every line is JSON");
    }
    all.push_str(&debug.0.lock().unwrap().join("\n"));
    all.push_str(&String::from_utf8(captured.0.lock().unwrap().clone()).unwrap());
    all
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(192))]

    /// A secret (an API key in either form, or a JWS) under any parameter name, in any
    /// percent-encoding, in the query, a path segment, the user agent or the request id:
    /// neither it nor the text that carried it reaches a sink, `Debug` or `tracing`.
    #[test]
    fn secrets_never_reach_the_audit_output(
        prefix in "[a-z][a-z0-9]{0,7}",
        id in "[A-Za-z0-9-]{1,16}",
        random in "[A-Za-z0-9]{38}",
        claims in "[a-z]{1,20}",
        kind in 0u8..3,
        name in "[ -~]{0,12}",
        mask in proptest::prelude::any::<u64>(),
        twice in proptest::prelude::any::<bool>(),
        place in 0u8..4,
        glued in "[A-Za-z0-9._~-]{0,4}",
    ) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let secret = match kind {
            0 => format!("{prefix}_{id}_{random}"),
            1 => format!("{prefix}_{random}/{id}"),
            _ => format!(
                "{}.{}.{}",
                b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
                b64.encode(format!(r#"{{"sub":"{claims}","r":"{random}"}}"#)),
                b64.encode(&random)
            ),
        };
        // What must never appear: the secret's random part, raw or as it was sent.
        let core = match kind {
            2 => b64.encode(format!(r#"{{"sub":"{claims}","r":"{random}"}}"#)),
            _ => random.clone(),
        };
        // Text glued before the secret must not hide it.
        let secret = format!("{glued}{secret}");
        let sent = encode(&secret, mask, twice);
        let encoded_name = encode(&name, mask.rotate_left(7), false);
        let mut builder = Request::get(match place {
            0 => format!("/v1/keys?page=2&{encoded_name}={sent}&sort=id"),
            1 => format!("/v1/keys/{}/attributes", sent.replace("%2F", "/").replace('/', "%2F")),
            _ => "/v1/keys".to_owned(),
        });
        match place {
            2 => builder = builder.header("user-agent", format!("client/1.0 {secret} (x)")),
            3 => builder = builder.header("x-request-id", secret.replace('/', "-")),
            _ => {}
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.7:5000".parse().unwrap()));
        let written = everything_written(request);
        proptest::prop_assert!(!written.contains(&core), "{written}");
        if place <= 1 {
            proptest::prop_assert!(!written.contains(&sent), "{written}");
        }
    }
}

/// A secret's name in any spelling redacts its value, whatever the value looks like.
#[test]
fn sensitive_names_are_matched_in_every_spelling() {
    for name in [
        "api_key",
        "api%5Fkey",
        "API-KEY",
        "x-api-key",
        "X_Api_Key",
        "Api%2DKey",
        "%2561pi_key",
        "access-token",
        "refreshToken",
        "client%5Fsecret",
        "PASSWORD",
        "my_session_id",
    ] {
        let sink = MemorySink::new();
        let layer = quiet(&sink).log_query(true);
        run(&layer, get(&format!("/ok?{name}=hunter2&page=1"))).unwrap();
        let query = sink.events()[0]["query"].as_str().unwrap().to_owned();
        assert_eq!(query, format!("{name}=REDACTED&page=1"));
    }
}
