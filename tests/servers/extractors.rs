//! The axum extractors over a real server: the principal of the only method, of one
//! method among several, optional principals, everyone, the client address and JWT
//! claims; 401 without credentials, 500 `layer_missing` when a layer was forgotten,
//! 500 `ambiguous_principal` when `Principal` meets two.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::core::extract::{Authenticated, ByApiKey, ByJwt, PrincipalBy};
use portcullis::core::{AuthMethod, ClientIp, ClientIpResolver, Principal};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::jwt::jsonwebtoken::Algorithm;
use portcullis::jwt::{Claims, JwtClaims, JwtLayer, SigningKey, TokenIssuer};
use serde::Deserialize;

use crate::client::{get as send, serve_axum};

#[derive(Deserialize)]
struct MyClaims {
    sub: String,
    auth_method: String,
}

fn routes() -> Router {
    async fn whoami(principal: Principal) -> String {
        format!("{} by {}", principal.id(), principal.method().as_str())
    }
    async fn owner(PrincipalBy(owner, ..): PrincipalBy<ByApiKey>) -> String {
        owner.id().to_owned()
    }
    async fn token(PrincipalBy(subject, ..): PrincipalBy<ByJwt>) -> String {
        subject.id().to_owned()
    }
    async fn hello(principal: Option<Principal>) -> String {
        principal.map_or("hello".into(), |p| format!("hello {}", p.id()))
    }
    async fn everyone(Authenticated(auth): Authenticated) -> String {
        auth.methods()
            .map(AuthMethod::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
    async fn ip(ip: ClientIp) -> String {
        ip.ip().to_string()
    }
    async fn claims(claims: JwtClaims) -> String {
        claims.subject().to_owned()
    }
    async fn typed(Claims(claims): Claims<MyClaims>) -> String {
        format!("{} {}", claims.sub, claims.auth_method)
    }
    async fn maybe_claims(claims: Option<JwtClaims>) -> String {
        claims.map_or("no token".into(), |c| c.subject().to_owned())
    }
    async fn maybe_typed(claims: Option<Claims<MyClaims>>) -> String {
        claims.map_or("no token".into(), |Claims(c)| c.sub.clone())
    }
    async fn maybe_ip(ip: Option<ClientIp>) -> String {
        ip.map_or("none".into(), |ip| ip.ip().to_string())
    }
    Router::new()
        .route("/whoami", get(whoami))
        .route("/owner", get(owner))
        .route("/token", get(token))
        .route("/hello", get(hello))
        .route("/everyone", get(everyone))
        .route("/ip", get(ip))
        .route("/claims", get(claims))
        .route("/typed", get(typed))
        .route("/maybe-claims", get(maybe_claims))
        .route("/maybe-typed", get(maybe_typed))
        .route("/maybe-ip", get(maybe_ip))
}

#[tokio::test]
async fn extractors_hand_handlers_what_the_layers_found() {
    let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(KeyRecord::new(key.id(), "partner-acme", key.digest()).unwrap())
        .unwrap();
    let signing = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let issuer = TokenIssuer::new(signing, "https://gw", "api").unwrap();
    let token = issuer
        .issue(
            &Principal::builder("alice", AuthMethod::ApiKey).build(),
            None,
        )
        .unwrap();
    let bearer = format!("Bearer {}", token.expose());
    let app = routes()
        .layer(
            JwtLayer::builder()
                .issuer(issuer.validating_issuer())
                .mode(portcullis::jwt::Mode::Optional)
                .claims::<MyClaims>()
                .build()
                .unwrap(),
        )
        .layer(ApiKeyLayer::new(store).mode(portcullis::api_key::Mode::Optional))
        .layer(IpAllowlistLayer::new(IpRules::new()).client_ip(ClientIpResolver::new()));
    let server = serve_axum(app).await;
    let ask = |path: &'static str, headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        send(server, "127.0.0.1", path, &headers).await
    };
    let api_key = || vec![("x-api-key", key.expose_secret().to_owned())];
    let jwt = || vec![("authorization", bearer.clone())];
    let both = || {
        vec![
            ("x-api-key", key.expose_secret().to_owned()),
            ("authorization", bearer.clone()),
        ]
    };

    // One principal.
    assert_eq!(
        ask("/whoami", api_key()).await.body,
        "partner-acme by api_key"
    );
    assert_eq!(ask("/whoami", jwt()).await.body, "alice by jwt");
    // None: 401, the layers' problem+json; the optional form says so instead.
    let anonymous = ask("/whoami", vec![]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code().as_deref(), Some("unauthenticated"));
    assert_eq!(
        anonymous.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(ask("/hello", vec![]).await.body, "hello");
    assert_eq!(ask("/hello", jwt()).await.body, "hello alice");
    assert_eq!(
        ask("/everyone", vec![]).await.code().as_deref(),
        Some("unauthenticated")
    );
    // Two: `Principal` will not choose; the method-typed extractor does.
    let ambiguous = ask("/whoami", both()).await;
    assert_eq!(ambiguous.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ambiguous.code().as_deref(), Some("ambiguous_principal"));
    assert_eq!(ask("/owner", both()).await.body, "partner-acme");
    assert_eq!(ask("/token", both()).await.body, "alice");
    assert_eq!(ask("/everyone", both()).await.body, "api_key,jwt");
    assert_eq!(
        ask("/owner", jwt()).await.code().as_deref(),
        Some("unauthenticated")
    );
    // The address the allow-list resolved, and the token's claims.
    assert_eq!(ask("/ip", vec![]).await.body, "127.0.0.1");
    assert_eq!(ask("/claims", jwt()).await.body, "alice");
    assert_eq!(ask("/typed", jwt()).await.body, "alice api_key");
    assert_eq!(
        ask("/claims", api_key()).await.code().as_deref(),
        Some("unauthenticated")
    );
    // The optional forms: `None` without a token, the claims with one.
    assert_eq!(ask("/maybe-claims", vec![]).await.body, "no token");
    assert_eq!(ask("/maybe-claims", api_key()).await.body, "no token");
    assert_eq!(ask("/maybe-claims", jwt()).await.body, "alice");
    assert_eq!(ask("/maybe-typed", vec![]).await.body, "no token");
    assert_eq!(ask("/maybe-typed", jwt()).await.body, "alice");
    assert_eq!(ask("/maybe-ip", vec![]).await.body, "127.0.0.1");

    // Without the layers: a misconfiguration, never an anonymous request.
    let bare = serve_axum(routes()).await;
    // The optional forms too: `None` means "no credential", never "no layer".
    for path in [
        "/whoami",
        "/hello",
        "/everyone",
        "/ip",
        "/claims",
        "/typed",
        "/maybe-claims",
        "/maybe-typed",
        "/maybe-ip",
    ] {
        let reply = send(bare, "127.0.0.1", path, &[]).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(reply.code().as_deref(), Some("layer_missing"), "{path}");
    }
}
