//! The layer, its builder and its service.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::header::{HeaderName, AUTHORIZATION};
use http::{Request, Response};
use portcullis_core::{
    scheme_line, AuditNote, AuditRecord, Authentication, ClientCertThumbprint, Clock, Decision,
    DecisionFuture, Principal, RejectOrBody, RenderRejection, Renderer, SchemeLine,
};
use serde::de::DeserializeOwned;
use tower_layer::Layer;
use tower_service::Service;

use crate::claims::TypedClaims;
use crate::credential::CredentialCache;
use crate::future::{Pending, ResponseFuture};
use crate::issuer::Issuer;
use crate::refusal::JwtRefusal;
use crate::revocation::RevocationStatus;
use crate::revocation::Revocations;
use crate::subject::{Answer, Subject, SubjectCache, SubjectCheck};
use crate::token::Malformed;
use crate::validator::{Outcome, TokenCache, Validator, Verified};
use crate::LAYER_NAME;

/// What the layer does with a request that carries no token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it with 401 `missing_token` (the default).
    #[default]
    Required,
    /// Pass it on unauthenticated. Only a request with no line of this layer's scheme
    /// passes so: a token that is present but invalid, or a bearer line written loosely,
    /// is refused exactly as in `Required`.
    Optional,
}

/// A configuration the layer refuses to start with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No issuer was configured.
    #[error("no issuer: add .issuer(Issuer::new(\"https://…\")…)")]
    NoIssuer,
    /// Two issuers with the same name.
    #[error("the issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// An issuer's configuration is unusable: its name, and why.
    #[error("issuer {0:?}: {1}")]
    Issuer(String, String),
    /// The authorization scheme is not a token68-style word.
    #[error("{0:?} is not an authorization scheme: use letters, digits and -._~+")]
    InvalidScheme(String),
    /// `max_token_size` is zero: every token would be refused as too large.
    #[error("max_token_size is zero, so every token would be refused; leave the default (8 KiB) or give a size in bytes")]
    ZeroMaxTokenSize,
}

