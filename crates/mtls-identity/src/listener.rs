//! Serving TLS in-process: a listener that completes handshakes in their own tasks and
//! hands out each connection with its [`TlsPeer`], for `axum::serve`, for hyper, or for
//! a host's own accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use portcullis_core::TlsPeer;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish the handshake, unless
/// [`TlsListener::with_handshake_timeout`] says otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener: each accepted connection comes with a [`TlsPeer`], the socket peer
/// and the verified client chain. Handshakes run in their own tasks, so a slow client
/// does not hold up others, and a refused handshake never reaches the application.
///
/// Serve it with [`TlsListener::for_axum`] (feature `axum`), with
/// `serve_hyper` (feature `hyper`), or take connections with
/// [`TlsListener::accept`] in a loop of your own and put the [`TlsPeer`] into each
/// request's extensions.
///
/// With axum: serve [`TlsListener::for_axum`] with
/// `app.into_make_service_with_connect_info::<TlsPeer>()` and every request carries
/// `ConnectInfo<TlsPeer>`, which the identity layer and client-IP resolution read.
///
/// ```
/// # #[cfg(feature = "axum")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{routing::get, Router};
/// use portcullis_core::{AuthMethod, Authentication, TlsPeer};
/// use portcullis_mtls_identity::{Connector, ConnectorRegistry, DevPki, MtlsIdentityLayer, TlsListener};
///
/// let pki = DevPki::generate(&["localhost"])?;
/// let connector = pki.client("connector-7")?;
/// let registry = ConnectorRegistry::new();
/// registry.insert(Connector::new("connector-7").role("connector").thumbprint(connector.thumbprint()))?;
///
/// let app = Router::new()
///     .route("/", get(|request: axum::extract::Request| async move {
///         let auth = Authentication::from_extensions(request.extensions());
///         format!("hello {}", auth.get(AuthMethod::Certificate).map_or("?", |p| p.id()))
///     }))
///     .layer(MtlsIdentityLayer::new(registry));
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = tcp.local_addr()?;
/// let listener = TlsListener::new(tcp, pki.server_tls().build()?);
/// let app = app.into_make_service_with_connect_info::<TlsPeer>();
/// tokio::spawn(async move { axum::serve(listener.for_axum(), app).await });
///
/// // A client presenting connector-7's certificate.
/// let client = reqwest::Client::builder()
///     .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes())?)
///     .identity(reqwest::Identity::from_pem(connector.identity_pem().as_bytes())?)
///     .resolve("localhost", addr)
///     .build()?;
/// let answer = client.get(format!("https://localhost:{}/", addr.port())).send().await?;
/// assert_eq!(answer.text().await?, "hello connector-7");
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "axum"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct TlsListener {
    incoming: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

/// A connection whose handshake succeeded, with its peer and, behind a balancer, what
/// its PROXY protocol header said.
type Accepted = (TlsStream<TcpStream>, TlsPeer, Option<Proxied>);

#[cfg(feature = "proxy-protocol")]
pub(crate) type Proxied = portcullis_proxy_protocol::ProxiedPeer;
#[cfg(not(feature = "proxy-protocol"))]
pub(crate) type Proxied = std::convert::Infallible;

/// Reads a connection's PROXY protocol header, when the listener has one to read.
#[cfg(feature = "proxy-protocol")]
type HeaderReader = Option<portcullis_proxy_protocol::ProxyProtocol>;
#[cfg(not(feature = "proxy-protocol"))]
type HeaderReader = Option<std::convert::Infallible>;

impl TlsListener {
    /// Starts accepting on `tcp` (on the current tokio runtime); a client has 10 s to
    /// finish its handshake.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self::with_handshake_timeout(tcp, config, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// [`TlsListener::new`] with another time limit for the handshake.
    pub fn with_handshake_timeout(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Self {
        Self::start(tcp, config, timeout, None)
    }

    /// A listener behind a TCP load balancer: each connection's PROXY protocol header
    /// is read (as `proxy` says: trusted balancers only, within its time limit) before
    /// the TLS handshake, and the client it names is the [`TlsPeer`]'s address, so
    /// client-IP resolution, allow-lists and rate limits see the client rather than the
    /// balancer. `serve_hyper` also puts the header (a
    /// `portcullis_proxy_protocol::ProxiedPeer`) into each request's extensions.
    #[cfg(feature = "proxy-protocol")]
    pub fn with_proxy_protocol(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        handshake_timeout: Duration,
        proxy: portcullis_proxy_protocol::ProxyProtocol,
    ) -> Self {
        Self::start(tcp, config, handshake_timeout, Some(proxy))
    }

    fn start(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        timeout: Duration,
        proxy: HeaderReader,
    ) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            tcp,
            TlsAcceptor::from(config),
            sender,
            timeout,
            proxy,
        ));
        Self { incoming, local }
    }

    /// The next connection whose handshake succeeded, with its peer. Waits forever once
    /// the runtime shuts the accept loop down.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, TlsPeer) {
        let (stream, peer, _) = self.accept_with_header().await;
        (stream, peer)
    }

    /// [`accept`](Self::accept), with what a PROXY protocol header said.
    pub(crate) async fn accept_with_header(&mut self) -> Accepted {
        match self.incoming.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<Accepted>,
    handshake_timeout: Duration,
    proxy: HeaderReader,
) {
    loop {
        // The listening socket closes as soon as the listener is dropped (a server
        // shutting down), not at the next connection.
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (mut stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                portcullis_core::log_throttled!(
                    warn,
                    %error,
                    "mtls: accepting a connection failed (out of file descriptors? raise the process's limit)"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if sender.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        let proxy = proxy.clone();
        tokio::spawn(async move {
            // Behind a balancer, its header comes before the handshake; the stream is
            // left at the first byte of the client's own.
            let (addr, proxied) = match read_proxy_header(proxy.as_ref(), &mut stream, addr).await {
                Some(read) => read,
                None => return,
            };
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %addr, %error, "mtls: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "mtls: TLS handshake timed out");
                    return;
                }
            };
            let chain = stream.get_ref().1.peer_certificates().map(|certs| {
                certs
                    .iter()
                    .map(|c| Bytes::copy_from_slice(c.as_ref()))
                    .collect::<Arc<[Bytes]>>()
            });
            let _ = sender
                .send((stream, TlsPeer { addr, chain }, proxied))
                .await;
        });
    }
}

