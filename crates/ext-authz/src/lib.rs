//! An external authorization layer: for each request, ask another service (an OPA
//! sidecar, a company's entitlement service) whether it may pass, in the style of
//! Envoy's `ext_authz` (HTTP mode), Traefik's ForwardAuth and nginx's `auth_request`.
//!
//! The service is sent the method, path, query, the request headers the host names,
//! the client address and the principals earlier layers established, as JSON or as
//! headers ([`CheckEncoding`]). A 2xx answer lets the request through, with headers and
//! roles it grants ([`ExtAuthzBuilder::upstream_headers`],
//! [`ExtAuthzBuilder::roles_header`]); any 3xx or 4xx refuses with that status.
//!
//! ```
//! use std::time::Duration;
//! use axum::{http::HeaderMap, routing::{get, post}, Router};
//! use portcullis_ext_authz::ExtAuthzLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A decision service: requests carrying the right token pass, as user 7.
//! let decisions = Router::new().route(
//!     "/check",
//!     post(|body: String| async move {
//!         let input: serde_json::Value = serde_json::from_str(&body).unwrap();
//!         match input["headers"]["authorization"][0].as_str() {
//!             Some("Bearer good") => ([("x-user-id", "7")], "").into_response(),
//!             _ => axum::http::StatusCode::FORBIDDEN.into_response(),
//!         }
//!     }),
//! );
//! # use axum::response::IntoResponse;
//! let service = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let endpoint = format!("http://{}/check", service.local_addr()?);
//! tokio::spawn(async move { axum::serve(service, decisions).await });
//!
//! let layer = ExtAuthzLayer::builder(endpoint)
//!     .forward_headers(["authorization".parse()?])
//!     .upstream_headers(["x-user-id".parse()?])
//!     .timeout(Duration::from_millis(300))
//!     .cache(Duration::from_secs(5), 10_000, [])
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|headers: HeaderMap| async move {
//!         format!("hello user {}", headers["x-user-id"].to_str().unwrap())
//!     }))
//!     .layer(layer);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Refusals
//!
//! | code | status | when |
//! |---|---|---|
//! | `external_denied` | the service's (3xx, 4xx) | the service refused; its `WWW-Authenticate` and `Location` are passed on, its body only with [`ExtAuthzBuilder::pass_denial_body`] |
//! | `authorization_unavailable` | 503 | the service is down, slower than the timeout, or answered 5xx, and the layer fails closed (the default; see [`FailureMode`]) |
//!
//! # What the service may change
//!
//! Only what the host names: the answer's headers listed in
//! [`upstream_headers`](ExtAuthzBuilder::upstream_headers) are copied into the request
//! (the client's own copies of them are always removed first, so the application can
//! trust them), its [`roles_header`](ExtAuthzBuilder::roles_header) and
//! [`attribute_header`](ExtAuthzBuilder::attribute_header)s are granted to the
//! principals, and its [`principal_header`](ExtAuthzBuilder::principal_header) names
//! a principal of method `external`.
//!
//! # Cache and connections
//!
//! Answers can be kept for a TTL ([`ExtAuthzBuilder::cache`]), keyed by a SHA-256
//! digest of everything the service is sent or of the parts the host names; the cache
//! is bounded. The HTTP client pools connections, so checks reuse them.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
mod config;
mod layer;

#[cfg(test)]
mod tests;

pub use config::{CacheKeyPart, CheckEncoding, ExtAuthzBuilder, ExtAuthzConfigError, FailureMode};
pub use layer::{ExtAuthz, ExtAuthzLayer, ResponseFuture};

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "ext-authz";