pub(crate) struct Config {
    pub(crate) validator: Validator,
    mode: Mode,
    header: HeaderName,
    /// Lower-case scheme, or empty when the header holds the bare token.
    scheme: Box<str>,
    keep_credentials: bool,
    pub(crate) clock: Clock,
    realm: String,
    renderer: Renderer,
    required_scopes: Vec<String>,
    required_scopes_text: String,
    pub(crate) subjects: Option<SubjectCache>,
    pub(crate) credentials: CredentialCache,
    revocations: Option<Revocations>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("validator", &self.validator)
            .field("mode", &self.mode)
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field("keep_credentials", &self.keep_credentials)
            .field("clock", &self.clock)
            .field("realm", &self.realm)
            .field("required_scopes", &self.required_scopes)
            .field("subjects", &self.subjects)
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub(crate) fn now_ms(&self) -> u64 {
        let since = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn refuse<ReqBody, ResBody, F>(
        &self,
        request: &Request<ReqBody>,
        refusal: JwtRefusal,
        principal: Option<&str>,
    ) -> DecisionFuture<F, ResBody> {
        tracing::debug!(
            code = refusal.code(),
            reason = refusal.reason(),
            subject = principal.unwrap_or("-"),
            "jwt refused a request"
        );
        AuditRecord::note(request.extensions(), || {
            let note = AuditNote::deny(LAYER_NAME, refusal.code()).detail(refusal.reason());
            match principal {
                Some(id) => note.principal_id(id),
                None => note,
            }
        });
        let rejection = refusal.to_rejection(&self.realm, &self.required_scopes_text);
        DecisionFuture::rejected(self.renderer.respond(LAYER_NAME, &rejection, request))
    }

    /// The checks made on every request, cached token or not: revocation, certificate
    /// binding, required scopes.
    pub(crate) fn per_request(
        &self,
        verified: &Verified,
        thumbprint: Option<ClientCertThumbprint>,
    ) -> Result<(), JwtRefusal> {
        if let (Some(revocations), Some(jti)) = (&self.revocations, verified.claims.token_id()) {
            match revocations.check(jti) {
                RevocationStatus::NotRevoked => {}
                RevocationStatus::Revoked => return Err(JwtRefusal::Revoked),
                RevocationStatus::Unknown => return Err(JwtRefusal::RevocationUnavailable),
            }
        }
        if let Some(bound) = &verified.binding {
            match thumbprint {
                Some(thumbprint) if thumbprint.matches(bound) => {}
                Some(_) => return Err(JwtRefusal::CertificateMismatch),
                None => return Err(JwtRefusal::CertificateRequired),
            }
        }
        if !self
            .required_scopes
            .iter()
            .all(|scope| verified.principal.has_scope(scope))
        {
            return Err(JwtRefusal::InsufficientScope);
        }
        Ok(())
    }

    pub(crate) fn issuer_name(&self, verified: &Verified) -> Arc<str> {
        self.validator.issuers[verified.issuer].name.clone()
    }

    /// Applies the account check's answer: the principal to admit, or the refusal.
    pub(crate) fn apply(
        &self,
        verified: &Verified,
        answer: Answer,
    ) -> Result<Principal, JwtRefusal> {
        match answer {
            Answer::Active(None) => Ok(verified.principal.clone()),
            Answer::Active(Some(roles)) => Ok(with_roles(&verified.principal, &roles)),
            Answer::Blocked => Err(JwtRefusal::AccountDisabled),
            Answer::Unknown => Err(JwtRefusal::UnknownAccount),
        }
    }

    /// Puts the principal and claims on the request and calls the inner service.
    pub(crate) fn admit<S, ReqBody, ResBody>(
        &self,
        inner: &mut S,
        mut request: Request<ReqBody>,
        verified: &Verified,
        principal: Principal,
    ) -> DecisionFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let noted = principal.clone();
        if Authentication::insert_into(request.extensions_mut(), principal).is_err() {
            tracing::error!(
                "jwt: the request already had a JWT principal; is the layer applied twice?"
            );
            return self.refuse(&request, JwtRefusal::DuplicatePrincipal, Some(noted.id()));
        }
        request.extensions_mut().insert(verified.claims.clone());
        if let (Some(typed), Some(parsed)) = (&self.validator.typed, &verified.typed) {
            (typed.insert)(parsed, request.extensions_mut());
        }
        if !self.keep_credentials {
            let (header, scheme) = (&self.header, &*self.scheme);
            portcullis_core::remove_field_lines(request.headers_mut(), header, |value| {
                scheme.is_empty() || scheme_line(value.as_bytes(), scheme) != SchemeLine::Other
            });
        }
        portcullis_core::count_allowed(LAYER_NAME);
        AuditRecord::note(request.extensions(), || {
            AuditNote::allow(LAYER_NAME).principal_of(&noted)
        });
        DecisionFuture::inner(inner.call(request))
    }

    /// The token in the request: `Ok(None)` when there is none for this layer (no
    /// header, or only `Authorization` values of other schemes).
    ///
    /// Every field line is read. A line is this layer's when its first word is the
    /// scheme (case-insensitive); it must then be exactly the scheme, one space and a
    /// non-empty token (RFC 6750 2.1). Anything else that is this layer's — a tab, two
    /// spaces, trailing space, no token, a second line — is malformed, never "no token",
    /// so an attempt that fails is refused in both modes.
    pub(crate) fn token<'r, B>(
        &self,
        request: &'r Request<B>,
    ) -> Result<Option<&'r str>, Malformed> {
        let mut found = None;
        for value in request.headers().get_all(&self.header) {
            let bytes = value.as_bytes();
            let token = if self.scheme.is_empty() {
                bytes
            } else {
                match scheme_line(bytes, &self.scheme) {
                    SchemeLine::Other => continue,
                    SchemeLine::Exact(token) => token,
                    SchemeLine::Loose(_) => return Err(Malformed::Authorization),
                }
            };
            // Only the ends are checked here: a space or any other byte a compact JWS
            // cannot hold inside the token is refused by the decoder (or is not byte-for-
            // byte a cached token), so no request pays a scan of the whole token.
            let clean_ends = match (token.first(), token.last()) {
                (Some(first), Some(last)) => is_token68_char(*first) && is_token68_char(*last),
                _ => false,
            };
            if !clean_ends || found.is_some() {
                return Err(Malformed::Authorization);
            }
            // Visible ASCII only, so the bytes are UTF-8.
            let token = std::str::from_utf8(token).map_err(|_| Malformed::Authorization)?;
            found = Some(token);
        }
        Ok(found)
    }
}

