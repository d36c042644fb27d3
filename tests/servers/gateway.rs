//! The gateway of `examples/gateway.toml`, built by `portcullis::config` and served over
//! real TLS on 127.0.0.1, driven by a real HTTPS client: the routes with the right and
//! the wrong roles for a client certificate, an API key and a JWT; a certificate-bound
//! token; token issue, use and extend; the per-caller quota; the deny list; bad input
//! across the stack; the same decisions in three layer orders, on axum and on plain
//! hyper; the audit events; and the built example binary.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::config::GatewayConfig;
use portcullis::core::TlsPeer;
use portcullis::mtls_identity::{serve_hyper, DevClient, DevPki, TlsListener};
use reqwest::StatusCode;
use serde_json::Value;
use tower::Layer;

/// A gateway with its clients' credentials.
struct Running {
    addr: SocketAddr,
    dir: PathBuf,
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

/// A small key service in place of the example's: every route answers "ok".
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

/// How the built stack is served.
#[derive(Clone, Copy, Debug)]
enum Server {
    /// `Gateway::apply` on an axum `Router`.
    AxumApply,
    /// `Gateway::layer` around an axum `Router`.
    AxumLayer,
    /// `Gateway::layer` around a bare tower service on plain hyper: no axum at all.
    Hyper,
}

/// The example's `[[layer]]` entries, by their index in `examples/gateway.toml`.
const AUDIT: usize = 0;
const IP_ALLOWLIST: usize = 1;
const LIMIT_BEFORE_AUTH: usize = 2;
const MTLS: usize = 3;
const API_KEY: usize = 4;
const JWT: usize = 5;
const LIMIT_PER_CALLER: usize = 6;
const ROLE_ROUTER: usize = 7;
const FILE_ORDER: [usize; 8] = [
    AUDIT,
    IP_ALLOWLIST,
    LIMIT_BEFORE_AUTH,
    MTLS,
    API_KEY,
    JWT,
    LIMIT_PER_CALLER,
    ROLE_ROUTER,
];

/// The example configuration with its `[[layer]]` entries in `order`.
fn reorder(config: &str, order: &[usize]) -> String {
    let mut parts = config.split("\n[[layer]]\n");
    let mut text = parts.next().unwrap().to_owned();
    let blocks: Vec<&str> = parts.collect();
    assert_eq!(
        blocks.len(),
        FILE_ORDER.len(),
        "the example's layers changed"
    );
    for &index in order {
        text.push_str("\n[[layer]]\n");
        text.push_str(blocks[index].trim_end());
        text.push('\n');
    }
    text
}

/// Writes the example's configuration, with its layers in `order`, and its files into
/// a fresh folder, denying 127.0.0.66 as well and writing audit events to `audit/`.
fn write_setup(order: &[usize]) -> (PathBuf, DevPki, DevClient, DevClient, String) {
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
        .replace("stdout = true", "stdout = false")
        .replace("# directory = \"audit\"", "directory = \"audit\"");
    std::fs::write(dir.join("gateway.toml"), reorder(&config, order)).unwrap();
    let api_key = key.expose_secret().to_owned();
    (dir, pki, connector, stranger, api_key)
}

/// The example's stack in the file's order, served by axum.
async fn start() -> Running {
    start_with(Server::AxumApply, &FILE_ORDER).await
}

async fn start_with(server: Server, order: &[usize]) -> Running {
    let (dir, pki, connector, stranger, api_key) = write_setup(order);
    let config = GatewayConfig::from_file(dir.join("gateway.toml")).unwrap();
    let gateway = config.build().await.unwrap();
    let tcp = tokio::net::TcpListener::bind(gateway.listen).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, gateway.tls.clone().unwrap());
    match server {
        Server::AxumApply | Server::AxumLayer => {
            let app = match server {
                Server::AxumApply => gateway.apply(service()),
                _ => service().layer(gateway.layer()),
            };
            tokio::spawn(async move {
                axum::serve(
                    listener.for_axum(),
                    app.into_make_service_with_connect_info::<TlsPeer>(),
                )
                .await
                .unwrap();
            });
        }
        Server::Hyper => {
            let ok = tower::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let stack = gateway.layer().layer(ok);
            tokio::spawn(serve_hyper(listener, stack));
        }
    }
    Running {
        addr,
        dir,
        ca: pki.ca_pem().to_owned(),
        connector,
        stranger,
        api_key,
    }
}

