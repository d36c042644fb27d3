//! Leased permits: an instance takes a few permits of a key from Redis in one script
//! call and spends them in process, so that a key far from its limit costs a round
//! trip per lease rather than per request.
//!
//! - A lease is counted in Redis when it is granted (GCRA: k arrivals now; strict
//!   window: k members dated at the lease's end), so leases can only be stricter than
//!   deciding each request in Redis.
//! - Redis grants at most half of what is left of the key's quota: near the boundary
//!   leases shrink to one permit, a round trip per request, and the count stays exact.
//! - A lease is spent for at most its TTL. What is left then goes back to Redis (with
//!   the next renewal, or from the sweeper when the key went idle). An instance that
//!   dies leaves its permits counted: a smooth quota's drain within the TTL (a lease
//!   holds at most a TTL's worth of the rate); a strict window's stay in the window, as
//!   permits that may have been spent must.
//! - The size follows the key's recent rate on this instance: a TTL's worth of it,
//!   bounded by the configured maximum and by a TTL's worth of the quota's rate.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::engine::Applied;

const SHARDS: usize = 16;

/// Part of the keys' leases, behind one lock.
type Shard = Mutex<HashMap<LeaseKey, Arc<Entry>>>;

/// The leases of one layer instance.
pub(crate) struct Leases {
    shards: Box<[Shard]>,
    /// What goes back to Redis at the sweeper's next round: permits whose lease was
    /// replaced or refused before they could be spent.
    pending: Mutex<Vec<GiveBack>>,
    ttl: Duration,
    /// Per quota, per tier: the largest lease (at most 1: decided per request).
    caps: Vec<Vec<u32>>,
    /// Per quota: whether it is a strict window (its give-backs name members).
    strict: Vec<bool>,
    /// This instance's prefix of lease ids, then a counter.
    prefix: String,
    counter: AtomicU64,
    /// How long a renewal may be out before another request may ask (ticker ns): a
    /// request dropped while waiting for Redis never ends its renewal.
    stale: u64,
    /// The most keys one shard tracks; past it new keys are decided per request, so a
    /// flood of keys cannot grow memory without bound.
    per_shard: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LeaseKey {
    quota: usize,
    tier: usize,
    key: u64,
}

/// One key's leases on this instance.
pub(crate) struct Entry {
    state: Mutex<EntryState>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").finish_non_exhaustive()
    }
}

struct EntryState {
    /// The key's name in Redis, known from its first call.
    digest: Option<Box<str>>,
    lease: Option<Lease>,
    /// A renewal is on its way, since then (ticker ns): other requests meanwhile go
    /// to Redis one by one.
    renewing: Option<u64>,
    /// Requests since `since` (ticker nanoseconds): the key's recent rate.
    arrivals: u32,
    since: u64,
    last_seen: u64,
}

struct Lease {
    id: Arc<str>,
    size: u32,
    next: u32,
    /// Permits given back in process (refunded reservations, refused requests).
    free: Vec<u32>,
    /// Ticker nanoseconds past which the lease is not spent.
    expires: u64,
    /// Smooth quotas: the arrival time in Redis after the grant (µs).
    tat: i64,
    /// What Redis had left after the grant, and when its window resets (ticker ns).
    remaining: u32,
    reset_at: u64,
}

