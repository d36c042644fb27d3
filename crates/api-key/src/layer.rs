//! The layer and its service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use portcullis_core::{
    AuditNote, AuditRecord, Authentication, ClientIpError, ClientIpResolver, Clock, Decision,
    DecisionFuture, RejectOrBody, Rejection, RenderRejection, Renderer,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::{ResponseFuture, Waiting};
use crate::key::{KeyDigest, KeyPrefix, MalformedKey};
use crate::record::{KeyState, StoredKey};
use crate::source::{self, Found, KeySource};
use crate::store::{KeyStore, Lookup, LookupResult};
use crate::LAYER_NAME;

/// What the layer does with a request that carries no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it with 401 `missing_api_key` (the default).
    #[default]
    Required,
    /// Pass it on unauthenticated, for routes that accept other credentials or none. A
    /// key that is present but wrong is still refused: never a silent downgrade.
    Optional,
}

/// Why the layer refused a request. [`code`](Self::code) is what the client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiKeyRefusal {
    /// No key, in [`Mode::Required`].
    Missing,
    /// Not a key of this deployment's form.
    Malformed(MalformedKey),
    /// No record with the key's id.
    Unknown,
    /// A record with the id, but another secret.
    WrongSecret,
    /// Before the key's `not_before`.
    NotYetValid,
    /// At or after the key's expiry.
    Expired,
    /// The key is revoked.
    Revoked,
    /// The client address is outside the key's networks.
    NetworkNotAllowed,
    /// Two different keys in one request.
    Conflict,
    /// The store failed to answer.
    StoreUnavailable,
    /// The key is limited to networks and the client address could not be resolved.
    ClientIp(ClientIpError),
    /// Another layer already put an API-key principal on the request.
    DuplicatePrincipal,
}

impl ApiKeyRefusal {
    /// The stable code in the response.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Malformed(_) => "malformed_api_key",
            Self::Unknown | Self::WrongSecret | Self::NotYetValid => "invalid_api_key",
            Self::Expired => "expired_api_key",
            Self::Revoked => "revoked_api_key",
            Self::NetworkNotAllowed => "ip_not_allowed_for_key",
            Self::Conflict => "conflicting_api_keys",
            Self::StoreUnavailable => "key_store_unavailable",
            Self::ClientIp(error) => error.code(),
            Self::DuplicatePrincipal => "duplicate_authentication",
        }
    }

    /// The precise reason, for logs and audit notes only: it tells apart what the
    /// client is deliberately not told (an unknown id from a wrong secret).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no key in the request",
            Self::Malformed(reason) => reason.as_str(),
            Self::Unknown => "no such key",
            Self::WrongSecret => "wrong secret",
            Self::NotYetValid => "not yet valid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::NetworkNotAllowed => "client address outside the key's networks",
            Self::Conflict => "two different keys",
            Self::StoreUnavailable => "key store failed",
            Self::ClientIp(_) => "client address unresolved",
            Self::DuplicatePrincipal => "an API-key principal was already present",
        }
    }

    fn rejection(self, challenge: &str) -> Rejection {
        let unauthorized = |detail: &'static str| {
            let rejection = Rejection::unauthorized(self.code(), detail);
            match HeaderValue::try_from(format!("{challenge}, error=\"{}\"", self.code())) {
                Ok(value) => rejection.with_www_authenticate(value),
                Err(_) => rejection,
            }
        };
        match self {
            Self::Missing => unauthorized("this request needs an API key"),
            Self::Malformed(_) => unauthorized("the API key is malformed"),
            Self::Unknown | Self::WrongSecret | Self::NotYetValid => {
                unauthorized("the API key is not valid")
            }
            Self::Expired => unauthorized("the API key has expired"),
            Self::Revoked => unauthorized("the API key has been revoked"),
            Self::NetworkNotAllowed => Rejection::forbidden(
                self.code(),
                "this API key may not be used from this address",
            ),
            Self::Conflict => Rejection::bad_request(
                self.code(),
                "the request carries more than one API key; send one",
            ),
            Self::StoreUnavailable => Rejection::unavailable(
                self.code(),
                "API keys cannot be checked right now; try again later",
            ),
            Self::ClientIp(error) => error.to_rejection(),
            Self::DuplicatePrincipal => Rejection::internal(
                self.code(),
                "the server is misconfigured: two API-key layers ran",
            ),
        }
    }
}

