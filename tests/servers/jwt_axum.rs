//! The JWT layer on real servers: an app authenticates with an API key, is issued a
//! token, uses it, extends it and uses the new one; a JWKS server on 127.0.0.1 rotates
//! keys while requests flow and goes down; tonic clients see UNAUTHENTICATED.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::core::{AuthMethod, Authentication, Clock, Principal};
use portcullis::jwt::jsonwebtoken::Algorithm;
use portcullis::jwt::{Issuer, JwtLayer, Revocations, SigningKey, TokenIssuer};
use serde_json::{json, Value};
use tokio_stream::wrappers::TcpListenerStream;

use crate::client::{get_with, grpc_health_check, listener, serve_axum, Reply};

const AUD: &str = "key-service";

async fn who(request: Request) -> String {
    let auth = Authentication::from_extensions(request.extensions());
    let principal = auth.get(AuthMethod::Jwt).expect("the JWT layer ran");
    format!("{} {:?}", principal.id(), principal.roles())
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    get_with(addr, method, "127.0.0.1", path, headers).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn access_token(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_app_is_issued_a_token_uses_it_and_extends_it() {
    let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(
            KeyRecord::new(key.id(), "app-7", key.digest())
                .unwrap()
                .roles(["operator"]),
        )
        .unwrap();
    let revocations = Revocations::new();
    let tokens = TokenIssuer::new(
        SigningKey::generate(Algorithm::ES256)
            .unwrap()
            .with_kid("k1"),
        "https://hsm.example",
        AUD,
    )
    .unwrap()
    .clock(clock.clone())
    .revocations(revocations.clone());
    let jwt = JwtLayer::builder()
        .issuer(tokens.validating_issuer())
        .revocations(revocations)
        .clock(clock)
        .build()
        .unwrap();
    let app = Router::new()
        .route_service("/token", tokens.issue_service())
        .route_layer(ApiKeyLayer::new(store))
        .merge(
            Router::new()
                .route("/v1/keys", get(who))
                .route_service("/token/extend", tokens.extend_service())
                .route_layer(jwt),
        );
    let addr = serve_axum(app).await;

    let refused = send(addr, "POST", "/token", &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.code().as_deref(), Some("missing_api_key"));

    let first = access_token(
        &send(
            addr,
            "POST",
            "/token",
            &[("x-api-key", key.expose_secret())],
        )
        .await,
    );
    let used = send(
        addr,
        "GET",
        "/v1/keys",
        &[("authorization", &bearer(&first))],
    )
    .await;
    assert_eq!(used.status, StatusCode::OK);
    assert_eq!(used.body, "app-7 [\"operator\"]");

    // Nine hours later the app extends its token, through the JWT layer in front.
    control.advance(Duration::from_secs(9 * 3600));
    let second = access_token(
        &send(
            addr,
            "POST",
            "/token/extend",
            &[("authorization", &bearer(&first))],
        )
        .await,
    );
    assert_ne!(first, second);
    let used = send(
        addr,
        "GET",
        "/v1/keys",
        &[("authorization", &bearer(&second))],
    )
    .await;
    assert_eq!(used.status, StatusCode::OK);
    let old = send(
        addr,
        "GET",
        "/v1/keys",
        &[("authorization", &bearer(&first))],
    )
    .await;
    assert_eq!(old.code().as_deref(), Some("revoked_token"));

    // Eleven hours after that, the second token has expired too.
    control.advance(Duration::from_secs(11 * 3600));
    for path in ["/v1/keys", "/token/extend"] {
        let method = if path == "/v1/keys" { "GET" } else { "POST" };
        let expired = send(addr, method, path, &[("authorization", &bearer(&second))]).await;
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(expired.code().as_deref(), Some("expired_token"), "{path}");
        let challenge = expired.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
            "{challenge}"
        );
        assert!(!expired.body.contains(&second[..30]));
    }
    let garbage = send(
        addr,
        "GET",
        "/v1/keys",
        &[("authorization", "Bearer a.b.c")],
    )
    .await;
    assert_eq!(garbage.code().as_deref(), Some("malformed_token"));
    assert_eq!(garbage.headers["content-type"], "application/problem+json");
}

/// A key server the test controls: its JWKS, whether it answers, and how often it was
/// asked.
#[derive(Clone, Default)]
struct KeyServer {
    jwks: Arc<Mutex<Value>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    issuer: Arc<Mutex<String>>,
    /// The `Cache-Control` the JWKS is served with.
    cache_control: Arc<Mutex<Option<String>>>,
    /// Each fetch's `x-client` header.
    clients: Arc<Mutex<Vec<String>>>,
}

impl KeyServer {
    fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    async fn serve(&self) -> SocketAddr {
        async fn jwks(
            State(server): State<KeyServer>,
            headers: http::HeaderMap,
        ) -> axum::response::Response {
            if server.down.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            server.fetches.fetch_add(1, Ordering::SeqCst);
            server.clients.lock().unwrap().push(
                headers
                    .get("x-client")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
            );
            let body = server.jwks.lock().unwrap().to_string();
            let mut response = ([("content-type", "application/json")], body).into_response();
            if let Some(cache) = server.cache_control.lock().unwrap().clone() {
                response
                    .headers_mut()
                    .insert("cache-control", cache.parse().unwrap());
            }
            response
        }
        async fn discovery(State(server): State<KeyServer>) -> axum::response::Response {
            if server.down.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let issuer = server.issuer.lock().unwrap().clone();
            let body = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/keys") });
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        let app = Router::new()
            .route("/keys", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(self.clone());
        let addr = serve_axum(app).await;
        *self.issuer.lock().unwrap() = format!("http://{addr}");
        addr
    }
}

fn token_from(key: &SigningKey, issuer: &str, subject: &str) -> String {
    let tokens = TokenIssuer::new(key.clone(), issuer, AUD).unwrap();
    let principal = Principal::builder(subject, AuthMethod::ApiKey).build();
    tokens.issue(&principal, None).unwrap().expose().to_owned()
}

#[tokio::test]
async fn keys_rotate_at_the_key_server_while_requests_flow() {
    let key_server = KeyServer::default();
    let first = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("2026-11");
    key_server.publish(&[&first]);
    key_server.serve().await;
    let issuer_url = key_server.issuer.lock().unwrap().clone();

    let min_interval = Duration::from_millis(300);
    let layer = JwtLayer::builder()
        .issuer(
            Issuer::new(issuer_url.clone())
                .audience(AUD)
                .discover()
                .refresh_every(Duration::from_secs(3600))
                .min_refresh_interval(min_interval),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    assert!(
        handle.wait_for_keys(Duration::from_secs(10)).await,
        "the first fetch"
    );
    let app = Router::new().route("/v1/keys", get(who)).layer(layer);
    let addr = serve_axum(app).await;

    let old_token = token_from(&first, &issuer_url, "app-old");
    let call = move |token: String| async move {
        send(
            addr,
            "GET",
            "/v1/keys",
            &[("authorization", &bearer(&token))],
        )
        .await
    };
    assert_eq!(call(old_token.clone()).await.status, StatusCode::OK);

    // Requests with the old key keep flowing while the key server rotates.
    let flowing = tokio::spawn({
        let old_token = old_token.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(call(old_token.clone()).await.status);
            }
            statuses
        }
    });
    // Past the minimum interval since the first fetch, an unknown kid fetches at once.
    tokio::time::sleep(min_interval).await;
    let second = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("2026-12");
    key_server.publish(&[&first, &second]);
    let new_token = token_from(&second, &issuer_url, "app-new");
    let reply = call(new_token.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "an unknown kid refreshes the keys: {}",
        reply.body
    );
    assert_eq!(reply.body, "app-new []");
    assert!(flowing.await.unwrap().iter().all(|s| *s == StatusCode::OK));

    // A flood of made-up kids cannot hammer the key server.
    let flood: Vec<String> = (0..30)
        .map(|n| {
            let random = SigningKey::generate(Algorithm::ES256)
                .unwrap()
                .with_kid(format!("made-up-{n}"));
            token_from(&random, &issuer_url, "mallory")
        })
        .collect();
    tokio::time::sleep(min_interval).await;
    let before = key_server.fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for token in flood {
        let reply = call(token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code().as_deref(), Some("unknown_key"));
    }
    // At most one fetch per minimum interval, plus the one the first request started.
    let intervals = started.elapsed().as_millis() / min_interval.as_millis();
    let allowed = 2 + usize::try_from(intervals).unwrap();
    let asked = key_server.fetches.load(Ordering::SeqCst) - before;
    assert!(
        asked <= allowed,
        "30 unknown kids made {asked} fetches (allowed {allowed})"
    );

    // The key server goes down: known keys keep working, new ones cannot be learnt.
    key_server.down.store(true, Ordering::SeqCst);
    let third = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("2027-01");
    key_server.publish(&[&second, &third]);
    tokio::time::sleep(min_interval).await;
    let unreachable = call(token_from(&third, &issuer_url, "app-third")).await;
    assert_eq!(unreachable.code().as_deref(), Some("unknown_key"));
    assert_eq!(
        call(old_token.clone()).await.status,
        StatusCode::OK,
        "the last good keys stay"
    );
    assert_eq!(call(new_token.clone()).await.status, StatusCode::OK);

    // Back up: the next unknown kid (after the minimum interval) learns the new set.
    key_server.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(min_interval).await;
    assert_eq!(
        call(token_from(&third, &issuer_url, "app-third"))
            .await
            .status,
        StatusCode::OK
    );
    let retired = call(old_token).await;
    assert_eq!(
        retired.code().as_deref(),
        Some("unknown_key"),
        "the retired key is gone"
    );
}

/// The key server's `Cache-Control: max-age` sets the refresh, kept between the minimum
/// interval and `refresh_every`; the host's own HTTP client does the fetching.
#[tokio::test]
async fn the_key_servers_max_age_and_the_hosts_client_are_used() {
    let key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("k");
    let key_server = KeyServer::default();
    key_server.publish(&[&key]);
    *key_server.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    let addr = key_server.serve().await;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-client", "the-hosts-client".parse().unwrap());
    let client = portcullis::jwt::reqwest::Client::builder()
        .default_headers(headers)
        .redirect(portcullis::jwt::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let layer = JwtLayer::builder()
        .issuer(
            Issuer::new("https://idp.example")
                .audience(AUD)
                .jwks_url(format!("http://{addr}/keys"))
                .http_client(client)
                .refresh_every(Duration::from_secs(3600))
                .min_refresh_interval(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    assert!(layer.handle().wait_for_keys(Duration::from_secs(10)).await);
    // With an hour between refreshes, only max-age=1 brings a second and third fetch.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while key_server.fetches.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(key_server.fetches.load(Ordering::SeqCst) >= 3);
    assert!(key_server
        .clients
        .lock()
        .unwrap()
        .iter()
        .all(|c| c == "the-hosts-client"));

    // A max-age longer than refresh_every does not stretch it; no-store does not make
    // it faster than the minimum interval.
    let quick = KeyServer::default();
    quick.publish(&[&key]);
    *quick.cache_control.lock().unwrap() = Some("max-age=86400".into());
    let quick_addr = quick.serve().await;
    let slow = KeyServer::default();
    slow.publish(&[&key]);
    *slow.cache_control.lock().unwrap() = Some("no-store".into());
    let slow_addr = slow.serve().await;
    let issuer = |name: &str, addr: SocketAddr, every: u64, min: u64| {
        Issuer::new(name)
            .audience(AUD)
            .jwks_url(format!("http://{addr}/keys"))
            .refresh_every(Duration::from_millis(every))
            .min_refresh_interval(Duration::from_millis(min))
    };
    let layer = JwtLayer::builder()
        .issuer(issuer("https://quick.example", quick_addr, 300, 100))
        .issuer(issuer("https://slow.example", slow_addr, 3_600_000, 1_000))
        .build()
        .unwrap();
    assert!(layer.handle().wait_for_keys(Duration::from_secs(10)).await);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let elapsed = started.elapsed().as_millis();
    let quick_fetches = quick.fetches.load(Ordering::SeqCst);
    assert!(
        quick_fetches >= 3,
        "refresh_every 300 ms: {quick_fetches} fetches"
    );
    // One fetch per second at most, and the first.
    let slow_fetches = slow.fetches.load(Ordering::SeqCst);
    let allowed = 2 + usize::try_from(elapsed / 1000).unwrap();
    assert!(
        (2..=allowed).contains(&slow_fetches),
        "no-store, minimum 1 s: {slow_fetches} fetches in {elapsed} ms"
    );
    drop(layer);
}

#[tokio::test]
async fn a_key_server_that_never_answered_gives_503_not_500() {
    let (_listener, addr) = listener().await;
    drop(_listener);
    let layer = JwtLayer::builder()
        .issuer(
            Issuer::new("https://idp.example")
                .audience(AUD)
                .jwks_url(format!("http://{addr}/keys"))
                .fetch_timeout(Duration::from_millis(500))
                .min_refresh_interval(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    assert!(
        !layer
            .handle()
            .wait_for_keys(Duration::from_millis(300))
            .await
    );
    let app = Router::new().route("/v1/keys", get(who)).layer(layer);
    let server = serve_axum(app).await;
    let key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("k");
    let token = token_from(&key, "https://idp.example", "app");
    let reply = send(
        server,
        "GET",
        "/v1/keys",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.code().as_deref(), Some("keys_unavailable"));
}

/// A key server that stays down: its last good keys are used up to the issuer's maximum
/// key age, then its tokens get 503 `keys_unavailable` (cached ones too) until a fetch
/// succeeds; an issuer told to trust stale keys keeps accepting.
#[tokio::test]
async fn keys_older_than_their_maximum_age_are_not_trusted() {
    let key_server = KeyServer::default();
    let key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("k1");
    key_server.publish(&[&key]);
    let addr = key_server.serve().await;
    let issuer = |name: &str| {
        Issuer::new(name)
            .audience(AUD)
            .jwks_url(format!("http://{addr}/keys"))
            .refresh_every(Duration::from_millis(100))
            .min_refresh_interval(Duration::from_millis(50))
    };
    let strict = JwtLayer::builder()
        .issuer(issuer("https://idp.example").max_key_age(Duration::from_millis(600)))
        .build()
        .unwrap();
    let lenient = JwtLayer::builder()
        .issuer(issuer("https://idp.example").trust_stale_keys_indefinitely())
        .build()
        .unwrap();
    for layer in [&strict, &lenient] {
        assert!(layer.handle().wait_for_keys(Duration::from_secs(10)).await);
    }
    let strict = serve_axum(Router::new().route("/v1/keys", get(who)).layer(strict)).await;
    let lenient = serve_axum(Router::new().route("/v1/keys", get(who)).layer(lenient)).await;
    let cached = token_from(&key, "https://idp.example", "app");
    let ask = |server: SocketAddr, token: String| async move {
        send(
            server,
            "GET",
            "/v1/keys",
            &[("authorization", &bearer(&token))],
        )
        .await
    };
    assert_eq!(ask(strict, cached.clone()).await.status, StatusCode::OK);

    key_server.down.store(true, Ordering::SeqCst);
    // The last good keys stay in use while they are young enough.
    assert_eq!(ask(strict, cached.clone()).await.status, StatusCode::OK);
    let mut refused = None;
    for _ in 0..200 {
        let reply = ask(strict, cached.clone()).await;
        if reply.status != StatusCode::OK {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the stale keys were trusted for 10 s");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.code().as_deref(), Some("keys_unavailable"));
    let fresh = token_from(&key, "https://idp.example", "other");
    assert_eq!(
        ask(strict, fresh.clone()).await.code().as_deref(),
        Some("keys_unavailable"),
        "an uncached token too"
    );
    assert_eq!(
        ask(lenient, fresh.clone()).await.status,
        StatusCode::OK,
        "trust_stale_keys_indefinitely keeps the last good keys"
    );

    key_server.down.store(false, Ordering::SeqCst);
    let mut recovered = false;
    for _ in 0..200 {
        if ask(strict, fresh.clone()).await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "a successful fetch makes the keys trusted again");
}

#[tokio::test]
async fn grpc_clients_see_unauthenticated() {
    let key = SigningKey::generate(Algorithm::EdDSA)
        .unwrap()
        .with_kid("grpc");
    let tokens = TokenIssuer::new(key.clone(), "https://auth.example", AUD).unwrap();
    let layer = JwtLayer::builder()
        .issuer(tokens.validating_issuer())
        .build()
        .unwrap();
    let (listener, addr) = listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let principal = Principal::builder("monitor", AuthMethod::Certificate).build();
    let token = tokens.issue(&principal, None).unwrap();
    let value = bearer(token.expose());
    assert!(grpc_health_check(addr, Some(("authorization", &value)))
        .await
        .is_ok());

    let status = grpc_health_check(addr, None).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("missing_token"),
        "{}",
        status.message()
    );

    let other = SigningKey::generate(Algorithm::EdDSA)
        .unwrap()
        .with_kid("grpc");
    let forged = TokenIssuer::new(other, "https://auth.example", AUD).unwrap();
    let forged = bearer(forged.issue(&principal, None).unwrap().expose());
    let status = grpc_health_check(addr, Some(("authorization", &forged)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("invalid_signature"),
        "{}",
        status.message()
    );
}
