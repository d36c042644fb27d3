//! The compiled quotas and the in-process decision for one request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use portcullis_core::{ClientIpError, Clock};

use crate::ban::{BanEntry, BanList};
use crate::headers::Report;
use crate::key::{self, KeySource, MissingPart};
use crate::limiter::{Limiter, Measure};
use crate::quota::{Charge, MissingKey, Mode, Quota};
use crate::ticker::Ticker;

pub(crate) struct CompiledQuota {
    pub(crate) quota: Quota,
    /// The base rate first, then one per tier in the quota's order.
    pub(crate) limiters: Vec<Limiter>,
    pub(crate) bans: Option<BanList>,
    /// The quota's [`Mode`], switchable at run time: read once per request.
    dry_run: AtomicBool,
}

impl CompiledQuota {
    fn new(quota: Quota, clock: &Clock, ticker: &Ticker) -> Self {
        let limiter = |rate, burst| {
            Limiter::new(
                rate,
                burst,
                quota.semantics,
                quota.max_tracked_keys,
                quota.overflow,
                ticker,
            )
        };
        let mut limiters = vec![limiter(quota.rate, quota.burst)];
        limiters.extend(
            quota
                .tiers
                .iter()
                .map(|(_, rate, burst)| limiter(*rate, *burst)),
        );
        let bans = quota
            .ban
            .map(|rule| BanList::new(rule, quota.max_tracked_keys, clock.clone(), ticker.clone()));
        Self {
            dry_run: AtomicBool::new(quota.mode == Mode::DryRun),
            quota,
            limiters,
            bans,
        }
    }

    pub(crate) fn is_dry_run(&self) -> bool {
        self.dry_run.load(Ordering::Relaxed)
    }

    pub(crate) fn mode(&self) -> Mode {
        match self.is_dry_run() {
            true => Mode::DryRun,
            false => Mode::Enforce,
        }
    }

    /// Sets the mode; returns the one before.
    pub(crate) fn set_mode(&self, mode: Mode) -> Mode {
        match self.dry_run.swap(mode == Mode::DryRun, Ordering::Relaxed) {
            true => Mode::DryRun,
            false => Mode::Enforce,
        }
    }

    /// Which limiter the request is held to: its first principal's tier's, or the base.
    pub(crate) fn tier_index(&self, source: &KeySource<'_>) -> usize {
        if self.quota.tiers.is_empty() {
            return 0;
        }
        source
            .tier()
            .and_then(|tier| self.quota.tiers.iter().position(|(name, ..)| name == tier))
            .map_or(0, |i| i + 1)
    }

    fn report(&self, tier: usize, measure: &Measure, quota: usize) -> Report {
        self.report_of(tier, quota, measure.remaining(), measure.reset())
    }

    /// The headers' line for quota number `quota` under `tier`'s rate.
    pub(crate) fn report_of(
        &self,
        tier: usize,
        quota: usize,
        remaining: u32,
        reset: Duration,
    ) -> Report {
        let rate = self.limiters[tier].rate();
        Report {
            quota,
            limit: rate.count(),
            window: rate.period(),
            remaining,
            reset,
        }
    }
}

/// Why the layer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Limited {
        quota: usize,
        retry_after: Duration,
    },
    AtCapacity {
        quota: usize,
        retry_after: Duration,
    },
    Banned {
        quota: usize,
        remaining: Duration,
    },
    KeyMissing {
        quota: usize,
        needs_principal: bool,
    },
    ClientIp(ClientIpError),
    /// Redis cannot answer and the host fails closed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unavailable,
}

impl Refusal {
    /// The quota that refused, if a quota did.
    pub(crate) fn quota(&self) -> Option<usize> {
        match self {
            Self::Limited { quota, .. }
            | Self::AtCapacity { quota, .. }
            | Self::Banned { quota, .. }
            | Self::KeyMissing { quota, .. } => Some(*quota),
            Self::ClientIp(_) | Self::Unavailable => None,
        }
    }

    /// How long the client should wait before retrying.
    pub(crate) fn wait(&self) -> Duration {
        match self {
            Self::Limited { retry_after, .. } | Self::AtCapacity { retry_after, .. } => {
                *retry_after
            }
            Self::Banned { remaining, .. } => *remaining,
            Self::KeyMissing { .. } | Self::ClientIp(_) | Self::Unavailable => Duration::ZERO,
        }
    }
}

