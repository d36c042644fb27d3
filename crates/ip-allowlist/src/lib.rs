//! Allow and deny requests by the client's IP network.
//!
//! [`IpAllowlistLayer`] resolves the request's [`ClientIp`] (the socket peer, or the
//! client named by a trusted proxy) and checks it against [`IpRules`]: a deny list and
//! an allow list of IPv4 and IPv6 networks. Deny wins; an empty allow list means
//! "everything not denied". A refused request gets 403 `ip_denied` without the inner
//! service being called.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use portcullis_core::PeerAddr;
//! use portcullis_ip_allowlist::{IpAllowlistLayer, IpRules};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = IpRules::new()
//!     .allow("10.0.0.0/8, 2001:db8::/32".parse()?)
//!     .deny("10.66.0.0/16".parse()?);
//!
//! let service = ServiceBuilder::new()
//!     .layer(IpAllowlistLayer::new(rules))
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//!     }));
//!
//! // Servers put the socket peer in the extensions: axum's `ConnectInfo`, tonic's
//! // `TcpConnectInfo`, or `PeerAddr` from your own serve loop.
//! let request = |peer: &str| {
//!     let mut request = Request::new(String::new());
//!     request.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
//!     request
//! };
//!
//! # futures::executor::block_on(async {
//! let allowed = service.clone().oneshot(request("10.1.2.3:50000")).await?;
//! assert_eq!(allowed.status(), StatusCode::OK);
//!
//! let denied = service.clone().oneshot(request("10.66.0.1:50000")).await?;
//! assert_eq!(denied.status(), StatusCode::FORBIDDEN);
//!
//! let elsewhere = service.oneshot(request("203.0.113.9:50000")).await?;
//! assert_eq!(elsewhere.status(), StatusCode::FORBIDDEN);
//! # Ok::<(), Infallible>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Behind a proxy
//!
//! Trust the proxy's networks and name the header it writes; headers from any other
//! peer are ignored, and the client is the rightmost hop that is not a trusted proxy:
//!
//! ```
//! use portcullis_core::{ClientIpResolver, ForwardedHeader};
//! use portcullis_ip_allowlist::{IpAllowlistLayer, IpRules};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = IpAllowlistLayer::new(IpRules::new().deny("198.51.100.0/24".parse()?))
//!     .client_ip(
//!         ClientIpResolver::new()
//!             .trust_proxies("10.0.0.0/8".parse()?)?
//!             .forwarded_header(ForwardedHeader::XForwardedFor),
//!     );
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # Live updates
//!
//! [`IpAllowlistLayer::handle`] returns an [`IpRulesHandle`] that swaps in new rules
//! atomically, for example after re-reading a blocklist file. A request in flight keeps
//! the rules it started with.
//!
//! # Refusals
//!
//! | situation | status | code |
//! |---|---|---|
//! | address denied, or not in a non-empty allow list | 403 (see [`IpAllowlistLayer::deny_status`]) | `ip_denied` |
//! | no socket peer in the request (the host gave no connect info) | 500 | `client_ip_unavailable` |
//! | a trusted proxy sent a malformed forwarding header | 400 | `malformed_forwarded_header` |
//! | a trusted proxy hid the client (`unknown`, `_obfuscated`) | 403 | `client_ip_undisclosed` |
//!
//! Every refusal carries a [`Denial`](portcullis_core::Denial) in the response
//! extensions and, when an audit layer is present, an audit note.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use portcullis_core::{
    AuditNote, AuditRecord, ClientIp, ClientIpError, ClientIpResolver, DecisionFuture,
    NetworkListError, NetworkSet, RejectOrBody, Rejection, RenderRejection, Renderer,
};
use tower_layer::Layer;
use tower_service::Service;

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "ip-allowlist";

/// The rejection code for a refused address.
pub const IP_DENIED: &str = "ip_denied";

/// Allow and deny networks. Deny wins; an empty allow list allows everything that is not
/// denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRules {
    allow: NetworkSet,
    deny: NetworkSet,
}

impl IpRules {
    /// Rules that allow everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows only these networks (minus the denied ones).
    pub fn allow(mut self, networks: NetworkSet) -> Self {
        self.allow = networks;
        self
    }

    /// Denies these networks.
    pub fn deny(mut self, networks: NetworkSet) -> Self {
        self.deny = networks;
        self
    }

    /// Reads the allow list and the deny list from files, one address or network a line
    /// with `#` comments. Either may be omitted. Errors name the file and line.
    pub fn from_files(allow: Option<&Path>, deny: Option<&Path>) -> Result<Self, NetworkListError> {
        let read = |path: Option<&Path>| path.map(NetworkSet::from_file).transpose();
        Ok(Self {
            allow: read(allow)?.unwrap_or_default(),
            deny: read(deny)?.unwrap_or_default(),
        })
    }

