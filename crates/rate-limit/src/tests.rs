//! The layer's decisions through `Service::call`, at the exact boundaries, with a manual
//! clock instead of sleeps.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use portcullis_core::{
    AuditNote, AuditRecord, AuthMethod, Authentication, Clock, Decision, Denial, ManualClock,
    PeerAddr, Principal,
};
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;

use crate::headers::{RATELIMIT, RATELIMIT_POLICY};
use crate::*;

const T0: Duration = Duration::from_secs(1_800_000_000);

fn clock() -> (Clock, ManualClock) {
    Clock::manual(UNIX_EPOCH + T0)
}

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

/// A request from `ip`, with `principal` if given.
fn request(ip: &str, principal: Option<Principal>) -> Request<()> {
    request_to("/", ip, principal)
}

fn request_to(path: &str, ip: &str, principal: Option<Principal>) -> Request<()> {
    let mut request = Request::get(path).body(()).unwrap();
    let peer = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 40_000);
    request.extensions_mut().insert(PeerAddr(peer));
    if let Some(principal) = principal {
        Authentication::insert_into(request.extensions_mut(), principal).unwrap();
    }
    request
}

fn key_principal(id: &str, tier: Option<&str>) -> Principal {
    let builder = Principal::builder(id, AuthMethod::ApiKey).credential_id(format!("{id}-key"));
    match tier {
        Some(tier) => builder.rate_limit_tier(tier).build(),
        None => builder.build(),
    }
}

#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    code: Option<&'static str>,
    headers: HeaderMap,
    inner_called: bool,
}

/// Calls a service built by `layer` whose inner service answers `inner_status`.
fn call_with(layer: &RateLimitLayer, request: Request<()>, inner_status: StatusCode) -> Outcome {
    let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inner = {
        let called = called.clone();
        service_fn(move |_: Request<()>| {
            called.store(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                *response.status_mut() = inner_status;
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let response = futures::executor::block_on(layer.layer(inner).oneshot(request)).unwrap();
    Outcome {
        status: response.status(),
        code: response.extensions().get::<Denial>().map(Denial::code),
        headers: response.headers().clone(),
        inner_called: called.load(std::sync::atomic::Ordering::SeqCst),
    }
}

fn call(layer: &RateLimitLayer, request: Request<()>) -> Outcome {
    call_with(layer, request, StatusCode::OK)
}

fn allowed(layer: &RateLimitLayer, n: usize, make: impl Fn() -> Request<()>) -> usize {
    (0..n)
        .filter(|_| call(layer, make()).status == StatusCode::OK)
        .count()
}

/// Checks a field against the draft's syntax: a list of `"name";k=v;k=v` members whose
/// keys are exactly `keys`, with integer values. Returns the members as (name, values).
fn parse_field(value: &str, keys: [&str; 2]) -> Vec<(String, [u64; 2])> {
    value
        .split(", ")
        .map(|member| {
            let mut params = member.split(';');
            let name = params.next().unwrap();
            assert!(
                name.len() >= 2 && name.starts_with('"') && name.ends_with('"'),
                "the policy name is an sf-string: {member}"
            );
            let mut values = [0; 2];
            for (i, key) in keys.iter().enumerate() {
                let param = params
                    .next()
                    .unwrap_or_else(|| panic!("{member}: no {key}"));
                let (k, v) = param.split_once('=').unwrap();
                assert_eq!(k, *key, "{member}");
                values[i] = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{member}: {k} is not an integer"));
            }
            assert!(params.next().is_none(), "{member}: extra parameters");
            (name.trim_matches('"').to_owned(), values)
        })
        .collect()
}

#[test]
fn the_25th_call_in_5_minutes_passes_the_26th_is_refused_and_the_period_restores_it() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("per-key", rate("25 per 5m"))
                .key([KeyPart::Credential])
                .semantics(Semantics::StrictWindow),
        )
        .clock(clock)
        .build()
        .unwrap();
    let key = || request("192.0.2.1", Some(key_principal("acme", None)));
    assert_eq!(allowed(&layer, 25, key), 25);

    let refused = call(&layer, key());
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code, Some("rate_limited"));
    assert!(!refused.inner_called);
    assert_eq!(refused.headers[RETRY_AFTER], "300");
    assert_eq!(
        parse_field(
            refused.headers[RATELIMIT_POLICY].to_str().unwrap(),
            ["q", "w"]
        ),
        [("per-key".to_owned(), [25, 300])]
    );
    assert_eq!(
        parse_field(refused.headers[RATELIMIT].to_str().unwrap(), ["r", "t"]),
        [("per-key".to_owned(), [0, 300])]
    );

    control.advance(Duration::from_millis(299_999));
    assert_eq!(call(&layer, key()).status, StatusCode::TOO_MANY_REQUESTS);
    let last_ms = call(&layer, key());
    assert_eq!(last_ms.headers[RETRY_AFTER], "1", "0.001 s rounds up to 1");
    control.advance(Duration::from_millis(1));
    assert_eq!(
        allowed(&layer, 26, key),
        25,
        "a whole new window, not one more"
    );

    // Another key was never touched.
    let other = || request("192.0.2.1", Some(key_principal("globex", None)));
    assert_eq!(allowed(&layer, 25, other), 25);
}

#[test]
fn smooth_quotas_refill_one_request_per_interval_and_retry_after_rounds_up() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("3 per 10s")))
        .clock(clock)
        .build()
        .unwrap();
    let from = || request("198.51.100.7", None);
    assert_eq!(allowed(&layer, 3, from), 3);
    let refused = call(&layer, from());
    // One request comes back every 3.333 s: told 4, never 3.
    assert_eq!(refused.headers[RETRY_AFTER], "4");
    control.advance(Duration::from_millis(3_333));
    assert_eq!(call(&layer, from()).status, StatusCode::TOO_MANY_REQUESTS);
    control.advance(Duration::from_millis(1));
    assert_eq!(call(&layer, from()).status, StatusCode::OK);
    assert_eq!(call(&layer, from()).status, StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn a_burst_smaller_than_the_count_spreads_requests_out() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("60 per 1m")).burst(5))
        .clock(clock)
        .build()
        .unwrap();
    let from = || request("198.51.100.7", None);
    assert_eq!(allowed(&layer, 10, from), 5);
    control.advance(Duration::from_secs(1));
    assert_eq!(allowed(&layer, 10, from), 1);
}

