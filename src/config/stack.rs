//! The built stack as one tower `Layer`, for servers other than axum (tonic, hyper, or
//! any `tower::Service<http::Request<B>>`).
//!
//! The file chooses the layers and their order at run time, so the stack's type cannot
//! be spelled at compile time. Each layer's service sits behind an `Arc` of its own, so
//! a request clones the stack by reference counts alone; each layer's response future
//! is boxed (one small allocation per layer and request), and the response body is
//! boxed once, around the host's body, and passed through by every layer above it. A
//! host that wants no boxing at all composes the layers in code.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use futures::FutureExt as _;
use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service, ServiceExt as _};

use super::build::{Built, TokenRoutes};
use super::Gateway;

/// An error a response body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of [`GatewayLayer`]'s service: the inner service's body or a
/// rejection, boxed once. It is axum's body type, so that under axum (where the host's
/// body already is one) nothing is boxed again; tonic and hyper take it as any
/// `http_body::Body`.
pub type GatewayBody = axum::body::Body;

/// The service [`GatewayLayer`] makes: the whole stack around the host's service.
///
/// Cloned by one reference count. It is always ready: our layers are ready whenever
/// the stack below them is, and the host's service at the bottom is made ready inside
/// the request's future (its back-pressure makes the request wait there rather than
/// in `poll_ready`).
pub struct GatewayService<ReqBody, E> {
    stack: Arc<dyn CallCloned<ReqBody, E>>,
}

impl<ReqBody, E> Clone for GatewayService<ReqBody, E> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
        }
    }
}

impl<ReqBody, E> std::fmt::Debug for GatewayService<ReqBody, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayService").finish_non_exhaustive()
    }
}

impl<ReqBody, E> Service<Request<ReqBody>> for GatewayService<ReqBody, E> {
    type Response = Response<GatewayBody>;
    type Error = E;
    type Future = BoxFuture<'static, Result<Response<GatewayBody>, E>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        self.stack.call_cloned(request)
    }
}

/// A service shared behind an `Arc`, called through a clone of itself (reference
/// counts: every service of the stack holds only `Arc`s and the next `GatewayService`).
trait CallCloned<ReqBody, E>: Send + Sync {
    fn call_cloned(
        &self,
        request: Request<ReqBody>,
    ) -> BoxFuture<'static, Result<Response<GatewayBody>, E>>;
}

/// One level of the stack: one of our layers over the `GatewayService` below it, or
/// the host's service at the bottom.
struct Level<S> {
    service: S,
    /// The host's service is made ready inside the future (`oneshot`), as tower asks.
    /// Our layers are called at once: each one's `poll_ready` is its inner service's,
    /// and a `GatewayService` is always ready, so there is no readiness state to keep
    /// and the request is not moved through one.
    make_ready: bool,
}

impl<S, ReqBody, E> CallCloned<ReqBody, E> for Level<S>
where
    S: Service<Request<ReqBody>, Response = Response<GatewayBody>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    fn call_cloned(
        &self,
        request: Request<ReqBody>,
    ) -> BoxFuture<'static, Result<Response<GatewayBody>, E>> {
        let mut service = self.service.clone();
        if self.make_ready {
            Box::pin(service.oneshot(request))
        } else {
            Box::pin(service.call(request))
        }
    }
}

/// Every layer of a [`Gateway`], in the file's order, as one tower `Layer`: the file's
/// first `[[layer]]` is the outermost. The token routes of `[token_issuer]`, if any,
/// answer their paths inside the stack, as they do under [`Gateway::apply`].
///
/// Made by [`Gateway::layer`]. Works with tonic's `Server::builder().layer(..)`, with
/// `tower::ServiceBuilder`, and with hyper through `hyper_util::service::TowerToHyperService`.
///
/// ```
/// use std::convert::Infallible;
/// use std::path::Path;
/// use http::{Request, Response, StatusCode};
/// use portcullis::config::GatewayConfig;
/// use portcullis::core::PeerAddr;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = r#"
///     [server]
///     listen = "127.0.0.1:8080"
///
///     [[layer]]
///     kind = "ip-allowlist"
///     deny = ["203.0.113.0/24"]
///
///     [[layer]]
///     kind = "rate-limit"
///     [[layer.quota]]
///     name = "per-ip"
///     rate = "2 per 1m"
///     key = ["client-ip"]
/// "#;
/// let gateway = GatewayConfig::parse("inline.toml", file, Path::new("."))?.build().await?;
/// let hello = service_fn(|_: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::from("hello")))
/// });
/// let service = gateway.layer().layer(hello);
/// let from = |peer: &str| {
///     let mut request = Request::new(String::new());
///     request.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
///     request
/// };
/// let denied = service.clone().oneshot(from("203.0.113.9:4000")).await?;
/// assert_eq!(denied.status(), StatusCode::FORBIDDEN);
/// for _ in 0..2 {
///     let allowed = service.clone().oneshot(from("192.0.2.1:4000")).await?;
///     assert_eq!(allowed.status(), StatusCode::OK);
/// }
/// let limited = service.clone().oneshot(from("192.0.2.1:4000")).await?;
/// assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
/// # Ok(())
/// # }
/// ```
///
/// `ReqBody` is the server's request body (`tonic::body::Body`,
/// `hyper::body::Incoming`, …); it is usually inferred.
pub struct GatewayLayer<ReqBody> {
    layers: Arc<[(&'static str, Built)]>,
    token_routes: Option<TokenRoutes>,
    // The layer makes services of `Request<ReqBody>`; it holds no body.
    _body: PhantomData<fn(ReqBody)>,
}

impl<ReqBody> Clone for GatewayLayer<ReqBody> {
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            token_routes: self.token_routes.clone(),
            _body: PhantomData,
        }
    }
}

