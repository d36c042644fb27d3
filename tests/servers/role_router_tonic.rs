//! The role-router layer in a tonic server: a real tonic client sees UNAUTHENTICATED
//! and PERMISSION_DENIED as `Status` codes.

use std::net::SocketAddr;

use portcullis::role_router::{Policy, Requirement, RoleRouterLayer, Rule};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

use crate::client::listener;
use crate::stand_in::authenticate;

async fn serve() -> SocketAddr {
    // A gRPC method path is just a path.
    let policy = Policy::builder()
        .rule(Rule::new(
            "/grpc.health.v1.Health/Watch",
            Requirement::public(),
        ))
        .rule(Rule::new(
            "/grpc.health.v1.Health/*",
            Requirement::authenticated().any_role(["monitor"]),
        ))
        .build()
        .unwrap();
    let (listener, addr) = listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(
                ServiceBuilder::new()
                    .map_request(authenticate::<tonic::body::Body>)
                    .layer(RoleRouterLayer::new(policy)),
            )
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

async fn check(addr: SocketAddr, principals: Option<&'static str>) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(principals) = principals {
        request
            .metadata_mut()
            .insert("x-test-principals", MetadataValue::from_static(principals));
    }
    HealthClient::new(channel).check(request).await.map(|_| ())
}

#[tokio::test]
async fn grpc_clients_see_proper_status_codes() {
    let addr = serve().await;
    assert!(check(addr, Some("jwt:monitor")).await.is_ok());
    let anonymous = check(addr, None).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(
        anonymous.message().starts_with("unauthenticated:"),
        "{}",
        anonymous.message()
    );
    let wrong_role = check(addr, Some("jwt:viewer")).await.unwrap_err();
    assert_eq!(wrong_role.code(), Code::PermissionDenied);
}
