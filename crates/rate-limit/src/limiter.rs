//! In-process limiters: governor's GCRA over our bounded key map, and a strict sliding
//! window.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::ticker::{nanos, Ticker};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::RateLimiter;

use crate::quota::{Overflow, Semantics};
use crate::rate::Rate;
use crate::slots::{Slot, Slots};

/// A quota's answer for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Measure {
    pub(crate) allowed: bool,
    /// For a refusal: until the next request would be allowed.
    pub(crate) retry_after: Duration,
    /// Refused because the key map is full ([`Overflow::Refuse`]).
    pub(crate) at_capacity: bool,
    /// What remains, worked out only if the headers need it: governor's answer costs a
    /// division that an allowed request without headers need not pay.
    state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Known {
        remaining: u32,
        reset: Duration,
    },
    Smooth {
        snapshot: StateSnapshot,
        charged: bool,
        interval: u64,
        burst: u32,
    },
}

impl Measure {
    fn at_capacity(retry_after: Duration) -> Self {
        Self {
            allowed: false,
            retry_after,
            at_capacity: true,
            state: State::Known {
                remaining: 0,
                reset: retry_after,
            },
        }
    }

    /// Requests left right now.
    pub(crate) fn remaining(&self) -> u32 {
        match &self.state {
            State::Known { remaining, .. } => *remaining,
            // governor counts this request as taken; a check without charge has not
            // taken it.
            State::Smooth {
                snapshot,
                charged: true,
                ..
            } => snapshot.remaining_burst_capacity(),
            State::Smooth {
                snapshot, burst, ..
            } => (snapshot.remaining_burst_capacity() + 1).min(*burst),
        }
    }

    /// Until the whole quota is available again.
    pub(crate) fn reset(&self) -> Duration {
        match &self.state {
            State::Known { reset, .. } => *reset,
            // An upper bound, within one interval: never too early.
            State::Smooth {
                interval, burst, ..
            } => Duration::from_nanos(
                interval.saturating_mul(u64::from(burst.saturating_sub(self.remaining()))),
            ),
        }
    }
}

/// The limit of one quota (or one of its tiers) over all its keys.
pub(crate) struct Limiter {
    kind: Kind,
    rate: Rate,
}

enum Kind {
    Smooth(Smooth),
    Strict(Strict),
}

impl Limiter {
    pub(crate) fn new(
        rate: Rate,
        burst: Option<u32>,
        semantics: Semantics,
        cap: usize,
        overflow: Overflow,
        clock: &Ticker,
    ) -> Self {
        let share = overflow == Overflow::SharedBucket;
        match semantics {
            Semantics::Smooth => {
                let burst = burst.unwrap_or(rate.count()).max(1);
                Self {
                    kind: Kind::Smooth(Smooth::new(rate, burst, cap, share, clock)),
                    rate,
                }
            }
            Semantics::StrictWindow => Self {
                kind: Kind::Strict(Strict {
                    slots: Slots::new(cap, share, Mutex::new(VecDeque::new())),
                    count: rate.count(),
                    period: nanos(rate.period()),
                    clock: clock.clone(),
                }),
                rate,
            },
        }
    }

    /// Checks `key` and, if `charge`, charges it for one request when allowed.
    pub(crate) fn check(&self, key: u64, charge: bool) -> Measure {
        match &self.kind {
            Kind::Smooth(smooth) => smooth.check(key, charge),
            Kind::Strict(strict) => strict.check(key, charge),
        }
    }

    /// Gives back one request charged to `key`: a reservation taken before the inner
    /// service ran, for a request that turned out not to count (a quota that charges
    /// only failed authentication, and the answer was not a 401). A key in the shared
    /// overflow bucket is not refunded: the bucket errs on the strict side.
    pub(crate) fn refund(&self, key: u64) {
        match &self.kind {
            Kind::Smooth(smooth) => smooth.refund(key),
            Kind::Strict(strict) => strict.refund(key),
        }
    }

    /// Drops keys whose state is back to "never seen". Returns how many.
    pub(crate) fn sweep(&self) -> usize {
        match &self.kind {
            Kind::Smooth(smooth) => smooth.sweep(),
            Kind::Strict(strict) => strict.sweep(),
        }
    }

    pub(crate) fn tracked(&self) -> usize {
        match &self.kind {
            Kind::Smooth(smooth) => smooth.store.0.tracked(),
            Kind::Strict(strict) => strict.slots.tracked(),
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// The most requests the quota admits at once.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn burst(&self) -> u32 {
        match &self.kind {
            Kind::Smooth(smooth) => smooth.burst,
            Kind::Strict(strict) => strict.count,
        }
    }
}

/// A monotonic time far beyond any real uptime but far from overflowing governor's
/// additions (about 146 years).
const LATEST: u64 = u64::MAX / 4;

/// Our [`Ticker`] as governor's clock: monotonic nanoseconds.
#[derive(Clone)]
struct MonotonicClock(Ticker);

impl governor::clock::Clock for MonotonicClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.nanos().min(LATEST))
    }
}

