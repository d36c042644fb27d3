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
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (on the current tokio runtime); a client has 10 s to
    /// finish its handshake.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self::with_handshake_timeout(tcp, config, HANDSHAKE_TIMEOUT)
    }

    /// [`TlsListener::new`] with another time limit for the handshake.
    pub fn with_handshake_timeout(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), sender, timeout));
        Self { incoming, local }
    }

    /// The next connection whose handshake succeeded, with its peer. Waits forever once
    /// the runtime shuts the accept loop down.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, TlsPeer) {
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
    sender: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
    handshake_timeout: Duration,
) {
    loop {
        // The listening socket closes as soon as the listener is dropped (a server
        // shutting down), not at the next connection.
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, addr) = match accepted {
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
        tokio::spawn(async move {
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
            let _ = sender.send((stream, TlsPeer { addr, chain })).await;
        });
    }
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
