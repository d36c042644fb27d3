//! A serve loop for plain hyper (feature `hyper`): each request carries its
//! connection's [`TlsPeer`].

use std::error::Error as StdError;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_core::TlsPeer;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::listener::TlsListener;

/// Serves `service` (any tower service, layers included) on `listener` with hyper,
/// HTTP/1.1 and HTTP/2 as ALPN chose, putting the connection's [`TlsPeer`] into every
/// request's extensions, with the default [`ServeLimits`] (10 s to send headers or to
/// idle between requests, 100 header fields, 16 KiB of head, 10,000 connections).
/// Runs until the runtime shuts down.
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
pub async fn serve_hyper<S, B>(listener: TlsListener, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_hyper_with(listener, service, ServeLimits::default()).await;
}

/// What one connection, and all of them together, may take from the server. The
/// defaults hold a slow or idle client to seconds, not forever.
///
/// ```
/// use std::time::Duration;
/// use portcullis_mtls_identity::ServeLimits;
///
/// let limits = ServeLimits::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .max_connections(2_000);
/// # let _ = limits;
/// ```
#[derive(Clone, Debug)]
pub struct ServeLimits {
    header_read_timeout: Duration,
    max_headers: usize,
    max_header_bytes: usize,
    max_connections: usize,
    h2_max_concurrent_streams: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
        }
    }
}

impl ServeLimits {
    /// How long an HTTP/1 client may take to send a request's headers, and how long a
    /// keep-alive connection may stay idle waiting for the next request (10 s). Past it
    /// the connection is closed: a client that trickles its headers (slowloris) holds
    /// nothing for long.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The most header fields in an HTTP/1 request (100); more are answered 431.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// The largest HTTP/1 request head, start line and headers, in bytes (16 KiB; at
    /// least 8 KiB); larger ones are answered 431. Also the largest HTTP/2 header list.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// The most connections served at once (10,000). Past it, accepted connections
    /// wait for a place, and the wait is logged.
    pub fn max_connections(mut self, count: usize) -> Self {
        self.max_connections = count;
        self
    }

    /// The most concurrent HTTP/2 streams on one connection (100).
    pub fn h2_max_concurrent_streams(mut self, streams: u32) -> Self {
        self.h2_max_concurrent_streams = streams;
        self
    }
}

/// [`serve_hyper`] with the given [`ServeLimits`].
pub async fn serve_hyper_with<S, B>(mut listener: TlsListener, service: S, limits: ServeLimits)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // The protocol comes from ALPN, not from sniffing the first bytes: hyper's
    // auto-detection waits for those bytes with no timeout, so a client that completes
    // the handshake and then says nothing would hold its connection for ever.
    let http1 = Arc::new(builder(&limits, false));
    let http2 = Arc::new(builder(&limits, true));
    loop {
        // A place first, then a connection: past the limit, connections wait in the
        // listener's queue rather than in tasks of their own.
        let place = match places.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "mtls: at the connection limit; new connections wait"
                );
                match places.clone().acquire_owned().await {
                    Ok(place) => place,
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = listener.accept().await;
        let service = TowerToHyperService::new(WithPeer {
            inner: service.clone(),
            peer,
        });
        let builder = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => http2.clone(),
            _ => http1.clone(),
        };
        tokio::spawn(async move {
            let _place = place;
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "mtls: a connection ended with an error");
            }
        });
    }
}

/// A connection builder for one protocol, with the limits.
fn builder(limits: &ServeLimits, h2: bool) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
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