/// What governor is asked about: a key, and whether to charge it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SlotKey {
    hash: u64,
    charge: bool,
}

/// Stands for "no state" in a slot: governor then starts the key afresh.
const ABSENT: u64 = u64::MAX;

/// governor's state store over [`Slots`]: a theoretical arrival time per key, updated
/// with compare-and-swap, and nothing written when the key is only checked.
struct GcraStore(Arc<Slots<AtomicU64>>);

impl StateStore for GcraStore {
    type Key = SlotKey;

    fn measure_and_replace<T, F, E>(&self, key: &SlotKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let slot = self.0.slot(key.hash, key.charge, || AtomicU64::new(ABSENT));
        let cell = match &slot {
            Slot::Own(own) => own.value(),
            Slot::Overflow(shared) => *shared,
            // `Full` is answered before governor is asked; treat it like a key never seen.
            Slot::Untracked | Slot::Full => return f(None).map(|(outcome, _)| outcome),
        };
        let mut previous = cell.load(Ordering::Acquire);
        loop {
            let current = (previous != ABSENT).then(|| Nanos::new(previous));
            let (outcome, next) = f(current)?;
            if !key.charge {
                return Ok(outcome);
            }
            match cell.compare_exchange_weak(
                previous,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(outcome),
                Err(actual) => previous = actual,
            }
        }
    }
}

type Gcra = RateLimiter<SlotKey, GcraStore, MonotonicClock, StateInformationMiddleware>;

struct Smooth {
    limiter: Gcra,
    store: GcraStore,
    clock: MonotonicClock,
    /// Read after governor's own start, so sweeping never runs ahead of it.
    start: u64,
    interval: u64,
    burst: u32,
    refuse_when_full: bool,
}

impl Smooth {
    fn new(rate: Rate, burst: u32, cap: usize, share: bool, clock: &Ticker) -> Self {
        let slots = Arc::new(Slots::new(cap, share, AtomicU64::new(ABSENT)));
        let interval = rate.emission_interval();
        let quota = governor::Quota::with_period(interval)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let clock = MonotonicClock(clock.clone());
        let limiter: Gcra = RateLimiter::new(quota, GcraStore(slots.clone()), clock.clone());
        let start = governor::clock::Clock::now(&clock).as_u64();
        Self {
            limiter,
            store: GcraStore(slots),
            clock,
            start,
            interval: nanos(interval),
            burst,
            refuse_when_full: !share,
        }
    }

    fn check(&self, key: u64, charge: bool) -> Measure {
        if self.refuse_when_full && charge && self.store.0.tracked() >= self.store.0.cap() {
            if let Slot::Full = self.store.0.slot(key, true, || AtomicU64::new(ABSENT)) {
                return Measure::at_capacity(Duration::from_nanos(self.interval));
            }
        }
        match self.limiter.check_key(&SlotKey { hash: key, charge }) {
            Ok(snapshot) => Measure {
                allowed: true,
                retry_after: Duration::ZERO,
                at_capacity: false,
                state: State::Smooth {
                    snapshot,
                    charged: charge,
                    interval: self.interval,
                    burst: self.burst,
                },
            },
            Err(not_until) => {
                let now = governor::clock::Clock::now(&self.clock);
                let retry_after = not_until.wait_time_from(now);
                // On a refusal the reset the client is told is the moment it may
                // retry: a `t` later than `Retry-After` would contradict it.
                Measure {
                    allowed: false,
                    retry_after,
                    at_capacity: false,
                    state: State::Known {
                        remaining: 0,
                        reset: retry_after,
                    },
                }
            }
        }
    }

    /// Moves the key's theoretical arrival time back by one emission interval: exactly
    /// the effect of one charge, undone.
    fn refund(&self, key: u64) {
        let Slot::Own(own) = self.store.0.slot(key, false, || AtomicU64::new(ABSENT)) else {
            return;
        };
        let cell = own.value();
        let mut previous = cell.load(Ordering::Acquire);
        while previous != ABSENT {
            let next = previous.saturating_sub(self.interval);
            match cell.compare_exchange_weak(previous, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => previous = actual,
            }
        }
    }