/// A byte of `token68` (RFC 9110 11.2).
fn is_token68_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~+/=".contains(&byte)
}

fn with_roles(principal: &Principal, roles: &[String]) -> Principal {
    let mut builder = Principal::builder(principal.id(), principal.method())
        .roles(roles.iter().cloned())
        .scopes(principal.scopes().iter().cloned());
    if let Some(id) = principal.credential_id() {
        builder = builder.credential_id(id);
    }
    if let Some(tier) = principal.rate_limit_tier() {
        builder = builder.rate_limit_tier(tier);
    }
    for (name, value) in principal.attributes() {
        builder = builder.attribute(name, value);
    }
    builder.build()
}

/// Validates bearer JWTs. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct JwtLayer {
    config: Arc<Config>,
}

impl JwtLayer {
    /// Starts a layer's configuration.
    pub fn builder() -> JwtLayerBuilder {
        JwtLayerBuilder {
            issuers: Vec::new(),
            mode: Mode::Required,
            header: AUTHORIZATION,
            scheme: "bearer".into(),
            max_token_size: 8 * 1024,
            cache_capacity: 10_000,
            typed: None,
            subject_check: None,
            credential_ttl: crate::credential::DEFAULT_TTL,
            revocations: None,
            required_scopes: Vec::new(),
            clock: Clock::system(),
            realm: "api".into(),
            renderer: Renderer::default(),
            keep_credentials: false,
        }
    }

    /// A handle for operations at run time: reloading key files, clearing caches.
    pub fn handle(&self) -> JwtHandle {
        JwtHandle {
            config: self.config.clone(),
        }
    }
}

/// One issuer's keys, as [`JwtHandle::key_sets`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySetStatus {
    /// The issuer's name.
    pub issuer: String,
    /// Whether the keys come from a key server (JWKS URL or discovery), not files or
    /// code.
    pub fetched: bool,
    /// When the last fetch succeeded.
    pub last_fetch: Option<std::time::SystemTime>,
    /// Whether every refresh has failed for longer than the maximum key age.
    pub stale: bool,
}

/// Run-time operations on a built [`JwtLayer`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JwtHandle {
    config: Arc<Config>,
}

impl JwtHandle {
    /// Reads every issuer's JWKS file again. Cached tokens verified under the old keys
    /// are dropped. On error the keys in use stay, and the first error is returned.
    pub fn reload_key_files(&self) -> Result<(), crate::JwksError> {
        let mut first = Ok(());
        for issuer in &self.config.validator.issuers {
            if let Err(error) = issuer.ring.reload_file() {
                tracing::error!(issuer = %issuer.name, %error, "jwt: reloading the JWKS file failed");
                if first.is_ok() {
                    first = Err(error);
                }
            }
        }
        first
    }

    /// Forgets every verified token, so each is verified again on its next use.
    pub fn clear_token_cache(&self) {
        if let Some(cache) = &self.config.validator.cache {
            cache.clear();
        }
    }

    /// How many verified tokens are cached.
    pub fn cached_tokens(&self) -> usize {
        self.config
            .validator
            .cache
            .as_ref()
            .map_or(0, TokenCache::len)
    }

    /// Forgets every account-check answer, so each subject is checked on its next
    /// request (after blocking an account, for example).
    pub fn clear_account_cache(&self) {
        if let Some(subjects) = &self.config.subjects {
            subjects.clear();
        }
        self.config.credentials.clear();
    }

