//! A serve loop for plain hyper (feature `hyper`): each request carries its
//! connection's peer ([`TlsPeer`] over TLS, [`PeerAddr`] over plain TCP), slow and idle
//! clients are closed, and shutdown is graceful.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use portcullis_core::{problem_json_response, LogThrottle, PeerAddr, Rejection, TlsPeer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::listener::Proxied;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::listener::TlsListener;

/// Serves `service` (any tower service, layers included) on `listener` with hyper,
/// HTTP/1.1 and HTTP/2 as ALPN chose, putting the connection's [`TlsPeer`] into every
/// request's extensions, with the default [`ServeLimits`] (10 s to send headers, 60 s
/// idle, 64 header fields, 16 KiB of head, 10,000 connections).
/// Runs until the runtime shuts down; [`serve_hyper_until`] stops gracefully.
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
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_hyper_with(listener, service, ServeLimits::default()).await;
}

/// Where [`serve_hyper_with`] and [`serve_hyper_until`] take connections from: a
/// [`TlsListener`] (requests carry [`TlsPeer`]) or a plain `TcpListener` (requests carry
/// [`PeerAddr`]; for a service behind a TLS-terminating proxy, or for development).
#[derive(Debug)]
pub enum Listening {
    /// TLS, handshakes done by the listener.
    Tls(TlsListener),
    /// Plain HTTP over TCP.
    Plain(TcpListener),
    /// Plain HTTP over TCP behind a load balancer that sends PROXY protocol headers:
    /// requests carry the client as [`PeerAddr`], and the header as a
    /// `portcullis_proxy_protocol::ProxiedPeer`.
    #[cfg(feature = "proxy-protocol")]
    Proxied(portcullis_proxy_protocol::ProxyListener),
}

#[cfg(feature = "proxy-protocol")]
impl From<portcullis_proxy_protocol::ProxyListener> for Listening {
    fn from(listener: portcullis_proxy_protocol::ProxyListener) -> Self {
        Self::Proxied(listener)
    }
}

impl From<TlsListener> for Listening {
    fn from(listener: TlsListener) -> Self {
        Self::Tls(listener)
    }
}

impl From<TcpListener> for Listening {
    fn from(listener: TcpListener) -> Self {
        Self::Plain(listener)
    }
}

/// What one connection, and all of them together, may take from the server, and how
/// long a shutdown waits for requests in flight. The defaults hold a slow or idle client
/// to seconds, not forever.
///
/// ```
/// use std::time::Duration;
/// use portcullis_mtls_identity::ServeLimits;
///
/// let limits = ServeLimits::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .max_connections(2_000)
///     .max_connections_per_address(Some(50))
///     .shutdown_grace(Duration::from_secs(10));
/// # let _ = limits;
/// ```
#[derive(Clone, Debug)]
pub struct ServeLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_headers: usize,
    max_header_bytes: usize,
    max_connections: usize,
    max_connections_per_address: Option<usize>,
    h2_max_concurrent_streams: u32,
    shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_address: None,
            h2_max_concurrent_streams: 100,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServeLimits {
    /// How long an HTTP/1 client may take to send a request's headers, and how long a
    /// keep-alive connection may wait for the next request's (10 s). Past it the
    /// connection is closed: a client that trickles its headers (slowloris) holds
    /// nothing for long.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection, HTTP/1 or HTTP/2, may go without the client sending
    /// anything before it is closed gracefully (60 s): HTTP/2 gets a GOAWAY, requests in
    /// flight finish. An HTTP/1 connection idle between requests is closed by
    /// whichever of this and the header-read timeout comes first.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most header fields in a request (64); more are answered 431 with a
    /// problem+json body. Up to 99, hyper's own parser keeps its fast path and refuses,
    /// with an empty 431, only requests of more than 100 fields; from 100 up, hyper is
    /// given twice this, which costs every HTTP/1 request about 2,000 instructions (it
    /// then initializes that many header slots per request; measured).
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// The largest request head, start line and header fields, in bytes (16 KiB);
    /// larger ones are answered 431 with a problem+json body. hyper itself refuses, with
    /// an empty 431, heads over twice this (and at least 8 KiB), which it will not buffer.
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

    /// The most connections one client address may hold at once (none by default);
    /// past it, its new connections are closed at once, logged and counted. IPv6
    /// addresses count by /64, the block one client usually holds. Behind a load
    /// balancer every connection comes from the balancer: leave it off there.
    pub fn max_connections_per_address(mut self, count: Option<usize>) -> Self {
        self.max_connections_per_address = count;
        self
    }

    /// The most concurrent HTTP/2 streams on one connection (100).
    pub fn h2_max_concurrent_streams(mut self, streams: u32) -> Self {
        self.h2_max_concurrent_streams = streams;
        self
    }

    /// How long [`serve_hyper_until`] waits, once told to stop, for requests in flight
    /// to finish before it closes the connections that still have one (30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// What a serve loop did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeReport {
    /// Connections served in all.
    pub connections: u64,
    /// Connections open when the loop was told to stop.
    pub open_at_shutdown: usize,
    /// Connections still open when the grace period ran out, closed with whatever
    /// they had in flight.
    pub cut: usize,
    /// Connections closed at once because their address held its maximum.
    pub refused_per_address: u64,
}

