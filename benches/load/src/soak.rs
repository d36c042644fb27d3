//! The soak: many requests with random credentials, good and bad, from random source
//! addresses on loopback, against the whole stack. Every answer is checked against
//! what its kind of request may get; the server's memory is read as it goes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use crate::server::Server;
use crate::setup::Credentials;

/// How much and how wide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SoakShape {
    pub(crate) requests: u64,
    /// Requests after which the memory is taken as the warmed-up baseline.
    pub(crate) warm_up: u64,
    /// Connections open at once.
    pub(crate) concurrency: usize,
    /// Client addresses to draw from (127.1.0.0 upwards).
    pub(crate) addresses: u32,
}

/// What a request carries and where it goes. Each kind has the answers it may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A valid API key (role `key-reader`) reading keys.
    ApiKey,
    /// A valid token (roles `key-reader`, `signer`) reading keys or signing.
    Token,
    /// A valid API key asking to sign, which its role does not allow.
    ApiKeyWrongRole,
    /// No credentials, a public route.
    Public,
    /// No credentials, a protected route.
    NoCredentials,
    /// `x-api-key` that is not a key's form.
    MalformedKey,
    /// A well-formed key no record holds.
    UnknownKey,
    /// A token signed with another secret.
    ForgedToken,
    /// A token past its `exp`.
    ExpiredToken,
    /// A bearer value that is not a JWT.
    GarbageToken,
    /// Any request from the denied network.
    DeniedAddress,
}

/// Out of 1,000 requests from allowed addresses. About 5 % carry bad credentials, so
/// that a client address meets the failed-login quota now and then, not always.
const MIX: [(Kind, u32); 10] = [
    (Kind::ApiKey, 440),
    (Kind::Token, 430),
    (Kind::ApiKeyWrongRole, 30),
    (Kind::Public, 50),
    (Kind::NoCredentials, 10),
    (Kind::MalformedKey, 8),
    (Kind::UnknownKey, 10),
    (Kind::ForgedToken, 8),
    (Kind::ExpiredToken, 7),
    (Kind::GarbageToken, 7),
];

/// One connection in this many comes from the denied network.
const DENIED_ONE_IN: u32 = 50;

