//! The rate-limit layer sharing quotas and bans through a real `redis-server`: two
//! instances, one quota; exact boundaries; Redis killed and restarted mid-test.

use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use portcullis::core::Clock;
use portcullis::rate_limit::{
    Ban, Charge, Mode, Quota, RateLimitHandle, RateLimitLayer, RedisBackend, RedisFailure,
    Semantics,
};
use redis::AsyncCommands;

use crate::client::{get as fetch, serve_axum, Reply};
use crate::redis_server::RedisServer;

pub(crate) async fn backend(redis: &RedisServer, namespace: &str) -> RedisBackend {
    RedisBackend::connect(&redis.url())
        .await
        .unwrap()
        .namespace(namespace)
        .timeout(Duration::from_millis(300))
        .retry_after(Duration::from_millis(100))
}

/// An instance of the service: an axum server with its own layer.
pub(crate) async fn instance(
    quota: Quota,
    backend: RedisBackend,
    clock: Option<Clock>,
) -> (SocketAddr, RateLimitHandle) {
    let mut builder = RateLimitLayer::builder().quota(quota).redis(backend);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/login",
            get(|| async { (StatusCode::UNAUTHORIZED, "wrong key") }),
        )
        .layer(layer);
    (serve_axum(app).await, handle)
}

/// A request that must be answered, however Redis is doing: never a hung request.
pub(crate) async fn answered(server: SocketAddr, from: &str, path: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(20), fetch(server, from, path, &[]))
        .await
        .expect("the request was answered")
}

async fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis.client().await.keys(pattern).await.unwrap()
}

#[tokio::test]
async fn two_instances_share_one_quota_exactly() {
    let Some(redis) = RedisServer::start("two_instances_share_one_quota_exactly").await else {
        return;
    };
    for semantics in [Semantics::StrictWindow, Semantics::Smooth] {
        let namespace = format!("share-{semantics:?}");
        let quota = || Quota::new("per-ip", "5 per 1h".parse().unwrap()).semantics(semantics);
        let (a, _) = instance(quota(), backend(&redis, &namespace).await, None).await;
        let (b, _) = instance(quota(), backend(&redis, &namespace).await, None).await;
        let mut allowed = 0;
        for i in 0..12 {
            let server = if i % 2 == 0 { a } else { b };
            let reply = answered(server, "127.0.0.60", "/").await;
            match reply.status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(reply.code().as_deref(), Some("rate_limited"));
                    let retry: u64 = reply.headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(retry > 0 && retry <= 3600, "{retry}");
                }
                other => panic!("{semantics:?}: unexpected {other}"),
            }
        }
        assert_eq!(
            allowed, 5,
            "{semantics:?}: five in all, across both instances"
        );

        // Keys are namespaced and expire on their own.
        let written = keys(&redis, &format!("{namespace}:*")).await;
        assert!(!written.is_empty());
        let mut client = redis.client().await;
        for key in written {
            let ttl: i64 = client.pttl(&key).await.unwrap();
            // The instances' heartbeats: gone three intervals after the last.
            if key == format!("{namespace}:instances") {
                assert!(ttl > 0 && ttl <= 15_000, "{key}: {ttl}");
                continue;
            }
            assert!(
                key.starts_with(&format!("{namespace}:q:per-ip:0:")),
                "{key}"
            );
            assert!(ttl > 0 && ttl <= 3_600_001, "{key}: {ttl}");
        }
    }
}

