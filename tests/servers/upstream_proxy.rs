//! `Upstream`, the reverse proxy, between real servers on loopback: paths, hop-by-hop
//! and forwarding headers, trusted proxies, dead and slow upstreams, body limits,
//! upgrades, 1 GiB streamed each way with flat memory, and gRPC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use portcullis::core::{ClientIpResolver, NetworkSet};
use portcullis::upstream::Upstream;

use crate::client::{get_with, serve_axum};

/// An upstream that answers with what it received: method, path and query, then every
/// header line.
async fn echo(request: Request) -> String {
    let mut lines = vec![format!("{} {}", request.method(), request.uri())];
    for (name, value) in request.headers() {
        lines.push(format!("{name}: {}", value.to_str().unwrap_or("?")));
    }
    lines.join("\n")
}

/// A request body streamed from `chunks`, without a length.
fn streamed(
    chunks: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
) -> reqwest::Body {
    use futures::StreamExt;
    reqwest::Body::wrap(http_body_util::StreamBody::new(
        chunks.map(|chunk| chunk.map(http_body::Frame::data)),
    ))
}

async fn gateway(upstream: Upstream) -> SocketAddr {
    serve_axum(Router::new().fallback_service(upstream)).await
}

fn line<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
        .collect()
}

#[tokio::test]
async fn requests_reach_the_upstream_rewritten_and_without_hop_by_hop_fields() {
    let upstream = serve_axum(Router::new().fallback(echo)).await;
    let proxy = Upstream::builder(format!("http://{upstream}/v2"))
        .strip_prefix("/api")
        .build()
        .unwrap();
    let gw = gateway(proxy).await;
    let reply = get_with(
        gw,
        "GET",
        "127.0.0.130",
        "/api/items/7?color=red",
        &[
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "do not pass"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = &reply.body;
    assert_eq!(body.lines().next(), Some("GET /v2/items/7?color=red"));
    assert_eq!(line(body, "host"), [upstream.to_string().as_str()]);
    assert_eq!(line(body, "x-forwarded-for"), ["127.0.0.130"]);
    assert_eq!(line(body, "x-forwarded-proto"), ["http"]);
    assert_eq!(line(body, "x-forwarded-host"), [gw.to_string().as_str()]);
    assert_eq!(
        line(body, "forwarded"),
        [format!("for=127.0.0.130;proto=http;host=\"{gw}\"").as_str()]
    );
    assert_eq!(line(body, "x-end-to-end"), ["kept"]);
    assert_eq!(line(body, "via"), ["1.1 portcullis"]);
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(line(body, gone).is_empty(), "{gone} passed: {body}");
    }

    // A path outside the prefix goes as it is, under the base path.
    let reply = get_with(gw, "GET", "127.0.0.130", "/apis", &[]).await;
    assert_eq!(reply.body.lines().next(), Some("GET /v2/apis"));

    // Behind a trusted proxy, its list is kept and this hop appended: the address the
    // request came from.
    let trusted = Upstream::builder(format!("http://{upstream}"))
        .client_ip(
            ClientIpResolver::new()
                .trust_proxies(NetworkSet::from_networks(["127.0.0.0/8".parse().unwrap()]))
                .unwrap(),
        )
        .build()
        .unwrap();
    let gw = gateway(trusted).await;
    let reply = get_with(
        gw,
        "GET",
        "127.0.0.131",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=203.0.113.9"),
            ("via", "1.1 edge"),
        ],
    )
    .await;
    // Each list is one line: the earlier lines joined, this hop last.
    assert_eq!(
        line(&reply.body, "x-forwarded-for"),
        ["203.0.113.9, 198.51.100.7, 127.0.0.131"]
    );
    assert_eq!(
        line(&reply.body, "forwarded"),
        [format!("for=203.0.113.9, for=127.0.0.131;proto=http;host=\"{gw}\"").as_str()]
    );
    assert_eq!(line(&reply.body, "via"), ["1.1 edge, 1.1 portcullis"]);
}

