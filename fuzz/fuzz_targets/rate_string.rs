//! Rate strings (`25 per 5m`, `100/s`) and bursts through `RateLimitLayer`.
//!
//! Input: the rate text, then optionally 0x00, a byte picking smooth or strict-window
//! semantics, and the burst as decimal text.
//!
//! Invariants: no panic; a parsed rate has a count ≥ 1, a period within
//! [`Rate::MIN_PERIOD`, `Rate::MAX_PERIOD`] and an emission interval of at least 1 ns
//! that is exactly `period / count`; its `Display` text parses back to the same rate;
//! a layer that builds, with the clock stopped, admits exactly the burst (the count for
//! the strict window, capped at the requests sent) and answers only 200 and 429.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{Clock, PeerAddr};
use portcullis_rate_limit::{Quota, Rate, RateLimitLayer, Semantics};
use tower::{Layer, ServiceExt};

const SENT: u32 = 6;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rate_text, rest) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(rate) = rate_text.parse::<Rate>() else {
        return;
    };
    assert!(rate.count() >= 1);
    assert!(rate.period() >= Rate::MIN_PERIOD && rate.period() <= Rate::MAX_PERIOD);
    let interval = rate.emission_interval();
    assert!(interval >= Duration::from_nanos(1));
    assert_eq!(interval, rate.period() / rate.count(), "{rate}");
    assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate), "{rate}");

    let mut chars = rest.chars();
    let strict = chars.next().is_some_and(|c| (c as u32) % 2 == 1);
    let burst: Option<u32> = chars.as_str().parse().ok();
    let mut quota = Quota::new("q", rate);
    if strict {
        quota = quota.semantics(Semantics::StrictWindow);
    }
    if let Some(burst) = burst {
        quota = quota.burst(burst);
    }
    let (clock, _stopped) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let Ok(layer) = RateLimitLayer::builder().quota(quota).clock(clock).build() else {
        return;
    };
    let inner = tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(()))
    });
    let service = layer.layer(inner);
    let mut allowed = 0;
    for _ in 0..SENT {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.1:5000".parse().unwrap()));
        let status = futures::executor::block_on(service.clone().oneshot(request))
            .unwrap()
            .status();
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    let expected = if strict {
        rate.count()
    } else {
        burst.unwrap_or(rate.count())
    };
    assert_eq!(allowed, expected.min(SENT), "{rate}, strict {strict}, burst {burst:?}");
});
