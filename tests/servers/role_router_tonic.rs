//! The role-router layer in a tonic server: a real tonic client sees UNAUTHENTICATED
//! and PERMISSION_DENIED as `Status` codes.

use std::net::SocketAddr;

use portcullis::role_router::{Policy, Requirement, RoleRouterLayer, Rule};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::Code;
use tower::ServiceBuilder;

use crate::client::{grpc_health_check, listener};
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
    grpc_health_check(addr, principals.map(|p| ("x-test-principals", p))).await
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
