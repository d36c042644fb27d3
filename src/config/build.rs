//! From a checked file to built layers: files are read here, and their errors name the
//! `[[layer]]` (or section) that points at them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::HeaderName;
use portcullis_api_key::{ApiKeyCredentials, ApiKeyLayer, FileKeyStore, KeySource};
use portcullis_audit::{AuditLayer, AuditLevel, FileSink};
use portcullis_core::{ClientIpResolver, CredentialChecks, ForwardedHeader};
use portcullis_ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis_jwt::jsonwebtoken::Algorithm;
use portcullis_jwt::{
    Binding, Issuer, JwtLayer, RevocationFailure, Revocations, SigningKey, TokenIssuer,
    VerifyingKey,
};
use portcullis_mtls_identity::{
    ClientAuth, ConnectorRegistry, Crls, ForwardedCertificate, Identify, MtlsIdentityLayer,
    ServerTls, StaleCrl, TrustDomain,
};
use portcullis_rate_limit::{
    Ban, BanResponse, Charge, KeyPart, MissingKey, Overflow as KeyOverflow, Quota, RateLimitLayer,
    RedisBackend, RedisFailure, RedisTls, Semantics,
};
use portcullis_role_router::RoleRouterLayer;

use super::reload::{IpLists, Reloadable};
use super::schema::{self, BindingName, ClientCerts, ForwardedHeaderName, KeyPartName};
use super::{ConfigError, Entry, GatewayConfig, LayerConfig};

/// A built layer.
#[derive(Clone)]
pub(crate) enum Built {
    IpAllowlist(IpAllowlistLayer),
    MtlsIdentity(MtlsIdentityLayer),
    ApiKey(ApiKeyLayer),
    Jwt(JwtLayer),
    RoleRouter(RoleRouterLayer),
    RateLimit(RateLimitLayer),
    Audit(AuditLayer),
    ExtAuthz(portcullis_ext_authz::ExtAuthzLayer),
    IdentityHeaders(portcullis_upstream::IdentityHeadersLayer),
}

/// The token issue and extend routes of `[token_issuer]`.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the issuer holds a signing key
pub struct TokenRoutes {
    /// Signs and extends tokens.
    pub issuer: TokenIssuer,
    /// Where tokens are issued (`POST`, default `/v1/token`).
    pub issue_path: String,
    /// Where tokens are extended (`POST`, default `/v1/token/extend`).
    pub extend_path: String,
}

/// The stack a [`GatewayConfig`] describes, built: the layers in the file's order, the
/// TLS server config, and the token routes. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// `[server] listen`.
    pub listen: SocketAddr,
    /// `[tls]`, built, if the file has it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `[token_issuer]`, if the file has it.
    pub token_routes: Option<TokenRoutes>,
    /// The connector registry of the `mtls-identity` layer, to block or reload at run
    /// time.
    pub connectors: Option<ConnectorRegistry>,
    pub(crate) layers: Vec<(&'static str, Built)>,
    pub(crate) reloadable: Arc<Reloadable>,
    /// `[admin]`, if the file has it.
    pub admin: Option<AdminSettings>,
    /// `[server]`'s connection limits, for
    /// [`serve_hyper_with`](portcullis_mtls_identity::serve_hyper_with).
    pub serve_limits: portcullis_mtls_identity::ServeLimits,
    pub(crate) health_on_main: bool,
    pub(crate) revocations: Revocations,
    /// `[server] max_body_bytes` and `[[server.body_limit]]`, when the file has them.
    pub(crate) body_limits: Option<super::body_limit::BodyLimits>,
    /// The audit layers' file sinks, synced at shutdown.
    pub(crate) audit_files: Vec<FileSink>,
    /// `[server] tls_handshake_timeout`; the listener's own default without it.
    pub(crate) tls_handshake_timeout: Option<std::time::Duration>,
    /// `[[route]]`: prefixes forwarded to upstream services, longest first; see
    /// [`Gateway::has_routes`].
    pub(crate) upstreams: Vec<(String, portcullis_upstream::Upstream)>,
    /// `[server] proxy_protocol`: the main listener reads PROXY protocol headers.
    pub(crate) proxy_protocol: Option<portcullis_proxy_protocol::ProxyProtocol>,
    /// Every role-router layer's policy, with where it came from.
    pub(crate) policies: Vec<(String, portcullis_role_router::PolicyHandle)>,
    /// `[metrics]`: `None` without the section, `Some(None)` on the admin listener,
    /// `Some(Some(address))` on a listener of its own.
    pub(crate) metrics: Option<Option<SocketAddr>>,
}

/// `[admin]`: where the admin routes listen, and the role they need.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// The admin listener's address (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// The role a caller must have, from a client certificate or an API key.
    pub role: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("layers", &self.layer_kinds())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The layers' kinds, outermost first.
    pub fn layer_kinds(&self) -> Vec<&'static str> {
        self.layers.iter().map(|(kind, _)| *kind).collect()
    }

    /// The policy in force in each `role-router` layer, outermost first, with where it
    /// came from (its file, or `layer[N] (inline)`): for `portcullis serve --check` to
    /// lint them ([`Policy::lint`](portcullis_role_router::Policy::lint)).
    pub fn policies(&self) -> Vec<(String, Arc<portcullis_role_router::Policy>)> {
        self.policies
            .iter()
            .map(|(source, handle)| (source.clone(), handle.current()))
            .collect()
    }

    /// Whether the file has `[[route]]`s: upstream services behind the layers, which
    /// [`apply`](Self::apply) forwards what the host's router does not match to.
    pub fn has_routes(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Wraps `router` in the layers, the file's first `[[layer]]` outermost, with the
    /// token routes (if any) answered inside the stack. Routes added to the returned
    /// router later are not behind the stack; with `[server] health = true`,
    /// `/healthz` and `/readyz` are added that way.
    ///
    /// Several layers are one `Router::layer` of the shared stack ([`Gateway::layer`]):
    /// axum clones a route's layered service for every request, and this one clones by
    /// reference counts, where a `Router::layer` per layer would clone and box each
    /// layer again. A single layer is that layer's own `Router::layer`.
    #[cfg(feature = "axum")]
    pub fn apply(&self, mut router: axum::Router) -> axum::Router {
        if !self.upstreams.is_empty() {
            // The host's own routes first; what none of them matches goes to the
            // upstreams (or 404 no_route).
            router =
                router.fallback_service(super::routes::UpstreamRoutes::new(self.upstreams.clone()));
        }
        if let Some(limits) = &self.body_limits {
            router = router.layer(limits.clone());
        }
        if let Some(routes) = &self.token_routes {
            router = router
                .route_service(&routes.issue_path, routes.issuer.issue_service())
                .route_service(&routes.extend_path, routes.issuer.extend_service());
        }
        let mut app = match &self.layers[..] {
            [] => router,
            // One layer needs no shared stack: axum's own layering of it is one box and
            // one boxed future, one box fewer than a stack of one.
            [(_, layer)] => match layer.clone() {
                Built::IpAllowlist(layer) => router.layer(layer),
                Built::MtlsIdentity(layer) => router.layer(layer),
                Built::ApiKey(layer) => router.layer(layer),
                Built::Jwt(layer) => router.layer(layer),
                Built::RoleRouter(layer) => router.layer(layer),
                Built::RateLimit(layer) => router.layer(layer),
                Built::Audit(layer) => router.layer(layer),
                Built::ExtAuthz(layer) => router.layer(layer),
                Built::IdentityHeaders(layer) => router.layer(layer),
            },
            // The token routes are routes of the router now: the stack need not look
            // for them.
            _ => router.layer(self.layer_without_token_routes::<axum::body::Body>()),
        };
        if self.health_on_main {
            app = app.merge(self.health_router());
        }
        app
    }
}

