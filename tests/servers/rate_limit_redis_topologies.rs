//! Quotas shared through a Redis Cluster (three masters made by the test) and through
//! Redis Sentinel (a master, a replica and a Sentinel, failed over by killing the
//! master).

use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis::rate_limit::{Ban, KeyPart, Quota, RateLimitLayer, RedisBackend, RedisFailure};
use redis::AsyncCommands;

use crate::client::{get as fetch, serve_axum};
use crate::rate_limit_redis::answered;
use crate::redis_server::{RedisCluster, RedisSentinel};

/// Two quotas on different keys (so, on a cluster, in different slots), one with bans.
fn layer(url_backend: RedisBackend) -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota(
            Quota::new("per-ip", "5 per 1h".parse().unwrap()).ban(Ban::after(
                0,
                Duration::from_secs(60),
                Duration::from_secs(600),
            )),
        )
        .quota(
            Quota::new("per-client", "3 per 1h".parse().unwrap())
                .key([KeyPart::Header(http::HeaderName::from_static("x-client"))]),
        )
        .redis(url_backend)
        .build()
        .unwrap()
}

async fn serve(layer: RateLimitLayer) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(layer);
    serve_axum(app).await
}

#[tokio::test]
async fn a_redis_cluster_shares_quotas_across_slots() {
    let Some(cluster) = RedisCluster::start("redis_cluster").await else {
        return;
    };
    let backend = || async {
        RedisBackend::connect(&cluster.url())
            .await
            .unwrap()
            .namespace("cluster")
            .instances(2)
            .timeout(Duration::from_secs(5))
    };
    let a_layer = layer(backend().await);
    let handle = a_layer.handle();
    let servers = [serve(a_layer).await, serve(layer(backend().await)).await];

    // The per-client quota (3) refuses the fourth request; the per-ip quota, whose
    // keys live in another slot, was not charged for it.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let reply = fetch(servers[i % 2], "127.0.0.100", "/", &[("x-client", "one")]).await;
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // So the address has two requests left, not one; then its refusal bans it.
    for (i, expected) in [StatusCode::OK, StatusCode::OK, StatusCode::FORBIDDEN]
        .into_iter()
        .enumerate()
    {
        let reply = fetch(servers[i % 2], "127.0.0.100", "/", &[("x-client", "two")]).await;
        assert_eq!(reply.status, expected, "request {i} with another client id");
    }

    // Many addresses: their keys spread over the nodes, and each gets exactly 5.
    for client in 1..=12 {
        let ip = format!("127.0.1.{client}");
        let mut allowed = 0;
        for i in 0..7 {
            let id = format!("c{client}-{i}");
            let reply = fetch(servers[i % 2], &ip, "/", &[("x-client", &id)]).await;
            allowed += usize::from(reply.status == StatusCode::OK);
        }
        assert_eq!(allowed, 5, "{ip}");
    }
    let mut nodes_with_keys = 0;
    for node in &cluster.nodes {
        let keys: Vec<String> = node.client().await.keys("cluster:q:*").await.unwrap();
        nodes_with_keys += usize::from(!keys.is_empty());
    }
    assert!(nodes_with_keys >= 2, "keys on {nodes_with_keys} node(s)");

    // Bans are listed from every master, and lifted where they live.
    let bans = handle.shared_bans().await.unwrap();
    assert_eq!(bans.len(), 13, "{bans:?}");
    assert!(handle
        .lift_shared_ban("per-ip", "ip=127.0.1.7/32")
        .await
        .unwrap());
    assert_eq!(handle.shared_bans().await.unwrap().len(), 12);
}

#[tokio::test]
async fn sentinel_names_the_master_and_a_failover_is_followed() {
    let Some(mut topology) = RedisSentinel::start("redis_sentinel").await else {
        return;
    };
    let backend = || async {
        RedisBackend::connect(&topology.url())
            .await
            .unwrap()
            .namespace("sentinel")
            .instances(2)
            .timeout(Duration::from_millis(500))
            .retry_after(Duration::from_millis(100))
            .on_failure(RedisFailure::FailClosed)
    };
    let quota = || Quota::new("per-ip", "5 per 1h".parse().unwrap());
    let mut servers = Vec::new();
    for _ in 0..2 {
        let layer = RateLimitLayer::builder()
            .quota(quota())
            .redis(backend().await)
            .build()
            .unwrap();
        servers.push(serve(layer).await);
    }
    for i in 0..4 {
        let reply = answered(servers[i % 2], "127.0.0.101", "/").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {:?}",
            reply.code()
        );
    }
    // Written on the master, copied to the replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = topology
            .replica
            .client()
            .await
            .keys("sentinel:q:*")
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not copy the quota"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The master dies; Sentinel promotes the replica; the instances follow, and the
    // count carried over (one left for this address).
    let replica_port = topology.replica.addr().port();
    topology.master.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    loop {
        let reply = answered(servers[statuses.len() % 2], "127.0.0.101", "/").await;
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.code().as_deref(), Some("rate_limit_unavailable"));
            }
            status => {
                statuses.push(status);
                if statuses.len() == 4 {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the new master: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(topology.master_port().await, replica_port);
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}