/// A reservation on a quota that counts only failed authentication: charged before the
/// inner service runs, so that at most the quota's worth of guesses is ever in flight,
/// and refunded after the response unless it is a 401.
#[derive(Clone, Debug)]
pub(crate) struct Deferred {
    pub(crate) quota: usize,
    pub(crate) tier: usize,
    pub(crate) key: u64,
    /// The key's digest in Redis; `None` in process.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) digest: Option<Box<str>>,
    /// The leased permit the reservation was taken from, if it was.
    #[cfg(feature = "redis")]
    pub(crate) spend: Option<crate::lease::Spend>,
}

/// The decision for one request.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) refusal: Option<Refusal>,
    pub(crate) reports: Vec<Report>,
    pub(crate) deferred: Vec<Deferred>,
    /// Redis did not answer: the failure policy decides.
    pub(crate) redis_failed: bool,
    /// What quotas in [`Mode::DryRun`] would have refused, had they enforced.
    pub(crate) dry_run: Vec<Refusal>,
}

impl Verdict {
    /// Whether a dry-run quota already reported quota number `quota`.
    pub(crate) fn dry_run_hit(&self, quota: usize) -> bool {
        self.dry_run.iter().any(|r| r.quota() == Some(quota))
    }
}

impl Verdict {
    pub(crate) fn refused(refusal: Refusal) -> Self {
        Self {
            refusal: Some(refusal),
            ..Self::default()
        }
    }
}

/// A quota that applies to the request, with the request's key under it.
#[derive(Clone, Copy)]
pub(crate) struct Applied {
    pub(crate) quota: usize,
    pub(crate) tier: usize,
    pub(crate) key: u64,
}

pub(crate) struct Engine {
    pub(crate) quotas: Vec<CompiledQuota>,
    /// Seeded per process: nobody outside can make two keys collide on purpose.
    pub(crate) seed: foldhash::quality::RandomState,
    /// Whether any quota reads the request's principals (a principal part or tiers).
    pub(crate) reads_principals: bool,
    /// Whether dry-run quotas send their RateLimit headers.
    pub(crate) dry_run_headers: bool,
    /// How often the sweeper runs (`None`: the host sweeps).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) sweep_every: Option<Duration>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) clock: Clock,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) ticker: Ticker,
    /// Dropping the engine drops the sender, which stops the sweeper at once.
    _sweeper: Option<mpsc::Sender<()>>,
}

impl Engine {
    pub(crate) fn new(
        quotas: Vec<Quota>,
        clock: Clock,
        sweep_every: Option<Duration>,
        dry_run_headers: bool,
    ) -> Arc<Self> {
        let reads_principals = quotas.iter().any(|quota| {
            !quota.tiers.is_empty() || quota.key.iter().any(|part| part.needs_principal())
        });
        let ticker = Ticker::new(&clock);
        let compiled = quotas
            .into_iter()
            .map(|quota| CompiledQuota::new(quota, &clock, &ticker))
            .collect();
        let (sender, receiver) = mpsc::channel::<()>();
        let engine = Arc::new(Self {
            quotas: compiled,
            seed: foldhash::quality::RandomState::default(),
            reads_principals,
            dry_run_headers,
            sweep_every,
            clock,
            ticker,
            _sweeper: sweep_every.map(|_| sender),
        });
        if let Some(every) = sweep_every {
            spawn_sweeper(Arc::downgrade(&engine), receiver, every);
        }
        engine
    }

    pub(crate) fn name(&self, quota: usize) -> &str {
        &self.quotas[quota].quota.name
    }

    /// The quota's key for the request, or `None` when the quota does not apply.
    pub(crate) fn applied(
        &self,
        index: usize,
        source: &KeySource<'_>,
    ) -> Result<Option<Applied>, Refusal> {
        let compiled = &self.quotas[index];
        let quota = &compiled.quota;
        if !quota.applies_to(source.head.uri.path()) {
            return Ok(None);
        }
        match key::hash(&quota.key, quota.ipv6_prefix, source, &self.seed) {
            Ok(key) => Ok(Some(Applied {
                quota: index,
                tier: compiled.tier_index(source),
                key,
            })),
            Err(MissingPart { .. }) if quota.missing == MissingKey::Skip => Ok(None),
            Err(MissingPart { needs_principal }) => Err(Refusal::KeyMissing {
                quota: index,
                needs_principal,
            }),
        }
    }