/// [`serve_hyper`] with the given [`ServeLimits`], on TLS or plain TCP. Runs until the
/// runtime shuts down.
pub async fn serve_hyper_with<S, B>(listener: impl Into<Listening>, service: S, limits: ServeLimits)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_hyper_until(listener, service, limits, std::future::pending()).await;
}

/// [`serve_hyper_with`] until `shutdown` completes, then a graceful stop: the listener
/// is closed (new connections are refused), idle keep-alive connections are closed,
/// HTTP/1 connections close after the response in flight and HTTP/2 ones get a GOAWAY,
/// and the loop waits up to [`ServeLimits::shutdown_grace`] for those responses before
/// closing what is left. Returns what it did.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use portcullis_mtls_identity::{serve_hyper_until, ServeLimits};
///
/// let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hello"))))
/// });
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = tcp.local_addr()?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(serve_hyper_until(tcp, service, ServeLimits::default(), async {
///     let _ = stopped.await;
/// }));
///
/// let answer = reqwest::get(format!("http://{addr}/")).await?.text().await?;
/// assert_eq!(answer, "hello");
/// let _ = stop.send(());
/// let report = server.await?;
/// assert_eq!(report.cut, 0);
/// assert!(tokio::net::TcpStream::connect(addr).await.is_err());
/// # Ok(())
/// # }
/// ```
pub async fn serve_hyper_until<S, B>(
    listener: impl Into<Listening>,
    service: S,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut listener = listener.into();
    // Semaphore permits are counted in u32 by `acquire_many`.
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize >> 3);
    let places = Arc::new(Semaphore::new(max_connections));
    let addresses = limits
        .max_connections_per_address
        .map(|max| Arc::new(AddressCounts::new(max.max(1))));
    // The protocol comes from ALPN, not from sniffing the first bytes: hyper's
    // auto-detection waits for those bytes with no timeout, so a client that completes
    // the handshake and then says nothing would hold its connection for ever. Plain TCP
    // has no ALPN and is served as HTTP/1.1.
    let http1 = Arc::new(builder(&limits, false));
    let http2 = Arc::new(builder(&limits, true));
    let head = HeadLimits {
        max_headers: limits.max_headers,
        max_bytes: limits.max_header_bytes,
    };
    let (phase, phases) = watch::channel(Phase::Serving);
    let mut report = ServeReport::default();
    // Under attack these happen per connection: logged once a second at most.
    let refusal_warnings = LogThrottle::new();
    let wait_warnings = LogThrottle::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A place first, then a connection: past the limit, connections wait in the
        // listener's queue rather than in tasks of their own.
        let place = tokio::select! {
            biased;
            () = &mut shutdown => break,
            place = take_place(&places, max_connections, &wait_warnings) => place,
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Some((connection, address)) = accepted else {
            continue;
        };
        let slot = match &addresses {
            Some(addresses) => match addresses.take(address.ip()) {
                Some(slot) => Some(slot),
                None => {
                    report.refused_per_address += 1;
                    if let Some(held_back) = refusal_warnings.admit() {
                        tracing::warn!(
                            peer = %address.ip(),
                            held_back,
                            "serve: the address holds its maximum of connections; a new one was closed"
                        );
                    }
                    continue;
                }
            },
            None => None,
        };
        report.connections += 1;
        let held = Held { place, slot };
        let phases = phases.clone();
        let idle = limits.idle_timeout;
        match connection {
            Connection::Tls(stream, peer, proxied) => {
                let builder = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => http2.clone(),
                    _ => http1.clone(),
                };
                let service = WithPeer {
                    inner: service.clone(),
                    peer: Peer::Tls(peer),
                    proxied,
                    head,
                };
                tokio::spawn(serve_connection(
                    stream, service, builder, phases, held, idle,
                ));
            }
            Connection::Plain(stream, proxied) => {
                let service = WithPeer {
                    inner: service.clone(),
                    peer: Peer::Plain(PeerAddr(address)),
                    proxied,
                    head,
                };
                let builder = http1.clone();
                tokio::spawn(serve_connection(
                    stream, service, builder, phases, held, idle,
                ));
            }
        }
    }

    // Stop accepting: the listening socket closes with the listener.
    drop(listener);
    report.open_at_shutdown = max_connections - places.available_permits();
    let _ = phase.send(Phase::Draining);
    let everything = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(limits.shutdown_grace, places.acquire_many(everything));
    if drained.await.is_err() {
        report.cut = max_connections - places.available_permits();
        let _ = phase.send(Phase::Cut);
        // The connections' tasks return at once on `Cut`; wait for them to let go.
        let _ = tokio::time::timeout(Duration::from_secs(1), places.acquire_many(everything)).await;
    }
    report
}

/// A place among `max` connections, logging when the server has to wait for one.
async fn take_place(
    places: &Arc<Semaphore>,
    max: usize,
    warnings: &LogThrottle,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(place) = places.clone().try_acquire_owned() {
        return Some(place);
    }
    if let Some(held_back) = warnings.admit() {
        tracing::warn!(
            max_connections = max,
            held_back,
            "serve: at the connection limit; new connections wait"
        );
    }
    places.clone().acquire_owned().await.ok()
}

/// The places a connection holds until it ends.
struct Held {
    #[allow(dead_code)] // held for its Drop
    place: Option<OwnedSemaphorePermit>,
    #[allow(dead_code)] // held for its Drop
    slot: Option<AddressSlot>,
}

/// Where the serve loop is; connections follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Cut,
}

