//! Forwarding requests to an upstream service: the reverse proxy a gateway puts behind
//! its layers.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_core::{
    AuditNote, AuditRecord, ClientIpResolver, Decision, RejectOrBody, Rejection, Renderer, TlsPeer,
};
use tower_service::Service;

/// The name in audit notes and problem responses.
pub const LAYER_NAME: &str = "upstream";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type OutBody = UnsyncBoxBody<Bytes, BoxError>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, OutBody>;

/// The body of a forwarded response: the upstream's, streamed, or a problem response.
pub type UpstreamBody = RejectOrBody<hyper::body::Incoming>;

/// A mistake in the upstream's settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The URL is not `http://host[:port][/path]` or `https://…`.
    #[error("the upstream URL must be http:// or https:// with a host, and no query")]
    InvalidUrl,
    /// A CA or client certificate could not be read.
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// Settings of a forwarded upstream: where, how long, how much.
#[derive(Clone)]
#[must_use]
pub struct UpstreamBuilder {
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_request_body: Option<u64>,
    preserve_host: bool,
    strip_prefix: Option<String>,
    http2_only: bool,
    root_certificates: Option<Vec<u8>>,
    client_certificate: Option<(Vec<u8>, Vec<u8>)>,
    resolver: ClientIpResolver,
    renderer: Renderer,
}

impl fmt::Debug for UpstreamBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold credentials: only its kind.
        f.debug_struct("UpstreamBuilder")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_request_body", &self.max_request_body)
            .field("preserve_host", &self.preserve_host)
            .field("http2_only", &self.http2_only)
            .finish_non_exhaustive()
    }
}

impl UpstreamBuilder {
    /// How long the upstream may take to start answering (30 s by default); past it,
    /// 504 `upstream_timeout`. The body then streams for as long as it takes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (5 s by default); past it, 502.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest request body forwarded (10 MiB by default; `None`: no limit).
    /// Larger ones are refused with 413 `payload_too_large`: at once when
    /// `Content-Length` says so, else when the streamed body passes the limit.
    pub fn max_request_body(mut self, bytes: Option<u64>) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Sends the client's `Host` on (the upstream's authority by default).
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// Removes this prefix from the request path before appending it to the
    /// upstream's path (`/api` with upstream `http://orders:8080/v2`: `/api/items`
    /// goes to `/v2/items`).
    pub fn strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.strip_prefix = Some(prefix.into().trim_end_matches('/').to_owned());
        self
    }

    /// Speaks HTTP/2 only (prior knowledge over plain TCP, ALPN over TLS): for gRPC
    /// upstreams. By default HTTP/1.1, or what ALPN chooses over TLS.
    pub fn http2_only(mut self, on: bool) -> Self {
        self.http2_only = on;
        self
    }

    /// For `https://` upstreams: trusts these CA certificates (PEM) instead of the
    /// system's roots.
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// For `https://` upstreams that ask for one: this certificate chain and key (PEM).
    pub fn client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_certificate = Some((chain_pem.into(), key_pem.into()));
        self
    }

    /// How the client address for `X-Forwarded-For` and `Forwarded` is resolved, and
    /// which peers are trusted proxies whose forwarding headers are kept and appended
    /// to (the socket peer, none trusted, by default).
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// How refusals (413, 502, 504) are rendered (problem+json, or a gRPC status).
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// The service, or what is wrong with the settings. Needs a Tokio runtime when it
    /// is called (it starts the connection pool).
    pub fn build(self) -> Result<Upstream, UpstreamError> {
        let uri: Uri = self.url.parse().map_err(|_| UpstreamError::InvalidUrl)?;
        let scheme = uri.scheme().cloned().ok_or(UpstreamError::InvalidUrl)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(UpstreamError::InvalidUrl);
        }
        let authority = uri.authority().cloned().ok_or(UpstreamError::InvalidUrl)?;
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(UpstreamError::InvalidUrl);
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let client = self.client()?;
        Ok(Upstream {
            shared: Arc::new(Shared {
                client,
                scheme,
                authority,
                base_path,
                timeout: self.timeout,
                max_request_body: self.max_request_body,
                preserve_host: self.preserve_host,
                strip_prefix: self.strip_prefix,
                resolver: self.resolver,
                renderer: self.renderer,
            }),
        })
    }

    fn client(&self) -> Result<HttpsClient, UpstreamError> {
        let tls = |e: &dyn fmt::Display| UpstreamError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_certificates {
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(certificate.map_err(|e| tls(&e))?)
                        .map_err(|e| tls(&e))?;
                }
            }
            None => {
                for certificate in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(certificate);
                }
            }
        }
        let builder = builder.with_root_certificates(roots);
        let config = match &self.client_certificate {
            Some((chain, key)) => {
                use rustls_pki_types::pem::PemObject;
                let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls(&e))?;
                let key =
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(key).map_err(|e| tls(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        // hyper-rustls sets ALPN from the versions enabled.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let connector = match self.http2_only {
            true => connector.enable_http2().wrap_connector(http),
            false => connector.enable_all_versions().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client.http2_only(self.http2_only);
        Ok(client.build(connector))
    }
}

/// A service that forwards each request to one upstream and streams its answer back.
///
/// Hop-by-hop headers (RFC 9110 §7.6.1, and those `Connection` names) are removed both
/// ways; `Via` names this hop (`1.1 portcullis`); `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` are
/// written from the resolved client (the client's own copies are dropped unless its
/// peer is a trusted proxy, whose list is appended to); `Host` becomes the upstream's.
/// Upgrades (WebSocket) are refused with 501 `upgrade_not_supported`.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("scheme", &self.shared.scheme)
            .field("authority", &self.shared.authority.host())
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: HttpsClient,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    timeout: Duration,
    max_request_body: Option<u64>,
    preserve_host: bool,
    strip_prefix: Option<String>,
    resolver: ClientIpResolver,
    renderer: Renderer,
}