#[tokio::test]
async fn exact_counts_at_the_boundary_with_a_manual_clock() {
    let Some(redis) = RedisServer::start("exact_counts_at_the_boundary_with_a_manual_clock").await
    else {
        return;
    };
    let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let strict =
        Quota::new("per-ip", "25 per 5m".parse().unwrap()).semantics(Semantics::StrictWindow);
    let (server, _) = instance(strict, backend(&redis, "strict").await, Some(clock.clone())).await;
    for _ in 0..25 {
        assert_eq!(
            answered(server, "127.0.0.61", "/").await.status,
            StatusCode::OK
        );
    }
    let refused = answered(server, "127.0.0.61", "/").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "300");
    control.advance(Duration::from_millis(299_999));
    let last = answered(server, "127.0.0.61", "/").await;
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(last.headers["retry-after"], "1", "rounded up");
    control.advance(Duration::from_millis(1));
    let mut allowed = 0;
    for _ in 0..26 {
        allowed += usize::from(answered(server, "127.0.0.61", "/").await.status == StatusCode::OK);
    }
    assert_eq!(allowed, 25);

    let smooth = Quota::new("per-ip", "25 per 5m".parse().unwrap());
    let (server, _) = instance(smooth, backend(&redis, "smooth").await, Some(clock)).await;
    for _ in 0..25 {
        assert_eq!(
            answered(server, "127.0.0.62", "/").await.status,
            StatusCode::OK
        );
    }
    let refused = answered(server, "127.0.0.62", "/").await;
    assert_eq!(refused.headers["retry-after"], "12");
    control.advance(Duration::from_millis(11_999));
    assert_eq!(
        answered(server, "127.0.0.62", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    control.advance(Duration::from_millis(1));
    assert_eq!(
        answered(server, "127.0.0.62", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.62", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn redis_killed_mid_test_falls_back_to_local_quotas_and_recovers() {
    let Some(mut redis) = RedisServer::start("redis_killed_mid_test").await else {
        return;
    };
    let quota =
        Quota::new("per-ip", "3 per 1h".parse().unwrap()).semantics(Semantics::StrictWindow);
    let backend = backend(&redis, "outage")
        .await
        .on_failure(RedisFailure::LocalFallback);
    let (server, _) = instance(quota, backend, None).await;
    assert_eq!(
        answered(server, "127.0.0.63", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.63", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(keys(&redis, "outage:q:*").await.len(), 1);

    redis.kill();
    // Each instance still throttles on its own: the local quota of 3, then 429.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(answered(server, "127.0.0.63", "/").await.status);
    }
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

    // Redis comes back (empty, as after a crash without persistence): the layer goes
    // back to it by itself.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = answered(server, "127.0.0.64", "/").await;
        assert!(!reply.status.is_server_error(), "{:?}", reply.status);
        if !keys(&redis, "outage:q:*").await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the layer never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fail_closed_refuses_with_503_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start("fail_closed").await else {
        return;
    };
    let quota = Quota::new("per-ip", "100 per 1h".parse().unwrap());
    let backend = backend(&redis, "closed")
        .await
        .on_failure(RedisFailure::FailClosed);
    let (server, _) = instance(quota, backend, None).await;
    assert_eq!(
        answered(server, "127.0.0.65", "/").await.status,
        StatusCode::OK
    );
    redis.kill();
    for _ in 0..3 {
        let reply = answered(server, "127.0.0.65", "/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
    }
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered(server, "127.0.0.65", "/").await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the layer never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bans_and_failed_authentication_are_shared_between_instances() {
    let Some(redis) = RedisServer::start("bans_are_shared").await else {
        return;
    };
    let quota = || {
        Quota::new("auth-failures", "2 per 1h".parse().unwrap())
            .charge(Charge::Unauthenticated)
            .ban(Ban::after(
                0,
                Duration::from_secs(600),
                Duration::from_secs(3600),
            ))
    };
    let (a, _) = instance(quota(), backend(&redis, "bans").await, None).await;
    let (b, handle_b) = instance(quota(), backend(&redis, "bans").await, None).await;

    // Good traffic is never charged.
    for _ in 0..10 {
        assert_eq!(answered(a, "127.0.0.66", "/").await.status, StatusCode::OK);
    }
    // Two failed logins, one on each instance.
    assert_eq!(
        answered(a, "127.0.0.66", "/login").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        answered(b, "127.0.0.66", "/login").await.status,
        StatusCode::UNAUTHORIZED
    );
    // The quota is spent everywhere; the first refusal bans (more than 0 strikes).
    let banned = answered(a, "127.0.0.66", "/").await;
    assert_eq!(banned.status, StatusCode::FORBIDDEN);
    assert_eq!(banned.code().as_deref(), Some("banned"));
    assert_eq!(
        answered(b, "127.0.0.66", "/").await.code().as_deref(),
        Some("banned")
    );
    // Another client is untouched.
    assert_eq!(answered(b, "127.0.0.67", "/").await.status, StatusCode::OK);

    let bans = handle_b.shared_bans().await.unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].quota, "auth-failures");
    assert_eq!(bans[0].key, "ip=127.0.0.66/32");
    assert!(!handle_b
        .lift_shared_ban("auth-failures", "ip=127.0.0.1/32")
        .await
        .unwrap());
    assert!(handle_b
        .lift_shared_ban("auth-failures", "ip=127.0.0.66/32")
        .await
        .unwrap());
    assert!(handle_b.shared_bans().await.unwrap().is_empty());
    // Lifted: refused by the spent quota again (which bans again at once, by this rule).
    assert_eq!(
        answered(a, "127.0.0.66", "/").await.code().as_deref(),
        Some("banned")
    );
}

#[tokio::test]
async fn a_slow_redis_times_out_to_the_fallback_instead_of_hanging_requests() {
    let Some(redis) = RedisServer::start("a_slow_redis").await else {
        return;
    };
    let quota = Quota::new("per-ip", "1 per 1h".parse().unwrap());
    let (server, _) = instance(quota, backend(&redis, "slow").await, None).await;
    assert_eq!(
        answered(server, "127.0.0.68", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.68", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Redis stops answering for 3 s: each request waits at most the 300 ms timeout,
    // then the in-process quota (fresh: it has seen nothing) decides.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut redis.client().await)
        .await
        .unwrap();
    // Redis would refuse (its quota is spent); an OK is the fallback's answer.
    assert_eq!(
        answered(server, "127.0.0.68", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.68", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Two instances on one Redis, "5 failures per 15 minutes, charging only 401s": 64
/// wrong guesses sent at once, half to each instance, reach the authenticators 5 times
/// in all; right passwords give their reservations back, on both semantics.
#[tokio::test]
async fn parallel_guesses_across_two_instances_cannot_outrun_the_throttle() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some(redis) = RedisServer::start("parallel_guesses").await else {
        return;
    };
    for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
        let asked = Arc::new(AtomicUsize::new(0));
        let namespace = format!("guesses-{semantics:?}");
        let mut servers = Vec::new();
        for _ in 0..2 {
            let layer = RateLimitLayer::builder()
                .quota(
                    Quota::new("failed-logins", "5 per 15m".parse().unwrap())
                        .charge(Charge::Unauthenticated)
                        .semantics(semantics),
                )
                .redis(
                    backend(&redis, &namespace)
                        .await
                        .timeout(Duration::from_secs(5)),
                )
                .build()
                .unwrap();
            let app = crate::rate_limit_axum::slow_login(asked.clone()).layer(layer);
            servers.push(serve_axum(app).await);
        }
        for i in 0..8 {
            let reply = fetch(
                servers[i % 2],
                "127.0.0.71",
                "/login",
                &[("x-password", "right")],
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{semantics:?}: a right password is refunded"
            );
        }
        asked.store(0, Ordering::SeqCst);
        let guesses = (0..64).map(|i| {
            let server = servers[i % 2];
            async move {
                let guess = format!("guess-{i}");
                fetch(server, "127.0.0.71", "/login", &[("x-password", &guess)])
                    .await
                    .status
            }
        });
        let statuses = futures::future::join_all(guesses).await;
        let failed = statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!(asked.load(Ordering::SeqCst), 5, "{semantics:?}");
        assert_eq!((failed, refused), (5, 59), "{semantics:?}");
        for server in &servers {
            let reply = fetch(*server, "127.0.0.71", "/login", &[("x-password", "right")]).await;
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{semantics:?}");
        }
    }
}

/// Through Redis too: the longest wait among the refusing quotas, and `t` equal to it.
#[tokio::test]
async fn through_redis_the_longest_wait_is_sent_and_t_agrees() {
    let Some(redis) = RedisServer::start("longest_wait").await else {
        return;
    };
    for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
        let layer = RateLimitLayer::builder()
            .quota(Quota::new("short", "2 per 10s".parse().unwrap()).semantics(semantics))
            .quota(Quota::new("long", "2 per 1h".parse().unwrap()).semantics(semantics))
            .redis(backend(&redis, &format!("wait-{semantics:?}")).await)
            .build()
            .unwrap();
        let server = serve_axum(
            Router::new()
                .route("/", get(|| async { "hello" }))
                .layer(layer),
        )
        .await;
        for _ in 0..2 {
            assert_eq!(
                answered(server, "127.0.0.90", "/").await.status,
                StatusCode::OK
            );
        }
        let refused = answered(server, "127.0.0.90", "/").await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = refused.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected = match semantics {
            Semantics::Smooth => 1800,
            _ => 3600,
        };
        assert!(
            (expected - 1..=expected).contains(&retry),
            "{semantics:?}: {retry}"
        );
        assert_eq!(
            refused.headers["ratelimit"].to_str().unwrap(),
            format!("\"long\";r=0;t={retry}"),
            "{semantics:?}"
        );
    }
}

/// The gateway file's Redis keys: `redis_namespace` prefixes the keys, and with Redis
/// gone `redis_on_failure = "fail-closed"` answers 503 where the default falls back to
/// local quotas and `"fail-open"` lets through.
#[tokio::test]
async fn the_gateway_file_sets_the_redis_namespace_and_failure_policy() {
    let Some(mut redis) = RedisServer::start("gateway_file_redis_keys").await else {
        return;
    };
    let serve_file = |policy: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"rate-limit\"\nredis = \"{}\"\nredis_namespace = \"from-file\"\nredis_timeout = \"200ms\"\nredis_retry_after = \"5s\"\nredis_instances = 2\nredis_heartbeat_every = \"1s\"\n{policy}[[layer.quota]]\nname = \"q\"\nrate = \"100/s\"\n",
            redis.url()
        );
        async move {
            let app = axum::Router::new().fallback(|| async { "ok" });
            crate::client::serve_gateway_file(&text, &std::env::temp_dir(), app).await
        }
    };
    let fallback = serve_file("").await;
    let closed = serve_file("redis_on_failure = \"fail-closed\"\n").await;
    let open = serve_file("redis_on_failure = \"fail-open\"\n").await;
    let get = |addr: std::net::SocketAddr| async move {
        reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .status()
    };
    assert_eq!(get(fallback).await, StatusCode::OK);
    assert_eq!(get(closed).await, StatusCode::OK);
    assert!(!keys(&redis, "from-file:*").await.is_empty());

    redis.kill();
    assert_eq!(get(fallback).await, StatusCode::OK);
    assert_eq!(get(closed).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(open).await, StatusCode::OK);
}

/// The parts of a request from `ip`, for a check.
fn parts_from(ip: &str) -> http::request::Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.extensions.insert(portcullis::core::PeerAddr(
        format!("{ip}:40000").parse().unwrap(),
    ));
    parts
}

#[tokio::test]
async fn dry_runs_and_checks_through_redis() {
    let Some(redis) = RedisServer::start("dry_runs_and_checks").await else {
        return;
    };
    let quota = || {
        Quota::new("trial", "2 per 1h".parse().unwrap())
            .ban(Ban::after(
                0,
                Duration::from_secs(600),
                Duration::from_secs(3600),
            ))
            .mode(Mode::DryRun)
    };
    let (a, handle_a) = instance(quota(), backend(&redis, "dry").await, None).await;
    let (b, handle_b) = instance(quota(), backend(&redis, "dry").await, None).await;

    // Checks charge nothing, however many.
    for _ in 0..5 {
        let check = handle_a.check(&parts_from("127.0.0.70")).await;
        assert!(check.allowed);
        assert_eq!(check.quotas[0].remaining, 2);
    }
    // Over the quota across both instances, and let through.
    for i in 0..6 {
        let server = if i % 2 == 0 { a } else { b };
        let reply = answered(server, "127.0.0.70", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert!(reply.headers.get("ratelimit").is_none());
    }
    // The shared state says what enforcing would: spent, and nobody banned.
    let check = handle_b.check(&parts_from("127.0.0.70")).await;
    assert!(check.quotas[0].remaining == 0 && !check.quotas[0].allowed);
    assert!(check.allowed, "a dry-run quota refuses nothing");
    assert_eq!(check.refusal, None);
    assert!(
        keys(&redis, "dry:ban:*").await.is_empty(),
        "a dry run banned"
    );
    assert!(
        keys(&redis, "dry:strikes:*").await.is_empty(),
        "a dry run counted strikes"
    );
    let by_key = handle_a
        .check_key("trial", None, &["127.0.0.70"])
        .await
        .unwrap();
    assert_eq!((by_key.allowed, by_key.remaining), (false, 0));
    let other = handle_a
        .check_key("trial", None, &["127.0.0.71"])
        .await
        .unwrap();
    assert_eq!((other.allowed, other.remaining), (true, 2));

    // Enforced on both instances: the spent quota refuses (and, by this rule, bans).
    assert_eq!(
        handle_a.set_mode("trial", Mode::Enforce),
        Some(Mode::DryRun)
    );
    assert_eq!(
        handle_b.set_mode("trial", Mode::Enforce),
        Some(Mode::DryRun)
    );
    let reply = answered(b, "127.0.0.70", "/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code().as_deref(), Some("banned"));
    let check = handle_a.check(&parts_from("127.0.0.70")).await;
    assert!(!check.allowed);
    assert_eq!(check.refusal, Some("banned"));
    assert!(check.quotas[0].banned);
    // A dry run again: the ban is reported, not enforced.
    handle_a.set_mode("trial", Mode::DryRun);
    assert_eq!(answered(a, "127.0.0.70", "/").await.status, StatusCode::OK);
    assert_eq!(
        answered(b, "127.0.0.70", "/").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_check_while_redis_is_down_follows_the_failure_policy() {
    let Some(mut redis) = RedisServer::start("check_while_down").await else {
        return;
    };
    let quota = || Quota::new("q", "2 per 1h".parse().unwrap());
    let (_, closed) = instance(
        quota(),
        backend(&redis, "down")
            .await
            .on_failure(RedisFailure::FailClosed),
        None,
    )
    .await;
    let (_, local) = instance(quota(), backend(&redis, "down").await, None).await;
    assert!(closed.check(&parts_from("127.0.0.72")).await.allowed);
    redis.kill();
    let check = closed.check(&parts_from("127.0.0.72")).await;
    assert_eq!(
        (check.allowed, check.refusal),
        (false, Some("rate_limit_unavailable"))
    );
    assert!(matches!(
        closed.check_key("q", None, &["127.0.0.72"]).await,
        Err(portcullis::rate_limit::CheckKeyError::Unavailable)
    ));
    // The local fallback answers from the in-process state.
    let check = local.check(&parts_from("127.0.0.72")).await;
    assert!(check.allowed);
    assert_eq!(check.quotas[0].remaining, 2);
}

/// An instance with a 500 ms budget that fails closed, pausing Redis for `pause` after
/// a spent budget, its first request (from `ip`) answered through Redis.
async fn failing_closed_within_500ms(
    redis: &RedisServer,
    namespace: &str,
    pause: Duration,
    ip: &str,
) -> SocketAddr {
    let backend = RedisBackend::connect(&redis.url())
        .await
        .unwrap()
        .namespace(namespace)
        .timeout(Duration::from_millis(500))
        .retry_after(pause)
        .on_failure(RedisFailure::FailClosed);
    let quota = Quota::new("q", "100 per 1h".parse().unwrap());
    let (server, _) = instance(quota, backend, None).await;
    assert_eq!(answered(server, ip, "/").await.status, StatusCode::OK);
    server
}

/// A stalled Redis (SIGSTOP): the configured timeout is the whole budget, not an inner
/// client timeout; then requests skip Redis for the pause instead of each waiting.
#[tokio::test]
async fn a_stalled_redis_is_given_the_whole_budget_then_left_alone_for_the_pause() {
    let Some(redis) = RedisServer::start("stalled_budget").await else {
        return;
    };
    let server =
        failing_closed_within_500ms(&redis, "stall", Duration::from_secs(2), "127.0.0.80").await;
    redis.stop();
    let started = Instant::now();
    let reply = answered(server, "127.0.0.80", "/").await;
    let waited = started.elapsed();
    assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "a 500 ms budget answered after {waited:?}"
    );
    // Within the pause: refused at once, without waiting on Redis again.
    let started = Instant::now();
    let reply = answered(server, "127.0.0.80", "/").await;
    assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Resumed: back once the pause is over.
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(server, "127.0.0.80", "/").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never went back to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A restarted Redis: the first request once it answers uses it, even with a long
/// pause configured (refused connections cost no wait and are not paused).
#[tokio::test]
async fn after_a_restart_the_first_request_uses_redis_again() {
    let Some(mut redis) = RedisServer::start("restart_first_request").await else {
        return;
    };
    let server =
        failing_closed_within_500ms(&redis, "restart", Duration::from_secs(60), "127.0.0.81").await;
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let reply = answered(server, "127.0.0.81", "/").await;
        assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }
    // `restart` returns once the new server answers PING.
    redis.restart().await;
    for n in 0..5 {
        let reply = answered(server, "127.0.0.81", "/").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {n} after the restart: {:?}",
            reply.code()
        );
    }
    assert_eq!(keys(&redis, "restart:q:*").await.len(), 1);
}

/// `FailOpen`: unlimited while Redis is out, limited again once it is back.
#[tokio::test]
async fn fail_open_lets_everything_through_while_redis_is_out() {
    let Some(mut redis) = RedisServer::start("fail_open").await else {
        return;
    };
    let backend = backend(&redis, "open")
        .await
        .on_failure(RedisFailure::FailOpen);
    let (server, handle) =
        instance(Quota::new("q", "1 per 1h".parse().unwrap()), backend, None).await;
    assert_eq!(
        answered(server, "127.0.0.82", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.82", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    redis.kill();
    for _ in 0..5 {
        assert_eq!(
            answered(server, "127.0.0.82", "/").await.status,
            StatusCode::OK
        );
    }
    let check = handle.check(&parts_from("127.0.0.82")).await;
    assert!(check.allowed && check.quotas.is_empty(), "{check:?}");
    redis.restart().await;
    // Empty after the restart: one allowed, then limited again.
    assert_eq!(
        answered(server, "127.0.0.82", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(server, "127.0.0.82", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// While Redis is out, each of N instances allows its share of the quota (configured,
/// or learned from the heartbeats while Redis was up), not the whole quota each.
#[tokio::test]
async fn during_an_outage_each_instance_allows_its_share() {
    let Some(mut redis) = RedisServer::start("outage_shares").await else {
        return;
    };
    let quota = || Quota::new("q", "4 per 1h".parse().unwrap()).semantics(Semantics::StrictWindow);
    // Configured: two instances.
    let configured = || async { backend(&redis, "shares-configured").await.instances(2) };
    let (a, handle_a) = instance(quota(), configured().await, None).await;
    let (b, _) = instance(quota(), configured().await, None).await;
    assert_eq!(handle_a.expected_instances(), Some(2));
    // Learned: two more instances beating every 100 ms.
    let learning = || async {
        backend(&redis, "shares-learned")
            .await
            .heartbeat_every(Duration::from_millis(100))
    };
    let (c, handle_c) = instance(quota(), learning().await, None).await;
    let (d, handle_d) = instance(quota(), learning().await, None).await;
    assert_eq!(
        handle_c.expected_instances(),
        Some(1),
        "nothing learned yet"
    );
    // A first request each starts the connections and the heartbeats.
    for server in [c, d] {
        assert_eq!(
            answered(server, "127.0.0.90", "/").await.status,
            StatusCode::OK
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle_c.expected_instances() != Some(2) || handle_d.expected_instances() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the heartbeats were never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    redis.kill();
    for (pair, name) in [((a, b), "configured"), ((c, d), "learned")] {
        let mut allowed = 0;
        for n in 0..12 {
            let server = if n % 2 == 0 { pair.0 } else { pair.1 };
            let reply = answered(server, "127.0.0.91", "/").await;
            match reply.status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{name}: {other}"),
            }
        }
        // Two each: the quota of 4 across the pair, not 4 each.
        assert_eq!(allowed, 4, "{name}");
    }
    // Once Redis is back, the shared quota is in force again.
    redis.restart().await;
    assert_eq!(answered(a, "127.0.0.92", "/").await.status, StatusCode::OK);
    assert_eq!(keys(&redis, "shares-configured:q:*").await.len(), 1);
}
