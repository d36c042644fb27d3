//! What the host configures: where the service is, what it is sent, what its answers
//! may change, and how long they are kept.

use std::time::Duration;

use http::header::{self, HeaderName};
use portcullis_core::{ClientIpResolver, RenderRejection, Renderer};

use crate::layer::{ExtAuthzLayer, Shared};

/// How the request is described to the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckEncoding {
    /// `POST` with a JSON body (the default): `method`, `path`, `query`, `headers` (the
    /// forwarded ones, each a list of its lines), `client_ip` and `principals` (each
    /// with `method`, `id`, `credential_id`, `roles`, `scopes`, `attributes`). The shape
    /// an OPA policy reads as `input`.
    #[default]
    Json,
    /// `GET` with headers, as nginx's `auth_request` and Traefik's ForwardAuth send:
    /// the forwarded headers as they are, `X-Forwarded-Method`, `X-Forwarded-Uri` (path
    /// and query), `X-Forwarded-For` (the client address) and `X-Portcullis-Principals`
    /// (the principals as a JSON array, as above).
    Headers,
}

/// What happens when the service cannot answer: it is down, slower than the timeout,
/// or answers with a 5xx.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Refuse with 503 `authorization_unavailable` (the default): no answer is not a
    /// yes.
    #[default]
    Closed,
    /// Let the request through, noted for the audit as `authorization_unavailable`.
    /// For checks that only add headers, never for ones that refuse.
    Open,
}

/// One part of a cache key; see [`ExtAuthzBuilder::cache`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheKeyPart {
    /// The method.
    Method,
    /// The path.
    Path,
    /// The query.
    Query,
    /// Every line of a request header.
    Header(HeaderName),
    /// The client address.
    ClientIp,
    /// The principals established by earlier layers (method, id, roles, scopes).
    Principals,
}

impl std::str::FromStr for CacheKeyPart {
    type Err = String;

    /// `method`, `path`, `query`, `client-ip`, `principals` or `header:NAME`.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "method" => Self::Method,
            "path" => Self::Path,
            "query" => Self::Query,
            "client-ip" => Self::ClientIp,
            "principals" => Self::Principals,
            _ => match text.strip_prefix("header:") {
                Some(name) => Self::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{name:?} is not a header name"))?,
                ),
                None => {
                    return Err(format!(
                        "{text:?} is not a cache key part: method, path, query, client-ip, principals or header:NAME"
                    ))
                }
            },
        })
    }
}

/// The decision cache: how long an answer is kept, how many, and what it is keyed by.
#[derive(Clone, Debug)]
pub(crate) struct CacheSettings {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    /// Empty: everything the service is sent.
    pub(crate) key: Vec<CacheKeyPart>,
}

/// Why an [`ExtAuthzBuilder`] was refused. Each says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtAuthzConfigError {
    /// The endpoint is not an `http` or `https` URL with a host. The URL is not
    /// repeated: it may hold a password.
    #[error("the decision endpoint is not an http:// or https:// URL with a host")]
    InvalidEndpoint,
    /// A duration or count is zero.
    #[error("{0} is zero; give it a positive value")]
    Zero(&'static str),
    /// A header the answer may set is one the layer must not let a service set.
    #[error("{0:?} cannot be taken from the service's answer: it frames the request (hop-by-hop, length, host); name another header")]
    ForbiddenHeader(String),
    /// An attribute name is empty.
    #[error("an attribute taken from the answer's header {0:?} has an empty name")]
    EmptyAttribute(String),
    /// The HTTP client could not be built.
    #[error("the HTTP client: {0}")]
    Client(String),
}

/// Builds an [`ExtAuthzLayer`]; see [`ExtAuthzLayer::builder`].
#[must_use = "call .build() to get the layer"]
pub struct ExtAuthzBuilder {
    pub(crate) endpoint: String,
    pub(crate) client: Option<reqwest::Client>,
    pub(crate) timeout: Duration,
    pub(crate) failure: FailureMode,
    pub(crate) encoding: CheckEncoding,
    pub(crate) forward_headers: Vec<HeaderName>,
    pub(crate) upstream_headers: Vec<HeaderName>,
    pub(crate) denial_headers: Vec<HeaderName>,
    pub(crate) principal_header: Option<HeaderName>,
    pub(crate) roles_header: Option<HeaderName>,
    pub(crate) attribute_headers: Vec<(HeaderName, String)>,
    pub(crate) pass_denial_body: bool,
    pub(crate) cache: Option<CacheSettings>,
    pub(crate) resolver: ClientIpResolver,
    pub(crate) renderer: Renderer,
}

