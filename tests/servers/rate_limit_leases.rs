//! Leased quotas through a real `redis-server`: permits spent in process, a round trip
//! per lease rather than per request, exact counts at the boundary under concurrency,
//! unspent permits given back, and bans and failed-login throttles with leases.

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use portcullis::core::Clock;
use portcullis::rate_limit::{Ban, Charge, Quota, RateLimitHandle, RedisBackend, Semantics};
use redis::AsyncCommands;

use crate::rate_limit_redis::{answered, backend, instance};
use crate::redis_server::RedisServer;

/// Script calls Redis has run so far (`EVALSHA` and `EVAL`).
async fn script_calls(redis: &RedisServer) -> u64 {
    let mut client = redis.client().await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut client)
        .await
        .unwrap();
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A backend whose instance count is configured, so no heartbeat scripts are counted.
async fn leasing(redis: &RedisServer, namespace: &str, ttl: Duration) -> RedisBackend {
    backend(redis, namespace)
        .await
        .instances(2)
        .lease_ttl(ttl)
        .timeout(Duration::from_secs(5))
}

fn manual_clock() -> (Clock, portcullis::core::ManualClock) {
    Clock::manual(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

async fn pair(
    quota: impl Fn() -> Quota,
    redis: &RedisServer,
    namespace: &str,
    ttl: Duration,
    clock: Option<Clock>,
) -> [(SocketAddr, RateLimitHandle); 2] {
    [
        instance(quota(), leasing(redis, namespace, ttl).await, clock.clone()).await,
        instance(quota(), leasing(redis, namespace, ttl).await, clock).await,
    ]
}

/// Far from its limit, a key costs a script call per lease (up to 64 permits), not per
/// request; `exact = true` keeps one per request.
#[tokio::test]
async fn leased_quotas_cost_a_round_trip_per_lease_not_per_request() {
    let Some(redis) = RedisServer::start("leases_cost_few_round_trips").await else {
        return;
    };
    for exact in [false, true] {
        let quota = || Quota::new("busy", "36000 per 1h".parse().unwrap()).exact(exact);
        let namespace = format!("busy-{exact}");
        // A manual clock: nothing refills while the test runs.
        let (clock, _control) = manual_clock();
        let servers = pair(
            quota,
            &redis,
            &namespace,
            Duration::from_secs(10),
            Some(clock),
        )
        .await;
        let before = script_calls(&redis).await;
        for i in 0..400 {
            let reply = answered(servers[i % 2].0, "127.0.0.90", "/").await;
            assert_eq!(reply.status, StatusCode::OK, "exact = {exact}, request {i}");
        }
        let calls = script_calls(&redis).await - before;
        eprintln!("exact = {exact}: {calls} script calls");
        if exact {
            assert_eq!(calls, 400, "one script call per request");
        } else {
            assert!(calls <= 40, "{calls} script calls for 400 requests");
        }
        // Both ways, Redis counted every permit handed out (leases as spent).
        let check = servers[0]
            .1
            .check_key("busy", None, &["127.0.0.90"])
            .await
            .unwrap();
        assert!(check.remaining <= 36_000 - 400, "{}", check.remaining);
    }
}

/// Two instances, many concurrent clients, demand twice the quota: never more than the
/// quota admitted, and never fewer than the quota minus one lease.
#[tokio::test]
async fn at_the_boundary_leases_shrink_and_the_count_stays_exact() {
    let Some(redis) = RedisServer::start("leases_at_the_boundary").await else {
        return;
    };
    for semantics in [Semantics::StrictWindow, Semantics::Smooth] {
        // A manual clock: nothing refills while the test runs.
        let (clock, _control) = manual_clock();
        let quota = || Quota::new("edge", "300 per 1m".parse().unwrap()).semantics(semantics);
        let namespace = format!("edge-{semantics:?}");
        let servers = pair(
            quota,
            &redis,
            &namespace,
            Duration::from_secs(60),
            Some(clock),
        )
        .await;
        let before = script_calls(&redis).await;
        let clients = (0..8).map(|c| {
            let server = servers[c % 2].0;
            async move {
                let mut allowed = 0;
                for _ in 0..75 {
                    let status = answered(server, "127.0.0.91", "/").await.status;
                    assert!(
                        status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
                        "{status}"
                    );
                    allowed += usize::from(status == StatusCode::OK);
                }
                allowed
            }
        });
        let allowed: usize = futures::future::join_all(clients).await.into_iter().sum();
        let calls = script_calls(&redis).await - before;
        eprintln!("{semantics:?}: {allowed} admitted, {calls} script calls");
        assert!(allowed <= 300, "{semantics:?}: {allowed} admitted");
        assert!(
            allowed >= 300 - 64,
            "{semantics:?}: only {allowed} admitted"
        );
        // Leases were used far from the boundary, and single permits near it.
        assert!(calls < 600, "{semantics:?}: {calls} script calls");
        assert!(calls > 300 / 64, "{semantics:?}: {calls} script calls");
    }
}

/// When a lease ends, what it did not spend goes back: Redis then holds what deciding
/// every request there would have left.
#[tokio::test]
async fn unspent_permits_go_back_when_the_lease_ends() {
    let Some(redis) = RedisServer::start("leases_give_back").await else {
        return;
    };
    for semantics in [Semantics::StrictWindow, Semantics::Smooth] {
        let (clock, control) = manual_clock();
        let quota = |exact: bool| {
            Quota::new("back", "3600 per 1h".parse().unwrap())
                .burst(200)
                .semantics(semantics)
                .exact(exact)
        };
        let ttl = Duration::from_secs(20);
        let (leased, leased_handle) = instance(
            quota(false),
            leasing(&redis, &format!("back-{semantics:?}"), ttl).await,
            Some(clock.clone()),
        )
        .await;
        let (exact, exact_handle) = instance(
            quota(true),
            leasing(&redis, &format!("back-exact-{semantics:?}"), ttl).await,
            Some(clock.clone()),
        )
        .await;
        for _ in 0..30 {
            assert_eq!(
                answered(leased, "127.0.0.92", "/").await.status,
                StatusCode::OK
            );
            assert_eq!(
                answered(exact, "127.0.0.92", "/").await.status,
                StatusCode::OK
            );
        }
        let remaining = |handle: RateLimitHandle| async move {
            handle
                .check_key("back", None, &["127.0.0.92"])
                .await
                .unwrap()
                .remaining
        };
        let held = remaining(leased_handle.clone()).await;
        let fair = remaining(exact_handle.clone()).await;
        assert!(
            held < fair,
            "{semantics:?}: a lease is out ({held} vs {fair})"
        );
        // The lease ends; the sweeper gives its unspent permits back.
        control.advance(ttl + Duration::from_millis(1));
        let mut given_back = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (held, fair) = (
                remaining(leased_handle.clone()).await,
                remaining(exact_handle.clone()).await,
            );
            assert!(held <= fair, "{semantics:?}: {held} > {fair}");
            if held == fair {
                given_back = true;
                break;
            }
        }
        assert!(given_back, "{semantics:?}: the unspent permits came back");
        // Strict windows: only this instance's members were removed, by name.
        if semantics == Semantics::StrictWindow {
            let keys: Vec<String> = redis
                .client()
                .await
                .keys(format!("back-{semantics:?}:q:*"))
                .await
                .unwrap();
            let members: u64 = redis.client().await.zcard(&keys[0]).await.unwrap();
            assert_eq!(members, 30);
        }
    }
}

/// Failed logins with leases: right passwords give their reservations back into the
/// lease, and wrong ones, alternating between two instances, reach the service exactly
/// the quota's worth of times.
#[tokio::test]
async fn failed_logins_with_leases_are_throttled_exactly() {
    let Some(redis) = RedisServer::start("leases_failed_logins").await else {
        return;
    };
    for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
        let (clock, _control) = manual_clock();
        let quota = || {
            Quota::new("logins", "36000 per 1h".parse().unwrap())
                .burst(20)
                .semantics(semantics)
                .charge(Charge::Unauthenticated)
        };
        let quota = move || match semantics {
            // A strict window's burst is its count.
            Semantics::StrictWindow => Quota::new("logins", "20 per 2s".parse().unwrap())
                .semantics(semantics)
                .charge(Charge::Unauthenticated),
            _ => quota(),
        };
        let namespace = format!("logins-{semantics:?}");
        let servers = pair(
            quota,
            &redis,
            &namespace,
            Duration::from_secs(10),
            Some(clock),
        )
        .await;
        for i in 0..60 {
            let reply = answered(servers[i % 2].0, "127.0.0.93", "/").await;
            assert_eq!(reply.status, StatusCode::OK, "{semantics:?}: request {i}");
        }
        let mut failed = 0;
        for i in 0..60 {
            match answered(servers[i % 2].0, "127.0.0.93", "/login")
                .await
                .status
            {
                StatusCode::UNAUTHORIZED => failed += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{semantics:?}: {other}"),
            }
        }
        assert_eq!(failed, 20, "{semantics:?}");
    }
}

