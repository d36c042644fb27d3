//! Monotonic nanoseconds for quotas, bans and sweeps.

use std::fmt;
use std::time::Duration;

use portcullis_core::Clock;

/// Where quotas read the time: the CPU's timestamp counter through `quanta` (a few
/// nanoseconds, where the system clock costs tens), or the test's manual [`Clock`].
#[derive(Clone)]
pub(crate) enum Ticker {
    System { clock: quanta::Clock, origin: u64 },
    Manual(Clock),
}

impl Ticker {
    pub(crate) fn new(clock: &Clock) -> Self {
        if clock.is_manual() {
            return Self::Manual(clock.clone());
        }
        let quanta = quanta::Clock::new();
        let origin = quanta.raw();
        Self::System {
            clock: quanta,
            origin,
        }
    }

    /// Nanoseconds since a fixed point; never goes backwards.
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            Self::System { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Self::Manual(clock) => nanos(clock.monotonic()),
        }
    }
}

/// A duration in whole nanoseconds, saturating (beyond 584 years).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Ticker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System { .. } => f.write_str("Ticker::System"),
            Self::Manual(clock) => f.debug_tuple("Ticker::Manual").field(clock).finish(),
        }
    }
}