/// The client's address and the header, or `None` when the connection is refused.
#[cfg(feature = "proxy-protocol")]
async fn read_proxy_header(
    proxy: Option<&portcullis_proxy_protocol::ProxyProtocol>,
    stream: &mut TcpStream,
    addr: SocketAddr,
) -> Option<(SocketAddr, Option<Proxied>)> {
    let Some(proxy) = proxy else {
        return Some((addr, None));
    };
    match proxy.read_header(stream, addr).await {
        Ok(peer) => Some((peer.addr, Some(peer))),
        Err(error) => {
            metrics::counter!("portcullis_proxy_protocol_refused_total", "reason" => error.kind())
                .increment(1);
            tracing::debug!(%error, "mtls: PROXY protocol header refused");
            None
        }
    }
}

#[cfg(not(feature = "proxy-protocol"))]
async fn read_proxy_header(
    _: Option<&std::convert::Infallible>,
    _: &mut TcpStream,
    addr: SocketAddr,
) -> Option<(SocketAddr, Option<Proxied>)> {
    Some((addr, None))
}

#[cfg(feature = "axum")]
pub use for_axum::AxumTlsListener;

#[cfg(feature = "axum")]
mod for_axum {
    use tokio::net::TcpStream;
    use tokio_rustls::server::TlsStream;

    use super::TlsListener;
    use portcullis_core::TlsPeer;

    /// [`TlsListener`] as `axum::serve` takes it with `ConnectInfo<TlsPeer>`: axum
    /// derives that connect info for listeners wrapped in its `TapIo`, here one that does
    /// nothing.
    pub type AxumTlsListener = axum::serve::TapIo<TlsListener, fn(&mut TlsStream<TcpStream>)>;

    impl TlsListener {
        /// This listener for `axum::serve(listener, app.into_make_service_with_connect_info::<TlsPeer>())`.
        pub fn for_axum(self) -> AxumTlsListener {
            fn untouched(_: &mut TlsStream<TcpStream>) {}
            axum::serve::ListenerExt::tap_io(self, untouched as fn(&mut TlsStream<TcpStream>))
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = TlsPeer;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            TlsListener::accept(self).await
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(TlsPeer {
                addr: self.local,
                chain: None,
            })
        }
    }
}