/// A ban made through a leased quota reaches both instances: once the quota refuses,
/// strikes are counted in Redis, and the other instance sees the ban when its lease
/// runs out.
#[tokio::test]
async fn bans_reach_every_instance_with_leases() {
    let Some(redis) = RedisServer::start("leases_bans").await else {
        return;
    };
    let (clock, _control) = manual_clock();
    let quota = || {
        Quota::new("abuse", "36000 per 1h".parse().unwrap())
            .burst(40)
            .ban(Ban::after(
                2,
                Duration::from_secs(60),
                Duration::from_secs(600),
            ))
    };
    let servers = pair(quota, &redis, "bans", Duration::from_secs(10), Some(clock)).await;
    let mut allowed = 0;
    let mut banned_on = [false, false];
    for i in 0..200 {
        let reply = answered(servers[i % 2].0, "127.0.0.94", "/").await;
        match reply.status {
            StatusCode::OK => {
                assert!(
                    !banned_on[i % 2],
                    "instance {} allowed after it saw the ban",
                    i % 2
                );
                allowed += 1;
            }
            _ if reply.code().as_deref() == Some("banned") => banned_on[i % 2] = true,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert!(allowed <= 40, "{allowed}");
    assert_eq!(banned_on, [true, true]);
    let bans = servers[0].1.shared_bans().await.unwrap();
    assert_eq!(bans.len(), 1);
    // Another client is untouched.
    assert_eq!(
        answered(servers[1].0, "127.0.0.95", "/").await.status,
        StatusCode::OK
    );
}

/// The gateway file: `redis_lease_ttl` and `redis_max_lease` size the leases, and a
/// quota's `exact = true` decides each of its requests in Redis.
#[tokio::test]
async fn the_gateway_file_sets_leases_and_exact_quotas() {
    let Some(redis) = RedisServer::start("gateway_file_leases").await else {
        return;
    };
    for exact in [false, true] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"rate-limit\"\nredis = \"{}\"\nredis_namespace = \"file-{exact}\"\nredis_instances = 2\nredis_lease_ttl = \"10s\"\nredis_max_lease = 8\n[[layer.quota]]\nname = \"q\"\nrate = \"100/s\"\nburst = 1000\nexact = {exact}\n",
            redis.url()
        );
        let app = axum::Router::new().fallback(|| async { "ok" });
        let server = crate::client::serve_gateway_file(&text, &std::env::temp_dir(), app).await;
        let before = script_calls(&redis).await;
        for _ in 0..80 {
            assert_eq!(
                answered(server, "127.0.0.96", "/").await.status,
                StatusCode::OK
            );
        }
        let calls = script_calls(&redis).await - before;
        match exact {
            true => assert_eq!(calls, 80),
            // The first request alone, then leases of at most 8.
            false => assert!((10..=12).contains(&calls), "{calls}"),
        }
    }
}

