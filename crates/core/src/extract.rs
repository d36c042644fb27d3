//! axum extractors for what the layers put in a request (feature `axum`).
//!
//! ```
//! use axum::{routing::get, Router};
//! use portcullis_core::extract::{Authenticated, ByApiKey, PrincipalBy};
//! use portcullis_core::{ClientIp, Principal};
//!
//! // The only principal (401 without one; 500 if several: pick with `PrincipalBy`).
//! async fn whoami(principal: Principal) -> String {
//!     principal.id().to_owned()
//! }
//! // The API key's principal, whatever else authenticated the request.
//! async fn key_owner(PrincipalBy(owner, ..): PrincipalBy<ByApiKey>) -> String {
//!     owner.id().to_owned()
//! }
//! // Everyone the request authenticated as, and where it came from.
//! async fn audit(Authenticated(auth): Authenticated, ip: ClientIp) -> String {
//!     format!("{} principal(s) from {}", auth.principals().count(), ip.ip())
//! }
//! // A route open to anyone that greets the signed-in.
//! async fn hello(principal: Option<Principal>) -> String {
//!     principal.map_or("hello".into(), |p| format!("hello {}", p.id()))
//! }
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/owner", get(key_owner))
//!     .route("/audit", get(audit))
//!     .route("/hello", get(hello));
//! # let _ = app;
//! ```
//!
//! Each refuses with the layers' problem+json: 401 `unauthenticated` when the request
//! has no (matching) principal, and 500 `layer_missing` when no authentication layer
//! ran before the handler at all (logged with what to add), so a forgotten layer is an
//! error, never an anonymous request. Handlers used to reach these through
//! `Extension<Authentication>`; `Extension<Principal>` compiled and failed at run time.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::{problem_json_response, AuthMethod, Authentication, ClientIp, Principal, Rejection};

/// An extractor's refusal, rendered as the layers render theirs.
#[derive(Debug)]
pub struct ExtractRejection(pub Rejection);

impl IntoResponse for ExtractRejection {
    fn into_response(self) -> Response {
        problem_json_response(&self.0).map(axum::body::Body::from)
    }
}

fn unauthenticated() -> ExtractRejection {
    ExtractRejection(Rejection::unauthorized(
        "unauthenticated",
        "this route requires authentication",
    ))
}

fn layer_missing(what: &'static str, add: &'static str) -> ExtractRejection {
    tracing::error!(
        "portcullis: a handler extracts {what}, but no layer put it in the request: add {add} in front of the route"
    );
    ExtractRejection(Rejection::internal(
        "layer_missing",
        "the server is misconfigured",
    ))
}

/// The request's `Authentication`, or the refusal for a request no authentication
/// layer saw. The layers leave an empty one on requests they let through without
/// credentials (optional mode), so "absent" means "no layer ran".
fn authentication(parts: &Parts) -> Result<&Authentication, ExtractRejection> {
    parts.extensions.get::<Authentication>().ok_or_else(|| {
        layer_missing(
            "a principal",
            "an authentication layer (MtlsIdentityLayer, ApiKeyLayer or JwtLayer)",
        )
    })
}

/// Every principal the request authenticated as: 401 when none.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Authentication);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let auth = authentication(parts)?;
        if auth.is_authenticated() {
            Ok(Self(auth.clone()))
        } else {
            Err(unauthenticated())
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        let auth = authentication(parts)?;
        Ok(auth.is_authenticated().then(|| Self(auth.clone())))
    }
}

/// The request's only principal. 401 when there is none; 500 (logged) when there are
/// several, since picking one silently could act as the wrong identity: extract
/// [`PrincipalBy`] or [`Authenticated`] instead.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <Principal as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or_else(unauthenticated)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        let auth = authentication(parts)?;
        let mut principals = auth.principals();
        let first = principals.next().cloned();
        if principals.next().is_some() {
            let methods: Vec<&str> = auth.methods().map(AuthMethod::as_str).collect();
            tracing::error!(
                ?methods,
                "portcullis: a handler extracts `Principal`, but the request has several; extract `PrincipalBy<…>` or `Authenticated`"
            );
            return Err(ExtractRejection(Rejection::internal(
                "ambiguous_principal",
                "the server is misconfigured",
            )));
        }
        Ok(first)
    }
}

/// An authentication method, as a type: [`ByCertificate`], [`ByApiKey`], [`ByJwt`].
pub trait Method: Send + Sync + 'static {
    /// The method.
    const METHOD: AuthMethod;
}

/// The client certificate's principal.
#[derive(Clone, Copy, Debug)]
pub struct ByCertificate;
/// The API key's principal.
#[derive(Clone, Copy, Debug)]
pub struct ByApiKey;
/// The JWT's principal.
#[derive(Clone, Copy, Debug)]
pub struct ByJwt;

impl Method for ByCertificate {
    const METHOD: AuthMethod = AuthMethod::Certificate;
}
impl Method for ByApiKey {
    const METHOD: AuthMethod = AuthMethod::ApiKey;
}
impl Method for ByJwt {
    const METHOD: AuthMethod = AuthMethod::Jwt;
}

/// The principal of one authentication method: 401 when the request did not
/// authenticate that way.
#[derive(Clone, Debug)]
pub struct PrincipalBy<M: Method>(pub Principal, pub PhantomData<M>);

impl<M: Method> PrincipalBy<M> {
    /// The principal.
    pub fn into_inner(self) -> Principal {
        self.0
    }
}

impl<M: Method, S: Send + Sync> FromRequestParts<S> for PrincipalBy<M> {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or_else(unauthenticated)
    }
}

impl<M: Method, S: Send + Sync> OptionalFromRequestParts<S> for PrincipalBy<M> {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        let auth = authentication(parts)?;
        Ok(auth
            .get(M::METHOD)
            .map(|principal| Self(principal.clone(), PhantomData)))
    }
}

/// The client address a layer resolved (the ip-allowlist, the audit layer, or the
/// API-key layer for a key limited to networks), under that layer's trust in proxies.
/// 500 (logged) when none did: the extractor does not guess from the socket peer,
/// which behind a proxy is the proxy.
impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ClientIp>().cloned().ok_or_else(|| {
            layer_missing(
                "the client address",
                "IpAllowlistLayer or AuditLayer (with your ClientIpResolver)",
            )
        })
    }
}

/// The same as [`ClientIp`]: every request that passed a resolving layer has an address,
/// so a missing one is a forgotten layer (500, logged), never `None`.
impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientIp {
    type Rejection = ExtractRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        <ClientIp as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}
