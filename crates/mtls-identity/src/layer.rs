//! The layer, its refusals and its service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Request, Response};
use portcullis_core::{
    connection_leaf, AuditNote, AuditRecord, AuthMethod, Authentication, ClientCertThumbprint,
    Clock, Decision, DecisionFuture, Principal, RejectOrBody, Rejection, RenderRejection, Renderer,
};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tower_layer::Layer;
use tower_service::Service;

use crate::certificate::{ClientCertificate, KeyUsage};
use crate::forwarded::{ForwardedCertificate, FromHeader};
use crate::future::ResponseFuture;
use crate::ocsp_policy::{Ocsp, OcspState, Outcome, Verdict};
use crate::registry::ConnectorRegistry;
use crate::revocation::CrlVerdict;
use crate::revocation::Crls;
use crate::spiffe::{self, TrustDomain};
use crate::LAYER_NAME;
use portcullis_core::cache::{bounded, BoundedCache};

/// How a certificate names its principal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identify {
    /// By its SHA-256 thumbprint, registered to exactly one connector (the default).
    #[default]
    Thumbprint,
    /// By the subject's common name.
    CommonName,
    /// By the first DNS name among the subject alternative names.
    DnsName,
    /// By the first URI among the subject alternative names, whatever it is. For
    /// SPIFFE IDs, use [`Identify::Spiffe`], which checks them.
    Uri,
    /// By the first e-mail address among the subject alternative names.
    Email,
    /// By the SPIFFE ID of an X.509-SVID: the certificate's only URI SAN, valid by the
    /// SPIFFE ID specification (else 401 `invalid_spiffe_id`), in one of these trust
    /// domains (else 401 `foreign_trust_domain`; an empty list accepts none). The
    /// principal is the whole ID, with the attribute `trust_domain`.
    ///
    /// ```
    /// use portcullis_mtls_identity::{Identify, MtlsIdentityLayer, TrustDomain};
    ///
    /// let layer = MtlsIdentityLayer::by_name(Identify::Spiffe {
    ///     trust_domains: vec!["prod.example".parse::<TrustDomain>()?],
    /// });
    /// # let _ = layer;
    /// # Ok::<(), portcullis_mtls_identity::SpiffeIdError>(())
    /// ```
    Spiffe {
        /// The trust domains whose IDs are accepted.
        trust_domains: Vec<TrustDomain>,
    },
}

/// What the layer does with a request without a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it with 401 `missing_client_cert` (the default).
    #[default]
    Required,
    /// Pass it on unauthenticated. A certificate that is present but refused is still
    /// refused.
    Optional,
}

/// Why the layer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MtlsRefusal {
    /// No client certificate, in required mode.
    Missing,
    /// The certificate could not be read, a forwarded one did not verify, or a trusted
    /// proxy's header was malformed.
    Untrusted,
    /// Past `notAfter`.
    Expired,
    /// Before `notBefore`.
    NotYetValid,
    /// Its extended key usage does not include `clientAuth`.
    WrongUsage,
    /// On a CRL.
    Revoked,
    /// No registered connector for it.
    UnknownConnector,
    /// It names a connector whose registered certificates are others.
    NotBound,
    /// Its connector is blocked.
    Blocked,
    /// The OCSP responder does not know the certificate, and the policy fails closed.
    RevocationUnknown,
    /// The OCSP check failed (responder down, answer not verifiable), and the policy
    /// fails closed.
    RevocationUnavailable,
    /// Another layer already put a certificate principal on the request.
    DuplicatePrincipal,
    /// Identified by SPIFFE ID, and the certificate has no URI SAN, several, or one that
    /// is not a valid SPIFFE ID.
    InvalidSpiffeId,
    /// Identified by SPIFFE ID, and the ID's trust domain is not an accepted one.
    ForeignTrustDomain,
}