/// Redis killed while instances hold leases: each goes on spending what it holds (those
/// permits are counted in Redis already) and nothing more; the rest follows the
/// failure policy (here 503), and after a restart requests are decided in Redis again.
#[tokio::test]
async fn a_redis_outage_admits_no_more_than_the_leases_outstanding() {
    let Some(mut redis) = RedisServer::start("leases_outage").await else {
        return;
    };
    let (clock, _control) = manual_clock();
    let quota = || Quota::new("outage", "36000 per 1h".parse().unwrap()).burst(2000);
    let failing_closed = |redis: &RedisServer| {
        let redis_url = redis.url();
        async move {
            RedisBackend::connect(&redis_url)
                .await
                .unwrap()
                .namespace("outage")
                .instances(2)
                .lease_ttl(Duration::from_secs(30))
                .timeout(Duration::from_secs(2))
                .on_failure(portcullis::rate_limit::RedisFailure::FailClosed)
        }
    };
    let servers = [
        instance(quota(), failing_closed(&redis).await, Some(clock.clone())).await,
        instance(quota(), failing_closed(&redis).await, Some(clock)).await,
    ];
    let mut admitted = 0u32;
    for i in 0..101 {
        let status = answered(servers[i % 2].0, "127.0.0.97", "/").await.status;
        assert_eq!(status, StatusCode::OK);
        admitted += 1;
    }
    // Redis counts the leases as spent: what it counted beyond the admitted requests is
    // still held by the instances.
    let left = servers[0]
        .1
        .check_key("outage", None, &["127.0.0.97"])
        .await
        .unwrap()
        .remaining;
    let outstanding = 2000 - left - admitted;
    assert!(outstanding > 0, "the instances hold leases");

    redis.kill();
    let mut during = 0;
    for i in 0..200 {
        let reply = answered(servers[i % 2].0, "127.0.0.97", "/").await;
        match reply.status {
            StatusCode::OK => during += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        during, outstanding,
        "the leases held at the kill, and no more"
    );

    redis.restart().await;
    let reply = answered(servers[0].0, "127.0.0.97", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.code());
    assert_eq!(
        redis
            .client()
            .await
            .keys::<_, Vec<String>>("outage:q:*")
            .await
            .unwrap()
            .len(),
        1
    );
}