    fn sweep(&self) -> usize {
        let now = governor::clock::Clock::now(&self.clock)
            .as_u64()
            .saturating_sub(self.start);
        // A key whose theoretical arrival time has passed has its whole burst back:
        // forgetting it changes nothing.
        self.store
            .0
            .sweep(|tat| matches!(tat.load(Ordering::Acquire), t if t == ABSENT || t <= now))
    }
}

/// Timestamps of the requests in the current window, oldest first.
type Window = Mutex<VecDeque<u64>>;

struct Strict {
    slots: Slots<Window>,
    count: u32,
    period: u64,
    clock: Ticker,
}

impl Strict {
    fn now(&self) -> u64 {
        self.clock.nanos()
    }

    fn check(&self, key: u64, charge: bool) -> Measure {
        let now = self.now();
        let slot = self.slots.slot(key, charge, || Mutex::new(VecDeque::new()));
        let window = match &slot {
            Slot::Own(own) => own.value(),
            Slot::Overflow(shared) => *shared,
            Slot::Untracked => return self.measure(&VecDeque::new(), now, true),
            Slot::Full => return Measure::at_capacity(Duration::from_nanos(self.period)),
        };
        // A panic elsewhere cannot leave a half-written window: every change below is
        // a single push or pop.
        let mut stamps = window.lock().unwrap_or_else(PoisonError::into_inner);
        while stamps
            .front()
            .is_some_and(|&t| t.saturating_add(self.period) <= now)
        {
            stamps.pop_front();
        }
        let allowed = stamps.len() < self.count as usize;
        if allowed && charge {
            stamps.push_back(now);
        }
        self.measure(&stamps, now, allowed)
    }

    /// Removes the newest request from the key's window.
    fn refund(&self, key: u64) {
        if let Slot::Own(own) = self.slots.slot(key, false, || Mutex::new(VecDeque::new())) {
            own.value()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_back();
        }
    }

    fn measure(&self, stamps: &VecDeque<u64>, now: u64, allowed: bool) -> Measure {
        let until = |stamp: Option<&u64>| {
            Duration::from_nanos(
                stamp.map_or(0, |&t| t.saturating_add(self.period).saturating_sub(now)),
            )
        };
        let used = u32::try_from(stamps.len()).unwrap_or(u32::MAX);
        Measure {
            allowed,
            retry_after: if allowed {
                Duration::ZERO
            } else {
                until(stamps.front())
            },
            at_capacity: false,
            state: State::Known {
                remaining: self.count.saturating_sub(used),
                // Refused: the moment the oldest request leaves the window, which is
                // when the client may retry, the same as `Retry-After`.
                reset: if allowed {
                    until(stamps.back())
                } else {
                    until(stamps.front())
                },
            },
        }
    }