impl MtlsRefusal {
    /// The stable code in the response.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_client_cert",
            Self::Untrusted => "untrusted_client_cert",
            Self::Expired => "expired_client_cert",
            Self::NotYetValid => "client_cert_not_yet_valid",
            Self::WrongUsage => "wrong_cert_usage",
            Self::Revoked => "revoked_cert",
            Self::UnknownConnector => "unknown_connector",
            Self::NotBound => "certificate_not_bound",
            Self::Blocked => "connector_blocked",
            Self::RevocationUnknown => "revocation_unknown",
            Self::RevocationUnavailable => "revocation_check_unavailable",
            Self::DuplicatePrincipal => "duplicate_authentication",
            Self::InvalidSpiffeId => "invalid_spiffe_id",
            Self::ForeignTrustDomain => "foreign_trust_domain",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Missing => "this request needs a client certificate",
            Self::Untrusted => "the client certificate is not trusted",
            Self::Expired => "the client certificate has expired",
            Self::NotYetValid => "the client certificate is not valid yet",
            Self::WrongUsage => "the certificate is not a client certificate (extended key usage)",
            Self::Revoked => "the client certificate has been revoked",
            Self::UnknownConnector => "the client certificate is not registered",
            Self::NotBound => "the client certificate is registered to another connector",
            Self::Blocked => "the connector is blocked",
            Self::RevocationUnknown => {
                "the revocation service does not know the client certificate"
            }
            Self::RevocationUnavailable => {
                "the client certificate's revocation status cannot be checked; try again later"
            }
            Self::DuplicatePrincipal => "the server is misconfigured: two certificate layers ran",
            Self::InvalidSpiffeId => {
                "the client certificate does not carry exactly one valid SPIFFE ID"
            }
            Self::ForeignTrustDomain => {
                "the client certificate's SPIFFE ID is from a trust domain this server does not accept"
            }
        }
    }

    fn rejection(self) -> Rejection {
        match self {
            Self::DuplicatePrincipal => Rejection::internal(self.code(), self.detail()),
            Self::RevocationUnavailable => Rejection::unavailable(self.code(), self.detail()),
            _ => Rejection::unauthorized(self.code(), self.detail()),
        }
    }
}

impl fmt::Display for MtlsRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.detail())
    }
}

pub(crate) struct Config {
    identify: Identify,
    registry: Option<ConnectorRegistry>,
    mode: Mode,
    crls: Crls,
    ocsp: Option<Arc<OcspState>>,
    forwarded: Option<ForwardedCertificate>,
    forwarded_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Intermediates the host configured for forwarded certificates.
    forwarded_intermediates: Arc<[CertificateDer<'static>]>,
    allow_unrestricted_usage: bool,
    clock: Clock,
    renderer: Renderer,
    cache: ParseCache,
}

/// A copy for copy-on-write builders: the same settings, a fresh parse cache (the cache
/// is derived state, and two layers never share one).
impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            identify: self.identify.clone(),
            registry: self.registry.clone(),
            mode: self.mode,
            crls: self.crls.clone(),
            ocsp: self.ocsp.clone(),
            forwarded: self.forwarded.clone(),
            forwarded_verifier: self.forwarded_verifier.clone(),
            forwarded_intermediates: self.forwarded_intermediates.clone(),
            allow_unrestricted_usage: self.allow_unrestricted_usage,
            clock: self.clock.clone(),
            renderer: self.renderer.clone(),
            cache: ParseCache::new(self.cache.capacity),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("identify", &self.identify)
            .field("registry", &self.registry)
            .field("mode", &self.mode)
            .field("crls", &self.crls)
            .field("ocsp", &self.ocsp)
            .field("forwarded", &self.forwarded)
            .field("allow_unrestricted_usage", &self.allow_unrestricted_usage)
            .finish_non_exhaustive()
    }
}

/// Parsed certificates by their DER, so a connection's many requests parse its
/// certificate once. Found by a seeded hash and confirmed by comparing the bytes.
struct ParseCache {
    /// `None` when the capacity is zero (every request parses).
    entries: Option<ParsedCertificates>,
    hasher: foldhash::quality::RandomState,
    capacity: usize,
}

/// Bounded, evicting by `quick_cache`'s S3-FIFO policy: connections that come and go
/// leave room for the certificates of the connections that stay.
type ParsedCertificates =
    BoundedCache<u64, Arc<(Bytes, Arc<ClientCertificate>)>, foldhash::fast::RandomState>;