impl Lease {
    fn take(&mut self) -> Option<u32> {
        if let Some(index) = self.free.pop() {
            return Some(index);
        }
        (self.next < self.size).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn unspent(&self) -> u32 {
        self.size - self.next + u32::try_from(self.free.len()).unwrap_or(u32::MAX)
    }

    /// The unspent permits as the script's give-back argument.
    fn give_back(&self, strict: bool) -> String {
        if !strict {
            return format!("{} {}", self.unspent(), self.tat);
        }
        let mut spec = self.id.to_string();
        for index in self.free.iter().copied().chain(self.next..self.size) {
            spec.push(' ');
            spec.push_str(&index.to_string());
        }
        spec
    }
}

/// A permit spent from a lease (or charged alone under a lease id): where a refund
/// sends it back.
#[derive(Clone, Debug)]
pub(crate) struct Spend {
    entry: Option<Arc<Entry>>,
    lease: Arc<str>,
    index: u32,
    pub(crate) tat: i64,
}

impl Spend {
    /// A permit charged alone under `lease` (no lease kept in process).
    pub(crate) fn alone(lease: Arc<str>, tat: i64) -> Self {
        Self {
            entry: None,
            lease,
            index: 0,
            tat,
        }
    }
}

/// Permits going back to Redis.
pub(crate) struct GiveBack {
    pub(crate) quota: usize,
    pub(crate) tier: usize,
    pub(crate) digest: Box<str>,
    /// The script's give-back argument.
    pub(crate) spec: String,
}

/// How a leased quota decides one request.
pub(crate) enum Take {
    /// Spent from this instance's lease: no round trip.
    Spent {
        spend: Spend,
        remaining: u32,
        reset: Duration,
    },
    /// Ask Redis for a lease of `want` permits under `lease`, after giving back
    /// `give_back` (the expired lease's unspent permits, or nothing).
    Renew {
        entry: Arc<Entry>,
        want: u32,
        lease: Arc<str>,
        give_back: String,
    },
    /// Charge this request alone under `lease` (a renewal is already on its way).
    Alone { lease: Arc<str> },
}

impl Leases {
    /// `stale`: how long a renewal may take (the Redis budget); `max_keys`: the most
    /// keys tracked.
    pub(crate) fn new(
        ttl: Duration,
        caps: Vec<Vec<u32>>,
        strict: Vec<bool>,
        prefix: String,
        stale: Duration,
        max_keys: usize,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pending: Mutex::default(),
            ttl,
            caps,
            strict,
            prefix,
            counter: AtomicU64::new(0),
            stale: crate::ticker::nanos(stale),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Whether the quota and tier lease at all (their cap is above one permit).
    pub(crate) fn leases(&self, quota: usize, tier: usize) -> bool {
        self.caps[quota][tier] > 1
    }

    fn shard(&self, key: &LeaseKey) -> &Shard {
        &self.shards[(key.key as usize ^ key.quota) % SHARDS]
    }

    /// Whether any quota leases.
    pub(crate) fn any(&self) -> bool {
        self.caps.iter().flatten().any(|cap| *cap > 1)
    }

    pub(crate) fn new_id(&self) -> Arc<str> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n:x}", self.prefix).into()
    }

    /// Spends a permit of `applied`'s lease, or says how to ask Redis. `now` is ticker
    /// nanoseconds.
    pub(crate) fn take(&self, applied: &Applied, now: u64) -> Take {
        let map_key = LeaseKey {
            quota: applied.quota,
            tier: applied.tier,
            key: applied.key,
        };
        let entry = {
            let mut shard = self
                .shard(&map_key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if shard.len() >= self.per_shard && !shard.contains_key(&map_key) {
                drop(shard);
                return Take::Alone {
                    lease: self.new_id(),
                };
            }
            shard
                .entry(map_key)
                .or_insert_with(|| {
                    Arc::new(Entry {
                        state: Mutex::new(EntryState {
                            digest: None,
                            lease: None,
                            renewing: None,
                            arrivals: 0,
                            since: now,
                            last_seen: now,
                        }),
                    })
                })
                .clone()
        };
        let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.arrivals = state.arrivals.saturating_add(1);
        state.last_seen = now;
        if let Some(lease) = state.lease.as_mut().filter(|lease| now < lease.expires) {
            if let Some(index) = lease.take() {
                let spend = Spend {
                    entry: Some(entry.clone()),
                    lease: lease.id.clone(),
                    index,
                    tat: lease.tat,
                };
                return Take::Spent {
                    spend,
                    remaining: lease.remaining.saturating_add(lease.unspent()),
                    reset: Duration::from_nanos(lease.reset_at.saturating_sub(now)),
                };
            }
        }
        if state
            .renewing
            .is_some_and(|since| now.saturating_sub(since) < self.stale)
        {
            return Take::Alone {
                lease: self.new_id(),
            };
        }
        // A TTL's worth of the key's rate since the last renewal (the first request
        // of a key asks for one permit).
        let cap = self.caps[applied.quota][applied.tier];
        let elapsed = now.saturating_sub(state.since).max(1_000_000);
        let ttl = crate::ticker::nanos(self.ttl);
        let want = u64::from(state.arrivals.saturating_sub(1))
            .saturating_mul(ttl)
            .div_ceil(elapsed)
            .clamp(1, u64::from(cap));
        let strict = self.strict[applied.quota];
        let give_back = match state.lease.take() {
            Some(old) if old.unspent() > 0 => old.give_back(strict),
            _ => String::new(),
        };
        state.renewing = Some(now);
        state.arrivals = 1;
        state.since = now;
        drop(state);
        Take::Renew {
            entry,
            want: u32::try_from(want).unwrap_or(cap),
            lease: self.new_id(),
            give_back,
        }
    }

    /// Installs the lease Redis granted for a renewal (`granted` permits, the first
    /// spent by the request that asked), and returns that request's spend.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn granted(
        &self,
        entry: &Arc<Entry>,
        lease: Arc<str>,
        digest: &str,
        granted: u32,
        tat: i64,
        remaining: u32,
        reset: Duration,
        sent_at: u64,
        now: u64,
    ) -> Spend {
        let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.renewing = None;
        if state.digest.is_none() {
            state.digest = Some(digest.into());
        }
        let spend = Spend {
            entry: Some(entry.clone()),
            lease: lease.clone(),
            index: 0,
            tat,
        };
        if granted > 1 {
            // Counted from when the request left, so the instance stops spending
            // before the end Redis dated the lease at.
            state.lease = Some(Lease {
                id: lease,
                size: granted,
                next: 1,
                free: Vec::new(),
                expires: sent_at.saturating_add(crate::ticker::nanos(self.ttl)),
                tat,
                remaining,
                reset_at: now.saturating_add(crate::ticker::nanos(reset)),
            });
        }
        spend
    }

