//! In-process bans: strikes counted per key, and the keys banned for a while.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use portcullis_core::Clock;

use crate::quota::Ban;
use crate::slots::{Slot, Slots};
use crate::ticker::{nanos, Ticker};

/// A ban in force, as [`RateLimitHandle::bans`](crate::RateLimitHandle::bans) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    /// The quota whose refusals led to the ban.
    pub quota: String,
    /// The banned key, as `ip=203.0.113.9/32` or `principal=acme,route=POST /v1/sign`.
    /// Header values appear only as a digest.
    pub key: String,
    /// When the ban ends.
    pub until: SystemTime,
}

#[derive(Default)]
struct Strikes {
    count: u32,
    window_start: u64,
    banned_until: Option<u64>,
    label: Box<str>,
}

pub(crate) struct BanList {
    rule: Ban,
    slots: Slots<Mutex<Strikes>>,
    ticker: Ticker,
    /// For the wall-clock end of a ban, in listings.
    clock: Clock,
}

impl BanList {
    pub(crate) fn new(rule: Ban, cap: usize, clock: Clock, ticker: Ticker) -> Self {
        Self {
            rule,
            // Past the cap, new keys collect no strikes: a flood of addresses must not
            // grow the ban list, and each of them is still held to the quota.
            slots: Slots::new(cap, false, Mutex::new(Strikes::default())),
            ticker,
            clock,
        }
    }

    pub(crate) fn rule(&self) -> &Ban {
        &self.rule
    }

    fn now(&self) -> u64 {
        self.ticker.nanos()
    }

    /// The time left on `key`'s ban, if it is banned.
    pub(crate) fn banned(&self, key: u64) -> Option<Duration> {
        let Slot::Own(entry) = self.slots.slot(key, false, Default::default) else {
            return None;
        };
        let strikes = entry.value().lock().unwrap_or_else(PoisonError::into_inner);
        let until = strikes.banned_until?;
        let now = self.now();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Counts a refusal against `key`. Returns the ban's length if this strike bans it.
    pub(crate) fn strike(&self, key: u64, label: impl FnOnce() -> String) -> Option<Duration> {
        let Slot::Own(entry) = self.slots.slot(key, true, Default::default) else {
            return None;
        };
        let now = self.now();
        let mut strikes = entry.value().lock().unwrap_or_else(PoisonError::into_inner);
        if strikes.banned_until.is_some_and(|until| until > now) {
            return None;
        }
        if strikes.count == 0
            || now.saturating_sub(strikes.window_start) >= nanos(self.rule.window())
        {
            strikes.count = 0;
            strikes.window_start = now;
        }
        strikes.count = strikes.count.saturating_add(1);
        if strikes.count <= self.rule.strikes() {
            return None;
        }
        strikes.count = 0;
        strikes.banned_until = Some(now.saturating_add(nanos(self.rule.duration())));
        strikes.label = label().into_boxed_str();
        Some(self.rule.duration())
    }

    /// The bans in force.
    pub(crate) fn list(&self, quota: &str, out: &mut Vec<BanEntry>) {
        let now = self.now();
        let wall = self.clock.now();
        self.slots.for_each(|_, entry| {
            let strikes = entry.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(until) = strikes.banned_until.filter(|&until| until > now) {
                out.push(BanEntry {
                    quota: quota.to_owned(),
                    key: strikes.label.to_string(),
                    until: wall + Duration::from_nanos(until - now),
                });
            }
        });
    }

    /// Lifts the ban on the key labelled `label`. Returns whether there was one.
    pub(crate) fn lift(&self, label: &str) -> bool {
        let now = self.now();
        let mut found = None;
        self.slots.for_each(|key, entry| {
            let strikes = entry.lock().unwrap_or_else(PoisonError::into_inner);
            if &*strikes.label == label && strikes.banned_until.is_some_and(|until| until > now) {
                found = Some(key);
            }
        });
        match found {
            Some(key) => self.slots.remove(key),
            None => false,
        }
    }

    /// Forgets keys that are neither banned nor within a strike window.
    pub(crate) fn sweep(&self) -> usize {
        let now = self.now();
        let window = nanos(self.rule.window());
        self.slots.sweep(|entry| {
            let strikes = entry.lock().unwrap_or_else(PoisonError::into_inner);
            let banned = strikes.banned_until.is_some_and(|until| until > now);
            let counting = strikes.count > 0 && now.saturating_sub(strikes.window_start) < window;
            !banned && !counting
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.slots.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn more_than_n_strikes_within_the_window_ban_for_the_duration() {
        let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_000));
        let bans = BanList::new(
            Ban::after(2, Duration::from_secs(60), Duration::from_secs(600)),
            100,
            clock.clone(),
            Ticker::new(&clock),
        );
        assert_eq!(bans.strike(1, || "k1".into()), None);
        assert_eq!(bans.strike(1, || "k1".into()), None);
        assert_eq!(bans.banned(1), None);
        assert_eq!(
            bans.strike(1, || "k1".into()),
            Some(Duration::from_secs(600))
        );
        assert_eq!(bans.banned(1), Some(Duration::from_secs(600)));
        assert_eq!(bans.banned(2), None);

        let mut listed = Vec::new();
        bans.list("q", &mut listed);
        assert_eq!(
            listed,
            [BanEntry {
                quota: "q".into(),
                key: "k1".into(),
                until: UNIX_EPOCH + Duration::from_secs(1_600),
            }]
        );

        control.advance(Duration::from_secs(599));
        assert_eq!(bans.banned(1), Some(Duration::from_secs(1)));
        control.advance(Duration::from_secs(1));
        assert_eq!(bans.banned(1), None, "the ban ends on time");
        assert_eq!(bans.sweep(), 1);
        assert_eq!(bans.tracked(), 0);
    }

    #[test]
    fn strikes_outside_the_window_start_over() {
        let (clock, control) = Clock::manual(UNIX_EPOCH);
        let bans = BanList::new(
            Ban::after(1, Duration::from_secs(10), Duration::from_secs(60)),
            100,
            clock.clone(),
            Ticker::new(&clock),
        );
        assert_eq!(bans.strike(7, String::new), None);
        control.advance(Duration::from_secs(10));
        assert_eq!(bans.strike(7, String::new), None, "a new window");
        assert!(bans.strike(7, String::new).is_some());
    }

    #[test]
    fn a_lifted_ban_is_gone() {
        let (clock, _control) = Clock::manual(UNIX_EPOCH);
        let bans = BanList::new(
            Ban::after(0, Duration::from_secs(10), Duration::from_secs(60)),
            100,
            clock.clone(),
            Ticker::new(&clock),
        );
        assert!(bans.strike(7, || "ip=192.0.2.1/32".into()).is_some());
        assert!(!bans.lift("ip=192.0.2.2/32"));
        assert!(bans.lift("ip=192.0.2.1/32"));
        assert_eq!(bans.banned(7), None);
        assert!(!bans.lift("ip=192.0.2.1/32"));
    }
}