#[test]
fn headers_on_allowed_responses_only_when_asked() {
    let (clock, _control) = clock();
    let quiet = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("10/s")))
        .clock(clock.clone())
        .build()
        .unwrap();
    let allowed = call(&quiet, request("192.0.2.1", None));
    assert_eq!(allowed.status, StatusCode::OK);
    assert!(!allowed.headers.contains_key(RATELIMIT));

    let told = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("10/s")))
        .quota(Quota::new("per-principal", rate("100 per 1m")).key([KeyPart::Principal]))
        .headers_on_allowed(true)
        .clock(clock)
        .build()
        .unwrap();
    let allowed = call(
        &told,
        request("192.0.2.1", Some(key_principal("acme", None))),
    );
    assert_eq!(
        parse_field(
            allowed.headers[RATELIMIT_POLICY].to_str().unwrap(),
            ["q", "w"]
        ),
        [
            ("per-ip".to_owned(), [10, 1]),
            ("per-principal".to_owned(), [100, 60])
        ]
    );
    let state = parse_field(allowed.headers[RATELIMIT].to_str().unwrap(), ["r", "t"]);
    assert_eq!(state[0], ("per-ip".to_owned(), [9, 1]));
    assert_eq!(state[1], ("per-principal".to_owned(), [99, 1]));
}

#[test]
fn a_request_refused_by_one_quota_is_not_charged_to_the_others() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("100 per 1m")))
        .quota(
            Quota::new("signing", rate("2 per 1m"))
                .key([KeyPart::ClientIp])
                .paths(["/v1/sign"]),
        )
        .headers_on_allowed(true)
        .clock(clock)
        .build()
        .unwrap();
    let sign = || request_to("/v1/sign", "192.0.2.1", None);
    assert_eq!(allowed(&layer, 10, sign), 2);
    let other = call(&layer, request_to("/v1/keys", "192.0.2.1", None));
    assert_eq!(other.status, StatusCode::OK);
    let state = parse_field(other.headers[RATELIMIT].to_str().unwrap(), ["r", "t"]);
    // 2 signing calls and this one: the 8 refused signing calls cost nothing.
    assert_eq!(state, [("per-ip".to_owned(), [97, 2])]);
}

