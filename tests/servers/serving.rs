//! The serve loop's limits over real TLS sockets: a slowloris batch is closed after the
//! header timeout while a normal client is served, too many headers get 431, the
//! connection limit holds (the next connection waits for a place), and HTTP/2 clients
//! get a GOAWAY when idle and at shutdown, with the stream in flight finished.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portcullis::mtls_identity::{
    serve_hyper_until, serve_hyper_with, ClientAuth, DevPki, ServeLimits, TlsListener,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

/// A development PKI, a loopback TCP listener, its address and a TLS server config
/// taking optional client certificates.
async fn tls_parts() -> (
    DevPki,
    tokio::net::TcpListener,
    SocketAddr,
    Arc<rustls::ServerConfig>,
) {
    let pki = DevPki::generate(&["localhost"]).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let tls = pki
        .server_tls()
        .client_auth(ClientAuth::Optional)
        .build()
        .unwrap();
    (pki, tcp, addr, tls)
}

async fn serve(limits: ServeLimits) -> (SocketAddr, String) {
    let (pki, tcp, addr, tls) = tls_parts().await;
    let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    tokio::spawn(serve_hyper_with(
        TlsListener::new(tcp, tls),
        service,
        limits,
    ));
    (addr, pki.ca_pem().to_owned())
}

async fn connect(addr: SocketAddr, ca: &str) -> TlsStream<tokio::net::TcpStream> {
    connect_with(addr, ca, b"http/1.1").await
}

async fn connect_with(addr: SocketAddr, ca: &str, alpn: &[u8]) -> TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `head` and reads until the server closes or 2 s pass; what it answered.
async fn exchange(stream: &mut TlsStream<tokio::net::TcpStream>, head: &str) -> String {
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) => break,
            Ok(Err(error)) => {
                answer.extend_from_slice(format!("(read error: {error})").as_bytes());
                break;
            }
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"ok") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server closed the connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TlsStream<tokio::net::TcpStream>, within: Duration) -> bool {
    let mut buffer = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn slow_clients_are_closed_and_limits_hold() {
    let limits = ServeLimits::default()
        .header_read_timeout(Duration::from_millis(500))
        .max_headers(20)
        .max_connections(40);
    let (addr, ca) = serve(limits).await;

    // Slowloris: headers never finished.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(addr, &ca).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // And one that completes the TLS handshake and then says nothing at all.
    let mut silent = connect(addr, &ca).await;
    // A normal client is served meanwhile.
    let mut normal = connect(addr, &ca).await;
    let answer = exchange(&mut normal, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for stream in &mut slow {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "a slow client was kept"
        );
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent client was kept"
    );
    // An idle keep-alive connection is closed after the same time.
    assert!(closed_within(&mut normal, Duration::from_secs(3)).await);

    // Too many header fields: 431, not a reset.
    let mut stream = connect(addr, &ca).await;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for n in 0..30 {
        head.push_str(&format!("x-filler-{n}: {n}\r\n"));
    }
    head.push_str("\r\n");
    let answer = exchange(&mut stream, &head).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn the_connection_limit_holds() {
    let limits = ServeLimits::default()
        .header_read_timeout(Duration::from_millis(800))
        .max_connections(3);
    let (addr, ca) = serve(limits).await;
    // Three connections take the three places and say nothing.
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(connect(addr, &ca).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth gets its TLS handshake (the listener's own task) but no service until a
    // place frees, when the holders are closed for idling.
    let started = Instant::now();
    let mut fourth = connect(addr, &ca).await;
    let answer = exchange(&mut fourth, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "served before any place was free"
    );
    drop(holders);
}

/// An HTTP/2 connection to `addr`: its request sender, and a task that ends when the
/// server closes the connection.
async fn h2(
    addr: SocketAddr,
    ca: &str,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = connect_with(addr, ca, b"h2").await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    )
}

fn h2_get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http2_clients_get_a_goaway_when_idle_and_at_shutdown() {
    let (pki, tcp, addr, tls) = tls_parts().await;
    // `/slow` answers after 700 ms: a stream in flight when the shutdown comes.
    let service = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let limits = ServeLimits::default()
        .idle_timeout(Duration::from_millis(400))
        .shutdown_grace(Duration::from_secs(5));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_hyper_until(
        TlsListener::new(tcp, tls),
        service,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let ca = pki.ca_pem().to_owned();

    // Idle: one request, then nothing; the server closes the connection (GOAWAY) after
    // the idle timeout, not at once and not never.
    let (mut sender, closed) = h2(addr, &ca).await;
    let started = Instant::now();
    assert_eq!(
        sender.send_request(h2_get("/")).await.unwrap().status(),
        200
    );
    tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("an idle HTTP/2 connection was kept")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(350));

    // A busy connection is not idle: requests every 150 ms keep it open past 400 ms.
    let (mut sender, closed) = h2(addr, &ca).await;
    for _ in 0..6 {
        assert_eq!(
            sender.send_request(h2_get("/")).await.unwrap().status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(!closed.is_finished());

    // Shutdown with a stream in flight: it finishes, new streams are refused, the
    // connection closes, nothing is cut.
    let slow = tokio::spawn(sender.send_request(h2_get("/slow")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("the connection stayed open after the shutdown")
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.connections, report.open_at_shutdown, report.cut),
        (2, 1, 0)
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn past_the_grace_period_what_is_left_is_cut_and_counted() {
    let (pki, tcp, addr, tls) = tls_parts().await;
    let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
    });
    let limits = ServeLimits::default().shutdown_grace(Duration::from_millis(300));
    let server = tokio::spawn(serve_hyper_until(
        TlsListener::new(tcp, tls),
        service,
        limits,
        tokio::time::sleep(Duration::from_millis(500)),
    ));
    let mut stream = connect(addr, pki.ca_pem()).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the grace period was not kept")
        .unwrap();
    assert_eq!((report.open_at_shutdown, report.cut), (1, 1));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed() {
    let (pki, tcp, addr, tls) = tls_parts().await;
    let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
    });
    let listener = TlsListener::with_handshake_timeout(tcp, tls, Duration::from_millis(300));
    tokio::spawn(serve_hyper_with(listener, service, ServeLimits::default()));
    // Half a ClientHello's record header, then nothing.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A real client is served.
    let mut normal = connect(addr, pki.ca_pem()).await;
    let answer = exchange(&mut normal, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
