//! The per-key state of one quota: a sharded map with a cap on how many keys it tracks.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Keys arrive already hashed with a seeded SipHash; hashing them again buys nothing.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; fold anything else in anyway.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where a key's state lives.
pub(crate) enum Slot<'a, V> {
    /// The key's own state.
    Own(dashmap::mapref::one::Ref<'a, u64, V>),
    /// The state shared by new keys once the map is full ([`Overflow::SharedBucket`]).
    ///
    /// [`Overflow::SharedBucket`]: crate::Overflow::SharedBucket
    Overflow(&'a V),
    /// The key is not tracked and was not to be created (a check without charge).
    Untracked,
    /// The map is full and new keys are refused ([`Overflow::Refuse`]).
    ///
    /// [`Overflow::Refuse`]: crate::Overflow::Refuse
    Full,
}

/// One quota's (or tier's) keys and their state, at most `cap` of them.
pub(crate) struct Slots<V> {
    map: DashMap<u64, V, BuildHasherDefault<Prehashed>>,
    tracked: AtomicUsize,
    cap: usize,
    share_overflow: bool,
    overflow: V,
}

impl<V> Slots<V> {
    pub(crate) fn new(cap: usize, share_overflow: bool, overflow: V) -> Self {
        Self {
            map: DashMap::default(),
            tracked: AtomicUsize::new(0),
            cap,
            share_overflow,
            overflow,
        }
    }

    /// The state of `key`, created with `new` if `create` and there is room.
    pub(crate) fn slot(&self, key: u64, create: bool, new: impl FnOnce() -> V) -> Slot<'_, V> {
        if let Some(own) = self.map.get(&key) {
            return Slot::Own(own);
        }
        if !create {
            return Slot::Untracked;
        }
        // A place is taken before the key is inserted, in one atomic step, so that keys
        // arriving at once never push the count past the cap (checking, then inserting,
        // let every concurrent arrival through).
        let place = self
            .tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            });
        if place.is_err() {
            return if self.share_overflow {
                Slot::Overflow(&self.overflow)
            } else {
                Slot::Full
            };
        }
        let mut inserted = false;
        let entry = self.map.entry(key).or_insert_with(|| {
            inserted = true;
            new()
        });
        if !inserted {
            // Another request inserted the same key meanwhile: give the place back.
            self.tracked.fetch_sub(1, Ordering::AcqRel);
        }
        Slot::Own(entry.downgrade())
    }

    /// Drops the keys `idle` says are idle and gives their memory back. Returns how
    /// many were dropped.
    pub(crate) fn sweep(&self, mut idle: impl FnMut(&V) -> bool) -> usize {
        let mut dropped = 0;
        self.map.retain(|_, value| {
            let keep = !idle(value);
            dropped += usize::from(!keep);
            keep
        });
        if dropped > 0 {
            self.tracked.fetch_sub(dropped, Ordering::Relaxed);
            self.map.shrink_to_fit();
        }
        dropped
    }

    /// The most keys tracked at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// How many keys are tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Every tracked key's state.
    pub(crate) fn for_each(&self, mut each: impl FnMut(u64, &V)) {
        for entry in self.map.iter() {
            each(*entry.key(), entry.value());
        }
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: u64) -> bool {
        let removed = self.map.remove(&key).is_some();
        if removed {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn the_cap_sends_new_keys_to_the_overflow_or_refuses_them() {
        let shared = Slots::new(2, true, AtomicU64::new(7));
        for key in [1, 2] {
            assert!(matches!(
                shared.slot(key, true, || AtomicU64::new(0)),
                Slot::Own(_)
            ));
        }
        assert!(matches!(
            shared.slot(3, true, || AtomicU64::new(0)),
            Slot::Overflow(v) if v.load(Ordering::Relaxed) == 7
        ));
        // A tracked key keeps its own state past the cap.
        assert!(matches!(
            shared.slot(1, true, || AtomicU64::new(0)),
            Slot::Own(_)
        ));
        assert!(matches!(
            shared.slot(4, false, || AtomicU64::new(0)),
            Slot::Untracked
        ));
        assert_eq!(shared.tracked(), 2);

        let refusing = Slots::new(1, false, AtomicU64::new(0));
        let _ = refusing.slot(1, true, || AtomicU64::new(0));
        assert!(matches!(
            refusing.slot(2, true, || AtomicU64::new(0)),
            Slot::Full
        ));
    }

    #[test]
    fn sweep_drops_idle_keys_and_makes_room() {
        let slots = Slots::new(3, false, AtomicU64::new(0));
        for key in 0..3 {
            let _ = slots.slot(key, true, || AtomicU64::new(key));
        }
        assert_eq!(slots.sweep(|v| v.load(Ordering::Relaxed) < 2), 2);
        assert_eq!(slots.tracked(), 1);
        assert!(matches!(
            slots.slot(9, true, || AtomicU64::new(0)),
            Slot::Own(_)
        ));
        assert!(slots.remove(9));
        assert!(!slots.remove(9));
        assert_eq!(slots.tracked(), 1);
    }

    /// Many threads bringing new keys at once: the count never passes the cap, and it
    /// always equals the keys actually held.
    #[test]
    fn concurrent_arrivals_never_pass_the_cap() {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        for share in [false, true] {
            let slots = Arc::new(Slots::new(100, share, AtomicU64::new(0)));
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let slots = slots.clone();
                    std::thread::spawn(move || {
                        let mut peak = 0;
                        for k in 0..2_000u64 {
                            // Overlapping keys between threads, and new ones.
                            let key = (k * 7 + t * 3) % 1_500;
                            let _ = slots.slot(key, true, || AtomicU64::new(0));
                            peak = peak.max(slots.tracked());
                        }
                        peak
                    })
                })
                .collect();
            for thread in threads {
                assert!(thread.join().unwrap() <= 100, "share: {share}");
            }
            assert_eq!(slots.tracked(), 100);
            let mut held = 0;
            slots.for_each(|_, _| held += 1);
            assert_eq!(held, 100);
        }
    }
}