impl Upstream {
    /// Settings for the upstream at `url` (`http://host:port/base-path` or
    /// `https://…`).
    pub fn builder(url: impl Into<String>) -> UpstreamBuilder {
        UpstreamBuilder {
            url: url.into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_request_body: Some(10 * 1024 * 1024),
            preserve_host: false,
            strip_prefix: None,
            http2_only: false,
            root_certificates: None,
            client_certificate: None,
            resolver: ClientIpResolver::new(),
            renderer: Renderer::default(),
        }
    }
}

impl<B> Service<Request<B>> for Upstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.forward(request).await) })
    }
}

/// Why a request was not forwarded, or the upstream did not answer.
enum Failure {
    TooLarge,
    Upgrade,
    Unavailable,
    TimedOut,
    BadPath,
}

impl Failure {
    fn rejection(&self) -> Rejection {
        match self {
            Self::TooLarge => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this route accepts",
            ),
            Self::Upgrade => Rejection::new(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade_not_supported",
                "protocol upgrades (WebSocket) are not forwarded",
            ),
            Self::Unavailable => Rejection::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream service could not be reached or broke off its answer",
            ),
            Self::TimedOut => Rejection::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream service did not answer in time",
            ),
            Self::BadPath => {
                Rejection::bad_request("invalid_path", "the request path cannot be forwarded")
            }
        }
    }
}