// Lives from accept to the connection's task, moved once: boxing the TLS stream would
// only add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Connection {
    Tls(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        TlsPeer,
        Option<Proxied>,
    ),
    Plain(tokio::net::TcpStream, Option<Proxied>),
}

impl Listening {
    /// The next connection, or `None` after a failed accept (logged; the caller tries
    /// again).
    async fn accept(&mut self) -> Option<(Connection, SocketAddr)> {
        match self {
            Self::Tls(listener) => {
                let (stream, peer, proxied) = listener.accept_with_header().await;
                let address = peer.addr;
                Some((Connection::Tls(stream, peer, proxied), address))
            }
            #[cfg(feature = "proxy-protocol")]
            Self::Proxied(listener) => {
                let (stream, peer) = listener.accept().await.into_parts();
                let address = peer.addr;
                Some((Connection::Plain(stream, Some(peer)), address))
            }
            Self::Plain(listener) => match listener.accept().await {
                Ok((stream, address)) => Some((Connection::Plain(stream, None), address)),
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    portcullis_core::log_throttled!(
                        warn,
                        %error,
                        "serve: accepting a connection failed (out of file descriptors? raise the process's limit)"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    None
                }
            },
        }
    }
}

/// Serves one connection until it ends, closing it gracefully when the loop drains or
/// when the client has sent nothing for `idle`, and at once when the loop cuts.
async fn serve_connection<I, S, B>(
    io: I,
    service: WithPeer<S>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut phases: watch::Receiver<Phase>,
    held: Held,
    idle: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let _held = held;
    let reads = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(CountingReads {
        inner: io,
        reads: reads.clone(),
    });
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    let mut connection = std::pin::pin!(connection);
    let mut closing = *phases.borrow_and_update() != Phase::Serving;
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    // The client is idle when no read completed over a whole `idle`: checked every
    // quarter of it, so a connection is closed between `idle` and 1.25 × `idle`.
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (reads.load(Ordering::Relaxed), tokio::time::Instant::now());
    let mut loop_gone = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "serve: a connection ended with an error");
                }
                return;
            }
            changed = phases.changed(), if !loop_gone => {
                if changed.is_err() {
                    loop_gone = true;
                    continue;
                }
                match *phases.borrow_and_update() {
                    Phase::Serving => {}
                    Phase::Draining => {
                        if !closing {
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    Phase::Cut => return,
                }
            }
            _ = check.tick(), if !closing => {
                let now = reads.load(Ordering::Relaxed);
                if now != seen.0 {
                    seen = (now, tokio::time::Instant::now());
                } else if seen.1.elapsed() >= idle {
                    tracing::debug!("serve: closing a connection idle for {idle:?}");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// hyper's own limit on HTTP/1 header fields when none is configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// A connection builder for one protocol, with the limits. hyper's own head limits are
/// above ours, so that heads between the two are answered by [`WithPeer`] with
/// problem+json, not by hyper with an empty 431.
fn builder(limits: &ServeLimits, h2: bool) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let hard_head_bytes = limits.max_header_bytes.saturating_mul(2).max(8 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(hard_head_bytes);
    // hyper's default of 100 fields parses into an uninitialized stack array; a
    // configured maximum makes it initialize that many slots for every request.
    if limits.max_headers >= HYPER_DEFAULT_MAX_HEADERS {
        builder
            .http1()
            .max_headers(limits.max_headers.saturating_mul(2));
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(hard_head_bytes).unwrap_or(u32::MAX));
    builder
}

pin_project! {
    /// The connection's IO, counting completed reads for the idle check.
    struct CountingReads<I> {
        #[pin]
        inner: I,
        reads: Arc<AtomicU64>,
    }
}

impl<I: AsyncRead> AsyncRead for CountingReads<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingReads<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Open connections per client address (IPv6 by /64).
struct AddressCounts {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let address = address_block(address);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            address,
        })
    }
}

/// The block an address counts in: itself for IPv4, its /64 for IPv6 (an IPv4-mapped
/// IPv6 address counts as the IPv4 one).
fn address_block(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// One connection's place in its address's count.
struct AddressSlot {
    counts: Arc<AddressCounts>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// The request head's limits that [`WithPeer`] answers with problem+json.
#[derive(Clone, Copy, Debug)]
struct HeadLimits {
    max_headers: usize,
    max_bytes: usize,
}

impl HeadLimits {
    /// Why the head is too large, if it is. The size is the head as HTTP/1.1 writes it:
    /// the request line and `name: value\r\n` per field.
    fn refuse<B>(&self, request: &Request<B>) -> Option<Rejection> {
        let headers = request.headers();
        if headers.len() > self.max_headers {
            return Some(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!(
                    "the request has more than {} header fields",
                    self.max_headers
                ),
            ));
        }
        let line = request.method().as_str().len()
            + request
                .uri()
                .path_and_query()
                .map_or(1, |p| p.as_str().len())
            + " HTTP/1.1\r\n".len()
            + 1;
        let fields: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if line + fields > self.max_bytes {
            return Some(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the request's head is larger than {} bytes", self.max_bytes),
            ));
        }
        None
    }
}

/// The connection's peer, as requests carry it.
#[derive(Clone)]
enum Peer {
    Tls(TlsPeer),
    Plain(PeerAddr),
}

/// Puts the connection's peer into each request, and answers heads over the limits.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Peer,
    /// What the balancer's PROXY protocol header said, behind one.
    #[cfg_attr(not(feature = "proxy-protocol"), allow(dead_code))]
    proxied: Option<Proxied>,
    head: HeadLimits,
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for WithPeer<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<Either<B, Full<Bytes>>>;
    type Error = S::Error;
    type Future = WithPeerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(refusal) = self.head.refuse(&request) {
            return WithPeerFuture::Refused {
                response: Some(problem_json_response(&refusal).map(Full::new)),
            };
        }
        match &self.peer {
            Peer::Tls(peer) => {
                request.extensions_mut().insert(peer.clone());
            }
            Peer::Plain(peer) => {
                request.extensions_mut().insert(*peer);
            }
        }
        #[cfg(feature = "proxy-protocol")]
        if let Some(proxied) = &self.proxied {
            request.extensions_mut().insert(proxied.clone());
        }
        WithPeerFuture::Inner {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The inner service's answer, or the refusal of a head over the limits.
    #[project = WithPeerProjection]
    enum WithPeerFuture<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B, E> Future for WithPeerFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithPeerProjection::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Left))),
            WithPeerProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Right))),
                // Polled again after it answered: a contract breach by the caller.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_block_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_block(a), address_block(b));
        assert_ne!(address_block(a), address_block(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_block(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_address_slot_is_given_back_when_its_connection_ends() {
        let counts = Arc::new(AddressCounts::new(2));
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.take(address).unwrap();
        let second = counts.take(address).unwrap();
        assert!(counts.take(address).is_none());
        assert!(counts.take("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let third = counts.take(address).unwrap();
        drop((second, third));
        assert!(counts.open.lock().unwrap().is_empty());
    }

    #[test]
    fn heads_over_the_limits_are_named() {
        let limits = HeadLimits {
            max_headers: 3,
            max_bytes: 100,
        };
        let mut request = Request::get("/v1/key").body(()).unwrap();
        for name in ["a", "b", "c"] {
            request
                .headers_mut()
                .insert(http::HeaderName::from_static(name), "1".parse().unwrap());
        }
        assert!(limits.refuse(&request).is_none());
        request.headers_mut().append("a", "2".parse().unwrap());
        let refusal = limits.refuse(&request).unwrap();
        assert_eq!(refusal.code(), "too_many_headers");
        assert_eq!(
            refusal.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );

        let mut request = Request::get("/v1/key").body(()).unwrap();
        request
            .headers_mut()
            .insert("x-big", "v".repeat(80).parse().unwrap());
        assert_eq!(limits.refuse(&request).unwrap().code(), "headers_too_large");
    }
}
