//! The rate-limit layer in axum and tonic servers: 429 with `Retry-After` and the
//! RateLimit fields over real HTTP, per client address behind a trusted proxy, and
//! `RESOURCE_EXHAUSTED` for a real tonic client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use portcullis::core::{AuthMethod, Authentication, ClientIpResolver, ForwardedHeader, Principal};
use portcullis::rate_limit::{Charge, KeyPart, MissingKey, Quota, RateLimitLayer, Semantics};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::Code;

use crate::client::{get as fetch, grpc_health_check, listener, serve_axum};

/// Stands in for an authentication layer: `x-user: alice` becomes principal `alice`.
fn authenticate<B>(mut request: http::Request<B>) -> http::Request<B> {
    if let Some(user) = request.headers().get("x-user").cloned() {
        let principal = Principal::builder(user.to_str().unwrap(), AuthMethod::ApiKey).build();
        Authentication::insert_into(request.extensions_mut(), principal).unwrap();
    }
    request
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/login",
            get(|| async { (StatusCode::UNAUTHORIZED, "wrong key") }),
        )
        .layer(layer)
}

#[tokio::test]
async fn over_quota_clients_get_429_with_retry_after_and_the_ratelimit_fields() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "3 per 1h".parse().unwrap()).semantics(Semantics::StrictWindow))
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let server = serve_axum(app(layer)).await;

    for remaining in [2, 1, 0] {
        let reply = fetch(server, "127.0.0.20", "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["ratelimit-policy"], "\"per-ip\";q=3;w=3600");
        let state = reply.headers["ratelimit"].to_str().unwrap();
        assert!(
            state.starts_with(&format!("\"per-ip\";r={remaining};t=")),
            "{state}"
        );
    }
    let refused = fetch(server, "127.0.0.20", "/", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code().as_deref(), Some("rate_limited"));
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3599..=3600).contains(&retry), "{retry}");
    assert!(refused.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"per-ip\";r=0;t="));

    // Another client address has its own quota.
    assert_eq!(
        fetch(server, "127.0.0.21", "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_limited_on_its_own() {
    let resolver = ClientIpResolver::new()
        .trust_proxies("127.0.0.30/32".parse().unwrap())
        .unwrap()
        .forwarded_header(ForwardedHeader::XForwardedFor);
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "1 per 1h".parse().unwrap()))
        .client_ip(resolver)
        .build()
        .unwrap();
    let server = serve_axum(app(layer)).await;
    let via_proxy = |client: &'static str| async move {
        fetch(server, "127.0.0.30", "/", &[("x-forwarded-for", client)])
            .await
            .status
    };
    assert_eq!(via_proxy("203.0.113.1").await, StatusCode::OK);
    assert_eq!(via_proxy("203.0.113.2").await, StatusCode::OK);
    assert_eq!(
        via_proxy("203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A client that is not the proxy cannot pick its own key with the header.
    let spoofer = |header: &'static str| async move {
        fetch(server, "127.0.0.31", "/", &[("x-forwarded-for", header)])
            .await
            .status
    };
    assert_eq!(spoofer("198.51.100.1").await, StatusCode::OK);
    assert_eq!(
        spoofer("198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "keyed by the socket peer, not the header"
    );
}

#[tokio::test]
async fn per_principal_quotas_sit_after_authentication() {
    let per_principal = RateLimitLayer::builder()
        .quota(
            Quota::new("per-principal", "2 per 1h".parse().unwrap())
                .key([KeyPart::Principal])
                .when_key_missing(MissingKey::Refuse),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(per_principal)
        .layer(tower::util::MapRequestLayer::new(authenticate));
    let server = serve_axum(app).await;
    let as_principal = |who: &'static str| async move {
        fetch(server, "127.0.0.40", "/", &[("x-user", who)])
            .await
            .status
    };
    assert_eq!(as_principal("alice").await, StatusCode::OK);
    assert_eq!(as_principal("alice").await, StatusCode::OK);
    assert_eq!(as_principal("alice").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        as_principal("bob").await,
        StatusCode::OK,
        "from the same address"
    );
    let anonymous = fetch(server, "127.0.0.40", "/", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code().as_deref(), Some("rate_limit_key_missing"));
}

#[tokio::test]
async fn key_guessers_are_throttled_then_banned_while_good_clients_pass() {
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("auth-failures", "2 per 1h".parse().unwrap())
                .charge(Charge::Unauthenticated)
                .ban(portcullis::rate_limit::Ban::after(
                    1,
                    Duration::from_secs(600),
                    Duration::from_secs(3600),
                )),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let server = serve_axum(app(layer)).await;
    for _ in 0..2 {
        assert_eq!(
            fetch(server, "127.0.0.50", "/login", &[]).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..20 {
        assert_eq!(
            fetch(server, "127.0.0.51", "/", &[]).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        fetch(server, "127.0.0.50", "/", &[])
            .await
            .code()
            .as_deref(),
        Some("rate_limited")
    );
    let banned = fetch(server, "127.0.0.50", "/", &[]).await;
    assert_eq!(banned.status, StatusCode::FORBIDDEN);
    assert_eq!(banned.code().as_deref(), Some("banned"));
    // A 403 ban still says when it ends.
    let until: u64 = banned.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3599..=3600).contains(&until), "{until}");
    assert_eq!(handle.bans().len(), 1);
    assert_eq!(handle.bans()[0].key, "ip=127.0.0.50/32");
    assert!(handle.lift_ban("auth-failures", "ip=127.0.0.50/32"));
    assert_eq!(
        fetch(server, "127.0.0.50", "/", &[])
            .await
            .code()
            .as_deref(),
        Some("rate_limited"),
        "the quota is still spent once the ban is lifted"
    );
}

async fn serve_grpc(layer: RateLimitLayer) -> SocketAddr {
    let (listener, addr) = listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn grpc_clients_see_resource_exhausted() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "2 per 1h".parse().unwrap()))
        .build()
        .unwrap();
    let addr = serve_grpc(layer).await;
    assert!(grpc_health_check(addr, None).await.is_ok());
    assert!(grpc_health_check(addr, None).await.is_ok());
    let status = grpc_health_check(addr, None).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("rate_limited"),
        "{}",
        status.message()
    );
}