    /// How fresh each issuer's keys are, for a status page: whether its keys are
    /// fetched from a key server, when the last fetch succeeded, and whether they are
    /// past the maximum key age (tokens refused with `keys_unavailable`).
    pub fn key_sets(&self) -> Vec<KeySetStatus> {
        self.config
            .validator
            .issuers
            .iter()
            .map(|issuer| {
                #[cfg(feature = "remote")]
                if let Some(remote) = &issuer.ring.remote {
                    return KeySetStatus {
                        issuer: issuer.name.to_string(),
                        fetched: true,
                        last_fetch: remote.last_success(),
                        stale: remote.stale.load(std::sync::atomic::Ordering::Acquire),
                    };
                }
                KeySetStatus {
                    issuer: issuer.name.to_string(),
                    fetched: false,
                    last_fetch: None,
                    stale: false,
                }
            })
            .collect()
    }

    /// Waits until every issuer that fetches its keys has them, or `timeout` passes.
    /// Returns whether all have keys. For start-up, so the first requests are not
    /// refused while the key server is asked.
    pub async fn wait_for_keys(&self, timeout: Duration) -> bool {
        // `None`: a timeout too long to add to the clock is no deadline at all.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        for issuer in &self.config.validator.issuers {
            #[cfg(feature = "remote")]
            if let Some(remote) = &issuer.ring.remote {
                while !remote.is_loaded() {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let _ = issuer;
        }
        let _ = deadline;
        true
    }
}

/// Configures a [`JwtLayer`]; [`build`](Self::build) checks it.
#[must_use = "call .build() to get the layer"]
pub struct JwtLayerBuilder {
    issuers: Vec<Issuer>,
    mode: Mode,
    header: HeaderName,
    scheme: String,
    max_token_size: usize,
    cache_capacity: usize,
    typed: Option<TypedClaims>,
    subject_check: Option<(Arc<dyn SubjectCheck>, Duration)>,
    credential_ttl: Duration,
    revocations: Option<Revocations>,
    required_scopes: Vec<String>,
    clock: Clock,
    realm: String,
    renderer: Renderer,
    keep_credentials: bool,
}

impl fmt::Debug for JwtLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtLayerBuilder")
            .field("issuers", &self.issuers)
            .field("mode", &self.mode)
            .field("header", &self.header)
            .field("max_token_size", &self.max_token_size)
            .finish_non_exhaustive()
    }
}

impl JwtLayerBuilder {
    /// Trusts tokens of this issuer. Add several for several issuers.
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// [`Mode::Required`] (the default) or [`Mode::Optional`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Reads the token from `header` with `scheme` (`Authorization: Bearer` by default).
    /// An empty scheme reads the header's whole value as the token.
    pub fn header(mut self, header: HeaderName, scheme: &str) -> Self {
        self.header = header;
        self.scheme = scheme.to_owned();
        self
    }

