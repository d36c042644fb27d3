//! The client's address: the socket peer, or what a trusted proxy says.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, Request};

use crate::forwarded::{self, Malformed, Node};
use crate::{NetworkSet, Rejection};

/// The address a request came from, resolved once per request by
/// [`ClientIpResolver::resolve_request`] and kept in the request's extensions.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are normalized to IPv4.
///
/// It also carries the identity of the [`ClientIpResolver`] configuration that resolved
/// it, so that a layer configured with other trusted proxies never acts on it (see
/// [One truth per trust configuration](ClientIpResolver#one-truth-per-trust-configuration)).
/// Equality, ordering and hashing compare the address only.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp {
    ip: IpAddr,
    /// The resolver configuration that produced it; `None` when the host made it.
    resolved_by: Option<u64>,
}

impl ClientIp {
    /// A client address, normalized. One the host puts in the extensions itself (its own
    /// listener, a PROXY-protocol reader) is taken by every layer as it is.
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip: ip.to_canonical(),
            resolved_by: None,
        }
    }

    fn resolved(ip: IpAddr, identity: u64) -> Self {
        Self {
            ip: ip.to_canonical(),
            resolved_by: Some(identity),
        }
    }

    /// The address.
    pub fn ip(self) -> IpAddr {
        self.ip
    }
}

impl PartialEq for ClientIp {
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip
    }
}

impl Eq for ClientIp {}

impl std::hash::Hash for ClientIp {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ip.hash(state);
    }
}

impl PartialOrd for ClientIp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ClientIp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ip.cmp(&other.ip)
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip.fmt(f)
    }
}

/// The socket peer of a connection, for hosts that run their own serve loop (plain
/// hyper, a custom TLS acceptor). Insert it into each request's extensions:
///
/// ```
/// use portcullis_core::PeerAddr;
///
/// let peer: std::net::SocketAddr = "192.0.2.10:50123".parse()?;
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(PeerAddr(peer));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
///
/// [`TlsPeer`](crate::TlsPeer) (in the extensions, or as axum's `ConnectInfo<TlsPeer>`),
/// axum's `ConnectInfo<SocketAddr>` (feature `axum`), tonic's `TcpConnectInfo` (feature
/// `tonic`) and `TlsConnectInfo<TcpConnectInfo>` (feature `tonic-tls`) are read as they
/// are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Which header a trusted proxy uses to name the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `Forwarded` (RFC 7239): the `for` parameter of its elements, rightmost untrusted
    /// hop.
    Forwarded,
    /// `X-Forwarded-For`: a comma-separated chain, rightmost untrusted hop.
    XForwardedFor,
    /// `X-Real-IP`: one address, set by the proxy (nginx's `real_ip` style).
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn header_name(self) -> HeaderName {
        match self {
            Self::Forwarded => http::header::FORWARDED,
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::XRealIp => HeaderName::from_static("x-real-ip"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "Forwarded",
            Self::XForwardedFor => "X-Forwarded-For",
            Self::XRealIp => "X-Real-IP",
        }
    }
}

/// Why the client address could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientIpError {
    /// The request carries no socket peer address: the host did not provide connect info.
    #[error("the request has no socket peer address: serve axum with `into_make_service_with_connect_info::<SocketAddr>()`, use tonic's TCP or TLS incoming, or insert `portcullis_core::PeerAddr` in your own serve loop")]
    PeerUnavailable,
    /// A trusted proxy sent a forwarding header that does not follow its grammar.
    #[error("a trusted proxy sent a malformed {} header", .0.as_str())]
    MalformedHeader(ForwardedHeader),
    /// A trusted proxy sent the header, but the client hop is `unknown` or an
    /// obfuscated identifier, so the address is not known.
    #[error("a trusted proxy's {} header does not disclose the client address", .0.as_str())]
    Undisclosed(ForwardedHeader),
}

impl ClientIpError {
    /// The stable rejection code.
    pub fn code(self) -> &'static str {
        match self {
            Self::PeerUnavailable => "client_ip_unavailable",
            Self::MalformedHeader(_) => "malformed_forwarded_header",
            Self::Undisclosed(_) => "client_ip_undisclosed",
        }
    }

    /// The rejection to answer with: 500 when the host gave no connect info (a set-up
    /// error), 400 for a malformed header, 403 when the proxy hid the client.
    pub fn to_rejection(self) -> Rejection {
        match self {
            Self::PeerUnavailable => Rejection::internal(
                self.code(),
                "the server cannot determine the client address",
            ),
            Self::MalformedHeader(header) => Rejection::bad_request(
                self.code(),
                format!("the {} header is malformed", header.as_str()),
            ),
            Self::Undisclosed(header) => Rejection::forbidden(
                self.code(),
                format!(
                    "the {} header does not disclose the client address",
                    header.as_str()
                ),
            ),
        }
    }
}

