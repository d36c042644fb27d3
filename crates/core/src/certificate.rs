//! The client certificate a connection was authenticated with, as later layers see it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

/// The TLS connection a request came on: the socket peer and the client certificate
/// chain the TLS stack verified (DER, leaf first), when the client sent one.
///
/// A TLS listener sets it once per connection: as the connect info of `axum::serve`
/// (`ConnectInfo<TlsPeer>`), or in each request's extensions. [`socket_peer`](crate::socket_peer)
/// reads the address from it, and the mTLS identity layer the chain. Never built from
/// anything the client sends in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPeer {
    /// The socket peer.
    pub addr: SocketAddr,
    /// The verified client chain, leaf first; `None` when the client sent no certificate.
    pub chain: Option<Arc<[Bytes]>>,
}

impl TlsPeer {
    /// The client's own certificate, DER.
    pub fn leaf(&self) -> Option<&Bytes> {
        self.chain.as_deref().and_then(<[Bytes]>::first)
    }
}

/// The leaf certificate (DER) the connection's TLS stack verified, from whichever
/// connect info the server put in the request: a [`TlsPeer`] in the extensions, axum's
/// `ConnectInfo<TlsPeer>` (feature `axum`), or tonic's `TlsConnectInfo<TcpConnectInfo>`
/// (feature `tonic-tls`). `None` without TLS or without a client certificate.
///
/// Never read from anything the client sends in the request: a certificate forwarded
/// by a proxy in a header is the mTLS identity layer's to verify.
pub fn connection_leaf(extensions: &http::Extensions) -> Option<Bytes> {
    if let Some(peer) = extensions.get::<TlsPeer>() {
        return peer.leaf().cloned();
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(peer)) =
        extensions.get::<axum::extract::ConnectInfo<TlsPeer>>()
    {
        return peer.leaf().cloned();
    }
    #[cfg(feature = "tonic-tls")]
    if let Some(info) = extensions
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
    {
        return info
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| Bytes::copy_from_slice(c.as_ref())));
    }
    None
}

/// The SHA-256 thumbprint of the client certificate the connection presented: the
/// `x5t#S256` of RFC 8705, computed over the certificate's DER bytes.
///
/// The mTLS identity layer (or a host's own TLS acceptor) puts it in the request's
/// extensions once the certificate is verified; the JWT layer compares it with a
/// certificate-bound token's `cnf` claim. It lives in core so that neither layer depends
/// on the other.
///
/// ```
/// use portcullis_core::ClientCertThumbprint;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(ClientCertThumbprint::from_bytes([0xab; 32]));
/// let thumbprint = request.extensions().get::<ClientCertThumbprint>().unwrap();
/// assert!(thumbprint.to_string().starts_with("sha256:abab"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientCertThumbprint([u8; 32]);

impl ClientCertThumbprint {
    /// A thumbprint from the 32 bytes of a SHA-256 digest of the certificate's DER.
    pub const fn from_bytes(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `digest` is this thumbprint, compared in constant time (`subtle`), so the
    /// time taken says nothing about where two thumbprints differ.
    pub fn matches(&self, digest: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0[..].ct_eq(digest).into()
    }
}

/// `sha256:` and the digest in lower-case hex, the form audit records and principals use.
impl fmt::Display for ClientCertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClientCertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCertThumbprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_digest() {
        let thumbprint = ClientCertThumbprint::from_bytes([7; 32]);
        assert!(thumbprint.matches(&[7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!thumbprint.matches(&other));
        assert!(!thumbprint.matches(&[7; 31]));
        assert!(!thumbprint.matches(&[]));
    }

    #[test]
    fn displays_as_hex() {
        let mut digest = [0; 32];
        digest[0] = 0x0f;
        let text = ClientCertThumbprint::from_bytes(digest).to_string();
        assert_eq!(text.len(), "sha256:".len() + 64);
        assert!(text.starts_with("sha256:0f00"));
    }
}
