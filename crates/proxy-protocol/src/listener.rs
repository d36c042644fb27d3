//! A `TcpListener` whose connections come with the client a trusted balancer announced.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::accept::{ProxiedPeer, ProxyProtocol};

/// A TCP listener behind a load balancer that speaks the PROXY protocol. Headers are
/// read in a task per connection, under the configuration's time limit, so a slow or
/// silent peer holds up nobody; refused connections are closed and logged at `debug`.
///
/// Each connection comes as a [`ProxiedStream`] whose peer is the client the header
/// announced. With axum, serve `ProxyListener::for_axum` (feature `axum`) with
/// `into_make_service_with_connect_info::<SocketAddr>()`: `ConnectInfo<SocketAddr>` is
/// the client, and the layers' client-IP resolution reads it. With tonic, serve
/// [`ProxyListener::into_stream`] through `serve_with_incoming` (feature `tonic`).
///
/// ```
/// # #[cfg(feature = "axum")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use axum::{extract::ConnectInfo, routing::get, Router};
/// use portcullis_proxy_protocol::{ProxyListener, ProxyProtocol};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let app = Router::new().route(
///     "/",
///     get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
/// );
/// // Trust the balancer on loopback.
/// let proxy = ProxyProtocol::new(["127.0.0.0/8".parse()?]);
/// let listener = ProxyListener::bind("127.0.0.1:0", proxy).await?;
/// let addr = listener.local_addr();
/// let app = app.into_make_service_with_connect_info::<SocketAddr>();
/// tokio::spawn(async move { axum::serve(listener.for_axum(), app).await });
///
/// // What the balancer sends: the header, then the client's bytes.
/// let mut balancer = tokio::net::TcpStream::connect(addr).await?;
/// balancer
///     .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 80\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
///     .await?;
/// let mut answer = String::new();
/// balancer.read_to_string(&mut answer).await?;
/// assert!(answer.ends_with("203.0.113.7:51000"), "{answer}");
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "axum"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct ProxyListener {
    incoming: mpsc::Receiver<ProxiedStream>,
    local: SocketAddr,
}

impl ProxyListener {
    /// Binds `addr` and starts accepting (on the current tokio runtime).
    pub async fn bind(
        addr: impl tokio::net::ToSocketAddrs,
        proxy: ProxyProtocol,
    ) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, proxy))
    }

    /// Starts accepting on `tcp` (on the current tokio runtime).
    pub fn new(tcp: TcpListener, proxy: ProxyProtocol) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, proxy, sender));
        Self { incoming, local }
    }

    /// The next connection whose header (if any) was accepted. Waits forever once the
    /// runtime shuts the accept loop down.
    pub async fn accept(&mut self) -> ProxiedStream {
        match self.incoming.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as a stream, for tonic's `serve_with_incoming` (feature
    /// `tonic`), or any loop of the host's.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<ProxiedStream>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let stream = listener.accept().await;
            Some((Ok(stream), listener))
        })
    }
}

async fn accept_loop(tcp: TcpListener, proxy: ProxyProtocol, sender: mpsc::Sender<ProxiedStream>) {
    loop {
        // The listening socket closes as soon as the listener is dropped.
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                portcullis_core::log_throttled!(
                    warn,
                    %error,
                    "proxy-protocol: accepting a connection failed (out of file descriptors? raise the process's limit)"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match proxy.read_header(&mut stream, peer).await {
                Ok(peer) => {
                    let _ = sender.send(ProxiedStream { stream, peer }).await;
                }
                Err(error) => {
                    metrics::counter!("portcullis_proxy_protocol_refused_total", "reason" => error.kind())
                        .increment(1);
                    tracing::debug!(%error, "proxy-protocol: connection refused");
                }
            }
        });
    }
}

/// A connection from a [`ProxyListener`]: the TCP stream, positioned after the header,
/// and who is on the other end.
#[derive(Debug)]
pub struct ProxiedStream {
    stream: TcpStream,
    peer: ProxiedPeer,
}

impl ProxiedStream {
    /// The client, the socket peer and the header.
    pub fn peer(&self) -> &ProxiedPeer {
        &self.peer
    }

    /// The TCP stream, for a TLS acceptor or a server of the host's.
    pub fn into_parts(self) -> (TcpStream, ProxiedPeer) {
        (self.stream, self.peer)
    }

    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for ProxiedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxiedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(feature = "axum")]
pub use for_axum::AxumProxyListener;

#[cfg(feature = "axum")]
mod for_axum {
    use super::*;

