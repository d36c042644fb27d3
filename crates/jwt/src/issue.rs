//! Issuing tokens to principals other layers authenticated, and extending them before
//! they expire.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use portcullis_core::{
    AuditNote, AuditRecord, AuthMethod, Authentication, ClientCertThumbprint, Clock, Credential,
    CredentialCheck, CredentialStatus, Principal, RejectOrBody, Rejection, RenderRejection,
    Renderer,
};
use serde::Serialize;
use tower_service::Service;

use crate::claims::JwtClaims;
use crate::issuer::Issuer;
use crate::key::{algorithm_name, KeyError, SigningKey};
use crate::layer::ConfigError;
use crate::refusal::JwtRefusal;
use crate::revocation::Revocations;
use crate::subject::{Subject, SubjectCheck, SubjectStatus};
use crate::validator::{Outcome, Validator};
/// The issue and extend routes' name in audit notes and refusals: they are not the
/// `jwt` layer authenticating a caller.
const ISSUER_NOTE: &str = "token-issuer";

/// The `typ` of issued tokens: RFC 9068 access tokens, so an ID token or any other JWT
/// signed with the same key is never taken for one.
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Whether issued tokens are bound to the client certificate (RFC 8705 `cnf.x5t#S256`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// Never bound (the default).
    #[default]
    Never,
    /// Bound when the request came with a verified client certificate.
    WhenPresent,
    /// Only issued on a connection with a verified client certificate.
    Required,
}

/// A signed token. `Debug` never shows it.
#[derive(Clone)]
pub struct IssuedToken {
    token: String,
    expires_at: i64,
    token_id: String,
}

impl IssuedToken {
    /// The compact JWS, to hand to the client.
    pub fn expose(&self) -> &str {
        &self.token
    }

    /// `exp`, in seconds since the epoch.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The token's `jti`, for revocation.
    pub fn token_id(&self) -> &str {
        &self.token_id
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a token was not issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The request has no principal of a method the issuer accepts.
    #[error("the request has no principal the issuer accepts")]
    NotAuthenticated,
    /// [`Binding::Required`] and the connection has no verified client certificate.
    #[error("no verified client certificate to bind the token to")]
    NoClientCertificate,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl IssueError {
    /// The stable code in the response.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAuthenticated => "authentication_required",
            Self::NoClientCertificate => "missing_client_cert",
            Self::Signing(_) => "token_signing_failed",
        }
    }

    fn rejection(&self) -> Rejection {
        match self {
            Self::NotAuthenticated => Rejection::unauthorized(
                self.code(),
                "a token is issued only to a client authenticated another way (a client certificate or an API key)",
            ),
            Self::NoClientCertificate => Rejection::unauthorized(
                self.code(),
                "a token is issued only on a connection with a client certificate",
            ),
            Self::Signing(_) => Rejection::internal(self.code(), "the token could not be signed"),
        }
    }
}

impl From<KeyError> for IssueError {
    fn from(error: KeyError) -> Self {
        IssueError::Signing(error.to_string())
    }
}

/// Signs access tokens for principals authenticated by other layers, and extends them.
///
/// Tokens carry `iss`, `sub` (the principal's id), `aud`, `iat`, `exp` (10 hours by
/// default), a random `jti`, the principal's `roles` and `scope`, `auth_time` (when the
/// client first authenticated, kept across extensions) and `auth_method`, with header
/// `typ: at+jwt` and the key's `kid`. Give [`TokenIssuer::validating_issuer`] to the
/// [`JwtLayer`](crate::JwtLayer) so it accepts them. Cheap to clone.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

#[derive(Clone)]
struct IssuerInner {
    key: SigningKey,
    issuer: String,
    audience: String,
    /// The header's `typ` (`at+jwt` unless made with [`TokenIssuer::with_token_type`]).
    token_type: String,
    lifetime: Duration,
    max_session: Option<Duration>,
    binding: Binding,
    methods: Vec<AuthMethod>,
    clock: Clock,
    check: Option<Arc<dyn SubjectCheck>>,
    credentials: Option<Arc<dyn CredentialCheck>>,
    revocations: Option<Revocations>,
    renderer: Renderer,
    validator: Validator,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("key", &self.inner.key)
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("lifetime", &self.inner.lifetime)
            .field("binding", &self.inner.binding)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// How long a token lasts unless [`lifetime`](Self::lifetime) says otherwise: 10 hours.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 3600);

