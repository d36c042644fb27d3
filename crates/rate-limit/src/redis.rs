//! Quotas and bans shared by many instances through Redis.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};

use crate::ban::BanEntry;
use crate::check::QuotaCheck;
use crate::engine::{Applied, Deferred, Engine, Refusal, Verdict};
use crate::future::{PendingCharge, PendingVerdict};
use crate::key::{self, KeySource};
use crate::lease::{Entry, GiveBack, Leases, Spend, Take};
use crate::quota::{Charge, Semantics};
use crate::redis_link::{Connection, Links, RedisTls, Target};

/// What the layer does when Redis cannot answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisFailure {
    /// Decide with the in-process quotas (the default): each instance still throttles
    /// on its own until Redis is back.
    #[default]
    LocalFallback,
    /// Refuse with 503 `rate_limit_unavailable`.
    FailClosed,
    /// Let every request through, unlimited, until Redis answers again: for quotas
    /// that protect capacity rather than guard against abuse, where an outage of the
    /// limiter must not become an outage of the service. Bans and failed-login
    /// throttles are not enforced meanwhile either.
    FailOpen,
}

/// A Redis error, without the connection URL (which may hold a password).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The client or the server refused: the error's kind and the server's message.
    #[error("redis: {0}")]
    Redis(String),
    /// No answer within the backend's timeout.
    #[error("redis: timed out")]
    TimedOut,
    /// The script answered something other than four values per quota.
    #[error("redis: the script returned {got} values for {quotas} quotas")]
    UnexpectedAnswer {
        /// How many values came back.
        got: usize,
        /// How many quotas were asked about.
        quotas: usize,
    },
}

impl From<redis::RedisError> for RedisError {
    fn from(error: redis::RedisError) -> Self {
        // The kind and the server's message; never the connection info.
        Self::Redis(match error.detail() {
            Some(detail) => format!("{:?}: {detail}", error.kind()),
            None => format!("{:?}", error.kind()),
        })
    }
}