#[test]
fn a_missing_key_part_is_skipped_or_refused_as_the_host_chose() {
    let (clock, _control) = clock();
    let skip = RateLimitLayer::builder()
        .quota(
            Quota::new("per-principal", rate("1 per 1h"))
                .key([KeyPart::Principal])
                .when_key_missing(MissingKey::Skip),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(allowed(&skip, 5, || request("192.0.2.1", None)), 5);

    let refuse = RateLimitLayer::builder()
        .quota(Quota::new("per-principal", rate("1 per 1h")).key([KeyPart::Principal]))
        .quota(
            Quota::new("per-tenant", rate("1 per 1h"))
                .key([KeyPart::Header("x-tenant".parse().unwrap())])
                .paths(["/tenant"]),
        )
        .clock(clock)
        .build()
        .unwrap();
    let anonymous = call(&refuse, request("192.0.2.1", None));
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code, Some("rate_limit_key_missing"));
    assert!(!anonymous.inner_called);
    let no_header = call(
        &refuse,
        request_to("/tenant", "192.0.2.1", Some(key_principal("acme", None))),
    );
    assert_eq!(no_header.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_header.code, Some("rate_limit_key_missing"));
}

#[test]
fn a_principal_tier_selects_its_own_rate() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("per-principal", rate("2 per 1m"))
                .key([KeyPart::Principal])
                .tier("gold", rate("5 per 1m")),
        )
        .headers_on_allowed(true)
        .clock(clock)
        .build()
        .unwrap();
    let basic = || request("192.0.2.1", Some(key_principal("basic", None)));
    let gold = || request("192.0.2.1", Some(key_principal("gold", Some("gold"))));
    let unknown = || request("192.0.2.1", Some(key_principal("odd", Some("platinum"))));
    assert_eq!(allowed(&layer, 10, basic), 2);
    assert_eq!(allowed(&layer, 10, gold), 5);
    assert_eq!(
        allowed(&layer, 10, unknown),
        2,
        "an unknown tier gets the base rate"
    );
    let policy = call(
        &layer,
        request("192.0.2.1", Some(key_principal("g2", Some("gold")))),
    );
    assert_eq!(
        parse_field(
            policy.headers[RATELIMIT_POLICY].to_str().unwrap(),
            ["q", "w"]
        ),
        [("per-principal".to_owned(), [5, 60])]
    );
}

#[test]
fn ipv6_clients_share_a_quota_per_slash_64_by_default() {
    let (clock, _control) = clock();
    let grouped = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("2 per 1m")))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(
        call(&grouped, request("2001:db8:1:2::1", None)).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&grouped, request("2001:db8:1:2:ffff::9", None)).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&grouped, request("2001:db8:1:2:1234::", None)).status,
        StatusCode::TOO_MANY_REQUESTS,
        "the same /64"
    );
    assert_eq!(
        call(&grouped, request("2001:db8:1:3::1", None)).status,
        StatusCode::OK
    );
    // IPv4-mapped IPv6 peers are the IPv4 client.
    assert_eq!(
        call(&grouped, request("192.0.2.9", None)).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&grouped, request("::ffff:192.0.2.9", None)).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&grouped, request("192.0.2.9", None)).status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let per_address = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("1 per 1m")).ipv6_prefix(128))
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(
        call(&per_address, request("2001:db8::1", None)).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&per_address, request("2001:db8::2", None)).status,
        StatusCode::OK
    );
}

