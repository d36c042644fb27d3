//! The gateway of `examples/gateway.toml`, built by `portcullis::config` and served over
//! real TLS on 127.0.0.1, driven by a real HTTPS client: the routes with the right and
//! the wrong roles for a client certificate, an API key and a JWT; token issue, use and
//! extend; the per-caller quota; the deny list; bad input across the stack.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use axum::Router;
use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::config::GatewayConfig;
use portcullis::core::TlsPeer;
use portcullis::mtls_identity::{DevClient, DevPki, TlsListener};
use reqwest::StatusCode;
use serde_json::Value;

/// A gateway with its clients' credentials.
struct Running {
    addr: SocketAddr,
    ca: String,
    connector: DevClient,
    stranger: DevClient,
    api_key: String,
}

fn fresh_dir() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-gateway-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small key service in place of the example's: every route answers who called.
fn service() -> Router {
    async fn ok() -> &'static str {
        "ok"
    }
    Router::new()
        .route("/health", get(ok))
        .route("/v1/versionInfo", get(ok))
        .route("/v1/key", get(ok).post(ok))
        .route("/v1/key/{name}", get(ok).delete(ok))
        .route("/v1/key/{name}/attributes", get(ok).put(ok))
        .route("/v1/sign", axum::routing::post(ok))
        .route("/v1/approval", get(ok))
}

/// Writes the example's configuration with its files into a fresh folder (denying
/// 127.0.0.66 as well) and serves it.
async fn start() -> Running {
    let dir = fresh_dir();
    let pki = DevPki::generate(&["localhost"]).unwrap();
    pki.write_to(&dir).unwrap();
    let connector = pki.client("connector-7").unwrap();
    let stranger = pki.client("stranger").unwrap();
    std::fs::write(
        dir.join("connectors.toml"),
        format!(
            "[[connector]]\nid = \"connector-7\"\nroles = [\"signer\", \"key-reader\"]\nthumbprints = [\"{}\"]\n",
            connector.thumbprint()
        ),
    )
    .unwrap();
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let record = KeyRecord::new(key.id(), "partner-acme", key.digest())
        .unwrap()
        .roles(["key-admin"]);
    std::fs::write(dir.join("api-keys.toml"), render_key_record(&record)).unwrap();
    std::fs::write(
        dir.join("token.secret"),
        "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ",
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        include_str!("../../examples/gateway-policy.toml"),
    )
    .unwrap();
    let config = include_str!("../../examples/gateway.toml")
        .replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "deny = [\"198.51.100.0/24\"]",
            "deny = [\"198.51.100.0/24\", \"127.0.0.66\"]",
        )
        .replace("stdout = true", "stdout = false");
    std::fs::write(dir.join("gateway.toml"), config).unwrap();

    let gateway = GatewayConfig::from_file(dir.join("gateway.toml"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let app = gateway.apply(service());
    let tcp = tokio::net::TcpListener::bind(gateway.listen).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, gateway.tls.clone().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener.for_axum(),
            app.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .await
        .unwrap();
    });
    Running {
        addr,
        ca: pki.ca_pem().to_owned(),
        connector,
        stranger,
        api_key: key.expose_secret().to_owned(),
    }
}