impl fmt::Display for ApiKeyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[derive(Clone)]
pub(crate) struct Config {
    store: Arc<dyn KeyStore>,
    prefix: KeyPrefix,
    sources: Box<[KeySource]>,
    mode: Mode,
    keep_credentials: bool,
    resolver: ClientIpResolver,
    clock: Clock,
    realm: String,
    renderer: Renderer,
    /// `<scheme> realm="<realm>"`, built once.
    challenge: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("prefix", &self.prefix)
            .field("sources", &self.sources)
            .field("mode", &self.mode)
            .field("keep_credentials", &self.keep_credentials)
            .field("resolver", &self.resolver)
            .field("clock", &self.clock)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Config {
    fn rebuild_challenge(&mut self) {
        let scheme = self
            .sources
            .iter()
            .find_map(KeySource::scheme)
            .unwrap_or("ApiKey");
        let mut challenge = format!("{scheme} realm=\"{}\"", self.realm);
        if let Some(header) = self.sources.iter().find_map(KeySource::header_name) {
            challenge.push_str(&format!(", header=\"{header}\""));
        }
        self.challenge = challenge;
    }
}

/// Authenticates requests by API key. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct ApiKeyLayer {
    config: Config,
}

impl ApiKeyLayer {
    /// A layer checking keys against `store`, read from `X-API-KEY`, required.
    pub fn new(store: impl KeyStore) -> Self {
        let mut config = Config {
            store: Arc::new(store),
            prefix: KeyPrefix::default(),
            sources: Box::new([KeySource::default()]),
            mode: Mode::Required,
            keep_credentials: false,
            resolver: ClientIpResolver::new(),
            clock: Clock::system(),
            realm: "api".to_owned(),
            renderer: Renderer::default(),
            challenge: String::new(),
        };
        config.rebuild_challenge();
        Self { config }
    }

    /// Where keys are read from, replacing the default `X-API-KEY`.
    ///
    /// ```
    /// use http::header::HeaderName;
    /// use portcullis_api_key::{ApiKeyLayer, KeySource, MemoryKeyStore};
    ///
    /// let layer = ApiKeyLayer::new(MemoryKeyStore::new()).sources([
    ///     KeySource::split_header(HeaderName::from_static("x-auth-token")),
    ///     KeySource::authorization("ApiKey")?,
    /// ]);
    /// # Ok::<(), portcullis_api_key::InvalidScheme>(())
    /// ```
    pub fn sources(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        self.config.sources = sources.into_iter().collect();
        self.config.rebuild_challenge();
        self
    }

    /// This deployment's key prefix (`pck` by default). Keys with another prefix are
    /// refused as malformed.
    pub fn prefix(mut self, prefix: KeyPrefix) -> Self {
        self.config.prefix = prefix;
        self
    }

    /// [`Mode::Required`] (the default) or [`Mode::Optional`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Leaves the key's header (or query parameter) on the request for the inner
    /// service. By default it is removed, so handlers and their logs never see it.
    pub fn keep_credentials(mut self, keep: bool) -> Self {
        self.config.keep_credentials = keep;
        self
    }

    /// How the client address is resolved for keys limited to networks. Use the same
    /// resolver as the other layers.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.config.resolver = resolver;
        self
    }

    /// The clock that expiry and `not_before` are checked against.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config.clock = clock;
        self
    }

    /// The realm in `WWW-Authenticate` (`api` by default). Quotes, backslashes and
    /// control characters are dropped from it.
    pub fn realm(mut self, realm: &str) -> Self {
        self.config.realm = realm
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        self.config.rebuild_challenge();
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.config.renderer = Renderer::new(renderer);
        self
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKey {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service built by [`ApiKeyLayer`].
#[derive(Clone, Debug)]
pub struct ApiKey<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKey<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<RejectOrBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        let found = source::find(&config.sources, &config.prefix, &request);
        let presented = match found {
            Found::None if config.mode == Mode::Optional => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new(LAYER_NAME, Decision::Skip).detail("no API key")
                });
                Authentication::mark_checked(request.extensions_mut());
                return ResponseFuture::decided(DecisionFuture::inner(self.inner.call(request)));
            }
            Found::None => {
                return ResponseFuture::decided(refuse(
                    config,
                    &request,
                    ApiKeyRefusal::Missing,
                    None,
                ))
            }
            Found::Conflict => {
                return ResponseFuture::decided(refuse(
                    config,
                    &request,
                    ApiKeyRefusal::Conflict,
                    None,
                ))
            }
            found => match found.parse(&config.prefix) {
                Ok(presented) => presented,
                Err(reason) => {
                    return ResponseFuture::decided(refuse(
                        config,
                        &request,
                        ApiKeyRefusal::Malformed(reason),
                        None,
                    ))
                }
            },
        };
        let digest = *presented.digest();
        let verdict = match config.store.find(presented.id()) {
            Lookup::Ready(result) => judge(config, result, &digest, presented.id()),
            Lookup::Pending(lookup) => {
                let id = presented.id().into();
                // The clone goes back in place; the instance that was polled ready
                // serves this request once the lookup finishes.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture::looking(
                    lookup,
                    Waiting {
                        inner,
                        request,
                        config: self.config.clone(),
                        id,
                        digest,
                    },
                );
            }
        };
        ResponseFuture::decided(decide(config, &mut self.inner, request, verdict))
    }
}

