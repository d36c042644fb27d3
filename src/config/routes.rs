//! `[[route]]`: what the host's router does not match goes to the upstream whose prefix
//! it falls under.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use portcullis_core::{Rejection, Renderer};
use portcullis_upstream::Upstream;
use tower::Service;

/// The upstreams by prefix, longest first.
#[derive(Clone)]
pub(crate) struct UpstreamRoutes {
    routes: Arc<Vec<(String, Upstream)>>,
    renderer: Renderer,
}

impl UpstreamRoutes {
    pub(crate) fn new(routes: Vec<(String, Upstream)>) -> Self {
        Self {
            routes: Arc::new(routes),
            renderer: Renderer::default(),
        }
    }

    /// The upstream for `path`: its prefix is the path, or a whole segment of it.
    fn find(&self, path: &str) -> Option<&Upstream> {
        self.routes.iter().find_map(|(prefix, upstream)| {
            let under = prefix == "/"
                || path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
            under.then_some(upstream)
        })
    }
}

impl Service<Request<Body>> for UpstreamRoutes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.find(request.uri().path()).cloned() {
            Some(mut upstream) => Box::pin(async move {
                let response = upstream.call(request).await?;
                Ok(response.map(Body::new))
            }),
            None => {
                let rejection = Rejection::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no route of this gateway serves this path",
                );
                let response = self
                    .renderer
                    .respond::<Body, _>("upstream", &rejection, &request)
                    .map(Body::new);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