impl ParseCache {
    fn new(capacity: usize) -> Self {
        let entries =
            (capacity > 0).then(|| bounded(capacity, foldhash::fast::RandomState::default()));
        Self {
            entries,
            hasher: foldhash::quality::RandomState::default(),
            capacity,
        }
    }

    fn parse(&self, der: &Bytes) -> Result<Arc<ClientCertificate>, MtlsRefusal> {
        let Some(entries) = &self.entries else {
            return ClientCertificate::from_der(der)
                .map(Arc::new)
                .map_err(|_| MtlsRefusal::Untrusted);
        };
        let key = std::hash::BuildHasher::hash_one(&self.hasher, der.as_ref());
        if let Some(entry) = entries.get(&key) {
            if entry.0 == der {
                return Ok(entry.1.clone());
            }
        }
        let parsed =
            Arc::new(ClientCertificate::from_der(der).map_err(|_| MtlsRefusal::Untrusted)?);
        entries.insert(key, Arc::new((der.clone(), parsed.clone())));
        Ok(parsed)
    }
}

/// Turns the verified client certificate into a principal. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct MtlsIdentityLayer {
    config: Arc<Config>,
}

impl MtlsIdentityLayer {
    /// A layer identifying certificates by thumbprint against `registry`.
    pub fn new(registry: ConnectorRegistry) -> Self {
        Self::with(Identify::Thumbprint, Some(registry))
    }

    /// A layer naming principals from a certificate field, without a registry (every
    /// certificate the TLS stack accepted is someone).
    pub fn by_name(identify: Identify) -> Self {
        Self::with(identify, None)
    }

    fn with(identify: Identify, registry: Option<ConnectorRegistry>) -> Self {
        Self {
            config: Arc::new(Config {
                identify,
                registry,
                mode: Mode::Required,
                crls: Crls::new(),
                ocsp: None,
                forwarded: None,
                forwarded_verifier: None,
                forwarded_intermediates: Arc::from(Vec::new()),
                allow_unrestricted_usage: false,
                clock: Clock::system(),
                renderer: Renderer::default(),
                cache: ParseCache::new(10_000),
            }),
        }
    }

    /// Every builder call takes effect: on a layer whose configuration is shared (a
    /// clone of another layer), the configuration is copied first, and the other layer
    /// keeps its own.
    fn change(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(Arc::make_mut(&mut self.config));
        self
    }

    /// How certificates name their connector in the registry: by thumbprint (the
    /// default), or by a field, in which case a connector with bound certificates
    /// accepts only those.
    pub fn identify(self, identify: Identify) -> Self {
        self.change(|c| c.identify = identify)
    }

    /// [`Mode::Required`] (the default) or [`Mode::Optional`].
    pub fn mode(self, mode: Mode) -> Self {
        self.change(|c| c.mode = mode)
    }

    /// Refuses certificates on these CRLs.
    pub fn crls(self, crls: Crls) -> Self {
        self.change(|c| c.crls = crls)
    }

    /// Also asks an OCSP responder (or the host's own [`OcspCheck`](crate::OcspCheck))
    /// whether certificates are revoked, after every other check passed. Answers are
    /// cached; see [`Ocsp`] for the cache and the failure policy.
    pub fn ocsp(self, ocsp: Ocsp) -> Self {
        let state = OcspState::new(ocsp);
        self.change(|c| c.ocsp = Some(state))
    }

    /// Also accepts the certificate a trusted proxy forwards in a header. The header is
    /// removed from every request, believed only from the proxies, and a certificate on
    /// the connection itself takes precedence.
    pub fn forwarded(self, forwarded: ForwardedCertificate) -> Self {
        self.change(|c| c.forwarded = Some(forwarded))
    }