/// An authenticator that counts the guesses it is asked about and answers after a
/// pause, so that guesses sent together are all in flight at once. The password is
/// `right`.
pub(crate) fn slow_login(asked: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Router {
    use std::sync::atomic::Ordering;
    Router::new().route(
        "/login",
        get(move |headers: http::HeaderMap| {
            let asked = asked.clone();
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                match headers.get("x-password").map(|v| v.as_bytes()) {
                    Some(b"right") => (StatusCode::OK, "welcome"),
                    _ => (StatusCode::UNAUTHORIZED, "wrong password"),
                }
            }
        }),
    )
}

/// "5 failures per 15 minutes, charging only 401s": 64 wrong guesses sent at once reach
/// the authenticator at most 5 times, because each guess reserves its unit before the
/// call; a right password gives its unit back.
#[tokio::test]
async fn parallel_guesses_cannot_outrun_the_failed_login_throttle() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
        let asked = Arc::new(AtomicUsize::new(0));
        let layer = RateLimitLayer::builder()
            .quota(
                Quota::new("failed-logins", "5 per 15m".parse().unwrap())
                    .charge(Charge::Unauthenticated)
                    .semantics(semantics),
            )
            .build()
            .unwrap();
        let server = serve_axum(slow_login(asked.clone()).layer(layer)).await;

        // Right passwords first, one after another: each gives its reservation back.
        for _ in 0..8 {
            let reply = fetch(server, "127.0.0.51", "/login", &[("x-password", "right")]).await;
            assert_eq!(reply.status, StatusCode::OK, "{semantics:?}");
        }
        asked.store(0, Ordering::SeqCst);

        let guesses = (0..64).map(|i| async move {
            let guess = format!("guess-{i}");
            fetch(server, "127.0.0.51", "/login", &[("x-password", &guess)])
                .await
                .status
        });
        let statuses = futures::future::join_all(guesses).await;
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        let failed = statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        assert_eq!(
            asked.load(Ordering::SeqCst),
            5,
            "{semantics:?}: guesses that reached the authenticator"
        );
        assert_eq!((failed, refused), (5, 59), "{semantics:?}");
        // The five failures stand: the right password is refused too until the window
        // moves on.
        let reply = fetch(server, "127.0.0.51", "/login", &[("x-password", "right")]).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{semantics:?}");
        // Another client is untouched.
        let reply = fetch(server, "127.0.0.52", "/login", &[("x-password", "right")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{semantics:?}");
    }
}

