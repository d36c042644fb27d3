//! Reading the header off a connection: only from trusted balancers, within a time
//! limit, and never a byte past it, so the stream is left exactly where the client's
//! own bytes (TLS or HTTP) begin.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_core::NetworkSet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::header::{self, Frame, HeaderError, ProxyHeader, Signature, DEFAULT_MAX_HEADER_BYTES};

/// How long a peer may take to send its header unless the host says otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may send a PROXY protocol header, and what happens to everyone else.
///
/// - From a **trusted** balancer, the header is read and its source becomes the
///   connection's peer. With [`required`](Self::required) (the default) a trusted peer
///   must send one; otherwise a trusted peer without one is served as a plain client.
/// - From **anyone else**, the connection is refused (the default), or, when the header
///   is not required, served as plain with its socket address. A header from an
///   untrusted peer is never read: its bytes reach the application, which refuses them
///   as malformed HTTP or TLS.
///
/// ```
/// use std::time::Duration;
/// use portcullis_proxy_protocol::ProxyProtocol;
///
/// // The load balancers' subnet; a header within 2 seconds.
/// let proxy = ProxyProtocol::new(["10.0.0.0/16".parse()?])
///     .header_timeout(Duration::from_secs(2));
/// # let _ = proxy;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    trusted: Arc<NetworkSet>,
    required: bool,
    header_timeout: Duration,
    max_header_bytes: usize,
}

/// Why a connection was refused. Every refusal has a name; none is sent to the peer (the
/// connection is closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The peer is not a trusted balancer and the header is required of every
    /// connection.
    #[error("{peer} is not a trusted PROXY protocol peer")]
    Untrusted {
        /// The socket peer.
        peer: SocketAddr,
    },
    /// A trusted peer sent something other than a valid header.
    #[error("PROXY protocol header from {peer}: {error}")]
    Header {
        /// The socket peer.
        peer: SocketAddr,
        /// What was wrong.
        error: HeaderError,
    },
    /// The peer did not send its header in time.
    #[error("{peer} did not send its PROXY protocol header within {timeout:?}")]
    TimedOut {
        /// The socket peer.
        peer: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The connection closed or failed before the header was whole.
    #[error("reading the PROXY protocol header from {peer}: {error}")]
    Io {
        /// The socket peer.
        peer: SocketAddr,
        /// The error.
        error: io::Error,
    },
}

impl ProxyError {
    /// A short name for logs and metrics: `untrusted`, `malformed`, `timeout`, `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Untrusted { .. } => "untrusted",
            Self::Header { .. } => "malformed",
            Self::TimedOut { .. } => "timeout",
            Self::Io { .. } => "io",
        }
    }
}

/// A connection whose header, if any, has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedPeer {
    /// The client: the header's source for a relayed connection, the socket peer
    /// otherwise. This is the address the listener hands out.
    pub addr: SocketAddr,
    /// The socket peer: the balancer, when a header was read.
    pub socket: SocketAddr,
    /// The header, when one was read.
    pub header: Option<Arc<ProxyHeader>>,
}

impl ProxyProtocol {
    /// Headers from peers in `trusted` only, required of every connection, read within
    /// 5 seconds, at most 4096 bytes.
    pub fn new<I>(trusted: I) -> Self
    where
        I: IntoIterator<Item = IpNet>,
    {
        Self::from_set(NetworkSet::from_networks(trusted))
    }

    /// [`ProxyProtocol::new`] from a network set (a file's list, say).
    pub fn from_set(trusted: NetworkSet) -> Self {
        Self {
            trusted: Arc::new(trusted),
            required: true,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }

    /// Whether every connection must come from a trusted peer with a header (`true`,
    /// the default). With `false`, a trusted peer may omit it, and other peers are
    /// served as plain clients (their headers never read).
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// How long a trusted peer may take to send its header (5 s by default), so that a
    /// peer that connects and says nothing cannot hold a task for ever.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// The longest v2 header accepted (4096 bytes by default; 16 to 65,551). v1
    /// headers are at most 107 bytes, as the specification says.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes.clamp(16, 16 + usize::from(u16::MAX));
        self
    }