/// A login endpoint: 401 for a wrong key, 200 for the right one.
fn login(layer: &RateLimitLayer, ip: &str, good: bool) -> Outcome {
    let status = if good {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    call_with(layer, request(ip, None), status)
}

#[test]
fn failed_authentication_is_throttled_then_banned_and_good_traffic_is_never_charged() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("auth-failures", rate("3 per 10m"))
                .semantics(Semantics::StrictWindow)
                .charge(Charge::Unauthenticated)
                .ban(Ban::after(
                    2,
                    Duration::from_secs(3600),
                    Duration::from_secs(86_400),
                )),
        )
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    // Good traffic, however much of it, is never charged.
    for _ in 0..50 {
        assert_eq!(login(&layer, "203.0.113.5", true).status, StatusCode::OK);
    }
    // Three wrong keys reach the inner layer and get its 401.
    for _ in 0..3 {
        let outcome = login(&layer, "203.0.113.9", false);
        assert_eq!(outcome.status, StatusCode::UNAUTHORIZED);
        assert!(outcome.inner_called);
    }
    // Then the guesser is throttled, even with a good key.
    let throttled = login(&layer, "203.0.113.9", true);
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.code, Some("rate_limited"));
    assert!(!throttled.inner_called);
    assert_eq!(
        login(&layer, "203.0.113.9", true).code,
        Some("rate_limited")
    );
    // More than two refusals: banned for a day.
    let banned = login(&layer, "203.0.113.9", true);
    assert_eq!(banned.status, StatusCode::FORBIDDEN);
    assert_eq!(banned.code, Some("banned"));
    assert_eq!(
        handle.bans(),
        [BanEntry {
            quota: "auth-failures".into(),
            key: "ip=203.0.113.9/32".into(),
            until: UNIX_EPOCH + T0 + Duration::from_secs(86_400),
        }]
    );
    // The window passing does not end the ban.
    control.advance(Duration::from_secs(3600));
    assert_eq!(login(&layer, "203.0.113.9", true).code, Some("banned"));
    // The good client is untouched throughout.
    assert_eq!(login(&layer, "203.0.113.5", true).status, StatusCode::OK);
    // The ban ends on time.
    control.advance(Duration::from_secs(86_400 - 3600));
    assert_eq!(login(&layer, "203.0.113.9", true).status, StatusCode::OK);
    assert!(handle.bans().is_empty());
}

#[test]
fn bans_can_be_lifted_and_answered_with_429() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("per-ip", rate("1 per 1h")).ban(
                Ban::after(0, Duration::from_secs(60), Duration::from_secs(600))
                    .respond_with(BanResponse::TooManyRequests),
            ),
        )
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let from = || request("203.0.113.9", None);
    assert_eq!(call(&layer, from()).status, StatusCode::OK);
    let banned = call(&layer, from());
    assert_eq!(banned.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(banned.code, Some("banned"));
    assert_eq!(banned.headers[RETRY_AFTER], "600");
    assert!(!handle.lift_ban("per-ip", "ip=203.0.113.10/32"));
    assert!(!handle.lift_ban("other", "ip=203.0.113.9/32"));
    assert!(handle.lift_ban("per-ip", "ip=203.0.113.9/32"));
    // The ban is gone; the quota itself is still spent.
    assert_eq!(
        call(&layer, from()).code,
        Some("banned"),
        "refused again, and banned again at once"
    );
    assert!(handle.lift_ban("per-ip", "ip=203.0.113.9/32"));
}

#[test]
fn a_claimed_key_id_is_throttled_across_addresses() {
    // Guessing the secret of one key id from many addresses: the custom part reads the
    // id the client claims, before any layer has checked it.
    let (clock, _control) = clock();
    let claimed = KeyPart::custom("claimed-key", |head| {
        let token = head.headers.get("x-auth-token")?.to_str().ok()?;
        Some(token.rsplit_once('/')?.1.to_owned())
    });
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("guesses-per-key", rate("2 per 1h"))
                .key([claimed])
                .charge(Charge::Unauthenticated)
                .when_key_missing(MissingKey::Skip),
        )
        .clock(clock)
        .build()
        .unwrap();
    let guess = |ip: &str, secret: &str| {
        let mut request = request(ip, None);
        request
            .headers_mut()
            .insert("x-auth-token", format!("{secret}/key-7").parse().unwrap());
        call_with(&layer, request, StatusCode::UNAUTHORIZED)
    };
    assert_eq!(guess("192.0.2.1", "aaa").status, StatusCode::UNAUTHORIZED);
    assert_eq!(guess("192.0.2.2", "bbb").status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        guess("192.0.2.3", "ccc").status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Without the header the quota does not apply.
    assert_eq!(
        call_with(&layer, request("192.0.2.3", None), StatusCode::UNAUTHORIZED).status,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn grpc_clients_get_resource_exhausted() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("1 per 1m")))
        .clock(clock)
        .build()
        .unwrap();
    let grpc = || {
        let mut request = request("192.0.2.1", None);
        request
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        request
    };
    assert_eq!(call(&layer, grpc()).status, StatusCode::OK);
    let refused = call(&layer, grpc());
    assert_eq!(
        refused.status,
        StatusCode::OK,
        "trailers-only gRPC response"
    );
    assert_eq!(refused.headers["grpc-status"], "8");
    assert!(refused.headers["grpc-message"]
        .to_str()
        .unwrap()
        .starts_with("rate_limited"));
}

