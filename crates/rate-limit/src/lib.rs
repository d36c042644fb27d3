//! Rate limits for tower services: quotas charged per client IP, principal,
//! credential, header or route, refused with 429 and the IETF RateLimit fields, bans for
//! keys that keep exceeding them, and a Redis backend for many instances.
//!
//! ```
//! use std::time::Duration;
//! use portcullis_rate_limit::{Ban, KeyPart, MissingKey, Quota, RateLimitLayer, Semantics};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limits = RateLimitLayer::builder()
//!     // Any client: 100 requests per second per address (IPv6 grouped by /64).
//!     .quota(Quota::new("per-ip", "100/s".parse()?))
//!     // Each API key: 25 calls in any 5 minutes; refused more than 10 times in an
//!     // hour, and it is banned for a day.
//!     .quota(
//!         Quota::new("per-key", "25 per 5m".parse()?)
//!             .key([KeyPart::Credential])
//!             .semantics(Semantics::StrictWindow)
//!             .when_key_missing(MissingKey::Skip)
//!             .ban(Ban::after(10, Duration::from_secs(3600), Duration::from_secs(86_400))),
//!     )
//!     .headers_on_allowed(true)
//!     .build()?;
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(limits);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Quotas
//!
//! A [`Quota`] is a [`Rate`] written "N per period" (`25 per 5m`, `100/s`), a key made
//! of [`KeyPart`]s, and a [`Semantics`]: smooth (GCRA, through `governor`) or a strict
//! sliding window, whose table in [`Semantics`] says when to choose which. A principal's
//! rate-limit tier can select another rate ([`Quota::tier`]). A request is charged to
//! every quota that applies; if one refuses, none is charged.
//!
//! A request that lacks a part of a quota's key (no principal for a per-principal
//! quota) is skipped or refused, as the host chooses with [`Quota::when_key_missing`].
//!
//! # Where it goes in the stack
//!
//! Place one instance before the authentication layers, keyed by client IP, and one
//! after them, keyed by principal: unauthenticated floods are throttled before any key
//! or token is checked, and each principal gets its own quota. A quota with
//! [`Charge::Unauthenticated`] must wrap the authentication layers: it counts only the
//! requests they refused with 401, so key and password guessing is throttled and then
//! banned while good traffic is never charged.
//!
//! # Dry runs and checks
//!
//! A quota in [`Mode::DryRun`] refuses nothing: a request over it is let through, and
//! an audit note (`code = "dry_run"`), a metric and a log line say what it would have
//! got. [`RateLimitHandle::set_mode`] switches a quota at run time.
//! [`RateLimitHandle::check`] and [`RateLimitHandle::check_key`] answer what a request
//! or a key would get now, without charging it.
//!
//! # Responses
//!
//! | code | status | when |
//! |---|---|---|
//! | `rate_limited` | 429 + `Retry-After` | over a quota |
//! | `banned` | 403, or 429 + `Retry-After` ([`BanResponse`]) | banned by a [`Ban`] |
//! | `rate_limit_capacity` | 429 + `Retry-After` | a new key past [`Quota::max_tracked_keys`] with [`Overflow::Refuse`] |
//! | `rate_limit_key_missing` | 401 (principal parts) or 400 | a part of the key is missing and the quota refuses |
//! | `rate_limit_unavailable` | 503 | Redis cannot answer and the host chose to fail closed |
//!
//! `Retry-After` is rounded up to whole seconds, so a client never comes back early.
//! Refusals carry `RateLimit-Policy` and `RateLimit` ([`headers`]); allowed responses
//! do too with [`RateLimitBuilder::headers_on_allowed`]. gRPC requests get
//! `RESOURCE_EXHAUSTED`.
//!
//! # Memory
//!
//! Each quota tracks at most [`Quota::max_tracked_keys`] keys (a million by default).
//! A sweeper thread drops keys whose quota is whole again every 60 seconds
//! ([`RateLimitBuilder::sweep_every`]), so memory returns to its baseline after a
//! flood. Past the cap, new keys share one overflow state ([`Overflow`]).
//!
//! # Redis
//!
//! With the `redis` feature, `RedisBackend` shares quotas and bans between instances:
//! one Lua script checks bans and every quota of a request and charges them in one
//! round trip. By default an instance leases a few permits of a busy key at once and
//! spends them in process (a round trip per lease, not per request); near a key's limit
//! leases shrink to one permit, so the count there stays exact (`RedisBackend::lease_ttl`,
//! `Quota::exact`). If Redis is down or slower than the timeout (the whole budget of a
//! request's Redis work), the failure policy decides: the in-process quotas (the
//! default), 503, or unlimited (`RedisFailure`). A Redis that stalls is left alone for a
//! pause; one that refuses or drops connections (restarting) is tried by every request,
//! so the first request once it is back uses it. While falling back, each of N instances
//! allows its share of every quota (`RedisBackend::instances`, or learned from
//! heartbeats).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod ban;
mod check;
mod engine;
mod future;
pub mod headers;
mod key;
mod layer;
#[cfg(feature = "redis")]
mod lease;
mod limiter;
mod quota;
mod rate;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_link;
mod slots;
mod ticker;

#[cfg(test)]
mod tests;

/// Parsers reached by the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`,
/// which `cargo fuzz` sets).
#[cfg(all(fuzzing, feature = "redis"))]
#[doc(hidden)]
pub mod fuzzing {
    /// Reads a Redis URL as [`RedisBackend::connect`](crate::RedisBackend::connect)
    /// does: the kind of target, or the error's text.
    pub fn redis_url(url: &str) -> Result<&'static str, String> {
        match crate::redis_link::Target::parse(url, None) {
            Ok(crate::redis_link::Target::Single(_)) => Ok("single"),
            Ok(crate::redis_link::Target::Cluster(_)) => Ok("cluster"),
            Ok(crate::redis_link::Target::Sentinel(_)) => Ok("sentinel"),
            Err(error) => Err(error.to_string()),
        }
    }
}

pub use ban::BanEntry;
pub use check::{CheckKeyError, QuotaCheck, RateLimitCheck};
pub use future::ResponseFuture;
pub use layer::{RateLimit, RateLimitBuilder, RateLimitHandle, RateLimitLayer};
pub use quota::{
    Ban, BanResponse, Charge, ConfigError, CustomKey, KeyPart, MissingKey, Mode, Overflow, Quota,
    RequestHead, Semantics, UnknownMode, MAX_BURST_REFILL, MAX_STRICT_COUNT,
};
pub use rate::{InvalidRate, Rate};
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisError, RedisFailure};
#[cfg(feature = "redis")]
pub use redis_link::RedisTls;

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "rate-limit";