impl GatewayConfig {
    /// Reads the files the configuration names and builds every layer. Runs inside the
    /// tokio runtime: JWT key refresh and the Redis connection start here.
    pub async fn build(&self) -> Result<Gateway, ConfigError> {
        let resolver = self.client_ip();
        let tls = match &self.file.tls {
            Some(tls) => Some(self.tls(tls)?),
            None => None,
        };
        // Tokens revoked by an extension: in memory, or in a journal that a restart
        // reads back.
        let revocations = self.revocations().await?;
        // Key stores and connector registries are opened first: the token issuer asks
        // them whether the credential a session was opened with is still good.
        let mut reloadable = Reloadable::default();
        let mut checks = CredentialChecks::new();
        for entry in &self.entries {
            let at = |message: String| self.error(Some(entry.line), &entry.key, message);
            match &entry.layer {
                LayerConfig::ApiKey(c) => {
                    let store = FileKeyStore::open(self.path(&c.key_file))
                        .map_err(|e| at(format!("key_file: {e}")))?;
                    let store = Arc::new(store);
                    checks = checks.with(ApiKeyCredentials::new(store.clone()));
                    reloadable.key_files.push(store);
                }
                LayerConfig::MtlsIdentity(c) => {
                    let registry = ConnectorRegistry::open(self.path(&c.connectors))
                        .map_err(|e| at(format!("connectors: {e}")))?;
                    checks = checks.with(registry.clone());
                    reloadable
                        .connectors
                        .push((self.path(&c.connectors), registry));
                }
                _ => {}
            }
        }
        let token_routes = match &self.file.token_issuer {
            Some(section) => Some(self.token_issuer(section, &revocations, &checks)?),
            None => None,
        };
        let (mut key_files, mut registries) = (
            reloadable.key_files.clone().into_iter(),
            reloadable.connectors.clone().into_iter(),
        );
        let mut layers = Vec::new();
        let mut audit_files = Vec::new();
        let mut policies = Vec::new();
        let mut connectors = None;
        for entry in &self.entries {
            let at = |message: String| self.error(Some(entry.line), &entry.key, message);
            let built = match &entry.layer {
                LayerConfig::IpAllowlist(c) => {
                    let mut rules = IpRules::new();
                    let mut allow = c.allow.clone();
                    let mut deny = c.deny.clone();
                    if let Some(path) = &c.allow_file {
                        let set = portcullis_core::NetworkSet::from_file(self.path(path))
                            .map_err(|e| at(format!("allow_file: {e}")))?;
                        allow = allow.networks().chain(set.networks()).collect();
                    }
                    if let Some(path) = &c.deny_file {
                        let set = portcullis_core::NetworkSet::from_file(self.path(path))
                            .map_err(|e| at(format!("deny_file: {e}")))?;
                        deny = deny.networks().chain(set.networks()).collect();
                    }
                    if !allow.is_empty() {
                        rules = rules.allow(allow);
                    }
                    rules = rules.deny(deny);
                    let layer = IpAllowlistLayer::new(rules).client_ip(resolver.clone());
                    reloadable.ip_lists.push(IpLists {
                        handle: layer.handle(),
                        allow: c.allow.clone(),
                        deny: c.deny.clone(),
                        allow_file: c.allow_file.as_ref().map(|p| self.path(p)),
                        deny_file: c.deny_file.as_ref().map(|p| self.path(p)),
                    });
                    Built::IpAllowlist(layer)
                }
                LayerConfig::MtlsIdentity(c) => {
                    if let Some(tls) = &self.file.tls {
                        if tls.client_certs == ClientCerts::Off {
                            return Err(at(
                                "mtls-identity reads client certificates, and [tls] client_certs is \"off\": ask for them (\"optional\" or \"required\") or remove this layer".into(),
                            ));
                        }
                    }
                    let (_, registry) = registries.next().expect("opened above, in order");
                    let mut layer = MtlsIdentityLayer::new(registry.clone())
                        .mode(match c.mode {
                            schema::Mode::Required => portcullis_mtls_identity::Mode::Required,
                            schema::Mode::Optional => portcullis_mtls_identity::Mode::Optional,
                        })
                        .identify(spiffe_or(c).map_err(at)?)
                        .allow_unrestricted_usage(c.allow_unrestricted_usage);
                    if let Some(forwarded) = &c.forwarded {
                        layer = self.forwarded(layer, forwarded).map_err(|e| {
                            self.error(Some(entry.line), &format!("{}.forwarded", entry.key), e)
                        })?;
                    }
                    if let Some(ocsp) = &c.ocsp {
                        layer = layer.ocsp(self.ocsp(ocsp).map_err(|e| {
                            self.error(Some(entry.line), &format!("{}.ocsp", entry.key), e)
                        })?);
                    }
                    if let Some(tls) = &self.file.tls {
                        if !tls.crls.is_empty() {
                            let crls = Crls::from_files(tls.crls.iter().map(|p| self.path(p)))
                                .map_err(|e| self.error(None, "tls.crls", e))?
                                .stale_policy(match tls.stale_crls {
                                    schema::StaleCrlName::Refuse => StaleCrl::Refuse,
                                    schema::StaleCrlName::AcceptWithWarning => {
                                        StaleCrl::AcceptWithWarning
                                    }
                                });
                            reloadable.crls.push((
                                tls.crls.iter().map(|p| self.path(p)).collect(),
                                crls.clone(),
                            ));
                            layer = layer.crls(crls);
                        }
                    }
                    connectors = Some(registry);
                    Built::MtlsIdentity(layer)
                }
                LayerConfig::ApiKey(c) => {
                    let store = key_files.next().expect("opened above, in order");
                    Built::ApiKey(self.api_key(c, &resolver, store).map_err(at)?)
                }
                LayerConfig::Jwt(c) => {
                    let layer = self.jwt(c, token_routes.as_ref(), &revocations, entry)?;
                    reloadable.jwt.push(layer.handle());
                    Built::Jwt(layer)
                }
                LayerConfig::RoleRouter(c) => {
                    let policy = match &c.policy {
                        schema::PolicySource::File(path) => {
                            portcullis_role_router::read_policy(self.path(path)).map_err(|e| {
                                ConfigError {
                                    source: self.path(path).display().to_string(),
                                    line: e.line(),
                                    key: format!("{} (policy)", entry.key),
                                    message: e.message().to_owned(),
                                }
                            })?
                        }
                        // Checked when the file was read.
                        schema::PolicySource::Inline(text) => {
                            portcullis_role_router::parse_policy(&entry.key, text)
                                .map_err(|e| at(e.message().to_owned()))?
                        }
                    };
                    // The matched rule is marked for per-route quotas (`key = ["route"]`),
                    // which under `Gateway::layer` have no axum route to read.
                    let mut layer = RoleRouterLayer::new(policy)
                        .mark_matched_route(true)
                        .shadow(c.shadow);
                    if let Some(bytes) = c.max_path_len {
                        layer = layer.max_path_len(bytes);
                    }
                    match &c.policy {
                        schema::PolicySource::File(path) => {
                            reloadable.policies.push((self.path(path), layer.handle()));
                            policies.push((self.path(path).display().to_string(), layer.handle()));
                        }
                        schema::PolicySource::Inline(_) => {
                            policies.push((format!("{} (inline)", entry.key), layer.handle()));
                        }
                    }
                    Built::RoleRouter(layer)
                }
                LayerConfig::ExtAuthz(c) => Built::ExtAuthz(ext_authz(c, &resolver).map_err(at)?),
                LayerConfig::IdentityHeaders(c) => {
                    Built::IdentityHeaders(self.identity_headers(c, &resolver).map_err(at)?)
                }
                LayerConfig::RateLimit(c) => {
                    let layer = self.rate_limit(c, &resolver).await.map_err(at)?;
                    reloadable.rate_limits.push(layer.handle());
                    Built::RateLimit(layer)
                }
                LayerConfig::Audit(c) => {
                    let level = match (c.level, c.sample_allowed) {
                        (schema::AuditLevelName::All, None) => AuditLevel::All,
                        (schema::AuditLevelName::Refusals, None) => AuditLevel::RefusalsOnly,
                        (schema::AuditLevelName::Refusals, Some(one_in)) => {
                            AuditLevel::RefusalsAndSample {
                                one_in: one_in.get(),
                            }
                        }
                        (schema::AuditLevelName::All, Some(_)) => {
                            return Err(at(
                                "sample_allowed needs level = \"refusals\": with \"all\" every request is recorded".into(),
                            ))
                        }
                    };
                    let mut layer = AuditLayer::new()
                        .tracing_event(c.tracing)
                        .log_query(c.log_query)
                        .redact_query_keys(c.redact_query_keys.iter().cloned())
                        .level(level)
                        .client_ip(resolver.clone());
                    if let Some(name) = &c.request_id_header {
                        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            at(format!("request_id_header: {name:?} is not a header name"))
                        })?;
                        layer = layer.request_id_header(header);
                    }
                    let sink_options = |builder: portcullis_audit::FileSinkBuilder| {
                        let builder = builder.overflow(match c.overflow {
                            schema::AuditOverflowName::Block => portcullis_audit::Overflow::Block,
                            schema::AuditOverflowName::Drop => portcullis_audit::Overflow::Drop,
                        });
                        match c.capacity {
                            Some(capacity) => builder.capacity(capacity.get()),
                            None => builder,
                        }
                    };
                    if c.stdout {
                        let sink = sink_options(FileSink::to_writer(std::io::stdout()))
                            .build()
                            .map_err(|e| at(format!("stdout: {e}")))?;
                        audit_files.push(sink.clone());
                        layer = layer.sink(sink);
                    }
                    if let Some(dir) = &c.directory {
                        let sink = sink_options(FileSink::builder(self.path(dir)))
                            .hash_chain(true)
                            .build()
                            .map_err(|e| at(format!("directory: {e}")))?;
                        audit_files.push(sink.clone());
                        layer = layer.sink(sink);
                    }
                    Built::Audit(layer)
                }
            };
            layers.push((entry.kind, built));
        }
        Ok(Gateway {
            listen: self.file.server.listen,
            tls,
            token_routes,
            connectors,
            layers,
            reloadable: Arc::new(reloadable),
            admin: self.admin()?,
            revocations,
            serve_limits: self.serve_limits(),
            health_on_main: self.file.server.health,
            body_limits: self.body_limits()?,
            audit_files,
            policies,
            metrics: self.metrics()?,
            tls_handshake_timeout: self.file.server.tls_handshake_timeout,
            proxy_protocol: self.proxy_protocol()?,
            upstreams: self.upstreams(&resolver)?,
        })
    }

    /// The `[[route]]` upstreams, longest prefix first.
    fn upstreams(
        &self,
        resolver: &ClientIpResolver,
    ) -> Result<Vec<(String, portcullis_upstream::Upstream)>, ConfigError> {
        use portcullis_upstream::Upstream;
        let mut out: Vec<(String, Upstream)> = Vec::new();
        for (i, route) in self.file.routes.iter().enumerate() {
            let at = |key: &str, message: String| {
                self.error(None, &format!("route[{i}].{key}"), message)
            };
            if !route.path.starts_with('/') || route.path.contains(['?', '#', '*', '{']) {
                return Err(at(
                    "path",
                    "a path prefix starts with / and has no query, wildcard or pattern: /api"
                        .into(),
                ));
            }
            let prefix = match route.path.trim_end_matches('/') {
                "" => "/".to_owned(),
                trimmed => trimmed.to_owned(),
            };
            if out.iter().any(|(other, _)| *other == prefix) {
                return Err(at("path", format!("{prefix} is routed twice")));
            }
            let mut builder = Upstream::builder(route.upstream.clone())
                .client_ip(resolver.clone())
                .preserve_host(route.preserve_host)
                .http2_only(route.http2);
            if route.strip_prefix && prefix != "/" {
                builder = builder.strip_prefix(prefix.clone());
            }
            if let Some(timeout) = route.timeout {
                builder = builder.timeout(timeout);
            }
            if let Some(timeout) = route.connect_timeout {
                builder = builder.connect_timeout(timeout);
            }
            builder = match (route.unlimited_body, route.max_body_bytes) {
                (true, None) => builder.max_request_body(None),
                (false, Some(max)) => builder.max_request_body(Some(max.get())),
                (false, None) => builder,
                (true, Some(_)) => {
                    return Err(at(
                        "unlimited_body",
                        "max_body_bytes and unlimited_body contradict each other: keep one".into(),
                    ))
                }
            };
            if let Some(files) = &route.tls {
                let tls = self
                    .redis_tls(files)
                    .map_err(|e| at("tls", e.replace("redis_tls", "tls")))?;
                let (roots, client) = tls.into_parts();
                if let Some(pem) = roots {
                    builder = builder.root_certificates(pem);
                }
                if let Some((chain, key)) = client {
                    builder = builder.client_certificate(chain, key);
                }
            }
            let upstream = builder.build().map_err(|e| at("upstream", e.to_string()))?;
            out.push((prefix, upstream));
        }
        out.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(out)
    }

    fn proxy_protocol(
        &self,
    ) -> Result<Option<portcullis_proxy_protocol::ProxyProtocol>, ConfigError> {
        let Some(section) = &self.file.server.proxy_protocol else {
            return Ok(None);
        };
        let mut proxy = portcullis_proxy_protocol::ProxyProtocol::from_set(section.trusted.clone())
            .required(section.required);
        if let Some(timeout) = section.header_timeout {
            proxy = proxy.header_timeout(timeout);
        }
        if let Some(max) = section.max_header_bytes {
            if !(16..=65_551).contains(&max.get()) {
                return Err(self.error(
                    None,
                    "server.proxy_protocol.max_header_bytes",
                    "must be between 16 and 65551 (the protocol's largest header)",
                ));
            }
            proxy = proxy.max_header_bytes(max.get());
        }
        Ok(Some(proxy))
    }

    fn client_ip(&self) -> ClientIpResolver {
        let section = &self.file.client_ip;
        // The file refuses a trusted-proxy list that holds every address; only the
        // explicitly insecure setting trusts every peer.
        let proxies = if section.insecure_trust_every_peer {
            "0.0.0.0/0, ::/0".parse().unwrap_or_default()
        } else {
            section.trusted_proxies.clone()
        };
        let resolver = ClientIpResolver::new()
            .trust_proxies_insecure(proxies)
            .forwarded_header(match section.header {
                ForwardedHeaderName::XForwardedFor => ForwardedHeader::XForwardedFor,
                ForwardedHeaderName::Forwarded => ForwardedHeader::Forwarded,
            });
        match section.max_forwarded_elements {
            Some(elements) => resolver.max_forwarded_elements(elements),
            None => resolver,
        }
    }

    fn read(&self, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
        let full = self.path(path);
        std::fs::read(&full)
            .map_err(|e| self.error(None, key, format!("cannot read {}: {e}", full.display())))
    }

    fn tls(&self, tls: &schema::Tls) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let client_auth = match tls.client_certs {
            ClientCerts::Required => ClientAuth::Required,
            ClientCerts::Optional => ClientAuth::Optional,
            ClientCerts::Off => ClientAuth::Off,
        };
        let mut server = ServerTls::new(
            &self.read("tls.cert", &tls.cert)?,
            &self.read("tls.key", &tls.key)?,
        )
        .client_auth(client_auth);
        match (client_auth, &tls.client_ca) {
            (ClientAuth::Off, _) if !tls.crls.is_empty() => {
                return Err(self.error(
                    None,
                    "tls.crls",
                    "CRLs check client certificates, and client_certs is \"off\": remove crls",
                ))
            }
            (ClientAuth::Off, Some(_)) => {
                return Err(self.error(
                    None,
                    "tls.client_ca",
                    "client_certs is \"off\", so no client CA is used: remove client_ca, or set client_certs = \"optional\"",
                ))
            }
            (ClientAuth::Off, None) => {}
            (_, None) => {
                return Err(self.error(
                    None,
                    "tls.client_ca",
                    "missing: the CA file client certificates must chain to (or client_certs = \"off\")",
                ))
            }
            (_, Some(ca)) => {
                let mut crls = Vec::new();
                for path in &tls.crls {
                    crls.extend(self.read("tls.crls", path)?);
                    crls.push(b'\n');
                }
                server = server
                    .client_cas(&self.read("tls.client_ca", ca)?)
                    .crls(&crls);
            }
        }
        server.build().map_err(|e| self.error(None, "tls", e))
    }

    fn token_issuer(
        &self,
        section: &schema::TokenIssuer,
        revocations: &Revocations,
        checks: &CredentialChecks,
    ) -> Result<TokenRoutes, ConfigError> {
        let key = "token_issuer.secret_file";
        let secret = portcullis_jwt::read_secret_file(&self.path(&section.secret_file))
            .map_err(|e| self.error(None, key, e))?;
        let signing =
            SigningKey::hmac(Algorithm::HS256, &secret).map_err(|e| self.error(None, key, e))?;
        let mut issuer = TokenIssuer::new(signing, &section.issuer, &section.audience)
            .map_err(|e| self.error(None, "token_issuer", e))?
            .revocations(revocations.clone());
        // A token ends with the API key or client certificate it was issued to.
        if !checks.is_empty() {
            issuer = issuer.credential_check(checks.clone());
        }
        if let Some(lifetime) = section.lifetime {
            issuer = issuer.lifetime(lifetime);
        }
        if let Some(max) = section.max_session {
            let lifetime = section.lifetime.unwrap_or(TokenIssuer::DEFAULT_LIFETIME);
            if max < lifetime {
                return Err(self.error(
                    None,
                    "token_issuer.max_session",
                    format!(
                        "{} is shorter than a token's lifetime ({}), so no token could ever be extended: make it longer, or shorten lifetime",
                        humantime::format_duration(max),
                        humantime::format_duration(lifetime)
                    ),
                ));
            }
            issuer = issuer.max_session(max);
        }
        issuer = issuer.binding(match section.binding {
            BindingName::Never => Binding::Never,
            BindingName::WhenPresent => Binding::WhenPresent,
            BindingName::Required => Binding::Required,
        });
        Ok(TokenRoutes {
            issuer,
            issue_path: section.issue_path.clone(),
            extend_path: section.extend_path.clone(),
        })
    }

    /// Tokens revoked by an extension or an admin: in memory, in a journal that a
    /// restart reads back, or shared by every instance through Redis.
    async fn revocations(&self) -> Result<Revocations, ConfigError> {
        let Some(section) = &self.file.token_issuer else {
            return Ok(Revocations::new());
        };
        match (&section.revocations_file, &section.revocations_redis) {
            (Some(_), Some(_)) => Err(self.error(
                None,
                "token_issuer.revocations_redis",
                "give revocations_file (one instance) or revocations_redis (shared), not both",
            )),
            (Some(path), None) => Revocations::open_journal(self.path(path))
                .map_err(|e| self.error(None, "token_issuer.revocations_file", e)),
            (None, Some(url)) => Revocations::shared_through_redis(url.clone())
                .on_failure(match section.revocations_on_redis_failure {
                    schema::RevocationFailureName::Refuse => RevocationFailure::Refuse,
                    schema::RevocationFailureName::DecideLocally => {
                        RevocationFailure::DecideLocally
                    }
                })
                .start()
                .await
                .map_err(|e| self.error(None, "token_issuer.revocations_redis", e)),
            (None, None) => Ok(Revocations::new()),
        }
    }

    fn serve_limits(&self) -> portcullis_mtls_identity::ServeLimits {
        let server = &self.file.server;
        let mut limits = portcullis_mtls_identity::ServeLimits::default();
        if let Some(timeout) = server.header_read_timeout {
            limits = limits.header_read_timeout(timeout);
        }
        if let Some(count) = server.max_connections {
            limits = limits.max_connections(count.get());
        }
        if let Some(count) = server.max_headers {
            limits = limits.max_headers(count.get());
        }
        if let Some(bytes) = server.max_header_bytes {
            limits = limits.max_header_bytes(bytes.get());
        }
        if let Some(timeout) = server.idle_timeout {
            limits = limits.idle_timeout(timeout);
        }
        if let Some(count) = server.max_connections_per_address {
            limits = limits.max_connections_per_address(Some(count.get()));
        }
        if let Some(streams) = server.h2_max_concurrent_streams {
            limits = limits.h2_max_concurrent_streams(streams.get());
        }
        if let Some(grace) = server.shutdown_grace {
            limits = limits.shutdown_grace(grace);
        }
        limits
    }

    fn body_limits(&self) -> Result<Option<super::body_limit::BodyLimits>, ConfigError> {
        let server = &self.file.server;
        if server.max_body_bytes.is_none() && server.body_limit.is_empty() {
            // axum's extractors keep their own limit (2 MB).
            return Ok(None);
        }
        let default = server.max_body_bytes.map_or(2_000_000, |max| max.get());
        let mut routes = Vec::with_capacity(server.body_limit.len());
        for (index, limit) in server.body_limit.iter().enumerate() {
            let pattern = portcullis_role_router::PathPattern::new(&limit.path)
                .map_err(|e| self.error(None, &format!("server.body_limit[{index}].path"), e))?;
            routes.push((pattern, limit.max_bytes.get()));
        }
        Ok(Some(super::body_limit::BodyLimits::new(default, routes)))
    }

    /// `[layer.ocsp]` on an mtls-identity layer.
    fn ocsp(&self, c: &schema::OcspSection) -> Result<portcullis_mtls_identity::Ocsp, String> {
        let path = self.path(&c.issuers);
        let pem = std::fs::read(&path).map_err(|e| format!("issuers: {}: {e}", path.display()))?;
        let mut client = portcullis_mtls_identity::OcspClient::new(&pem)
            .map_err(|e| format!("issuers: {}: {e}", path.display()))?;
        if let Some(url) = &c.responder {
            client = client.responder(url.clone());
        }
        let mut ocsp = portcullis_mtls_identity::Ocsp::new(client).on_failure(match c.on_failure {
            schema::OcspFailureName::Refuse => portcullis_mtls_identity::OcspFailure::Refuse,
            schema::OcspFailureName::Allow => portcullis_mtls_identity::OcspFailure::Allow,
        });
        if let Some(timeout) = c.timeout {
            ocsp = ocsp.timeout(timeout);
        }
        if let Some(max_age) = c.max_age {
            ocsp = ocsp.max_age(max_age);
        }
        if let Some(recheck) = c.recheck_after {
            ocsp = ocsp.recheck_after(recheck);
        }
        if let Some(capacity) = c.capacity {
            ocsp = ocsp.capacity(capacity.get());
        }
        Ok(ocsp)
    }

    /// `[layer.forwarded]` on an mtls-identity layer.
    fn forwarded(
        &self,
        layer: MtlsIdentityLayer,
        c: &schema::Forwarded,
    ) -> Result<MtlsIdentityLayer, String> {
        let header = c
            .header
            .as_deref()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header: {name:?} is not a header name"))
            })
            .transpose()?;
        if c.trusted_proxies.is_empty() {
            return Err(
                "trusted_proxies is empty: name the proxies whose header is believed".into(),
            );
        }
        let forwarded = match (c.format, header) {
            (schema::ForwardedFormatName::EnvoyXfcc, None) => {
                ForwardedCertificate::envoy(c.trusted_proxies.clone())
            }
            (schema::ForwardedFormatName::EnvoyXfcc, Some(header)) => {
                ForwardedCertificate::envoy(c.trusted_proxies.clone()).header(header)
            }
            (schema::ForwardedFormatName::EscapedPem, Some(header)) => {
                ForwardedCertificate::escaped_pem(header, c.trusted_proxies.clone())
            }
            (schema::ForwardedFormatName::EscapedPem, None) => {
                return Err(
                    "escaped-pem needs header = \"x-ssl-client-cert\" (the header nginx sets)"
                        .into(),
                )
            }
        };
        let mut layer = layer.forwarded(forwarded);
        if let Some(path) = &c.intermediates {
            let pem = std::fs::read(self.path(path))
                .map_err(|e| format!("intermediates: {}: {e}", self.path(path).display()))?;
            layer = layer
                .forwarded_intermediates(&pem)
                .map_err(|e| e.to_string())?;
        }
        if let Some(path) = &c.verify_with {
            let pem = std::fs::read(self.path(path))
                .map_err(|e| format!("verify_with: {}: {e}", self.path(path).display()))?;
            layer = layer.verify_forwarded(&pem).map_err(|e| e.to_string())?;
        }
        Ok(layer)
    }

    fn metrics(&self) -> Result<Option<Option<SocketAddr>>, ConfigError> {
        let Some(metrics) = &self.file.metrics else {
            return Ok(None);
        };
        match metrics.listen {
            Some(listen) if !listen.ip().is_loopback() && !metrics.allow_remote => Err(self.error(
                None,
                "metrics.listen",
                format!("{listen} is not a loopback address: the metrics tell how the gateway is used; listen on 127.0.0.1, or set allow_remote = true"),
            )),
            Some(listen) => Ok(Some(Some(listen))),
            None if self.file.admin.is_some() => Ok(Some(None)),
            None => Err(self.error(
                None,
                "metrics",
                "without [admin], [metrics] needs listen = \"127.0.0.1:9090\" (or another address) to serve /metrics on",
            )),
        }
    }

    fn admin(&self) -> Result<Option<AdminSettings>, ConfigError> {
        let Some(admin) = &self.file.admin else {
            return Ok(None);
        };
        if !admin.listen.ip().is_loopback() && !admin.allow_remote {
            return Err(self.error(
                None,
                "admin.listen",
                format!(
                    "{} is not a loopback address: the admin routes reload files and revoke tokens; listen on 127.0.0.1, or set allow_remote = true",
                    admin.listen
                ),
            ));
        }
        let has_credentials = self.entries.iter().any(|entry| {
            matches!(
                entry.layer,
                LayerConfig::ApiKey(_) | LayerConfig::MtlsIdentity(_)
            )
        });
        if !has_credentials {
            return Err(self.error(
                None,
                "admin",
                "the admin routes take an API key or a client certificate with the admin role: add an api-key or mtls-identity layer",
            ));
        }
        Ok(Some(AdminSettings {
            listen: admin.listen,
            role: admin.role.clone(),
        }))
    }

    fn api_key(
        &self,
        c: &schema::ApiKey,
        resolver: &ClientIpResolver,
        store: Arc<FileKeyStore>,
    ) -> Result<ApiKeyLayer, String> {
        let header = |name: &String| {
            HeaderName::try_from(name.as_str())
                .map_err(|_| format!("{name:?} is not a header name"))
        };
        let mut sources = Vec::new();
        for name in &c.headers {
            sources.push(KeySource::header(header(name)?));
        }
        for name in &c.split_headers {
            sources.push(KeySource::split_header(header(name)?));
        }
        if let Some(scheme) = &c.authorization_scheme {
            sources.push(
                KeySource::authorization(scheme)
                    .map_err(|e| format!("authorization_scheme: {e}"))?,
            );
        }
        let mut layer = ApiKeyLayer::new(store)
            .client_ip(resolver.clone())
            .mode(match c.mode {
                schema::Mode::Required => portcullis_api_key::Mode::Required,
                schema::Mode::Optional => portcullis_api_key::Mode::Optional,
            });
        if !sources.is_empty() {
            layer = layer.sources(sources);
        }
        Ok(layer)
    }

    fn jwt(
        &self,
        c: &schema::Jwt,
        token_routes: Option<&TokenRoutes>,
        revocations: &Revocations,
        entry: &Entry,
    ) -> Result<JwtLayer, ConfigError> {
        let at = |key: String, message: String| self.error(Some(entry.line), &key, message);
        let mut builder = JwtLayer::builder()
            .mode(match c.mode {
                schema::Mode::Required => portcullis_jwt::Mode::Required,
                schema::Mode::Optional => portcullis_jwt::Mode::Optional,
            })
            .revocations(revocations.clone());
        if c.trust_token_issuer {
            let Some(routes) = token_routes else {
                return Err(at(
                    format!("{}.trust_token_issuer", entry.key),
                    "there is no [token_issuer] section to trust".into(),
                ));
            };
            builder = builder.issuer(routes.issuer.validating_issuer());
        }
        for (index, section) in c.issuers.iter().enumerate() {
            let key = format!("{}.issuer[{index}]", entry.key);
            let issuer = self.jwt_issuer(section).map_err(|e| at(key, e))?;
            builder = builder.issuer(issuer);
        }
        for scope in &c.require_scopes {
            builder = builder.require_scope(scope.clone());
        }
        if let Some(capacity) = c.token_cache {
            builder = builder.token_cache(capacity);
        }
        if let Some(bytes) = c.max_token_size {
            builder = builder.max_token_size(bytes.get());
        }
        builder
            .build()
            .map_err(|e| at(entry.key.clone(), e.to_string()))
    }

    fn jwt_issuer(&self, c: &schema::JwtIssuer) -> Result<Issuer, String> {
        let mut issuer = Issuer::new(&c.issuer);
        if c.audiences.is_empty() {
            return Err("audiences: name at least one audience the tokens must carry".into());
        }
        for audience in &c.audiences {
            issuer = issuer.audience(audience.clone());
        }
        let algorithm = match &c.algorithm {
            Some(name) => Some(
                name.parse::<Algorithm>()
                    .map_err(|_| format!("algorithm: {name:?} is not one; use HS256, RS256, PS256, ES256, ES384 or EdDSA"))?,
            ),
            None => None,
        };
        if let Some(path) = &c.secret_file {
            let secret = portcullis_jwt::read_secret_file(&self.path(path))
                .map_err(|e| format!("secret_file: {e}"))?;
            let key = VerifyingKey::hmac(algorithm.unwrap_or(Algorithm::HS256), &secret)
                .map_err(|e| format!("secret_file: {e}"))?;
            issuer = issuer.key(key);
        }
        if let Some(path) = &c.public_key_file {
            let pem =
                std::fs::read(self.path(path)).map_err(|e| format!("public_key_file: {e}"))?;
            let key = match algorithm {
                Some(a @ (Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)) => VerifyingKey::rsa_pem(a, &pem),
                Some(a @ (Algorithm::ES256 | Algorithm::ES384)) => VerifyingKey::ec_pem(a, &pem),
                Some(Algorithm::EdDSA) => VerifyingKey::ed_pem(&pem),
                _ => return Err("algorithm: public_key_file needs the algorithm (RS256, PS256, ES256, ES384, EdDSA, …)".into()),
            }
            .map_err(|e| format!("public_key_file: {e}"))?;
            issuer = issuer.key(key);
        }
        if let Some(path) = &c.jwks_file {
            issuer = issuer.jwks_file(self.path(path));
        }
        if let Some(url) = &c.jwks_url {
            issuer = issuer.jwks_url(url.clone());
        }
        if c.discover {
            issuer = issuer.discover();
        }
        if let Some(leeway) = c.leeway {
            issuer = issuer.leeway(leeway);
        }
        if let Some(typ) = &c.token_type {
            issuer = issuer.token_type(typ.clone());
        }
        if let Some(alias) = &c.alias {
            issuer = issuer.alias(alias.clone());
        }
        match (c.max_key_age, c.trust_stale_keys_indefinitely) {
            (Some(_), true) => {
                return Err("max_key_age and trust_stale_keys_indefinitely = true contradict each other: give one".into())
            }
            (Some(age), false) => issuer = issuer.max_key_age(age),
            (None, true) => issuer = issuer.trust_stale_keys_indefinitely(),
            (None, false) => {}
        }
        if let Some(path) = &c.subject_claim {
            issuer = issuer
                .subject_claim(path)
                .map_err(|e| format!("subject_claim: {e}"))?;
        }
        if let Some(path) = &c.roles_claim {
            issuer = issuer
                .roles_claim(path)
                .map_err(|e| format!("roles_claim: {e}"))?;
        }
        if let Some(path) = &c.scopes_claim {
            issuer = issuer
                .scopes_claim(path)
                .map_err(|e| format!("scopes_claim: {e}"))?;
        }
        Ok(issuer)
    }

    /// An identity-headers layer from its `[[layer]]` entry.
    fn identity_headers(
        &self,
        c: &schema::IdentityHeaders,
        resolver: &ClientIpResolver,
    ) -> Result<portcullis_upstream::IdentityHeadersLayer, String> {
        use portcullis_upstream::IdentityHeadersLayer;
        let mut builder = IdentityHeadersLayer::builder().client_ip(resolver.clone());
        let header = |name: &Option<schema::HeaderNameText>| name.as_ref().map(|n| n.0.clone());
        if let Some(name) = header(&c.principal_header) {
            builder = builder.principal_header(name);
        }
        if let Some(name) = header(&c.method_header) {
            builder = builder.method_header(name);
        }
        if let Some(name) = header(&c.credential_header) {
            builder = builder.credential_header(name);
        }
        if let Some(name) = header(&c.roles_header) {
            builder = builder.roles_header(name);
        }
        if let Some(name) = header(&c.scopes_header) {
            builder = builder.scopes_header(name);
        }
        if let Some(name) = header(&c.client_ip_header) {
            builder = builder.client_ip_header(name);
        }
        for (attribute, name) in &c.attributes {
            builder = builder.attribute_header(attribute.clone(), name.0.clone());
        }
        builder = builder.also_remove(c.also_remove.iter().map(|n| n.0.clone()));
        if let Some(methods) = &c.prefer {
            let mut prefer = Vec::new();
            for name in methods {
                let method = portcullis_core::AuthMethod::ALL
                    .into_iter()
                    .find(|m| m.as_str() == name.replace('-', "_"))
                    .ok_or_else(|| {
                        format!("prefer: {name:?} is not a method; use certificate, api-key, jwt or external")
                    })?;
                prefer.push(method);
            }
            builder = builder.prefer(prefer);
        }
        if let Some(a) = &c.assertion {
            builder = builder.assertion(a.header.0.clone(), self.assertion_issuer(a)?);
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// The token issuer of an identity assertion: its key read now.
    fn assertion_issuer(&self, a: &schema::IdentityAssertion) -> Result<TokenIssuer, String> {
        let algorithm = match &a.algorithm {
            Some(name) => Some(name.parse::<Algorithm>().map_err(|_| {
                format!("assertion.algorithm: {name:?} is not one; use EdDSA, ES256, ES384, RS256, PS256 or HS256")
            })?),
            None => None,
        };
        let key = match (&a.private_key_file, &a.secret_file) {
            (Some(path), None) => {
                let pem = std::fs::read(self.path(path))
                    .map_err(|e| format!("assertion.private_key_file: {}: {e}", path.display()))?;
                match algorithm.unwrap_or(Algorithm::EdDSA) {
                    Algorithm::EdDSA => SigningKey::ed_pem(&pem),
                    a @ (Algorithm::ES256 | Algorithm::ES384) => SigningKey::ec_pem(a, &pem),
                    a @ (Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) => SigningKey::rsa_pem(a, &pem),
                    other => return Err(format!("assertion.algorithm: {other:?} does not sign with a private key; use secret_file")),
                }
                .map_err(|e| format!("assertion.private_key_file: {e}"))?
            }
            (None, Some(path)) => {
                let secret = portcullis_jwt::read_secret_file(&self.path(path))
                    .map_err(|e| format!("assertion.secret_file: {e}"))?;
                SigningKey::hmac(algorithm.unwrap_or(Algorithm::HS256), &secret)
                    .map_err(|e| format!("assertion.secret_file: {e}"))?
            }
            _ => return Err("assertion: name one key, private_key_file or secret_file".into()),
        };
        let key = match &a.key_id {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        };
        let issuer = TokenIssuer::with_token_type(
            key,
            a.issuer.clone(),
            a.audience.clone(),
            a.token_type
                .clone()
                .unwrap_or_else(|| "identity+jwt".into()),
        )
        .map_err(|e| format!("assertion: {e}"))?;
        Ok(issuer.lifetime(a.lifetime.unwrap_or(std::time::Duration::from_secs(60))))
    }

    /// `redis_tls`: the files read now, so that a missing one stops the start.
    fn redis_tls(&self, files: &schema::ClientTlsFiles) -> Result<RedisTls, String> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(self.path(path))
                .map_err(|e| format!("redis_tls.{what}: {}: {e}", path.display()))
        };
        let mut tls = RedisTls::new();
        if let Some(path) = &files.ca_file {
            tls = tls.root_certificates(read("ca_file", path)?);
        }
        match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.client_certificate(read("cert_file", cert)?, read("key_file", key)?);
            }
            (None, None) => {}
            _ => return Err("redis_tls: cert_file and key_file go together".into()),
        }
        Ok(tls)
    }

    async fn rate_limit(
        &self,
        c: &schema::RateLimit,
        resolver: &ClientIpResolver,
    ) -> Result<RateLimitLayer, String> {
        let mut builder = RateLimitLayer::builder()
            .client_ip(resolver.clone())
            .headers_on_allowed(c.headers_on_allowed)
            .dry_run_headers(c.dry_run_headers);
        if let Some(every) = c.sweep_every {
            builder = builder.sweep_every(Some(every));
        }
        for q in &c.quotas {
            let mut quota = Quota::new(q.name.clone(), q.rate)
                .key(q.key.iter().map(|part| match part {
                    KeyPartName::ClientIp => KeyPart::ClientIp,
                    KeyPartName::Principal => KeyPart::Principal,
                    KeyPartName::Credential => KeyPart::Credential,
                    KeyPartName::Route => KeyPart::Route,
                    KeyPartName::RawPath => KeyPart::RawPath,
                    KeyPartName::Header(name) => KeyPart::Header(name.clone()),
                    KeyPartName::Attribute(name) => KeyPart::Attribute(name.clone()),
                }))
                .semantics(match q.semantics {
                    schema::SemanticsName::Smooth => Semantics::Smooth,
                    schema::SemanticsName::StrictWindow => Semantics::StrictWindow,
                })
                .charge(match q.charge {
                    schema::ChargeName::Every => Charge::Every,
                    schema::ChargeName::Unauthenticated => Charge::Unauthenticated,
                    schema::ChargeName::Never => Charge::Never,
                })
                .when_key_missing(match q.when_key_missing {
                    schema::MissingKeyName::Skip => MissingKey::Skip,
                    schema::MissingKeyName::Refuse => MissingKey::Refuse,
                })
                .mode(q.mode)
                .exact(q.exact);
            if let Some(burst) = q.burst {
                quota = quota.burst(burst);
            }
            if !q.paths.is_empty() {
                quota = quota.paths(q.paths.clone());
            }
            if let Some(ban) = &q.ban {
                quota = quota.ban(
                    Ban::after(ban.strikes, ban.window, ban.duration).respond_with(
                        match ban.status {
                            schema::BanStatusName::Forbidden => BanResponse::Forbidden,
                            schema::BanStatusName::TooManyRequests => BanResponse::TooManyRequests,
                        },
                    ),
                );
            }
            if let Some(bits) = q.ipv6_prefix {
                quota = quota.ipv6_prefix(bits);
            }
            if let Some(max) = q.max_tracked_keys {
                quota = quota.max_tracked_keys(
                    max.get(),
                    match q.on_key_overflow {
                        schema::KeyOverflowName::SharedBucket => KeyOverflow::SharedBucket,
                        schema::KeyOverflowName::Refuse => KeyOverflow::Refuse,
                    },
                );
            }
            for tier in &q.tiers {
                quota = match tier.burst {
                    Some(burst) => quota.tier_with_burst(tier.name.clone(), tier.rate, burst),
                    None => quota.tier(tier.name.clone(), tier.rate),
                };
            }
            builder = builder.quota(quota);
        }
        if let Some(url) = &c.redis {
            let backend = match &c.redis_tls {
                Some(files) => RedisBackend::connect_with_tls(url, self.redis_tls(files)?).await,
                None => RedisBackend::connect(url).await,
            };
            let mut backend =
                backend
                    .map_err(|e| format!("redis: {e}"))?
                    .on_failure(match c.redis_on_failure {
                        schema::RedisFailureName::LocalFallback => RedisFailure::LocalFallback,
                        schema::RedisFailureName::FailClosed => RedisFailure::FailClosed,
                        schema::RedisFailureName::FailOpen => RedisFailure::FailOpen,
                    });
            if let Some(timeout) = c.redis_timeout {
                backend = backend.timeout(timeout);
            }
            if let Some(pause) = c.redis_retry_after {
                backend = backend.retry_after(pause);
            }
            if let Some(namespace) = &c.redis_namespace {
                backend = backend.namespace(namespace.clone());
            }
            if let Some(instances) = c.redis_instances {
                backend = backend.instances(instances.get());
            }
            if let Some(every) = c.redis_heartbeat_every {
                backend = backend.heartbeat_every(every);
            }
            if let Some(ttl) = c.redis_lease_ttl {
                backend = backend.lease_ttl(ttl);
            }
            if let Some(max) = c.redis_max_lease {
                if max.get() > 1_000 {
                    return Err(format!(
                        "redis_max_lease = {max}: a lease holds at most 1000 permits"
                    ));
                }
                backend = backend.max_lease(max.get());
            }
            builder = builder.redis(backend);
        } else if c.redis_timeout.is_some()
            || c.redis_retry_after.is_some()
            || c.redis_namespace.is_some()
            || c.redis_instances.is_some()
            || c.redis_heartbeat_every.is_some()
            || c.redis_lease_ttl.is_some()
            || c.redis_tls.is_some()
            || c.redis_max_lease.is_some()
            || c.redis_on_failure != schema::RedisFailureName::LocalFallback
        {
            return Err("the redis_* settings (redis_timeout, redis_on_failure, redis_lease_ttl, …) need redis = \"redis://…\"".into());
        }
        builder.build().map_err(|e| e.to_string())
    }
}