    /// Decides a request in process: bans first, then every quota checked, then the
    /// quotas charged only if all of them allow it, so that a request refused by one
    /// quota costs nothing under the others.
    #[inline]
    pub(crate) fn decide(&self, source: &KeySource<'_>, want_reports: bool) -> Verdict {
        if let [_] = self.quotas[..] {
            // The common case, without a list.
            return match self.applied(0, source) {
                Ok(Some(applied)) => self.decide_applied(&[applied], source, want_reports),
                Ok(None) => Verdict::default(),
                Err(refusal) => Verdict::refused(refusal),
            };
        }
        let mut applied = Vec::with_capacity(self.quotas.len());
        for index in 0..self.quotas.len() {
            match self.applied(index, source) {
                Ok(Some(one)) => applied.push(one),
                Ok(None) => {}
                Err(refusal) => return Verdict::refused(refusal),
            }
        }
        self.decide_applied(&applied, source, want_reports)
    }

    fn decide_applied(
        &self,
        applied: &[Applied],
        source: &KeySource<'_>,
        want_reports: bool,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        for one in applied {
            let compiled = &self.quotas[one.quota];
            if let Some(remaining) = compiled.bans.as_ref().and_then(|bans| bans.banned(one.key)) {
                let refusal = Refusal::Banned {
                    quota: one.quota,
                    remaining,
                };
                if compiled.is_dry_run() {
                    verdict.dry_run.push(refusal);
                    continue;
                }
                verdict.refusal = Some(refusal);
                return verdict;
            }
        }
        // With a single quota, checking and charging are one step.
        let check_first = applied.len() > 1;
        for one in applied {
            let compiled = &self.quotas[one.quota];
            let dry_run = compiled.is_dry_run();
            if dry_run && verdict.dry_run_hit(one.quota) {
                continue;
            }
            // A quota that counts failed authentication reserves its unit now, like
            // one that counts every request: checking now and charging after the 401
            // let every guess in flight through.
            let charges = matches!(
                compiled.quota.charge,
                Charge::Every | Charge::Unauthenticated
            );
            let charge_now = charges && !check_first;
            let measure = compiled.limiters[one.tier].check(one.key, charge_now);
            let reports = want_reports && (!dry_run || self.dry_run_headers);
            if !measure.allowed {
                if dry_run {
                    verdict.dry_run.push(self.refuse_dry_run(one, &measure));
                    // With its headers on, a dry run shows the line it refused by.
                    if self.dry_run_headers {
                        verdict
                            .reports
                            .push(compiled.report(one.tier, &measure, one.quota));
                    }
                    continue;
                }
                // Every quota is asked, so that `Retry-After` is the longest wait among
                // those that refuse: the first one's could send the client back early.
                let refusal = self.refuse(one, &measure, source);
                let longer = verdict
                    .refusal
                    .as_ref()
                    .is_none_or(|earlier| refusal.wait() > earlier.wait());
                if longer {
                    verdict.refusal = Some(refusal);
                    verdict.reports = vec![compiled.report(one.tier, &measure, one.quota)];
                }
                continue;
            }
            if !check_first && reports {
                verdict
                    .reports
                    .push(compiled.report(one.tier, &measure, one.quota));
            }
        }
        if verdict.refusal.is_some() {
            return verdict;
        }
        for one in applied {
            let compiled = &self.quotas[one.quota];
            let dry_run = compiled.is_dry_run();
            if dry_run && verdict.dry_run_hit(one.quota) {
                // Refused in the dry run: not charged, as a refusal would not be.
                continue;
            }
            match compiled.quota.charge {
                Charge::Every | Charge::Unauthenticated if check_first => {
                    let measure = compiled.limiters[one.tier].check(one.key, true);
                    let reports = want_reports && (!dry_run || self.dry_run_headers);
                    if !measure.allowed {
                        // Another request took the last unit between check and charge.
                        if dry_run {
                            verdict.dry_run.push(self.refuse_dry_run(one, &measure));
                            continue;
                        }
                        verdict.refusal = Some(self.refuse(one, &measure, source));
                        verdict.reports = vec![compiled.report(one.tier, &measure, one.quota)];
                        return verdict;
                    }
                    if reports {
                        verdict
                            .reports
                            .push(compiled.report(one.tier, &measure, one.quota));
                    }
                }
                _ => {}
            }
            if compiled.quota.charge == Charge::Unauthenticated {
                verdict.deferred.push(Deferred {
                    quota: one.quota,
                    tier: one.tier,
                    key: one.key,
                    digest: None,
                    #[cfg(feature = "redis")]
                    spend: None,
                });
            }
        }
        verdict
    }

