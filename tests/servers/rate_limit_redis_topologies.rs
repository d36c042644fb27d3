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

/// Redis over TLS with certificates made here: the CA given, and the client
/// certificate the server requires, share quotas; without the client certificate,
/// with the system's roots only, or in plain text to the TLS port, nothing connects
/// and the failure policy answers (503 here).
#[tokio::test]
async fn redis_over_tls_with_a_ca_and_a_client_certificate() {
    use portcullis::rate_limit::RedisTls;
    use rcgen::ExtendedKeyUsagePurpose;

    let ca = crate::mtls_axum::Ca::new("Redis CA");
    let server = ca.issue("127.0.0.1", Some(ExtendedKeyUsagePurpose::ServerAuth), 2);
    let client = ca.issue("gateway", Some(ExtendedKeyUsagePurpose::ClientAuth), 3);
    let Some(redis) = crate::redis_server::TlsRedisServer::start(
        "redis_tls",
        &server.pem,
        &server.key,
        &ca.pem,
        true,
    )
    .await
    else {
        return;
    };
    let closed = |backend: RedisBackend| {
        backend
            .namespace("tls")
            .instances(2)
            .timeout(Duration::from_secs(2))
            .on_failure(RedisFailure::FailClosed)
    };
    let serve_with = |backend: RedisBackend| async move {
        let layer = RateLimitLayer::builder()
            .quota(Quota::new("per-ip", "3 per 1h".parse().unwrap()))
            .redis(closed(backend))
            .build()
            .unwrap();
        serve(layer).await
    };
    let full = RedisTls::new()
        .root_certificates(ca.pem.clone())
        .client_certificate(client.pem.clone(), client.key.clone());
    let debug = format!("{full:?}");
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains(&client.key[40..80]),
        "{debug}"
    );
    let mut servers = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect_with_tls(&redis.tls_url(), full.clone())
            .await
            .unwrap();
        servers.push(serve_with(backend).await);
    }
    let servers = &servers;
    let statuses: Vec<StatusCode> = futures::future::join_all(
        (0..5).map(|i| async move { answered(servers[i % 2], "127.0.0.102", "/").await.status }),
    )
    .await;
    let allowed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((allowed, refused), (3, 2), "{statuses:?}");
    let written: Vec<String> = redis.server.client().await.keys("tls:q:*").await.unwrap();
    assert_eq!(written.len(), 1);

    let refused_connections = [
        (
            "no client certificate",
            RedisBackend::connect_with_tls(
                &redis.tls_url(),
                RedisTls::new().root_certificates(ca.pem.clone()),
            )
            .await
            .unwrap(),
        ),
        (
            "the system's roots",
            RedisBackend::connect(&redis.tls_url()).await.unwrap(),
        ),
        (
            "plain text to the TLS port",
            RedisBackend::connect(&format!("redis://127.0.0.1:{}/", redis.tls_port))
                .await
                .unwrap(),
        ),
    ];
    for (case, backend) in refused_connections {
        let server = serve_with(backend).await;
        let reply = answered(server, "127.0.0.103", "/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
        assert_eq!(
            reply.code().as_deref(),
            Some("rate_limit_unavailable"),
            "{case}"
        );
    }

    // The gateway file: `redis_tls` names the files, read relative to the file's
    // directory; a certificate without its key is refused with a message.
    let dir = std::env::temp_dir().join(format!("portcullis-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("client.pem"), &client.pem).unwrap();
    std::fs::write(dir.join("client-key.pem"), &client.key).unwrap();
    let file = |tls: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"rate-limit\"\nredis = \"{}\"\nredis_namespace = \"tls-file\"\nredis_on_failure = \"fail-closed\"\n{tls}\n[[layer.quota]]\nname = \"q\"\nrate = \"1 per 1h\"\n",
            redis.tls_url()
        )
    };
    let text = file("redis_tls = { ca_file = \"ca.pem\", cert_file = \"client.pem\", key_file = \"client-key.pem\" }");
    let app = axum::Router::new().fallback(|| async { "ok" });
    let gateway = crate::client::serve_gateway_file(&text, &dir, app).await;
    assert_eq!(
        answered(gateway, "127.0.0.104", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        answered(gateway, "127.0.0.104", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let error = portcullis::config::GatewayConfig::parse(
        "gateway.toml",
        &file("redis_tls = { ca_file = \"ca.pem\", cert_file = \"client.pem\" }"),
        &dir,
    )
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cert_file and key_file go together"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