impl Kind {
    fn draw(rng: &mut fastrand::Rng) -> Self {
        let mut roll = rng.u32(0..1000);
        for (kind, weight) in MIX {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        Kind::Public
    }

    /// Whether `status` with the problem `code` is an answer this kind may get.
    /// Whatever the credentials, a client address may be rate limited or banned.
    pub(crate) fn accepts(self, status: u16, code: &str) -> bool {
        if self == Kind::DeniedAddress {
            return status == 403 && code == "ip_denied";
        }
        match (status, code) {
            (429, "rate_limited") | (403, "banned") | (429, "banned") => return true,
            _ => {}
        }
        match self {
            Kind::ApiKey | Kind::Token | Kind::Public => status == 200,
            Kind::ApiKeyWrongRole => status == 403 && code == "forbidden",
            Kind::NoCredentials => status == 401 && code == "unauthenticated",
            Kind::MalformedKey => status == 401 && code == "malformed_api_key",
            Kind::UnknownKey => status == 401 && code == "invalid_api_key",
            Kind::ForgedToken => status == 401 && code == "invalid_signature",
            Kind::ExpiredToken => status == 401 && code == "expired_token",
            Kind::GarbageToken => status == 401 && code == "malformed_token",
            Kind::DeniedAddress => false,
        }
    }
}

const READ_ROUTES: [&str; 3] = ["/v1/key", "/v1/key/default", "/v1/key/default/attributes"];
const SIGN_BODY: &str = r#"{"key":"default","data":"aGVsbG8="}"#;

fn request(
    kind: Kind,
    credentials: &Credentials,
    rng: &mut fastrand::Rng,
) -> http::Request<Full<Bytes>> {
    let pick = |list: &[String], rng: &mut fastrand::Rng| list[rng.usize(0..list.len())].clone();
    let (method, path) = match kind {
        Kind::ApiKeyWrongRole => ("POST", "/v1/sign"),
        Kind::Token if rng.u8(0..4) == 0 => ("POST", "/v1/sign"),
        Kind::Public | Kind::DeniedAddress => ("GET", "/health"),
        _ => ("GET", READ_ROUTES[rng.usize(0..READ_ROUTES.len())]),
    };
    let api_key = |key: String| Some(("x-api-key", key));
    let bearer = |token: String| Some(("authorization", format!("Bearer {token}")));
    let header = match kind {
        Kind::ApiKey | Kind::ApiKeyWrongRole => api_key(pick(&credentials.api_keys, rng)),
        Kind::UnknownKey => api_key(pick(&credentials.unknown_keys, rng)),
        Kind::MalformedKey => api_key(format!("not-a-key-{}", rng.u64(..))),
        Kind::Token => bearer(pick(&credentials.tokens, rng)),
        Kind::ForgedToken => bearer(pick(&credentials.forged_tokens, rng)),
        Kind::ExpiredToken => bearer(pick(&credentials.expired_tokens, rng)),
        Kind::GarbageToken => bearer(format!("{:x}.{:x}", rng.u64(..), rng.u64(..))),
        Kind::Public | Kind::NoCredentials | Kind::DeniedAddress => None,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.local");
    let body = if method == "POST" {
        builder = builder.header("content-type", "application/json");
        SIGN_BODY
    } else {
        ""
    };
    if let Some((name, value)) = header {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
}

/// What came back, counted.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// (kind, status, problem code) → count.
    pub(crate) answers: BTreeMap<(Kind, u16, String), u64>,
    /// Connections that could not be made or broke mid-request, by error.
    pub(crate) transport_errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn server_errors(&self) -> u64 {
        self.answers
            .iter()
            .filter(|((_, status, _), _)| *status >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    pub(crate) fn unexpected(&self) -> u64 {
        self.answers
            .iter()
            .filter(|((kind, status, code), _)| !kind.accepts(*status, code))
            .map(|(_, n)| n)
            .sum()
    }

    pub(crate) fn total(&self) -> u64 {
        self.answers.values().sum()
    }
}

/// The soak's outcome.
#[derive(Debug)]
pub(crate) struct SoakReport {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    pub(crate) connections: u64,
    /// (requests answered so far, resident KiB), about once a second.
    pub(crate) memory: Vec<(u64, u64)>,
    pub(crate) warm_kib: u64,
    pub(crate) end_kib: u64,
}

struct Shared {
    credentials: Credentials,
    server: SocketAddr,
    shape: SoakShape,
    issued: AtomicU64,
    answered: AtomicU64,
    connections: AtomicU64,
    tally: Mutex<Tally>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transport_error(&self, what: String) {
        *self.lock().transport_errors.entry(what).or_default() += 1;
    }
}

/// Runs the soak against `server` and reads its memory as it goes.
pub(crate) async fn run(
    server: &mut Server,
    credentials: Credentials,
    shape: SoakShape,
) -> Result<SoakReport, String> {
    let shared = Arc::new(Shared {
        credentials,
        server: server.addr,
        shape,
        issued: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
    });
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for seed in 0..shape.concurrency as u64 {
        workers.spawn(worker(shared.clone(), seed));
    }
    let mut memory = Vec::new();
    let mut warm_kib = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(())) => continue,
                Some(Err(e)) => return Err(format!("a load worker failed: {e}")),
                None => break,
            },
            _ = tick.tick() => {
                let answered = shared.answered.load(Ordering::Relaxed);
                let kib = server.resident_kib().ok_or("cannot read the gateway's memory")?;
                memory.push((answered, kib));
                if warm_kib.is_none() && answered >= shape.warm_up {
                    warm_kib = Some(kib);
                    eprintln!("load: warmed up after {answered} requests: {kib} KiB");
                }
                if memory.len() % 10 == 0 {
                    eprintln!("load: {answered} requests, {kib} KiB");
                }
                if !server.is_running() {
                    return Err("the gateway exited during the soak".into());
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let end_kib = server
        .resident_kib()
        .ok_or("cannot read the gateway's memory")?;
    memory.push((shared.answered.load(Ordering::Relaxed), end_kib));
    let warm_kib = warm_kib.ok_or("the run ended before its warm-up did")?;
    let shared = Arc::try_unwrap(shared).map_err(|_| "workers still hold the tally")?;
    Ok(SoakReport {
        tally: shared.tally.into_inner().unwrap_or_else(|p| p.into_inner()),
        elapsed,
        connections: shared.connections.load(Ordering::Relaxed),
        memory,
        warm_kib,
        end_kib,
    })
}

/// One connection after another, each from a random address, each carrying 1 to 20
/// requests, until the run's requests are all issued.
async fn worker(shared: Arc<Shared>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0000 + seed);
    loop {
        let denied = rng.u32(0..DENIED_ONE_IN) == 0;
        let source = if denied {
            Ipv4Addr::new(127, 255, rng.u8(..), rng.u8(1..255))
        } else {
            let n = rng.u32(0..shared.shape.addresses);
            Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n)
        };
        let batch = rng.u64(1..=20);
        let first = shared.issued.fetch_add(batch, Ordering::Relaxed);
        if first >= shared.shape.requests {
            return;
        }
        let batch = batch.min(shared.shape.requests - first);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = connection(&shared, IpAddr::V4(source), batch, denied, &mut rng).await {
            shared.transport_error(error);
        }
    }
}

async fn connection(
    shared: &Shared,
    source: IpAddr,
    batch: u64,
    denied: bool,
    rng: &mut fastrand::Rng,
) -> Result<(), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind: {}", e.kind()))?;
    let stream = socket
        .connect(shared.server)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(driver);
    for _ in 0..batch {
        let kind = if denied {
            Kind::DeniedAddress
        } else {
            Kind::draw(rng)
        };
        let request = request(kind, &shared.credentials, rng);
        sender
            .ready()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let code = if status == 200 {
            String::new()
        } else {
            problem_code(&body)
        };
        shared.answered.fetch_add(1, Ordering::Relaxed);
        *shared
            .lock()
            .answers
            .entry((kind, status, code))
            .or_default() += 1;
    }
    Ok(())
}

/// The `code` of a problem+json body, or what the body was instead.
fn problem_code(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => match value.get("code").and_then(|c| c.as_str()) {
            Some(code) => code.to_owned(),
            None => "(no code)".to_owned(),
        },
        Err(_) => "(not JSON)".to_owned(),
    }
}

