//! A real HTTP client whose source address the test chooses.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The problem+json body's `code`, or the `code` of a `{success, message}` body.
    pub fn code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        json.get("code")?.as_str().map(str::to_owned)
    }
}

/// GETs `path` on `server` from source address `from`, with extra headers.
pub async fn get(server: SocketAddr, from: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    get_with(server, "GET", from, path, headers).await
}

/// Sends `method path` to `server` from source address `from`, with extra headers.
pub async fn get_with(
    server: SocketAddr,
    method: &str,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from.parse::<IpAddr>().unwrap()));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{server}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// A listener on an ephemeral loopback port.
pub async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Serves `app` on an ephemeral loopback port with the socket peer in each request's
/// `ConnectInfo`, as a production axum server would.
pub async fn serve_axum(app: axum::Router) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A gRPC health check against `addr`, with one metadata entry if given.
pub async fn grpc_health_check(
    addr: SocketAddr,
    metadata: Option<(&'static str, &str)>,
) -> Result<(), tonic::Status> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some((name, value)) = metadata {
        request.metadata_mut().insert(
            name,
            tonic::metadata::MetadataValue::try_from(value).unwrap(),
        );
    }
    HealthClient::new(channel).check(request).await.map(|_| ())
}

/// Builds the gateway file `text` (relative paths from `dir`) and serves `app` behind it
/// with `GatewayServer::serve`, as `portcullis serve` does, on a free loopback port.
pub(crate) async fn serve_gateway_file(
    text: &str,
    dir: &std::path::Path,
    app: axum::Router,
) -> std::net::SocketAddr {
    let gateway = portcullis::config::GatewayConfig::parse("gateway.toml", text, dir)
        .unwrap()
        .build()
        .await
        .unwrap();
    let server = gateway.bind().await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(app, std::future::pending()));
    addr
}