/// Resolves the [`ClientIp`] of a request.
///
/// The socket peer is the client, unless it lies in the trusted-proxy set and a
/// forwarding header is configured: then the client is the rightmost hop of that header
/// that is not itself a trusted proxy. Headers from any other peer are ignored, so a
/// client cannot spoof its address. By default no proxy is trusted.
///
/// ```
/// use portcullis_core::{ClientIpResolver, ForwardedHeader, PeerAddr};
///
/// let resolver = ClientIpResolver::new()
///     .trust_proxies("10.0.0.0/8".parse()?)?
///     .forwarded_header(ForwardedHeader::XForwardedFor);
///
/// let mut request = http::Request::builder()
///     .header("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.1.1.1")
///     .body(())?;
/// request.extensions_mut().insert(PeerAddr("10.0.0.2:41000".parse()?));
///
/// // 10.1.1.1 is another trusted proxy; 203.0.113.9 is the client. 198.51.100.7 was
/// // written by the client itself and is ignored.
/// let client = resolver.resolve_request(&mut request)?;
/// assert_eq!(client.ip().to_string(), "203.0.113.9");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # One truth per trust configuration
///
/// The resolved address is stored in the request's extensions with the identity of the
/// configuration that produced it (its trusted proxies and header). A layer whose
/// resolver is configured the same way reuses it; a layer whose resolver trusts other
/// proxies never acts on it and resolves again with its own, and the audit record then
/// carries the address that layer used. So an outer layer with the default resolver
/// (trusting nobody) cannot hand the proxy's address to an inner allow-list that trusts
/// the proxy. Configure trust once: build one resolver and give a clone of it to every
/// layer that needs the address (the gateway file's `[client_ip]` does this).
#[derive(Clone, Debug)]
pub struct ClientIpResolver {
    trusted_proxies: NetworkSet,
    header: Option<ForwardedHeader>,
    max_elements: usize,
    /// Identifies the configuration: equal configurations, equal values.
    identity: u64,
}

/// The most forwarding-chain elements read by default, across every line of the header.
pub const DEFAULT_MAX_FORWARDED_ELEMENTS: usize = 64;

/// A trusted-proxy set that holds every IPv4 or every IPv6 address (`0.0.0.0/0`,
/// `::/0`): any client could then name any address. Refused by
/// [`ClientIpResolver::trust_proxies`]; a host that means it calls
/// [`ClientIpResolver::trust_proxies_insecure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the trusted proxies include every address (0.0.0.0/0 or ::/0), so any client could name any address in a forwarding header: list your load balancers' networks, or call trust_proxies_insecure if every peer really is a proxy you run")]
pub struct TrustsEveryone;

impl Default for ClientIpResolver {
    fn default() -> Self {
        let mut resolver = Self {
            trusted_proxies: NetworkSet::new(),
            header: None,
            max_elements: DEFAULT_MAX_FORWARDED_ELEMENTS,
            identity: 0,
        };
        resolver.identity = resolver.compute_identity();
        resolver
    }
}

impl ClientIpResolver {
    /// A resolver that takes the socket peer as the client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies in `networks` to name the client in the configured header.
    /// A set that holds every IPv4 or IPv6 address is refused ([`TrustsEveryone`]).
    pub fn trust_proxies(self, networks: NetworkSet) -> Result<Self, TrustsEveryone> {
        if networks.covers_everything() {
            return Err(TrustsEveryone);
        }
        Ok(self.trust_proxies_insecure(networks))
    }

    /// Trusts the proxies in `networks`, even when they are every address. Only for a
    /// server that no client can reach except through proxies you run: otherwise any
    /// client names any address it likes.
    pub fn trust_proxies_insecure(mut self, networks: NetworkSet) -> Self {
        self.trusted_proxies = networks;
        self.identity = self.compute_identity();
        self
    }

    /// The most hops read from a forwarding header, across all its lines (64 by
    /// default). A longer chain is refused with 400 `malformed_forwarded_header` before
    /// any hop beyond the limit is parsed.
    pub fn max_forwarded_elements(mut self, elements: std::num::NonZeroUsize) -> Self {
        self.max_elements = elements.get();
        self.identity = self.compute_identity();
        self
    }

