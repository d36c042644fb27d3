//! The shared contracts of the Portcullis middleware.
//!
//! Every Portcullis layer reads and writes these types in the request's and response's
//! extensions, so layers compose in any order without knowing about each other:
//!
//! - [`Principal`] and [`Authentication`]: who the request is, one principal per
//!   [`AuthMethod`].
//! - [`ClientIp`] and [`ClientIpResolver`]: where the request came from, from the socket
//!   peer and, only behind trusted proxies, `Forwarded` / `X-Forwarded-For` / `X-Real-IP`.
//! - [`Rejection`], [`Renderer`] and [`Denial`]: a refusal, rendered as
//!   `application/problem+json` or as a gRPC status, with the reason in the response.
//! - [`AuditRecord`] and [`AuditNote`]: each layer's decision, for an outer audit layer.
//! - [`RejectOrBody`] and [`DecisionFuture`]: the response body and future of a layer
//!   that may refuse before calling the inner service.
//! - [`NetworkSet`]: IP networks compiled for `O(log n)` lookups.
//! - [`Clock`]: the time layers check expiry against, controllable in tests.
//! - [`ClientCertThumbprint`]: the verified client certificate's SHA-256, for
//!   certificate-bound tokens.
//! - [`CredentialCheck`]: whether the API key or certificate a session was opened with
//!   is still good, asked by the JWT layer about the tokens it issued.
//!
//! # Features
//!
//! - `axum`: read the socket peer from axum's `ConnectInfo<SocketAddr>`, and the
//!   `extract` module's extractors (`Principal`, `Authenticated`, `PrincipalBy`,
//!   `ClientIp`).
//! - `tonic`: read the socket peer from tonic's `TcpConnectInfo`.
//! - `tonic-tls`: also from `TlsConnectInfo<TcpConnectInfo>`, when tonic serves TLS.
//!
//! Without them, hosts insert [`PeerAddr`] themselves.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod audit;
mod authorization;
mod body;
pub mod cache;
mod certificate;
mod client_ip;
mod clock;
mod credential;
#[cfg(feature = "axum")]
pub mod extract;
mod forwarded;
mod future;
mod headers;
mod log_throttle;
mod network;
mod principal;
mod rejection;
mod route;
#[cfg(feature = "toml")]
pub mod toml_lines;

pub use audit::{AuditNote, AuditRecord, Decision};
pub use authorization::{scheme_line, SchemeLine};
pub use body::RejectOrBody;
pub use certificate::{connection_leaf, ClientCertThumbprint, TlsPeer};
pub use client_ip::{
    socket_peer, ClientIp, ClientIpError, ClientIpResolver, ForwardedHeader, PeerAddr,
    TrustsEveryone, DEFAULT_MAX_FORWARDED_ELEMENTS,
};
pub use clock::{Clock, ManualClock};
pub use credential::{
    CheckError, Credential, CredentialCheck, CredentialCheckError, CredentialChecks,
    CredentialFuture, CredentialStatus,
};
pub use future::DecisionFuture;
pub use headers::remove_field_lines;
pub use log_throttle::LogThrottle;

/// Whether decisions are counted (`portcullis_refusals_total{layer, code}`,
/// `portcullis_allowed_total{layer}`).
static DECISION_METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Counts every layer's decisions in the `metrics` facade from now on: refusals by layer
/// and code (`portcullis_refusals_total`), allowed requests by layer
/// (`portcullis_allowed_total`). Call it after installing a `metrics` recorder (the
/// gateway does, with `[metrics]`). Off by default, so that a process without a
/// recorder pays one relaxed load per decision and nothing else: the refusal counter's
/// labels are built per call. The layers' other metrics (audit records, bans, key
/// fetches, OCSP answers) are emitted whenever a recorder is installed; they are not
/// per decision.
pub fn enable_decision_metrics() {
    DECISION_METRICS.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn decision_metrics_enabled() -> bool {
    DECISION_METRICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a request `layer` let through (`portcullis_allowed_total{layer}`), when
/// [`enable_decision_metrics`] was called. The layers of this project call it.
pub fn count_allowed(layer: &'static str) {
    if !decision_metrics_enabled() {
        return;
    }
    // Literal labels make static keys: no allocation per request.
    match layer {
        "ip-allowlist" => {
            metrics::counter!("portcullis_allowed_total", "layer" => "ip-allowlist").increment(1)
        }
        "mtls-identity" => {
            metrics::counter!("portcullis_allowed_total", "layer" => "mtls-identity").increment(1)
        }
        "api-key" => {
            metrics::counter!("portcullis_allowed_total", "layer" => "api-key").increment(1)
        }
        "jwt" => metrics::counter!("portcullis_allowed_total", "layer" => "jwt").increment(1),
        "role-router" => {
            metrics::counter!("portcullis_allowed_total", "layer" => "role-router").increment(1)
        }
        "rate-limit" => {
            metrics::counter!("portcullis_allowed_total", "layer" => "rate-limit").increment(1)
        }
        other => metrics::counter!("portcullis_allowed_total", "layer" => other).increment(1),
    }
}
pub use network::{InvalidNetwork, NetworkListError, NetworkSet};
pub use principal::{
    AuthMethod, Authentication, DuplicateMethod, Principal, PrincipalBuilder, UnknownAuthMethod,
};
pub use rejection::{
    grpc_response, problem_json_response, DefaultRenderer, Denial, GrpcCode, Rejection,
    RejectionContext, RenderRejection, Renderer,
};
pub use route::{matched_route, MatchedRoute};