impl Shared {
    async fn forward<B>(&self, request: Request<B>) -> Response<UpstreamBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match self.prepare(request) {
            Ok((outgoing, context)) => self.send(outgoing, context).await,
            Err(refused) => self.refuse(&refused.0, &refused.1),
        }
    }

    /// The outgoing request, or why there is none. `context` keeps what a refusal
    /// needs (the head, without the body).
    #[allow(clippy::type_complexity)]
    fn prepare<B>(
        &self,
        request: Request<B>,
    ) -> Result<(Request<OutBody>, Request<()>), Box<(Failure, Request<()>)>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let context = {
            let mut head = Request::new(());
            *head.method_mut() = parts.method.clone();
            *head.uri_mut() = parts.uri.clone();
            *head.headers_mut() = parts.headers.clone();
            // The audit record and the gRPC marker travel with the head.
            if let Some(record) = parts.extensions.get::<AuditRecord>() {
                head.extensions_mut().insert(record.clone());
            }
            head
        };
        if parts.headers.contains_key(header::UPGRADE) {
            return Err(Box::new((Failure::Upgrade, context)));
        }
        if let (Some(limit), Some(length)) = (self.max_request_body, content_length(&parts.headers))
        {
            if length > limit {
                return Err(Box::new((Failure::TooLarge, context)));
            }
        }
        let Some(uri) = self.uri(&parts.uri) else {
            return Err(Box::new((Failure::BadPath, context)));
        };
        // Each hop appends the address it heard the request from: the socket peer (not
        // the client a trusted proxy named, which that proxy's own entry already says).
        let peer = portcullis_core::socket_peer(&parts.extensions).map(|ip| ip.to_canonical());
        let peer_trusted = peer.is_some_and(|peer| self.resolver.trusted_proxies().contains(peer));
        let https = parts.extensions.get::<TlsPeer>().is_some();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers);
        self.forwarding(
            &mut parts.headers,
            peer,
            peer_trusted,
            https,
            original_host.as_ref(),
        );
        if !self.preserve_host {
            if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        // RFC 9110 §7.6.3: a gateway sends Via in each request it forwards, after any
        // earlier hops', naming the protocol it received.
        let received = match parts.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        };
        let mut via = String::new();
        join_lines(&mut via, &parts.headers, &header::VIA);
        parts.headers.remove(header::VIA);
        let via = match via.is_empty() {
            true => Ok(HeaderValue::from_static(match received {
                "1.0" => "1.0 portcullis",
                "2" => "2 portcullis",
                "3" => "3 portcullis",
                _ => "1.1 portcullis",
            })),
            false => {
                via.push_str(", ");
                via.push_str(received);
                via.push_str(" portcullis");
                HeaderValue::from_maybe_shared(Bytes::from(via))
            }
        };
        if let Ok(via) = via {
            parts.headers.insert(header::VIA, via);
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let body: OutBody = match self.max_request_body {
            Some(limit) => Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                .map_err(Into::into)
                .boxed_unsync(),
            None => body.map_err(Into::into).boxed_unsync(),
        };
        let mut outgoing = Request::from_parts(parts, body);
        outgoing.extensions_mut().clear();
        Ok((outgoing, context))
    }

    fn uri(&self, incoming: &Uri) -> Option<Uri> {
        let path = incoming.path();
        let rest = match &self.strip_prefix {
            Some(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                _ => path,
            },
            None => path,
        };
        let mut target = format!("{}{rest}", self.base_path);
        if target.is_empty() {
            target.push('/');
        }
        if let Some(query) = incoming.query() {
            target.push('?');
            target.push_str(query);
        }
        let path_and_query: PathAndQuery = target.parse().ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }

    /// `X-Forwarded-*` and `Forwarded`: the client's copies dropped unless its peer is
    /// a trusted proxy; then this hop appended (`peer`, the address it came from).
    ///
    /// Every forwarded request passes here, so the values are written into one buffer
    /// each, the address formatted once, without `format!`.
    fn forwarding(
        &self,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        peer_trusted: bool,
        https: bool,
        host: Option<&HeaderValue>,
    ) {
        // A trusted proxy's lists are kept, and this hop goes after them.
        let mut forwarded_for = String::new();
        let mut forwarded = String::new();
        if peer_trusted {
            join_lines(&mut forwarded_for, headers, &X_FORWARDED_FOR);
            join_lines(&mut forwarded, headers, &header::FORWARDED);
        }
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &header::FORWARDED,
        ] {
            headers.remove(name);
        }
        let Some(client) = peer else {
            return;
        };
        let proto = if https { "https" } else { "http" };

        let mut address = String::with_capacity(48);
        push_ip(&mut address, client);
        if !forwarded_for.is_empty() {
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(&address);
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(forwarded_for)) {
            headers.insert(X_FORWARDED_FOR, value);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }

        // RFC 7239: an IPv6 node is bracketed and quoted.
        if !forwarded.is_empty() {
            forwarded.push_str(", ");
        }
        forwarded.push_str("for=");
        match client {
            IpAddr::V4(_) => forwarded.push_str(&address),
            IpAddr::V6(_) => {
                forwarded.push_str("\"[");
                forwarded.push_str(&address);
                forwarded.push_str("]\"");
            }
        }
        forwarded.push_str(";proto=");
        forwarded.push_str(proto);
        if let Some(host) = host.and_then(|h| h.to_str().ok()) {
            if host
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                forwarded.push_str(";host=\"");
                forwarded.push_str(host);
                forwarded.push('"');
            }
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
            headers.insert(header::FORWARDED, value);
        }
    }

    async fn send(
        &self,
        outgoing: Request<OutBody>,
        context: Request<()>,
    ) -> Response<UpstreamBody> {
        let answer = tokio::time::timeout(self.timeout, self.client.request(outgoing)).await;
        let response = match answer {
            Err(_) => return self.refuse(&Failure::TimedOut, &context),
            Ok(Err(error)) => {
                let failure = match too_large(&error) {
                    true => Failure::TooLarge,
                    false => Failure::Unavailable,
                };
                tracing::debug!(error = %error, "upstream: the request failed");
                return self.refuse(&failure, &context);
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, RejectOrBody::inner(body))
    }

    fn refuse(&self, failure: &Failure, context: &Request<()>) -> Response<UpstreamBody> {
        let rejection = failure.rejection();
        AuditRecord::note(context.extensions(), || {
            AuditNote::new(LAYER_NAME, Decision::Deny).code(rejection.code())
        });
        metrics::counter!("portcullis_upstream_failures_total", "code" => rejection.code())
            .increment(1);
        self.renderer.respond(LAYER_NAME, &rejection, context)
    }
}