impl Running {
    fn client(&self, certificate: Option<&DevClient>, from: &str) -> reqwest::Client {
        client(&self.ca, self.addr, certificate, from)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

fn client(
    ca: &str,
    addr: SocketAddr,
    certificate: Option<&DevClient>,
    from: &str,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .local_address(from.parse::<IpAddr>().unwrap());
    if let Some(client) = certificate {
        builder = builder
            .identity(reqwest::Identity::from_pem(client.identity_pem().as_bytes()).unwrap());
    }
    builder.build().unwrap()
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
    // A different last character (a fixed 'x' was the same key once in 62 runs).
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'x' { 'y' } else { 'x' });
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
    // The token carries connector-7's roles and is bound to its certificate
    // (`binding = "when-present"`): signing works on a connection with that
    // certificate...
    let bearer = format!("Bearer {token}");
    let sign = |client: &reqwest::Client, bearer: &str| {
        client
            .post(gw.url("/v1/sign"))
            .header("authorization", bearer.to_owned())
    };
    assert_eq!(send(sign(&cert, &bearer)).await.0, StatusCode::OK);
    // ...not without it, nor with another registered-CA certificate...
    assert_eq!(
        send(sign(&anyone, &bearer)).await,
        (StatusCode::UNAUTHORIZED, "certificate_required".into())
    );
    let stranger = gw.client(Some(&gw.stranger), "127.0.0.1");
    let (status, code) = send(sign(&stranger, &bearer)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
    // ...and key management does not work at all.
    assert_eq!(
        send(
            cert.post(gw.url("/v1/key"))
                .header("authorization", &bearer)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Extending gives a new token, bound to the same certificate, and revokes the old
    // one.
    let (status, body) = send(
        cert.post(gw.url("/v1/token/extend"))
            .header("authorization", &bearer),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let extended = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(extended, token);
    let extended = format!("Bearer {extended}");
    assert_eq!(send(sign(&cert, &extended)).await.0, StatusCode::OK);
    assert_eq!(
        send(sign(&anyone, &extended)).await,
        (StatusCode::UNAUTHORIZED, "certificate_required".into())
    );
    assert_eq!(
        send(sign(&cert, &bearer)).await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
    // No token for the unauthenticated.
    assert_eq!(
        send(anyone.post(gw.url("/v1/token"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    // An API key gets one too, unbound (there is no certificate): it works from any
    // connection, with the key's roles.
    let (status, body) = send(
        anyone
            .post(gw.url("/v1/token"))
            .header("x-api-key", &gw.api_key),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key_token = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = gw.client(None, "127.0.0.9");
    assert_eq!(
        send(
            other
                .post(gw.url("/v1/key"))
                .header("authorization", format!("Bearer {key_token}"))
        )
        .await
        .0,
        StatusCode::OK
    );
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

    // Bad input: always a 4xx with a problem+json body naming the refusal, never a
    // 5xx, never a pass.
    let cert = gw.client(Some(&gw.connector), "127.0.0.2");
    for path in [
        "/v1/key/../approval",
        "/v1//approval",
        "/v1/key/%2e%2e/%2e%2e/approval",
        "/v1/approval%2F",
        "/v1/key/%00/attributes",
        "/v1/key/%ff%fe",
    ] {
        let code = problem(cert.put(gw.url(path))).await;
        assert!(!code.is_empty(), "{path}");
    }
    let other = gw.client(None, "127.0.0.3");
    let huge = "x".repeat(16 * 1024);
    for value in ["not-a-key", "pck_", huge.as_str()] {
        let code = problem(other.get(gw.url("/v1/key")).header("x-api-key", value)).await;
        assert_eq!(code, "malformed_api_key", "{value:.20}");
    }
    for value in [
        "Bearer e30.e30.e30",
        "Bearer",
        "Bearer a b",
        &format!("Bearer {huge}"),
    ] {
        let code = problem(other.get(gw.url("/v1/key")).header("authorization", value)).await;
        assert!(code.ends_with("_token"), "{value:.20}: {code}");
    }
    let other = gw.client(None, "127.0.0.7");
    for name in ["x-api-key", "authorization", "x-auth-token"] {
        let bytes = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe\x80").unwrap();
        let code = problem(other.get(gw.url("/v1/key")).header(name, bytes)).await;
        assert!(!code.is_empty(), "{name}");
    }
    let code = problem(other.get(gw.url("/v1/key")).header("x-auth-token", "a/b/c")).await;
    assert!(!code.is_empty());
}

/// Sends a request that must be refused with a 4xx problem+json body, and returns its
/// `code`.
async fn problem(request: reqwest::RequestBuilder) -> String {
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    assert!(status.is_client_error(), "{status}: {body}");
    assert_eq!(content_type, "application/problem+json", "{status}: {body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["status"], status.as_u16(), "{body}");
    value["code"].as_str().unwrap().to_owned()
}

/// One request of the decision table: who sends it, and what.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Anyone,
    Certificate,
    Stranger,
    ApiKey,
    /// The API key with its last character changed: its checksum fails.
    WrongApiKey,
    /// A well-formed key that is not in the key file.
    UnknownApiKey,
    /// A token issued to connector-7's certificate, bound to it, sent with it.
    BoundTokenWithCertificate,
    /// The same token sent without the certificate.
    BoundTokenWithoutCertificate,
    GarbageToken,
    DeniedAddress,
}

/// The decisions every order must give: caller, method, path, status, refusal code.
const DECISIONS: &[(Caller, &str, &str, u16, &str)] = &[
    (Caller::Anyone, "GET", "/health", 200, ""),
    (Caller::Anyone, "GET", "/v1/key", 401, "unauthenticated"),
    (Caller::Certificate, "GET", "/v1/key", 200, ""),
    (
        Caller::Certificate,
        "GET",
        "/v1/key/default/attributes",
        200,
        "",
    ),
    (Caller::Certificate, "POST", "/v1/key", 403, "forbidden"),
    (Caller::Stranger, "GET", "/v1/key", 401, "unknown_connector"),
    (Caller::ApiKey, "POST", "/v1/key", 200, ""),
    (Caller::ApiKey, "POST", "/v1/sign", 403, "forbidden"),
    (
        Caller::WrongApiKey,
        "GET",
        "/v1/key",
        401,
        "malformed_api_key",
    ),
    (
        Caller::UnknownApiKey,
        "GET",
        "/v1/key",
        401,
        "invalid_api_key",
    ),
    (
        Caller::BoundTokenWithCertificate,
        "POST",
        "/v1/sign",
        200,
        "",
    ),
    (
        Caller::BoundTokenWithCertificate,
        "DELETE",
        "/v1/key/default",
        403,
        "forbidden",
    ),
    (
        Caller::BoundTokenWithoutCertificate,
        "POST",
        "/v1/sign",
        401,
        "certificate_required",
    ),
    (
        Caller::GarbageToken,
        "GET",
        "/v1/key",
        401,
        "malformed_token",
    ),
    (Caller::DeniedAddress, "GET", "/health", 403, "ip_denied"),
];

/// Sends every request of [`DECISIONS`] and returns what came back, in order.
async fn decisions(gw: &Running) -> Vec<(u16, String)> {
    let anyone = gw.client(None, "127.0.0.1");
    let cert = gw.client(Some(&gw.connector), "127.0.0.1");
    let stranger = gw.client(Some(&gw.stranger), "127.0.0.4");
    let wrong_key_client = gw.client(None, "127.0.0.5");
    let denied = gw.client(None, "127.0.0.66");
    let (status, body) = send(cert.post(gw.url("/v1/token"))).await;
    assert_eq!(status, StatusCode::OK, "token for the certificate: {body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let mut wrong_key = gw.api_key.clone();
    wrong_key.pop();
    wrong_key.push(if gw.api_key.ends_with('x') { 'y' } else { 'x' });
    let unknown_key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();

    let mut seen = Vec::new();
    for (caller, method, path, _, _) in DECISIONS {
        let method: reqwest::Method = method.parse().unwrap();
        let url = gw.url(path);
        let request = match caller {
            Caller::Anyone => anyone.request(method, url),
            Caller::Certificate => cert.request(method, url),
            Caller::Stranger => stranger.request(method, url),
            Caller::ApiKey => anyone.request(method, url).header("x-api-key", &gw.api_key),
            Caller::WrongApiKey => wrong_key_client
                .request(method, url)
                .header("x-api-key", &wrong_key),
            Caller::UnknownApiKey => wrong_key_client
                .request(method, url)
                .header("x-api-key", unknown_key.expose_secret()),
            Caller::BoundTokenWithCertificate => {
                cert.request(method, url).header("authorization", &bearer)
            }
            Caller::BoundTokenWithoutCertificate => {
                anyone.request(method, url).header("authorization", &bearer)
            }
            Caller::GarbageToken => anyone
                .request(method, url)
                .header("authorization", "Bearer e30.e30.e30"),
            Caller::DeniedAddress => denied.request(method, url),
        };
        let (status, code) = send(request).await;
        let code = if status.is_success() {
            String::new()
        } else {
            code
        };
        seen.push((status.as_u16(), code));
    }
    seen
}

fn expected_decisions() -> Vec<(u16, String)> {
    DECISIONS
        .iter()
        .map(|(_, _, _, status, code)| (*status, (*code).to_owned()))
        .collect()
}

/// Prints the table side by side when a decision differs.
fn assert_decisions(label: &str, seen: &[(u16, String)]) {
    let expected = expected_decisions();
    if seen != expected {
        let mut report = format!("{label}: decisions differ\n");
        for ((request, got), want) in DECISIONS.iter().zip(seen).zip(&expected) {
            let mark = if got == want { " " } else { "✗" };
            report.push_str(&format!(
                "{mark} {:?} {} {}: got {got:?}, want {want:?}\n",
                request.0, request.1, request.2
            ));
        }
        panic!("{report}");
    }
}

#[tokio::test]
async fn three_layer_orders_on_axum_and_hyper_give_the_same_decisions() {
    // The file's order, served by axum with `Gateway::apply`.
    let gw = start_with(Server::AxumApply, &FILE_ORDER).await;
    assert_decisions("file order, axum", &decisions(&gw).await);

    // Audit and the address check swapped, the credentials read in the opposite order,
    // and the per-address limit after them; on plain hyper with `Gateway::layer`.
    let order = [
        IP_ALLOWLIST,
        AUDIT,
        JWT,
        API_KEY,
        MTLS,
        LIMIT_BEFORE_AUTH,
        LIMIT_PER_CALLER,
        ROLE_ROUTER,
    ];
    let gw = start_with(Server::Hyper, &order).await;
    assert_decisions("second order, hyper", &decisions(&gw).await);

    // Credentials first, the address check between them, audit innermost but one, the
    // two limits swapped; axum with `Gateway::layer`.
    let order = [
        API_KEY,
        MTLS,
        IP_ALLOWLIST,
        JWT,
        LIMIT_PER_CALLER,
        AUDIT,
        LIMIT_BEFORE_AUTH,
        ROLE_ROUTER,
    ];
    let gw = start_with(Server::AxumLayer, &order).await;
    assert_decisions("third order, axum + layer", &decisions(&gw).await);
}

/// The JSON events in the audit folder, once at least `count` are written (the file
/// sink writes from its own thread).
async fn audit_events(dir: &Path, count: usize) -> Vec<Value> {
    let folder = dir.join("audit");
    let mut events = Vec::new();
    for _ in 0..200 {
        events.clear();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map(|entries| entries.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                events.push(serde_json::from_str::<Value>(line).unwrap());
            }
        }
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} audit events, expected {count}", events.len());
}

#[tokio::test]
async fn every_request_leaves_one_audit_event_saying_who_what_and_why() {
    let gw = start().await;
    let seen = decisions(&gw).await;
    assert_decisions("file order", &seen);
    // The token issue first, then the table, in order.
    let events = audit_events(&gw.dir, 1 + DECISIONS.len()).await;
    assert_eq!(events.len(), 1 + DECISIONS.len());
    let issue = &events[0];
    assert_eq!(issue["path"], "/v1/token");
    assert_eq!(issue["decision"], "allow");
    // The caller is its certificate's connector, once; the token issued is a note of
    // the issuer's, not a JWT principal of the caller.
    assert_eq!(
        issue["principals"],
        serde_json::json!([{"layer": "mtls-identity", "id": "connector-7", "credential": issue["principals"][0]["credential"]}]),
        "{issue}"
    );
    let issued = issue["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|note| note["layer"] == "token-issuer")
        .unwrap_or_else(|| panic!("{issue}"));
    assert_eq!(issued["decision"], "allow", "{issue}");
    assert!(issued["credential"].is_string(), "{issue}");
    for (event, (caller, method, path, status, code)) in events[1..].iter().zip(DECISIONS) {
        let what = format!("{caller:?} {method} {path}: {event}");
        assert_eq!(event["method"], *method, "{what}");
        assert_eq!(event["path"], *path, "{what}");
        assert_eq!(event["status"], *status, "{what}");
        if *status < 400 {
            assert_eq!(event["decision"], "allow", "{what}");
        } else {
            assert_eq!(event["decision"], "deny", "{what}");
            assert_eq!(event["reason"], *code, "{what}");
            assert!(event["refused_by"].is_string(), "{what}");
        }
        let principals: Vec<(String, String)> = event["principals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["layer"].as_str().unwrap().to_owned(),
                    p["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected_ip = match caller {
            Caller::Stranger => "127.0.0.4",
            Caller::WrongApiKey | Caller::UnknownApiKey => "127.0.0.5",
            Caller::DeniedAddress => "127.0.0.66",
            _ => "127.0.0.1",
        };
        assert_eq!(event["client_ip"], expected_ip, "{what}");
        let has = |layer: &str, id: &str| principals.contains(&(layer.into(), id.into()));
        match caller {
            Caller::Certificate => assert!(has("mtls-identity", "connector-7"), "{what}"),
            Caller::ApiKey => assert!(has("api-key", "partner-acme"), "{what}"),
            Caller::BoundTokenWithCertificate => {
                assert!(has("jwt", "connector-7"), "{what}");
                assert!(has("mtls-identity", "connector-7"), "{what}");
            }
            Caller::Anyone | Caller::DeniedAddress | Caller::GarbageToken => {
                assert!(principals.is_empty(), "{what}")
            }
            _ => {}
        }
    }
    // Who refused what, by name.
    let refused_by = |index: usize| events[1 + index]["refused_by"].as_str().unwrap().to_owned();
    let index = |wanted: fn(&Caller) -> bool, path: &str| {
        DECISIONS
            .iter()
            .position(|(c, _, p, _, _)| wanted(c) && *p == path)
            .unwrap()
    };
    assert_eq!(
        refused_by(index(|c| matches!(c, Caller::DeniedAddress), "/health")),
        "ip-allowlist"
    );
    assert_eq!(
        refused_by(index(|c| matches!(c, Caller::Stranger), "/v1/key")),
        "mtls-identity"
    );
    assert_eq!(
        refused_by(index(|c| matches!(c, Caller::UnknownApiKey), "/v1/key")),
        "api-key"
    );
    assert_eq!(
        refused_by(index(|c| matches!(c, Caller::GarbageToken), "/v1/key")),
        "jwt"
    );
    assert_eq!(
        refused_by(index(|c| matches!(c, Caller::ApiKey), "/v1/sign")),
        "role-router"
    );
    // No secret reaches the log: not the key, not a token.
    let log = events.iter().map(Value::to_string).collect::<String>();
    assert!(
        !log.contains(&gw.api_key),
        "the API key is in the audit log"
    );
    assert!(!log.contains("e30.e30.e30"), "a token is in the audit log");
}

#[tokio::test]
async fn an_order_that_checks_roles_before_credentials_refuses_by_design() {
    // The role router outermost sees a request before any credential is read, so it
    // finds nobody authenticated: a protected route is 401 even with a good
    // certificate. That is the safe outcome the design asks of a layer whose input is
    // missing, never a pass. Public routes still answer.
    let order = [
        ROLE_ROUTER,
        AUDIT,
        IP_ALLOWLIST,
        LIMIT_BEFORE_AUTH,
        MTLS,
        API_KEY,
        JWT,
        LIMIT_PER_CALLER,
    ];
    let gw = start_with(Server::AxumApply, &order).await;
    let cert = gw.client(Some(&gw.connector), "127.0.0.1");
    assert_eq!(
        send(cert.get(gw.url("/v1/key"))).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
    assert_eq!(send(cert.get(gw.url("/health"))).await.0, StatusCode::OK);
    // And the audit layer, inside the router here, never sees what the router refused:
    // only the /health call is recorded.
    let events = audit_events(&gw.dir, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events_later = audit_events(&gw.dir, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events_later.len(), 1);
    assert_eq!(events[0]["path"], "/health");
}

#[tokio::test]
async fn the_built_example_binary_serves_the_file_it_is_given() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let (dir, pki, connector, _stranger, api_key) = write_setup(&FILE_ORDER);
    // Audit events on stdout, as the example ships.
    let config = std::fs::read_to_string(dir.join("gateway.toml"))
        .unwrap()
        .replace("stdout = false", "stdout = true")
        .replace("directory = \"audit\"", "# directory = \"audit\"");
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    let mut child = tokio::process::Command::new(crate::examples::binary("gateway"))
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
            .await
            .expect("the gateway said nothing for a minute")
            .unwrap();
        let Some(line) = line else {
            panic!("the gateway exited before listening: {said}");
        };
        said.push_str(&line);
        said.push('\n');
        if let Some(addr) = line.strip_prefix("gateway: listening on https://") {
            break addr.parse().unwrap();
        }
    };
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            let _ = events_tx.send(line);
        }
    });

    let ca = pki.ca_pem().to_owned();
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    let cert = client(&ca, addr, Some(&connector), "127.0.0.1");
    let anyone = client(&ca, addr, None, "127.0.0.1");

    // The real key service: list, create, sign.
    let (status, body) = send(cert.get(url("/v1/key"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["keys"][0],
        "default"
    );
    let (status, body) = send(
        anyone
            .post(url("/v1/key"))
            .header("x-api-key", &api_key)
            .json(&serde_json::json!({ "name": "k2" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(cert.post(url("/v1/token"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = send(
        cert.post(url("/v1/sign"))
            .header("authorization", format!("Bearer {token}"))
            .json(&serde_json::json!({ "key": "default", "data": "aGVsbG8=" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signed = serde_json::from_str::<Value>(&body).unwrap();
    // The key service reads who signed through the `Authenticated` extractor.
    assert_eq!(
        signed["by"],
        serde_json::json!(["certificate:connector-7", "jwt:connector-7"]),
        "{body}"
    );
    let signature = signed["signature"].as_str().unwrap().to_owned();
    assert!(signature.len() > 80, "{body}");
    assert_eq!(
        send(anyone.get(url("/v1/key"))).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );

    // One audit line on stdout per request, in order.
    let mut events = Vec::new();
    while events.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(30), events_rx.recv())
            .await
            .expect("no audit event on stdout")
            .expect("stdout closed");
        if let Ok(event) = serde_json::from_str::<Value>(&line) {
            events.push(event);
        }
    }
    let summary: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("/v1/key", "allow", 200),
        ("/v1/key", "allow", 201),
        ("/v1/token", "allow", 200),
        ("/v1/sign", "allow", 200),
        ("/v1/key", "deny", 401),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(p, d, s)| (p.to_string(), d.to_string(), *s))
            .collect::<Vec<_>>()
    );
    let log = events.iter().map(Value::to_string).collect::<String>();
    assert!(!log.contains(&api_key));
    assert!(!log.contains(&token));
    child.kill().await.unwrap();
}

/// The `portcullis` command `cargo test --workspace` built beside the test binaries.
pub(crate) fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(format!("portcullis{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test --workspace` builds the portcullis command",
        binary.display()
    );
    binary
}

/// The built example binary serving `dir/gateway.toml`: the process, its address, and
/// its log lines (stderr) as they come.
async fn spawn_gateway_binary(
    dir: &Path,
) -> (
    tokio::process::Child,
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (child, addr, _, log) = spawn_gateway_binary_with_admin(dir).await;
    (child, addr, log)
}

/// [`spawn_gateway_binary`], with the admin listener's address when it has one.
async fn spawn_gateway_binary_with_admin(
    dir: &Path,
) -> (
    tokio::process::Child,
    SocketAddr,
    Option<SocketAddr>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(crate::examples::binary("gateway"))
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut admin = None;
    let mut said = String::new();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
            .await
            .expect("the gateway said nothing for a minute")
            .unwrap()
            .unwrap_or_else(|| panic!("the gateway exited before listening: {said}"));
        said.push_str(&line);
        said.push('\n');
        if let Some(addr) = line.strip_prefix("gateway: admin on https://") {
            admin = Some(addr.parse().unwrap());
        }
        if let Some(addr) = line.strip_prefix("gateway: listening on https://") {
            break addr.parse().unwrap();
        }
    };
    let (log_tx, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = log_tx.send(line);
        }
    });
    (child, addr, admin, log)
}

/// The `reload` operation events in `dir/audit`, once there are at least `count`.
async fn loop_until_reloads(dir: &Path, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let mut reloads = Vec::new();
        for entry in std::fs::read_dir(dir.join("audit")).into_iter().flatten() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            reloads.extend(
                text.lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter(|event| event["operation"] == "reload"),
            );
        }
        if reloads.len() >= count {
            return reloads;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} reload events in the audit files");
}

/// The admin listener of the built gateway: only a caller with the admin role (here an
/// API key made with the CLI) gets through; reload reports its counts, or names the
/// broken file and changes nothing; status, revocations and ban lifting answer; the
/// `portcullis admin` command drives the same routes.
#[tokio::test]
async fn the_admin_routes_need_the_admin_role_and_drive_the_gateway() {
    let (dir, pki, connector, _stranger, api_key) = write_setup(&FILE_ORDER);
    let config = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    std::fs::write(
        dir.join("gateway.toml"),
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{config}"),
    )
    .unwrap();
    let keys = dir.join("api-keys.toml");
    let out = std::process::Command::new(cli_binary())
        .args([
            "key",
            "new",
            "--file",
            keys.to_str().unwrap(),
            "--owner",
            "ops",
        ])
        .args(["--roles", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let admin_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (_child, _addr, admin, _log) = spawn_gateway_binary_with_admin(&dir).await;
    let admin = admin.expect("the gateway named its admin listener");
    let ca = pki.ca_pem().to_owned();
    let url = |path: &str| format!("https://localhost:{}{path}", admin.port());
    let anyone = client(&ca, admin, None, "127.0.0.1");
    let cert = client(&ca, admin, Some(&connector), "127.0.0.1");

    // The probes need no credentials, and name nothing of the configuration.
    assert_eq!(
        send(anyone.get(url("/healthz"))).await,
        (StatusCode::OK, "{\"alive\":true}".into())
    );
    assert_eq!(
        send(anyone.get(url("/readyz"))).await,
        (StatusCode::OK, "{\"ready\":true}".into())
    );

    // Who gets in.
    assert_eq!(
        send(anyone.get(url("/status"))).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
    assert_eq!(
        send(anyone.get(url("/status")).header("x-api-key", &api_key)).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        send(cert.get(url("/status"))).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let as_admin = |request: reqwest::RequestBuilder| request.header("x-api-key", &admin_key);
    let (status, body) = send(as_admin(anyone.get(url("/status")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status_body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["api_keys"], 2, "{body}");
    assert_eq!(status_body["connectors"], 1, "{body}");
    assert_eq!(
        status_body["key_sets"][0]["issuer"],
        "https://gateway.local"
    );
    assert_eq!(status_body["key_sets"][0]["stale"], false);
    assert_eq!(status_body["revocations_shared"], false);
    assert!(!body.contains(&admin_key) && !body.contains(&api_key));

    // Reload: counts, or the broken file and nothing changed.
    let (status, body) = send(as_admin(anyone.post(url("/reload")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["loaded"]["api_keys"],
        2
    );
    let connectors = dir.join("connectors.toml");
    let good = std::fs::read_to_string(&connectors).unwrap();
    std::fs::write(&connectors, format!("{good}\n[[connector]]\nid = 7\n")).unwrap();
    let (status, code) = send(as_admin(anyone.post(url("/reload")))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "reload_failed")
    );
    let response = as_admin(anyone.post(url("/reload"))).send().await.unwrap();
    let detail = response.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("connectors.toml"), "{detail}");
    std::fs::write(&connectors, &good).unwrap();

    // Each reload left an event of its own in the audit chain: who asked, what loaded,
    // or what was broken; the chain still verifies.
    let reloads = loop_until_reloads(&dir, 3).await;
    assert_eq!(reloads[0]["trigger"], "admin");
    assert_eq!(
        (
            reloads[0]["ok"].as_bool(),
            reloads[0]["details"]["api_keys"].as_u64()
        ),
        (Some(true), Some(2))
    );
    assert!(reloads.iter().any(|event| event["ok"] == false
        && event["details"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("connectors.toml"))));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let report = portcullis::audit::verify_files(&files).unwrap();
    assert!(report.records >= reloads.len(), "{report:?}");

    // Revocations and bans.
    let revoke = |body: serde_json::Value| as_admin(anyone.post(url("/revocations")).json(&body));
    assert_eq!(
        send(revoke(
            serde_json::json!({ "jti": "two words", "expires_at": 4_000_000_000u64 })
        ))
        .await,
        (StatusCode::BAD_REQUEST, "invalid_revocation".into())
    );
    assert_eq!(
        send(revoke(serde_json::json!({ "jti": "t-1" }))).await,
        (StatusCode::BAD_REQUEST, "invalid_revocation".into())
    );
    let (status, body) = send(revoke(
        serde_json::json!({ "jti": "t-1", "expires_at": 4_000_000_000u64 }),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let journal = std::fs::read_to_string(dir.join("revocations.journal")).unwrap();
    assert!(journal.contains("t-1 4000000000"), "{journal}");
    let (status, body) = send(as_admin(
        anyone.post(url("/bans/ip%3A192.0.2.1/lift?quota=per-ip")),
    ))
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "{\"lifted\":false}")
    );

    // Quota modes and checks.
    let mode = |quota: &str, body: serde_json::Value| {
        as_admin(
            anyone
                .put(url(&format!("/rate-limit/quotas/{quota}/mode")))
                .json(&body),
        )
    };
    let (status, body) = send(mode("per-ip", serde_json::json!({ "mode": "dry-run" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (changed["mode"].as_str(), changed["previous"].as_str()),
        (Some("dry-run"), Some("enforce"))
    );
    for wrong in [
        serde_json::json!({ "mode": "off" }),
        serde_json::json!({ "mode": "DRY-RUN" }),
        serde_json::json!({}),
        serde_json::json!({ "mode": "enforce", "extra": 1 }),
    ] {
        assert_eq!(
            send(mode("per-ip", wrong.clone())).await,
            (StatusCode::BAD_REQUEST, "invalid_mode".into()),
            "{wrong}"
        );
    }
    assert_eq!(
        send(mode(
            "no-such-quota",
            serde_json::json!({ "mode": "enforce" })
        ))
        .await,
        (StatusCode::NOT_FOUND, "unknown_quota".into())
    );
    assert_eq!(
        send(
            anyone
                .put(url("/rate-limit/quotas/per-ip/mode"))
                .json(&serde_json::json!({ "mode": "enforce" }))
        )
        .await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into()),
        "switching a mode needs the admin role"
    );
    let (_, body) = send(as_admin(anyone.get(url("/status")))).await;
    let status_body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["quota_modes"]["per-ip"], "dry-run", "{body}");
    assert_eq!(
        status_body["quota_modes"]["per-caller"], "enforce",
        "{body}"
    );
    let check =
        |body: serde_json::Value| as_admin(anyone.post(url("/rate-limit/check")).json(&body));
    let (status, body) = send(check(
        serde_json::json!({ "quota": "per-ip", "key": ["192.0.2.1"] }),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            answer["allowed"].as_bool(),
            answer["remaining"].as_u64(),
            answer["mode"].as_str()
        ),
        (Some(true), Some(100), Some("dry-run"))
    );
    for (wrong, expected) in [
        (
            serde_json::json!({ "quota": "per-ip", "key": ["not-an-address"] }),
            (StatusCode::BAD_REQUEST, "invalid_check"),
        ),
        (
            serde_json::json!({ "quota": "per-ip", "key": [] }),
            (StatusCode::BAD_REQUEST, "invalid_check"),
        ),
        (
            serde_json::json!({ "quota": "per-ip" }),
            (StatusCode::BAD_REQUEST, "invalid_check"),
        ),
        (
            serde_json::json!({ "quota": "nope", "key": ["x"] }),
            (StatusCode::NOT_FOUND, "unknown_quota"),
        ),
    ] {
        assert_eq!(
            send(check(wrong.clone())).await,
            (expected.0, expected.1.into()),
            "{wrong}"
        );
    }

    // The command drives the same routes.
    let cli = |args: &[&str]| {
        std::process::Command::new(cli_binary())
            .args(["admin"])
            .args(args)
            .args(["--url", &url(""), "--cacert"])
            .arg(dir.join("ca.pem"))
            .env("PORTCULLIS_ADMIN_KEY", &admin_key)
            .output()
            .unwrap()
    };
    let out = cli(&["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"api_keys\":2"));
    let out = cli(&["quota-mode", "per-ip", "enforce"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"previous\":\"dry-run\""),
        "{out:?}"
    );
    let out = cli(&["check-quota", "--quota", "per-ip", "192.0.2.1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"mode\":\"enforce\""),
        "{out:?}"
    );
    let out = cli(&["check-quota", "--quota", "per-ip", "nonsense"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = cli(&["quota-mode", "per-ip", "off"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses the mode: {out:?}");
    let out = cli(&["revoke", "--expires-at", "4000000000", "t-2"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(cli_binary())
        .args(["admin", "status", "--url", &url(""), "--cacert"])
        .arg(dir.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// A token revoked by its extension stays revoked after the gateway restarts: the
/// revocation journal (`revocations_file`) is read back.
#[tokio::test]
async fn a_revoked_token_stays_revoked_after_a_restart() {
    let (dir, pki, connector, _stranger, _api_key) = write_setup(&FILE_ORDER);
    let ca = pki.ca_pem().to_owned();
    let (child, addr, _log) = spawn_gateway_binary(&dir).await;
    let cert = client(&ca, addr, Some(&connector), "127.0.0.1");
    let url = |addr: SocketAddr, path: &str| format!("https://localhost:{}{path}", addr.port());
    let token = |body: &str| {
        format!(
            "Bearer {}",
            serde_json::from_str::<Value>(body).unwrap()["access_token"]
                .as_str()
                .unwrap()
        )
    };
    let (status, body) = send(cert.post(url(addr, "/v1/token"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = token(&body);
    let (status, body) = send(
        cert.post(url(addr, "/v1/token/extend"))
            .header("authorization", &first),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = token(&body);
    drop(child);

    let (_child, addr, _log) = spawn_gateway_binary(&dir).await;
    let cert = client(&ca, addr, Some(&connector), "127.0.0.1");
    let sign = |bearer: &str| {
        cert.post(url(addr, "/v1/sign"))
            .header("authorization", bearer.to_owned())
            .json(&serde_json::json!({ "key": "default", "data": "aGVsbG8=" }))
    };
    assert_eq!(
        send(sign(&first)).await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
    assert_eq!(
        send(
            cert.post(url(addr, "/v1/token/extend"))
                .header("authorization", &first)
        )
        .await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
    assert_eq!(send(sign(&second)).await.0, StatusCode::OK);
    let journal = std::fs::read_to_string(dir.join("revocations.journal")).unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");
}

/// Asks `request` again every 100 ms until `expected` or 2 s, and returns the last
/// answer: a change to a file takes effect within 2 s.
async fn within_two_seconds<F>(expected: (StatusCode, &str), request: F) -> (StatusCode, String)
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = send(request()).await;
        if (got.0, got.1.as_str()) == expected || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Revocation and change reach the running gateway binary: a key revoked with the CLI
/// is refused within 2 s and ends the session (token) it opened; a key made with the CLI
/// works; a connector blocked in its file is refused on its open keep-alive connection
/// and its token ends too; a broken key file (on change, then on SIGHUP) keeps the keys
/// in force and is logged with its file and line.
#[cfg(unix)]
#[tokio::test]
async fn revocation_and_change_reach_the_running_gateway() {
    let (dir, pki, connector, _stranger, api_key) = write_setup(&FILE_ORDER);
    let (child, addr, mut log) = spawn_gateway_binary(&dir).await;
    let ca = pki.ca_pem().to_owned();
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    let anyone = client(&ca, addr, None, "127.0.0.1");
    let cert = client(&ca, addr, Some(&connector), "127.0.0.1");
    let keys = dir.join("api-keys.toml");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(cli_binary())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };

    // A session opened with the API key.
    let (status, body) = send(anyone.post(url("/v1/token")).header("x-api-key", &api_key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key_token = format!(
        "Bearer {}",
        serde_json::from_str::<Value>(&body).unwrap()["access_token"]
            .as_str()
            .unwrap()
    );
    let with_key = || anyone.get(url("/v1/key")).header("x-api-key", &api_key);
    let with_key_token = || {
        anyone
            .get(url("/v1/key"))
            .header("authorization", &key_token)
    };
    assert_eq!(send(with_key()).await.0, StatusCode::OK);
    assert_eq!(send(with_key_token()).await.0, StatusCode::OK);

    // Revoked with the CLI while the gateway serves: the key and its session end.
    let text = std::fs::read_to_string(&keys).unwrap();
    let id = text
        .lines()
        .find_map(|line| line.strip_prefix("id = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_owned();
    cli(&["key", "revoke", "--file", keys.to_str().unwrap(), &id]);
    assert_eq!(
        within_two_seconds((StatusCode::UNAUTHORIZED, "revoked_api_key"), with_key).await,
        (StatusCode::UNAUTHORIZED, "revoked_api_key".into())
    );
    assert_eq!(
        within_two_seconds(
            (StatusCode::UNAUTHORIZED, "credential_revoked"),
            with_key_token
        )
        .await,
        (StatusCode::UNAUTHORIZED, "credential_revoked".into())
    );
    // Nor can the session be extended.
    assert_eq!(
        send(
            anyone
                .post(url("/v1/token/extend"))
                .header("authorization", &key_token)
        )
        .await,
        (StatusCode::UNAUTHORIZED, "credential_revoked".into())
    );

    // A key made with the CLI works within 2 s.
    let secret = cli(&[
        "key",
        "new",
        "--file",
        keys.to_str().unwrap(),
        "--owner",
        "ops",
        "--roles",
        "key-admin",
    ]);
    let secret = secret.trim().to_owned();
    let with_new_key = || anyone.get(url("/v1/key")).header("x-api-key", &secret);
    assert_eq!(
        within_two_seconds((StatusCode::OK, ""), with_new_key)
            .await
            .0,
        StatusCode::OK
    );

    // A broken key file, on change and on SIGHUP: the keys in force stay, and the log
    // names the file and line.
    let good = std::fs::read_to_string(&keys).unwrap();
    std::fs::write(&keys, format!("{good}\n[[key]]\nid = 7\n")).unwrap();
    let broken_line = good.lines().count() + 3;
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let wanted = format!("api-keys.toml:{broken_line}");
    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = log.recv().await {
            if line.contains("the reload failed") && line.contains(&wanted) {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("no reload error naming the line was logged");
    assert!(logged.contains(&wanted), "{logged}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send(with_new_key()).await.0, StatusCode::OK);
    assert_eq!(send(with_key()).await.1, "revoked_api_key");
    std::fs::write(&keys, &good).unwrap();

    // A connector blocked in its file: its open keep-alive connection is refused on its
    // next request.
    assert_eq!(send(cert.get(url("/v1/key"))).await.0, StatusCode::OK);
    let connectors = dir.join("connectors.toml");
    let text = std::fs::read_to_string(&connectors).unwrap();
    std::fs::write(
        &connectors,
        text.replace(
            "id = \"connector-7\"",
            "id = \"connector-7\"\nblocked = true",
        ),
    )
    .unwrap();
    let blocked = within_two_seconds((StatusCode::UNAUTHORIZED, "connector_blocked"), || {
        cert.get(url("/v1/key"))
    })
    .await;
    assert_eq!(blocked.1, "connector_blocked", "{blocked:?}");
    drop(child);
}

/// Two gateway binaries sharing their revocations through a real `redis-server`: a token
/// revoked by its extension on one is refused on the other within two seconds; with
/// Redis gone, tokens are refused with 503 `revocation_unavailable` (the default policy)
/// until it is back.
#[tokio::test]
async fn revocations_are_shared_through_redis_between_two_gateways() {
    let Some(mut redis) =
        crate::redis_server::RedisServer::start("revocations_are_shared_through_redis").await
    else {
        return;
    };
    let (dir, pki, connector, _stranger, _api_key) = write_setup(&FILE_ORDER);
    let config = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    // Polling below asks many times: a per-caller quota that polling cannot exhaust.
    let shared = config
        .replace(
            "revocations_file = \"revocations.journal\"",
            &format!("revocations_redis = \"{}\"", redis.url()),
        )
        .replace(
            "rate = \"25 per 5m\"\nburst = 25",
            "rate = \"1000 per 5m\"\nburst = 1000",
        )
        .replace("[server]\n", "[server]\nhealth = true\n");
    assert_ne!(
        shared, config,
        "the example's revocations_file line changed"
    );
    std::fs::write(dir.join("gateway.toml"), &shared).unwrap();
    // The second instance: the same files, its own folder for its audit chain.
    let second = dir.with_extension("second");
    std::fs::create_dir_all(&second).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, second.join(path.file_name().unwrap())).unwrap();
        }
    }
    let (_a, addr_a, _log_a) = spawn_gateway_binary(&dir).await;
    let (_b, addr_b, _log_b) = spawn_gateway_binary(&second).await;
    let ca = pki.ca_pem().to_owned();
    let a = client(&ca, addr_a, Some(&connector), "127.0.0.1");
    let b = client(&ca, addr_b, Some(&connector), "127.0.0.1");
    let url = |addr: SocketAddr, path: &str| format!("https://localhost:{}{path}", addr.port());
    let token = |body: &str| {
        format!(
            "Bearer {}",
            serde_json::from_str::<Value>(body).unwrap()["access_token"]
                .as_str()
                .unwrap()
        )
    };
    let sign_on_b = |bearer: String| {
        let b = b.clone();
        move || {
            b.post(url(addr_b, "/v1/sign"))
                .header("authorization", bearer.clone())
                .json(&serde_json::json!({ "key": "default", "data": "aGVsbG8=" }))
        }
    };
    let (status, body) = send(a.post(url(addr_a, "/v1/token"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = token(&body);
    // B has synced with Redis once it answers a token at all.
    assert_eq!(
        within_two_seconds((StatusCode::OK, ""), sign_on_b(first.clone()))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = send(
        a.post(url(addr_a, "/v1/token/extend"))
            .header("authorization", &first),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second_token = token(&body);
    assert_eq!(
        within_two_seconds(
            (StatusCode::UNAUTHORIZED, "revoked_token"),
            sign_on_b(first.clone())
        )
        .await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
    assert_eq!(
        send(sign_on_b(second_token.clone())()).await.0,
        StatusCode::OK
    );

    // Redis gone: after the copy goes stale, B refuses rather than guess.
    redis.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let got = send(sign_on_b(second_token.clone())()).await;
        if got.0 == StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        refused,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_unavailable".into()
        )
    );
    // And says so to an orchestrator, on the main listener (`[server] health = true`).
    let (status, body) = send(b.get(url(addr_b, "/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("shared revocations"), "{body}");
    assert_eq!(send(b.get(url(addr_b, "/healthz"))).await.0, StatusCode::OK);
    // Back, empty (no persistence here): the copy is in sync again and the token works;
    // the revocation B learned before the outage is still known to B.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = send(sign_on_b(second_token.clone())()).await;
        if got.0 == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        send(sign_on_b(first)()).await,
        (StatusCode::UNAUTHORIZED, "revoked_token".into())
    );
}