    /// A renewal that Redis refused or did not answer: the next request may ask again.
    pub(crate) fn renewal_ended(&self, entry: &Entry) {
        let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.renewing = None;
    }

    /// Gives a spent permit back into its lease while the lease is still spent from;
    /// otherwise returns what must go back to Redis (`digest` names the key when this
    /// instance has not recorded it).
    pub(crate) fn put_back(
        &self,
        spend: &Spend,
        quota: usize,
        tier: usize,
        digest: Option<&str>,
        now: u64,
    ) -> Option<GiveBack> {
        let mut known = None;
        if let Some(entry) = &spend.entry {
            let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(lease) = state.lease.as_mut() {
                if lease.id == spend.lease && now < lease.expires {
                    lease.free.push(spend.index);
                    return None;
                }
            }
            known = state.digest.clone();
        }
        let digest = known.or_else(|| digest.map(Into::into))?;
        let spec = match self.strict[quota] {
            true => format!("{} {}", spend.lease, spend.index),
            false => format!("1 {}", spend.tat),
        };
        Some(GiveBack {
            quota,
            tier,
            digest,
            spec,
        })
    }

    /// Queues give-backs for the sweeper's next round.
    pub(crate) fn queue(&self, give_backs: impl IntoIterator<Item = GiveBack>) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(give_backs);
    }

    /// Takes the unspent permits of leases past their time (and what was queued), and
    /// forgets keys idle for two TTLs. Returns what goes back to Redis.
    pub(crate) fn sweep(&self, now: u64) -> Vec<GiveBack> {
        let mut out =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let idle = crate::ticker::nanos(self.ttl).saturating_mul(2);
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|key, entry| {
                let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(lease) = state.lease.take_if(|lease| now >= lease.expires) {
                    if let (true, Some(digest)) = (lease.unspent() > 0, state.digest.clone()) {
                        out.push(GiveBack {
                            quota: key.quota,
                            tier: key.tier,
                            digest,
                            spec: lease.give_back(self.strict[key.quota]),
                        });
                    }
                }
                let renewing = state
                    .renewing
                    .is_some_and(|since| now.saturating_sub(since) < self.stale);
                renewing || state.lease.is_some() || now.saturating_sub(state.last_seen) < idle
            });
        }
        out
    }

    /// How many keys this instance tracks leases for.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn leases(strict: bool) -> Leases {
        Leases::new(
            Duration::from_secs(1),
            vec![vec![50]],
            vec![strict],
            "i".into(),
            Duration::from_millis(50),
            1_000,
        )
    }

    fn applied(key: u64) -> Applied {
        Applied {
            quota: 0,
            tier: 0,
            key,
        }
    }

    fn renew(take: Take) -> (Arc<Entry>, u32, Arc<str>, String) {
        match take {
            Take::Renew {
                entry,
                want,
                lease,
                give_back,
            } => (entry, want, lease, give_back),
            Take::Spent { .. } => panic!("spent, not a renewal"),
            Take::Alone { .. } => panic!("alone, not a renewal"),
        }
    }

    #[test]
    fn a_new_key_asks_for_one_permit_then_for_its_rate() {
        let leases = leases(false);
        let (entry, want, lease, give_back) = renew(leases.take(&applied(1), 0));
        assert_eq!((want, give_back.as_str()), (1, ""));
        // While the renewal is out, others go alone.
        assert!(matches!(leases.take(&applied(1), MS), Take::Alone { .. }));
        leases.granted(&entry, lease, "d", 1, 0, 9, Duration::ZERO, 0, MS);
        // Two more requests within 10 ms: 200 per second, a TTL's worth capped at 50.
        let (_, want, _, _) = renew(leases.take(&applied(1), 10 * MS));
        assert_eq!(want, 50);
    }

    #[test]
    fn a_lease_is_spent_in_process_until_empty_or_expired() {
        let leases = leases(false);
        let (entry, _, lease, _) = renew(leases.take(&applied(1), 0));
        let first = leases.granted(&entry, lease, "d", 3, 77, 10, Duration::from_secs(1), 0, 0);
        assert_eq!(first.index, 0);
        for expected in 1..3 {
            match leases.take(&applied(1), MS) {
                Take::Spent {
                    spend, remaining, ..
                } => {
                    assert_eq!(spend.index, expected);
                    assert_eq!(remaining, 10 + 2 - expected);
                }
                _ => panic!("the lease has permits left"),
            }
        }
        // Empty: a renewal, with nothing to give back.
        let (entry, _, lease, give_back) = renew(leases.take(&applied(1), 2 * MS));
        assert_eq!(give_back, "");
        leases.granted(
            &entry,
            lease,
            "d",
            5,
            99,
            10,
            Duration::ZERO,
            2 * MS,
            2 * MS,
        );
        assert!(matches!(
            leases.take(&applied(1), 3 * MS),
            Take::Spent { .. }
        ));
        // Past its TTL, the 3 unspent permits go back with the renewal.
        let (_, _, _, give_back) = renew(leases.take(&applied(1), 2 * MS + 1000 * MS));
        assert_eq!(give_back, "3 99");
    }

    #[test]
    fn strict_windows_name_the_members_they_give_back() {
        let leases = leases(true);
        let (entry, _, lease, _) = renew(leases.take(&applied(1), 0));
        let first = leases.granted(&entry, lease.clone(), "d", 4, 0, 10, Duration::ZERO, 0, 0);
        let Take::Spent { spend: second, .. } = leases.take(&applied(1), MS) else {
            panic!("spent");
        };
        // A refund while the lease runs goes back into it, and is spent again first.
        assert!(leases.put_back(&first, 0, 0, None, 2 * MS).is_none());
        let Take::Spent { spend: again, .. } = leases.take(&applied(1), 3 * MS) else {
            panic!("spent");
        };
        assert_eq!(again.index, 0);
        assert!(leases.put_back(&again, 0, 0, None, 3 * MS).is_none());
        // Expired: the sweeper takes the unspent members by name (0 refunded, 2 and 3
        // never spent); index 1 stays spent.
        let back = leases.sweep(1001 * MS);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].spec, format!("{lease} 0 2 3"));
        assert_eq!(&*back[0].digest, "d");
        // A refund after the lease ended goes to Redis, by name.
        let late = leases
            .put_back(&second, 0, 0, None, 1002 * MS)
            .expect("to Redis");
        assert_eq!(late.spec, format!("{lease} 1"));
    }

    #[test]
    fn idle_keys_are_forgotten_and_refused_renewals_end() {
        let leases = leases(false);
        for key in 0..10 {
            let (entry, ..) = renew(leases.take(&applied(key), 0));
            leases.renewal_ended(&entry);
        }
        assert_eq!(leases.tracked(), 10);
        assert!(leases.sweep(MS).is_empty());
        assert_eq!(leases.tracked(), 10);
        assert!(leases.sweep(2001 * MS).is_empty());
        assert_eq!(leases.tracked(), 0);
        // A refused renewal lets the next request ask again.
        let (entry, ..) = renew(leases.take(&applied(1), 0));
        leases.renewal_ended(&entry);
        renew(leases.take(&applied(1), MS));
        // One whose request was dropped does too, once the budget has passed.
        assert!(matches!(
            leases.take(&applied(1), 2 * MS),
            Take::Alone { .. }
        ));
        renew(leases.take(&applied(1), 52 * MS));
    }

    #[test]
    fn past_the_key_limit_new_keys_are_decided_per_request() {
        let leases = leases(false);
        for key in 0..20_000 {
            let _ = leases.take(&applied(key), 0);
        }
        // 1,000 keys in 16 shards: at most 63 each.
        assert!(leases.tracked() <= 16 * 63, "{}", leases.tracked());
        assert!(leases.tracked() >= 900, "{}", leases.tracked());
        // A tracked key keeps its entry.
        assert!(matches!(
            leases.take(&applied(0), MS),
            Take::Alone { .. } | Take::Renew { .. }
        ));
    }
}
