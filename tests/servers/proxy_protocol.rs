//! Behind a TCP load balancer: PROXY protocol headers sent by hand over real sockets to
//! plain hyper, to hyper over the mTLS `TlsListener`, to tonic and to the gateway. The
//! layers (an allow-list denying 203.0.113.0/24) see the client the header names, not
//! the balancer on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis::core::{socket_peer, NetworkSet};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::mtls_identity::{serve_hyper_until, DevPki, ServeLimits, TlsListener};
use portcullis::proxy_protocol::{ProxiedPeer, ProxyListener, ProxyProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A v1 header announcing `client`.
fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 192.0.2.1 51000 443\r\n").into_bytes()
}

/// A v2 header announcing 198.51.100.10:51000, with an authority TLV.
fn v2_with_authority() -> Vec<u8> {
    let mut body = vec![198, 51, 100, 10, 192, 0, 2, 1, 0xC7, 0x38, 0x01, 0xBB];
    body.extend_from_slice(&[0x02, 0, 15]);
    body.extend_from_slice(b"api.example.com");
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn balancers_on_loopback() -> ProxyProtocol {
    ProxyProtocol::new(["127.0.0.0/8".parse().unwrap()]).header_timeout(Duration::from_secs(2))
}

fn deny_documentation_net() -> IpAllowlistLayer {
    IpAllowlistLayer::new(
        IpRules::new().deny(NetworkSet::parse_list("deny", "203.0.113.0/24").unwrap()),
    )
}

/// Answers with the peer the layers read and the authority the balancer passed on.
fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(|request: Request| async move {
                let peer =
                    socket_peer(request.extensions()).map_or("-".into(), |ip| ip.to_string());
                let authority = request
                    .extensions()
                    .get::<ProxiedPeer>()
                    .and_then(|p| p.header.as_ref()?.authority.clone())
                    .unwrap_or_else(|| "-".into());
                format!("{peer} {authority}")
            }),
        )
        .layer(deny_documentation_net())
}

/// Sends `header` then a GET over plain TCP; the status and body, or `None` when the
/// server closed the connection without an answer.
async fn plain_get(addr: SocketAddr, header: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(header).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer));
    match read.await.expect("answered or closed") {
        Ok(_) if !answer.is_empty() => {}
        _ => return None,
    }
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    Some((status, body))
}

#[tokio::test]
async fn plain_hyper_behind_a_balancer_sees_the_client() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = ProxyListener::new(tcp, balancers_on_loopback());
    tokio::spawn(serve_hyper_until(
        listener,
        app(),
        ServeLimits::default(),
        std::future::pending(),
    ));
    assert_eq!(
        plain_get(addr, &v1("198.51.100.9")).await,
        Some((200, "198.51.100.9 -".into()))
    );
    assert_eq!(
        plain_get(addr, &v2_with_authority()).await,
        Some((200, "198.51.100.10 api.example.com".into()))
    );
    // The allow-list judges the client, not the balancer.
    let (status, body) = plain_get(addr, &v1("203.0.113.7")).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ip_denied"), "{body}");
    // Without a header (required here), or with a broken one: closed, unanswered.
    assert_eq!(plain_get(addr, b"").await, None);
    assert_eq!(plain_get(addr, b"PROXY TCP4 nonsense\r\n").await, None);
}

#[tokio::test]
async fn the_tls_listener_reads_the_header_before_the_handshake() {
    let pki = DevPki::generate(&["localhost"]).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::with_proxy_protocol(
        tcp,
        pki.server_tls()
            .client_auth(portcullis::mtls_identity::ClientAuth::Optional)
            .build()
            .unwrap(),
        Duration::from_secs(5),
        balancers_on_loopback(),
    );
    tokio::spawn(serve_hyper_until(
        listener,
        app(),
        ServeLimits::default(),
        std::future::pending(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let over_tls = |header: Vec<u8>| {
        let config = config.clone();
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect("localhost".try_into().unwrap(), tcp)
                .await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            let request = http::Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    assert_eq!(
        over_tls(v2_with_authority()).await.unwrap(),
        (200, "198.51.100.10 api.example.com".into())
    );
    assert_eq!(over_tls(v1("203.0.113.7")).await.unwrap().0, 403);
    // No header: the handshake never starts; the connection is closed.
    assert!(over_tls(Vec::new()).await.is_err());
}

#[tokio::test]
async fn tonic_behind_a_balancer_sees_the_client() {
    use tonic::transport::{Endpoint, Server};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = ProxyListener::new(tcp, balancers_on_loopback());
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(deny_documentation_net())
            .add_service(health)
            .serve_with_incoming(listener.into_stream())
            .await
            .unwrap();
    });
    let check = |header: Vec<u8>| async move {
        let channel = Endpoint::from_static("http://balancer")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let header = header.clone();
                async move {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.write_all(&header).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    assert!(check(v1("198.51.100.9")).await.is_ok());
    let refused = check(v1("203.0.113.7")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn the_gateway_file_turns_it_on_for_the_main_listener() {
    let text = r#"
[server]
listen = "127.0.0.1:0"
proxy_protocol = { trusted = ["127.0.0.0/8"], header_timeout = "2s" }

[[layer]]
kind = "ip-allowlist"
allow = []
deny = ["203.0.113.0/24"]
"#;
    let dir = std::env::temp_dir();
    let gateway = portcullis::config::GatewayConfig::parse("gateway.toml", text, &dir)
        .unwrap()
        .build()
        .await
        .unwrap();
    let server = gateway.bind().await.unwrap();
    let addr = server.local_addr();
    let echo = Router::new().route(
        "/",
        get(|request: Request| async move {
            socket_peer(request.extensions()).map_or("-".into(), |ip| ip.to_string())
        }),
    );
    tokio::spawn(server.serve(echo, std::future::pending()));
    assert_eq!(
        plain_get(addr, &v1("198.51.100.9")).await,
        Some((200, "198.51.100.9".into()))
    );
    assert_eq!(plain_get(addr, &v1("203.0.113.7")).await.unwrap().0, 403);
    assert_eq!(plain_get(addr, b"").await, None);
}
