//! Rates written as "N per period".

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// How many requests a quota admits per period: `25 per 5m`, `100/s`, `1000 per 1h`.
///
/// A rate is always "N per period", never "one per N": a `per_second(5)` that meant one
/// request every five seconds has taken services down.
///
/// ```
/// use std::time::Duration;
/// use portcullis_rate_limit::Rate;
///
/// let rate: Rate = "25 per 5m".parse()?;
/// assert_eq!(rate.count(), 25);
/// assert_eq!(rate.period(), Duration::from_secs(300));
/// assert_eq!("100/s".parse::<Rate>()?, Rate::per_second(100)?);
/// # Ok::<(), portcullis_rate_limit::InvalidRate>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU32,
    period: Duration,
}

impl Rate {
    /// The shortest period a rate may have.
    pub const MIN_PERIOD: Duration = Duration::from_millis(1);
    /// The longest period a rate may have: one year.
    pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

    /// `count` requests per `period`.
    pub fn new(count: u32, period: Duration) -> Result<Self, InvalidRate> {
        let count = NonZeroU32::new(count).ok_or(InvalidRate::ZeroCount)?;
        if period < Self::MIN_PERIOD {
            return Err(InvalidRate::PeriodTooShort);
        }
        if period > Self::MAX_PERIOD {
            return Err(InvalidRate::PeriodTooLong);
        }
        // The smooth semantics space requests `period / count` apart, in nanoseconds: a
        // finer rate would be rounded to one per nanosecond, another rate than written.
        if period.as_nanos() < u128::from(count.get()) {
            return Err(InvalidRate::TooFine);
        }
        Ok(Self { count, period })
    }

    /// `count` requests per second.
    pub fn per_second(count: u32) -> Result<Self, InvalidRate> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Result<Self, InvalidRate> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u32) -> Result<Self, InvalidRate> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// The number of requests per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time one request's worth of quota takes to come back under the smooth
    /// semantics: `period / count`, at least one nanosecond (a finer rate is refused
    /// when it is made).
    pub fn emission_interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_nanos(1))
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

impl FromStr for Rate {
    type Err = InvalidRate;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (count, period) = match text.split_once('/') {
            Some(split) => split,
            None => text.split_once(" per ").ok_or(InvalidRate::Syntax)?,
        };
        // Digits only: `u32::from_str` would also take a sign (`+5/s`).
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidRate::Syntax);
        }
        let count: u32 = count.parse().map_err(|_| InvalidRate::Syntax)?;
        let period = parse_period(period.trim())?;
        Self::new(count, period)
    }
}

/// A period: a humantime duration (`5m`, `300ms`, `1h 30m`), or a bare unit meaning one
/// of it (`s`, `second`, `minute`, `hour`, `day`).
fn parse_period(text: &str) -> Result<Duration, InvalidRate> {
    let one = |secs: u64| Ok(Duration::from_secs(secs));
    match text {
        "s" | "sec" | "second" => one(1),
        "m" | "min" | "minute" => one(60),
        "h" | "hour" => one(3600),
        "d" | "day" => one(86_400),
        _ => humantime::parse_duration(text).map_err(|_| InvalidRate::Period),
    }
}

/// Why a rate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRate {
    /// Not of the form `N per PERIOD` or `N/PERIOD`.
    #[error("a rate is written `N per PERIOD` or `N/PERIOD`, such as `25 per 5m` or `100/s`")]
    Syntax,
    /// The period is not a duration such as `5m`, `1s` or `hour`.
    #[error("the period is not a duration such as `5m`, `1s`, `300ms` or `hour`")]
    Period,
    /// A rate of zero requests; to refuse everything, use the ip-allowlist or the role
    /// router.
    #[error("a rate must admit at least one request per period")]
    ZeroCount,
    /// The period is shorter than [`Rate::MIN_PERIOD`].
    #[error("the period must be at least 1ms")]
    PeriodTooShort,
    /// The period is longer than [`Rate::MAX_PERIOD`].
    #[error("the period must be at most a year")]
    PeriodTooLong,
    /// More than one request per nanosecond (`count` above the period in nanoseconds).
    #[error("a rate may admit at most one request per nanosecond; lower the count or lengthen the period")]
    TooFine,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_spellings_and_bare_units() {
        let five_minutes = Rate::new(25, Duration::from_secs(300)).unwrap();
        assert_eq!("25 per 5m".parse::<Rate>(), Ok(five_minutes));
        assert_eq!("25/5m".parse::<Rate>(), Ok(five_minutes));
        assert_eq!(" 25 / 5min ".parse::<Rate>(), Ok(five_minutes));
        assert_eq!("100/s".parse::<Rate>(), Rate::per_second(100));
        assert_eq!("10 per minute".parse::<Rate>(), Rate::per_minute(10));
        assert_eq!("1000/hour".parse::<Rate>(), Rate::per_hour(1000));
        assert_eq!(
            "5 per 1h 30m".parse::<Rate>().unwrap().period(),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn refuses_what_is_not_a_rate() {
        assert_eq!("25".parse::<Rate>(), Err(InvalidRate::Syntax));
        assert_eq!("x per 5m".parse::<Rate>(), Err(InvalidRate::Syntax));
        assert_eq!("-1/s".parse::<Rate>(), Err(InvalidRate::Syntax));
        assert_eq!("25 per fortnight".parse::<Rate>(), Err(InvalidRate::Period));
        assert_eq!("0/s".parse::<Rate>(), Err(InvalidRate::ZeroCount));
        assert_eq!("1/0s".parse::<Rate>(), Err(InvalidRate::PeriodTooShort));
        assert_eq!("1/500us".parse::<Rate>(), Err(InvalidRate::PeriodTooShort));
        assert_eq!("1/400days".parse::<Rate>(), Err(InvalidRate::PeriodTooLong));
        assert_eq!("+5/s".parse::<Rate>(), Err(InvalidRate::Syntax));
        assert_eq!("5 5/s".parse::<Rate>(), Err(InvalidRate::Syntax));
        assert_eq!("99999999999/s".parse::<Rate>(), Err(InvalidRate::Syntax));
        // One per nanosecond is the finest rate; anything finer would be rounded to it.
        assert_eq!(
            "1000000/1ms".parse::<Rate>().map(|r| r.emission_interval()),
            Ok(Duration::from_nanos(1))
        );
        assert_eq!("1000001/1ms".parse::<Rate>(), Err(InvalidRate::TooFine));
        assert_eq!(
            Rate::new(u32::MAX, Duration::from_secs(1)),
            Err(InvalidRate::TooFine)
        );
    }

    #[test]
    fn displays_as_it_parses() {
        let rate: Rate = "25 per 5m".parse().unwrap();
        assert_eq!(rate.to_string(), "25 per 5m");
        assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        assert_eq!(rate.emission_interval(), Duration::from_secs(12));
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<Rate>();
        }

        #[test]
        fn round_trips(count in 1u32.., millis in 1u64..31_536_000_000) {
            let rate = Rate::new(count, Duration::from_millis(millis)).unwrap();
            prop_assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        }
    }
}