    /// Refuses tokens longer than this many bytes before decoding them (8 KiB by
    /// default).
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.max_token_size = bytes;
        self
    }

    /// How many verified tokens are remembered (10,000 by default; 0 turns the cache
    /// off).
    pub fn token_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Deserializes every token's claims into `T` and puts [`Claims<T>`](crate::Claims)
    /// in the request's extensions. A token whose claims do not fit `T` is refused.
    pub fn claims<T: DeserializeOwned + Send + Sync + 'static>(mut self) -> Self {
        self.typed = Some(TypedClaims::of::<T>());
        self
    }

    /// Asks `check` on every request whether the token's subject may still act, and
    /// caches each answer for `ttl` (a zero `ttl` asks every time).
    pub fn subject_check(mut self, check: impl SubjectCheck, ttl: Duration) -> Self {
        self.subject_check = Some((Arc::new(check), ttl));
        self
    }

    /// How long an issuer's [credential check](crate::Issuer::credential_check) answer
    /// is kept (5 s by default; zero asks on every request): the longest a session goes
    /// on after its API key is revoked or its connector blocked.
    pub fn credential_cache(mut self, ttl: Duration) -> Self {
        self.credential_ttl = ttl;
        self
    }

    /// Refuses tokens whose `jti` is on this list.
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Requires this scope on every token (403 `insufficient_scope` otherwise). Per-route
    /// scopes belong in the role router.
    pub fn require_scope(mut self, scope: impl Into<String>) -> Self {
        self.required_scopes.push(scope.into());
        self
    }

    /// The clock `exp`, `nbf` and `iat` are checked against.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The realm in `WWW-Authenticate` (`api` by default). Quotes, backslashes and
    /// control characters are dropped.
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = realm
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.renderer = Renderer::new(renderer);
        self
    }

    /// Leaves the token's header on the request for the inner service. By default it is
    /// removed, so handlers and their logs never see the token.
    pub fn keep_credentials(mut self, keep: bool) -> Self {
        self.keep_credentials = keep;
        self
    }

    /// Checks the configuration and builds the layer. Issuers that fetch keys start
    /// their background refresh here, so call it inside a tokio runtime.
    pub fn build(self) -> Result<JwtLayer, ConfigError> {
        if self.issuers.is_empty() {
            return Err(ConfigError::NoIssuer);
        }
        if self.max_token_size == 0 {
            return Err(ConfigError::ZeroMaxTokenSize);
        }
        let scheme_ok = self
            .scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~+".contains(c));
        if !scheme_ok {
            return Err(ConfigError::InvalidScheme(self.scheme));
        }
        let generation = Arc::new(AtomicU64::new(0));
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for issuer in &self.issuers {
            if issuers
                .iter()
                .any(|i: &crate::issuer::CompiledIssuer| *i.name == *issuer.name)
            {
                return Err(ConfigError::DuplicateIssuer(issuer.name.clone()));
            }
            issuers.push(issuer.compile(&generation)?);
        }
        if self.issuers.len() > 1 {
            // Several issuers: qualify every principal id by its issuer, so equal
            // subjects of two issuers never become one principal.
            for (compiled, issuer) in issuers.iter_mut().zip(&self.issuers) {
                let alias = issuer.alias.as_deref().unwrap_or(&issuer.name);
                crate::issuer::check_alias(alias).map_err(|why| {
                    ConfigError::Issuer(issuer.name.clone(), format!("alias {alias:?}: {why}"))
                })?;
                compiled.alias = Some(alias.into());
            }
            for (index, issuer) in issuers.iter().enumerate() {
                if issuers[..index]
                    .iter()
                    .any(|other| other.alias == issuer.alias)
                {
                    return Err(ConfigError::Issuer(
                        issuer.name.to_string(),
                        format!(
                            "the alias {:?} is used by another issuer: aliases must be unique",
                            issuer.alias.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
        } else if let Some(alias) = self
            .issuers
            .first()
            .and_then(|issuer| issuer.alias.as_deref())
        {
            crate::issuer::check_alias(alias).map_err(|why| {
                ConfigError::Issuer(
                    self.issuers[0].name.clone(),
                    format!("alias {alias:?}: {why}"),
                )
            })?;
        }
        let validator = Validator {
            issuers,
            max_token_size: self.max_token_size,
            cache: (self.cache_capacity > 0).then(|| TokenCache::new(self.cache_capacity)),
            typed: self.typed,
            generation,
        };
        let required_scopes_text = self.required_scopes.join(" ");
        Ok(JwtLayer {
            config: Arc::new(Config {
                validator,
                mode: self.mode,
                header: self.header,
                scheme: self.scheme.to_ascii_lowercase().into(),
                keep_credentials: self.keep_credentials,
                clock: self.clock,
                realm: self.realm,
                renderer: self.renderer,
                required_scopes: self.required_scopes,
                required_scopes_text,
                subjects: self
                    .subject_check
                    .map(|(check, ttl)| SubjectCache::new(check, ttl, 100_000)),
                credentials: CredentialCache::new(self.credential_ttl),
                revocations: self.revocations,
            }),
        })
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = Jwt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Jwt {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service built by [`JwtLayer`].
#[derive(Clone, Debug)]
pub struct Jwt<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Jwt<S>
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
        let token = match config.token(&request) {
            Ok(Some(token)) => token,
            Ok(None) if config.mode == Mode::Optional => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new(LAYER_NAME, Decision::Skip).detail("no bearer token")
                });
                Authentication::mark_checked(request.extensions_mut());
                return ResponseFuture::decided(DecisionFuture::inner(self.inner.call(request)));
            }
            Ok(None) => {
                return ResponseFuture::decided(config.refuse(&request, JwtRefusal::Missing, None))
            }
            Err(malformed) => {
                return ResponseFuture::decided(config.refuse(
                    &request,
                    JwtRefusal::Malformed(malformed),
                    None,
                ))
            }
        };
        let verified = match config.validator.validate(token, config.now_ms(), true) {
            Outcome::Valid(verified) => verified,
            Outcome::Refused(refusal) => {
                return ResponseFuture::decided(config.refuse(&request, refusal, None))
            }
            Outcome::NeedKeys { wait, timeout } => {
                // Cold path: whether the token is bound is not known yet.
                let work = Pending::after_refresh(
                    self.config.clone(),
                    token.to_owned(),
                    request_thumbprint(request.extensions()),
                    wait,
                    timeout,
                );
                return pending(&mut self.inner, &self.config, request, work);
            }
        };
        let thumbprint = match verified.binding {
            Some(_) => request_thumbprint(request.extensions()),
            None => None,
        };
        if let Err(refusal) = config.per_request(&verified, thumbprint) {
            let id = verified.principal.id();
            return ResponseFuture::decided(config.refuse(&request, refusal, Some(id)));
        }
        let principal = match &config.subjects {
            None => verified.principal.clone(),
            Some(subjects) => {
                let cached = subjects.cached(
                    &config.validator.issuers[verified.issuer].name,
                    verified.principal.id(),
                    &config.clock,
                );
                match cached {
                    Some(answer) => match config.apply(&verified, answer) {
                        Ok(principal) => principal,
                        Err(refusal) => {
                            let id = verified.principal.id();
                            return ResponseFuture::decided(config.refuse(
                                &request,
                                refusal,
                                Some(id),
                            ));
                        }
                    },
                    None => {
                        let subject = Subject {
                            issuer: config.issuer_name(&verified),
                            id: verified.claims.0.subject.clone(),
                        };
                        let work = Pending::account_check(self.config.clone(), verified, subject);
                        return pending(&mut self.inner, &self.config, request, work);
                    }
                }
            }
        };
        if let Some(credential) = &verified.credential {
            match config
                .credentials
                .cached(verified.issuer, credential, &config.clock)
            {
                Some(status) => {
                    if let Err(refusal) = crate::credential::verdict(status) {
                        let id = verified.principal.id();
                        return ResponseFuture::decided(config.refuse(&request, refusal, Some(id)));
                    }
                }
                None => {
                    let work = Pending::credential_check(self.config.clone(), verified, principal);
                    return pending(&mut self.inner, &self.config, request, work);
                }
            }
        }
        ResponseFuture::decided(config.admit(&mut self.inner, request, &verified, principal))
    }
}

/// The client certificate the request came with: the thumbprint an mTLS identity layer
/// put in the extensions, or else the SHA-256 of the leaf certificate the connection's
/// TLS stack verified ([`portcullis_core::connection_leaf`]). So a certificate-bound
/// token works whether the mTLS layer runs before this one, after it, or not at all.
/// Only called for bound tokens (and on cold paths): unbound ones never pay the digest.
pub(crate) fn request_thumbprint(extensions: &http::Extensions) -> Option<ClientCertThumbprint> {
    if let Some(thumbprint) = extensions.get::<ClientCertThumbprint>() {
        return Some(*thumbprint);
    }
    let leaf = portcullis_core::connection_leaf(extensions)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf);
    let bytes: [u8; 32] = digest.as_ref().try_into().ok()?;
    Some(ClientCertThumbprint::from_bytes(bytes))
}

fn pending<S: Clone, ReqBody, F, ResBody>(
    service: &mut S,
    config: &Arc<Config>,
    request: Request<ReqBody>,
    work: Pending,
) -> ResponseFuture<F, ResBody, S, ReqBody> {
    // The clone goes back in place; the instance polled ready serves this request.
    let clone = service.clone();
    let inner = std::mem::replace(service, clone);
    ResponseFuture::pending(work, inner, request, config.clone())
}
