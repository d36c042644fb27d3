//! Portcullis: security middleware for tower.
//!
//! Each concern is one small crate exporting one tower `Layer`; this crate re-exports
//! them behind features of the same name, so an axum, tonic or hyper service picks the
//! layers it needs and composes them in the order it wants.
//!
//! | feature | crate | layer |
//! |---|---|---|
//! | `api-key` | [`portcullis-api-key`](api_key) | [`ApiKeyLayer`](api_key::ApiKeyLayer): checksummed API keys checked against hashed records, with expiry, rotation, revocation and per-key networks |
//! | `audit` | [`portcullis-audit`](audit) | [`AuditLayer`](audit::AuditLayer): one audit event per request (who, what, from where, decision and why) to `tracing` and JSON-lines files with rotation and a hash chain |
//! | `ip-allowlist` | [`portcullis-ip-allowlist`](ip_allowlist) | [`IpAllowlistLayer`](ip_allowlist::IpAllowlistLayer): allow and deny networks, client IP behind trusted proxies |
//! | `jwt` | [`portcullis-jwt`](jwt) | [`JwtLayer`](jwt::JwtLayer): bearer JWTs checked against trusted issuers' keys (static, JWKS, OIDC discovery), certificate-bound tokens, an account check per request; [`TokenIssuer`](jwt::TokenIssuer) issues and extends tokens |
//! | `mtls-identity` | [`portcullis-mtls-identity`](mtls_identity) | [`MtlsIdentityLayer`](mtls_identity::MtlsIdentityLayer): verified client certificates (in-process rustls, tonic, or a trusted proxy's header) bound to registered connectors, with EKU, validity and CRL checks; [`TlsListener`](mtls_identity::TlsListener) serves axum over mTLS |
//! | `rate-limit` | [`portcullis-rate-limit`](rate_limit) | [`RateLimitLayer`](rate_limit::RateLimitLayer): quotas per client IP, principal, credential, header or route (smooth or strict windows), bans, IETF RateLimit headers; `redis` shares them between instances |
//! | `role-router` | [`portcullis-role-router`](role_router) | [`RoleRouterLayer`](role_router::RoleRouterLayer): method + path-pattern rules saying which credentials, roles and scopes a route needs |
//!
//! [`core`] holds the contracts every layer shares: [`Principal`](core::Principal),
//! [`Authentication`](core::Authentication), [`ClientIp`](core::ClientIp),
//! [`Rejection`](core::Rejection) and its renderers, and audit notes.
//!
//! Features `axum`, `tonic` and `tonic-tls` teach [`ClientIp`](core::ClientIp)
//! resolution to read those servers' connection info; `full` (the default) turns on
//! everything.
//!
//! ```
//! # #[cfg(feature = "ip-allowlist")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis::core::{ClientIpResolver, ForwardedHeader};
//! use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
//!
//! let allowlist = IpAllowlistLayer::new(IpRules::new().allow("10.0.0.0/8".parse()?))
//!     .client_ip(
//!         ClientIpResolver::new()
//!             .trust_proxies("10.255.0.0/16".parse()?)?
//!             .forwarded_header(ForwardedHeader::Forwarded),
//!     );
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(allowlist);
//! # let _ = app;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "ip-allowlist"))]
//! # fn main() {}
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use portcullis_core as core;

#[cfg(feature = "api-key")]
pub use portcullis_api_key as api_key;

#[cfg(feature = "audit")]
pub use portcullis_audit as audit;

#[cfg(feature = "ip-allowlist")]
pub use portcullis_ip_allowlist as ip_allowlist;

#[cfg(feature = "jwt")]
pub use portcullis_jwt as jwt;

#[cfg(feature = "mtls-identity")]
pub use portcullis_mtls_identity as mtls_identity;

#[cfg(feature = "config")]
pub mod config;

#[cfg(feature = "ext-authz")]
pub use portcullis_ext_authz as ext_authz;

#[cfg(feature = "upstream")]
pub use portcullis_upstream as upstream;

#[cfg(feature = "proxy-protocol")]
pub use portcullis_proxy_protocol as proxy_protocol;

#[cfg(feature = "rate-limit")]
pub use portcullis_rate_limit as rate_limit;

#[cfg(feature = "role-router")]
pub use portcullis_role_router as role_router;

// The README's Rust examples compile as tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