impl Running {
    fn client(&self, certificate: Option<&DevClient>, from: &str) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap())
            .resolve("localhost", self.addr)
            .local_address(from.parse::<IpAddr>().unwrap());
        if let Some(client) = certificate {
            builder = builder
                .identity(reqwest::Identity::from_pem(client.identity_pem().as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

/// Status and the refusal code (or the body).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, String) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    if content_type.starts_with("application/problem+json") {
        let value: Value = serde_json::from_str(&body).unwrap();
        return (status, value["code"].as_str().unwrap().to_owned());
    }
    (status, body)
}

#[tokio::test]
async fn each_credential_opens_exactly_its_routes() {
    let gw = start().await;
    let anyone = gw.client(None, "127.0.0.1");
    let cert = gw.client(Some(&gw.connector), "127.0.0.1");
    let stranger = gw.client(Some(&gw.stranger), "127.0.0.1");
    let key = gw.api_key.clone();

    // Public routes, without credentials.
    assert_eq!(send(anyone.get(gw.url("/health"))).await.0, StatusCode::OK);
    assert_eq!(
        send(anyone.get(gw.url("/v1/versionInfo"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(anyone.get(gw.url("/v1/key"))).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );

    // connector-7's certificate: signer and key-reader.
    for (method, path, expected) in [
        ("GET", "/v1/key", StatusCode::OK),
        ("GET", "/v1/key/default", StatusCode::OK),
        ("GET", "/v1/key/default/attributes", StatusCode::OK),
        ("POST", "/v1/sign", StatusCode::OK),
        ("POST", "/v1/key", StatusCode::FORBIDDEN),
        ("DELETE", "/v1/key/default", StatusCode::FORBIDDEN),
        ("PUT", "/v1/key/default/attributes", StatusCode::FORBIDDEN),
        ("GET", "/v1/approval", StatusCode::FORBIDDEN),
    ] {
        let method = method.parse().unwrap();
        let (status, said) = send(cert.request(method, gw.url(path))).await;
        assert_eq!(status, expected, "certificate {path}: {said}");
    }
    // A certificate of the right CA that no connector registered.
    assert_eq!(
        send(stranger.get(gw.url("/v1/key"))).await,
        (StatusCode::UNAUTHORIZED, "unknown_connector".into())
    );

    // The API key: key-admin.
    for (method, path, expected) in [
        ("GET", "/v1/key", StatusCode::OK),
        ("POST", "/v1/key", StatusCode::OK),
        ("DELETE", "/v1/key/default", StatusCode::OK),
        ("PUT", "/v1/key/default/attributes", StatusCode::OK),
        ("POST", "/v1/sign", StatusCode::FORBIDDEN),
        ("GET", "/v1/approval", StatusCode::FORBIDDEN),
    ] {
        let method = method.parse().unwrap();
        let request = anyone
            .request(method, gw.url(path))
            .header("x-api-key", &key);
        let (status, said) = send(request).await;
        assert_eq!(status, expected, "api key {path}: {said}");
    }
    // One character changed: refused.
    let mut wrong = key.clone();
    wrong.pop();
    wrong.push('x');
    assert_eq!(
        send(anyone.get(gw.url("/v1/key")).header("x-api-key", wrong))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tokens_are_issued_to_certificates_and_keys_then_used_and_extended() {
    let gw = start().await;
    let cert = gw.client(Some(&gw.connector), "127.0.0.1");
    let anyone = gw.client(None, "127.0.0.1");

    let (status, body) = send(cert.post(gw.url("/v1/token"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The token carries connector-7's roles: signing works from any connection...
    let bearer = format!("Bearer {token}");
    assert_eq!(
        send(
            anyone
                .post(gw.url("/v1/sign"))
                .header("authorization", &bearer)
        )
        .await
        .0,
        StatusCode::OK
    );
    // ...and key management does not.
    assert_eq!(
        send(
            anyone
                .post(gw.url("/v1/key"))
                .header("authorization", &bearer)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Extending gives a new token and revokes the old one.
    let (status, body) = send(
        anyone
            .post(gw.url("/v1/token/extend"))
            .header("authorization", &bearer),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let extended = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(extended, token);
    assert_eq!(
        send(
            anyone
                .post(gw.url("/v1/sign"))
                .header("authorization", format!("Bearer {extended}"))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        send(
            anyone
                .post(gw.url("/v1/sign"))
                .header("authorization", &bearer)
        )
        .await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
    // No token for the unauthenticated.
    assert_eq!(
        send(anyone.post(gw.url("/v1/token"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    // An API key gets one too.
    let (status, _) = send(
        anyone
            .post(gw.url("/v1/token"))
            .header("x-api-key", &gw.api_key),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_quota_the_deny_list_and_bad_input() {
    let gw = start().await;
    let anyone = gw.client(None, "127.0.0.1");

    // per-caller: 25 per 5 minutes, burst 25.
    for n in 0..25 {
        let (status, said) = send(
            anyone
                .get(gw.url("/v1/key"))
                .header("x-api-key", &gw.api_key),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {n}: {said}");
    }
    let response = anyone
        .get(gw.url("/v1/key"))
        .header("x-api-key", &gw.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));

    // 127.0.0.66 is on the deny list.
    let denied = gw.client(None, "127.0.0.66");
    assert_eq!(
        send(denied.get(gw.url("/health"))).await,
        (StatusCode::FORBIDDEN, "ip_denied".into())
    );

    // Bad input: always a 4xx problem, never a 5xx.
    let cert = gw.client(Some(&gw.connector), "127.0.0.2");
    for path in [
        "/v1/key/../approval",
        "/v1//key",
        "/v1/key/%2e%2e/approval",
        "/v1/key/%2F",
    ] {
        let (status, said) = send(cert.get(gw.url(path))).await;
        assert!(status.is_client_error(), "{path}: {status} {said}");
    }
    let other = gw.client(None, "127.0.0.3");
    for value in ["not-a-key", "pck_", &"x".repeat(4000)] {
        let (status, said) = send(other.get(gw.url("/v1/key")).header("x-api-key", value)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{said}");
    }
    let (status, said) = send(
        other
            .get(gw.url("/v1/key"))
            .header("authorization", "Bearer e30.e30.e30"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{said}");
    let bytes = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    let (status, _) = send(other.get(gw.url("/v1/key")).header("x-api-key", bytes)).await;
    assert!(status.is_client_error(), "{status}");
}