impl std::fmt::Debug for ExtAuthzBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint's host only: its user info or query may hold a secret.
        let host = self
            .endpoint
            .parse::<reqwest::Url>()
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned));
        f.debug_struct("ExtAuthzBuilder")
            .field("host", &host)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("encoding", &self.encoding)
            .field("forward_headers", &self.forward_headers)
            .field("upstream_headers", &self.upstream_headers)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ExtAuthzBuilder {
    pub(crate) fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            client: None,
            timeout: Duration::from_millis(500),
            failure: FailureMode::Closed,
            encoding: CheckEncoding::Json,
            forward_headers: Vec::new(),
            upstream_headers: Vec::new(),
            denial_headers: vec![header::WWW_AUTHENTICATE, header::LOCATION],
            principal_header: None,
            roles_header: None,
            attribute_headers: Vec::new(),
            pass_denial_body: false,
            cache: None,
            resolver: ClientIpResolver::new(),
            renderer: Renderer::default(),
        }
    }

    /// The whole budget of one check: connecting, sending and reading the answer (500 ms
    /// by default). Past it, the [`FailureMode`] decides.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens when the service cannot answer ([`FailureMode::Closed`] by
    /// default).
    pub fn on_failure(mut self, failure: FailureMode) -> Self {
        self.failure = failure;
        self
    }

    /// JSON (the default) or headers.
    pub fn encoding(mut self, encoding: CheckEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Request headers the service is sent (none by default: credentials and cookies
    /// go to the service only when named here).
    pub fn forward_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.forward_headers.extend(names);
        self
    }

    /// Headers of an allowing answer that are copied into the request for the service
    /// behind the layer (`x-user-id`, `x-tenant`). The client's own copies of these
    /// headers are always removed first, allowed or not, so a client cannot pose as the
    /// service.
    pub fn upstream_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.upstream_headers.extend(names);
        self
    }

    /// Headers of a refusing answer that are copied to the client (`WWW-Authenticate`
    /// and `Location` by default: a challenge, or a login redirect).
    pub fn denial_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.denial_headers = names.into_iter().collect();
        self
    }

    /// The allowing answer's header that names the caller: the request gets an
    /// `AuthMethod::External` principal with that id (with the roles and attributes
    /// below). Without it, the roles and attributes are added to the principals the
    /// earlier layers established.
    pub fn principal_header(mut self, name: HeaderName) -> Self {
        self.principal_header = Some(name);
        self
    }

    /// The allowing answer's header whose comma- or space-separated roles are granted.
    pub fn roles_header(mut self, name: HeaderName) -> Self {
        self.roles_header = Some(name);
        self
    }

    /// The allowing answer's header whose value becomes attribute `attribute`.
    pub fn attribute_header(mut self, name: HeaderName, attribute: impl Into<String>) -> Self {
        self.attribute_headers.push((name, attribute.into()));
        self
    }

    /// Passes a refusing answer's body (and its `Content-Type`) to the client, up to
    /// 64 KiB, instead of the layer's problem+json. Off by default: a service's body
    /// may say more than the client should learn.
    pub fn pass_denial_body(mut self, pass: bool) -> Self {
        self.pass_denial_body = pass;
        self
    }

    /// Keeps answers for `ttl`, at most `max_entries` of them, keyed by `key` (empty:
    /// by everything the service is sent, which is always correct; a narrower key,
    /// such as `[Header(authorization), Method, Path]`, shares answers between requests
    /// that differ elsewhere). Keys are SHA-256 digests: no request can collide with
    /// another's answer. Answers with `Cache-Control: no-store` are not kept; failures
    /// never are.
    pub fn cache(
        mut self,
        ttl: Duration,
        max_entries: usize,
        key: impl IntoIterator<Item = CacheKeyPart>,
    ) -> Self {
        self.cache = Some(CacheSettings {
            ttl,
            max_entries,
            key: key.into_iter().collect(),
        });
        self
    }

    /// The HTTP client (a pooled reqwest client of the layer's own by default): for the
    /// host's proxy, CA or client certificate. The layer's timeout still applies.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How the client address is resolved. Use the same resolver as the other layers.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.renderer = Renderer::new(renderer);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<ExtAuthzLayer, ExtAuthzConfigError> {
        let endpoint: reqwest::Url = self
            .endpoint
            .parse()
            .ok()
            .filter(|url: &reqwest::Url| matches!(url.scheme(), "http" | "https"))
            .filter(|url| url.host().is_some())
            .ok_or(ExtAuthzConfigError::InvalidEndpoint)?;
        if self.timeout.is_zero() {
            return Err(ExtAuthzConfigError::Zero("timeout"));
        }
        if let Some(cache) = &self.cache {
            if cache.ttl.is_zero() {
                return Err(ExtAuthzConfigError::Zero("the cache's ttl"));
            }
            if cache.max_entries == 0 {
                return Err(ExtAuthzConfigError::Zero("the cache's max_entries"));
            }
        }
        for name in &self.upstream_headers {
            if framing(name) {
                return Err(ExtAuthzConfigError::ForbiddenHeader(name.to_string()));
            }
        }
        for (name, attribute) in &self.attribute_headers {
            if attribute.is_empty() {
                return Err(ExtAuthzConfigError::EmptyAttribute(name.to_string()));
            }
        }
        let client = match self.client.clone() {
            Some(client) => client,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ExtAuthzConfigError::Client(e.to_string()))?,
        };
        Ok(ExtAuthzLayer::from_shared(Shared::new(
            self, endpoint, client,
        )))
    }
}

/// Headers that frame the request or name its target: a decision service must not set
/// them on the request the application gets.
fn framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
    )
}
