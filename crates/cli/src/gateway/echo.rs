//! The development setup's example upstream: a service in any language would do; this
//! one answers, as JSON, what it was told about the caller. It believes the gateway's
//! plain identity headers only because it is reached through the gateway, and shows
//! what a careful upstream does instead: it verifies the gateway's signed assertion
//! with `portcullis-jwt` and refuses (401) every request without a valid one, such as
//! a call that goes around the gateway.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::{Json, Router};
use http::HeaderName;
use portcullis::core::{AuthMethod, Authentication};
use portcullis::jwt::{Issuer, JwtLayer, VerifyingKey};
use serde_json::{json, Value};

/// The header the gateway's assertion travels in, and what the assertion says.
pub(crate) const ASSERTION_HEADER: &str = "x-identity-assertion";
pub(crate) const ASSERTION_ISSUER: &str = "https://gateway.local";
pub(crate) const ASSERTION_AUDIENCE: &str = "example-upstream";
pub(crate) const ASSERTION_TYPE: &str = "identity+jwt";

/// Starts the example upstream on a loopback port of its own; it accepts only
/// assertions signed by `gateway_key`'s private half.
pub(crate) async fn start(gateway_key: VerifyingKey) -> Result<SocketAddr, String> {
    let verify = JwtLayer::builder()
        .issuer(
            Issuer::new(ASSERTION_ISSUER)
                .audience(ASSERTION_AUDIENCE)
                .token_type(ASSERTION_TYPE)
                .key(gateway_key),
        )
        .header(HeaderName::from_static(ASSERTION_HEADER), "")
        .build()
        .map_err(|e| format!("the example upstream's verifier: {e}"))?;
    let app = Router::new().fallback(echo).layer(verify);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("the example upstream cannot listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the example upstream's address: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the example upstream stopped");
        }
    });
    Ok(addr)
}

/// What arrived: the request line, the gateway's identity headers, the verified
/// assertion's principal and the forwarding headers.
async fn echo(request: Request) -> Json<Value> {
    let headers = request.headers();
    let header = |name: &str| {
        let lines: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        match lines.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        }
    };
    // The gateway keeps the credentials it checked (its layers remove them).
    let credentials: Vec<&str> = ["authorization", "x-api-key", "cookie"]
        .into_iter()
        .filter(|name| headers.contains_key(*name))
        .collect();
    let asserted = Authentication::from_extensions(request.extensions())
        .get(AuthMethod::Jwt)
        .map(|principal| {
            json!({
                "id": principal.id(),
                "roles": principal.roles(),
                "scopes": principal.scopes(),
            })
        });
    Json(json!({
        "upstream": "the development setup's example upstream",
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|p| p.as_str()),
        "identity_headers": {
            "x-caller-id": header("x-caller-id"),
            "x-caller-method": header("x-caller-method"),
            "x-caller-credential": header("x-caller-credential"),
            "x-caller-roles": header("x-caller-roles"),
            "x-caller-scopes": header("x-caller-scopes"),
            "x-caller-ip": header("x-caller-ip"),
        },
        "verified_assertion": asserted,
        "credentials_received": credentials,
        "x-forwarded-for": header("x-forwarded-for"),
        "forwarded": header("forwarded"),
        "via": header("via"),
    }))
}