/// Whether a client error came from the request body passing its limit.
fn too_large(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop fields every message loses at a proxy (RFC 9110 §7.6.1), besides
/// those `Connection` names; `TE` is judged apart.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Every line of `name` in `headers` that is text, joined with `", "` onto `out`.
fn join_lines(out: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for value in headers.get_all(name) {
        if let Ok(text) = value.to_str() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(text);
        }
    }
}

/// `ip` in its usual text form; IPv4 without `fmt`, as every forwarded request
/// writes one.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Removes the hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it
/// names, and the fixed list. `TE: trailers` stays, as gRPC needs it end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names they have decides that.
    let any = headers
        .keys()
        .any(|name| name == header::TE || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    let keep_te = headers.contains_key(header::TE)
        && headers.get_all(header::TE).iter().all(|v| {
            v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in &HOP_BY_HOP {
        // `remove` takes every line of the field.
        headers.remove(name);
    }
    if !keep_te {
        headers.remove(header::TE);
    }
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use super::*;

    /// The request head `upstream` would send for a request with `headers` from
    /// `peer`, or the refusal's code.
    pub fn prepare(
        upstream: &Upstream,
        headers: HeaderMap,
        peer: std::net::SocketAddr,
    ) -> Result<HeaderMap, &'static str> {
        let mut request = Request::new(http_body_util::Empty::<Bytes>::new());
        *request.headers_mut() = headers;
        request
            .extensions_mut()
            .insert(portcullis_core::PeerAddr(peer));
        match upstream.shared.prepare(request) {
            Ok((outgoing, _)) => Ok(outgoing.into_parts().0.headers),
            Err(refused) => Err(refused.0.rejection().code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go_and_te_trailers_stays() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, "close, X-Secret-Hop".parse().unwrap());
        headers.append(header::CONNECTION, "keep-alive".parse().unwrap());
        headers.append("x-secret-hop", "1".parse().unwrap());
        headers.append("keep-alive", "timeout=5".parse().unwrap());
        headers.append(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.append(header::UPGRADE, "websocket".parse().unwrap());
        headers.append(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        headers.append(header::TE, "trailers".parse().unwrap());
        headers.append("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["te", "x-kept"]);
        let mut headers = HeaderMap::new();
        headers.append(header::TE, "gzip, trailers".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let samples: [IpAddr; 6] = [
            "0.0.0.0".parse().unwrap(),
            "9.10.99.100".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "2001:db8::ff00:42:8329".parse().unwrap(),
        ];
        for ip in samples {
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, octet, 1, octet]);
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn lines_are_joined_in_order_and_only_the_text_ones() {
        let mut headers = HeaderMap::new();
        headers.append(header::VIA, "1.0 a".parse().unwrap());
        headers.append(header::VIA, HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append(header::VIA, "1.1 b, 2 c".parse().unwrap());
        let mut out = String::new();
        join_lines(&mut out, &headers, &header::VIA);
        assert_eq!(out, "1.0 a, 1.1 b, 2 c");
        let mut none = String::new();
        join_lines(&mut none, &headers, &header::FORWARDED);
        assert_eq!(none, "");
    }

    #[test]
    fn a_request_without_hop_by_hop_fields_keeps_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT, "*/*".parse().unwrap());
        headers.append("x-kept", "1".parse().unwrap());
        headers.append("x-kept", "2".parse().unwrap());
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
        // TE alone is judged too.
        headers.append(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