    /// An issuer signing with `key`, naming itself `issuer` and the tokens' audience
    /// `audience`. Tokens last 10 hours; principals from client certificates and API
    /// keys are accepted.
    pub fn new(
        key: SigningKey,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        Self::with_token_type(key, issuer, audience, ACCESS_TOKEN_TYPE)
    }

    /// Like [`new`](Self::new), for tokens of another kind than access tokens: their
    /// header's `typ` is `token_type` (for example `identity+jwt` for the identity
    /// assertions a gateway sends its upstream), so that neither kind is accepted
    /// where the other is expected.
    pub fn with_token_type(
        key: SigningKey,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        token_type: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let issuer = issuer.into();
        let audience = audience.into();
        let token_type = token_type.into();
        let own = Issuer::new(issuer.clone())
            .audience(audience.clone())
            .key(key.verifying_key())
            .leeway(Duration::ZERO)
            .token_type(token_type.clone())
            .compile(&Arc::new(AtomicU64::new(0)))?;
        let validator = Validator {
            issuers: vec![own],
            max_token_size: 8 * 1024,
            cache: None,
            typed: None,
            generation: Arc::new(AtomicU64::new(0)),
        };
        Ok(Self {
            inner: Arc::new(IssuerInner {
                key,
                issuer,
                audience,
                token_type,
                lifetime: Self::DEFAULT_LIFETIME,
                max_session: None,
                binding: Binding::Never,
                methods: vec![AuthMethod::Certificate, AuthMethod::ApiKey],
                clock: Clock::system(),
                check: None,
                credentials: None,
                revocations: None,
                renderer: Renderer::default(),
                validator,
            }),
        })
    }

    /// Every builder call takes effect: on an issuer whose settings are shared (a clone
    /// of another issuer), the settings are copied first, and the other keeps its own.
    fn with(mut self, change: impl FnOnce(&mut IssuerInner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// How long a token lasts (10 hours by default). `exp` is written in whole seconds,
    /// so a lifetime is rounded up to the next second, and is at least one second.
    pub fn lifetime(self, lifetime: Duration) -> Self {
        self.with(|inner| inner.lifetime = lifetime)
    }

    /// The longest a client can keep extending: past `auth_time` plus this, extension is
    /// refused and the client must authenticate again. Unlimited by default; shorter
    /// than the lifetime (zero included), no token can be extended.
    pub fn max_session(self, max: Duration) -> Self {
        self.with(|inner| inner.max_session = Some(max))
    }

    /// Whether tokens are bound to the client certificate.
    pub fn binding(self, binding: Binding) -> Self {
        self.with(|inner| inner.binding = binding)
    }

    /// Which authentication methods may obtain a token (certificate and API key by
    /// default; a JWT principal renews with [`extend_service`](Self::extend_service)).
    pub fn accept_methods(self, methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|inner| inner.methods = methods)
    }

    /// The clock `iat` and `exp` come from.
    pub fn clock(self, clock: Clock) -> Self {
        self.with(|inner| inner.clock = clock)
    }

    /// The account check re-run, uncached, on every extension.
    pub fn subject_check(self, check: impl SubjectCheck) -> Self {
        let check: Arc<dyn SubjectCheck> = Arc::new(check);
        self.with(|inner| inner.check = Some(check))
    }

    /// Sessions end with the credential they were opened with: a token records the id
    /// of the API key or client certificate it was issued to (claim `cred`), and is
    /// extended only while `check` says that credential is good (the key not revoked,
    /// expired or removed, the connector not blocked). [`validating_issuer`](Self::validating_issuer)
    /// carries the same check to the [`JwtLayer`](crate::JwtLayer), which asks it on
    /// every request (cached briefly), refusing with `credential_revoked`.
    ///
    /// The API-key stores (`portcullis_api_key::ApiKeyCredentials`) and the connector
    /// registry (`portcullis_mtls_identity::ConnectorRegistry`) are checks; combine them
    /// with [`CredentialChecks`](portcullis_core::CredentialChecks). A check of your own:
    ///
    /// ```
    /// use portcullis_core::{AuthMethod, Credential, CredentialCheck, CredentialFuture, CredentialStatus};
    /// use portcullis_jwt::jsonwebtoken::Algorithm;
    /// use portcullis_jwt::{JwtLayer, SigningKey, TokenIssuer};
    ///
    /// struct NoneRevoked;
    /// impl CredentialCheck for NoneRevoked {
    ///     fn checks(&self, method: AuthMethod) -> bool {
    ///         method == AuthMethod::ApiKey
    ///     }
    ///     fn check(&self, _: &Credential) -> CredentialFuture {
    ///         Box::pin(async { Ok(CredentialStatus::Good) })
    ///     }
    /// }
    ///
    /// let issuer = TokenIssuer::new(SigningKey::generate(Algorithm::EdDSA)?, "https://gw", "api")?
    ///     .credential_check(NoneRevoked);
    /// let layer = JwtLayer::builder().issuer(issuer.validating_issuer()).build()?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn credential_check(self, check: impl CredentialCheck) -> Self {
        let check: Arc<dyn CredentialCheck> = Arc::new(check);
        self.with(|inner| inner.credentials = Some(check))
    }

