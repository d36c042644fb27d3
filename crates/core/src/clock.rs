//! Wall-clock time that tests can control.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a layer reads the current time when it checks expiry and validity windows.
///
/// The system clock by default; tests use [`Clock::manual`] so that boundaries are
/// checked to the second without sleeping.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use portcullis_core::Clock;
///
/// let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_000));
/// control.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_005));
/// ```
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// A clock that stands still at `start` until moved through the returned
    /// [`ManualClock`]. Millisecond resolution.
    pub fn manual(start: SystemTime) -> (Self, ManualClock) {
        let millis = Arc::new(AtomicU64::new(to_millis(start)));
        (Self(Source::Manual(millis.clone())), ManualClock(millis))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(millis) => {
                UNIX_EPOCH + Duration::from_millis(millis.load(Ordering::Acquire))
            }
        }
    }

    /// Time on a clock that never goes backwards, measured from a fixed point of this
    /// clock: for the system clock, its first use in this process; for a manual clock,
    /// the UNIX epoch.
    ///
    /// Rate limits and caches measure intervals with it, so that a step of the wall
    /// clock (NTP, a host's time being set) cannot lengthen or shorten them.
    pub fn monotonic(&self) -> Duration {
        match &self.0 {
            Source::System => {
                static ORIGIN: OnceLock<Instant> = OnceLock::new();
                ORIGIN.get_or_init(Instant::now).elapsed()
            }
            Source::Manual(millis) => Duration::from_millis(millis.load(Ordering::Acquire)),
        }
    }

    /// Whether this is a [`Clock::manual`] clock. Layers that share state between
    /// instances (a Redis backend) use the server's time, except under a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::System"),
            Source::Manual(_) => write!(f, "Clock::Manual({:?})", self.now()),
        }
    }
}

/// Moves a [`Clock::manual`] clock. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(by, Ordering::AcqRel);
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        self.0.store(to_millis(to), Ordering::Release);
    }
}

fn to_millis(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