#[test]
fn an_unresolvable_client_address_is_refused_not_waved_through() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("10/s")))
        .clock(clock)
        .build()
        .unwrap();
    let outcome = call(&layer, Request::get("/").body(()).unwrap());
    assert_eq!(outcome.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(outcome.code.is_some());
    assert!(!outcome.inner_called);
}

#[test]
fn refusals_are_noted_for_the_audit_layer() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("1 per 1m")))
        .clock(clock)
        .build()
        .unwrap();
    let noted = |request: Request<()>| {
        let record = AuditRecord::new();
        let mut request = request;
        request.extensions_mut().insert(record.clone());
        let _ = call(&layer, request);
        record.take()
    };
    let allowed = noted(request("192.0.2.1", None));
    assert_eq!(allowed[0].decision(), Decision::Allow);
    let refused = noted(request("192.0.2.1", None));
    assert_eq!(refused[0].layer(), LAYER_NAME);
    assert_eq!(refused[0].decision(), Decision::Deny);
    assert_eq!(refused[0].reason_code(), Some("rate_limited"));
    assert_eq!(refused[0].rule_name(), Some("per-ip"));
}

#[test]
fn configuration_errors_come_from_build() {
    assert_eq!(
        RateLimitLayer::builder().build().unwrap_err(),
        ConfigError::NoQuotas
    );
    let error = RateLimitLayer::builder()
        .quota(Quota::new("a b", rate("1/s")))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("letters, digits"), "{error}");
}

#[test]
fn a_million_distinct_addresses_stay_within_the_cap_and_the_sweep_frees_them() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            // A rate the flood stays under, so that what is measured is the key map
            // (refusals are tested elsewhere).
            Quota::new("per-ip", rate("10000000 per 1s"))
                .burst(2_000_000)
                .ipv6_prefix(128)
                .max_tracked_keys(10_000, Overflow::SharedBucket),
        )
        .clock(clock)
        .sweep_every(None)
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let mut service = layer.layer(inner);
    let base = u128::from("2001:db8::".parse::<std::net::Ipv6Addr>().unwrap());
    let mut admitted = 0usize;
    for i in 0..1_000_000u128 {
        let ip = IpAddr::V6(std::net::Ipv6Addr::from(base + i));
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip, 1)));
        let ready = futures::executor::block_on(service.ready()).unwrap();
        let response = futures::executor::block_on(ready.call(request)).unwrap();
        admitted += usize::from(response.status() == StatusCode::OK);
    }
    assert_eq!(handle.tracked_keys("per-ip"), Some(10_000));
    assert_eq!(admitted, 1_000_000);
    control.advance(Duration::from_secs(1));
    assert_eq!(handle.sweep(), 10_000);
    assert_eq!(handle.tracked_keys("per-ip"), Some(0));
    assert_eq!(handle.tracked_keys("nope"), None);
}

