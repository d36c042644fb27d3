//! The audit layer outermost in a real axum stack with ip-allowlist, api-key and
//! role-router inside it: one event per request, naming who, where from, which layer
//! refused and why; a panicking handler still audited; no credential in any output.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore, Mode};
use portcullis::audit::{verify_files, AuditLayer, FileSink, Rotation};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::role_router::{Policy, Requirement, RoleRouterLayer, Rule};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

use crate::client::{get_with, serve_axum};

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

struct Stack {
    addr: SocketAddr,
    sink: FileSink,
    reader: GeneratedKey,
    nobody: GeneratedKey,
}

async fn serve(dir: &Path) -> Stack {
    let reader = GeneratedKey::with_id(&KeyPrefix::default(), "reader-key").unwrap();
    let nobody = GeneratedKey::with_id(&KeyPrefix::default(), "nobody-key").unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(
            KeyRecord::new(reader.id(), "partner-acme", reader.digest())
                .unwrap()
                .roles(["reader"]),
        )
        .unwrap();
    store
        .insert(KeyRecord::new(nobody.id(), "partner-nobody", nobody.digest()).unwrap())
        .unwrap();
    let policy = Policy::builder()
        .rule(Rule::new("/public", Requirement::public()).name("public"))
        .rule(Rule::new("/v1/**", Requirement::authenticated().any_role(["reader"])).name("reads"))
        .build()
        .unwrap();
    let sink = FileSink::builder(dir)
        .rotation(Rotation::Never)
        .hash_chain(true)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/public", get(|| async { "hello" }))
        .route("/v1/items", get(|| async { "items" }))
        .route("/v1/panic", get(panicking_handler))
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new().sink(sink.clone()))
                .layer(IpAllowlistLayer::new(
                    IpRules::new().deny("127.0.0.66/32".parse().unwrap()),
                ))
                .layer(ApiKeyLayer::new(store).mode(Mode::Optional))
                .layer(RoleRouterLayer::new(policy)),
        );
    let addr = serve_axum(app).await;
    Stack {
        addr,
        sink,
        reader,
        nobody,
    }
}

async fn panicking_handler() -> &'static str {
    panic!("handler bug")
}

/// (source address, path, headers, expected status)
type Case = (&'static str, &'static str, Vec<(&'static str, String)>, u16);

/// Sends a request whose handler panics: the connection just closes.
async fn raw_request(addr: SocketAddr, path: &str, key: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nx-api-key: {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
}

#[tokio::test]
async fn one_event_per_request_with_the_deciding_layer_and_reason() {
    let dir = std::env::temp_dir().join(format!("portcullis-audit-axum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Current-thread runtime: the server's tasks run on this thread, so this subscriber
    // sees every tracing event the stack emits.
    let captured = Captured::default();
    let writer = captured.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let stack = serve(&dir).await;
    let addr = stack.addr;
    let good = stack.reader.expose_secret().to_owned();
    let weak = stack.nobody.expose_secret().to_owned();
    let forged = GeneratedKey::with_id(&KeyPrefix::default(), "reader-key").unwrap();

    let key = |k: &str| vec![("x-api-key", k.to_owned())];
    let cases: Vec<Case> = vec![
        ("127.0.0.1", "/v1/items", key(&good), 200),
        ("127.0.0.66", "/v1/items", key(&good), 403),
        ("127.0.0.1", "/v1/items", key(forged.expose_secret()), 401),
        ("127.0.0.1", "/v1/items", key(&weak), 403),
        ("127.0.0.1", "/v1/items", vec![], 401),
        (
            "127.0.0.1",
            "/public",
            vec![("x-request-id", "trace-77".to_owned())],
            200,
        ),
    ];
    for (from, path, headers, status) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = get_with(addr, "GET", from, path, &headers).await;
        assert_eq!(
            reply.status.as_u16(),
            *status,
            "{path} from {from}: {}",
            reply.body
        );
        assert!(
            reply.headers.get("x-request-id").is_some(),
            "the id goes back to the client"
        );
    }
    raw_request(addr, "/v1/panic", &good).await;
    stack.sink.flush();

    let log = std::fs::read_to_string(stack.sink.path()).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 7, "{log}");
    let summary: Vec<(String, Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap().to_owned(),
                e["refused_by"].clone(),
                e["reason"].clone(),
                e["client_ip"].clone(),
            )
        })
        .collect();
    let s = |v: &str| Value::String(v.to_owned());
    assert_eq!(
        summary,
        vec![
            ("allow".into(), Value::Null, Value::Null, s("127.0.0.1")),
            (
                "deny".into(),
                s("ip-allowlist"),
                s("ip_denied"),
                s("127.0.0.66")
            ),
            (
                "deny".into(),
                s("api-key"),
                s("invalid_api_key"),
                s("127.0.0.1")
            ),
            (
                "deny".into(),
                s("role-router"),
                s("forbidden"),
                s("127.0.0.1")
            ),
            (
                "deny".into(),
                s("role-router"),
                s("unauthenticated"),
                s("127.0.0.1")
            ),
            ("allow".into(), Value::Null, Value::Null, s("127.0.0.1")),
            ("panicked".into(), Value::Null, Value::Null, s("127.0.0.1")),
        ]
    );
    assert_eq!(events[0]["principals"][0]["id"], "partner-acme");
    assert_eq!(events[0]["principals"][0]["credential"], "reader-key");
    assert_eq!(events[0]["route"], "reads");
    // The refused key is named by the id that was tried, never by its secret.
    assert_eq!(events[2]["notes"][1]["credential"], "reader-key");
    assert_eq!(events[2]["notes"][1]["detail"], "wrong secret");
    assert_eq!(events[3]["route"], "reads");
    assert_eq!(events[3]["principals"][0]["id"], "partner-nobody");
    assert_eq!(events[5]["request_id"], "trace-77");
    assert_eq!(events[5]["route"], "public");
    assert_eq!(events[6]["principals"][0]["id"], "partner-acme");

    // No credential used here appears in the file or in any log line.
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("portcullis::audit"), "{logs}");
    for secret in [
        stack.reader.expose_secret(),
        stack.nobody.expose_secret(),
        forged.expose_secret(),
    ] {
        let secret_part = &secret[secret.len() - 38..];
        assert!(!log.contains(secret_part), "a key reached the audit file");
        assert!(!logs.contains(secret_part), "a key reached the logs");
    }
    assert_eq!(verify_files(&[stack.sink.path()]).unwrap().records, 7);
}
