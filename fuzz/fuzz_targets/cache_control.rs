//! `Cache-Control` as the JWT key refresh reads it (`max-age`, `no-cache`, `no-store`).
//!
//! Input: header lines separated by `\n`. Invariants: no panic; `no-cache` or
//! `no-store` named in any line means zero; a non-zero answer is a `max-age` value
//! some line carries (bare or quoted digits); an answer of `None` means no line
//! carries a `max-age` with digits.

#![no_main]

use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL};
use libfuzzer_sys::fuzz_target;

fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|d| match d.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
            None => (d.trim().to_ascii_lowercase(), None),
        })
        .collect()
}

fn digits(value: &str) -> Option<&str> {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit())).then_some(inner)
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(CACHE_CONTROL, value);
        }
    }
    let answer = portcullis_jwt::fuzzing::cache_control_max_age(&headers);
    let found = directives(&headers);
    let no_cache = found
        .iter()
        .any(|(name, _)| name == "no-cache" || name == "no-store");
    let ages: Vec<u64> = found
        .iter()
        .filter(|(name, _)| name == "max-age")
        .filter_map(|(_, value)| value.as_deref().and_then(digits))
        .map(|d| d.parse().unwrap_or(u64::MAX))
        .collect();
    if no_cache {
        assert_eq!(answer, Some(std::time::Duration::ZERO));
    }
    match answer {
        None => assert!(ages.is_empty() && !no_cache, "{found:?}"),
        Some(age) if !age.is_zero() => {
            assert!(ages.iter().all(|a| *a == age.as_secs()), "{found:?}: {age:?}");
        }
        Some(_) => {}
    }
});
