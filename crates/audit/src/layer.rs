//! The layer, its service and its response future.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime};

use http::header::{HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use portcullis_core::{AuditRecord, ClientIpResolver, Decision, Denial};
use tower_layer::Layer;
use tower_service::Service;

use crate::event::{AuditEvent, Outcome};
use crate::sink::AuditSink;

/// Which requests get an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditLevel {
    /// Every request (the default).
    #[default]
    All,
    /// Refused, failed, dropped and panicked requests only.
    RefusalsOnly,
    /// Every refusal, and one allowed request in `one_in`.
    RefusalsAndSample {
        /// 1 records every allowed request; 100 records one in a hundred.
        one_in: u32,
    },
}

/// Longest request id taken from a request header.
const REQUEST_ID_MAX: usize = 128;

#[derive(Clone)]
struct Config {
    sinks: Vec<Arc<dyn AuditSink>>,
    tracing_event: bool,
    level: AuditLevel,
    request_id_header: HeaderName,
    resolver: ClientIpResolver,
    log_query: bool,
    redact: Vec<String>,
    id_prefix: String,
    /// Shared by every service the layer (and its clones) builds, so that generated ids
    /// stay unique and sampling counts every request.
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    request_ids: AtomicU64,
    allowed: AtomicU64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("sinks", &self.sinks.len())
            .field("tracing_event", &self.tracing_event)
            .field("level", &self.level)
            .field("request_id_header", &self.request_id_header)
            .field("log_query", &self.log_query)
            .finish_non_exhaustive()
    }
}

/// Writes one audit event per request. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct AuditLayer {
    config: Config,
}

impl Default for AuditLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLayer {
    /// A layer emitting a `tracing` event (target `portcullis::audit`) for every
    /// request, taking request ids from `x-request-id`.
    pub fn new() -> Self {
        let mut random = [0u8; 4];
        // Without OS randomness ids are still unique within the process.
        let _ = getrandom::fill(&mut random);
        Self {
            config: Config {
                sinks: Vec::new(),
                tracing_event: true,
                level: AuditLevel::All,
                request_id_header: HeaderName::from_static("x-request-id"),
                resolver: ClientIpResolver::new(),
                log_query: false,
                redact: Vec::new(),
                id_prefix: hex::encode(random),
                counters: Arc::default(),
            },
        }
    }

    /// Records an event that is not a request (a reload of the gateway's files) in every
    /// sink, and as a `tracing` event (target `portcullis::audit`) when those are on.
    pub fn record_operation(&self, event: &crate::OperationEvent) {
        for sink in &self.config.sinks {
            sink.record_operation(event);
        }
        if self.config.tracing_event {
            let line = event.to_json();
            tracing::info!(
                target: "portcullis::audit",
                operation = event.operation(),
                event = %String::from_utf8_lossy(&line),
                "audit"
            );
        }
    }