    /// Revoked tokens cannot be extended, and an extended token's predecessor is revoked.
    pub fn revocations(self, revocations: Revocations) -> Self {
        self.with(|inner| inner.revocations = Some(revocations))
    }

    /// Replaces the rejection renderer of the issue and extend services.
    pub fn renderer(self, renderer: impl RenderRejection) -> Self {
        let renderer = Renderer::new(renderer);
        self.with(|inner| inner.renderer = renderer)
    }

    /// The [`Issuer`] a [`JwtLayer`](crate::JwtLayer) needs to accept these tokens:
    /// this issuer's name, audience and public key, its `typ` (`at+jwt`), and the
    /// [credential check](Self::credential_check) when one is set.
    pub fn validating_issuer(&self) -> Issuer {
        let issuer = Issuer::new(self.inner.issuer.clone())
            .audience(self.inner.audience.clone())
            .key(self.inner.key.verifying_key())
            .token_type(self.inner.token_type.clone());
        match &self.inner.credentials {
            Some(check) => issuer.credential_check(check.clone()),
            None => issuer,
        }
    }

    /// Signs a token for `principal`, bound to `certificate` as the binding policy says.
    pub fn issue(
        &self,
        principal: &Principal,
        certificate: Option<ClientCertThumbprint>,
    ) -> Result<IssuedToken, IssueError> {
        let now = now_secs(&self.inner.clock);
        let binding = match (self.inner.binding, certificate) {
            (Binding::Never, _) => None,
            (_, Some(thumbprint)) => Some(*thumbprint.as_bytes()),
            (Binding::WhenPresent, None) => None,
            (Binding::Required, None) => return Err(IssueError::NoClientCertificate),
        };
        self.sign(&Grant {
            subject: principal.id(),
            roles: principal.roles(),
            scopes: principal.scopes(),
            auth_time: now,
            auth_method: principal.method().as_str(),
            credential: principal.credential_id(),
            binding,
        })
    }