/// The layer's `identify`, with `trust_domains` (only for, and required by, "spiffe").
fn spiffe_or(c: &schema::MtlsIdentity) -> Result<Identify, String> {
    let identify = match c.identify {
        schema::IdentifyName::Thumbprint => Identify::Thumbprint,
        schema::IdentifyName::CommonName => Identify::CommonName,
        schema::IdentifyName::DnsName => Identify::DnsName,
        schema::IdentifyName::Uri => Identify::Uri,
        schema::IdentifyName::Email => Identify::Email,
        schema::IdentifyName::Spiffe => {
            if c.trust_domains.is_empty() {
                return Err(
                    "identify = \"spiffe\" needs the trust domains it accepts: trust_domains = [\"prod.example\"]"
                        .into(),
                );
            }
            let trust_domains = c
                .trust_domains
                .iter()
                .map(|name| {
                    name.parse::<TrustDomain>()
                        .map_err(|e| format!("trust_domains: {name:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            return Ok(Identify::Spiffe { trust_domains });
        }
    };
    if !c.trust_domains.is_empty() {
        return Err("trust_domains applies only with identify = \"spiffe\"".into());
    }
    Ok(identify)
}

/// An ext-authz layer from its `[[layer]]` entry.
fn ext_authz(
    c: &schema::ExtAuthz,
    resolver: &ClientIpResolver,
) -> Result<portcullis_ext_authz::ExtAuthzLayer, String> {
    use portcullis_ext_authz::{CheckEncoding, ExtAuthzLayer, FailureMode};
    let names =
        |list: &[schema::HeaderNameText]| list.iter().map(|n| n.0.clone()).collect::<Vec<_>>();
    let mut builder = ExtAuthzLayer::builder(c.url.clone())
        .client_ip(resolver.clone())
        .on_failure(match c.on_failure {
            schema::ExtAuthzFailureName::Closed => FailureMode::Closed,
            schema::ExtAuthzFailureName::Open => FailureMode::Open,
        })
        .encoding(match c.encoding {
            schema::ExtAuthzEncodingName::Json => CheckEncoding::Json,
            schema::ExtAuthzEncodingName::Headers => CheckEncoding::Headers,
        })
        .forward_headers(names(&c.forward_headers))
        .upstream_headers(names(&c.upstream_headers))
        .pass_denial_body(c.pass_denial_body);
    if let Some(timeout) = c.timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(list) = &c.denial_headers {
        builder = builder.denial_headers(names(list));
    }
    if let Some(name) = &c.principal_header {
        builder = builder.principal_header(name.0.clone());
    }
    if let Some(name) = &c.roles_header {
        builder = builder.roles_header(name.0.clone());
    }
    for (attribute, header) in &c.attributes {
        builder = builder.attribute_header(header.0.clone(), attribute.clone());
    }
    if let Some(cache) = &c.cache {
        builder = builder.cache(
            cache.ttl,
            cache.max_entries.get(),
            cache.key.iter().map(|part| part.0.clone()),
        );
    }
    builder.build().map_err(|e| e.to_string())
}
