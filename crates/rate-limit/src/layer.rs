//! The layer, its builder and its service.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use portcullis_core::{
    AuditNote, AuditRecord, Authentication, ClientIp, ClientIpError, ClientIpResolver, Clock,
    Decision, Rejection, RenderRejection, Renderer,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::ban::BanEntry;
use crate::check::{CheckKeyError, QuotaCheck, RateLimitCheck};
use crate::engine::{Applied, CompiledQuota, Deferred, Engine, Refusal, Verdict};
use crate::future::{After, ResponseFuture};
use crate::headers::{self, Report};
use crate::key::KeySource;
use crate::quota::{self, BanResponse, ConfigError, KeyPart, Mode, Quota};
use crate::LAYER_NAME;

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the layer"]
pub struct RateLimitBuilder {
    quotas: Vec<Quota>,
    clock: Option<Clock>,
    resolver: ClientIpResolver,
    renderer: Renderer,
    headers_on_allowed: bool,
    dry_run_headers: bool,
    sweep_every: Option<Duration>,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisBackend>,
}

impl RateLimitBuilder {
    /// Adds a quota. A request is charged to every quota that applies to it.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// Adds several quotas.
    pub fn quotas(mut self, quotas: impl IntoIterator<Item = Quota>) -> Self {
        self.quotas.extend(quotas);
        self
    }

    /// The clock quotas are measured with. Tests use a manual clock to step across a
    /// boundary without sleeping; with Redis, a manual clock's time is also sent to the
    /// server instead of its own `TIME`.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How the client address is resolved for [`KeyPart::ClientIp`]. Use the same
    /// resolver as the other layers.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.renderer = Renderer::new(renderer);
        self
    }

    /// Also sends `RateLimit-Policy` and `RateLimit` on allowed responses. Refusals
    /// always carry them.
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }

    /// Whether quotas in [`Mode::DryRun`](crate::Mode::DryRun) send their RateLimit
    /// headers (off by default: a dry run changes nothing a client sees). When on, they
    /// are sent as [`headers_on_allowed`](Self::headers_on_allowed) says, and a
    /// request a dry-run quota would have refused carries that quota's line.
    pub fn dry_run_headers(mut self, on: bool) -> Self {
        self.dry_run_headers = on;
        self
    }

    /// How often idle keys are dropped, by a thread of the layer's own (every 60 s by
    /// default). `None` leaves it to the host, through [`RateLimitHandle::sweep`].
    pub fn sweep_every(mut self, every: Option<Duration>) -> Self {
        self.sweep_every = every;
        self
    }

    /// Shares the quotas and bans with other instances through Redis. The in-process
    /// quotas become the fallback for when Redis cannot answer.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: crate::redis::RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// Checks the quotas and builds the layer. Every service the layer makes shares
    /// one state.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        quota::validate(&self.quotas)?;
        // A zero interval would sweep without pause on the layer's thread.
        if self.sweep_every.is_some_and(|every| every.is_zero()) {
            return Err(ConfigError::ZeroDuration("sweep_every"));
        }
        #[cfg(feature = "redis")]
        if self
            .redis
            .as_ref()
            .is_some_and(|backend| backend.timeout.is_zero())
        {
            return Err(ConfigError::ZeroDuration("RedisBackend::timeout"));
        }
        let needs_client_ip = self
            .quotas
            .iter()
            .any(|q| q.key.iter().any(|part| matches!(part, KeyPart::ClientIp)));
        let engine = Engine::new(
            self.quotas,
            self.clock.unwrap_or_default(),
            self.sweep_every,
            self.dry_run_headers,
        );
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                #[cfg(feature = "redis")]
                redis: self.redis.map(|backend| backend.attach(engine.clone())),
                engine,
                resolver: self.resolver,
                renderer: self.renderer,
                headers_on_allowed: self.headers_on_allowed,
                needs_client_ip,
                #[cfg(feature = "redis")]
                shares: std::sync::RwLock::new(None),
            }),
        })
    }
}

pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    resolver: ClientIpResolver,
    renderer: Renderer,
    pub(crate) headers_on_allowed: bool,
    needs_client_ip: bool,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::redis::Attached>,
    /// The per-instance shares of the quotas, for an instance count, made when first
    /// needed.
    #[cfg(feature = "redis")]
    shares: std::sync::RwLock<Option<(u32, Arc<Engine>)>>,
}