    /// The trusted networks.
    pub fn trusted(&self) -> &NetworkSet {
        &self.trusted
    }

    /// Reads the header of a connection from `peer`, as this configuration says, and
    /// leaves `stream` at the first byte after it.
    pub async fn read_header(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<ProxiedPeer, ProxyError> {
        let plain = ProxiedPeer {
            addr: peer,
            socket: peer,
            header: None,
        };
        if !self.trusted.contains(peer.ip().to_canonical()) {
            return match self.required {
                true => Err(ProxyError::Untrusted { peer }),
                false => Ok(plain),
            };
        }
        let read = read_exactly_the_header(stream, self.max_header_bytes, self.required);
        match tokio::time::timeout(self.header_timeout, read).await {
            Err(_) => Err(ProxyError::TimedOut {
                peer,
                timeout: self.header_timeout,
            }),
            Ok(Err(Failure::Header(error))) => Err(ProxyError::Header { peer, error }),
            Ok(Err(Failure::Io(error))) => Err(ProxyError::Io { peer, error }),
            Ok(Ok(None)) => Ok(plain),
            Ok(Ok(Some(header))) => Ok(ProxiedPeer {
                addr: header.client_or(peer),
                socket: peer,
                header: Some(Arc::new(header)),
            }),
        }
    }
}

enum Failure {
    Header(HeaderError),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Reads the header and not one byte more. `Ok(None)`: no header, and it was optional
/// (nothing consumed).
///
/// The stream is peeked and only the bytes that belong to the header are consumed, so
/// the stream stays a plain `TcpStream` for TLS or HTTP to take over.
async fn read_exactly_the_header(
    stream: &mut TcpStream,
    max_header_bytes: usize,
    required: bool,
) -> Result<Option<ProxyHeader>, Failure> {
    let mut peeked = [0u8; 16];
    // Which signature, if any, without consuming: a trusted peer may send none when
    // the header is optional.
    let binary = loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match header::signature(&peeked[..n]) {
            Signature::V1 => break false,
            Signature::V2 => break true,
            Signature::Neither if required => {
                return Err(Failure::Header(HeaderError::NotProxyProtocol))
            }
            Signature::Neither => return Ok(None),
            // A few bytes that could still be either ("PR" of "PROXY" or of "PRI *"):
            // peeking again would return at once with the same bytes, so wait a little
            // for the rest. Clients send their first line in one segment; this is for
            // the rare split, and the header timeout bounds it.
            Signature::Undecided => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    // From here every byte is the header's: consume as much as the framing says is
    // certainly header, and no more.
    let mut buffer: Vec<u8> = Vec::with_capacity(128);
    loop {
        match header::frame(&buffer, max_header_bytes) {
            Err(error) => return Err(Failure::Header(error)),
            Ok(Frame::V1(length) | Frame::V2(length)) => {
                debug_assert_eq!(length, buffer.len());
                return ProxyHeader::parse(&buffer, max_header_bytes)
                    .map_err(Failure::Header)
                    .map(|parsed| parsed.map(|(header, _)| header));
            }
            Ok(Frame::Incomplete) => {}
        }
        let wanted = match binary {
            // The fixed part, then the length it announces.
            true if buffer.len() < 16 => 16 - buffer.len(),
            true => 16 + usize::from(u16::from_be_bytes([buffer[14], buffer[15]])) - buffer.len(),
            false => v1_next_read(buffer.len(), stream).await?,
        };
        let start = buffer.len();
        buffer.resize(start + wanted, 0);
        stream.read_exact(&mut buffer[start..]).await?;
    }
}

/// How many more bytes of a v1 header, `have` bytes in, certainly belong to it: up to
/// the LF, which may not have arrived. Peek at what has, and take it all if it holds no
/// LF (it is all header), or up to the LF if it does.
async fn v1_next_read(have: usize, stream: &TcpStream) -> Result<usize, Failure> {
    let mut window = [0u8; 107];
    let room = 107usize.saturating_sub(have).max(1);
    let n = stream.peek(&mut window[..room]).await?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(match window[..n].iter().position(|&b| b == b'\n') {
        Some(newline) => newline + 1,
        None => n,
    })
}