/// A Redis server shared by many instances of the layer.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use portcullis_rate_limit::{Quota, RateLimitLayer, RedisBackend, RedisFailure};
///
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379/")
///     .await?
///     .namespace("my-api")
///     .timeout(Duration::from_millis(20))
///     .on_failure(RedisFailure::LocalFallback);
/// let layer = RateLimitLayer::builder()
///     .quota(Quota::new("per-ip", "100/s".parse()?))
///     .redis(redis)
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    target: Target,
    namespace: String,
    pub(crate) timeout: Duration,
    failure: RedisFailure,
    retry_after: Duration,
    instances: u32,
    heartbeat_every: Duration,
    lease_ttl: Duration,
    max_lease: u32,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("retry_after", &self.retry_after)
            .field("instances", &self.instances)
            .field("heartbeat_every", &self.heartbeat_every)
            .field("lease_ttl", &self.lease_ttl)
            .field("max_lease", &self.max_lease)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for the Redis at `url`:
    ///
    /// - one server: `redis://[user:password@]host:port/db`, `rediss://` for TLS;
    /// - a Redis Cluster: `redis+cluster://[user:password@]node1:7000,node2:7001/`
    ///   (any of its nodes; `rediss+cluster://` for TLS);
    /// - the master that Redis Sentinel names:
    ///   `redis+sentinel://[user:password@]sentinel1:26379,sentinel2:26379/MASTER[/db]`
    ///   (user and password are the data nodes'); after a failover the next request
    ///   asks Sentinel again.
    ///
    /// It connects on first use and reconnects by itself, so an instance starts even
    /// while Redis is down. On a cluster, each quota's keys share a slot (the key's
    /// digest is their hash tag); a request whose quotas key on different things is
    /// one script call per slot, and what one call charged is given back when another
    /// refuses.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Self::with_target(Target::parse(url, None)?)
    }

    /// Like [`connect`](Self::connect), for `rediss://` (and `rediss+cluster://`,
    /// `rediss+sentinel://`) with certificates of your own: a CA to trust instead of
    /// the system's roots, and a client certificate if the servers ask for one.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use portcullis_rate_limit::{RedisBackend, RedisTls};
    ///
    /// let tls = RedisTls::new()
    ///     .root_certificates(std::fs::read("redis-ca.pem")?)
    ///     .client_certificate(std::fs::read("client.pem")?, std::fs::read("client-key.pem")?);
    /// let redis = RedisBackend::connect_with_tls("rediss://redis.internal:6380/", tls).await?;
    /// # let _ = redis;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with_tls(url: &str, tls: RedisTls) -> Result<Self, RedisError> {
        Self::with_target(Target::parse(url, Some(&tls))?)
    }

    fn with_target(target: Target) -> Result<Self, RedisError> {
        Ok(Self {
            target,
            namespace: "portcullis".to_owned(),
            timeout: Duration::from_millis(50),
            failure: RedisFailure::LocalFallback,
            retry_after: Duration::from_secs(1),
            instances: 0,
            heartbeat_every: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(1),
            max_lease: 64,
        })
    }

    /// How long an instance may spend a lease (1 s by default). A key far from its
    /// limit costs a round trip per lease instead of per request: the instance takes
    /// a few permits from Redis at once (counted there when granted) and spends them in
    /// process. Redis grants at most half of what is left of a key's quota, so near the
    /// boundary leases shrink to one permit and every request is decided in Redis: the
    /// count there stays exact. What a lease has left at its end goes back to Redis.
    ///
    /// A lease never holds more than this TTL's worth of the quota's rate: a quota
    /// too slow for two permits per TTL (100 per minute under the 1 s default) is
    /// decided per request. Longer TTLs lease more of slow quotas and save more round
    /// trips; shorter ones keep an instance's unspent permits (and a ban set by another
    /// instance, seen at the next renewal) less time away from the others.
    /// `Duration::ZERO` turns leases off: every request is a round trip, as with
    /// [`Quota::exact`](crate::Quota::exact) on every quota.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The most permits one lease holds (64 by default; at most 1,000). A lease's size
    /// follows the key's recent rate on the instance (a TTL's worth of it); this bounds
    /// it, and so bounds how much of a key's quota one instance can hold unspent. 1
    /// turns leases off.
    pub fn max_lease(mut self, permits: u32) -> Self {
        self.max_lease = permits.min(1_000);
        self
    }

    /// How many instances share the quotas. While Redis cannot answer and the policy
    /// is [`RedisFailure::LocalFallback`], each instance allows its share of every
    /// quota (`count / instances` and `burst / instances`, at least 1), so that the
    /// instances together stay near the quota instead of admitting it once each.
    /// Without this setting (or with 0) the count is learned from the instances'
    /// heartbeats while Redis was up ([`heartbeat_every`](Self::heartbeat_every)); an
    /// instance that has learned nothing yet allows the whole quota.
    pub fn instances(mut self, count: u32) -> Self {
        self.instances = count;
        self
    }

    /// How often an instance says it is alive in Redis (5 s by default): a sorted set
    /// `{namespace}:instances` whose members not heard from in three intervals are
    /// dropped. Its size is the learned instance count.
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat_every = every;
        self
    }

    /// The prefix of every key the layer writes (`portcullis` by default). Instances
    /// that share quotas use the same namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The whole budget of a request's Redis work (50 ms by default): connecting (or
    /// reconnecting), sending and the answer, a retry on a fresh connection included.
    /// Past it, the failure policy applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens when Redis cannot answer; see [`RedisFailure`].
    pub fn on_failure(mut self, failure: RedisFailure) -> Self {
        self.failure = failure;
        self
    }

    /// After Redis let a request's budget run out (stalled, or unreachable), how long
    /// requests skip it before trying again (1 s by default), so a stall costs one
    /// timeout per pause rather than one per request. A Redis that refuses or drops
    /// connections (stopped, restarting) costs no wait and is not paused: each request
    /// tries it, so the first request once it is back uses it.
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    pub(crate) fn attach(self, engine: Arc<Engine>) -> Attached {
        let instance_id = instance_id();
        let ttl = self.lease_ttl;
        let caps = engine
            .quotas
            .iter()
            .map(|compiled| {
                compiled
                    .limiters
                    .iter()
                    .map(|limiter| match compiled.quota.exact || ttl.is_zero() {
                        true => 0,
                        false => lease_cap(limiter.rate(), ttl, self.max_lease),
                    })
                    .collect()
            })
            .collect();
        let strict = engine
            .quotas
            .iter()
            .map(|compiled| compiled.quota.semantics == Semantics::StrictWindow)
            .collect();
        Attached(Arc::new(Inner {
            send_time: engine.clock.is_manual(),
            leases: Leases::new(
                ttl,
                caps,
                strict,
                instance_id.clone(),
                self.timeout,
                engine
                    .quotas
                    .iter()
                    .map(|compiled| compiled.quota.max_tracked_keys)
                    .max()
                    .unwrap_or(0),
            ),
            engine,
            backend: self,
            script: Script::new(include_str!("redis.lua")),
            links: Links::default(),
            started: OnceLock::new(),
            instance_id,
            instances_seen: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            reported_down: AtomicBool::new(false),
        }))
    }
}

/// The backend as a layer uses it.
#[derive(Clone)]
pub(crate) struct Attached(Arc<Inner>);

struct Inner {
    engine: Arc<Engine>,
    backend: RedisBackend,
    script: Script,
    /// Made on first use, inside the runtime that serves requests.
    links: Links,
    /// Set when the heartbeat and the lease sweeper have been started.
    started: OnceLock<()>,
    /// This instance's member in the heartbeat set.
    instance_id: String,
    /// The instances heard from at the last heartbeat (0: none yet).
    instances_seen: AtomicU32,
    /// Monotonic nanoseconds until which Redis is not asked.
    down_until: AtomicU64,
    /// Whether the `portcullis_rate_limit_redis_down` gauge says down.
    reported_down: AtomicBool,
    send_time: bool,
    leases: Leases,
}