impl Shared {
    /// The in-process decision.
    pub(crate) fn decide_locally<B>(
        &self,
        request: &Request<B>,
        client: Option<IpAddr>,
    ) -> Verdict {
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return self
                .local_engine()
                .decide(&self.source(request, client), self.headers_on_allowed);
        }
        self.engine
            .decide(&self.source(request, client), self.headers_on_allowed)
    }

    /// The per-instance shares, if they have been made (Redis was out at some point).
    #[cfg(feature = "redis")]
    fn made_shares(&self) -> Option<Arc<Engine>> {
        self.shares
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, engine)| engine.clone())
    }

    /// The quotas an instance keeps while Redis cannot answer: its share of each, by
    /// the expected instance count (the layer's own quotas for one instance).
    #[cfg(feature = "redis")]
    fn local_engine(&self) -> Arc<Engine> {
        let instances = self
            .redis
            .as_ref()
            .map_or(1, crate::redis::Attached::expected_instances);
        if instances <= 1 {
            return self.engine.clone();
        }
        if let Some((n, engine)) = &*self.shares.read().unwrap_or_else(PoisonError::into_inner) {
            if *n == instances {
                return engine.clone();
            }
        }
        let mut shares = self.shares.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have made it while this one waited for the lock.
        if let Some((n, engine)) = &*shares {
            if *n == instances {
                return engine.clone();
            }
        }
        let quotas = self
            .engine
            .quotas
            .iter()
            .map(|compiled| compiled.quota.share(instances).mode(compiled.mode()))
            .collect();
        let engine = Engine::new(
            quotas,
            self.engine.clock.clone(),
            self.engine.sweep_every,
            self.engine.dry_run_headers,
        );
        tracing::info!(
            instances,
            "rate-limit: quotas shared by instances while Redis cannot answer"
        );
        *shares = Some((instances, engine.clone()));
        engine
    }

    /// The client address under this layer's resolver: the one an outer layer resolved
    /// with the same trust configuration, or resolved here (never one resolved under
    /// another configuration). Behind trusted proxies the result is stored for the
    /// layers that follow (parsing the forwarding header again would cost more);
    /// without them it is only the socket peer, cheaper to read again than to store.
    fn client_ip<B>(&self, request: &mut Request<B>) -> Result<ClientIp, ClientIpError> {
        if self.resolver.trusted_proxies().is_empty() {
            return self
                .resolver
                .resolve_reusing(request.extensions(), request.headers());
        }
        self.resolver.resolve_request(request)
    }

    /// What the quotas' keys are read from. The principals are looked up only if a
    /// quota reads them.
    fn source<'a, B>(&self, request: &'a Request<B>, client: Option<IpAddr>) -> KeySource<'a> {
        self.source_of(
            crate::quota::RequestHead {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                extensions: request.extensions(),
            },
            client,
        )
    }

    fn source_of<'a>(
        &self,
        head: crate::quota::RequestHead<'a>,
        client: Option<IpAddr>,
    ) -> KeySource<'a> {
        let auth = match self.engine.reads_principals {
            true => head.extensions.get::<Authentication>(),
            false => None,
        };
        KeySource {
            head,
            client,
            auth: auth.unwrap_or(Authentication::empty()),
        }
    }

    /// The decision after Redis failed to answer, by the failure policy.
    #[cfg(feature = "redis")]
    pub(crate) fn decide_without_redis<B>(
        &self,
        request: &Request<B>,
        client: Option<IpAddr>,
    ) -> Verdict {
        match self.redis.as_ref().map(crate::redis::Attached::fallback) {
            Some(crate::redis::Route::Unavailable) => Verdict::refused(Refusal::Unavailable),
            Some(crate::redis::Route::Open) => Verdict::default(),
            _ => self.decide_locally(request, client),
        }
    }

    /// Refunds the reservations of quotas that count failed authentication, for an
    /// answer that was not a 401: at once in process, or through the returned future
    /// with Redis.
    pub(crate) fn refund_deferred(
        &self,
        deferred: Vec<Deferred>,
    ) -> Option<crate::future::PendingCharge> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            // Reservations taken in process (Redis was out) go back where they were
            // taken.
            if deferred
                .iter()
                .all(|one| one.digest.is_some() || one.spend.is_some())
            {
                return redis.refund_deferred(deferred);
            }
            self.local_engine().refund_deferred(&deferred);
            return None;
        }
        self.engine.refund_deferred(&deferred);
        None
    }

    pub(crate) fn write_reports(&self, headers: &mut http::HeaderMap, reports: &[Report]) {
        headers::write(headers, reports, |quota| self.engine.name(quota));
    }

    /// The response for a refused request.
    pub(crate) fn refuse<ReqBody, ResBody>(
        &self,
        request: &Request<ReqBody>,
        refusal: Refusal,
        reports: &[Report],
    ) -> Response<portcullis_core::RejectOrBody<ResBody>> {
        let rejection = self.rejection(refusal);
        let quota = refusal.quota().map(|quota| self.engine.name(quota));
        tracing::debug!(
            code = rejection.code(),
            quota = quota.unwrap_or("-"),
            "rate-limit refused a request"
        );
        AuditRecord::note(request.extensions(), || {
            let note =
                AuditNote::deny(LAYER_NAME, rejection.code()).detail(rejection.detail().to_owned());
            match quota {
                Some(name) => note.rule(name.to_owned()),
                None => note,
            }
        });
        let mut response = self.renderer.respond(LAYER_NAME, &rejection, request);
        self.write_reports(response.headers_mut(), reports);
        response
    }

    /// Reports what dry-run quotas would have refused: an audit note per quota, a
    /// metric, and a throttled log line.
    pub(crate) fn note_dry_runs(&self, extensions: &http::Extensions, dry_run: &[Refusal]) {
        for refusal in dry_run {
            let rejection = self.rejection(*refusal);
            let name = refusal.quota().map_or("-", |quota| self.engine.name(quota));
            metrics::counter!(
                "portcullis_rate_limit_dry_run_total",
                "quota" => name.to_owned(),
                "code" => rejection.code(),
            )
            .increment(1);
            portcullis_core::log_throttled!(
                info,
                quota = name,
                code = rejection.code(),
                "rate-limit: a dry-run quota would have refused a request"
            );
            AuditRecord::note(extensions, || {
                AuditNote::new(LAYER_NAME, Decision::Allow)
                    .code("dry_run")
                    .rule(name.to_owned())
                    .detail(format!(
                        "dry run: would have refused with {} {}: {}",
                        rejection.status().as_u16(),
                        rejection.code(),
                        rejection.detail()
                    ))
            });
        }
    }

    pub(crate) fn rejection(&self, refusal: Refusal) -> Rejection {
        match refusal {
            Refusal::Limited { quota, retry_after } => Rejection::too_many_requests(
                "rate_limited",
                format!(
                    "too many requests under quota `{}`; retry after the time in Retry-After",
                    self.engine.name(quota)
                ),
                retry_after,
            ),
            Refusal::AtCapacity { quota, retry_after } => Rejection::too_many_requests(
                "rate_limit_capacity",
                format!(
                    "quota `{}` is tracking as many clients as it may; retry later",
                    self.engine.name(quota)
                ),
                retry_after,
            ),
            Refusal::Banned { quota, remaining } => {
                let detail = format!(
                    "this client is banned for repeatedly exceeding quota `{}`",
                    self.engine.name(quota)
                );
                let response = self.engine.quotas[quota]
                    .bans
                    .as_ref()
                    .map_or(BanResponse::Forbidden, |bans| bans.rule().response());
                match response {
                    // A 403 still says when the ban ends.
                    BanResponse::Forbidden => {
                        Rejection::forbidden("banned", detail).with_retry_after(remaining)
                    }
                    BanResponse::TooManyRequests => {
                        Rejection::too_many_requests("banned", detail, remaining)
                    }
                }
            }
            Refusal::KeyMissing {
                quota,
                needs_principal,
            } => {
                let name = self.engine.name(quota);
                if needs_principal {
                    Rejection::unauthorized(
                        "rate_limit_key_missing",
                        format!("quota `{name}` counts per principal and the request is not authenticated"),
                    )
                } else {
                    Rejection::bad_request(
                        "rate_limit_key_missing",
                        format!("quota `{name}` needs a part of the request that is missing"),
                    )
                }
            }
            Refusal::ClientIp(error) => error.to_rejection(),
            Refusal::Unavailable => Rejection::unavailable(
                "rate_limit_unavailable",
                "rate limits cannot be checked right now; try again later",
            ),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quotas: Vec<&Quota> = self.engine.quotas.iter().map(|c| &c.quota).collect();
        f.debug_struct("RateLimit")
            .field("quotas", &quotas)
            .field("resolver", &self.resolver)
            .field("headers_on_allowed", &self.headers_on_allowed)
            .finish_non_exhaustive()
    }
}

