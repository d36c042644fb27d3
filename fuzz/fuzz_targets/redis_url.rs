//! Redis URLs as `RedisBackend::connect` reads them: one server (`redis://`), a
//! cluster (`redis+cluster://n1,n2/`) or a Sentinel master
//! (`redis+sentinel://s1,s2/MASTER/db`).
//!
//! Input: the URL text. Seeds carry the password `hunter2`.
//!
//! Invariants: no panic, nothing connects (parsing only); an error's text never holds
//! the URL's password; a URL of the cluster or Sentinel scheme is read as that kind or
//! refused, never taken for one server.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let answer = portcullis_rate_limit::fuzzing::redis_url(url);
    match &answer {
        Err(error) => assert!(!error.contains("hunter2"), "{error}"),
        Ok(kind) => {
            let scheme = url.split("://").next().unwrap_or("");
            match scheme {
                "redis+cluster" | "rediss+cluster" => assert_eq!(*kind, "cluster", "{url}"),
                "redis+sentinel" | "rediss+sentinel" => assert_eq!(*kind, "sentinel", "{url}"),
                _ => assert_eq!(*kind, "single", "{url}"),
            }
        }
    }
});