#[tokio::test]
async fn dead_slow_oversized_and_upgrading_requests_get_their_codes() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway(
        Upstream::builder(format!("http://{dead}"))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    )
    .await;
    let reply = get_with(gw, "GET", "127.0.0.132", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.code().as_deref(), Some("upstream_unavailable"));
    assert_eq!(reply.headers["content-type"], "application/problem+json");

    let slow = serve_axum(Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    }))
    .await;
    let gw = gateway(
        Upstream::builder(format!("http://{slow}"))
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .await;
    let reply = get_with(gw, "GET", "127.0.0.132", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.code().as_deref(), Some("upstream_timeout"));

    let counted = Arc::new(AtomicU64::new(0));
    let seen = counted.clone();
    let sink = serve_axum(Router::new().fallback(move |request: Request| {
        let seen = seen.clone();
        async move {
            let bytes = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len());
            seen.fetch_add(1, Ordering::SeqCst);
            format!("{bytes:?}")
        }
    }))
    .await;
    let gw = gateway(
        Upstream::builder(format!("http://{sink}"))
            .max_request_body(Some(1024 * 1024))
            .build()
            .unwrap(),
    )
    .await;
    let client = reqwest::Client::new();
    // Declared too large: refused before the upstream is asked.
    let reply = client
        .post(format!("http://{gw}/"))
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(counted.load(Ordering::SeqCst), 0);
    // Streamed without a length, and too large: refused when it passes the limit.
    let chunks = futures::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 64 * 1024]))),
    );
    let reply = client
        .post(format!("http://{gw}/"))
        .body(streamed(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Within the limit: forwarded whole.
    let reply = client
        .post(format!("http://{gw}/"))
        .body(vec![0u8; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.text().await.unwrap(), "Ok(1048576)");

    // An upgrade (WebSocket) is refused, not half-forwarded.
    let reply = get_with(
        gw,
        "GET",
        "127.0.0.133",
        "/socket",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(reply.code().as_deref(), Some("upgrade_not_supported"));
}

/// The process's resident memory in bytes (Linux).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const GIB: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// Bytes each side has seen so far: the upstream of the upload, the client of the
/// download.
#[derive(Clone, Default)]
struct Progress {
    upstream_received: Arc<AtomicU64>,
    client_received: Arc<AtomicU64>,
}

/// Waits (up to 20 s) until `counter` is above zero; false if it never is.
async fn until_some(counter: &AtomicU64) -> bool {
    for _ in 0..20_000 {
        if counter.load(Ordering::SeqCst) > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// A gibibyte of `byte` in chunks; after the first chunk it waits until `wait_for` has
/// seen data: a proxy that buffered the whole body first would never let that happen.
fn gibibyte(
    byte: u8,
    wait_for: Arc<AtomicU64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let chunk = Bytes::from(vec![byte; CHUNK]);
    futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        let wait_for = wait_for.clone();
        async move {
            if sent == GIB {
                return None;
            }
            if sent == CHUNK as u64 && !until_some(&wait_for).await {
                return Some((
                    Err(std::io::Error::other(
                        "the other side saw nothing: buffered",
                    )),
                    GIB,
                ));
            }
            Some((Ok(chunk), sent + CHUNK as u64))
        }
    })
}

#[tokio::test]
async fn a_gibibyte_streams_each_way_and_memory_stays_flat() {
    let progress = Progress::default();
    let upstream = {
        let upload = progress.clone();
        let download = progress.clone();
        serve_axum(
            Router::new()
                .route(
                    "/upload",
                    axum::routing::post(move |request: Request| async move {
                        let mut body = request.into_body();
                        let mut total = 0u64;
                        while let Some(frame) = body.frame().await {
                            if let Ok(data) = frame.unwrap().into_data() {
                                total += data.len() as u64;
                                upload
                                    .upstream_received
                                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                            }
                        }
                        total.to_string()
                    }),
                )
                .route(
                    "/download",
                    axum::routing::get(move || async move {
                        Body::from_stream(gibibyte(7, download.client_received.clone()))
                    }),
                ),
        )
        .await
    };
    let gw = gateway(
        Upstream::builder(format!("http://{upstream}"))
            .max_request_body(None)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    )
    .await;
    // Streaming is shown by the waits in `gibibyte`; memory is a second look: a
    // buffered body would take a gibibyte, streaming a few buffers. (Other tests share
    // this process, hence the wide margin.)
    let grew = peak_growth(transfer(gw, &progress)).await;
    assert!(
        grew < 512 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grew >> 20
    );
}

/// How much the resident memory rose at its highest while `work` ran.
async fn peak_growth(work: impl std::future::Future<Output = ()>) -> u64 {
    let before = resident();
    let peak = Arc::new(AtomicU64::new(before));
    let watch = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(resident(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    work.await;
    watch.abort();
    peak.load(Ordering::Relaxed).saturating_sub(before)
}

/// A gibibyte up to `/upload`, counted there, and one down from `/download`.
async fn transfer(server: SocketAddr, progress: &Progress) {
    let client = reqwest::Client::new();
    let uploaded = client
        .post(format!("http://{server}/upload"))
        .body(streamed(gibibyte(9, progress.upstream_received.clone())))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(uploaded, GIB.to_string());
    let mut download = client
        .get(format!("http://{server}/download"))
        .send()
        .await
        .unwrap();
    let mut received = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len() as u64;
        progress
            .client_received
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    assert_eq!(received, GIB);
}

#[tokio::test]
async fn grpc_passes_through_over_http2_with_its_trailers() {
    let (health, service) = tonic_health::server::health_reporter();
    let _ = health;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let gw = gateway(
        Upstream::builder(format!("http://{upstream}"))
            .http2_only(true)
            .build()
            .unwrap(),
    )
    .await;
    crate::client::grpc_health_check(gw, None).await.unwrap();
    // An unknown service: the upstream's NOT_FOUND status arrives in the trailers.
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gw}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// The gateway file's `[[route]]`s: the layers run first, then the longest prefix's
/// upstream; other paths get 404 `no_route`; mistakes are refused with their key.
#[tokio::test]
async fn gateway_routes_forward_after_the_layers() {
    let upstream = serve_axum(Router::new().fallback(echo)).await;
    let other = serve_axum(Router::new().fallback(|| async { "other service" })).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [[layer]]\nkind = \"identity-headers\"\nclient_ip_header = \"x-caller-ip\"\n\n\
         [[route]]\npath = \"/api\"\nupstream = \"http://{upstream}/v2\"\nstrip_prefix = true\n\n\
         [[route]]\npath = \"/api/legacy/\"\nupstream = \"http://{other}\"\n"
    );
    let dir = std::env::temp_dir();
    let gw = crate::client::serve_gateway_file(&text, &dir, Router::new()).await;
    let reply = get_with(
        gw,
        "GET",
        "127.0.0.134",
        "/api/items?page=2",
        &[("x-caller-ip", "1.2.3.4")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.lines().next(), Some("GET /v2/items?page=2"));
    assert_eq!(line(&reply.body, "x-caller-ip"), ["127.0.0.134"]);
    let reply = get_with(gw, "GET", "127.0.0.134", "/api/legacy/x", &[]).await;
    assert_eq!(reply.body, "other service");
    let reply = get_with(gw, "GET", "127.0.0.134", "/apix", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code().as_deref(), Some("no_route"));

    for (route, key, says) in [
        ("path = \"api\"\nupstream = \"http://127.0.0.1:1\"", "route[0].path", "starts with /"),
        ("path = \"/a/*\"\nupstream = \"http://127.0.0.1:1\"", "route[0].path", "wildcard"),
        (
            "path = \"/a\"\nupstream = \"ftp://127.0.0.1:1\"",
            "route[0].upstream",
            "http:// or https://",
        ),
        (
            "path = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nmax_body_bytes = 10\nunlimited_body = true",
            "route[0].unlimited_body",
            "contradict",
        ),
        (
            "path = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n[[route]]\npath = \"/a/\"\nupstream = \"http://127.0.0.1:2\"",
            "route[1].path",
            "routed twice",
        ),
    ] {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\n{route}\n");
        let error = portcullis::config::GatewayConfig::parse("gateway.toml", &text, &dir)
            .unwrap()
            .build()
            .await
            .unwrap_err();
        assert_eq!(error.key, key, "{route}: {error}");
        assert!(error.to_string().contains(says), "{route}: {error}");
    }
}

/// An https upstream that requires a client certificate (certificates by rcgen): with
/// the route's CA and client certificate the request goes through; without the client
/// certificate, or trusting only the system's roots, 502.
#[tokio::test]
async fn https_upstreams_with_a_ca_and_a_client_certificate() {
    use portcullis::mtls_identity::{ServerTls, TlsListener};
    use rcgen::ExtendedKeyUsagePurpose;
    let ca = crate::mtls_axum::Ca::new("Upstream CA");
    let server = ca.issue("127.0.0.1", Some(ExtendedKeyUsagePurpose::ServerAuth), 2);
    let client = ca.issue("gateway", Some(ExtendedKeyUsagePurpose::ClientAuth), 3);
    let config = ServerTls::new(server.pem.as_bytes(), server.key.as_bytes())
        .client_cas(ca.pem.as_bytes())
        .build()
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            TlsListener::new(tcp, config).for_axum(),
            Router::new().fallback(|| async { "over TLS" }),
        )
        .await
        .unwrap();
    });
    let url = format!("https://{upstream}");
    let full = gateway(
        Upstream::builder(url.clone())
            .root_certificates(ca.pem.clone())
            .client_certificate(client.pem.clone(), client.key.clone())
            .build()
            .unwrap(),
    )
    .await;
    let reply = get_with(full, "GET", "127.0.0.135", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "over TLS");
    for (case, builder) in [
        (
            "no client certificate",
            Upstream::builder(url.clone()).root_certificates(ca.pem.clone()),
        ),
        ("the system's roots", Upstream::builder(url.clone())),
    ] {
        let gw = gateway(builder.build().unwrap()).await;
        let reply = get_with(gw, "GET", "127.0.0.135", "/", &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{case}");
        assert_eq!(
            reply.code().as_deref(),
            Some("upstream_unavailable"),
            "{case}"
        );
    }
    // A key that is not PEM is a settings error, not a panic.
    let error = Upstream::builder(url)
        .client_certificate(client.pem.clone(), "not a key")
        .build()
        .unwrap_err();
    assert!(error.to_string().starts_with("upstream TLS"), "{error}");
    assert!(!error.to_string().contains("PRIVATE"), "{error}");
}