/// Charges quotas per client IP, principal, credential, header or route, and refuses
/// with 429 beyond them. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A builder with no quotas, the system clock, no trusted proxies, headers on
    /// refusals only, and a sweep every 60 seconds.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            quotas: Vec::new(),
            clock: None,
            resolver: ClientIpResolver::new(),
            renderer: Renderer::default(),
            headers_on_allowed: false,
            dry_run_headers: false,
            sweep_every: Some(Duration::from_secs(60)),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// A handle to the layer's state: bans, sweeping, tracked keys.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Lists and lifts bans, switches quotas between enforcing and a dry run, checks
/// requests and keys without charging them, sweeps idle keys, and reports how many keys
/// are tracked.
#[derive(Clone, Debug)]
pub struct RateLimitHandle {
    shared: Arc<Shared>,
}

impl RateLimitHandle {
    /// The in-process bans in force. With Redis, see
    /// `RateLimitHandle::shared_bans` (feature `redis`).
    pub fn bans(&self) -> Vec<BanEntry> {
        self.shared.engine.bans()
    }

    /// Lifts the in-process ban of `key` (as [`BanEntry::key`] shows it) under
    /// `quota`. Returns whether there was one.
    pub fn lift_ban(&self, quota: &str, key: &str) -> bool {
        self.shared.engine.lift_ban(quota, key)
    }

