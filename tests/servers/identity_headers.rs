//! Identity headers and the signed assertion between two real servers: a gateway (API
//! keys, then `IdentityHeadersLayer`) that relays each request to an upstream, and the
//! upstream, which reads the headers, or verifies the assertion with its own JWT layer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::Router;
use http::{HeaderName, StatusCode};
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::core::{AuthMethod, Authentication};
use portcullis::jwt::jsonwebtoken::Algorithm;
use portcullis::jwt::{Issuer, JwtLayer, SigningKey, TokenIssuer};
use portcullis::upstream::IdentityHeadersLayer;

use crate::client::{get_with, serve_axum};

const ASSERTION: &str = "x-identity-assertion";
const TYPE: &str = "identity+jwt";

/// What the upstream saw: every `x-caller-*` line (and the assertion's presence), one
/// per line, in order.
async fn echo(request: Request) -> String {
    let mut lines = Vec::new();
    for (name, value) in request.headers() {
        if name.as_str().starts_with("x-caller-") || name.as_str() == "x-internal-admin" {
            lines.push(format!("{name}: {}", value.to_str().unwrap_or("?")));
        }
    }
    lines.join("\n")
}

/// The gateway relays to `upstream` with the headers its layers left.
async fn relay(State(upstream): State<SocketAddr>, request: Request) -> (StatusCode, String) {
    let mut forwarded = reqwest::Client::new().get(format!("http://{upstream}{}", request.uri()));
    for (name, value) in request.headers() {
        if name.as_str().starts_with("x-caller-")
            || name.as_str() == ASSERTION
            || name.as_str() == "x-internal-admin"
        {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    (status, answer.text().await.unwrap())
}

/// The upstream's JWT layer: only the gateway's assertions (its key, the assertion's
/// `typ`), for this upstream (`orders`), read from the assertion header.
fn verifier(key: portcullis::jwt::VerifyingKey) -> JwtLayer {
    JwtLayer::builder()
        .issuer(
            Issuer::new("https://gateway.example")
                .audience("orders")
                .key(key)
                .token_type(TYPE),
        )
        .header(HeaderName::from_static(ASSERTION), "")
        .build()
        .unwrap()
}

struct Setup {
    gateway: SocketAddr,
    key: String,
    /// Signs like the gateway, for tokens the upstream must refuse.
    gateway_key: SigningKey,
}

async fn setup(upstream: SocketAddr, assertion: Option<TokenIssuer>) -> Setup {
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(
            KeyRecord::new(key.id(), "alice", key.digest())
                .unwrap()
                .roles(["reader", "ops,admin"])
                .scopes(["orders:read"]),
        )
        .unwrap();
    let name = |n: &'static str| HeaderName::from_static(n);
    let mut identity = IdentityHeadersLayer::builder()
        .principal_header(name("x-caller-id"))
        .method_header(name("x-caller-method"))
        .credential_header(name("x-caller-credential"))
        .roles_header(name("x-caller-roles"))
        .scopes_header(name("x-caller-scopes"))
        .client_ip_header(name("x-caller-ip"))
        .also_remove([name("x-internal-admin")]);
    let gateway_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    if let Some(issuer) = assertion {
        identity = identity.assertion(name(ASSERTION), issuer);
    }
    let app = Router::new()
        .fallback(relay)
        .with_state(upstream)
        .layer(identity.build().unwrap())
        .layer(ApiKeyLayer::new(store).mode(portcullis::api_key::Mode::Optional));
    Setup {
        gateway: serve_axum(app).await,
        key: key.expose_secret().to_owned(),
        gateway_key,
    }
}

#[tokio::test]
async fn the_upstream_sees_the_caller_and_never_the_clients_copies() {
    let upstream = serve_axum(Router::new().fallback(echo)).await;
    let setup = setup(upstream, None).await;
    let spoofs = [
        ("x-caller-id", "root"),
        ("X-Caller-Id", "root2"),
        ("x-caller-roles", "admin"),
        ("x-caller-ip", "10.0.0.1"),
        ("x-internal-admin", "yes"),
    ];

    // With a key: exactly one line each, the layer's; commas inside a role encoded.
    let mut headers = vec![("x-api-key", setup.key.as_str())];
    headers.extend(spoofs);
    let reply = get_with(setup.gateway, "GET", "127.0.0.120", "/orders", &headers).await;
    assert_eq!(reply.status, StatusCode::OK);
    let lines: Vec<&str> = reply.body.lines().collect();
    assert!(lines.contains(&"x-caller-id: alice"), "{lines:?}");
    assert!(lines.contains(&"x-caller-method: api_key"), "{lines:?}");
    assert!(
        lines.contains(&"x-caller-roles: reader,ops%2Cadmin"),
        "{lines:?}"
    );
    assert!(lines.contains(&"x-caller-scopes: orders:read"), "{lines:?}");
    assert!(lines.contains(&"x-caller-ip: 127.0.0.120"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("x-caller-credential: ")),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 6, "{lines:?}");

    // Without a key: nothing about a caller, and none of the client's claims.
    let reply = get_with(setup.gateway, "GET", "127.0.0.121", "/orders", &spoofs).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "x-caller-ip: 127.0.0.121");
}

#[tokio::test]
async fn a_second_stack_verifies_the_signed_assertion() {
    let gateway_key = SigningKey::generate(Algorithm::EdDSA)
        .unwrap()
        .with_kid("gateway-1");
    let assertions = TokenIssuer::with_token_type(
        gateway_key.clone(),
        "https://gateway.example",
        "orders",
        TYPE,
    )
    .unwrap()
    .lifetime(Duration::from_secs(60));
    // The upstream accepts only the gateway's assertions, for itself, of that type.
    let verify = verifier(gateway_key.verifying_key());
    let upstream = serve_axum(
        Router::new()
            .fallback(|request: Request| async move {
                let auth = Authentication::from_extensions(request.extensions());
                let principal = auth.get(AuthMethod::Jwt).unwrap();
                format!(
                    "{} {:?} {:?}",
                    principal.id(),
                    principal.roles(),
                    principal.scopes()
                )
            })
            .layer(verify),
    )
    .await;
    let setup = setup(upstream, Some(assertions.clone())).await;
    let reply = get_with(
        setup.gateway,
        "GET",
        "127.0.0.122",
        "/orders",
        &[("x-api-key", &setup.key), (ASSERTION, "forged")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body,
        r#"alice ["reader", "ops,admin"] ["orders:read"]"#
    );

    // Straight to the upstream, around the gateway: whatever a client can make is
    // refused.
    let direct = |token: String| async move {
        get_with(
            upstream,
            "GET",
            "127.0.0.123",
            "/orders",
            &[(ASSERTION, &token)],
        )
        .await
    };
    let principal = portcullis::core::Principal::builder("mallory", AuthMethod::ApiKey).build();
    // An access token of the same gateway key: the wrong type.
    let access = TokenIssuer::new(gateway_key.clone(), "https://gateway.example", "orders")
        .unwrap()
        .issue(&principal, None)
        .unwrap();
    // An assertion for another upstream.
    let elsewhere = TokenIssuer::with_token_type(
        gateway_key.clone(),
        "https://gateway.example",
        "billing",
        TYPE,
    )
    .unwrap()
    .issue(&principal, None)
    .unwrap();
    // An assertion signed by another key.
    let forged = TokenIssuer::with_token_type(
        setup.gateway_key.clone(),
        "https://gateway.example",
        "orders",
        TYPE,
    )
    .unwrap()
    .issue(&principal, None)
    .unwrap();
    for (case, token) in [
        ("an access token", access.expose().to_owned()),
        ("another audience", elsewhere.expose().to_owned()),
        ("another key", forged.expose().to_owned()),
        ("garbage", "not-a-token".to_owned()),
    ] {
        assert_eq!(
            direct(token).await.status,
            StatusCode::UNAUTHORIZED,
            "{case}"
        );
    }
    let none = get_with(upstream, "GET", "127.0.0.123", "/orders", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    // And the genuine article, straight: accepted (what the gateway sends).
    let genuine = assertions.issue(&principal, None).unwrap();
    assert_eq!(
        direct(genuine.expose().to_owned()).await.status,
        StatusCode::OK
    );
}

/// The gateway file: `kind = "identity-headers"` after the API keys, with an assertion
/// signed by the EdDSA key in `private_key_file`; the upstream verifies it with the
/// public key.
#[tokio::test]
async fn the_gateway_file_writes_identity_and_signs_the_assertion() {
    use portcullis::api_key::render_key_record;
    let dir = std::env::temp_dir().join(format!("portcullis-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let record = KeyRecord::new(key.id(), "bob", key.digest())
        .unwrap()
        .roles(["writer"]);
    std::fs::write(dir.join("api-keys.toml"), render_key_record(&record)).unwrap();
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.join("assertion.pem"), signing.serialize_pem()).unwrap();

    let verifying =
        portcullis::jwt::VerifyingKey::ed_pem(signing.public_key_pem().as_bytes()).unwrap();
    let verify = verifier(verifying);
    let upstream = serve_axum(
        Router::new()
            .fallback(|request: Request| async move {
                let auth = Authentication::from_extensions(request.extensions());
                let principal = auth.get(AuthMethod::Jwt).unwrap();
                let id = request.headers()["x-caller-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                format!("{} {:?} header={id}", principal.id(), principal.roles())
            })
            .layer(verify),
    )
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [[layer]]\nkind = \"api-key\"\nkey_file = \"api-keys.toml\"\nmode = \"optional\"\nheaders = [\"x-api-key\"]\n\n\
         [[layer]]\nkind = \"identity-headers\"\nprincipal_header = \"x-caller-id\"\nroles_header = \"x-caller-roles\"\nprefer = [\"api-key\"]\n\
         [layer.assertion]\nheader = \"{ASSERTION}\"\nissuer = \"https://gateway.example\"\naudience = \"orders\"\nprivate_key_file = \"assertion.pem\"\nlifetime = \"30s\"\n"
    );
    let app = Router::new().fallback(relay).with_state(upstream);
    let gateway = crate::client::serve_gateway_file(&text, &dir, app).await;
    let reply = get_with(
        gateway,
        "GET",
        "127.0.0.124",
        "/orders",
        &[("x-api-key", key.expose_secret()), ("x-caller-id", "root")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, r#"bob ["writer"] header=bob"#);
    // Anonymous: no assertion, so the upstream refuses.
    let reply = get_with(
        gateway,
        "GET",
        "127.0.0.124",
        "/orders",
        &[("x-caller-id", "root")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Settings that cannot work are refused with the key's name.
    for (bad, says) in [
        ("prefer = [\"password\"]", "not a method"),
        (
            "principal_header = \"authorization\"",
            "cannot carry identity",
        ),
        ("", "no identity header"),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"identity-headers\"\n{bad}\n"
        );
        let error = portcullis::config::GatewayConfig::parse("gateway.toml", &text, &dir)
            .unwrap()
            .build()
            .await
            .unwrap_err();
        assert!(error.to_string().contains(says), "{bad}: {error}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
