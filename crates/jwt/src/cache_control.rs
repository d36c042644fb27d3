//! How long a key server says its document stays fresh (`Cache-Control`, RFC 9111
//! 5.2.2). Read by hand: the few directives that matter here are a short list, and the
//! typed-header crates would bring a dependency for it.

use std::time::Duration;

use http::header::{HeaderMap, CACHE_CONTROL};

/// `max-age` of the response's `Cache-Control` lines, taken together:
/// - `no-cache` or `no-store`: zero (fetch again as soon as allowed);
/// - `max-age` given twice with different values: zero (RFC 9111 4.2.1 lets a cache
///   treat it as stale; the caller's minimum interval still bounds the refresh);
/// - no `max-age`, or one that is not a number of seconds: `None` (the caller's own
///   schedule).
///
/// Directive names are case-insensitive; a quoted value (`max-age="60"`) is read as
/// RFC 9111 asks recipients to. A line that is not text is ignored.
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    let mut conflicting = false;
    let mut no_cache = false;
    for line in headers.get_all(CACHE_CONTROL) {
        let Ok(line) = line.to_str() else { continue };
        for directive in line.split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                no_cache = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                let Some(seconds) = value.and_then(seconds) else {
                    continue;
                };
                match max_age {
                    Some(earlier) if earlier != seconds => conflicting = true,
                    _ => max_age = Some(seconds),
                }
            }
        }
    }
    if no_cache || conflicting {
        return Some(Duration::ZERO);
    }
    max_age.map(Duration::from_secs)
}

/// `delta-seconds` (RFC 9111 1.2.2), bare or quoted; a value too large for a `u64` is
/// the largest one, as the RFC asks.
fn seconds(value: &str) -> Option<u64> {
    let digits = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(lines: &[&str]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, line.parse().unwrap());
        }
        max_age(&headers)
    }

    #[test]
    fn max_age_in_its_spellings() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(age(&[]), None);
        assert_eq!(age(&["max-age=300"]), secs(300));
        assert_eq!(age(&["public, max-age=300, must-revalidate"]), secs(300));
        assert_eq!(age(&["MAX-AGE=60"]), secs(60));
        assert_eq!(age(&["max-age = 60"]), secs(60));
        assert_eq!(age(&["max-age=\"60\""]), secs(60));
        assert_eq!(age(&["public", "max-age=120"]), secs(120));
        assert_eq!(age(&["max-age=60", "max-age=60"]), secs(60));
        assert_eq!(age(&["max-age=99999999999999999999999"]), secs(u64::MAX));
        // s-maxage is for shared caches; this is a private one.
        assert_eq!(age(&["s-maxage=60"]), None);
    }

    #[test]
    fn fetch_again_soon_when_told_not_to_cache_or_told_two_things() {
        let zero = Some(Duration::ZERO);
        assert_eq!(age(&["no-cache"]), zero);
        assert_eq!(age(&["No-Store, max-age=3600"]), zero);
        assert_eq!(age(&["max-age=3600", "no-cache"]), zero);
        assert_eq!(age(&["max-age=60, max-age=3600"]), zero);
        assert_eq!(age(&["max-age=60", "max-age=3600"]), zero);
        assert_eq!(age(&["max-age=0"]), zero);
    }

    #[test]
    fn malformed_values_are_ignored() {
        for line in [
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=60s",
            "max-age=\"60",
            "max-age=0x10",
            "max-age=+60",
            "max-age",
        ] {
            assert_eq!(age(&[line]), None, "{line}");
        }
        // One bad directive leaves the good one.
        assert_eq!(
            age(&["max-age=abc, max-age=30"]),
            Some(Duration::from_secs(30))
        );
    }
}