    /// Intermediate CA certificates (PEM) for [`verify_forwarded`](Self::verify_forwarded):
    /// a forwarded leaf issued by one of them chains to the client CAs through it.
    /// Envoy can forward the chain itself (`Chain=` in the XFCC header, with
    /// `forward_client_cert_details` set to include `Chain`); its certificates are used
    /// as intermediates too. Intermediates never stand in for a root: the chain must end
    /// at one of the CAs given to `verify_forwarded`.
    pub fn forwarded_intermediates(self, pem: &[u8]) -> Result<Self, crate::TlsConfigError> {
        use rustls_pki_types::pem::PemObject;
        let mut intermediates = Vec::new();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            intermediates.push(
                certificate
                    .map_err(|e| crate::tls::unreadable("the forwarded intermediates", e))?,
            );
        }
        if intermediates.is_empty() {
            return Err(crate::TlsConfigError::Empty {
                what: "the forwarded intermediates",
            });
        }
        let intermediates: Arc<[CertificateDer<'static>]> = intermediates.into();
        Ok(self.change(|c| c.forwarded_intermediates = intermediates))
    }

    /// Verifies forwarded certificates against these CAs (PEM) as well, for proxies that
    /// pass on certificates they did not verify (nginx's `optional_no_ca`). A leaf
    /// issued by an intermediate CA verifies when the intermediate is configured
    /// ([`forwarded_intermediates`](Self::forwarded_intermediates)) or arrives in the
    /// XFCC header's `Chain`.
    pub fn verify_forwarded(self, client_cas_pem: &[u8]) -> Result<Self, crate::TlsConfigError> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(client_cas_pem) {
            let ca = ca.map_err(|e| crate::tls::unreadable("the client CAs", e))?;
            roots
                .add(ca)
                .map_err(|e| crate::tls::refused("a client CA", e))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| crate::tls::refused("the client verifier", e))?;
        Ok(self.change(|c| c.forwarded_verifier = Some(verifier)))
    }

    /// Accepts certificates without an extended key usage extension (RFC 5280 allows
    /// them any use). By default they are refused like server or sensor certificates.
    pub fn allow_unrestricted_usage(self, allow: bool) -> Self {
        self.change(|c| c.allow_unrestricted_usage = allow)
    }

    /// The clock validity is checked against.
    pub fn clock(self, clock: Clock) -> Self {
        self.change(|c| c.clock = clock)
    }

    /// Replaces the rejection renderer.
    pub fn renderer(self, renderer: impl RenderRejection) -> Self {
        let renderer = Renderer::new(renderer);
        self.change(|c| c.renderer = renderer)
    }

    /// How many parsed certificates are remembered (10,000; 0 parses every request).
    pub fn parse_cache(self, capacity: usize) -> Self {
        self.change(|c| c.cache = ParseCache::new(capacity))
    }
}

impl<S> Layer<S> for MtlsIdentityLayer {
    type Service = MtlsIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MtlsIdentity {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service built by [`MtlsIdentityLayer`].
#[derive(Clone, Debug)]
pub struct MtlsIdentity<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MtlsIdentity<S>
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
        let forwarded = match &config.forwarded {
            Some(forwarded) => forwarded.take(&mut request),
            None => FromHeader::Absent,
        };
        let der = match (connection_leaf(request.extensions()), forwarded) {
            (Some(der), _) => Some(der),
            (None, FromHeader::Certificate(der, chain)) => {
                let der = Bytes::from(der);
                if let Some(verifier) = &config.forwarded_verifier {
                    let leaf = CertificateDer::from(der.as_ref());
                    // Intermediates from the proxy's chain and from the configuration;
                    // path building still has to end at a configured CA.
                    let intermediates: Vec<CertificateDer<'_>> = chain
                        .iter()
                        .map(|cert| CertificateDer::from(cert.as_slice()))
                        .chain(config.forwarded_intermediates.iter().cloned())
                        .collect();
                    if let Err(error) =
                        verifier.verify_client_cert(&leaf, &intermediates, UnixTime::now())
                    {
                        tracing::debug!(%error, "mtls: a forwarded certificate did not verify");
                        return config.refuse(&request, MtlsRefusal::Untrusted, None).into();
                    }
                }
                Some(der)
            }
            (None, FromHeader::Malformed) => {
                return config.refuse(&request, MtlsRefusal::Untrusted, None).into()
            }
            (None, FromHeader::Untrusted) => {
                portcullis_core::log_throttled!(
                    warn,
                    "mtls: a client-certificate header from a peer that is not a trusted proxy was removed (a client sent it itself, or the proxy is missing from the trusted proxies)"
                );
                None
            }
            (None, FromHeader::Absent) => None,
        };
        let Some(der) = der else {
            if config.mode == Mode::Optional {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new(LAYER_NAME, Decision::Skip).detail("no client certificate")
                });
                Authentication::mark_checked(request.extensions_mut());
                return DecisionFuture::inner(self.inner.call(request)).into();
            }
            return config.refuse(&request, MtlsRefusal::Missing, None).into();
        };
        let certificate = match config.cache.parse(&der) {
            Ok(certificate) => certificate,
            Err(refusal) => return config.refuse(&request, refusal, None).into(),
        };
        let thumbprint = certificate.thumbprint();
        let principal = match identify(config, &certificate) {
            Ok(principal) => principal,
            Err(refusal) => return config.refuse(&request, refusal, Some(thumbprint)).into(),
        };
        let Some(ocsp) = &config.ocsp else {
            return config
                .admit(&mut self.inner, request, principal, thumbprint, None)
                .into();
        };
        match ocsp.cached(&thumbprint, config.clock.now()) {
            Some(verdict) => config
                .after_ocsp(&mut self.inner, request, principal, thumbprint, &verdict)
                .into(),
            None => {
                let query = ocsp.query(thumbprint, der, config.clock.clone());
                // The ready service goes with the request; this one gets a fresh clone.
                let fresh = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, fresh);
                ResponseFuture::waiting(
                    query,
                    inner,
                    request,
                    self.config.clone(),
                    principal,
                    thumbprint,
                )
            }
        }
    }
}