    /// The header trusted proxies name the client in.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = Some(header);
        self.identity = self.compute_identity();
        self
    }

    /// Whether `other` resolves every request exactly as this one does.
    pub fn same_trust_as(&self, other: &ClientIpResolver) -> bool {
        self.identity == other.identity
            && self.header == other.header
            && self.max_elements == other.max_elements
            && self.trusted_proxies == other.trusted_proxies
    }

    fn compute_identity(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // `DefaultHasher::new` has fixed keys: the same configuration gives the same
        // value in every layer of the process.
        let mut hasher = std::hash::DefaultHasher::new();
        self.trusted_proxies.fingerprint(&mut hasher);
        self.header.map(|h| h as u8).hash(&mut hasher);
        self.max_elements.hash(&mut hasher);
        hasher.finish()
    }

    /// The trusted proxies.
    pub fn trusted_proxies(&self) -> &NetworkSet {
        &self.trusted_proxies
    }

    /// The request's [`ClientIp`]: the one already in its extensions when this
    /// resolver's configuration produced it (or the host put it there itself), or else a
    /// newly resolved one, which is then stored there for the layers that follow and
    /// given to the request's [`AuditRecord`](crate::AuditRecord).
    ///
    /// An address resolved under another trust configuration is never reused: see
    /// [One truth per trust configuration](Self#one-truth-per-trust-configuration).
    pub fn resolve_request<B>(&self, request: &mut Request<B>) -> Result<ClientIp, ClientIpError> {
        if let Some(ip) = self.stored(request.extensions()) {
            return Ok(ip);
        }
        let ip = self.resolve(request.extensions(), request.headers())?;
        let extensions = request.extensions_mut();
        extensions.insert(ip);
        if let Some(record) = extensions.get::<crate::AuditRecord>() {
            record.set_client_ip(ip.ip());
        }
        Ok(ip)
    }

    /// The stored address, when this configuration (or the host) produced it.
    fn stored(&self, extensions: &http::Extensions) -> Option<ClientIp> {
        let ip = extensions.get::<ClientIp>()?;
        match ip.resolved_by {
            Some(identity) if identity != self.identity => None,
            _ => Some(*ip),
        }
    }

    /// The request's client address under this resolver's configuration, without
    /// storing it: the stored one when it was resolved the same way (or put there by
    /// the host), else resolved now and, when it differs from a stored one's
    /// configuration, given to the request's [`AuditRecord`](crate::AuditRecord). For
    /// layers on a hot path that would rather read the socket peer again than grow the
    /// extensions.
    pub fn resolve_reusing(
        &self,
        extensions: &http::Extensions,
        headers: &HeaderMap,
    ) -> Result<ClientIp, ClientIpError> {
        if let Some(ip) = self.stored(extensions) {
            return Ok(ip);
        }
        let ip = self.resolve(extensions, headers)?;
        if extensions.get::<ClientIp>().is_some() {
            if let Some(record) = extensions.get::<crate::AuditRecord>() {
                record.set_client_ip(ip.ip());
            }
        }
        Ok(ip)
    }

    /// Resolves from a request's extensions (the socket peer) and headers, without
    /// looking for or storing an earlier result.
    pub fn resolve(
        &self,
        extensions: &http::Extensions,
        headers: &HeaderMap,
    ) -> Result<ClientIp, ClientIpError> {
        let peer = socket_peer(extensions).ok_or(ClientIpError::PeerUnavailable)?;
        let peer = peer.to_canonical();
        let Some(header) = self.header else {
            return Ok(ClientIp::resolved(peer, self.identity));
        };
        if !self.trusted_proxies.contains(peer) {
            return Ok(ClientIp::resolved(peer, self.identity));
        }
        let client = match header {
            ForwardedHeader::XRealIp => self.x_real_ip(headers),
            ForwardedHeader::Forwarded => self.chain(headers, header, forwarded::forwarded_nodes),
            ForwardedHeader::XForwardedFor => {
                self.chain(headers, header, forwarded::x_forwarded_for_nodes)
            }
        };
        match client {
            Ok(Some(ip)) => Ok(ClientIp::resolved(ip, self.identity)),
            // A trusted proxy that sends no header is itself the client (a health check).
            Ok(None) => Ok(ClientIp::resolved(peer, self.identity)),
            Err(error) => Err(error),
        }
    }

    fn x_real_ip(&self, headers: &HeaderMap) -> Result<Option<IpAddr>, ClientIpError> {
        let malformed = ClientIpError::MalformedHeader(ForwardedHeader::XRealIp);
        let mut values = headers.get_all("x-real-ip").iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(malformed);
        }
        let text = value.to_str().map_err(|_| malformed)?;
        let ip = forwarded::x_real_ip(text).map_err(|Malformed| malformed)?;
        if !can_be_a_client(ip) {
            return Err(ClientIpError::Undisclosed(ForwardedHeader::XRealIp));
        }
        Ok(Some(ip))
    }

    /// The rightmost hop that is not a trusted proxy, across every line of the header.
    /// When every hop is trusted, the leftmost one: the furthest the chain can tell.
    fn chain(
        &self,
        headers: &HeaderMap,
        header: ForwardedHeader,
        parse_line: forwarded::ChainParser,
    ) -> Result<Option<IpAddr>, ClientIpError> {
        let malformed = ClientIpError::MalformedHeader(header);
        let mut leftmost: Option<Node> = None;
        let mut rightmost_untrusted: Option<Node> = None;
        let mut record = |node: Node| {
            // An address that cannot be a client's (unspecified, broadcast, multicast) is
            // one the proxy did not disclose: never matched against any list.
            let node = match node {
                Node::Ip(ip) if !can_be_a_client(ip) => Node::Undisclosed,
                node => node,
            };
            leftmost.get_or_insert(node);
            let trusted = matches!(node, Node::Ip(ip) if self.trusted_proxies.contains(ip));
            if !trusted {
                rightmost_untrusted = Some(node);
            }
        };
        let mut lines = 0usize;
        let mut budget = self.max_elements;
        for value in headers.get_all(header.header_name()) {
            lines += 1;
            let line = value.to_str().map_err(|_| malformed)?;
            parse_line(line, &mut budget, &mut record).map_err(|Malformed| malformed)?;
        }
        if lines == 0 {
            return Ok(None);
        }
        match rightmost_untrusted.or(leftmost) {
            Some(Node::Ip(ip)) => Ok(Some(ip)),
            Some(Node::Undisclosed) => Err(ClientIpError::Undisclosed(header)),
            None => Err(malformed),
        }
    }
}

