//! A serve loop for plain hyper (feature `hyper`): each request carries its
//! connection's [`TlsPeer`].

use std::error::Error as StdError;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_core::TlsPeer;
use tower_service::Service;

use crate::listener::TlsListener;

/// Serves `service` (any tower service, layers included) on `listener` with hyper,
/// HTTP/1.1 and HTTP/2 as ALPN chose, putting the connection's [`TlsPeer`] into every
/// request's extensions. Runs until the runtime shuts down.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use portcullis_core::{AuthMethod, Authentication};
/// use portcullis_mtls_identity::{serve_hyper, Connector, ConnectorRegistry, DevPki, MtlsIdentityLayer, TlsListener};
/// use tower::ServiceBuilder;
///
/// let pki = DevPki::generate(&["localhost"])?;
/// let connector = pki.client("connector-7")?;
/// let registry = ConnectorRegistry::new();
/// registry.insert(Connector::new("connector-7").thumbprint(connector.thumbprint()))?;
///
/// let service = ServiceBuilder::new()
///     .layer(MtlsIdentityLayer::new(registry))
///     .service_fn(|request: http::Request<hyper::body::Incoming>| async move {
///         let auth = Authentication::from_extensions(request.extensions());
///         let id = auth.get(AuthMethod::Certificate).map_or("?", |p| p.id()).to_owned();
///         Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(id))))
///     });
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = tcp.local_addr()?;
/// tokio::spawn(serve_hyper(TlsListener::new(tcp, pki.server_tls().build()?), service));
///
/// let client = reqwest::Client::builder()
///     .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes())?)
///     .identity(reqwest::Identity::from_pem(connector.identity_pem().as_bytes())?)
///     .resolve("localhost", addr)
///     .build()?;
/// let answer = client.get(format!("https://localhost:{}/", addr.port())).send().await?;
/// assert_eq!(answer.text().await?, "connector-7");
/// # Ok(())
/// # }
/// ```
pub async fn serve_hyper<S, B>(mut listener: TlsListener, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    loop {
        let (stream, peer) = listener.accept().await;
        let service = TowerToHyperService::new(WithPeer {
            inner: service.clone(),
            peer,
        });
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = connection
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "mtls: a connection ended with an error");
            }
        });
    }
}

/// Puts the connection's peer into each request.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: TlsPeer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for WithPeer<S>
where
    S: Service<Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        self.inner.call(request)
    }
}
