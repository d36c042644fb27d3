//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it) for tokio
//! listeners: behind a TCP load balancer (AWS NLB, HAProxy, Envoy's TCP proxy) the
//! socket peer is the balancer, and the client's address comes in a header before TLS
//! or HTTP. [`ProxyListener`] reads that header from trusted balancers only, and hands
//! out each connection with the client as its peer, so `ConnectInfo<SocketAddr>`,
//! tonic's `TcpConnectInfo` and the Portcullis layers see the client. The mTLS crate's
//! `TlsListener` and its hyper server read it before the TLS handshake (its feature
//! `proxy-protocol`).
//!
//! ```
//! use portcullis_proxy_protocol::{ProxyHeader, ProxyProtocol};
//!
//! // Trust the balancers' subnet; a header within 5 s, required of every connection.
//! let proxy = ProxyProtocol::new(["10.0.0.0/16".parse()?]);
//! # let _ = proxy;
//! // The parser on its own: a v1 header, then the client's bytes.
//! let bytes = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n\x16\x03\x01";
//! let (header, length) = ProxyHeader::parse(bytes, 4096)?.expect("a whole header");
//! assert_eq!(header.source, Some("[2001:db8::7]:51000".parse()?));
//! assert_eq!(&bytes[length..], b"\x16\x03\x01");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is refused
//!
//! | [`ProxyError`] | when |
//! |---|---|
//! | `Untrusted` | a peer outside the trusted networks, when the header is required |
//! | `Header` | a trusted peer sent no header (when required), a malformed one, one too long (107 bytes for v1; 4096 by default for v2), a TLV that overruns it or repeats a known type, or a wrong CRC32C |
//! | `TimedOut` | the header was not whole within the time limit (5 s by default) |
//! | `Io` | the connection closed or failed before the header was whole |
//!
//! A refused connection is closed without an answer, counted in
//! `portcullis_proxy_protocol_refused_total{reason}` and logged at `debug`. A `LOCAL`
//! header (a balancer's health check), v1 `UNKNOWN`, UNIX, UDP and unspecified
//! addresses keep the socket peer, as the specification says.
//!
//! # Why the framing is ours
//!
//! The header's bytes are parsed by the `ppp` crate. Deciding how many bytes belong to
//! it is done here, by peeking, so that not one byte past the header is consumed: the
//! stream stays a plain `TcpStream` that a TLS acceptor or an HTTP server takes over
//! as it is.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
mod header;
mod listener;

pub use accept::{ProxiedPeer, ProxyError, ProxyProtocol, DEFAULT_HEADER_TIMEOUT};
pub use header::{
    Command, HeaderError, ProxyHeader, SslInfo, Tlv, Version, DEFAULT_MAX_HEADER_BYTES,
};
#[cfg(feature = "axum")]
pub use listener::AxumProxyListener;
pub use listener::{ProxiedStream, ProxyListener};