    fn sweep(&self) -> usize {
        let now = self.now();
        self.slots.sweep(|window| {
            let stamps = window.lock().unwrap_or_else(PoisonError::into_inner);
            stamps
                .back()
                .is_none_or(|&t| t.saturating_add(self.period) <= now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::Clock;
    use std::time::UNIX_EPOCH;

    fn limiter(
        rate: &str,
        semantics: Semantics,
        burst: Option<u32>,
    ) -> (Limiter, portcullis_core::ManualClock) {
        let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let limiter = Limiter::new(
            rate.parse().unwrap(),
            burst,
            semantics,
            1000,
            Overflow::SharedBucket,
            &Ticker::new(&clock),
        );
        (limiter, control)
    }

    fn admitted(limiter: &Limiter, key: u64, n: usize) -> usize {
        (0..n).filter(|_| limiter.check(key, true).allowed).count()
    }

    #[test]
    fn smooth_admits_the_burst_then_one_per_interval() {
        let (limiter, clock) = limiter("25 per 5m", Semantics::Smooth, None);
        assert_eq!(admitted(&limiter, 1, 25), 25);
        let refused = limiter.check(1, true);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(12));
        clock.advance(Duration::from_millis(11_999));
        assert!(!limiter.check(1, true).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check(1, true).allowed);
        assert!(!limiter.check(1, true).allowed);
        // Another key is untouched.
        assert_eq!(limiter.check(2, true).remaining(), 24);
    }

    #[test]
    fn smooth_admits_more_than_the_count_in_some_windows() {
        // The documented difference: within 5 minutes GCRA admits the burst plus the
        // refill, 25 + 24 = 49 requests.
        let (limiter, clock) = limiter("25 per 5m", Semantics::Smooth, None);
        let mut admitted_in_window = admitted(&limiter, 1, 25);
        for _ in 0..24 {
            clock.advance(Duration::from_secs(12));
            admitted_in_window += admitted(&limiter, 1, 1);
        }
        assert_eq!(admitted_in_window, 49);
    }

    #[test]
    fn strict_window_never_admits_more_than_the_count_in_any_period() {
        let (limiter, clock) = limiter("25 per 5m", Semantics::StrictWindow, None);
        assert_eq!(admitted(&limiter, 1, 25), 25);
        let refused = limiter.check(1, true);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(300));
        assert_eq!(refused.remaining(), 0);
        clock.advance(Duration::from_millis(299_999));
        assert!(!limiter.check(1, true).allowed);
        clock.advance(Duration::from_millis(1));
        // The whole window has passed: the full count again, and not one more.
        assert_eq!(admitted(&limiter, 1, 30), 25);
    }

    #[test]
    fn strict_window_slides() {
        let (limiter, clock) = limiter("3 per 10s", Semantics::StrictWindow, None);
        assert!(limiter.check(1, true).allowed); // t=0
        clock.advance(Duration::from_secs(4));
        assert!(limiter.check(1, true).allowed); // t=4
        assert!(limiter.check(1, true).allowed); // t=4
        let refused = limiter.check(1, true);
        assert_eq!(refused.retry_after, Duration::from_secs(6));
        clock.advance(Duration::from_secs(6)); // t=10: the first has left the window
        assert!(limiter.check(1, true).allowed);
        let refused = limiter.check(1, true);
        assert_eq!(refused.retry_after, Duration::from_secs(4));
    }

    #[test]
    fn a_check_without_charge_changes_nothing() {
        for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
            let (limiter, _clock) = limiter("2/s", semantics, None);
            for _ in 0..10 {
                let peek = limiter.check(1, false);
                assert!(peek.allowed);
                assert_eq!(peek.remaining(), 2, "{semantics:?}");
            }
            assert_eq!(limiter.tracked(), 0);
            assert_eq!(admitted(&limiter, 1, 3), 2);
            assert!(!limiter.check(1, false).allowed);
        }
    }

    #[test]
    fn sweep_forgets_only_replenished_keys() {
        for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
            let (limiter, clock) = limiter("10 per 10s", semantics, None);
            assert_eq!(admitted(&limiter, 1, 10), 10);
            clock.advance(Duration::from_secs(5));
            assert_eq!(admitted(&limiter, 2, 1), 1);
            assert_eq!(limiter.sweep(), 0, "{semantics:?}");
            clock.advance(Duration::from_secs(5));
            // Key 1 has its whole quota back in both. Key 2's one request comes back
            // after one interval (1 s) when smooth, and only when it leaves the window
            // (at 15 s) when strict.
            let (dropped, left) = match semantics {
                Semantics::Smooth => (2, 0),
                Semantics::StrictWindow => (1, 1),
            };
            assert_eq!(limiter.sweep(), dropped, "{semantics:?}");
            assert_eq!(limiter.tracked(), left);
            clock.advance(Duration::from_secs(5));
            assert_eq!(limiter.sweep(), left);
            assert_eq!(limiter.tracked(), 0);
        }
    }

    #[test]
    fn overflow_refuse_answers_at_capacity() {
        let (clock, _control) = Clock::manual(UNIX_EPOCH);
        for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
            let limiter = Limiter::new(
                "5/s".parse().unwrap(),
                None,
                semantics,
                2,
                Overflow::Refuse,
                &Ticker::new(&clock),
            );
            assert!(limiter.check(1, true).allowed);
            assert!(limiter.check(2, true).allowed);
            let full = limiter.check(3, true);
            assert!(!full.allowed && full.at_capacity, "{semantics:?}");
            assert!(full.retry_after > Duration::ZERO);
            assert!(limiter.check(1, true).allowed);
        }
    }

    #[test]
    fn headers_numbers_for_smooth_allowed_requests() {
        let (limiter, _clock) = limiter("10/s", Semantics::Smooth, Some(5));
        let first = limiter.check(1, true);
        assert_eq!(first.remaining(), 4);
        assert_eq!(first.reset(), Duration::from_millis(100));
        assert_eq!(limiter.burst(), 5);
    }

    #[test]
    fn a_refund_gives_back_exactly_one_charge() {
        for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
            let (limiter, _clock) = limiter("5 per 15m", semantics, None);
            assert_eq!(admitted(&limiter, 7, 10), 5, "{semantics:?}");
            limiter.refund(7);
            assert_eq!(admitted(&limiter, 7, 10), 1, "{semantics:?}");
            limiter.refund(7);
            limiter.refund(7);
            assert_eq!(admitted(&limiter, 7, 10), 2, "{semantics:?}");
            // A key never charged has nothing to give back.
            limiter.refund(8);
            assert_eq!(admitted(&limiter, 8, 10), 5, "{semantics:?}");
        }
    }
}