impl Config {
    /// Decides on a certificate that passed every other check, by its OCSP verdict.
    pub(crate) fn after_ocsp<S, ReqBody, ResBody>(
        &self,
        inner: &mut S,
        request: Request<ReqBody>,
        principal: Principal,
        thumbprint: ClientCertThumbprint,
        verdict: &Verdict,
    ) -> DecisionFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let Some(ocsp) = &self.ocsp else {
            return self.admit(inner, request, principal, thumbprint, None);
        };
        match ocsp.outcome(verdict) {
            Outcome::Allow => self.admit(inner, request, principal, thumbprint, None),
            Outcome::AllowDespite(why) => {
                portcullis_core::log_throttled!(
                    warn,
                    %thumbprint,
                    principal = principal.id(),
                    why,
                    "mtls: admitted without a revocation answer; check that the OCSP responder is reachable"
                );
                self.admit(inner, request, principal, thumbprint, Some(why))
            }
            Outcome::Refuse(refusal) => self.refuse(&request, refusal, Some(thumbprint)),
        }
    }

    /// Puts the principal and the thumbprint on the request and calls the inner service.
    fn admit<S, ReqBody, ResBody>(
        &self,
        inner: &mut S,
        mut request: Request<ReqBody>,
        principal: Principal,
        thumbprint: ClientCertThumbprint,
        caveat: Option<&'static str>,
    ) -> DecisionFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let noted = principal.clone();
        if Authentication::insert_into(request.extensions_mut(), principal).is_err() {
            tracing::error!("mtls: the request already had a certificate principal; is the layer applied twice?");
            return self.refuse(&request, MtlsRefusal::DuplicatePrincipal, Some(thumbprint));
        }
        request.extensions_mut().insert(thumbprint);
        portcullis_core::count_allowed(LAYER_NAME);
        AuditRecord::note(request.extensions(), || {
            let note = AuditNote::allow(LAYER_NAME)
                .principal_id(noted.id())
                .credential_id(thumbprint.to_string());
            match caveat {
                Some(caveat) => note.detail(caveat),
                None => note,
            }
        });
        DecisionFuture::inner(inner.call(request))
    }

    pub(crate) fn refuse<ReqBody, ResBody, F>(
        &self,
        request: &Request<ReqBody>,
        refusal: MtlsRefusal,
        thumbprint: Option<ClientCertThumbprint>,
    ) -> DecisionFuture<F, ResBody> {
        tracing::debug!(
            code = refusal.code(),
            thumbprint = %thumbprint.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            "mtls refused a request"
        );
        AuditRecord::note(request.extensions(), || {
            let note = AuditNote::deny(LAYER_NAME, refusal.code()).detail(refusal.detail());
            match thumbprint {
                Some(thumbprint) => note.credential_id(thumbprint.to_string()),
                None => note,
            }
        });
        DecisionFuture::rejected(
            self.renderer
                .respond(LAYER_NAME, &refusal.rejection(), request),
        )
    }
}