    /// [`ProxyListener`] as axum serves it; see `ProxyListener::for_axum` (feature `axum`).
    pub type AxumProxyListener = axum::serve::TapIo<ProxyListener, fn(&mut ProxiedStream)>;

    impl ProxyListener {
        /// The listener for `axum::serve`, so that `ConnectInfo<SocketAddr>` is the
        /// client the balancer announced (axum gives `SocketAddr` connect info to
        /// listeners wrapped this way).
        pub fn for_axum(self) -> AxumProxyListener {
            fn untouched(_: &mut ProxiedStream) {}
            axum::serve::ListenerExt::tap_io(self, untouched as fn(&mut ProxiedStream))
        }
    }

    impl axum::serve::Listener for ProxyListener {
        type Io = ProxiedStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            let stream = ProxyListener::accept(self).await;
            let addr = stream.peer.addr;
            (stream, addr)
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            Ok(self.local)
        }
    }

    /// `ConnectInfo<ProxiedPeer>`: the header's TLVs in handlers. The layers read the
    /// client from `ConnectInfo<SocketAddr>`; use this one where a handler needs more.
    impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AxumProxyListener>>
        for ProxiedPeer
    {
        fn connect_info(stream: axum::serve::IncomingStream<'_, AxumProxyListener>) -> Self {
            stream.io().peer.clone()
        }
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for ProxiedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    /// tonic's `TcpConnectInfo`, with the client the balancer announced as its remote
    /// address: the layers' client-IP resolution reads it as it is.
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.stream.local_addr().ok(),
            remote_addr: Some(self.peer.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::tests::{v2, IPV4};
    use crate::{Command, HeaderError, ProxyError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listening(proxy: ProxyProtocol) -> (ProxyListener, SocketAddr) {
        let listener = ProxyListener::bind("127.0.0.1:0", proxy).await.unwrap();
        let addr = listener.local_addr();
        (listener, addr)
    }

    fn loopback() -> ProxyProtocol {
        ProxyProtocol::new(["127.0.0.0/8".parse().unwrap()])
            .header_timeout(Duration::from_millis(300))
    }

    fn elsewhere() -> ProxyProtocol {
        ProxyProtocol::new(["10.0.0.0/8".parse().unwrap()])
            .header_timeout(Duration::from_millis(300))
    }

    /// The next accepted connection, if one comes within a second.
    async fn next(listener: &mut ProxyListener) -> Option<ProxiedStream> {
        tokio::time::timeout(Duration::from_secs(1), listener.accept())
            .await
            .ok()
    }

    /// What the connection's remaining bytes are, once the peer has sent `sent`.
    async fn rest(stream: &mut ProxiedStream, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        stream.read_exact(&mut out).await.unwrap();
        out
    }

    /// Whether the server closed the connection (EOF or reset) within a second.
    async fn closed(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), client.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_trusted_balancer_names_the_client_and_not_a_byte_more_is_taken() {
        let (mut listener, addr) = listening(loopback()).await;
        for header in [
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n".to_vec(),
            v2(0x21, 0x11, &IPV4, &[(0x02, b"api.example.com")]),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            // The header and the client's first bytes in one segment.
            client
                .write_all(&[header.as_slice(), b"\x16\x03\x01hello"].concat())
                .await
                .unwrap();
            let mut stream = next(&mut listener).await.expect("accepted");
            assert_eq!(stream.peer().addr, "203.0.113.7:51000".parse().unwrap());
            assert_eq!(stream.peer().socket, client.local_addr().unwrap());
            assert!(stream.peer().header.is_some());
            assert_eq!(rest(&mut stream, 8).await, b"\x16\x03\x01hello");
        }
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_put_together() {
        let (mut listener, addr) =
            listening(loopback().header_timeout(Duration::from_secs(5))).await;
        for header in [
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec(),
            v2(0x21, 0x11, &IPV4, &[(0x01, b"h2"), (0x05, b"conn-1")]),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            let bytes = [header.as_slice(), b"GET"].concat();
            let writer = tokio::spawn(async move {
                for byte in bytes {
                    client.write_all(&[byte]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                client
            });
            let mut stream = next(&mut listener).await.expect("accepted");
            assert_ne!(stream.peer().addr, stream.peer().socket);
            assert_eq!(rest(&mut stream, 3).await, b"GET");
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_local_header_keeps_the_balancer_as_the_peer() {
        let (mut listener, addr) = listening(loopback()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&v2(0x20, 0x00, &[], &[])).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut stream = next(&mut listener).await.expect("accepted");
        let peer = stream.peer().clone();
        assert_eq!(peer.addr, client.local_addr().unwrap());
        assert_eq!(peer.header.unwrap().command, Command::Local);
        assert_eq!(rest(&mut stream, 1).await, b"x");
    }

    #[tokio::test]
    async fn untrusted_peers_are_refused_or_read_as_plain() {
        // Required: closed, whatever it sends.
        let (mut listener, addr) = listening(elsewhere()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(closed(&mut client).await);
        assert!(next(&mut listener).await.is_none());

        // Optional: served with its socket address, and its header never read: the
        // application gets the bytes as they came.
        let (mut listener, addr) = listening(elsewhere().required(false)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let spoof = b"PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n";
        client.write_all(spoof).await.unwrap();
        let mut stream = next(&mut listener).await.expect("accepted");
        assert_eq!(stream.peer().addr, client.local_addr().unwrap());
        assert!(stream.peer().header.is_none());
        assert_eq!(rest(&mut stream, spoof.len()).await, spoof);
    }

    #[tokio::test]
    async fn an_optional_header_may_be_left_out_by_a_trusted_peer() {
        let (mut listener, addr) = listening(loopback().required(false)).await;
        // Requests whose first bytes share a prefix with "PROXY" or the v2 signature.
        for first in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"PUT /x HTTP/1.1\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x00\x10",
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            // The first two bytes alone, then the rest: the listener must wait to tell.
            client.write_all(&first[..2]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&first[2..]).await.unwrap();
            let mut stream = next(&mut listener).await.expect("accepted");
            assert!(stream.peer().header.is_none(), "{first:?}");
            assert_eq!(stream.peer().addr, client.local_addr().unwrap());
            assert_eq!(rest(&mut stream, first.len()).await, first);
        }
        // And a header, when sent, is still read.
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
            .await
            .unwrap();
        let stream = next(&mut listener).await.expect("accepted");
        assert_eq!(stream.peer().addr, "203.0.113.7:51000".parse().unwrap());
    }

    #[tokio::test]
    async fn malformed_oversized_missing_and_slow_headers_close_the_connection() {
        let (mut listener, addr) = listening(loopback()).await;
        let oversized = v2(0x21, 0x11, &IPV4, &[(0xE0, &[0; 5000])]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no header", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("malformed v1", b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n".to_vec()),
            (
                "v1 without an end",
                [b"PROXY TCP4 ".as_slice(), &[b'9'; 120]].concat(),
            ),
            ("malformed v2", v2(0x31, 0x11, &IPV4, &[])),
            // Only the fixed part is sent: refused at the length, not after the body.
            ("oversized v2", oversized[..16].to_vec()),
            (
                "truncated, then closed",
                v2(0x21, 0x11, &IPV4, &[])[..20].to_vec(),
            ),
        ];
        for (name, bytes) in cases {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(&bytes).await.unwrap();
            if name.ends_with("closed") {
                client.shutdown().await.unwrap();
            }
            assert!(closed(&mut client).await, "{name}");
        }
        assert!(next(&mut listener).await.is_none());

        // A peer that sends half a header and waits is cut at the time limit, and
        // meanwhile others are served.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"PROXY TCP4 203.0.").await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert!(
            next(&mut listener).await.is_some(),
            "a slow peer held up another"
        );
        let started = std::time::Instant::now();
        assert!(closed(&mut slow).await);
        assert!(closed(&mut silent).await);
        assert!(started.elapsed() < Duration::from_millis(900));
    }

    #[tokio::test]
    async fn read_header_names_every_refusal() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let refusal = |proxy: ProxyProtocol, bytes: &'static [u8]| {
            let tcp = &tcp;
            async move {
                let mut client = TcpStream::connect(addr).await.unwrap();
                client.write_all(bytes).await.unwrap();
                let (mut stream, peer) = tcp.accept().await.unwrap();
                let outcome = proxy.read_header(&mut stream, peer).await;
                drop(client);
                outcome.unwrap_err()
            }
        };
        let error = refusal(elsewhere(), b"PROXY UNKNOWN\r\n").await;
        assert!(matches!(error, ProxyError::Untrusted { .. }), "{error}");
        assert_eq!(error.kind(), "untrusted");
        let error = refusal(loopback(), b"GET /").await;
        assert!(
            matches!(
                error,
                ProxyError::Header {
                    error: HeaderError::NotProxyProtocol,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.kind(), "malformed");
        let error = refusal(loopback(), b"PROXY TCP4").await;
        assert!(matches!(error, ProxyError::TimedOut { .. }), "{error}");
        assert!(error.to_string().contains("within 300ms"), "{error}");
    }
}