    /// Drops idle keys now, as the scheduled sweep does (the per-instance shares kept
    /// while Redis is out included). Returns how many.
    pub fn sweep(&self) -> usize {
        #[cfg(feature = "redis")]
        if let Some(shares) = self.shared.made_shares() {
            return self.shared.engine.sweep() + shares.sweep();
        }
        self.shared.engine.sweep()
    }

    /// How many keys the quota named `quota` tracks in process, or `None` if there is
    /// no such quota.
    pub fn tracked_keys(&self, quota: &str) -> Option<usize> {
        self.shared.engine.tracked(quota)
    }

    /// The mode of the quota named `quota`, or `None` if there is no such quota.
    pub fn mode(&self, quota: &str) -> Option<Mode> {
        self.compiled(quota).map(CompiledQuota::mode)
    }

    /// Every quota's name and mode, in the layer's order.
    pub fn modes(&self) -> Vec<(String, Mode)> {
        self.shared
            .engine
            .quotas
            .iter()
            .map(|c| (c.quota.name.clone(), c.mode()))
            .collect()
    }

    /// Switches the quota named `quota` between enforcing and a dry run, at once for
    /// every request that comes after. Returns the mode it had, or `None` if there is
    /// no such quota. Logged at `info`, with both modes.
    pub fn set_mode(&self, quota: &str, mode: Mode) -> Option<Mode> {
        let previous = self.compiled(quota)?.set_mode(mode);
        #[cfg(feature = "redis")]
        if let Some(shares) = self.shared.made_shares() {
            if let Some(compiled) = shares.quotas.iter().find(|c| c.quota.name == quota) {
                compiled.set_mode(mode);
            }
        }
        tracing::info!(quota, from = %previous, to = %mode, "rate-limit: quota mode set");
        Some(previous)
    }

    fn compiled(&self, quota: &str) -> Option<&CompiledQuota> {
        self.shared
            .engine
            .quotas
            .iter()
            .find(|c| c.quota.name == quota)
    }