    /// What a dry-run quota that said no would have answered. No strike is counted: a
    /// dry run must not ban anyone once the quota is enforced.
    fn refuse_dry_run(&self, one: &Applied, measure: &Measure) -> Refusal {
        match measure.at_capacity {
            true => Refusal::AtCapacity {
                quota: one.quota,
                retry_after: measure.retry_after,
            },
            false => Refusal::Limited {
                quota: one.quota,
                retry_after: measure.retry_after,
            },
        }
    }

    /// The refusal for a quota that said no, counting a strike towards a ban.
    fn refuse(&self, one: &Applied, measure: &Measure, source: &KeySource<'_>) -> Refusal {
        let compiled = &self.quotas[one.quota];
        if measure.at_capacity {
            return Refusal::AtCapacity {
                quota: one.quota,
                retry_after: measure.retry_after,
            };
        }
        if let Some(bans) = &compiled.bans {
            let label = || {
                key::label(
                    &compiled.quota.key,
                    compiled.quota.ipv6_prefix,
                    source,
                    &self.seed,
                )
                .unwrap_or_default()
            };
            if let Some(duration) = bans.strike(one.key, label) {
                metrics::counter!("portcullis_rate_limit_bans_total", "quota" => compiled.quota.name.clone())
                    .increment(1);
                portcullis_core::log_throttled!(
                    warn,
                    quota = compiled.quota.name,
                    key = %label(),
                    ban = %humantime::format_duration(duration),
                    "rate-limit: banned a key that kept exceeding its quota"
                );
                return Refusal::Banned {
                    quota: one.quota,
                    remaining: duration,
                };
            }
        }
        Refusal::Limited {
            quota: one.quota,
            retry_after: measure.retry_after,
        }
    }

    /// Refunds the reservations of quotas that count failed authentication, after an
    /// answer other than 401.
    pub(crate) fn refund_deferred(&self, deferred: &[Deferred]) {
        for one in deferred {
            self.quotas[one.quota].limiters[one.tier].refund(one.key);
        }
    }

    /// Drops idle keys from every quota and ban list.
    pub(crate) fn sweep(&self) -> usize {
        let mut dropped = 0;
        for compiled in &self.quotas {
            dropped += compiled.limiters.iter().map(Limiter::sweep).sum::<usize>();
            dropped += compiled.bans.as_ref().map_or(0, BanList::sweep);
            // Reported once a sweep (every minute by default), not per request.
            let tracked: usize = compiled.limiters.iter().map(Limiter::tracked).sum();
            metrics::gauge!("portcullis_rate_limit_tracked_keys", "quota" => compiled.quota.name.clone())
                .set(tracked as f64);
        }
        dropped
    }

    pub(crate) fn tracked(&self, quota: &str) -> Option<usize> {
        let compiled = self.quotas.iter().find(|c| c.quota.name == quota)?;
        Some(compiled.limiters.iter().map(Limiter::tracked).sum())
    }

    pub(crate) fn bans(&self) -> Vec<BanEntry> {
        let mut out = Vec::new();
        for compiled in &self.quotas {
            if let Some(bans) = &compiled.bans {
                bans.list(&compiled.quota.name, &mut out);
            }
        }
        out
    }

    pub(crate) fn lift_ban(&self, quota: &str, key: &str) -> bool {
        self.quotas
            .iter()
            .filter(|c| c.quota.name == quota)
            .filter_map(|c| c.bans.as_ref())
            .any(|bans| bans.lift(key))
    }
}

/// Sweeps on a schedule in a thread of its own, so idle keys go without the host
/// remembering to, with any runtime or none. The thread ends when the engine is dropped.
fn spawn_sweeper(engine: Weak<Engine>, stop: mpsc::Receiver<()>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("portcullis-rate-limit-sweep".into())
        .spawn(move || loop {
            match stop.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let dropped = engine.sweep();
            tracing::debug!(dropped, "rate-limit: swept idle keys");
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "rate-limit: could not start the sweeper thread; call RateLimitHandle::sweep yourself");
    }
}