#[test]
fn the_sweeper_thread_drops_idle_keys_on_its_own() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("5 per 1ms")))
        .sweep_every(Some(Duration::from_millis(10)))
        .build()
        .unwrap();
    let handle = layer.handle();
    for i in 0..100u8 {
        let _ = call(&layer, request(&format!("10.0.0.{i}"), None));
    }
    // The clock is the system's: wait for the thread, with a generous bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.tracked_keys("per-ip") != Some(0) {
        assert!(Instant::now() < deadline, "the sweeper never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A zero Redis timeout would fail every request: refused when the layer is built,
/// before any connection (the backend connects lazily, so no server is needed here).
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_zero_redis_timeout_is_refused_by_name() {
    let backend = crate::RedisBackend::connect("redis://127.0.0.1:1")
        .await
        .unwrap()
        .timeout(Duration::ZERO);
    let error = RateLimitLayer::builder()
        .quota(Quota::new("q", Rate::per_second(1).unwrap()))
        .redis(backend)
        .build()
        .unwrap_err();
    assert_eq!(error, ConfigError::ZeroDuration("RedisBackend::timeout"));
}

/// The audit notes a call leaves.
fn noted_call(layer: &RateLimitLayer, request: Request<()>) -> (Outcome, Vec<AuditNote>) {
    let record = AuditRecord::new();
    let mut request = request;
    request.extensions_mut().insert(record.clone());
    let outcome = call(layer, request);
    (outcome, record.take())
}

#[test]
fn a_dry_run_quota_lets_everything_through_and_notes_what_it_would_have_refused() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("trial", rate("2 per 1m")).mode(Mode::DryRun))
        .headers_on_allowed(true)
        .clock(clock)
        .build()
        .unwrap();
    for i in 0..5 {
        let (outcome, notes) = noted_call(&layer, request("192.0.2.1", None));
        assert_eq!(outcome.status, StatusCode::OK, "request {i}");
        assert!(outcome.inner_called);
        // A dry run changes nothing a client sees: no RateLimit headers.
        assert!(
            outcome.headers.get(RATELIMIT).is_none(),
            "{:?}",
            outcome.headers
        );
        assert!(outcome.headers.get(RETRY_AFTER).is_none());
        let dry: Vec<_> = notes
            .iter()
            .filter(|n| n.reason_code() == Some("dry_run"))
            .collect();
        if i < 2 {
            assert!(dry.is_empty(), "request {i}: {notes:?}");
        } else {
            assert_eq!(dry.len(), 1, "request {i}: {notes:?}");
            assert_eq!(dry[0].decision(), Decision::Allow);
            assert_eq!(dry[0].rule_name(), Some("trial"));
            let detail = dry[0].detail_text().unwrap();
            assert!(detail.contains("429 rate_limited"), "{detail}");
        }
        // The request itself is allowed, as the layer's note says.
        assert!(notes
            .iter()
            .any(|n| n.reason_code().is_none() && n.decision() == Decision::Allow));
    }
    // Switched to enforce at run time: the quota the dry run used up refuses at once.
    let handle = layer.handle();
    assert_eq!(handle.mode("trial"), Some(Mode::DryRun));
    assert_eq!(handle.set_mode("trial", Mode::Enforce), Some(Mode::DryRun));
    assert_eq!(handle.modes(), vec![("trial".to_owned(), Mode::Enforce)]);
    let refused = call(&layer, request("192.0.2.1", None));
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!refused.inner_called);
    // And back again.
    assert_eq!(handle.set_mode("trial", Mode::DryRun), Some(Mode::Enforce));
    assert_eq!(
        call(&layer, request("192.0.2.1", None)).status,
        StatusCode::OK
    );
    assert_eq!(handle.set_mode("nope", Mode::DryRun), None);
    assert_eq!(handle.mode("nope"), None);
}

#[test]
fn a_dry_run_counts_as_enforcing_would_so_it_predicts_the_refusals() {
    // One enforced and one dry-run quota over the same traffic: the dry run's
    // would-refusals are exactly the refusals an enforced twin gives.
    let (clock, control) = clock();
    let build = |mode| {
        RateLimitLayer::builder()
            .quota(
                Quota::new("q", rate("3 per 10s"))
                    .semantics(Semantics::StrictWindow)
                    .mode(mode),
            )
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (dry, enforced) = (build(Mode::DryRun), build(Mode::Enforce));
    for step in 0..40 {
        control.advance(Duration::from_millis(700));
        let (outcome, notes) = noted_call(&dry, request("192.0.2.9", None));
        assert_eq!(outcome.status, StatusCode::OK);
        let would_refuse = notes.iter().any(|n| n.reason_code() == Some("dry_run"));
        let refused = call(&enforced, request("192.0.2.9", None)).status != StatusCode::OK;
        assert_eq!(would_refuse, refused, "step {step}");
    }
}

#[test]
fn a_dry_run_quota_beside_an_enforced_one() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("tight", rate("1 per 1m")).mode(Mode::DryRun))
        .quota(Quota::new("loose", rate("3 per 1m")))
        .headers_on_allowed(true)
        .clock(clock)
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (outcome, notes) = noted_call(&layer, request("192.0.2.2", None));
        statuses.push(outcome.status);
        let policy = outcome
            .headers
            .get(RATELIMIT_POLICY)
            .map(|v| v.to_str().unwrap().to_owned());
        // Only the enforced quota's line is sent.
        if let Some(policy) = policy {
            assert!(!policy.contains("tight"), "{policy}");
        }
        if outcome.status == StatusCode::OK && statuses.len() > 1 {
            assert!(
                notes.iter().any(|n| n.rule_name() == Some("tight")),
                "{notes:?}"
            );
        }
    }
    // The enforced quota still enforces, unaffected by the dry run.
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[test]
fn dry_run_headers_are_sent_when_asked() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("trial", rate("1 per 1m")).mode(Mode::DryRun))
        .dry_run_headers(true)
        .clock(clock)
        .build()
        .unwrap();
    let first = call(&layer, request("192.0.2.3", None));
    // Allowed responses carry them only with headers_on_allowed.
    assert!(first.headers.get(RATELIMIT).is_none());
    let over = call(&layer, request("192.0.2.3", None));
    assert_eq!(over.status, StatusCode::OK);
    let line = over.headers[RATELIMIT].to_str().unwrap();
    assert!(line.contains("\"trial\";r=0"), "{line}");
    assert!(over.headers.get(RETRY_AFTER).is_none());
}

