//! The ip-allowlist layer in a plain hyper server, with a hand-written serve loop that
//! inserts `PeerAddr`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis::core::{ClientIp, PeerAddr};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use tower::{service_fn, ServiceBuilder, ServiceExt};

use crate::client::{get, listener};

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = request
        .extensions()
        .get::<ClientIp>()
        .map(ToString::to_string);
    Ok(Response::new(Full::new(Bytes::from(
        client.unwrap_or_default(),
    ))))
}

async fn serve(layer: IpAllowlistLayer) -> SocketAddr {
    let (listener, addr) = listener().await;
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(hello));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let per_connection = service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    service.clone().oneshot(request)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(per_connection),
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn allows_and_denies() {
    let addr = serve(IpAllowlistLayer::new(
        IpRules::new().deny("127.0.0.66".parse().unwrap()),
    ))
    .await;
    let ok = get(addr, "127.0.0.1", "/", &[]).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "127.0.0.1"));
    let denied = get(addr, "127.0.0.66", "/", &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.code().as_deref(), Some("ip_denied"));
}
