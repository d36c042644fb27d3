//! Telling the service behind a gateway who the caller is.
//!
//! [`IdentityHeadersLayer`] goes after the authentication layers. For each request it
//! removes every line of every header it owns (the client's copies, always, even when
//! there is nobody to write), then writes the identity of the principal that speaks
//! for the request: its id, method, credential id, roles, scopes, attributes and the
//! client's address, each into the header the host names. Values are percent-encoded
//! where needed, so a role with a comma cannot pass for two and nothing can break the
//! header. With the `assertion` feature (default) it can also send a short-lived JWT
//! that the gateway signs, for upstreams reachable by other paths than the gateway:
//! they verify it with `portcullis-jwt` (an `Issuer` with the gateway's key, the
//! assertion's `typ` and their own name as audience).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{HeaderName, Request};
//! use portcullis_core::{AuthMethod, Authentication, Principal};
//! use portcullis_upstream::IdentityHeadersLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = IdentityHeadersLayer::builder()
//!     .principal_header(HeaderName::from_static("x-caller-id"))
//!     .roles_header(HeaderName::from_static("x-caller-roles"))
//!     .build()?;
//! // The service behind the gateway reads who called.
//! let upstream = tower::service_fn(|request: Request<()>| async move {
//!     Ok::<_, Infallible>(request.headers().get("x-caller-id").cloned())
//! });
//! let service = ServiceBuilder::new().layer(identity).service(upstream);
//!
//! // A client claims to be admin; the API key layer established alice.
//! let mut request = Request::new(());
//! request.headers_mut().insert("x-caller-id", "admin".parse()?);
//! let alice = Principal::builder("alice", AuthMethod::ApiKey).role("reader").build();
//! Authentication::insert_into(request.extensions_mut(), alice)?;
//! let seen = service.clone().oneshot(request).await?;
//! assert_eq!(seen.unwrap(), "alice");
//!
//! // Nobody authenticated: the claim is still removed.
//! let mut request = Request::new(());
//! request.headers_mut().insert("x-caller-id", "admin".parse()?);
//! assert_eq!(service.oneshot(request).await?, None);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod identity;
#[cfg(feature = "proxy")]
mod proxy;

pub use identity::{ConfigError, IdentityHeaders, IdentityHeadersBuilder, IdentityHeadersLayer};
#[cfg(feature = "proxy")]
pub use proxy::{Upstream, UpstreamBody, UpstreamBuilder, UpstreamError, LAYER_NAME};

/// What the fuzz targets in `fuzz/` drive (built only with `--cfg fuzzing`, which
/// `cargo fuzz` sets).
#[cfg(all(fuzzing, feature = "proxy"))]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::proxy::fuzzing::prepare;
}
