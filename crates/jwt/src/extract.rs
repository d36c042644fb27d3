//! axum extractors for the verified token's claims (feature `axum`).

use crate::claims::{Claims, JwtClaims};

/// The verified token's claims (feature `axum`): 401 `unauthenticated` when the request
/// carries no token the JWT layer verified, 500 `layer_missing` (logged) when no JWT
/// layer ran before the handler.
///
/// ```
/// use axum::{routing::get, Router};
/// use portcullis_jwt::JwtClaims;
///
/// async fn subject(claims: JwtClaims) -> String {
///     claims.subject().to_owned()
/// }
/// let app: Router = Router::new().route("/me", get(subject));
/// # let _ = app;
/// ```
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for JwtClaims {
    type Rejection = portcullis_core::extract::ExtractRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        extract(parts, parts.extensions.get::<JwtClaims>().cloned())
    }
}

/// The host's claims type, as [`JwtLayerBuilder::claims`](crate::JwtLayerBuilder::claims)
/// parsed it (feature `axum`): 401 without a verified token, 500 `layer_missing`
/// (logged) when no JWT layer ran or it was not told to parse `T`.
impl<T: Send + Sync + 'static, S: Send + Sync> axum::extract::FromRequestParts<S> for Claims<T> {
    type Rejection = portcullis_core::extract::ExtractRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        extract(parts, parts.extensions.get::<Claims<T>>().cloned())
    }
}

/// `None` when the request carries no verified token (a route the JWT layer lets through
/// in optional mode); 500 `layer_missing` (logged) when no JWT layer ran.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for JwtClaims {
    type Rejection = portcullis_core::extract::ExtractRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        optional(extract(parts, parts.extensions.get::<JwtClaims>().cloned()))
    }
}

/// `None` without a verified token; 500 `layer_missing` (logged) when no JWT layer ran or
/// it was not told to parse `T`.
impl<T: Send + Sync + 'static, S: Send + Sync> axum::extract::OptionalFromRequestParts<S>
    for Claims<T>
{
    type Rejection = portcullis_core::extract::ExtractRejection;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        optional(extract(parts, parts.extensions.get::<Claims<T>>().cloned()))
    }
}

/// A 401 (no token) becomes `None`; a 500 (no layer) stays an error.
fn optional<T>(
    found: Result<T, portcullis_core::extract::ExtractRejection>,
) -> Result<Option<T>, portcullis_core::extract::ExtractRejection> {
    match found {
        Ok(found) => Ok(Some(found)),
        Err(rejection) if rejection.0.status() == http::StatusCode::UNAUTHORIZED => Ok(None),
        Err(rejection) => Err(rejection),
    }
}

fn extract<T>(
    parts: &http::request::Parts,
    found: Option<T>,
) -> Result<T, portcullis_core::extract::ExtractRejection> {
    use portcullis_core::{AuthMethod, Authentication, Rejection};
    if let Some(found) = found {
        return Ok(found);
    }
    // A JWT layer leaves an `Authentication` (empty when it let the request through
    // without a token); none at all, or a JWT principal without these claims, is a
    // missing or misconfigured layer.
    match parts.extensions.get::<Authentication>() {
        Some(auth) if !auth.has(AuthMethod::Jwt) => {
            Err(portcullis_core::extract::ExtractRejection(
                Rejection::unauthorized("unauthenticated", "this route requires a bearer token"),
            ))
        }
        _ => {
            tracing::error!(
                "portcullis: a handler extracts JWT claims, but no JwtLayer put them in the request: add JwtLayer (with .claims::<T>() for Claims<T>) in front of the route"
            );
            Err(portcullis_core::extract::ExtractRejection(
                Rejection::internal("layer_missing", "the server is misconfigured"),
            ))
        }
    }
}
