//! Bearer JWTs: validated against trusted issuers' keys, turned into a
//! [`Principal`](portcullis_core::Principal), optionally bound to the client certificate,
//! re-checked against the account store; and issued and extended.
//!
//! [`JwtLayer`] reads `Authorization: Bearer <token>` (RFC 6750), refuses a token over
//! the size cap before decoding it, matches `iss` to a configured [`Issuer`], picks the
//! issuer's key by `kid`, checks the signature with the key's own algorithm (never the
//! one the token names), then `exp`, `nbf`, `iat`, `aud` and `typ`, and adds the
//! principal to the request's [`Authentication`](portcullis_core::Authentication).
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::{SystemTime, UNIX_EPOCH};
//! use http::{Request, Response, StatusCode};
//! use jsonwebtoken::Algorithm;
//! use portcullis_core::{AuthMethod, Authentication, Principal};
//! use portcullis_jwt::{Issuer, JwtLayer, SigningKey, TokenIssuer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SigningKey::generate(Algorithm::ES256)?.with_kid("2026-11");
//! let issuer = TokenIssuer::new(key, "https://auth.example", "key-service")?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(JwtLayer::builder().issuer(issuer.validating_issuer()).build()?)
//!     .service(service_fn(|request: Request<()>| async move {
//!         let auth = Authentication::from_extensions(request.extensions());
//!         let who = auth.get(AuthMethod::Jwt).map(|p| p.id().to_owned());
//!         Ok::<_, Infallible>(Response::new(who.unwrap_or_default()))
//!     }));
//!
//! let app = Principal::builder("app-7", AuthMethod::Certificate).role("operator").build();
//! let token = issuer.issue(&app, None)?;
//! let request = Request::builder()
//!     .header("authorization", format!("Bearer {}", token.expose()))
//!     .body(())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! let forged = Request::builder().header("authorization", "Bearer e30.e30.AAAA").body(())?;
//! assert_eq!(service.oneshot(forged).await?.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! [`VerifyingKey`]s are HMAC secrets (at least 32 bytes), RSA (at least 2048 bits), EC
//! (P-256, P-384) or Ed25519 public keys, from PEM or JWK. An [`Issuer`] takes keys
//! directly, from a JWKS file (reloaded with [`JwtHandle::reload_key_files`]), from a
//! JWKS URL or through OpenID Connect discovery. Fetched keys are refreshed in the
//! background; a token with an unknown `kid` asks for a refresh at most once per
//! minimum interval and waits for it, and while the key server is down the last good
//! keys stay in use for up to [`Issuer::max_key_age`]. Keys are refused at load when
//! weak: short HMAC secrets, RSA moduli under 2048 bits, RSA public exponents that are
//! even or below 65537, EC points that are not on their curve (a JWKS entry is skipped
//! with a warning). Signatures are checked with aws-lc-rs through `jsonwebtoken`.
//!
//! # Principals
//!
//! A token's principal is its `sub` (or the configured subject claim). A layer that
//! trusts several issuers qualifies it by the issuer: `<alias>#<sub>`, where the alias
//! is [`Issuer::alias`] or the issuer's name. So `sub: alice` from two issuers is two
//! principals for the role router, the rate limiter's principal keys and the audit
//! event; [`JwtClaims::subject`] keeps the raw `sub` for handlers.
//!
//! # What is refused
//!
//! | situation | status | code |
//! |---|---|---|
//! | no token, in `required` mode | 401 | `missing_token` |
//! | the `Authorization` line is not exactly `Bearer`, one space and the token (a tab, two spaces, trailing space, no token), or two bearer lines | 401 | `malformed_token` |
//! | over the size cap (8 KiB), not three base64url parts, a header or claims that are not a JSON object, a member name repeated at any depth, `alg` / `kid` / `typ` / `crit` / a registered claim of the wrong type, a JWE parameter (`enc`, `zip`, `epk`, `apu`, `apv`, `p2s`, `p2c`, `iv`, `tag`) | 401 | `malformed_token` |
//! | `alg` not the algorithm of the issuer's keys (`none`, HS256 against an RSA key, …) | 401 | `invalid_algorithm` |
//! | a `crit` header (a non-empty list of names; this layer understands none) | 401 | `unsupported_critical_header` |
//! | `typ` other than the ones accepted: by default none, `JWT` or `at+jwt` ([`DEFAULT_TOKEN_TYPES`]), else those given to [`Issuer::token_type`] | 401 | `invalid_token_type` |
//! | `iss` names no configured issuer | 401 | `invalid_issuer` |
//! | `kid` names no key, even after a refresh | 401 | `unknown_key` |
//! | the signature does not verify | 401 | `invalid_signature` |
//! | no `exp`; no subject, or one that is not a string, empty or holds a control character; `roles` not an array of such strings; `scope` not RFC 6749 scope tokens separated by single spaces; `scp` not an array of scope tokens; an attribute or tier claim not a clean string; an unknown `cnf` method; claims not fitting [`Claims<T>`] | 401 | `invalid_claims` |
//! | at or after `exp` + leeway | 401 | `expired_token` |
//! | before `nbf` − leeway, or `iat` in the future beyond leeway | 401 | `token_not_yet_valid` |
//! | `aud` missing or not this service's | 401 | `invalid_audience` |
//! | `jti` revoked ([`Revocations`]) | 401 | `revoked_token` |
//! | `cnf.x5t#S256` and another (or no) client certificate | 401 | `certificate_mismatch` |
//! | the account check says blocked / gone | 401 | `account_disabled` / `unknown_account` |
//! | a scope the layer requires is missing | 403 | `insufficient_scope` |
//! | the account check cannot answer; the key server never answered, or every refresh has failed for longer than [`Issuer::max_key_age`] (24 h by default) | 503 | `account_check_unavailable` / `keys_unavailable` |
//!
//! Every 401 and 403 carries an RFC 6750 `WWW-Authenticate: Bearer` challenge. Headers
//! such as `jwk`, `jku`, `x5u` and `x5c` are never used: keys come from configuration
//! only. The token is removed from the request before the inner service runs, and no
//! response, log line or `Debug` output contains it.
//!
//! # Caches
//!
//! Verified tokens are remembered by their SHA-256, until their `exp` and only under the
//! keys they were verified with, so a token seen again skips the signature check.
//! Revocation, the certificate binding, required scopes and the account check
//! ([`SubjectCheck`], cached for its own short time) are applied on every request.
//!
//! # Issuing
//!
//! [`TokenIssuer`] signs tokens for a principal authenticated by another layer (a client
//! certificate, an API key), valid for 10 hours by default, optionally bound to the
//! client certificate; [`TokenIssuer::issue_service`] and [`TokenIssuer::extend_service`]
//! are tower services to mount as `POST` routes.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "remote")]
mod cache_control;
mod claims;
mod credential;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod issue;
mod issuer;
mod key;
mod keyring;
mod keyset;
mod layer;
mod refusal;
mod revocation;
#[cfg(feature = "redis")]
mod revocation_redis;
#[cfg(test)]
mod strict_tests;
mod subject;
#[cfg(test)]
mod tests;
mod token;
mod validator;