/// The store's answer, judged.
pub(crate) enum Verdict {
    Admit(Arc<StoredKey>),
    Refuse(ApiKeyRefusal, Option<Box<str>>),
}

pub(crate) fn judge(
    config: &Config,
    result: LookupResult,
    digest: &KeyDigest,
    id: &str,
) -> Verdict {
    let key = match result {
        Ok(Some(key)) => key,
        Ok(None) => return Verdict::Refuse(ApiKeyRefusal::Unknown, Some(id.into())),
        Err(error) => {
            portcullis_core::log_throttled!(
                error,
                key_id = id,
                %error,
                "api-key: the key store failed; requests with API keys get 503 until it answers: check the store"
            );
            return Verdict::Refuse(ApiKeyRefusal::StoreUnavailable, Some(id.into()));
        }
    };
    match key.check(digest, || config.clock.now()) {
        Ok(()) => Verdict::Admit(key),
        Err(state) => {
            let refusal = match state {
                KeyState::WrongSecret => ApiKeyRefusal::WrongSecret,
                KeyState::Revoked => ApiKeyRefusal::Revoked,
                KeyState::NotYetValid => ApiKeyRefusal::NotYetValid,
                KeyState::Expired => ApiKeyRefusal::Expired,
            };
            Verdict::Refuse(refusal, Some(id.into()))
        }
    }
}

pub(crate) fn decide<S, ReqBody, ResBody>(
    config: &Config,
    inner: &mut S,
    mut request: Request<ReqBody>,
    verdict: Verdict,
) -> DecisionFuture<S::Future, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let key = match verdict {
        Verdict::Admit(key) => key,
        Verdict::Refuse(refusal, id) => return refuse(config, &request, refusal, id.as_deref()),
    };
    let principal = key.principal();
    let id = key.record().id();
    if let Some(networks) = principal.allowed_networks() {
        match config.resolver.resolve_request(&mut request) {
            Ok(client) if networks.contains(client.ip()) => {}
            Ok(_) => return refuse(config, &request, ApiKeyRefusal::NetworkNotAllowed, Some(id)),
            Err(error) => {
                return refuse(config, &request, ApiKeyRefusal::ClientIp(error), Some(id))
            }
        }
    }
    if Authentication::insert_into(request.extensions_mut(), principal.clone()).is_err() {
        tracing::error!(
            "api-key: the request already had an API-key principal; is the layer applied twice?"
        );
        return refuse(
            config,
            &request,
            ApiKeyRefusal::DuplicatePrincipal,
            Some(id),
        );
    }
    if !config.keep_credentials {
        source::strip(&config.sources, &config.prefix, &mut request);
    }
    portcullis_core::count_allowed(LAYER_NAME);
    AuditRecord::note(request.extensions(), || {
        // The principal carries the key's id as its credential id.
        AuditNote::allow(LAYER_NAME).principal_of(principal)
    });
    DecisionFuture::inner(inner.call(request))
}

fn refuse<ReqBody, ResBody, F>(
    config: &Config,
    request: &Request<ReqBody>,
    refusal: ApiKeyRefusal,
    key_id: Option<&str>,
) -> DecisionFuture<F, ResBody> {
    tracing::debug!(
        key_id = key_id.unwrap_or("-"),
        code = refusal.code(),
        reason = refusal.reason(),
        "api-key refused a request"
    );
    AuditRecord::note(request.extensions(), || {
        let note = AuditNote::deny(LAYER_NAME, refusal.code()).detail(refusal.reason());
        match key_id {
            Some(id) => note.credential_id(id),
            None => note,
        }
    });
    let rejection = refusal.rejection(&config.challenge);
    DecisionFuture::rejected(config.renderer.respond(LAYER_NAME, &rejection, request))
}