    /// The allow list.
    pub fn allowed(&self) -> &NetworkSet {
        &self.allow
    }

    /// The deny list.
    pub fn denied(&self) -> &NetworkSet {
        &self.deny
    }

    /// Checks an address.
    pub fn check(&self, ip: IpAddr) -> Result<(), IpRefusal> {
        if self.deny.contains(ip) {
            Err(IpRefusal::Denied)
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            Err(IpRefusal::NotAllowed)
        } else {
            Ok(())
        }
    }
}

/// Why [`IpRules`] refused an address. Both answer `ip_denied` to the client; the
/// difference is for logs and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpRefusal {
    /// The address is in the deny list.
    Denied,
    /// The allow list is not empty and the address is not in it.
    NotAllowed,
}

impl IpRefusal {
    /// A short description for logs and audit notes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "in the deny list",
            Self::NotAllowed => "not in the allow list",
        }
    }
}

impl fmt::Display for IpRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replaces an [`IpAllowlistLayer`]'s rules while it serves. Cheap to clone.
///
/// ```
/// use portcullis_ip_allowlist::{IpAllowlistLayer, IpRules};
///
/// let layer = IpAllowlistLayer::new(IpRules::new());
/// let handle = layer.handle();
/// handle.replace(IpRules::new().deny("192.0.2.0/24".parse()?));
/// assert!(handle.current().check("192.0.2.1".parse()?).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct IpRulesHandle(Arc<ArcSwap<IpRules>>);

impl IpRulesHandle {
    /// Swaps in new rules. Requests that already started keep the old ones; every
    /// request after this returns sees the new ones.
    pub fn replace(&self, rules: IpRules) {
        self.0.store(Arc::new(rules));
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<IpRules> {
        self.0.load_full()
    }
}

impl fmt::Debug for IpRulesHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IpRulesHandle")
            .field(&self.0.load())
            .finish()
    }
}

#[derive(Clone, Debug)]
struct Config {
    rules: IpRulesHandle,
    resolver: ClientIpResolver,
    deny_status: StatusCode,
    renderer: Renderer,
}

/// Refuses requests whose client address the [`IpRules`] do not allow. See the
/// [crate docs](crate).
#[derive(Clone, Debug)]
pub struct IpAllowlistLayer {
    config: Config,
}

impl IpAllowlistLayer {
    /// A layer enforcing `rules`, taking the socket peer as the client address.
    pub fn new(rules: IpRules) -> Self {
        Self {
            config: Config {
                rules: IpRulesHandle(Arc::new(ArcSwap::from_pointee(rules))),
                resolver: ClientIpResolver::new(),
                deny_status: StatusCode::FORBIDDEN,
                renderer: Renderer::default(),
            },
        }
    }

    /// How the client address is resolved (trusted proxies and their header). Use the
    /// same resolver in every layer: the first layer to resolve stores the
    /// [`ClientIp`] and the others reuse it.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.config.resolver = resolver;
        self
    }

    /// The status for `ip_denied` (403 by default; some hosts prefer 404 so as not to
    /// confirm the route exists).
    pub fn deny_status(mut self, status: StatusCode) -> Self {
        self.config.deny_status = status;
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.config.renderer = Renderer::new(renderer);
        self
    }

    /// A handle that replaces the rules of this layer, and of every service it built.
    pub fn handle(&self) -> IpRulesHandle {
        self.config.rules.clone()
    }
}

impl<S> Layer<S> for IpAllowlistLayer {
    type Service = IpAllowlist<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IpAllowlist {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service built by [`IpAllowlistLayer`].
#[derive(Clone, Debug)]
pub struct IpAllowlist<S> {
    inner: S,
    config: Arc<Config>,
}

/// The response future of [`IpAllowlist`].
pub type ResponseFuture<F, B> = DecisionFuture<F, B>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IpAllowlist<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RejectOrBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let client = match self.config.resolver.resolve_request(&mut request) {
            Ok(client) => client,
            Err(error) => return self.refuse_unresolved(error, &request),
        };
        // One load per request: the whole decision sees one version of the rules.
        let verdict = self.config.rules.0.load().check(client.ip());
        match verdict {
            Ok(()) => {
                portcullis_core::count_allowed(LAYER_NAME);
                AuditRecord::note(request.extensions(), || AuditNote::allow(LAYER_NAME));
                DecisionFuture::inner(self.inner.call(request))
            }
            Err(refusal) => self.refuse(client, refusal, &request),
        }
    }
}

