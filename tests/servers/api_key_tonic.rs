//! The api-key layer in a tonic server: a real tonic client sees UNAUTHENTICATED with
//! the reason, and a key in metadata gets through.

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::Code;

use crate::client::{grpc_health_check, listener};

async fn serve(store: Arc<MemoryKeyStore>) -> SocketAddr {
    let (listener, addr) = listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(ApiKeyLayer::new(store))
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

async fn check(addr: SocketAddr, key: Option<&str>) -> Result<(), tonic::Status> {
    grpc_health_check(addr, key.map(|key| ("x-api-key", key))).await
}

#[tokio::test]
async fn grpc_clients_see_unauthenticated() {
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(KeyRecord::new(key.id(), "monitor", key.digest()).unwrap())
        .unwrap();
    let addr = serve(store.clone()).await;

    assert!(check(addr, Some(key.expose_secret())).await.is_ok());
    for (presented, code) in [
        (None, "missing_api_key"),
        (Some("pck_garbage"), "malformed_api_key"),
    ] {
        let status = check(addr, presented).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().starts_with(code), "{}", status.message());
    }
    store.revoke(key.id());
    let status = check(addr, Some(key.expose_secret())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("revoked_api_key"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&key.expose_secret()[10..]));
}
