//! The layer, its builder and its service.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
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
use crate::engine::{Deferred, Engine, Refusal, Verdict};
use crate::future::{After, ResponseFuture};
use crate::headers::{self, Report};
use crate::key::KeySource;
use crate::quota::{self, BanResponse, ConfigError, KeyPart, Quota};
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
}

impl Shared {
    /// The in-process decision.
    pub(crate) fn decide_locally<B>(
        &self,
        request: &Request<B>,
        client: Option<IpAddr>,
    ) -> Verdict {
        self.engine
            .decide(&self.source(request, client), self.headers_on_allowed)
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
        let auth = match self.engine.reads_principals {
            true => request.extensions().get::<Authentication>(),
            false => None,
        };
        KeySource {
            head: crate::quota::RequestHead {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                extensions: request.extensions(),
            },
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
            return redis.refund_deferred(deferred);
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
        let quota = match refusal {
            Refusal::Limited { quota, .. }
            | Refusal::AtCapacity { quota, .. }
            | Refusal::Banned { quota, .. }
            | Refusal::KeyMissing { quota, .. } => Some(self.engine.name(quota)),
            Refusal::ClientIp(_) | Refusal::Unavailable => None,
        };
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

    fn rejection(&self, refusal: Refusal) -> Rejection {
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

/// Lists and lifts bans, sweeps idle keys, and reports how many keys are tracked.
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

    /// Drops idle keys now, as the scheduled sweep does. Returns how many.
    pub fn sweep(&self) -> usize {
        self.shared.engine.sweep()
    }

    /// How many keys the quota named `quota` tracks in process, or `None` if there is
    /// no such quota.
    pub fn tracked_keys(&self, quota: &str) -> Option<usize> {
        self.shared.engine.tracked(quota)
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
                crate::redis::Route::Local => {}
                crate::redis::Route::Unavailable => {
                    return ResponseFuture::rejected(shared.refuse(
                        &request,
                        Refusal::Unavailable,
                        &[],
                    ))
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