impl<ReqBody> std::fmt::Debug for GatewayLayer<ReqBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.layers.iter().map(|(kind, _)| *kind).collect();
        f.debug_struct("GatewayLayer")
            .field("layers", &kinds)
            .field("token_routes", &self.token_routes.is_some())
            .finish()
    }
}

impl Gateway {
    /// The whole stack as one tower `Layer`, for tonic, hyper or any tower server.
    /// See [`GatewayLayer`].
    pub fn layer<ReqBody>(&self) -> GatewayLayer<ReqBody> {
        GatewayLayer {
            layers: self.layers.clone().into(),
            token_routes: self.token_routes.clone(),
            _body: PhantomData,
        }
    }

    /// The layers alone, for a router that routes the token paths itself.
    #[cfg(feature = "axum")]
    pub(crate) fn layer_without_token_routes<ReqBody>(&self) -> GatewayLayer<ReqBody> {
        GatewayLayer {
            token_routes: None,
            ..self.layer()
        }
    }
}

impl<S, ReqBody, ResBody> Layer<S> for GatewayLayer<ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Service = GatewayService<ReqBody, S::Error>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = boxed(inner);
        if let Some(routes) = &self.token_routes {
            service = boxed(WithTokenRoutes {
                routes: routes.clone(),
                inner: service,
            });
        }
        for (_, layer) in self.layers.iter().rev() {
            service = match layer {
                Built::IpAllowlist(layer) => boxed_layer(layer.layer(service)),
                Built::MtlsIdentity(layer) => boxed_layer(layer.layer(service)),
                Built::ApiKey(layer) => boxed_layer(layer.layer(service)),
                Built::Jwt(layer) => boxed_layer(layer.layer(service)),
                Built::RoleRouter(layer) => boxed_layer(layer.layer(service)),
                Built::RateLimit(layer) => boxed_layer(layer.layer(service)),
                Built::Audit(layer) => boxed_layer(layer.layer(service)),
                Built::ExtAuthz(layer) => boxed_layer(layer.layer(service)),
                Built::IdentityHeaders(layer) => boxed_layer(layer.layer(service)),
            };
        }
        service
    }
}

/// A layer's response body over an already boxed body, as the boxed body itself: the
/// allow path passes the inner box through instead of boxing it once more per layer.
trait IntoGatewayBody {
    fn into_gateway_body(self) -> GatewayBody;
}

impl IntoGatewayBody for GatewayBody {
    fn into_gateway_body(self) -> GatewayBody {
        self
    }
}

impl IntoGatewayBody for portcullis_core::RejectOrBody<GatewayBody> {
    fn into_gateway_body(self) -> GatewayBody {
        match self.into_inner() {
            Ok(inner) => inner,
            Err(rejection) => GatewayBody::from(rejection),
        }
    }
}

/// One of our layers' services over the boxed stack below it, boxed.
fn boxed_layer<S, ReqBody, ResBody>(service: S) -> GatewayService<ReqBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    ReqBody: Send + 'static,
    ResBody: IntoGatewayBody + 'static,
{
    let service = service.map_response(|response: Response<ResBody>| {
        response.map(IntoGatewayBody::into_gateway_body)
    });
    GatewayService {
        stack: Arc::new(Level {
            service,
            make_ready: false,
        }),
    }
}

fn boxed<S, ReqBody, ResBody>(service: S) -> GatewayService<ReqBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    GatewayService {
        stack: Arc::new(Level {
            service: service.map_response(box_body),
            make_ready: true,
        }),
    }
}

fn box_body<B>(response: Response<B>) -> Response<GatewayBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // `Body::new` keeps a body that already is one (axum's) as it is.
    response.map(GatewayBody::new)
}

/// Sends the token issue and extend paths to the issuer, everything else inward.
struct WithTokenRoutes<ReqBody, E> {
    routes: TokenRoutes,
    inner: GatewayService<ReqBody, E>,
}

impl<ReqBody, E> Clone for WithTokenRoutes<ReqBody, E> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<ReqBody, E> Service<Request<ReqBody>> for WithTokenRoutes<ReqBody, E>
where
    ReqBody: Send + 'static,
    E: 'static,
{
    type Response = Response<GatewayBody>;
    type Error = E;
    type Future = Either<
        <GatewayService<ReqBody, E> as Service<Request<ReqBody>>>::Future,
        BoxFuture<'static, Result<Response<GatewayBody>, E>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if path == self.routes.issue_path {
            let call = self.routes.issuer.issue_service().oneshot(request);
            Either::Right(call.map(token_response).boxed())
        } else if path == self.routes.extend_path {
            let call = self.routes.issuer.extend_service().oneshot(request);
            Either::Right(call.map(token_response).boxed())
        } else {
            Either::Left(self.inner.call(request))
        }
    }
}

fn token_response<B, E>(result: Result<Response<B>, Infallible>) -> Result<Response<GatewayBody>, E>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match result {
        Ok(response) => Ok(box_body(response)),
        Err(never) => match never {},
    }
}