/// How a request is decided with Redis configured.
pub(crate) enum Route {
    Redis(PendingVerdict),
    /// Decided in process, from leased permits.
    Decided(Verdict),
    Local,
    Unavailable,
    /// Let through unlimited ([`RedisFailure::FailOpen`]).
    Open,
}

/// One quota in a script call.
pub(crate) struct Call {
    applied: Applied,
    digest: Box<str>,
    label: String,
    op: u8,
    /// The quota's mode is a dry run, as read when the request came.
    dry_run: bool,
    /// Op [`LEASE`]: how many permits, under which lease id.
    want: u32,
    lease: Option<Arc<str>>,
    /// Ops [`GIVE_BACK`] and [`LEASE`]: what goes back first ('' for op 3: one plain
    /// charge).
    give_back: String,
    /// A renewal: the key's lease entry, which the answer updates.
    renew: Option<Arc<Entry>>,
}

impl Call {
    /// A call that gives back permits of `quota` and `tier` (the script's spec).
    fn giving_back(quota: usize, tier: usize, digest: Box<str>, spec: String) -> Self {
        let applied = Applied {
            quota,
            tier,
            key: 0,
        };
        let mut call = Self::new(applied, digest, GIVE_BACK);
        call.give_back = spec;
        call
    }

    fn new(applied: Applied, digest: Box<str>, op: u8) -> Self {
        Self {
            applied,
            digest,
            label: String::new(),
            op,
            dry_run: false,
            want: 1,
            lease: None,
            give_back: String::new(),
            renew: None,
        }
    }
}

/// A permit spent from a lease in process, for a request that is still to be decided.
struct LocalSpend {
    applied: Applied,
    spend: Spend,
    remaining: u32,
    reset: Duration,
}

impl Attached {
    fn now_nanos(&self) -> u64 {
        self.0.engine.ticker.nanos()
    }

    fn is_down(&self) -> bool {
        self.now_nanos() < self.0.down_until.load(Ordering::Relaxed)
    }

    /// Counts a failure; a spent budget also pauses Redis for `retry_after`.
    fn mark_down(&self, error: &RedisError) {
        metrics::counter!("portcullis_rate_limit_redis_failures_total").increment(1);
        if matches!(error, RedisError::TimedOut) {
            let until = self
                .now_nanos()
                .saturating_add(crate::ticker::nanos(self.0.backend.retry_after));
            self.0.down_until.fetch_max(until, Ordering::Relaxed);
        }
        if !self.0.reported_down.swap(true, Ordering::Relaxed) {
            metrics::gauge!("portcullis_rate_limit_redis_down").set(1.0);
            tracing::warn!(
                %error,
                policy = ?self.0.backend.failure,
                "rate-limit: Redis did not answer; using the failure policy until it does"
            );
        }
    }

    /// Notes that Redis answered, after an outage.
    fn mark_up(&self) {
        if self.0.reported_down.load(Ordering::Relaxed)
            && self.0.reported_down.swap(false, Ordering::Relaxed)
        {
            metrics::gauge!("portcullis_rate_limit_redis_down").set(0.0);
            tracing::info!("rate-limit: Redis answers again");
        }
    }

    /// A connection, made on first use (inside the runtime that serves requests: it
    /// spawns tasks), which then reconnects by itself. The first use also starts the
    /// heartbeat and the lease sweeper.
    async fn connection(&self) -> Result<Connection, RedisError> {
        if self.0.started.set(()).is_ok() {
            self.start_heartbeat();
            self.start_lease_sweeper();
        }
        self.0
            .links
            .connect(&self.0.backend.target, self.0.backend.timeout)
            .await
    }