    /// Also hands every event to `sink` (a [`FileSink`](crate::FileSink), a
    /// [`MemorySink`](crate::MemorySink), or your own).
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.config.sinks.push(Arc::new(sink));
        self
    }

    /// Whether to emit the `tracing` event (on by default).
    pub fn tracing_event(mut self, on: bool) -> Self {
        self.config.tracing_event = on;
        self
    }

    /// Which requests get an event.
    pub fn level(mut self, level: AuditLevel) -> Self {
        self.config.level = level;
        self
    }

    /// The header that carries request ids (`x-request-id` by default). A request
    /// without a usable one gets a generated id, set on the request for the service
    /// and on the response for the client.
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.config.request_id_header = name;
        self
    }

    /// How the client address is resolved. Use the same resolver as the other layers.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.config.resolver = resolver;
        self
    }

    /// Records the query string, with the values of sensitive parameters replaced by
    /// `REDACTED`. Off by default: query strings often carry secrets.
    pub fn log_query(mut self, on: bool) -> Self {
        self.config.log_query = on;
        self
    }

    /// More query parameters whose values are redacted, besides the built-in ones
    /// (`api_key`, `token`, `access_token`, `password`, `secret`, …, and any name that
    /// contains `token`, `secret`, `password` or `session`). Names are compared after
    /// percent-decoding, in lower case, with `-` and `_` alike and an `x_` prefix
    /// ignored. Values shaped like an API key or a JWS are redacted whatever their
    /// name, and so are such path segments and user-agent words.
    pub fn redact_query_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.config.redact.extend(
            keys.into_iter()
                .map(|k| crate::redact::normalize_name(&k.into())),
        );
        self
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service built by [`AuditLayer`].
#[derive(Clone, Debug)]
pub struct Audit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if !anyone_listening(config) {
            // Nothing would take the event: no record, no copies, no id.
            return ResponseFuture {
                inner: self.inner.call(request),
                guard: Guard {
                    started: None,
                    config: config.clone(),
                },
            };
        }
        let record = AuditRecord::new();
        request.extensions_mut().insert(record.clone());
        let request_id = match request.headers().get(&config.request_id_header) {
            Some(value) if usable_request_id(value) => value.clone(),
            _ => {
                let value = generated_request_id(config);
                request
                    .headers_mut()
                    .insert(config.request_id_header.clone(), value.clone());
                value
            }
        };
        // Resolving here also stores the `ClientIp` for the layers inside. A failure is
        // theirs to refuse; the audit event just has no address.
        let client_ip = config
            .resolver
            .resolve_request(&mut request)
            .ok()
            .map(|client| client.ip());
        // The parts are captured as they are, by reference count where the server
        // parsed them into shared buffers; redaction happens when the event is read.
        let started = Started {
            time: SystemTime::now(),
            at: Instant::now(),
            request_id,
            client_ip,
            method: recorded_method(request.method()),
            uri: request.uri().clone(),
            query: config
                .log_query
                .then(|| {
                    request
                        .uri()
                        .query()
                        .map(|q| crate::redact::redact_query(q, &config.redact))
                })
                .flatten(),
            user_agent: request.headers().get(USER_AGENT).cloned(),
            record,
        };
        // The guard exists before the inner service is called, so a panic in `call`
        // is audited too.
        let guard = Guard {
            started: Some(started),
            config: config.clone(),
        };
        ResponseFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

/// Whether a sink or a `tracing` subscriber would take an event: if not, none is built.
fn anyone_listening(config: &Config) -> bool {
    !config.sinks.is_empty()
        || (config.tracing_event
            && tracing::enabled!(target: "portcullis::audit", tracing::Level::WARN))
}

fn usable_request_id(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    !text.is_empty()
        && text.len() <= REQUEST_ID_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
        // A credential sent as a request id would be logged and echoed: make our own.
        && !crate::redact::looks_secret(text)
}

