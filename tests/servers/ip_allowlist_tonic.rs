//! The ip-allowlist layer in a tonic server, called by a real tonic client.

use std::net::SocketAddr;

use portcullis::core::NetworkSet;
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::client::listener;

async fn serve(layer: IpAllowlistLayer) -> SocketAddr {
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

async fn check(addr: SocketAddr, from: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from.parse().unwrap()))
        .connect()
        .await
        .unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

fn deny(list: &str) -> IpAllowlistLayer {
    IpAllowlistLayer::new(IpRules::new().deny(NetworkSet::parse_list("deny", list).unwrap()))
}

#[tokio::test]
async fn allowed_client_gets_the_service() {
    let addr = serve(deny("127.0.0.66")).await;
    assert_eq!(
        check(addr, "127.0.0.1").await.unwrap(),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn denied_client_sees_permission_denied() {
    let addr = serve(deny("127.0.0.66")).await;
    let status = check(addr, "127.0.0.66").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "ip_denied: requests from this address are not allowed"
    );
}

#[tokio::test]
async fn allow_list_refuses_other_clients() {
    let layer = IpAllowlistLayer::new(IpRules::new().allow("127.0.0.1".parse().unwrap()));
    let addr = serve(layer).await;
    assert!(check(addr, "127.0.0.1").await.is_ok());
    assert_eq!(
        check(addr, "127.0.0.2").await.unwrap_err().code(),
        Code::PermissionDenied
    );
}