    /// What a request with these parts would get now (allowed, remaining, reset per
    /// quota), without charging it and without counting a strike. With Redis it asks
    /// Redis (one round trip); if Redis cannot answer, the failure policy applies: the
    /// in-process state, or a refusal `rate_limit_unavailable`. The client address is
    /// resolved as for a request; an outer layer's principals in the extensions are
    /// read as the quotas' keys need them.
    ///
    /// ```
    /// use portcullis_rate_limit::{Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::builder()
    ///     .quota(Quota::new("per-ip", "2/s".parse()?))
    ///     .build()?;
    /// let (mut parts, ()) = http::Request::new(()).into_parts();
    /// parts
    ///     .extensions
    ///     .insert(portcullis_core::PeerAddr("192.0.2.7:4000".parse()?));
    /// let check = layer.handle().check(&parts).await;
    /// assert!(check.allowed);
    /// assert_eq!(check.quotas[0].remaining, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check(&self, request: &http::request::Parts) -> RateLimitCheck {
        let shared = &*self.shared;
        let client = match shared.needs_client_ip {
            true => match shared
                .resolver
                .resolve_reusing(&request.extensions, &request.headers)
            {
                Ok(client) => Some(client.ip()),
                Err(error) => return RateLimitCheck::refused(error.to_rejection().code()),
            },
            false => None,
        };
        let source = shared.source_of(
            crate::quota::RequestHead {
                method: &request.method,
                uri: &request.uri,
                headers: &request.headers,
                extensions: &request.extensions,
            },
            client,
        );
        let applied = match shared.engine.applied_all(&source) {
            Ok(applied) => applied,
            Err(refusal) => return RateLimitCheck::refused(shared.rejection(refusal).code()),
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = &shared.redis {
            let calls = redis.peek_calls(&applied, &source);
            match (redis.peek(&calls).await, redis.failure()) {
                (Some(quotas), _) => return RateLimitCheck::from_quotas(quotas),
                (None, crate::RedisFailure::FailClosed) => {
                    return RateLimitCheck::refused("rate_limit_unavailable")
                }
                // Unlimited while Redis is out: nothing to report per quota.
                (None, crate::RedisFailure::FailOpen) => {
                    return RateLimitCheck::from_quotas(Vec::new())
                }
                (None, _) => {}
            }
        }
        let quotas = applied.iter().map(|one| shared.engine.peek(one)).collect();
        RateLimitCheck::from_quotas(quotas)
    }

    /// What quota `quota` would answer now for the key whose parts have the values
    /// `key`, one per part of the quota's key, in order: an address for
    /// [`KeyPart::ClientIp`] (grouped by the quota's IPv6 prefix), the id for a
    /// principal, credential, attribute, header or custom part, and `"METHOD /path"`
    /// for a route or raw path. `tier` names a tier of the quota (`None`: its base
    /// rate). Nothing is charged and no strike is counted; with Redis it asks Redis,
    /// as [`check`](Self::check) does.
    ///
    /// ```
    /// use portcullis_rate_limit::{KeyPart, MissingKey, Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::builder()
    ///     .quota(
    ///         Quota::new("per-key", "100 per 1m".parse()?)
    ///             .key([KeyPart::Credential])
    ///             .when_key_missing(MissingKey::Skip),
    ///     )
    ///     .build()?;
    /// let check = layer.handle().check_key("per-key", None, &["key-7"]).await?;
    /// assert_eq!((check.allowed, check.remaining), (true, 100));
    /// assert!(layer.handle().check_key("per-key", None, &[]).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check_key(
        &self,
        quota: &str,
        tier: Option<&str>,
        key: &[&str],
    ) -> Result<QuotaCheck, CheckKeyError> {
        let engine = &self.shared.engine;
        let index = engine
            .quotas
            .iter()
            .position(|c| c.quota.name == quota)
            .ok_or_else(|| CheckKeyError::UnknownQuota(quota.to_owned()))?;
        let compiled = &engine.quotas[index].quota;
        let tier_index =
            engine
                .tier_named(index, tier)
                .ok_or_else(|| CheckKeyError::UnknownTier {
                    quota: quota.to_owned(),
                    tier: tier.unwrap_or_default().to_owned(),
                })?;
        let hash = crate::key::hash_values(&compiled.key, compiled.ipv6_prefix, key, &engine.seed)
            .map_err(|error| CheckKeyError::from_value(quota, error))?;
        let applied = Applied {
            quota: index,
            tier: tier_index,
            key: hash,
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            if let Some(call) = redis.peek_key_call(applied, key) {
                match redis.peek(std::slice::from_ref(&call)).await {
                    Some(mut answer) if answer.len() == 1 => return Ok(answer.remove(0)),
                    _ if redis.failure() != crate::RedisFailure::LocalFallback => {
                        return Err(CheckKeyError::Unavailable)
                    }
                    _ => {}
                }
            }
        }
        Ok(engine.peek(&applied))
    }

    /// How many instances this one counts on sharing its quotas with through Redis
    /// (`RedisBackend::instances`, or learned from the heartbeats); `None` without
    /// Redis.
    #[cfg(feature = "redis")]
    pub fn expected_instances(&self) -> Option<u32> {
        self.shared
            .redis
            .as_ref()
            .map(crate::redis::Attached::expected_instances)
    }

    /// The bans in force in Redis, shared by every instance.
    #[cfg(feature = "redis")]
    pub async fn shared_bans(&self) -> Result<Vec<BanEntry>, crate::redis::RedisError> {
        match &self.shared.redis {
            Some(redis) => redis.bans().await,
            None => Ok(Vec::new()),
        }
    }

    /// Lifts a ban held in Redis. Returns whether there was one.
    #[cfg(feature = "redis")]
    pub async fn lift_shared_ban(
        &self,
        quota: &str,
        key: &str,
    ) -> Result<bool, crate::redis::RedisError> {
        match &self.shared.redis {
            Some(redis) => redis.lift_ban(quota, key).await,
            None => Ok(false),
        }
    }
}