#[test]
fn a_dry_run_bans_nobody_and_reports_a_ban_it_holds() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("q", rate("1 per 1m")).ban(Ban::after(
            1,
            Duration::from_secs(60),
            Duration::from_secs(600),
        )))
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    handle.set_mode("q", Mode::DryRun);
    for _ in 0..10 {
        assert_eq!(
            call(&layer, request("192.0.2.4", None)).status,
            StatusCode::OK
        );
    }
    assert!(handle.bans().is_empty(), "a dry run counted strikes");
    // Enforced, the key earns its ban...
    handle.set_mode("q", Mode::Enforce);
    assert_eq!(
        call(&layer, request("192.0.2.4", None)).code,
        Some("rate_limited")
    );
    assert_eq!(
        call(&layer, request("192.0.2.4", None)).code,
        Some("banned")
    );
    // ...which a dry run reports and does not enforce.
    handle.set_mode("q", Mode::DryRun);
    let (outcome, notes) = noted_call(&layer, request("192.0.2.4", None));
    assert_eq!(outcome.status, StatusCode::OK);
    let detail = notes
        .iter()
        .find(|n| n.reason_code() == Some("dry_run"))
        .unwrap();
    assert!(
        detail.detail_text().unwrap().contains("banned"),
        "{detail:?}"
    );
}

#[test]
fn a_failed_login_dry_run_reserves_and_refunds_as_enforcing_would() {
    let (clock, _control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("logins", rate("2 per 1h"))
                .charge(Charge::Unauthenticated)
                .mode(Mode::DryRun),
        )
        .clock(clock)
        .build()
        .unwrap();
    // Good logins are refunded: never a would-refusal.
    for _ in 0..5 {
        let (outcome, notes) = noted_call(&layer, request("192.0.2.5", None));
        assert_eq!(outcome.status, StatusCode::OK);
        assert!(!notes.iter().any(|n| n.reason_code() == Some("dry_run")));
    }
    let failed = |n| {
        let record = AuditRecord::new();
        let mut request = request("192.0.2.6", None);
        request.extensions_mut().insert(record.clone());
        let outcome = call_with(&layer, request, StatusCode::UNAUTHORIZED);
        assert_eq!(
            outcome.status,
            StatusCode::UNAUTHORIZED,
            "attempt {n}: let through"
        );
        assert!(outcome.inner_called);
        record
            .take()
            .iter()
            .any(|n| n.reason_code() == Some("dry_run"))
    };
    assert_eq!(
        (0..4).map(failed).collect::<Vec<_>>(),
        [false, false, true, true]
    );
}

