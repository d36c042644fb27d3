//! The role-router layer in an axum app, with the HSM and endpoint-security role tables
//! from tests/policies checked route by route.

use std::net::SocketAddr;

use axum::body::Body;
use axum::routing::any;
use axum::Router;
use http::{HeaderValue, StatusCode};
use portcullis::core::{AuditRecord, Decision};
use portcullis::role_router::{read_policy, RoleRouterLayer};
use tower::ServiceBuilder;

use crate::client::{get_with, listener, Reply};
use crate::stand_in::authenticate;

fn policy_path(name: &str) -> String {
    format!("{}/tests/policies/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn serve(layer: RoleRouterLayer) -> SocketAddr {
    let app = Router::new()
        .route("/{*rest}", any(|| async { "inner" }))
        .route("/", any(|| async { "inner" }))
        .layer(layer)
        .layer(ServiceBuilder::new().map_request(authenticate::<Body>));
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn send(addr: SocketAddr, method: &str, path: &str, principals: &str) -> Reply {
    let headers: Vec<(&str, &str)> = if principals.is_empty() {
        vec![]
    } else {
        vec![("x-test-principals", principals)]
    };
    get_with(addr, method, "127.0.0.1", path, &headers).await
}

/// (method, path, principals, expected status, expected code)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
);

async fn check_table(addr: SocketAddr, cases: &[Case]) {
    for &(method, path, principals, status, code) in cases {
        let reply = send(addr, method, path, principals).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} as {principals:?}: {}",
            reply.body
        );
        assert_eq!(
            reply.code().as_deref(),
            code,
            "{method} {path} as {principals:?}"
        );
        if status == 200 {
            assert_eq!(reply.body, "inner");
        }
    }
}

#[tokio::test]
async fn hsm_role_table_route_by_route() {
    let policy = read_policy(policy_path("hsm.toml")).unwrap();
    let layer = RoleRouterLayer::new(policy).challenge(HeaderValue::from_static("Bearer"));
    let addr = serve(layer).await;
    check_table(
        addr,
        &[
            ("GET", "/v1/versionInfo", "", 200, None),
            ("POST", "/v1/versionInfo", "jwt:so", 403, Some("forbidden")),
            (
                "GET",
                "/v1/filteredKeyApprovalTask",
                "jwt:approver",
                200,
                None,
            ),
            (
                "GET",
                "/v1/filteredApprovalTask",
                "api_key:key-reader",
                403,
                Some("forbidden"),
            ),
            (
                "GET",
                "/v1/filteredKeyApprovalTask",
                "",
                401,
                Some("unauthenticated"),
            ),
            (
                "GET",
                "/v1/key/k1/attributes",
                "api_key:key-reader",
                200,
                None,
            ),
            (
                "GET",
                "/v1/key/a/b/attributes",
                "api_key:key-reader",
                200,
                None,
            ),
            (
                "PUT",
                "/v1/key/k1/attributes",
                "api_key:key-reader",
                403,
                Some("forbidden"),
            ),
            (
                "PUT",
                "/v1/key/k1/attributes",
                "api_key:key-admin",
                200,
                None,
            ),
            (
                "POST",
                "/v1/key/k1/sign",
                "certificate:signer;jwt:signer",
                200,
                None,
            ),
            (
                "POST",
                "/v1/key/k1/sign",
                "jwt:signer",
                401,
                Some("unauthenticated"),
            ),
            (
                "POST",
                "/v1/key/k1/sign",
                "certificate:reader;jwt:reader",
                403,
                Some("forbidden"),
            ),
            ("DELETE", "/v1/key/k1", "api_key:key-admin", 200, None),
            (
                "DELETE",
                "/v1/key/k1",
                "api_key:key-reader",
                403,
                Some("forbidden"),
            ),
            ("GET", "/v1/key", "jwt:so", 200, None),
            ("GET", "/v1/user/u1", "jwt:so", 200, None),
            (
                "GET",
                "/v1/user/u1",
                "jwt:key-admin",
                403,
                Some("forbidden"),
            ),
            ("GET", "/v2/anything", "jwt:so", 403, Some("forbidden")),
            ("GET", "/", "jwt:so", 403, Some("forbidden")),
        ],
    )
    .await;
    // 401s carry the challenge.
    let reply = send(addr, "GET", "/v1/key/k1", "").await;
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn endpoint_security_access_levels() {
    let addr = serve(RoleRouterLayer::new(
        read_policy(policy_path("endpoint.toml")).unwrap(),
    ))
    .await;
    check_table(
        addr,
        &[
            ("GET", "/health", "", 200, None),
            ("GET", "/api/v1/endpoints", "api_key:read-only", 200, None),
            (
                "POST",
                "/api/v1/endpoints/e1/quarantine",
                "api_key:read-only",
                403,
                Some("forbidden"),
            ),
            (
                "POST",
                "/api/v1/endpoints/e1/quarantine",
                "api_key:standard",
                200,
                None,
            ),
            (
                "POST",
                "/api/v1/policies/p1",
                "api_key:standard",
                403,
                Some("forbidden"),
            ),
            ("DELETE", "/api/v1/policies/p1", "api_key:admin", 200, None),
            (
                "POST",
                "/api/v1/keys/new",
                "jwt:admin",
                401,
                Some("unauthenticated"),
            ),
            ("POST", "/api/v1/keys/new", "api_key:admin", 200, None),
            ("GET", "/api/v1/endpoints", "", 401, Some("unauthenticated")),
            (
                "PATCH",
                "/api/v1/endpoints/e1",
                "api_key:admin",
                403,
                Some("forbidden"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn path_tricks_never_reach_a_route_the_rule_did_not_mean() {
    let policy = read_policy(policy_path("hsm.toml")).unwrap();
    let addr = serve(RoleRouterLayer::new(policy)).await;
    for path in [
        "/v1/versionInfo/../key/k1",
        "/v1/key/../user/u1",
        "/v1/key/%2e%2e/user/u1",
        "/v1/key/%2E%2E/user/u1",
        "/v1//user/u1",
        "/v1/key%2Fk1",
        "/v1/key%5Ck1",
        "/v1/key/%252e%252e/user",
        "/v1/./user/u1",
    ] {
        let reply = send(addr, "GET", path, "jwt:key-admin").await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.body
        );
        assert_eq!(reply.code().as_deref(), Some("ambiguous_path"), "{path}");
    }
    // An encoded letter is decoded and judged by the rule it spells.
    let reply = send(addr, "GET", "/v1/%75ser/u1", "jwt:key-admin").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // A trailing slash does not dodge the rule.
    let reply = send(addr, "GET", "/v1/user/", "jwt:key-admin").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn shadow_mode_serves_and_audits() {
    let policy = read_policy(policy_path("hsm.toml")).unwrap();
    let record = AuditRecord::new();
    let layer = RoleRouterLayer::new(policy).shadow(true);
    let record_for_requests = record.clone();
    let app = Router::new()
        .route("/{*rest}", any(|| async { "inner" }))
        .layer(layer)
        .layer(
            ServiceBuilder::new().map_request(move |mut request: http::Request<Body>| {
                request.extensions_mut().insert(record_for_requests.clone());
                authenticate(request)
            }),
        );
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let reply = send(addr, "DELETE", "/v1/user/u1", "jwt:key-admin").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "inner");
    let notes = record.take();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].decision(), Decision::ShadowDeny);
    assert_eq!(notes[0].reason_code(), Some("forbidden"));
    assert_eq!(notes[0].rule_name(), Some("users"));
    assert_eq!(notes[0].detail_text(), Some("a required role is missing"));
}