pub use claims::{ClaimPath, ClaimPathError, Claims, InvalidClaimPath, JwtClaims};
pub use future::ResponseFuture;
pub use issue::{Binding, ExtendService, IssueError, IssueService, IssuedToken, TokenIssuer};
pub use issuer::{Issuer, DEFAULT_MAX_KEY_AGE, DEFAULT_TOKEN_TYPES};
pub use key::{
    read_secret_file, KeyError, SigningKey, VerifyingKey, MIN_HMAC_SECRET_LEN, MIN_RSA_BITS,
};
pub use keyset::JwksError;
pub use layer::{ConfigError, Jwt, JwtHandle, JwtLayer, JwtLayerBuilder, KeySetStatus, Mode};
pub use refusal::JwtRefusal;
/// The reqwest that [`Issuer::http_client`] takes.
#[cfg(feature = "remote")]
pub use reqwest;
pub use revocation::{RevocationError, RevocationStatus, Revocations};
#[cfg(feature = "redis")]
pub use revocation_redis::{RedisRevocationsBuilder, RevocationFailure};
pub use subject::{Subject, SubjectCheck, SubjectCheckError, SubjectFuture, SubjectStatus};
pub use token::Malformed;

/// The `jsonwebtoken` crate this layer is built on, for its [`Algorithm`](jsonwebtoken::Algorithm)
/// and [`Jwk`](jsonwebtoken::jwk::Jwk) types.
pub use jsonwebtoken;

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "jwt";

/// Parsers reached by the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`,
/// which `cargo fuzz` sets).
#[cfg(all(fuzzing, feature = "remote"))]
#[doc(hidden)]
pub mod fuzzing {
    /// `Cache-Control: max-age` as the key refresh reads it.
    pub fn cache_control_max_age(headers: &http::HeaderMap) -> Option<std::time::Duration> {
        crate::cache_control::max_age(headers)
    }
}