#[test]
fn checks_answer_without_charging() {
    let (clock, control) = clock();
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", rate("3 per 1m")).semantics(Semantics::StrictWindow))
        .quota(
            Quota::new("per-key", rate("10 per 1m"))
                .key([KeyPart::Credential])
                .when_key_missing(MissingKey::Skip)
                .tier("gold", rate("100 per 1m")),
        )
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let parts = |ip: &str, principal| request(ip, principal).into_parts().0;
    let check = |parts| futures::executor::block_on(handle.check(&parts));
    // Checking many times charges nothing.
    for _ in 0..10 {
        let answer = check(parts("192.0.2.10", None));
        assert!(answer.allowed);
        assert_eq!(answer.refusal, None);
        assert_eq!(
            answer.quotas.len(),
            1,
            "per-key is skipped without a principal"
        );
        assert_eq!(answer.quotas[0].quota, "per-ip");
        assert_eq!((answer.quotas[0].remaining, answer.quotas[0].limit), (3, 3));
    }
    assert_eq!(allowed(&layer, 5, || request("192.0.2.10", None)), 3);
    let answer = check(parts("192.0.2.10", None));
    assert!(!answer.allowed);
    assert_eq!(answer.refusal, Some("rate_limited"));
    assert_eq!(answer.quotas[0].remaining, 0);
    assert_eq!(answer.retry_after, Duration::from_secs(60));
    control.advance(Duration::from_secs(20));
    assert_eq!(
        check(parts("192.0.2.10", None)).retry_after,
        Duration::from_secs(40)
    );

    // A principal's tier is read as the layer reads it.
    let gold = check(parts(
        "192.0.2.11",
        Some(key_principal("acme", Some("gold"))),
    ));
    assert_eq!(gold.quotas[1].limit, 100);
    let by_key =
        futures::executor::block_on(handle.check_key("per-key", Some("gold"), &["acme-key"]))
            .unwrap();
    assert_eq!((by_key.limit, by_key.remaining), (100, 100));
    call(
        &layer,
        request("192.0.2.11", Some(key_principal("acme", Some("gold")))),
    );
    let by_key =
        futures::executor::block_on(handle.check_key("per-key", Some("gold"), &["acme-key"]))
            .unwrap();
    assert_eq!(
        by_key.remaining, 99,
        "the key named by text is the request's key"
    );
    let by_ip =
        futures::executor::block_on(handle.check_key("per-ip", None, &["192.0.2.10"])).unwrap();
    assert!(!by_ip.allowed);
    // An IPv4-mapped IPv6 address names the same client.
    let mapped =
        futures::executor::block_on(handle.check_key("per-ip", None, &["::ffff:192.0.2.10"]))
            .unwrap();
    assert!(!mapped.allowed);

    // Every way to name a key wrongly is refused by name.
    let error = |quota, tier, key: &[&str]| {
        futures::executor::block_on(handle.check_key(quota, tier, key))
            .unwrap_err()
            .to_string()
    };
    assert!(error("nope", None, &["x"]).contains("no quota named \"nope\""));
    assert!(error("per-ip", None, &[]).contains("1 parts; 0 were given"));
    assert!(error("per-ip", None, &["a", "b"]).contains("2 were given"));
    assert!(error("per-ip", None, &["not-an-ip"]).contains("is not an IP address"));
    assert!(error("per-key", Some("silver"), &["k"]).contains("no tier named \"silver\""));

    // A request the layer would refuse before any quota.
    let unresolvable = Request::get("/").body(()).unwrap().into_parts().0;
    let answer = check(unresolvable);
    assert!(!answer.allowed);
    assert!(answer.refusal.is_some());
    assert!(answer.quotas.is_empty());
}

#[test]
fn route_keys_are_named_by_method_and_path() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-path", rate("1 per 1m")).key([KeyPart::RawPath]))
        .build()
        .unwrap();
    let handle = layer.handle();
    call(&layer, request_to("/items/7", "192.0.2.12", None));
    let check = |key: &str| futures::executor::block_on(handle.check_key("per-path", None, &[key]));
    assert!(!check("GET /items/7").unwrap().allowed);
    assert!(check("GET /items/8").unwrap().allowed);
    assert!(check("POST /items/7").unwrap().allowed);
    for wrong in ["/items/7", "GET", "GET items", " /items/7", ""] {
        let error = check(wrong).unwrap_err().to_string();
        assert!(
            error.contains("must be a method and a path"),
            "{wrong:?}: {error}"
        );
    }
}

#[test]
fn checks_are_send() {
    fn send<T: Send>(_: T) {}
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("q", rate("1/s")))
        .build()
        .unwrap();
    let handle = layer.handle();
    let parts = request("192.0.2.1", None).into_parts().0;
    send(handle.check(&parts));
    send(handle.check_key("q", None, &["192.0.2.1"]));
}

#[test]
fn modes_parse_and_print_as_the_gateway_file_spells_them() {
    for mode in [Mode::Enforce, Mode::DryRun] {
        assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
    }
    assert_eq!("dry-run".parse::<Mode>(), Ok(Mode::DryRun));
    for wrong in ["Enforce", "dry_run", "dryrun", " enforce", ""] {
        assert!(wrong.parse::<Mode>().is_err(), "{wrong:?}");
    }
}
