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

/// tonic serving TLS puts `TlsConnectInfo<TcpConnectInfo>` in the extensions instead of
/// `TcpConnectInfo`; the layer reads the peer from it (feature `tonic-tls`).
#[tokio::test]
async fn over_tls_the_peer_comes_from_tls_connect_info() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();

    let (listener, addr) = listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = deny("127.0.0.66");
    let identity = Identity::from_pem(&cert_pem, &key_pem);
    tokio::spawn(async move {
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let check_tls = |from: &'static str| {
        let cert_pem = cert_pem.clone();
        async move {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(cert_pem))
                        .domain_name("localhost"),
                )
                .unwrap()
                .local_address(Some(from.parse().unwrap()))
                .connect()
                .await
                .unwrap();
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        }
    };
    let allowed = check_tls("127.0.0.1").await.unwrap();
    assert_eq!(allowed.into_inner().status(), ServingStatus::Serving);
    let denied = check_tls("127.0.0.66").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
