//! Operational log lines that a flood of requests cannot multiply: at most one line a
//! second from one place, saying how many were held back since the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// At most one log line a second from one place. A failure that every request meets
/// (a key store down, a disk full, a header an attacker sends on every request) is
/// logged once a second with the count of lines held back, not once per request.
///
/// ```
/// use portcullis_core::LogThrottle;
///
/// static STORE_DOWN: LogThrottle = LogThrottle::new();
/// assert_eq!(STORE_DOWN.admit(), Some(0)); // logged
/// assert_eq!(STORE_DOWN.admit(), None); // within the same second: held back
/// ```
///
/// [`log_throttled!`](crate::log_throttled) keeps one at each call site.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// The second (since the epoch, plus one) of the last line; 0 before the first.
    second: AtomicU64,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// A throttle that admits its first line.
    pub const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now;
    /// `None` (and one more held back) otherwise.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
            + 1;
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let last = self.second.load(Ordering::Relaxed);
        if last != second
            && self
                .second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A `tracing` event at most once a second from this call site, with a `held_back`
/// field counting the events suppressed since the last one.
///
/// ```
/// # let error = "connection refused";
/// portcullis_core::log_throttled!(error, %error, "the key store failed; check that it is reachable");
/// ```
#[macro_export]
macro_rules! log_throttled {
    ($level:ident, $($rest:tt)+) => {{
        static THROTTLE: $crate::LogThrottle = $crate::LogThrottle::new();
        if let ::core::option::Option::Some(held_back) = THROTTLE.admit() {
            ::tracing::$level!(held_back, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(101), None);
        assert_eq!(throttle.admit_at(105), Some(1));
    }

    #[test]
    fn threads_racing_for_a_second_write_one_line_between_them() {
        let throttle = std::sync::Arc::new(LogThrottle::new());
        let admitted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let throttle = throttle.clone();
                    scope.spawn(move || {
                        (0..1000).filter(|_| throttle.admit_at(7).is_some()).count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1);
        assert_eq!(throttle.admit_at(8), Some(7_999));
    }
}