    /// Says this instance is alive every `heartbeat_every`, and learns how many are,
    /// until the layer is dropped.
    fn start_heartbeat(&self) {
        if self.0.backend.instances > 0 || self.0.backend.heartbeat_every.is_zero() {
            return;
        }
        let inner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let script = Script::new(HEARTBEAT);
            loop {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let this = Attached(inner);
                let every = this.0.backend.heartbeat_every;
                let window = u64::try_from(every.as_millis().saturating_mul(3)).unwrap_or(u64::MAX);
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(format!("{}:instances", this.0.backend.namespace))
                    .arg(&this.0.instance_id)
                    .arg(window);
                let beat = async {
                    let mut connection = this.connection().await?;
                    Ok::<_, RedisError>(invocation.invoke_async::<u32>(&mut connection).await?)
                };
                let budget = this.0.backend.timeout.max(every);
                if let Ok(Ok(seen)) = tokio::time::timeout(budget, beat).await {
                    this.0.instances_seen.store(seen, Ordering::Relaxed);
                }
                drop(this);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// How many instances share the quotas: configured, learned, or 1.
    pub(crate) fn expected_instances(&self) -> u32 {
        match self.0.backend.instances {
            0 => self.0.instances_seen.load(Ordering::Relaxed).max(1),
            configured => configured,
        }
    }

    /// What to do when Redis is not asked or did not answer.
    pub(crate) fn fallback(&self) -> Route {
        match self.0.backend.failure {
            RedisFailure::LocalFallback => Route::Local,
            RedisFailure::FailClosed => Route::Unavailable,
            RedisFailure::FailOpen => Route::Open,
        }
    }

    /// Starts deciding `source` through Redis, or says how to decide without it.
    pub(crate) fn decide(&self, source: &KeySource<'_>, want_reports: bool) -> Route {
        if self.is_down() {
            return self.fallback();
        }
        let engine = &self.0.engine;
        let leases = &self.0.leases;
        let now = self.now_nanos();
        let mut calls = Vec::new();
        let mut spent = Vec::new();
        for index in 0..engine.quotas.len() {
            let applied = match engine.applied(index, source) {
                Ok(Some(applied)) => applied,
                Ok(None) => continue,
                Err(refusal) => {
                    self.put_back(&spent, now);
                    return Route::Redis(ready(Verdict::refused(refusal)));
                }
            };
            let compiled = &engine.quotas[index];
            // A quota counting failed authentication reserves its unit now (refunded
            // after any answer but a 401), so concurrent guesses cannot all pass.
            let op = match compiled.quota.charge {
                Charge::Every | Charge::Unauthenticated => 1,
                Charge::Never => 0,
            };
            if op == 0 {
                if let Some(call) = self.call(applied, source, op) {
                    calls.push(call);
                }
                continue;
            }
            // A leased quota spends in process, or asks Redis for a lease. Exact quotas
            // and dry runs take one permit per request: a dry run's refusals must reach
            // the script. Every charge is named by a lease id, so that a refund takes
            // back that charge and no other.
            let take = match compiled.is_dry_run() || !leases.leases(applied.quota, applied.tier) {
                true => Take::Alone {
                    lease: leases.new_id(),
                },
                false => leases.take(&applied, now),
            };
            let (want, lease, give_back, renew) = match take {
                Take::Spent {
                    spend,
                    remaining,
                    reset,
                } => {
                    spent.push(LocalSpend {
                        applied,
                        spend,
                        remaining,
                        reset,
                    });
                    continue;
                }
                Take::Renew {
                    entry,
                    want,
                    lease,
                    give_back,
                } => (want, lease, give_back, Some(entry)),
                Take::Alone { lease } => (1, lease, String::new(), None),
            };
            match self.call(applied, source, LEASE) {
                Some(mut call) => {
                    call.want = want;
                    call.lease = Some(lease);
                    call.give_back = give_back;
                    call.renew = renew;
                    calls.push(call);
                }
                None => {
                    if let Some(entry) = renew {
                        leases.renewal_ended(&entry);
                    }
                }
            }
        }
        if calls.is_empty() {
            return Route::Decided(self.spent_verdict(Verdict::default(), spent, want_reports));
        }
        let this = self.clone();
        Route::Redis(Box::pin(async move {
            let sent = this.now_nanos();
            let answer = this.run(&calls).await;
            let now = this.now_nanos();
            match answer {
                Ok(answers) => {
                    this.mark_up();
                    let verdict = this.verdict(&calls, &answers, want_reports, sent, now);
                    this.spent_verdict(verdict, spent, want_reports)
                }
                Err(error) => {
                    this.mark_down(&error);
                    for entry in calls.iter().filter_map(|call| call.renew.as_ref()) {
                        this.0.leases.renewal_ended(entry);
                    }
                    // The failure policy decides every quota, leased ones included.
                    this.put_back(&spent, now);
                    Verdict {
                        redis_failed: true,
                        ..Verdict::default()
                    }
                }
            }
        }))
    }

    /// Adds the permits spent in process to `verdict`, or gives them back when it
    /// refuses.
    fn spent_verdict(
        &self,
        mut verdict: Verdict,
        spent: Vec<LocalSpend>,
        want_reports: bool,
    ) -> Verdict {
        if verdict.refusal.is_some() {
            self.put_back(&spent, self.now_nanos());
            return verdict;
        }
        let engine = &self.0.engine;
        for one in spent {
            let compiled = &engine.quotas[one.applied.quota];
            if want_reports {
                verdict.reports.push(compiled.report_of(
                    one.applied.tier,
                    one.applied.quota,
                    one.remaining,
                    one.reset,
                ));
            }
            if compiled.quota.charge == Charge::Unauthenticated {
                verdict.deferred.push(Deferred {
                    quota: one.applied.quota,
                    tier: one.applied.tier,
                    key: one.applied.key,
                    digest: None,
                    spend: Some(one.spend),
                });
            }
        }
        // Reports in the quotas' order, as in process.
        verdict.reports.sort_by_key(|report| report.quota);
        verdict
    }

    /// Gives permits spent in process back to their leases (or, past them, to Redis
    /// at the sweeper's next round).
    fn put_back(&self, spent: &[LocalSpend], now: u64) {
        let leases = &self.0.leases;
        let give_backs: Vec<GiveBack> = spent
            .iter()
            .filter_map(|one| {
                leases.put_back(&one.spend, one.applied.quota, one.applied.tier, None, now)
            })
            .collect();
        if !give_backs.is_empty() {
            leases.queue(give_backs);
        }
    }

    /// The script's arguments for one quota, or `None` when the key cannot be read.
    fn call(&self, applied: Applied, source: &KeySource<'_>, op: u8) -> Option<Call> {
        let engine = &self.0.engine;
        let compiled = &engine.quotas[applied.quota];
        let quota = &compiled.quota;
        let material = key::material(&quota.key, quota.ipv6_prefix, source).ok()?;
        let mut call = Call::new(applied, digest(&material), op);
        if quota.ban.is_some() && op != PEEK {
            call.label =
                key::label(&quota.key, quota.ipv6_prefix, source, &engine.seed).unwrap_or_default();
        }
        call.dry_run = compiled.is_dry_run();
        Some(call)
    }

    /// One script call for `calls`, or on a Redis Cluster one per key (a script's keys
    /// must share a slot). There, a request refused by one key's quotas gives back
    /// what the other calls charged, so that as on one server nothing is charged
    /// unless every quota allows.
    async fn run(&self, calls: &[Call]) -> Result<Vec<i64>, RedisError> {
        let one_slot = calls.iter().all(|call| call.digest == calls[0].digest);
        if !self.0.backend.target.is_cluster() || one_slot {
            return self.run_one(calls.iter()).await;
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|group| calls[group[0]].digest == call.digest)
            {
                Some(group) => group.push(index),
                None => groups.push(vec![index]),
            }
        }
        let answers = futures::future::join_all(
            groups
                .iter()
                .map(|group| self.run_one(group.iter().map(|&i| &calls[i]))),
        )
        .await;
        let mut out = vec![0; calls.len() * ANSWER];
        let mut failed = None;
        for (group, answer) in groups.iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    for (&index, values) in group.iter().zip(answer.chunks_exact(ANSWER)) {
                        out[index * ANSWER..(index + 1) * ANSWER].copy_from_slice(values);
                    }
                }
                Err(error) => failed = Some(error),
            }
        }
        let refused = failed.is_some()
            || calls
                .iter()
                .zip(out.chunks_exact(ANSWER))
                .any(|(call, answer)| call.op == LEASE && !call.dry_run && answer[0] != 1);
        if refused {
            self.give_back_charges(calls, &mut out).await;
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(out),
        }
    }

    /// Gives back what `calls` were granted (their answers say so), and marks the
    /// answers as granting nothing.
    async fn give_back_charges(&self, calls: &[Call], answers: &mut [i64]) {
        let mut back = Vec::new();
        for (call, answer) in calls.iter().zip(answers.chunks_exact_mut(ANSWER)) {
            let granted = u32::try_from(answer[4]).unwrap_or(0);
            let Some(lease) = call.lease.as_ref().filter(|_| granted > 0) else {
                continue;
            };
            answer[4] = 0;
            let compiled = &self.0.engine.quotas[call.applied.quota];
            let spec = match compiled.quota.semantics {
                Semantics::Smooth => format!("{granted} {}", answer[5]),
                Semantics::StrictWindow => {
                    let mut spec = lease.to_string();
                    for index in 0..granted {
                        spec.push_str(&format!(" {index}"));
                    }
                    spec
                }
            };
            back.push(Call::giving_back(
                call.applied.quota,
                call.applied.tier,
                call.digest.clone(),
                spec,
            ));
        }
        for give in &back {
            // A give-back that does not arrive leaves the charge to expire with its
            // window: the strict side.
            let _ = self.run_one(std::iter::once(give)).await;
        }
    }

    async fn run_one<'a>(
        &self,
        calls: impl ExactSizeIterator<Item = &'a Call> + Clone,
    ) -> Result<Vec<i64>, RedisError> {
        let engine = &self.0.engine;
        let count = calls.len();
        let ns = &self.0.backend.namespace;
        let mut invocation = self.0.script.prepare_invoke();
        if self.0.send_time {
            let now = engine
                .clock
                .now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            invocation.arg(now.as_micros().to_string());
        } else {
            invocation.arg("");
        }
        invocation.arg(micros(self.0.backend.lease_ttl));
        for call in calls.clone() {
            let compiled = &engine.quotas[call.applied.quota];
            let quota = &compiled.quota;
            let limiter = &compiled.limiters[call.applied.tier];
            let name = &quota.name;
            // The digest is the keys' hash tag: one quota's keys for one key live in one
            // slot of a Redis Cluster.
            invocation
                .key(format!(
                    "{ns}:q:{name}:{}:{{{}}}",
                    call.applied.tier, call.digest
                ))
                .key(format!("{ns}:ban:{name}:{{{}}}", call.digest))
                .key(format!("{ns}:strikes:{name}:{{{}}}", call.digest));
            let ban = quota.ban.as_ref();
            invocation
                .arg(match quota.semantics {
                    Semantics::Smooth => 1,
                    Semantics::StrictWindow => 2,
                })
                .arg(limiter.rate().count())
                .arg(micros(limiter.rate().period()))
                .arg(limiter.burst())
                .arg(call.op)
                .arg(ban.map_or(-1, |b| i64::from(b.strikes())))
                .arg(ban.map_or(0, |b| micros(b.window())))
                .arg(ban.map_or(0, |b| micros(b.duration())))
                .arg(&call.label)
                .arg(u8::from(call.dry_run))
                .arg(call.want)
                .arg(call.lease.as_deref().unwrap_or(""))
                .arg(&call.give_back);
        }
        let exchange = async {
            let mut connection = self.connection().await?;
            let answer = match invocation.invoke_async::<Vec<i64>>(&mut connection).await {
                // The connection died under us (Redis restarted): it is already
                // reconnecting, and this request tries once more on the new connection,
                // within the same budget.
                Err(error)
                    if error.is_connection_dropped()
                        || error.is_connection_refusal()
                        || error.is_io_error() =>
                {
                    self.0.links.failed(&self.0.backend.target);
                    let mut connection = self.connection().await?;
                    invocation.invoke_async::<Vec<i64>>(&mut connection).await
                }
                answer => answer,
            };
            answer.map_err(|error| match error.is_timeout() {
                true => RedisError::TimedOut,
                false => RedisError::from(error),
            })
        };
        let answer = match tokio::time::timeout(self.0.backend.timeout, exchange).await {
            Err(_) => return Err(RedisError::TimedOut),
            Ok(answer) => answer?,
        };
        if answer.len() != count * ANSWER {
            return Err(RedisError::UnexpectedAnswer {
                got: answer.len(),
                quotas: count,
            });
        }
        Ok(answer)
    }

    /// Redis's answers as a verdict; leases granted are kept, counted from `sent` (when
    /// the request left for Redis).
    fn verdict(
        &self,
        calls: &[Call],
        answers: &[i64],
        want_reports: bool,
        sent: u64,
        now: u64,
    ) -> Verdict {
        let engine = &self.0.engine;
        let leases = &self.0.leases;
        let mut verdict = Verdict::default();
        for (call, answer) in calls.iter().zip(answers.chunks_exact(ANSWER)) {
            let compiled = &engine.quotas[call.applied.quota];
            let duration = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
            let granted = u32::try_from(answer[4]).unwrap_or(0);
            // The lease this request leaves the instance: counted as not yet spent.
            let remaining = u32::try_from(answer[1])
                .unwrap_or(0)
                .saturating_add(granted.saturating_sub(1));
            let report = compiled.report_of(
                call.applied.tier,
                call.applied.quota,
                remaining,
                duration(answer[3]),
            );
            // The permit this request was charged under a lease id, for its refund.
            if call.renew.is_some() && granted > 1 {
                metrics::counter!("portcullis_rate_limit_leases_total", "quota" => compiled.quota.name.clone())
                    .increment(1);
            }
            let spend = match (&call.lease, granted) {
                (Some(lease), 1..) => Some(match &call.renew {
                    Some(entry) => leases.granted(
                        entry,
                        lease.clone(),
                        &call.digest,
                        granted,
                        answer[5],
                        u32::try_from(answer[1]).unwrap_or(0),
                        duration(answer[3]),
                        sent,
                        now,
                    ),
                    None => Spend::alone(lease.clone(), answer[5]),
                }),
                _ => {
                    if let Some(entry) = &call.renew {
                        leases.renewal_ended(entry);
                    }
                    None
                }
            };
            let quota = call.applied.quota;
            let refusal = match answer[0] {
                1 => None,
                2 => Some(Refusal::Banned {
                    quota,
                    remaining: duration(answer[2]),
                }),
                3 => {
                    metrics::counter!("portcullis_rate_limit_bans_total", "quota" => compiled.quota.name.clone())
                        .increment(1);
                    portcullis_core::log_throttled!(
                        warn,
                        quota = compiled.quota.name,
                        key = call.label,
                        "rate-limit: banned a key that kept exceeding its quota (shared through Redis)"
                    );
                    Some(Refusal::Banned {
                        quota,
                        remaining: duration(answer[2]),
                    })
                }
                _ => Some(Refusal::Limited {
                    quota,
                    retry_after: duration(answer[2]),
                }),
            };
            if let Some(refusal) = refusal {
                if call.dry_run {
                    verdict.dry_run.push(match refusal {
                        // A dry run bans nobody; the script counted no strike.
                        Refusal::Banned { .. } if answer[0] == 3 => Refusal::Limited {
                            quota,
                            retry_after: duration(answer[2]),
                        },
                        other => other,
                    });
                    if engine.dry_run_headers {
                        verdict.reports.push(report);
                    }
                    continue;
                }
                // The longest wait among the quotas that refuse.
                if verdict
                    .refusal
                    .as_ref()
                    .is_none_or(|earlier| refusal.wait() > earlier.wait())
                {
                    verdict.refusal = Some(refusal);
                    verdict.reports = vec![report];
                }
                continue;
            }
            let charged = call.op == 1 || call.op == LEASE;
            if want_reports && charged && (!call.dry_run || engine.dry_run_headers) {
                verdict.reports.push(report);
            }
            if compiled.quota.charge == Charge::Unauthenticated {
                verdict.deferred.push(Deferred {
                    quota,
                    tier: call.applied.tier,
                    key: call.applied.key,
                    digest: Some(call.digest.clone()),
                    spend,
                });
            }
        }
        if verdict.refusal.is_some() {
            verdict.deferred.clear();
        }
        verdict
    }

    /// Refunds reservations of quotas that count failed authentication: into their
    /// leases in process where they can, the rest through Redis (the returned future).
    pub(crate) fn refund_deferred(&self, deferred: Vec<Deferred>) -> Option<PendingCharge> {
        let now = self.now_nanos();
        let leases = &self.0.leases;
        let calls: Vec<Call> = deferred
            .iter()
            .filter_map(|one| match &one.spend {
                Some(spend) => {
                    let back =
                        leases.put_back(spend, one.quota, one.tier, one.digest.as_deref(), now)?;
                    Some(Call::giving_back(
                        one.quota,
                        one.tier,
                        back.digest,
                        back.spec,
                    ))
                }
                // One plain charge ('' to the script).
                None => Some(Call::giving_back(
                    one.quota,
                    one.tier,
                    one.digest.clone()?,
                    String::new(),
                )),
            })
            .collect();
        if calls.is_empty() {
            return None;
        }
        let this = self.clone();
        Some(Box::pin(async move {
            // A refund that does not reach Redis leaves the reservation to expire with
            // its window: the strict side.
            if let Err(error) = this.run(&calls).await {
                this.mark_down(&error);
            }
        }))
    }

    /// Sends leases' unspent permits back to Redis every quarter of the lease TTL,
    /// until the layer is dropped.
    fn start_lease_sweeper(&self) {
        if self.0.backend.lease_ttl.is_zero() || !self.0.leases.any() {
            return;
        }
        let every = (self.0.backend.lease_ttl / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(250));
        let inner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let this = Attached(inner);
                let give_backs = this.0.leases.sweep(this.now_nanos());
                if give_backs.is_empty() || this.is_down() {
                    // While Redis is paused they lapse on their own.
                    continue;
                }
                for back in &give_backs {
                    let name = this.0.engine.name(back.quota).to_owned();
                    metrics::counter!("portcullis_rate_limit_lease_returns_total", "quota" => name)
                        .increment(1);
                }
                let calls: Vec<Call> = give_backs
                    .into_iter()
                    .map(|back| Call::giving_back(back.quota, back.tier, back.digest, back.spec))
                    .collect();
                for chunk in calls.chunks(64) {
                    if let Err(error) = this.run(chunk).await {
                        this.mark_down(&error);
                        break;
                    }
                }
            }
        });
    }

    /// The calls that peek at `applied` quotas for `source`: nothing charged, no strike.
    pub(crate) fn peek_calls(&self, applied: &[Applied], source: &KeySource<'_>) -> Vec<Call> {
        applied
            .iter()
            .filter_map(|one| self.call(*one, source, PEEK))
            .collect()
    }

    /// The call that peeks at quota `quota` for a key given as text.
    pub(crate) fn peek_key_call(&self, applied: Applied, values: &[&str]) -> Option<Call> {
        let compiled = &self.0.engine.quotas[applied.quota];
        let quota = &compiled.quota;
        let material = key::material_values(&quota.key, quota.ipv6_prefix, values).ok()?;
        let mut call = Call::new(applied, digest(&material), PEEK);
        call.dry_run = compiled.is_dry_run();
        Some(call)
    }

    /// What the quotas of `calls` answer in Redis now; `None` when Redis cannot answer
    /// (and is then left alone for the pause, as after a request).
    pub(crate) async fn peek(&self, calls: &[Call]) -> Option<Vec<QuotaCheck>> {
        if calls.is_empty() {
            return Some(Vec::new());
        }
        if self.is_down() {
            return None;
        }
        let answers = match self.run(calls).await {
            Ok(answers) => {
                self.mark_up();
                answers
            }
            Err(error) => {
                self.mark_down(&error);
                return None;
            }
        };
        let engine = &self.0.engine;
        let duration = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Some(
            calls
                .iter()
                .zip(answers.chunks_exact(ANSWER))
                .map(|(call, answer)| {
                    let compiled = &engine.quotas[call.applied.quota];
                    let rate = compiled.limiters[call.applied.tier].rate();
                    QuotaCheck {
                        quota: compiled.quota.name.clone(),
                        mode: compiled.mode(),
                        allowed: answer[0] == 1,
                        banned: answer[0] == 2,
                        limit: rate.count(),
                        window: rate.period(),
                        remaining: u32::try_from(answer[1]).unwrap_or(0),
                        reset: duration(answer[3]),
                        retry_after: duration(answer[2]),
                    }
                })
                .collect(),
        )
    }

    /// The failure policy.
    pub(crate) fn failure(&self) -> RedisFailure {
        self.0.backend.failure
    }

    /// The bans in force in Redis.
    pub(crate) async fn bans(&self) -> Result<Vec<BanEntry>, RedisError> {
        let mut connection = self.connection().await?;
        let prefix = format!("{}:ban:", self.0.backend.namespace);
        let keys = self.keys(&mut connection, &format!("{prefix}*")).await?;
        let wall = self.0.engine.clock.now();
        let mut out = Vec::new();
        for key in keys {
            let Some((quota, _digest)) = key[prefix.len()..].split_once(':') else {
                continue;
            };
            let label: Option<String> = connection.get(&key).await?;
            let ttl: i64 = connection.pttl(&key).await?;
            if let (Some(label), true) = (label, ttl > 0) {
                out.push(BanEntry {
                    quota: quota.to_owned(),
                    key: label,
                    until: wall + Duration::from_millis(ttl.unsigned_abs()),
                });
            }
        }
        Ok(out)
    }

    /// The keys matching `pattern`: SCAN on one server; on a cluster KEYS, which the
    /// client sends to every master (SCAN would see one node). Only the admin's ban
    /// listing asks, never a request.
    async fn keys(
        &self,
        connection: &mut Connection,
        pattern: &str,
    ) -> Result<Vec<String>, RedisError> {
        if self.0.backend.target.is_cluster() {
            return Ok(connection.keys(pattern).await?);
        }
        let mut iter = connection.scan_match::<_, String>(pattern).await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        Ok(keys)
    }

    /// Lifts a ban held in Redis.
    pub(crate) async fn lift_ban(&self, quota: &str, label: &str) -> Result<bool, RedisError> {
        let mut connection = self.connection().await?;
        let prefix = format!("{}:ban:{quota}:", self.0.backend.namespace);
        for key in self.keys(&mut connection, &format!("{prefix}*")).await? {
            let value: Option<String> = connection.get(&key).await?;
            if value.as_deref() == Some(label) {
                let removed: i64 = connection.del(&key).await?;
                return Ok(removed > 0);
            }
        }
        Ok(false)
    }
}