/// The report in Markdown: answers per kind, transport errors, memory.
pub(crate) fn render(report: &SoakReport) -> String {
    let tally = &report.tally;
    let mut out = format!(
        "{} requests on {} connections in {:.1} s ({:.0} requests/s)\n\n\
         | kind | status | code | count | expected |\n|---|---:|---|---:|---|\n",
        tally.total(),
        report.connections,
        report.elapsed.as_secs_f64(),
        tally.total() as f64 / report.elapsed.as_secs_f64(),
    );
    for ((kind, status, code), count) in &tally.answers {
        out.push_str(&format!(
            "| {kind:?} | {status} | {code} | {count} | {} |\n",
            if kind.accepts(*status, code) {
                "yes"
            } else {
                "**no**"
            }
        ));
    }
    for (error, count) in &tally.transport_errors {
        out.push_str(&format!("\ntransport error ×{count}: {error}"));
    }
    let growth = report.end_kib as f64 / report.warm_kib as f64;
    let peak = report.memory.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    out.push_str(&format!(
        "\nserver errors (5xx): {}\nunexpected answers: {}\nresident memory: {} KiB after warm-up, {} KiB at the end ({:+.1} %), peak {} KiB\n",
        tally.server_errors(),
        tally.unexpected(),
        report.warm_kib,
        report.end_kib,
        100.0 * (growth - 1.0),
        peak,
    ));
    out
}

/// Whether the soak met its goal: every request answered as its kind may be, no 5xx,
/// no broken connection, memory at the end within 20 % of memory after warm-up.
pub(crate) fn passed(report: &SoakReport) -> bool {
    report.tally.server_errors() == 0
        && report.tally.unexpected() == 0
        && report.tally.transport_errors.is_empty()
        && report.end_kib as f64 <= 1.2 * report.warm_kib as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_adds_up_to_a_thousand() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), 1000);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100_000 {
            seen.insert(Kind::draw(&mut rng));
        }
        assert_eq!(seen.len(), MIX.len());
    }

    #[test]
    fn each_kind_accepts_only_its_answers() {
        assert!(Kind::ApiKey.accepts(200, ""));
        assert!(Kind::ApiKey.accepts(429, "rate_limited"));
        assert!(Kind::ApiKey.accepts(403, "banned"));
        assert!(!Kind::ApiKey.accepts(401, "invalid_api_key"));
        assert!(!Kind::ApiKey.accepts(403, "forbidden"));
        assert!(!Kind::ApiKey.accepts(500, ""));
        assert!(Kind::ApiKeyWrongRole.accepts(403, "forbidden"));
        assert!(!Kind::ApiKeyWrongRole.accepts(200, ""));
        assert!(Kind::ForgedToken.accepts(401, "invalid_signature"));
        assert!(!Kind::ForgedToken.accepts(200, ""));
        assert!(!Kind::ExpiredToken.accepts(401, "invalid_signature"));
        assert!(Kind::DeniedAddress.accepts(403, "ip_denied"));
        assert!(!Kind::DeniedAddress.accepts(429, "rate_limited"));
        assert!(!Kind::DeniedAddress.accepts(200, ""));
    }

    #[test]
    fn a_tally_counts_server_errors_and_surprises() {
        let mut tally = Tally::default();
        tally.answers.insert((Kind::ApiKey, 200, String::new()), 10);
        tally
            .answers
            .insert((Kind::Token, 502, "(not JSON)".into()), 1);
        tally
            .answers
            .insert((Kind::MalformedKey, 200, String::new()), 2);
        assert_eq!(tally.total(), 13);
        assert_eq!(tally.server_errors(), 1);
        assert_eq!(tally.unexpected(), 3);
        assert_eq!(problem_code(br#"{"code":"banned"}"#), "banned");
        assert_eq!(problem_code(b"<html>"), "(not JSON)");
    }
}