/// Whether a proxy may name `ip` as a client: not unspecified (`0.0.0.0`, `::`), not
/// the IPv4 broadcast address, not multicast.
fn can_be_a_client(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// The socket peer from whichever connect info the server put in the extensions.
pub fn socket_peer(extensions: &http::Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    if let Some(peer) = extensions.get::<crate::TlsPeer>() {
        return Some(peer.addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(peer)) =
        extensions.get::<axum::extract::ConnectInfo<crate::TlsPeer>>()
    {
        return Some(peer.addr.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr().map(|addr| addr.ip());
    }
    #[cfg(feature = "tonic-tls")]
    if let Some(info) = extensions
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
    {
        return info.get_ref().remote_addr().map(|addr| addr.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(format!("{peer}:1234").parse().unwrap()));
        request
    }

    fn v6_request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = request("0.0.0.0", headers);
        request
            .extensions_mut()
            .insert(PeerAddr(format!("[{peer}]:1234").parse().unwrap()));
        request
    }

    fn behind(header: ForwardedHeader) -> ClientIpResolver {
        ClientIpResolver::new()
            .trust_proxies("10.0.0.0/8, 2001:db8:ffff::/48".parse().unwrap())
            .unwrap()
            .forwarded_header(header)
    }

    fn resolve(
        resolver: &ClientIpResolver,
        mut request: Request<()>,
    ) -> Result<String, ClientIpError> {
        resolver
            .resolve_request(&mut request)
            .map(|ip| ip.to_string())
    }

    #[test]
    fn default_is_the_socket_peer_and_ignores_headers() {
        let resolver = ClientIpResolver::new();
        let req = request(
            "203.0.113.5",
            &[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "203.0.113.5");
    }

    #[test]
    fn headers_from_untrusted_peers_change_nothing() {
        for header in [
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XRealIp,
        ] {
            let req = request(
                "203.0.113.5",
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("forwarded", "for=1.2.3.4"),
                    ("x-real-ip", "1.2.3.4"),
                ],
            );
            assert_eq!(resolve(&behind(header), req).unwrap(), "203.0.113.5");
            // Malformed headers from an untrusted peer are not even read.
            let req = request(
                "203.0.113.5",
                &[
                    ("x-forwarded-for", "garbage"),
                    ("forwarded", "garbage"),
                    ("x-real-ip", "garbage"),
                ],
            );
            assert_eq!(resolve(&behind(header), req).unwrap(), "203.0.113.5");
        }
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        let req = request(
            "10.0.0.1",
            &[(
                "x-forwarded-for",
                "6.6.6.6, 198.51.100.1, 10.2.2.2, 10.3.3.3",
            )],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "198.51.100.1");
    }

    #[test]
    fn several_header_lines_are_one_chain() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        let req = request(
            "10.0.0.1",
            &[
                ("x-forwarded-for", "6.6.6.6, 198.51.100.1"),
                ("x-forwarded-for", "10.2.2.2"),
            ],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "198.51.100.1");
        let resolver = behind(ForwardedHeader::Forwarded);
        let req = request(
            "10.0.0.1",
            &[
                ("forwarded", "for=6.6.6.6"),
                (
                    "forwarded",
                    r#"for="[2001:db8::9]:443";proto=https, for=10.9.9.9"#,
                ),
            ],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "2001:db8::9");
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        let req = request("10.0.0.1", &[("x-forwarded-for", "10.5.5.5, 10.6.6.6")]);
        assert_eq!(resolve(&resolver, req).unwrap(), "10.5.5.5");
    }

    #[test]
    fn trusted_proxy_without_header_is_the_client() {
        for header in [
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XRealIp,
        ] {
            assert_eq!(
                resolve(&behind(header), request("10.0.0.1", &[])).unwrap(),
                "10.0.0.1"
            );
        }
    }

    #[test]
    fn x_real_ip_from_trusted_proxy() {
        let resolver = behind(ForwardedHeader::XRealIp);
        assert_eq!(
            resolve(
                &resolver,
                request("10.0.0.1", &[("x-real-ip", "198.51.100.2")])
            )
            .unwrap(),
            "198.51.100.2"
        );
        assert_eq!(
            resolve(
                &resolver,
                request(
                    "10.0.0.1",
                    &[("x-real-ip", "198.51.100.2"), ("x-real-ip", "198.51.100.3")]
                )
            ),
            Err(ClientIpError::MalformedHeader(ForwardedHeader::XRealIp))
        );
        assert_eq!(
            resolve(&resolver, request("10.0.0.1", &[("x-real-ip", "nope")])),
            Err(ClientIpError::MalformedHeader(ForwardedHeader::XRealIp))
        );
    }

    #[test]
    fn malformed_headers_from_trusted_proxies_are_errors() {
        for (header, name, value) in [
            (
                ForwardedHeader::XForwardedFor,
                "x-forwarded-for",
                "1.2.3.4,,5.6.7.8",
            ),
            (ForwardedHeader::XForwardedFor, "x-forwarded-for", ""),
            (ForwardedHeader::Forwarded, "forwarded", "for=[::1]"),
            (
                ForwardedHeader::Forwarded,
                "forwarded",
                "for=1.2.3.4;for=5.6.7.8",
            ),
        ] {
            let err = resolve(&behind(header), request("10.0.0.1", &[(name, value)])).unwrap_err();
            assert_eq!(err, ClientIpError::MalformedHeader(header), "{value}");
            let rejection = err.to_rejection();
            assert_eq!(rejection.status(), http::StatusCode::BAD_REQUEST);
            assert_eq!(rejection.code(), "malformed_forwarded_header");
        }
    }

    #[test]
    fn non_utf8_header_is_malformed() {
        let mut req = request("10.0.0.1", &[]);
        req.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(
            resolve(&behind(ForwardedHeader::XForwardedFor), req),
            Err(ClientIpError::MalformedHeader(
                ForwardedHeader::XForwardedFor
            ))
        );
    }

    #[test]
    fn undisclosed_client_is_an_error_not_the_proxy() {
        let resolver = behind(ForwardedHeader::Forwarded);
        for value in [
            "for=unknown",
            r#"for="_hidden""#,
            "proto=https",
            "for=198.51.100.1, for=_x",
        ] {
            let err = resolve(&resolver, request("10.0.0.1", &[("forwarded", value)])).unwrap_err();
            assert_eq!(
                err,
                ClientIpError::Undisclosed(ForwardedHeader::Forwarded),
                "{value}"
            );
            assert_eq!(err.to_rejection().status(), http::StatusCode::FORBIDDEN);
        }
        // An undisclosed hop left of the client does not matter.
        let req = request(
            "10.0.0.1",
            &[("forwarded", "for=unknown, for=198.51.100.1")],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "198.51.100.1");
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        // A mapped peer inside the trusted IPv4 network is trusted.
        let req = v6_request(
            "::ffff:10.0.0.1",
            &[("x-forwarded-for", "::ffff:198.51.100.4")],
        );
        assert_eq!(resolve(&resolver, req).unwrap(), "198.51.100.4");
        let req = v6_request("::ffff:203.0.113.1", &[]);
        assert_eq!(
            resolve(&ClientIpResolver::new(), req).unwrap(),
            "203.0.113.1"
        );
        assert_eq!(
            ClientIp::new("::ffff:1.2.3.4".parse().unwrap()).ip(),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_trusted_proxy() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        let req = v6_request("2001:db8:ffff::1", &[("x-forwarded-for", "2001:db8:1::5")]);
        assert_eq!(resolve(&resolver, req).unwrap(), "2001:db8:1::5");
    }

    #[test]
    fn missing_peer_is_an_error_that_says_what_to_do() {
        let mut req = Request::new(());
        let err = ClientIpResolver::new()
            .resolve_request(&mut req)
            .unwrap_err();
        assert_eq!(err, ClientIpError::PeerUnavailable);
        assert!(err
            .to_string()
            .contains("into_make_service_with_connect_info"));
        let rejection = err.to_rejection();
        assert_eq!(rejection.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rejection.code(), "client_ip_unavailable");
    }

    #[test]
    fn resolved_once_and_kept() {
        let resolver = behind(ForwardedHeader::XForwardedFor);
        let mut req = request("10.0.0.1", &[("x-forwarded-for", "198.51.100.1")]);
        let first = resolver.resolve_request(&mut req).unwrap();
        assert_eq!(req.extensions().get::<ClientIp>(), Some(&first));
        // A later resolution reuses the stored value even if the headers changed.
        req.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("198.51.100.99"),
        );
        assert_eq!(resolver.resolve_request(&mut req).unwrap(), first);
    }

    #[cfg(feature = "axum")]
    #[test]
    fn reads_axum_connect_info() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<SocketAddr>(
                "192.0.2.9:80".parse().unwrap(),
            ));
        assert_eq!(
            socket_peer(req.extensions()),
            Some("192.0.2.9".parse().unwrap())
        );
    }

    proptest! {
        // A client behind any number of trusted proxies is found, whatever it prepends.
        #[test]
        fn client_found_behind_trusted_hops(
            spoofed in proptest::collection::vec(any::<std::net::Ipv4Addr>(), 0..4),
            client in any::<std::net::Ipv4Addr>(),
            hops in proptest::collection::vec(any::<u32>().prop_map(|x| std::net::Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff))), 0..5),
        ) {
            prop_assume!(!client.octets().starts_with(&[10]));
            let chain: Vec<String> = spoofed.iter().chain(std::iter::once(&client)).chain(hops.iter()).map(ToString::to_string).collect();
            let req = request("10.0.0.1", &[("x-forwarded-for", &chain.join(", "))]);
            let resolved = resolve(&behind(ForwardedHeader::XForwardedFor), req);
            if can_be_a_client(IpAddr::V4(client)) {
                prop_assert_eq!(resolved.unwrap(), client.to_string());
            } else {
                // Unspecified, broadcast or multicast: never a client address.
                prop_assert_eq!(resolved, Err(ClientIpError::Undisclosed(ForwardedHeader::XForwardedFor)));
            }
        }
    }

    #[test]
    fn trusting_every_address_is_refused_unless_named_insecure() {
        for everything in [
            "0.0.0.0/0",
            "::/0",
            "0.0.0.0/1, 128.0.0.0/1",
            "::ffff:0:0/96",
            "10.0.0.0/8, 0.0.0.0/0",
        ] {
            let set: NetworkSet = everything.parse().unwrap();
            let error = ClientIpResolver::new()
                .trust_proxies(set.clone())
                .unwrap_err();
            assert!(
                error.to_string().contains("trust_proxies_insecure"),
                "{error}"
            );
            let insecure = ClientIpResolver::new().trust_proxies_insecure(set);
            assert!(
                insecure.trusted_proxies().covers_everything(),
                "{everything}"
            );
        }
        for fine in ["10.0.0.0/8", "0.0.0.0/1", "::/1, 10.0.0.0/8"] {
            assert!(
                ClientIpResolver::new()
                    .trust_proxies(fine.parse().unwrap())
                    .is_ok(),
                "{fine}"
            );
        }
    }
}
