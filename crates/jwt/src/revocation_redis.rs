//! Revocations shared between instances through Redis: a sorted set of revoked ids
//! scored by their tokens' `exp`, mirrored into every instance's local list.
//!
//! Requests never wait for Redis: each instance checks its local copy, which a
//! background task refreshes every `sync_every` (1 s by default) and to which it pushes
//! the instance's own revocations. When the copy has not been refreshed for
//! `stale_after` (5 s by default), the [`RevocationFailure`] policy decides: refuse
//! tokens with 503 `revocation_unavailable` (the default), or decide by the local copy,
//! which always holds the revocations this instance made itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use redis::aio::ConnectionManager;

use crate::revocation::{RevocationError, Revocations};

/// What an instance does while its copy of the shared revocations is stale (Redis
/// unreachable for longer than `stale_after`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationFailure {
    /// Refuse tokens with 503 `revocation_unavailable`: another instance may have
    /// revoked them (the default).
    #[default]
    Refuse,
    /// Decide by the local copy: the revocations seen before the outage and those this
    /// instance made itself.
    DecideLocally,
}

/// The shared part of a [`Revocations`] kept in Redis.
pub(crate) struct Shared {
    /// Revocations made here and not yet written to Redis.
    pending: Mutex<Vec<(Box<str>, i64)>>,
    wake: tokio::sync::Notify,
    /// Milliseconds since `epoch` of the last successful sync; 0 before the first.
    synced_at: AtomicU64,
    epoch: Instant,
    stale_after: Duration,
    policy: RevocationFailure,
    /// Whether the current outage was logged.
    warned: AtomicBool,
}

impl Shared {
    /// Whether the local copy may miss revocations made elsewhere, and the policy says
    /// to refuse meanwhile.
    pub(crate) fn refuses_unknown(&self) -> bool {
        if self.policy == RevocationFailure::DecideLocally {
            return false;
        }
        let synced = self.synced_at.load(Ordering::Acquire);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        synced == 0 || now.saturating_sub(synced) > self.stale_after.as_millis() as u64
    }

    /// How long ago the last successful sync was, if there was one.
    pub(crate) fn sync_age(&self) -> Option<Duration> {
        let synced = self.synced_at.load(Ordering::Acquire);
        if synced == 0 {
            return None;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(now.saturating_sub(synced)))
    }

    pub(crate) fn push(&self, jti: &str, expires_at: i64) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((jti.into(), expires_at));
        self.wake.notify_one();
    }
}

/// Builds a [`Revocations`] shared through Redis; see [`Revocations::shared_through_redis`].
#[must_use = "call .start() to connect"]
#[derive(Debug)]
pub struct RedisRevocationsBuilder {
    url: String,
    namespace: String,
    sync_every: Duration,
    stale_after: Duration,
    policy: RevocationFailure,
}

impl Revocations {
    /// A list shared by every instance using the same Redis server and namespace.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use portcullis_jwt::Revocations;
    ///
    /// let revocations = Revocations::shared_through_redis("redis://127.0.0.1:6379")
    ///     .namespace("gateway")
    ///     .start()
    ///     .await?;
    /// revocations.revoke("token-1", 1_900_000_000)?; // every instance refuses it within a second
    /// # Ok(())
    /// # }
    /// ```
    pub fn shared_through_redis(url: impl Into<String>) -> RedisRevocationsBuilder {
        RedisRevocationsBuilder {
            url: url.into(),
            namespace: "portcullis".into(),
            sync_every: Duration::from_secs(1),
            stale_after: Duration::from_secs(5),
            policy: RevocationFailure::Refuse,
        }
    }
}

impl RedisRevocationsBuilder {
    /// The prefix of the Redis key (`portcullis` by default); instances that share
    /// revocations use the same one.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How often the local copy is refreshed from Redis (1 s by default): the longest a
    /// revocation made elsewhere takes to reach this instance.
    pub fn sync_every(mut self, every: Duration) -> Self {
        self.sync_every = every;
        self
    }

    /// How old the local copy may grow while Redis does not answer before the
    /// [failure policy](Self::on_failure) applies (5 s by default).
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.stale_after = after;
        self
    }

    /// What happens while the local copy is stale ([`RevocationFailure::Refuse`] by
    /// default).
    pub fn on_failure(mut self, policy: RevocationFailure) -> Self {
        self.policy = policy;
        self
    }

    /// Connects (lazily: an instance starts while Redis is down, and refuses tokens
    /// until the first sync under the default policy) and starts the sync task. Must be
    /// called inside a Tokio runtime.
    pub async fn start(self) -> Result<Revocations, RevocationError> {
        let invalid = |why: String| RevocationError::Shared(why);
        if self.sync_every.is_zero() || self.stale_after.is_zero() {
            return Err(invalid(
                "sync_every and stale_after must be positive durations".into(),
            ));
        }
        if self.namespace.is_empty() || self.namespace.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "{:?} is not a namespace: give a word without whitespace",
                self.namespace
            )));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| invalid(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| invalid(e.to_string()))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            synced_at: AtomicU64::new(0),
            epoch: Instant::now(),
            stale_after: self.stale_after,
            policy: self.policy,
            warned: AtomicBool::new(false),
        });
        let revocations = Revocations::with_shared(shared.clone());
        let key = format!("{}:revoked-tokens", self.namespace);
        tokio::spawn(sync(
            Arc::downgrade(&revocations.ids),
            Arc::downgrade(&shared),
            manager,
            key,
            self.sync_every,
        ));
        Ok(revocations)
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Pushes this instance's revocations and reads everyone's, until the list is dropped.
async fn sync(
    ids: Weak<DashMap<Box<str>, i64>>,
    shared: Weak<Shared>,
    mut redis: ConnectionManager,
    key: String,
    every: Duration,
) {
    loop {
        let (Some(ids), Some(shared)) = (ids.upgrade(), shared.upgrade()) else {
            return;
        };
        match sync_once(&ids, &shared, &mut redis, &key).await {
            Ok(count) => {
                let now = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                shared.synced_at.store(now.max(1), Ordering::Release);
                if shared.warned.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        revoked = count,
                        "jwt: the shared revocations are in sync again"
                    );
                }
            }
            Err(error) => {
                if !shared.warned.swap(true, Ordering::AcqRel) {
                    tracing::error!(%error, policy = ?shared.policy, "jwt: the shared revocations cannot be read from Redis");
                }
            }
        }
        let wake = async { shared.wake.notified().await };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wake => {}
        }
    }
}

async fn sync_once(
    ids: &DashMap<Box<str>, i64>,
    shared: &Shared,
    redis: &mut ConnectionManager,
    key: &str,
) -> redis::RedisResult<usize> {
    let batch = std::mem::take(
        &mut *shared
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    if !batch.is_empty() {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (jti, exp) in &batch {
            pipe.zadd(key, &**jti, *exp).ignore();
        }
        if let Err(error) = pipe.query_async::<()>(redis).await {
            // Kept for the next round; the local copy has them meanwhile.
            shared
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(batch);
            return Err(error);
        }
    }
    let now = now_secs();
    let (_, live): ((), Vec<(String, i64)>) = redis::pipe()
        .zrembyscore(key, "-inf", format!("({now}"))
        .ignore()
        .zrangebyscore_withscores(key, now, "+inf")
        .query_async(redis)
        .await
        .map(|live: (Vec<(String, i64)>,)| ((), live.0))?;
    let count = live.len();
    for (jti, exp) in live {
        ids.insert(jti.into_boxed_str(), exp);
    }
    ids.retain(|_, exp| *exp >= now);
    Ok(count)
}