    fn sign(&self, grant: &Grant<'_>) -> Result<IssuedToken, IssueError> {
        let Grant {
            subject,
            roles,
            scopes,
            auth_time,
            auth_method,
            credential,
            binding,
        } = *grant;
        let inner = &*self.inner;
        let now = now_secs(&inner.clock);
        // Whole seconds, rounded up, at least one: a 1.5 s lifetime is not 1 s, and a
        // zero one would issue tokens that are already expired.
        let seconds = inner
            .lifetime
            .as_secs()
            .saturating_add(u64::from(inner.lifetime.subsec_nanos() > 0))
            .max(1);
        let lifetime = i64::try_from(seconds).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(lifetime);
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|_| IssueError::Signing("the system random source failed".into()))?;
        let token_id = hex::encode(id);
        let header = TokenHeader {
            alg: algorithm_name(inner.key.algorithm()),
            typ: &inner.token_type,
            kid: inner.key.kid(),
        };
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        let claims = TokenClaims {
            iss: &inner.issuer,
            sub: subject,
            aud: &inner.audience,
            iat: now,
            exp: expires_at,
            jti: &token_id,
            roles,
            scope: scope.as_deref(),
            auth_time,
            auth_method,
            cred: credential,
            cnf: binding.map(|digest| Confirmation {
                x5t_s256: URL_SAFE_NO_PAD.encode(digest),
            }),
        };
        let encode = |value: &dyn erased::Json| -> Result<String, IssueError> {
            Ok(URL_SAFE_NO_PAD.encode(value.to_json()?))
        };
        let signing_input = format!("{}.{}", encode(&header)?, encode(&claims)?);
        let signature = inner.key.sign(signing_input.as_bytes())?;
        Ok(IssuedToken {
            token: format!("{signing_input}.{signature}"),
            expires_at,
            token_id,
        })
    }

    /// Extends a token of this issuer: it must verify, be before its `exp` (no leeway),
    /// not be revoked, be presented with its bound certificate, and its subject must
    /// pass the account check. The new token has a new `jti` and `exp`; the old one is
    /// revoked when a revocation list is configured.
    pub async fn extend(
        &self,
        token: &str,
        certificate: Option<ClientCertThumbprint>,
    ) -> Result<IssuedToken, JwtRefusal> {
        let now_ms = now_ms(&self.inner.clock);
        let verified = match self.inner.validator.validate(token, now_ms, false) {
            Outcome::Valid(verified) => verified,
            Outcome::Refused(refusal) => return Err(refusal),
            Outcome::NeedKeys { .. } => return Err(JwtRefusal::UnknownKey),
        };
        self.extend_verified(
            &verified.claims,
            &verified.principal,
            verified.binding,
            certificate,
        )
        .await
    }

    async fn extend_verified(
        &self,
        claims: &JwtClaims,
        principal: &Principal,
        binding: Option<[u8; 32]>,
        certificate: Option<ClientCertThumbprint>,
    ) -> Result<IssuedToken, JwtRefusal> {
        let inner = &*self.inner;
        let now = now_secs(&inner.clock);
        if claims.issuer() != inner.issuer {
            return Err(JwtRefusal::InvalidIssuer);
        }
        if now >= claims.expires_at() {
            return Err(JwtRefusal::Expired);
        }
        if let (Some(revocations), Some(jti)) = (&inner.revocations, claims.token_id()) {
            match revocations.check(jti) {
                crate::RevocationStatus::NotRevoked => {}
                crate::RevocationStatus::Revoked => return Err(JwtRefusal::Revoked),
                crate::RevocationStatus::Unknown => return Err(JwtRefusal::RevocationUnavailable),
            }
        }
        if let Some(bound) = binding {
            match certificate {
                Some(thumbprint) if thumbprint.matches(&bound) => {}
                Some(_) => return Err(JwtRefusal::CertificateMismatch),
                None => return Err(JwtRefusal::CertificateRequired),
            }
        }
        // Both claims are this issuer's own; a value of another type is refused, never
        // replaced by a default (an `auth_time` read as "now" would restart the session).
        let auth_time = match claims.get("auth_time") {
            None => now,
            Some(value) => value.as_i64().ok_or(JwtRefusal::InvalidClaims)?,
        };
        if let Some(max) = inner.max_session {
            let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            if now >= auth_time.saturating_add(max) {
                return Err(JwtRefusal::Expired);
            }
        }
        let mut roles = principal.roles().to_vec();
        if let Some(check) = &inner.check {
            let subject = Subject {
                issuer: inner.issuer.as_str().into(),
                id: claims.subject().into(),
            };
            match check.check(subject).await {
                Ok(SubjectStatus::Active) => {}
                Ok(SubjectStatus::ActiveWithRoles(current)) => roles = current,
                Ok(SubjectStatus::Blocked) => return Err(JwtRefusal::AccountDisabled),
                Ok(SubjectStatus::Unknown) => return Err(JwtRefusal::UnknownAccount),
                Err(error) => {
                    tracing::error!(subject = principal.id(), %error, "jwt: the account check failed during an extension");
                    return Err(JwtRefusal::AccountCheckUnavailable);
                }
            }
        }
        let auth_method = match claims.get("auth_method") {
            None => "jwt",
            Some(value) => value.as_str().ok_or(JwtRefusal::InvalidClaims)?,
        };
        let credential = match claims.get("cred") {
            None => None,
            Some(value) => Some(value.as_str().ok_or(JwtRefusal::InvalidClaims)?),
        };
        // The session ends with the key or certificate it was opened with.
        if let (Some(check), Some(id)) = (&inner.credentials, credential) {
            let credential = session_credential(claims.subject(), auth_method, id)?;
            if check.checks(credential.method) {
                match check.check(&credential).await {
                    Ok(CredentialStatus::Good) => {}
                    Ok(_) => return Err(JwtRefusal::CredentialRevoked),
                    Err(error) => {
                        tracing::error!(subject = principal.id(), %error, "jwt: the credential check failed during an extension");
                        return Err(JwtRefusal::CredentialCheckUnavailable);
                    }
                }
            }
        }
        // The old token is revoked (and, with a journal, on disk) before the new one is
        // handed out: a revocation that cannot be kept gives no second token.
        if let (Some(revocations), Some(jti)) = (&inner.revocations, claims.token_id()) {
            if let Err(error) = revocations.revoke(jti, claims.expires_at()) {
                tracing::error!(%error, "jwt: the extended token's revocation could not be kept; refusing the extension");
                return Err(JwtRefusal::RevocationUnavailable);
            }
        }
        let issued = self
            .sign(&Grant {
                subject: claims.subject(),
                roles: &roles,
                scopes: principal.scopes(),
                auth_time,
                auth_method,
                credential,
                binding,
            })
            .map_err(|error| {
                tracing::error!(%error, "jwt: signing an extended token failed");
                JwtRefusal::AccountCheckUnavailable
            })?;
        Ok(issued)
    }

    /// A tower service for `POST /token`: issues a token to the request's principal (from
    /// the layers in front of it) and answers `{"access_token", "token_type",
    /// "expires_in"}`.
    pub fn issue_service(&self) -> IssueService {
        IssueService {
            issuer: self.clone(),
        }
    }

    /// A tower service for `POST /token/extend`: extends the bearer token of the
    /// request. Mounted behind a [`JwtLayer`](crate::JwtLayer) that trusts this issuer,
    /// it extends the token the layer verified; on its own it verifies the
    /// `Authorization: Bearer` token itself.
    pub fn extend_service(&self) -> ExtendService {
        ExtendService {
            issuer: self.clone(),
        }
    }

    fn respond_issued(&self, issued: &IssuedToken) -> Response<RejectOrBody<Full<Bytes>>> {
        let now = now_secs(&self.inner.clock);
        let body = format!(
            "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":{},\"expires_at\":{}}}",
            issued.token,
            issued.expires_at.saturating_sub(now).max(0),
            issued.expires_at
        );
        let mut response = Response::new(RejectOrBody::inner(Full::new(Bytes::from(body))));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // RFC 6749 5.1: token responses must not be cached.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn refuse<B>(
        &self,
        request: &Request<B>,
        rejection: &Rejection,
    ) -> Response<RejectOrBody<Full<Bytes>>> {
        AuditRecord::note(request.extensions(), || {
            AuditNote::deny(ISSUER_NOTE, rejection.code()).detail(rejection.detail().to_owned())
        });
        self.inner.renderer.respond(ISSUER_NOTE, rejection, request)
    }
}