impl<S> IpAllowlist<S> {
    fn refuse<ReqBody, ResBody, F>(
        &self,
        client: ClientIp,
        refusal: IpRefusal,
        request: &Request<ReqBody>,
    ) -> DecisionFuture<F, ResBody> {
        tracing::debug!(client_ip = %client, reason = refusal.as_str(), "ip-allowlist refused a request");
        AuditRecord::note(request.extensions(), || {
            AuditNote::deny(LAYER_NAME, IP_DENIED).detail(refusal.as_str())
        });
        let rejection =
            Rejection::forbidden(IP_DENIED, "requests from this address are not allowed")
                .with_status(self.config.deny_status);
        DecisionFuture::rejected(
            self.config
                .renderer
                .respond(LAYER_NAME, &rejection, request),
        )
    }

    fn refuse_unresolved<ReqBody, ResBody, F>(
        &self,
        error: ClientIpError,
        request: &Request<ReqBody>,
    ) -> DecisionFuture<F, ResBody> {
        match error {
            ClientIpError::PeerUnavailable => {
                portcullis_core::log_throttled!(
                    error,
                    "ip-allowlist refused a request: {error}; serve with the peer address in the request (axum's ConnectInfo, PeerAddr, or the TLS listener)"
                )
            }
            _ => tracing::debug!("ip-allowlist refused a request: {error}"),
        }
        let rejection = error.to_rejection();
        AuditRecord::note(request.extensions(), || {
            AuditNote::deny(LAYER_NAME, rejection.code())
        });
        DecisionFuture::rejected(
            self.config
                .renderer
                .respond(LAYER_NAME, &rejection, request),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use portcullis_core::{Decision, Denial, ForwardedHeader, PeerAddr};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    type TestService = IpAllowlist<
        tower::util::ServiceFn<
            fn(Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
        >,
    >;

    fn ok(_: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"inner")))))
    }

    fn service(layer: &IpAllowlistLayer) -> TestService {
        layer.layer(service_fn(ok as fn(_) -> _))
    }

    fn request(peer: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        request
    }

    fn call(service: &TestService, request: Request<()>) -> (StatusCode, Option<Denial>, String) {
        let response = futures::executor::block_on(service.clone().oneshot(request)).unwrap();
        let status = response.status();
        let denial = response.extensions().get::<Denial>().copied();
        let body = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, denial, String::from_utf8(body.to_vec()).unwrap())
    }

    fn rules(allow: &str, deny: &str) -> IpRules {
        IpRules::new()
            .allow(NetworkSet::parse_list("allow", allow).unwrap())
            .deny(NetworkSet::parse_list("deny", deny).unwrap())
    }

    #[test]
    fn empty_rules_allow_everything() {
        let svc = service(&IpAllowlistLayer::new(IpRules::new()));
        assert_eq!(call(&svc, request("203.0.113.1:1")).0, StatusCode::OK);
        assert_eq!(call(&svc, request("[2001:db8::1]:1")).0, StatusCode::OK);
    }

    #[test]
    fn deny_wins_over_allow() {
        let svc = service(&IpAllowlistLayer::new(rules("10.0.0.0/8", "10.66.0.0/16")));
        let (status, _, body) = call(&svc, request("10.1.1.1:1"));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "inner"));
        let (status, denial, body) = call(&svc, request("10.66.3.3:1"));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(denial, Some(Denial::new(LAYER_NAME, IP_DENIED)));
        assert!(body.contains("\"code\":\"ip_denied\""), "{body}");
        assert!(!body.contains("inner"));
    }

    #[test]
    fn not_in_allow_list_is_denied() {
        let svc = service(&IpAllowlistLayer::new(rules(
            "10.0.0.0/8\n2001:db8::/32",
            "",
        )));
        assert_eq!(call(&svc, request("192.0.2.1:1")).0, StatusCode::FORBIDDEN);
        assert_eq!(
            call(&svc, request("[2001:db9::1]:1")).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(call(&svc, request("[2001:db8::1]:1")).0, StatusCode::OK);
    }

    #[test]
    fn deny_only_rules() {
        let svc = service(&IpAllowlistLayer::new(rules("", "192.0.2.0/24")));
        assert_eq!(
            call(&svc, request("192.0.2.200:1")).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(call(&svc, request("192.0.3.1:1")).0, StatusCode::OK);
    }

    #[test]
    fn mapped_ipv6_peer_is_checked_as_ipv4() {
        let svc = service(&IpAllowlistLayer::new(rules("", "192.0.2.0/24")));
        assert_eq!(
            call(&svc, request("[::ffff:192.0.2.1]:1")).0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn deny_status_is_configurable() {
        let svc = service(
            &IpAllowlistLayer::new(rules("", "192.0.2.0/24")).deny_status(StatusCode::NOT_FOUND),
        );
        let (status, denial, _) = call(&svc, request("192.0.2.1:1"));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(denial.unwrap().code(), IP_DENIED);
    }

    #[test]
    fn missing_peer_is_refused_not_passed() {
        let svc = service(&IpAllowlistLayer::new(IpRules::new()));
        let (status, denial, body) = call(&svc, Request::new(()));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(denial.unwrap().code(), "client_ip_unavailable");
        assert!(body.contains("client_ip_unavailable"));
    }

    #[test]
    fn trusted_proxy_header_decides_untrusted_does_not() {
        let layer = IpAllowlistLayer::new(rules("", "198.51.100.0/24")).client_ip(
            ClientIpResolver::new()
                .trust_proxies("10.0.0.0/8".parse().unwrap())
                .unwrap()
                .forwarded_header(ForwardedHeader::XForwardedFor),
        );
        let svc = service(&layer);
        let with_xff = |peer: &str, xff: &str| {
            let mut r = request(peer);
            r.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
            r
        };
        // Through the proxy, the denied client is found.
        assert_eq!(
            call(&svc, with_xff("10.0.0.1:1", "198.51.100.7")).0,
            StatusCode::FORBIDDEN
        );
        // A denied client cannot hide by prepending an allowed address.
        assert_eq!(
            call(&svc, with_xff("10.0.0.1:1", "192.0.2.1, 198.51.100.7")).0,
            StatusCode::FORBIDDEN
        );
        // An allowed client that claims to be somebody else still is itself.
        assert_eq!(
            call(&svc, with_xff("10.0.0.1:1", "198.51.100.7, 192.0.2.1")).0,
            StatusCode::OK
        );
        // Directly connected, the header is ignored.
        assert_eq!(
            call(&svc, with_xff("198.51.100.7:1", "192.0.2.1")).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&svc, with_xff("192.0.2.1:1", "198.51.100.7")).0,
            StatusCode::OK
        );
        // A malformed header from the proxy is a 400.
        let (status, denial, _) = call(&svc, with_xff("10.0.0.1:1", "198.51.100.7,,"));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(denial.unwrap().code(), "malformed_forwarded_header");
        // An undisclosed client is refused.
        let (status, denial, _) = call(&svc, with_xff("10.0.0.1:1", "unknown"));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(denial.unwrap().code(), "client_ip_undisclosed");
    }

    #[test]
    fn live_update_applies_to_built_services() {
        let layer = IpAllowlistLayer::new(IpRules::new());
        let svc = service(&layer);
        assert_eq!(call(&svc, request("192.0.2.1:1")).0, StatusCode::OK);
        layer.handle().replace(rules("", "192.0.2.1"));
        assert_eq!(call(&svc, request("192.0.2.1:1")).0, StatusCode::FORBIDDEN);
        layer.handle().replace(IpRules::new());
        assert_eq!(call(&svc, request("192.0.2.1:1")).0, StatusCode::OK);
    }

    #[test]
    fn audit_notes_record_the_decision() {
        let svc = service(&IpAllowlistLayer::new(rules("10.0.0.0/8", "")));
        for (peer, decision, code) in [
            ("10.0.0.1:1", Decision::Allow, None),
            ("192.0.2.1:1", Decision::Deny, Some(IP_DENIED)),
        ] {
            let record = AuditRecord::new();
            let mut req = request(peer);
            req.extensions_mut().insert(record.clone());
            call(&svc, req);
            let notes = record.notes();
            assert_eq!(notes.len(), 1);
            assert_eq!(notes[0].layer(), LAYER_NAME);
            assert_eq!(notes[0].decision(), decision);
            assert_eq!(notes[0].reason_code(), code);
        }
    }

    #[test]
    fn from_files_names_the_bad_line() {
        let dir = std::env::temp_dir().join(format!("portcullis-ipal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("allow.txt");
        let bad = dir.join("deny.txt");
        std::fs::write(&good, "# office\n10.0.0.0/8\n").unwrap();
        std::fs::write(&bad, "192.0.2.0/24\n192.0.2.300\n").unwrap();
        let rules = IpRules::from_files(Some(&good), None).unwrap();
        assert!(rules.check("10.1.1.1".parse().unwrap()).is_ok());
        assert_eq!(
            rules.check("11.1.1.1".parse().unwrap()),
            Err(IpRefusal::NotAllowed)
        );
        let err = IpRules::from_files(Some(&good), Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("deny.txt:2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
