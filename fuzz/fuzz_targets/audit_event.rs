//! Arbitrary method, path, query and user agent through `AuditLayer`.
//!
//! The input is four fields separated by 0x00: method, path, query, user agent. In any
//! field `KEY` stands for an API key, `SPLIT` for one in split form and `JWS` for a
//! signed token, each made fresh for the process, so the fuzzer can place secrets
//! anywhere and encode around them.
//!
//! Invariants: no panic; every line a sink receives is one JSON object; no secret's
//! random part reaches the sink's JSON, the event's `Debug` text or the `tracing`
//! event.

#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Method, Request, Response};
use libfuzzer_sys::fuzz_target;
use portcullis_audit::{AuditEvent, AuditLayer, AuditSink, MemorySink};
use tower::{Layer, ServiceExt};

struct Secrets {
    key: String,
    split: String,
    jws: String,
    /// What must never be written: the key's random part, the token's claims.
    cores: [String; 2],
}

fn secrets() -> &'static Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let mut random = [0u8; 38];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .unwrap();
        const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let random: String = random
            .iter()
            .map(|b| BASE62[*b as usize % 62] as char)
            .collect();
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"fuzz","n":"{random}"}}"#));
        Secrets {
            key: format!("pck_4fT9kQ2mZx1B_{random}"),
            split: format!("pck_{random}/4fT9kQ2mZx1B"),
            jws: format!(
                "{}.{claims}.c2lnbmF0dXJl",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#)
            ),
            cores: [random, claims],
        }
    })
}

#[derive(Clone, Default)]
struct DebugSink(Arc<Mutex<Vec<String>>>);

impl AuditSink for DebugSink {
    fn record(&self, event: &AuditEvent) {
        self.0.lock().unwrap().push(format!("{event:?}"));
    }
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

fuzz_target!(|data: &[u8]| {
    let secrets = secrets();
    // Inputs that already hold a secret's random part (learnt from comparisons) would
    // test the fuzzer, not the redaction.
    if secrets.cores.iter().any(|core| {
        data.windows(8)
            .any(|w| core.as_bytes().windows(8).any(|c| c == w))
    }) {
        return;
    }
    let mut fields = data.split(|b| *b == 0).map(|field| {
        String::from_utf8_lossy(field)
            .replace("SPLIT", &secrets.split)
            .replace("KEY", &secrets.key)
            .replace("JWS", &secrets.jws)
    });
    let (method, path, query, agent) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next(),
    );
    let Ok(method) = Method::from_bytes(if method.is_empty() {
        b"GET"
    } else {
        method.as_bytes()
    }) else {
        return;
    };
    let uri = if query.is_empty() {
        format!("/{path}")
    } else {
        format!("/{path}?{query}")
    };
    let Ok(mut request) = Request::builder().method(method).uri(uri).body(()) else {
        return;
    };
    if let Some(agent) = agent {
        match http::HeaderValue::from_bytes(agent.as_bytes()) {
            Ok(value) => {
                request
                    .headers_mut()
                    .insert(http::header::USER_AGENT, value);
            }
            Err(_) => return,
        }
    }
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
    let inner = tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(()))
    });
    tracing::subscriber::with_default(subscriber, || {
        futures::executor::block_on(layer.layer(inner).oneshot(request)).unwrap();
    });
    let lines = sink.lines();
    assert_eq!(lines.len(), 1);
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(value.is_object());
    }
    let mut written = lines.join("\n");
    written.push_str(&debug.0.lock().unwrap().join("\n"));
    written.push_str(&String::from_utf8_lossy(&captured.0.lock().unwrap()));
    for core in &secrets.cores {
        assert!(
            !written.contains(core.as_str()),
            "a secret was written: {written}"
        );
    }
});