/// `<prefix>-<counter in hex>`, unique within the process.
fn generated_request_id(config: &Config) -> HeaderValue {
    let counter = config.counters.request_ids.fetch_add(1, Ordering::Relaxed);
    // The prefix is eight hex digits and the counter at most sixteen: formatted on the
    // stack, copied once into the header value.
    let mut id = [0u8; 8 + 1 + 16];
    let capacity = id.len();
    let mut free = &mut id[..];
    let written = match write!(free, "{}-{counter:x}", config.id_prefix) {
        Ok(()) => capacity - free.len(),
        Err(_) => 0,
    };
    // Hex digits and '-': always a valid header value.
    HeaderValue::from_bytes(&id[..written]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The method as recorded: an extension method shaped like a credential is redacted.
fn recorded_method(method: &Method) -> Method {
    if crate::redact::looks_secret(method.as_str()) {
        return Method::from_bytes(crate::redact::REDACTED.as_bytes()).unwrap_or(Method::GET);
    }
    method.clone()
}

struct Started {
    time: SystemTime,
    at: Instant,
    /// Checked or generated; echoed to the client on the response.
    request_id: HeaderValue,
    client_ip: Option<IpAddr>,
    method: Method,
    uri: Uri,
    query: Option<String>,
    user_agent: Option<HeaderValue>,
    record: AuditRecord,
}

/// Emits the event once: when the response is ready, or, if that never happens, when
/// the request is dropped or unwinds from a panic.
struct Guard {
    started: Option<Started>,
    config: Arc<Config>,
}

struct Ending {
    outcome: Outcome,
    status: Option<u16>,
    denial: Option<Denial>,
}

impl Guard {
    fn finish(&mut self, ending: Ending) {
        let Some(started) = self.started.take() else {
            return;
        };
        let notes = started.record.take();
        let mut outcome = ending.outcome;
        let (mut refused_by, mut reason) = match ending.denial {
            Some(denial) => (Some(denial.layer()), Some(denial.code())),
            None => (None, None),
        };
        if refused_by.is_none() {
            if let Some(note) = notes.iter().find(|n| n.decision() == Decision::Deny) {
                refused_by = Some(note.layer());
                reason = note.reason_code();
            }
        }
        if outcome == Outcome::Allow && refused_by.is_some() {
            outcome = Outcome::Deny;
        }
        // Whether anyone listens was checked when the request came in: `started` is
        // only set then.
        if !self.wanted(outcome) {
            return;
        }
        let event = AuditEvent {
            time: started.time,
            request_id: started.request_id,
            // The address the deciding layers used: an inner layer that trusts other
            // proxies resolves again, and its address is the one that was judged.
            client_ip: started.record.client_ip().or(started.client_ip),
            method: started.method,
            uri: started.uri,
            query: started.query,
            decision: outcome,
            refused_by,
            reason,
            status: ending.status,
            latency_us: u64::try_from(started.at.elapsed().as_micros()).unwrap_or(u64::MAX),
            user_agent: started.user_agent,
            notes,
        };
        if self.config.tracing_event {
            emit_tracing(&event);
        }
        for sink in &self.config.sinks {
            sink.record(&event);
        }
    }

    fn wanted(&self, outcome: Outcome) -> bool {
        match (self.config.level, outcome) {
            (AuditLevel::All, _) => true,
            (_, outcome) if outcome != Outcome::Allow => true,
            (AuditLevel::RefusalsOnly, _) => false,
            (AuditLevel::RefusalsAndSample { one_in }, _) => {
                let n = self.config.counters.allowed.fetch_add(1, Ordering::Relaxed);
                one_in > 0 && n.is_multiple_of(u64::from(one_in))
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.started.is_some() {
            let outcome = if std::thread::panicking() {
                Outcome::Panicked
            } else {
                Outcome::Dropped
            };
            self.finish(Ending {
                outcome,
                status: None,
                denial: None,
            });
        }
    }
}

fn emit_tracing(event: &AuditEvent) {
    // One event, at INFO for allowed requests and WARN for the rest, so a subscriber can
    // keep refusals at a stricter filter.
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: "portcullis::audit",
                $level,
                request_id = event.request_id(),
                client_ip = event.client_ip().map(tracing::field::display),
                method = %event.method(),
                path = %event.path(),
                query = event.query(),
                route = event.route(),
                principals = %event.principals_summary(),
                decision = event.decision().as_str(),
                refused_by = event.refused_by(),
                reason = event.reason(),
                status = event.status(),
                latency_us = event.latency_us(),
                user_agent = event.user_agent().as_deref(),
                "audit"
            )
        };
    }
    if event.decision() == Outcome::Allow {
        emit!(tracing::Level::INFO);
    } else {
        emit!(tracing::Level::WARN);
    }
}

pin_project! {
    /// The response future of [`Audit`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        let ending = match &mut result {
            Ok(response) => {
                if let Some(started) = &this.guard.started {
                    response.headers_mut().insert(
                        this.guard.config.request_id_header.clone(),
                        started.request_id.clone(),
                    );
                }
                Ending {
                    outcome: Outcome::Allow,
                    status: Some(response.status().as_u16()),
                    denial: response.extensions().get::<Denial>().copied(),
                }
            }
            Err(_) => Ending {
                outcome: Outcome::Error,
                status: None,
                denial: None,
            },
        };
        this.guard.finish(ending);
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pending", &self.guard.started.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_of_sensitive_keys_are_redacted() {
        assert_eq!(
            crate::redact::redact_query("page=2&api_key=pck_x&Token=abc&flag&sort=", &[]),
            "page=2&api_key=REDACTED&Token=REDACTED&flag&sort="
        );
    }

    #[test]
    fn request_ids_from_headers_are_checked() {
        let ok = HeaderValue::from_static("req-1.2:3");
        assert!(usable_request_id(&ok));
        for bad in ["", "has space", "quote\"", &"x".repeat(200)] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert!(!usable_request_id(&value), "{bad}");
        }
        assert!(!usable_request_id(
            &HeaderValue::from_bytes(b"\xff").unwrap()
        ));
    }

    #[test]
    fn generated_request_ids_are_the_prefix_and_the_counter_in_hex() {
        let layer = AuditLayer::new();
        let config = &layer.config;
        let prefix = config.id_prefix.clone();
        for (counter, hex) in [
            (0u64, "0"),
            (1, "1"),
            (0xabc, "abc"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            config
                .counters
                .request_ids
                .store(counter, Ordering::Relaxed);
            let id = generated_request_id(config);
            assert_eq!(id.to_str().unwrap(), format!("{prefix}-{hex}"));
        }
    }
}