fn method_not_allowed() -> Rejection {
    Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use POST",
    )
}

/// The service of [`TokenIssuer::issue_service`].
#[derive(Clone, Debug)]
pub struct IssueService {
    issuer: TokenIssuer,
}

impl<B> Service<Request<B>> for IssueService {
    type Response = Response<RejectOrBody<Full<Bytes>>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let issuer = &self.issuer;
        if request.method() != Method::POST {
            return std::future::ready(Ok(issuer.refuse(&request, &method_not_allowed())));
        }
        let auth = Authentication::from_extensions(request.extensions());
        let principal = issuer
            .inner
            .methods
            .iter()
            .find_map(|method| auth.get(*method));
        let Some(principal) = principal else {
            return std::future::ready(Ok(
                issuer.refuse(&request, &IssueError::NotAuthenticated.rejection())
            ));
        };
        let certificate = crate::layer::request_thumbprint(request.extensions());
        let response = match issuer.issue(principal, certificate) {
            Ok(issued) => {
                // The caller is in the event already, as the layer that authenticated
                // it noted it; this note names the token issued, not another principal.
                AuditRecord::note(request.extensions(), || {
                    AuditNote::allow(ISSUER_NOTE)
                        .credential_id(issued.token_id())
                        .detail("token issued")
                });
                issuer.respond_issued(&issued)
            }
            Err(error) => {
                tracing::warn!(principal = principal.id(), %error, "jwt: a token was not issued");
                issuer.refuse(&request, &error.rejection())
            }
        };
        std::future::ready(Ok(response))
    }
}