/// The service built by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<portcullis_core::RejectOrBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let client = if shared.needs_client_ip {
            match shared.client_ip(&mut request) {
                Ok(client) => Some(client.ip()),
                Err(error) => {
                    return ResponseFuture::rejected(shared.refuse(
                        &request,
                        Refusal::ClientIp(error),
                        &[],
                    ))
                }
            }
        } else {
            None
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = &shared.redis {
            match redis.decide(&shared.source(&request, client), shared.headers_on_allowed) {
                crate::redis::Route::Redis(pending) => {
                    // The clone goes back in place; the instance that was polled ready
                    // serves this request once Redis has answered.
                    let clone = self.inner.clone();
                    let inner = std::mem::replace(&mut self.inner, clone);
                    return ResponseFuture::deciding(
                        pending,
                        inner,
                        request,
                        client,
                        self.shared.clone(),
                    );
                }
                crate::redis::Route::Decided(verdict) => {
                    return after_verdict(&self.shared, &mut self.inner, request, verdict)
                }
                crate::redis::Route::Local => {}
                crate::redis::Route::Unavailable => {
                    return ResponseFuture::rejected(shared.refuse(
                        &request,
                        Refusal::Unavailable,
                        &[],
                    ))
                }
                crate::redis::Route::Open => {
                    return after_verdict(
                        &self.shared,
                        &mut self.inner,
                        request,
                        Verdict::default(),
                    )
                }
            }
        }
        let verdict = shared.decide_locally(&request, client);
        after_verdict(&self.shared, &mut self.inner, request, verdict)
    }
}

/// Refuses, or calls the inner service and arranges what happens to its response.
#[inline]
pub(crate) fn after_verdict<S, ReqBody, ResBody>(
    shared: &Arc<Shared>,
    inner: &mut S,
    request: Request<ReqBody>,
    verdict: Verdict,
) -> ResponseFuture<S::Future, ResBody, S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if !verdict.dry_run.is_empty() {
        shared.note_dry_runs(request.extensions(), &verdict.dry_run);
    }
    if let Some(refusal) = verdict.refusal {
        return ResponseFuture::rejected(shared.refuse(&request, refusal, &verdict.reports));
    }
    portcullis_core::count_allowed(LAYER_NAME);
    AuditRecord::note(request.extensions(), || {
        AuditNote::new(LAYER_NAME, Decision::Allow)
    });
    let after = (!verdict.reports.is_empty() || !verdict.deferred.is_empty()).then(|| {
        Box::new(After {
            shared: shared.clone(),
            reports: verdict.reports,
            deferred: verdict.deferred,
        })
    });
    ResponseFuture::calling(inner.call(request), after)
}