fn identify(config: &Config, certificate: &ClientCertificate) -> Result<Principal, MtlsRefusal> {
    let now = config
        .clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if now < certificate.not_before() {
        return Err(MtlsRefusal::NotYetValid);
    }
    if now > certificate.not_after() {
        return Err(MtlsRefusal::Expired);
    }
    match certificate.key_usage() {
        KeyUsage::ClientAuth => {}
        KeyUsage::Unrestricted if config.allow_unrestricted_usage => {}
        KeyUsage::Unrestricted | KeyUsage::Other => return Err(MtlsRefusal::WrongUsage),
    }
    match config.crls.check(certificate, now) {
        CrlVerdict::Good => {}
        CrlVerdict::Revoked => return Err(MtlsRefusal::Revoked),
        CrlVerdict::Stale => {
            portcullis_core::log_throttled!(
                error,
                "mtls: the client certificate's issuer has a CRL past its nextUpdate; refusing until a fresh CRL is loaded"
            );
            return Err(MtlsRefusal::RevocationUnavailable);
        }
    }
    let thumbprint = certificate.thumbprint();
    let mut trust_domain = None;
    let name = match &config.identify {
        Identify::Thumbprint => None,
        Identify::CommonName => Some(certificate.common_name()),
        Identify::DnsName => Some(certificate.dns_names().first().map(String::as_str)),
        Identify::Uri => Some(certificate.uris().first().map(String::as_str)),
        Identify::Email => Some(certificate.emails().first().map(String::as_str)),
        Identify::Spiffe { trust_domains } => {
            let (id, domain) = spiffe_id(certificate, trust_domains)?;
            trust_domain = Some(domain);
            Some(Some(id))
        }
    };
    let Some(registry) = &config.registry else {
        // Names without a registry: the TLS stack's CA is the only authority.
        let Some(Some(name)) = name else {
            return Err(MtlsRefusal::UnknownConnector);
        };
        let mut principal =
            Principal::builder(name, AuthMethod::Certificate).credential_id(thumbprint.to_string());
        if let Some(domain) = trust_domain {
            principal = principal.attribute("trust_domain", domain);
        }
        return Ok(principal.build());
    };
    let registered = match name {
        None => registry
            .by_thumbprint(&thumbprint)
            .ok_or(MtlsRefusal::UnknownConnector)?,
        Some(None) => return Err(MtlsRefusal::UnknownConnector),
        Some(Some(name)) => {
            let registered = registry.by_id(name).ok_or(MtlsRefusal::UnknownConnector)?;
            let bound = &registered.connector.thumbprints();
            let elsewhere = registry
                .by_thumbprint(&thumbprint)
                .is_some_and(|owner| owner.connector.id() != name);
            if elsewhere || (!bound.is_empty() && !bound.contains(&thumbprint)) {
                return Err(MtlsRefusal::NotBound);
            }
            registered
        }
    };
    if registered.connector.is_blocked() {
        return Err(MtlsRefusal::Blocked);
    }
    Ok(registered
        .principals
        .get(&thumbprint)
        .unwrap_or(&registered.unbound)
        .clone())
}

/// The certificate's SPIFFE ID and its trust domain. An X.509-SVID has exactly one URI
/// SAN; a certificate with several is refused rather than searched, so that which ID
/// counts never depends on their order.
fn spiffe_id<'a>(
    certificate: &'a ClientCertificate,
    trust_domains: &[TrustDomain],
) -> Result<(&'a str, &'a str), MtlsRefusal> {
    let [id] = certificate.uris() else {
        return Err(MtlsRefusal::InvalidSpiffeId);
    };
    let domain = spiffe::trust_domain_of(id).map_err(|_| MtlsRefusal::InvalidSpiffeId)?;
    if !trust_domains.iter().any(|d| d.as_str() == domain) {
        return Err(MtlsRefusal::ForeignTrustDomain);
    }
    Ok((id, domain))
}