/// Several quotas refuse: `Retry-After` is the longest wait among them, whatever their
/// order, and on every 429 the `RateLimit` field's `t` is that same moment. The
/// README's example ("25 per 5m" per key, strict) is what the server sends.
#[tokio::test]
async fn one_honest_wait_when_several_quotas_refuse() {
    let short = || Quota::new("short", "2 per 10s".parse().unwrap());
    let long = || Quota::new("long", "2 per 1h".parse().unwrap());
    for (first, second) in [(short(), long()), (long(), short())] {
        for semantics in [Semantics::Smooth, Semantics::StrictWindow] {
            let layer = RateLimitLayer::builder()
                .quota(first.clone().semantics(semantics))
                .quota(second.clone().semantics(semantics))
                .build()
                .unwrap();
            let server = serve_axum(app(layer)).await;
            for _ in 0..2 {
                assert_eq!(
                    fetch(server, "127.0.0.80", "/", &[]).await.status,
                    StatusCode::OK
                );
            }
            let refused = fetch(server, "127.0.0.80", "/", &[]).await;
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
            let state = refused.headers["ratelimit"].to_str().unwrap();
            assert_eq!(state, format!("\"long\";r=0;t={retry}"), "{semantics:?}");
        }
    }

    // The README's example.
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::new("per-key", "25 per 5m".parse().unwrap()).semantics(Semantics::StrictWindow),
        )
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let server = serve_axum(app(layer)).await;
    for _ in 0..25 {
        assert_eq!(
            fetch(server, "127.0.0.81", "/", &[]).await.status,
            StatusCode::OK
        );
    }
    let refused = fetch(server, "127.0.0.81", "/", &[]).await;
    assert_eq!(
        refused.headers["ratelimit-policy"],
        "\"per-key\";q=25;w=300"
    );
    assert_eq!(refused.headers["retry-after"], "300");
    assert_eq!(refused.headers["ratelimit"], "\"per-key\";r=0;t=300");
}

/// A per-route quota keys on the route pattern: walking ids (`/items/1`, `/items/2`, …)
/// does not multiply it. axum's matched path is read as it is; elsewhere the role router
/// marks the matched rule. The raw path stays available as `KeyPart::RawPath`, by name.
#[tokio::test]
async fn a_per_route_quota_keys_on_the_route_not_the_path() {
    let per_route = |key: KeyPart| {
        RateLimitLayer::builder()
            .quota(
                Quota::new("per-route", "2 per 1h".parse().unwrap())
                    .key([key])
                    .when_key_missing(MissingKey::Refuse),
            )
            .build()
            .unwrap()
    };
    let items = |layer: RateLimitLayer| {
        Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .layer(layer)
    };
    let server = serve_axum(items(per_route(KeyPart::Route))).await;
    let statuses: Vec<StatusCode> = futures::future::join_all((1..=4).map(|id| async move {
        fetch(server, "127.0.0.85", &format!("/items/{id}"), &[])
            .await
            .status
    }))
    .await;
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(limited, 2, "{statuses:?}");

    let server = serve_axum(items(per_route(KeyPart::RawPath))).await;
    for id in 1..=4 {
        let reply = fetch(server, "127.0.0.85", &format!("/items/{id}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "raw paths are separate keys");
    }

    // Without axum's router: the role router marks the matched rule.
    use portcullis::role_router::{Policy, Requirement, RoleRouterLayer, Rule};
    use tower::ServiceExt;
    let policy = Policy::builder()
        .rule(Rule::new("/items/{id}", Requirement::public()))
        .build()
        .unwrap();
    let stack = tower::ServiceBuilder::new()
        .layer(RoleRouterLayer::new(policy).mark_matched_route(true))
        .layer(per_route(KeyPart::Route))
        .service(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
    let mut statuses = Vec::new();
    for id in 1..=4 {
        let mut request = http::Request::get(format!("/items/{id}")).body(()).unwrap();
        request
            .extensions_mut()
            .insert(portcullis::core::PeerAddr("192.0.2.1:1".parse().unwrap()));
        statuses.push(stack.clone().oneshot(request).await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Nothing marked the route: the key part is missing, never the raw path.
    let unmarked = tower::ServiceBuilder::new()
        .layer(per_route(KeyPart::Route))
        .service(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
    let response = unmarked
        .oneshot(http::Request::get("/items/1").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}