/// The service of [`TokenIssuer::extend_service`].
#[derive(Clone, Debug)]
pub struct ExtendService {
    issuer: TokenIssuer,
}

impl<B: Send + 'static> Service<Request<B>> for ExtendService {
    type Response = Response<RejectOrBody<Full<Bytes>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let issuer = self.issuer.clone();
        Box::pin(async move {
            if request.method() != Method::POST {
                return Ok(issuer.refuse(&request, &method_not_allowed()));
            }
            let certificate = crate::layer::request_thumbprint(request.extensions());
            let realm = "api";
            let result = match bearer(&request) {
                Some(token) => issuer.extend(token, certificate).await,
                None => {
                    // The token was verified, and removed, by a JwtLayer in front.
                    let claims = request.extensions().get::<JwtClaims>();
                    let auth = Authentication::from_extensions(request.extensions());
                    match (claims, auth.get(AuthMethod::Jwt)) {
                        (Some(claims), Some(principal)) => {
                            issuer
                                .extend_verified(claims, principal, claims.0.binding, certificate)
                                .await
                        }
                        _ => Err(JwtRefusal::Missing),
                    }
                }
            };
            Ok(match result {
                Ok(issued) => {
                    AuditRecord::note(request.extensions(), || {
                        AuditNote::allow(ISSUER_NOTE)
                            .credential_id(issued.token_id())
                            .detail("token extended")
                    });
                    issuer.respond_issued(&issued)
                }
                Err(refusal) => issuer.refuse(&request, &refusal.to_rejection(realm, "")),
            })
        })
    }
}

fn bearer<B>(request: &Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

fn now_secs(clock: &Clock) -> i64 {
    let since = clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

fn now_ms(clock: &Clock) -> u64 {
    let since = clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct TokenHeader<'a> {
    alg: &'static str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    auth_time: i64,
    auth_method: &'a str,
    /// The id of the credential the session was opened with (an API key's id, a client
    /// certificate's thumbprint), for the credential check.
    #[serde(skip_serializing_if = "Option::is_none")]
    cred: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation>,
}

/// What one token grants, and to whom.
#[derive(Clone, Copy)]
struct Grant<'a> {
    subject: &'a str,
    roles: &'a [String],
    scopes: &'a [String],
    auth_time: i64,
    auth_method: &'a str,
    credential: Option<&'a str>,
    binding: Option<[u8; 32]>,
}

#[derive(Serialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

mod erased {
    use super::IssueError;

    /// Serializes either part of a token without a generic closure.
    pub(super) trait Json {
        fn to_json(&self) -> Result<Vec<u8>, IssueError>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, IssueError> {
            serde_json::to_vec(self).map_err(|e| IssueError::Signing(e.to_string()))
        }
    }
}

/// The credential a token of this issuer names: `cred` with the `auth_method` it was
/// issued for, and the token's subject. An unknown method is a claim this issuer never
/// writes: refused.
pub(crate) fn session_credential(
    subject: &str,
    auth_method: &str,
    id: &str,
) -> Result<Credential, JwtRefusal> {
    let method: AuthMethod = auth_method.parse().map_err(|_| JwtRefusal::InvalidClaims)?;
    Ok(Credential {
        method,
        id: id.into(),
        principal: subject.into(),
    })
}
