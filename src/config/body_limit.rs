//! `[server] max_body_bytes` and `[[server.body_limit]]`: the largest request body, per
//! path pattern.
//!
//! A declared `Content-Length` over the limit is answered 413 problem+json
//! (`body_too_large`) before the handler runs. A body without a declared length
//! (chunked, or HTTP/2 without `content-length`) is cut off at the limit: the handler's
//! read of it fails, which axum's extractors answer with 413. A body with a declared
//! length cannot grow past it: hyper ends it there.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures::future::{Either, Ready};
use http::{header::CONTENT_LENGTH, Request, Response, StatusCode};
use http_body::Body as _;
use portcullis_core::{problem_json_response, Rejection};
use portcullis_role_router::{normalize, PathPattern};
use tower::{Layer, Service};

/// The limits, compiled: the first matching pattern's, else the default.
#[derive(Clone, Debug)]
pub(crate) struct BodyLimits {
    default: usize,
    routes: Arc<[(PathPattern, usize)]>,
}

impl BodyLimits {
    pub(crate) fn new(default: usize, routes: Vec<(PathPattern, usize)>) -> Self {
        Self {
            default,
            routes: routes.into(),
        }
    }

    /// The limit for a request path. A path the policy could not read the same way as
    /// the router (see [`normalize`]) gets the default; the role-router refuses it.
    fn for_path(&self, path: &str) -> usize {
        let Ok(path) = normalize(path) else {
            return self.default;
        };
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(&path))
            .map_or(self.default, |(_, max)| *max)
    }
}

impl<S> Layer<S> for BodyLimits {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service of [`BodyLimits`].
#[derive(Clone, Debug)]
pub(crate) struct BodyLimit<S> {
    inner: S,
    limits: BodyLimits,
}

impl<S> Service<Request<Body>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let max = self.limits.for_path(request.uri().path());
        // Several Content-Length lines, or one that is not a number, never reach here:
        // hyper answers 400. A value hyper accepted is a plain decimal.
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            let refusal = Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {max} bytes"),
            );
            let response = problem_json_response(&refusal).map(Body::from);
            return Either::Right(futures::future::ready(Ok(response)));
        }
        let bounded = request
            .body()
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= max as u64);
        if bounded {
            return Either::Left(self.inner.call(request));
        }
        let request = request.map(|body| Body::new(http_body_util::Limited::new(body, max)));
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        let limits = BodyLimits::new(10, vec![(PathPattern::new("/upload/**").unwrap(), 100)]);
        Router::new()
            .route(
                "/small",
                post(|body: String| async move { body.len().to_string() }),
            )
            .route(
                "/upload/file",
                post(|body: String| async move { body.len().to_string() }),
            )
            .layer(limits)
    }

    async fn send(request: Request<Body>) -> (StatusCode, String) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 10_000)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn post_with(path: &str, body: Body, length: Option<usize>) -> Request<Body> {
        let mut request = Request::post(path);
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        request.body(body).unwrap()
    }

    #[tokio::test]
    async fn bodies_are_held_to_their_paths_limit() {
        // Within the limits: served.
        let (status, body) = send(post_with("/small", Body::from("0123456789"), Some(10))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "10"));
        let (status, body) = send(post_with(
            "/upload/file",
            Body::from("x".repeat(100)),
            Some(100),
        ))
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "100"));

        // A declared length over the limit: problem+json before the handler.
        let (status, body) = send(post_with("/small", Body::from("x".repeat(11)), Some(11))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("\"code\":\"body_too_large\""), "{body}");
        assert!(body.contains("10 bytes"), "{body}");
        let (status, _) = send(post_with(
            "/upload/file",
            Body::from("x".repeat(101)),
            Some(101),
        ))
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // The limit goes by the path the router reads: an encoded path is decoded first.
        let (status, _) = send(post_with(
            "/%75pload/file",
            Body::from("x".repeat(50)),
            Some(50),
        ))
        .await;
        assert_ne!(status, StatusCode::PAYLOAD_TOO_LARGE);

        // No declared length (a stream): cut off at the limit, and 413 from the
        // handler's extractor.
        let stream = || {
            let chunks = (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from("xxxxxx")));
            Body::from_stream(futures::stream::iter(chunks))
        };
        let (status, _) = send(post_with("/small", stream(), None)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, body) = send(post_with("/upload/file", stream(), None)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        let short = Body::from_stream(futures::stream::iter(
            (0..2).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from("xxxxx"))),
        ));
        let (status, body) = send(post_with("/upload/file", short, None)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "10"));
    }
}
