//! The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10):
//!
//! ```text
//! RateLimit-Policy: "per-key";q=25;w=300
//! RateLimit: "per-key";r=0;t=12
//! ```
//!
//! Both are Structured Field lists of the quota's name with parameters: `q` the quota,
//! `w` its window in seconds, `r` what remains, `t` seconds until the quota is back.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One quota's line in both fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) quota: usize,
    pub(crate) limit: u32,
    pub(crate) window: Duration,
    pub(crate) remaining: u32,
    pub(crate) reset: Duration,
}

/// Whole seconds, rounded up: a client told to wait must never come back too early.
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Writes both fields for `reports`, naming each quota through `name`. Quota names are
/// validated to be tokens, so they need no escaping inside the quotes.
pub(crate) fn write<'a>(
    headers: &mut HeaderMap,
    reports: &[Report],
    name: impl Fn(usize) -> &'a str,
) {
    if reports.is_empty() {
        return;
    }
    let mut policy = String::with_capacity(32 * reports.len());
    let mut state = String::with_capacity(32 * reports.len());
    for report in reports {
        if !policy.is_empty() {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let quota = name(report.quota);
        let _ = write!(
            policy,
            "\"{quota}\";q={};w={}",
            report.limit,
            ceil_secs(report.window)
        );
        let _ = write!(
            state,
            "\"{quota}\";r={};t={}",
            report.remaining,
            ceil_secs(report.reset)
        );
    }
    if let (Ok(policy), Ok(state)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(12)), 12);
        assert_eq!(ceil_secs(Duration::from_millis(12_001)), 13);
    }

    #[test]
    fn writes_one_list_member_per_quota() {
        let mut headers = HeaderMap::new();
        let reports = [
            Report {
                quota: 0,
                limit: 25,
                window: Duration::from_secs(300),
                remaining: 0,
                reset: Duration::from_millis(11_500),
            },
            Report {
                quota: 1,
                limit: 100,
                window: Duration::from_secs(1),
                remaining: 99,
                reset: Duration::from_millis(10),
            },
        ];
        write(&mut headers, &reports, |i| ["per-key", "per-ip"][i]);
        assert_eq!(
            headers[RATELIMIT_POLICY],
            "\"per-key\";q=25;w=300, \"per-ip\";q=100;w=1"
        );
        assert_eq!(
            headers[RATELIMIT],
            "\"per-key\";r=0;t=12, \"per-ip\";r=99;t=1"
        );
    }
}