/// Adds this instance to the heartbeat set (scored by the server's time in ms), drops
/// members older than the window, and counts the rest.
const HEARTBEAT: &str = "local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
redis.call('ZADD', KEYS[1], now, ARGV[1]) \
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2])) \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
return redis.call('ZCARD', KEYS[1])";

/// A member name no other instance will have: the process id and 64 random bits.
fn instance_id() -> String {
    use std::hash::BuildHasher;
    let random = foldhash::quality::RandomState::default().hash_one(std::process::id());
    format!("{}-{random:016x}", std::process::id())
}

/// The script's op that checks without charging or counting a strike.
const PEEK: u8 = 2;

/// The script's op that gives permits back.
const GIVE_BACK: u8 = 3;

/// The script's op that charges a lease of permits.
const LEASE: u8 = 4;

/// How many integers the script answers per quota.
const ANSWER: usize = 6;

/// The largest lease of a quota at `rate`: a TTL's worth of the rate, so that an
/// instance that dies holds no more than that, and at most `max`.
fn lease_cap(rate: crate::Rate, ttl: Duration, max: u32) -> u32 {
    let per_ttl = u128::from(rate.count()) * ttl.as_nanos() / rate.period().as_nanos().max(1);
    u32::try_from(per_ttl).unwrap_or(u32::MAX).min(max)
}

/// A key's name in Redis: a digest of its stable bytes, the same on every instance.
fn digest(material: &[u8]) -> Box<str> {
    hex::encode(&Sha256::digest(material)[..16]).into_boxed_str()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn ready(verdict: Verdict) -> PendingVerdict {
    Box::pin(std::future::ready(verdict))
}
