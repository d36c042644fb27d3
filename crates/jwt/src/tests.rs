//! The layer over tower services: every refusal, the RFC 7515 vectors, the RFC 8725
//! attacks, caches, the account check, issuing and extending.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Request, Response, StatusCode};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use portcullis_core::{
    AuthMethod, Authentication, ClientCertThumbprint, Clock, Denial, ManualClock, Principal,
};
use serde_json::{json, Value};
use tower::{service_fn, BoxError, Service, ServiceExt};

use crate::*;

pub(crate) const ISS: &str = "https://auth.example";
pub(crate) const AUD: &str = "key-service";
pub(crate) const NOW: u64 = 1_900_000_000;

pub(crate) fn clock() -> (Clock, ManualClock) {
    Clock::manual(UNIX_EPOCH + Duration::from_secs(NOW))
}

pub(crate) fn hs_key() -> SigningKey {
    SigningKey::hmac(Algorithm::HS256, &[42; 32])
        .unwrap()
        .with_kid("hs")
}

/// Signs any header and claims with `key`, so tests can build every kind of bad token.
pub(crate) fn mint(key: &SigningKey, header: Value, claims: Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{signature}")
}

pub(crate) fn header(key: &SigningKey) -> Value {
    match key.kid() {
        Some(kid) => json!({ "alg": crate::key::algorithm_name(key.algorithm()), "kid": kid }),
        None => json!({ "alg": crate::key::algorithm_name(key.algorithm()) }),
    }
}

pub(crate) fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "app-7",
        "iat": NOW, "exp": NOW + 3600, "jti": "t-1",
        "roles": ["operator"], "scope": "keys:read keys:sign",
        "org": "acme"
    })
}

pub(crate) fn token() -> String {
    mint(&hs_key(), header(&hs_key()), claims())
}

pub(crate) fn issuer() -> Issuer {
    Issuer::new(ISS)
        .audience(AUD)
        .key(hs_key().verifying_key())
        .attribute_claim("org", "org")
        .unwrap()
}

pub(crate) fn builder(clock: &Clock) -> JwtLayerBuilder {
    JwtLayer::builder().issuer(issuer()).clock(clock.clone())
}

pub(crate) type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<String>, BoxError>;

/// The layer in front of a handler that reports what it saw.
pub(crate) fn service(layer: JwtLayer) -> Svc {
    let handler = service_fn(|request: Request<()>| async move {
        let auth = Authentication::from_extensions(request.extensions());
        let principal = auth.get(AuthMethod::Jwt);
        let body = json!({
            "id": principal.map(|p| p.id()),
            "roles": principal.map(|p| p.roles().to_vec()),
            "scopes": principal.map(|p| p.scopes().to_vec()),
            "org": principal.and_then(|p| p.attribute("org")),
            "authorization": request.headers().get("authorization").is_some(),
            "claims": request.extensions().get::<JwtClaims>().map(|c| c.subject().to_owned()),
        });
        Ok::<_, Infallible>(Response::new(body.to_string()))
    });
    let stack = tower::ServiceBuilder::new()
        .layer(layer)
        .service(handler)
        .map_response(
            |response: Response<portcullis_core::RejectOrBody<String>>| {
                let denial = response.extensions().get::<Denial>().copied();
                let (parts, body) = response.into_parts();
                let text = match body.is_rejection() {
                    true => format!("rejected:{}", denial.map(|d| d.code()).unwrap_or("?")),
                    false => String::new(),
                };
                let body = if text.is_empty() {
                    futures::executor::block_on(http_body_util::BodyExt::collect(body))
                        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
                        .unwrap_or_default()
                } else {
                    text
                };
                Response::from_parts(parts, body)
            },
        );
    tower::util::BoxCloneSyncService::new(stack.map_err(|e: Infallible| -> BoxError { match e {} }))
}

pub(crate) fn bearer(token: &str) -> Request<()> {
    Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

pub(crate) async fn send(service: &Svc, request: Request<()>) -> Response<String> {
    service.clone().oneshot(request).await.unwrap()
}

pub(crate) fn code(response: &Response<String>) -> &str {
    response
        .extensions()
        .get::<Denial>()
        .map(|d| d.code())
        .unwrap_or("none")
}

pub(crate) async fn refused_with(service: &Svc, token: &str) -> String {
    let response = send(service, bearer(token)).await;
    assert_ne!(response.status(), StatusCode::OK, "{token} was accepted");
    code(&response).to_owned()
}

#[tokio::test]
async fn a_valid_token_becomes_a_principal_and_leaves_the_request() {
    let (clock, _) = clock();
    let service = service(builder(&clock).build().unwrap());
    let response = send(&service, bearer(&token())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["id"], "app-7");
    assert_eq!(body["roles"], json!(["operator"]));
    assert_eq!(body["scopes"], json!(["keys:read", "keys:sign"]));
    assert_eq!(body["org"], "acme");
    assert_eq!(body["claims"], "app-7");
    assert_eq!(body["authorization"], false, "the token is removed");
}

/// Auth0 puts roles in a claim named by a URL; a quoted claim path reads it, and only
/// it: a nested look-alike gives nothing.
#[tokio::test]
async fn roles_from_a_claim_whose_name_holds_dots() {
    let (clock, _) = clock();
    let issuer = issuer()
        .roles_claim(r#""https://example.com/roles""#)
        .unwrap();
    let service = service(
        JwtLayer::builder()
            .issuer(issuer)
            .clock(clock)
            .build()
            .unwrap(),
    );
    let mut namespaced = claims();
    namespaced["https://example.com/roles"] = json!(["key-admin"]);
    let response = send(
        &service,
        bearer(&mint(&hs_key(), header(&hs_key()), namespaced)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["roles"], json!(["key-admin"]));

    let mut nested = claims();
    nested["https://example"] = json!({ "com/roles": ["key-admin"] });
    let response = send(
        &service,
        bearer(&mint(&hs_key(), header(&hs_key()), nested)),
    )
    .await;
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["roles"], json!([]));
}

#[tokio::test]
async fn every_malformed_token_is_refused_before_any_key_is_used() {
    let (clock, _) = clock();
    let service = service(builder(&clock).build().unwrap());
    let good = token();
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("not json"),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("[1,2]"),
            parts[2]
        ),
        "x".repeat(8 * 1024 + 1),
    ];
    for case in cases {
        assert_eq!(
            refused_with(&service, &case).await,
            "malformed_token",
            "{case:.60}"
        );
    }
    let mut wrong_type = claims();
    wrong_type["exp"] = json!("1900003600");
    let token = mint(&hs_key(), header(&hs_key()), wrong_type);
    assert_eq!(refused_with(&service, &token).await, "malformed_token");

    let values: [&[u8]; 4] = [b"Bearer", b"Bearer ", b"Bearer a b", b"Bearer \xffx"];
    for value in values {
        let value = http::HeaderValue::from_bytes(value).unwrap();
        let request = Request::builder()
            .header("authorization", value.clone())
            .body(())
            .unwrap();
        let response = send(&service, request).await;
        assert_eq!(code(&response), "malformed_token", "{value:?}");
    }
    let mut two = bearer(&good);
    two.headers_mut()
        .append("authorization", format!("Bearer {good}").parse().unwrap());
    assert_eq!(code(&send(&service, two).await), "malformed_token");
}

#[tokio::test]
async fn refusals_carry_the_rfc_6750_challenge_and_never_the_token() {
    let (clock, _) = clock();
    let service = service(builder(&clock).realm("keys").build().unwrap());
    let response = send(&service, Request::new(())).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code(&response), "missing_token");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"keys\""
    );

    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let token = mint(&hs_key(), header(&hs_key()), expired);
    let response = send(&service, bearer(&token)).await;
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("error_description=\"the token has expired\""));
    assert!(!format!("{response:?}").contains(&token[..20]));
}

#[tokio::test]
async fn each_claim_check_has_its_code() {
    let (clock, _) = clock();
    let service = service(builder(&clock).build().unwrap());
    let key = hs_key();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims();
        change(&mut claims);
        mint(&key, header(&key), claims)
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with(&|c| c["iss"] = json!("https://evil.example")),
            "invalid_issuer",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "invalid_issuer",
        ),
        (
            with(&|c| c["aud"] = json!("another-service")),
            "invalid_audience",
        ),
        (with(&|c| c["aud"] = json!(["a", "b"])), "invalid_audience"),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "invalid_audience",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "invalid_claims",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "invalid_claims",
        ),
        (with(&|c| c["sub"] = json!("")), "invalid_claims"),
        (with(&|c| c["nbf"] = json!(NOW + 61)), "token_not_yet_valid"),
        (with(&|c| c["iat"] = json!(NOW + 61)), "token_not_yet_valid"),
        (with(&|c| c["exp"] = json!(NOW - 60)), "expired_token"),
        (
            with(&|c| c["cnf"] = json!({"jkt": "abc"})),
            "invalid_claims",
        ),
        (
            with(&|c| c["cnf"] = json!({"x5t#S256": "short"})),
            "invalid_claims",
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(refused_with(&service, &token).await, expected);
    }
    // Within leeway on both sides.
    let ok = with(&|c| {
        c["nbf"] = json!(NOW + 60);
        c["iat"] = json!(NOW + 60);
        c["exp"] = json!(NOW - 59);
        c["aud"] = json!(["other", AUD]);
    });
    assert_eq!(send(&service, bearer(&ok)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn expiry_is_checked_to_the_millisecond_without_sleeping() {
    let (clock, control) = clock();
    let service = service(builder(&clock).build().unwrap());
    let token = token();
    // exp = NOW + 3600, leeway 60 s: valid until NOW + 3660 exclusive.
    control.set(UNIX_EPOCH + Duration::from_secs(NOW + 3660) - Duration::from_millis(1));
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK
    );
    control.advance(Duration::from_millis(1));
    assert_eq!(
        refused_with(&service, &token).await,
        "expired_token",
        "the cached verdict ends at exp too"
    );
}

#[tokio::test]
async fn rfc_8725_attacks_are_refused() {
    let (clock, _) = clock();
    // An RSA issuer: the RFC 7515 A.2 public key.
    let rsa_jwk: Jwk =
        serde_json::from_value(json!({"kty": "RSA", "kid": "rsa", "n": RFC7515_N, "e": "AQAB"}))
            .unwrap();
    let rsa = VerifyingKey::from_jwk(&rsa_jwk).unwrap();
    let layer = JwtLayer::builder()
        .issuer(Issuer::new(ISS).audience(AUD).key(rsa))
        .clock(clock.clone())
        .build()
        .unwrap();
    let service = service(layer);

    // alg: none, with and without a signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(refused_with(&service, &none).await, "invalid_algorithm");
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#)),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        assert_eq!(
            refused_with(&service, &token).await,
            "invalid_algorithm",
            "{alg}"
        );
    }

    // RS256 -> HS256 confusion: HMAC over the token with the RSA public key as secret.
    let n = URL_SAFE_NO_PAD.decode(RFC7515_N).unwrap();
    let confused = SigningKey::hmac(Algorithm::HS256, &n).unwrap();
    let token = mint(&confused, json!({"alg": "HS256", "kid": "rsa"}), claims());
    assert_eq!(refused_with(&service, &token).await, "invalid_algorithm");
    let token = mint(&confused, json!({"alg": "HS256"}), claims());
    assert_eq!(refused_with(&service, &token).await, "invalid_algorithm");

    // Keys carried by the token itself are never trusted.
    let attacker = SigningKey::generate(Algorithm::ES256).unwrap();
    let embedded = serde_json::to_value(attacker.public_jwk()).unwrap();
    for extra in [
        json!({"alg": "ES256", "jwk": embedded}),
        json!({"alg": "ES256", "jku": "https://evil.example/jwks"}),
        json!({"alg": "ES256", "x5u": "https://evil.example/cert"}),
        json!({"alg": "ES256", "x5c": ["MIIB"]}),
    ] {
        let token = mint(&attacker, extra, claims());
        assert_eq!(refused_with(&service, &token).await, "invalid_algorithm");
    }
    let attacker_rsa_kid = mint(&attacker, json!({"alg": "ES256", "kid": "rsa"}), claims());
    assert_eq!(
        refused_with(&service, &attacker_rsa_kid).await,
        "invalid_algorithm"
    );

    // Critical extensions this layer does not understand.
    let key = hs_key();
    let hs_service = service_for_hs(&clock);
    let token = mint(
        &key,
        json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
        claims(),
    );
    assert_eq!(
        refused_with(&hs_service, &token).await,
        "unsupported_critical_header"
    );
    let token = mint(
        &key,
        json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
        claims(),
    );
    assert_eq!(
        refused_with(&hs_service, &token).await,
        "unsupported_critical_header"
    );

    // A tampered payload with the original signature.
    let good = token_for(&key);
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered = claims();
    tampered["roles"] = json!(["admin"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered.to_string()),
        parts[2]
    );
    assert_eq!(
        refused_with(&hs_service, &forged).await,
        "invalid_signature"
    );

    // Another key with the same kid.
    let other = SigningKey::hmac(Algorithm::HS256, &[7; 32])
        .unwrap()
        .with_kid("hs");
    assert_eq!(
        refused_with(&hs_service, &token_for(&other)).await,
        "invalid_signature"
    );
    // An unknown kid.
    let unknown = SigningKey::hmac(Algorithm::HS256, &[7; 32])
        .unwrap()
        .with_kid("nope");
    assert_eq!(
        refused_with(&hs_service, &token_for(&unknown)).await,
        "unknown_key"
    );
}

fn service_for_hs(clock: &Clock) -> Svc {
    service(builder(clock).build().unwrap())
}

fn token_for(key: &SigningKey) -> String {
    mint(key, header(key), claims())
}

#[tokio::test]
async fn several_issuers_each_with_their_own_keys_and_audiences() {
    let (clock, _) = clock();
    let partner_key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("p1");
    let partner = Issuer::new("https://partner.example")
        .audience("partner-api")
        .key(partner_key.verifying_key());
    let service = service(builder(&clock).issuer(partner).build().unwrap());
    let mut partner_claims = claims();
    partner_claims["iss"] = json!("https://partner.example");
    partner_claims["aud"] = json!("partner-api");
    let ok = mint(&partner_key, header(&partner_key), partner_claims.clone());
    assert_eq!(send(&service, bearer(&ok)).await.status(), StatusCode::OK);
    assert_eq!(
        send(&service, bearer(&token())).await.status(),
        StatusCode::OK
    );

    // The partner's token signed with our key, and ours with the partner's: each
    // issuer's tokens verify only with that issuer's keys.
    let crossed = mint(&hs_key(), header(&hs_key()), partner_claims.clone());
    assert_eq!(refused_with(&service, &crossed).await, "unknown_key");
    let crossed = mint(&partner_key, header(&partner_key), claims());
    assert_eq!(refused_with(&service, &crossed).await, "unknown_key");
    // The partner's audience is not ours.
    let mut wrong_audience = partner_claims;
    wrong_audience["aud"] = json!(AUD);
    let token = mint(&partner_key, header(&partner_key), wrong_audience);
    assert_eq!(refused_with(&service, &token).await, "invalid_audience");
}

#[tokio::test]
async fn token_types_are_enforced_when_configured() {
    let (clock, _) = clock();
    let layer = JwtLayer::builder()
        .issuer(issuer().token_type("at+jwt"))
        .clock(clock)
        .build()
        .unwrap();
    let service = service(layer);
    let key = hs_key();
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let token = mint(&key, json!({"alg": "HS256", "typ": typ}), claims());
        assert_eq!(
            send(&service, bearer(&token)).await.status(),
            StatusCode::OK,
            "{typ}"
        );
    }
    for typ in [json!("JWT"), json!("at+jwt2")] {
        let token = mint(&key, json!({"alg": "HS256", "typ": typ}), claims());
        assert_eq!(refused_with(&service, &token).await, "invalid_token_type");
    }
    let untyped = mint(&key, json!({"alg": "HS256"}), claims());
    assert_eq!(refused_with(&service, &untyped).await, "invalid_token_type");
    // `typ` is a string or absent: `null` is not "absent".
    let null = mint(&key, json!({"alg": "HS256", "typ": null}), claims());
    assert_eq!(refused_with(&service, &null).await, "malformed_token");
}

const RFC7515_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RFC7515_PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

/// RFC 7515 appendix A: the published tokens, keys and (expired since 2011) claims.
#[tokio::test]
async fn rfc_7515_appendix_vectors() {
    let hs: Jwk = serde_json::from_value(json!({"kty": "oct", "alg": "HS256",
        "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"})).unwrap();
    let rs: Jwk =
        serde_json::from_value(json!({"kty": "RSA", "n": RFC7515_N, "e": "AQAB"})).unwrap();
    let es: Jwk = serde_json::from_value(json!({"kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
    .unwrap();
    let vectors = [
        (hs, format!("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.{RFC7515_PAYLOAD}.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")),
        (rs, format!("eyJhbGciOiJSUzI1NiJ9.{RFC7515_PAYLOAD}.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw")),
        (es, format!("eyJhbGciOiJFUzI1NiJ9.{RFC7515_PAYLOAD}.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q")),
    ];
    for (jwk, token) in vectors {
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        let algorithm = key.algorithm();
        let layer_at = |at: SystemTime| {
            // The vectors carry no aud and no sub: the issuer takes any audience and
            // names the principal by `iss`.
            let issuer = Issuer::new("joe")
                .accept_any_audience()
                .key(key.clone())
                .subject_claim("iss")
                .unwrap();
            service(
                JwtLayer::builder()
                    .issuer(issuer)
                    .clock(Clock::manual(at).0)
                    .build()
                    .unwrap(),
            )
        };
        // Before its exp the signature verifies and the token is accepted.
        let then = layer_at(UNIX_EPOCH + Duration::from_secs(1_300_819_000));
        let response = send(&then, bearer(&token)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{algorithm:?}: {}",
            response.body()
        );
        let body: Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["id"], "joe");
        // Today it has expired.
        let now = layer_at(SystemTime::now());
        assert_eq!(
            refused_with(&now, &token).await,
            "expired_token",
            "{algorithm:?}"
        );
        // One changed signature byte fails.
        let mut broken = token.clone();
        let last = broken.pop().unwrap();
        broken.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            refused_with(&then, &broken).await.as_str(),
            "invalid_signature" | "malformed_token"
        ));
    }
    // A.5: the unsecured JWS.
    let unsecured = format!("eyJhbGciOiJub25lIn0.{RFC7515_PAYLOAD}.");
    let key = VerifyingKey::hmac(Algorithm::HS256, &[1; 32]).unwrap();
    let service = service(
        JwtLayer::builder()
            .issuer(
                Issuer::new("joe")
                    .accept_any_audience()
                    .key(key)
                    .subject_claim("iss")
                    .unwrap(),
            )
            .clock(Clock::manual(UNIX_EPOCH + Duration::from_secs(1_300_819_000)).0)
            .build()
            .unwrap(),
    );
    assert_eq!(
        refused_with(&service, &unsecured).await,
        "invalid_algorithm"
    );
}

#[tokio::test]
async fn optional_mode_passes_requests_without_a_token_but_not_bad_ones() {
    let (clock, _) = clock();
    let service = service(builder(&clock).mode(Mode::Optional).build().unwrap());
    let response = send(&service, Request::new(())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["id"], Value::Null);
    let basic = Request::builder()
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(())
        .unwrap();
    let response = send(&service, basic).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "another scheme is another layer's"
    );
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["authorization"], true, "and it is left in place");
    assert_eq!(
        refused_with(&service, "e30.e30.AAAA").await,
        "malformed_token"
    );
    assert_eq!(
        refused_with(
            &service,
            &token_for(&SigningKey::generate(Algorithm::HS256).unwrap())
        )
        .await,
        "invalid_signature"
    );
}

#[tokio::test]
async fn a_custom_header_without_a_scheme() {
    let (clock, _) = clock();
    let layer = builder(&clock)
        .header(http::HeaderName::from_static("x-access-token"), "")
        .build()
        .unwrap();
    let service = service(layer);
    let request = Request::builder()
        .header("x-access-token", token())
        .body(())
        .unwrap();
    assert_eq!(send(&service, request).await.status(), StatusCode::OK);
    assert_eq!(
        code(&send(&service, bearer(&token())).await),
        "missing_token"
    );
}

#[tokio::test]
async fn required_scopes_answer_403_with_the_scope() {
    let (clock, _) = clock();
    let service = service(builder(&clock).require_scope("keys:admin").build().unwrap());
    let response = send(&service, bearer(&token())).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(&response), "insufficient_scope");
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("scope=\"keys:admin\""), "{challenge}");
    let service2 = service_with(builder(&clock).require_scope("keys:read"));
    assert_eq!(
        send(&service2, bearer(&token())).await.status(),
        StatusCode::OK
    );
}

pub(crate) fn service_with(builder: JwtLayerBuilder) -> Svc {
    service(builder.build().unwrap())
}

#[tokio::test]
async fn certificate_bound_tokens_need_their_certificate() {
    let (clock, _) = clock();
    let service = service(builder(&clock).build().unwrap());
    let thumbprint = [9u8; 32];
    let mut bound = claims();
    bound["cnf"] = json!({"x5t#S256": URL_SAFE_NO_PAD.encode(thumbprint)});
    let token = mint(&hs_key(), header(&hs_key()), bound);
    assert_eq!(refused_with(&service, &token).await, "certificate_required");
    let mut wrong = bearer(&token);
    wrong
        .extensions_mut()
        .insert(ClientCertThumbprint::from_bytes([8; 32]));
    assert_eq!(code(&send(&service, wrong).await), "certificate_mismatch");
    let mut right = bearer(&token);
    right
        .extensions_mut()
        .insert(ClientCertThumbprint::from_bytes(thumbprint));
    assert_eq!(send(&service, right).await.status(), StatusCode::OK);

    // With no mTLS layer in front, the connection's own verified certificate is hashed:
    // the token works when the leaf's SHA-256 is the bound thumbprint, and only then.
    let leaf = bytes::Bytes::from_static(b"a DER certificate, as the TLS stack verified it");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf);
    let mut bound = claims();
    bound["cnf"] = json!({"x5t#S256": URL_SAFE_NO_PAD.encode(digest.as_ref())});
    let token = mint(&hs_key(), header(&hs_key()), bound);
    let peer = |leaf: bytes::Bytes| portcullis_core::TlsPeer {
        addr: "127.0.0.1:5000".parse().unwrap(),
        chain: Some(vec![leaf].into()),
    };
    let mut on_connection = bearer(&token);
    on_connection.extensions_mut().insert(peer(leaf.clone()));
    assert_eq!(send(&service, on_connection).await.status(), StatusCode::OK);
    let mut other_connection = bearer(&token);
    other_connection
        .extensions_mut()
        .insert(peer(bytes::Bytes::from_static(b"another certificate")));
    assert_eq!(
        code(&send(&service, other_connection).await),
        "certificate_mismatch"
    );
    let mut no_certificate = bearer(&token);
    no_certificate
        .extensions_mut()
        .insert(portcullis_core::TlsPeer {
            addr: "127.0.0.1:5000".parse().unwrap(),
            chain: None,
        });
    assert_eq!(
        code(&send(&service, no_certificate).await),
        "certificate_required"
    );
}

#[tokio::test]
async fn revoked_tokens_are_refused_even_from_the_cache() {
    let (clock, _) = clock();
    let revocations = Revocations::new();
    let service = service(
        builder(&clock)
            .revocations(revocations.clone())
            .build()
            .unwrap(),
    );
    assert_eq!(
        send(&service, bearer(&token())).await.status(),
        StatusCode::OK
    );
    revocations.revoke("t-1", (NOW + 3600) as i64).unwrap();
    assert_eq!(refused_with(&service, &token()).await, "revoked_token");
}

#[tokio::test]
async fn the_cache_skips_verification_until_keys_change() {
    let (clock, _) = clock();
    let dir = std::env::temp_dir().join(format!("portcullis-jwt-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    let key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("file-1");
    std::fs::write(&path, json!({"keys": [key.public_jwk()]}).to_string()).unwrap();
    let layer = JwtLayer::builder()
        .issuer(Issuer::new(ISS).audience(AUD).jwks_file(&path))
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = service(layer);
    let token = token_for(&key);
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(handle.cached_tokens(), 1);
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(handle.cached_tokens(), 1);

    // The key is rotated out of the file: the cached verdict must not outlive it.
    let next = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("file-2");
    std::fs::write(&path, json!({"keys": [next.public_jwk()]}).to_string()).unwrap();
    handle.reload_key_files().unwrap();
    assert_eq!(refused_with(&service, &token).await, "unknown_key");
    assert_eq!(
        send(&service, bearer(&token_for(&next))).await.status(),
        StatusCode::OK
    );

    // A broken file keeps the keys in use.
    std::fs::write(&path, "{ not json").unwrap();
    assert!(handle.reload_key_files().is_err());
    assert_eq!(
        send(&service, bearer(&token_for(&next))).await.status(),
        StatusCode::OK
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Through the layer, however many one-off tokens arrive, the cache stays within its
/// capacity and every token is still answered.
#[tokio::test]
async fn a_full_token_cache_stays_bounded() {
    let (clock, _) = clock();
    let layer = builder(&clock).token_cache(16).build().unwrap();
    let handle = layer.handle();
    let service = service(layer);
    let regular = token();
    for _ in 0..3 {
        assert_eq!(
            send(&service, bearer(&regular)).await.status(),
            StatusCode::OK
        );
    }
    for n in 0..200 {
        let mut claims = claims();
        claims["jti"] = json!(format!("one-off-{n}"));
        let one_off = mint(&hs_key(), header(&hs_key()), claims);
        assert_eq!(
            send(&service, bearer(&one_off)).await.status(),
            StatusCode::OK
        );
        // The regular client keeps calling between the one-offs.
        if n % 4 == 0 {
            assert_eq!(
                send(&service, bearer(&regular)).await.status(),
                StatusCode::OK
            );
        }
    }
    // Bounded; which entries stay is the cache's own test (validator.rs).
    assert!(handle.cached_tokens() <= 16, "{}", handle.cached_tokens());
    assert!(handle.cached_tokens() > 0);
}

/// An account store the tests can block subjects in, counting the questions asked.
#[derive(Clone, Default)]
pub(crate) struct Accounts {
    status: Arc<Mutex<Option<SubjectStatus>>>,
    asked: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Accounts {
    pub(crate) fn set(&self, status: SubjectStatus) {
        *self.status.lock().unwrap() = Some(status);
    }

    pub(crate) fn check(&self) -> impl SubjectCheck {
        let accounts = self.clone();
        move |subject: Subject| {
            let accounts = accounts.clone();
            async move {
                assert_eq!(&*subject.issuer, ISS);
                accounts.asked.fetch_add(1, Ordering::SeqCst);
                if accounts.fail.load(Ordering::SeqCst) {
                    return Err(SubjectCheckError::new("store down"));
                }
                Ok(accounts
                    .status
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or(SubjectStatus::Active))
            }
        }
    }
}

#[tokio::test]
async fn a_blocked_account_is_refused_within_the_cache_time() {
    let (clock, control) = clock();
    let accounts = Accounts::default();
    let layer = builder(&clock)
        .subject_check(accounts.check(), Duration::from_secs(5))
        .build()
        .unwrap();
    let service = service(layer);
    let token = token();
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        accounts.asked.load(Ordering::SeqCst),
        1,
        "the answer is cached"
    );

    accounts.set(SubjectStatus::Blocked);
    control.advance(Duration::from_secs(4));
    assert_eq!(
        send(&service, bearer(&token)).await.status(),
        StatusCode::OK,
        "still cached"
    );
    control.advance(Duration::from_secs(1));
    assert_eq!(refused_with(&service, &token).await, "account_disabled");

    accounts.set(SubjectStatus::Unknown);
    control.advance(Duration::from_secs(5));
    assert_eq!(refused_with(&service, &token).await, "unknown_account");

    accounts.set(SubjectStatus::ActiveWithRoles(vec!["auditor".into()]));
    control.advance(Duration::from_secs(5));
    let response = send(&service, bearer(&token)).await;
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(
        body["roles"],
        json!(["auditor"]),
        "current roles replace the token's"
    );
    assert_eq!(body["scopes"], json!(["keys:read", "keys:sign"]));

    accounts.fail.store(true, Ordering::SeqCst);
    control.advance(Duration::from_secs(5));
    let response = send(&service, bearer(&token)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&response), "account_check_unavailable");
}

#[derive(serde::Deserialize)]
struct MyClaims {
    org: String,
}

#[tokio::test]
async fn typed_claims_reach_handlers_or_refuse_the_token() {
    let (clock, _) = clock();
    let layer = builder(&clock).claims::<MyClaims>().build().unwrap();
    let handler = service_fn(|request: Request<()>| async move {
        let claims = request.extensions().get::<Claims<MyClaims>>().cloned();
        Ok::<_, Infallible>(Response::new(
            claims.map(|c| c.org.clone()).unwrap_or_default(),
        ))
    });
    let service = tower::ServiceBuilder::new().layer(layer).service(handler);
    let response = service.clone().oneshot(bearer(&token())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut without_org = claims();
    without_org.as_object_mut().unwrap().remove("org");
    let token = mint(&hs_key(), header(&hs_key()), without_org);
    let response = service.oneshot(bearer(&token)).await.unwrap();
    assert_eq!(
        response.extensions().get::<Denial>().unwrap().code(),
        "invalid_claims"
    );
}

#[tokio::test]
async fn two_jwt_layers_are_a_misconfiguration() {
    let (clock, _) = clock();
    let inner = builder(&clock).keep_credentials(true).build().unwrap();
    let outer = builder(&clock).keep_credentials(true).build().unwrap();
    let handler =
        service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let service = tower::ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(handler);
    let response = service.oneshot(bearer(&token())).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn configuration_errors_say_what_to_do() {
    assert_eq!(
        JwtLayer::builder().build().unwrap_err(),
        ConfigError::NoIssuer
    );
    let err = JwtLayer::builder()
        .issuer(issuer())
        .issuer(issuer())
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::DuplicateIssuer(ISS.into()));
    let err = JwtLayer::builder()
        .issuer(issuer())
        .header(http::header::AUTHORIZATION, "Bea rer")
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::InvalidScheme(_)));
    let err = JwtLayer::builder()
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .jwks_file("/nonexistent/jwks.json"),
        )
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/jwks.json"), "{err}");
}

#[test]
fn debug_output_holds_no_key_material() {
    let layer = JwtLayer::builder().issuer(issuer()).build().unwrap();
    let text = format!("{layer:?}");
    assert!(text.contains(ISS));
    assert!(!text.contains("42, 42"), "{text}");
    assert!(!text.contains("KioqKi"), "{text}");
}

pub(crate) fn token_issuer(clock: &Clock) -> TokenIssuer {
    TokenIssuer::new(
        SigningKey::generate(Algorithm::EdDSA)
            .unwrap()
            .with_kid("issuer-1"),
        ISS,
        AUD,
    )
    .unwrap()
    .clock(clock.clone())
}

#[tokio::test]
async fn issue_use_extend_use() {
    let (clock, control) = clock();
    let revocations = Revocations::new();
    let accounts = Accounts::default();
    let tokens = token_issuer(&clock)
        .revocations(revocations.clone())
        .subject_check(accounts.check())
        .lifetime(Duration::from_secs(10 * 3600));
    let layer = JwtLayer::builder()
        .issuer(tokens.validating_issuer())
        .revocations(revocations.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let service = service(layer);
    let app = Principal::builder("connector-7", AuthMethod::Certificate)
        .role("operator")
        .scope("keys:sign")
        .build();
    let first = tokens.issue(&app, None).unwrap();
    assert_eq!(first.expires_at(), (NOW + 36_000) as i64);
    assert!(!format!("{first:?}").contains(first.expose()));
    let response = send(&service, bearer(first.expose())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["id"], "connector-7");
    assert_eq!(body["roles"], json!(["operator"]));

    control.advance(Duration::from_secs(9 * 3600));
    let second = tokens.extend(first.expose(), None).await.unwrap();
    assert_eq!(second.expires_at(), (NOW + 9 * 3600 + 36_000) as i64);
    assert_ne!(second.token_id(), first.token_id());
    assert_eq!(
        send(&service, bearer(second.expose())).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        refused_with(&service, first.expose()).await,
        "revoked_token",
        "the old token is revoked"
    );
    assert_eq!(
        tokens.extend(first.expose(), None).await.unwrap_err(),
        JwtRefusal::Revoked
    );

    // Past its exp a token cannot be extended, not even within the layer's leeway.
    control.advance(Duration::from_secs(10 * 3600));
    assert_eq!(
        tokens.extend(second.expose(), None).await.unwrap_err(),
        JwtRefusal::Expired
    );

    // A blocked account cannot extend.
    let third = tokens.issue(&app, None).unwrap();
    accounts.set(SubjectStatus::Blocked);
    assert_eq!(
        tokens.extend(third.expose(), None).await.unwrap_err(),
        JwtRefusal::AccountDisabled
    );

    // A JWT that is not one of this issuer's access tokens is not extended.
    assert_eq!(
        tokens.extend(&token(), None).await.unwrap_err(),
        JwtRefusal::WrongType
    );
    let mut foreign = claims();
    foreign["iss"] = json!("https://other.example");
    let foreign = mint(&hs_key(), json!({"alg": "HS256", "typ": "at+jwt"}), foreign);
    assert_eq!(
        tokens.extend(&foreign, None).await.unwrap_err(),
        JwtRefusal::InvalidIssuer
    );
}

#[tokio::test]
async fn bound_tokens_are_issued_and_extended_only_with_the_certificate() {
    let (clock, _) = clock();
    let tokens = token_issuer(&clock).binding(Binding::Required);
    let app = Principal::builder("connector-7", AuthMethod::Certificate).build();
    assert_eq!(
        tokens.issue(&app, None).unwrap_err(),
        IssueError::NoClientCertificate
    );
    let certificate = ClientCertThumbprint::from_bytes([3; 32]);
    let token = tokens.issue(&app, Some(certificate)).unwrap();
    assert_eq!(
        tokens
            .extend(
                token.expose(),
                Some(ClientCertThumbprint::from_bytes([4; 32]))
            )
            .await
            .unwrap_err(),
        JwtRefusal::CertificateMismatch
    );
    // Without any certificate, the refusal says so (not "another certificate").
    assert_eq!(
        tokens.extend(token.expose(), None).await.unwrap_err(),
        JwtRefusal::CertificateRequired
    );
    assert!(tokens
        .extend(token.expose(), Some(certificate))
        .await
        .is_ok());
}

#[tokio::test]
async fn the_issue_and_extend_services_answer_json() {
    let (clock, _) = clock();
    let tokens = token_issuer(&clock).max_session(Duration::from_secs(3600));
    let mut issue = tokens.issue_service();
    let mut request = Request::post("/token").body(()).unwrap();
    let refused = issue
        .call(Request::post("/token").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.extensions().get::<Denial>().unwrap().code(),
        "authentication_required"
    );
    let wrong_method = issue
        .call(Request::get("/token").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    Authentication::insert_into(
        request.extensions_mut(),
        Principal::builder("partner", AuthMethod::ApiKey)
            .role("reader")
            .build(),
    )
    .unwrap();
    let response = issue.call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 36_000);
    let access = body["access_token"].as_str().unwrap().to_owned();

    let mut extend = tokens.extend_service();
    let response = extend
        .call(
            Request::post("/token/extend")
                .header("authorization", format!("Bearer {access}"))
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = extend
        .call(Request::post("/token/extend").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.extensions().get::<Denial>().unwrap().code(),
        "missing_token"
    );
    let response = extend
        .call(
            Request::post("/token/extend")
                .header("authorization", "Bearer nonsense")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_session_cannot_be_extended_past_its_maximum() {
    let (clock, control) = clock();
    let tokens = token_issuer(&clock)
        .max_session(Duration::from_secs(3000))
        .lifetime(Duration::from_secs(1800));
    let app = Principal::builder("app", AuthMethod::ApiKey).build();
    let first = tokens.issue(&app, None).unwrap();
    control.advance(Duration::from_secs(1700));
    let second = tokens.extend(first.expose(), None).await.unwrap();
    control.advance(Duration::from_secs(1700));
    let third = tokens.extend(second.expose(), None).await;
    assert_eq!(
        third.unwrap_err(),
        JwtRefusal::Expired,
        "auth_time + 50 min has passed"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn validator() -> JwtLayer {
        let (clock, _) = clock();
        builder(&clock).build().unwrap()
    }

    fn outcome(layer: &JwtLayer, token: &str) -> StatusCode {
        let handler = service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let service = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service(handler);
        let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
            return StatusCode::BAD_REQUEST;
        };
        let request = Request::builder()
            .header("authorization", value)
            .body(())
            .unwrap();
        futures::executor::block_on(service.oneshot(request))
            .unwrap()
            .status()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any string is refused, and none makes the layer panic.
        #[test]
        fn arbitrary_input_is_refused(token in "\\PC{0,600}") {
            prop_assert_ne!(outcome(&validator(), &token), StatusCode::OK);
        }

        /// Three base64url parts of anything are refused.
        #[test]
        fn arbitrary_jws_shapes_are_refused(
            header in proptest::collection::vec(any::<u8>(), 0..80),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            signature in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            );
            prop_assert_ne!(outcome(&validator(), &token), StatusCode::OK);
        }

        /// One character of a valid token changed: never accepted.
        #[test]
        fn a_changed_character_is_refused(position in 0usize..10_000, replacement in "[A-Za-z0-9_.-]") {
            let token = token();
            let position = position % token.len();
            let mut changed = token.clone();
            changed.replace_range(position..position + 1, &replacement);
            prop_assume!(changed != token);
            prop_assert_ne!(outcome(&validator(), &changed), StatusCode::OK);
        }
    }
}

/// Every duration and count the builders take: zero where it would make the layer spin
/// or refuse everything is refused by name; huge values never panic; the leeway is
/// kept to the millisecond; a token's lifetime is whole seconds, rounded up.
mod numbers {
    use super::*;

    #[tokio::test]
    async fn zero_settings_are_refused_by_name() {
        for (setting, issuer) in [
            ("refresh_every", issuer().refresh_every(Duration::ZERO)),
            (
                "min_refresh_interval",
                issuer().min_refresh_interval(Duration::ZERO),
            ),
            ("fetch_timeout", issuer().fetch_timeout(Duration::ZERO)),
        ] {
            let error = JwtLayer::builder().issuer(issuer).build().unwrap_err();
            assert!(
                error.to_string().contains(&format!("{setting} is zero")),
                "{error}"
            );
            assert!(error.to_string().contains(ISS), "{error}");
        }
        let error = JwtLayer::builder()
            .issuer(issuer())
            .max_token_size(0)
            .build()
            .unwrap_err();
        assert_eq!(error, ConfigError::ZeroMaxTokenSize);
    }

    #[tokio::test]
    async fn the_largest_durations_never_panic() {
        let (clock, _) = clock();
        let accounts = Accounts::default();
        let layer = JwtLayer::builder()
            .issuer(
                issuer()
                    .leeway(Duration::MAX)
                    .refresh_every(Duration::MAX)
                    .min_refresh_interval(Duration::MAX)
                    .fetch_timeout(Duration::MAX)
                    .max_key_age(Duration::MAX),
            )
            .subject_check(accounts.check(), Duration::MAX)
            .max_token_size(usize::MAX)
            .token_cache(usize::MAX)
            .clock(clock.clone())
            .build()
            .unwrap();
        // Used to add the timeout to the clock and panic.
        assert!(layer.handle().wait_for_keys(Duration::MAX).await);
        let service = service(layer);
        assert_eq!(
            send(&service, bearer(&token())).await.status(),
            StatusCode::OK
        );
        // A second request reads the account answer cached "for ever".
        assert_eq!(
            send(&service, bearer(&token())).await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn the_leeway_is_kept_to_the_millisecond() {
        let (clock, control) = clock();
        let layer = JwtLayer::builder()
            .issuer(issuer().leeway(Duration::from_millis(1500)))
            .clock(clock.clone())
            .token_cache(0)
            .build()
            .unwrap();
        let service = service(layer);
        let token = token();
        // exp = NOW + 3600; with 1.5 s of leeway the token is good until NOW + 3601.5.
        control.set(UNIX_EPOCH + Duration::from_millis((NOW + 3601) * 1000 + 499));
        assert_eq!(
            send(&service, bearer(&token)).await.status(),
            StatusCode::OK
        );
        control.advance(Duration::from_millis(1));
        assert_eq!(refused_with(&service, &token).await, "expired_token");
        // And before nbf: 1.5 s early is fine, 1.501 s is not.
        let early = mint(&hs_key(), header(&hs_key()), {
            let mut c = claims();
            c["nbf"] = json!(NOW + 10);
            c
        });
        control.set(UNIX_EPOCH + Duration::from_millis((NOW + 10) * 1000 - 1500));
        assert_eq!(
            send(&service, bearer(&early)).await.status(),
            StatusCode::OK
        );
        control.set(UNIX_EPOCH + Duration::from_millis((NOW + 10) * 1000 - 1501));
        assert_eq!(refused_with(&service, &early).await, "token_not_yet_valid");
    }

    fn any_duration() -> impl proptest::strategy::Strategy<Value = Duration> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (0u64..10_000_000).prop_map(Duration::from_millis),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any durations and counts: the layer builds or names the setting, and a
        /// built layer answers a valid token with 200 or a 401 `expired_token` (a
        /// leeway cannot make a token expire sooner), an issuer issues, never a panic.
        #[test]
        fn any_numbers_build_or_are_refused_by_name(
            leeway in any_duration(),
            refresh in any_duration(),
            min_interval in any_duration(),
            timeout in any_duration(),
            key_age in any_duration(),
            ttl in any_duration(),
            lifetime in any_duration(),
            max_session in any_duration(),
            max_token_size in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..100_000, proptest::strategy::Just(usize::MAX)],
            cache in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..100, proptest::strategy::Just(usize::MAX)],
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (clock, _) = clock();
                let accounts = Accounts::default();
                let built = JwtLayer::builder()
                    .issuer(
                        issuer()
                            .leeway(leeway)
                            .refresh_every(refresh)
                            .min_refresh_interval(min_interval)
                            .fetch_timeout(timeout)
                            .max_key_age(key_age),
                    )
                    .subject_check(accounts.check(), ttl)
                    .max_token_size(max_token_size)
                    .token_cache(cache)
                    .clock(clock.clone())
                    .build();
                let zero = [refresh, min_interval, timeout].iter().any(Duration::is_zero);
                match built {
                    Ok(layer) => {
                        assert!(!zero && max_token_size > 0);
                        let service = service(layer);
                        let status = send(&service, bearer(&token())).await.status();
                        assert!(
                            status == StatusCode::OK
                                || (status == StatusCode::UNAUTHORIZED && max_token_size < token().len()),
                            "{status}"
                        );
                    }
                    Err(ConfigError::ZeroMaxTokenSize) => assert_eq!(max_token_size, 0),
                    Err(error) => {
                        assert!(zero, "{error}");
                        assert!(error.to_string().contains("is zero"), "{error}");
                    }
                }
                let app = Principal::builder("connector-7", AuthMethod::Certificate).build();
                let issued = token_issuer(&clock)
                    .lifetime(lifetime)
                    .max_session(max_session)
                    .issue(&app, None)
                    .unwrap();
                assert!(issued.expires_at() > NOW as i64);
            });
        }
    }

    #[test]
    fn a_lifetime_is_whole_seconds_rounded_up() {
        let (clock, _) = clock();
        let app = Principal::builder("connector-7", AuthMethod::Certificate).build();
        for (lifetime, seconds) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(60), 60),
            (Duration::MAX, i64::MAX - NOW as i64),
        ] {
            let issued = token_issuer(&clock)
                .lifetime(lifetime)
                .issue(&app, None)
                .unwrap();
            assert_eq!(issued.expires_at() - NOW as i64, seconds, "{lifetime:?}");
        }
    }
}

/// Sessions end with their credential: a token issued to an API key records the key's
/// id, and is refused (`credential_revoked`) once the check says the key is revoked or
/// gone, within the cache time; it cannot be extended either. A check that fails is a
/// 503; tokens of an issuer without a check, and tokens without `cred`, are not asked
/// about.
mod sessions {
    use super::*;
    use portcullis_core::{
        Credential, CredentialCheck, CredentialCheckError, CredentialFuture, CredentialStatus,
    };

    /// Keys by id: good unless listed as revoked; fails when told to.
    #[derive(Clone, Default)]
    struct Keys {
        revoked: Arc<Mutex<Vec<String>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        asked: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Credential>>>,
    }

    impl CredentialCheck for Keys {
        fn checks(&self, method: AuthMethod) -> bool {
            method == AuthMethod::ApiKey
        }

        fn check(&self, credential: &Credential) -> CredentialFuture {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(credential.clone());
            let revoked = self
                .revoked
                .lock()
                .unwrap()
                .iter()
                .any(|id| **id == *credential.id);
            let fail = self.fail.load(Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    return Err(CredentialCheckError::new("store down"));
                }
                Ok(if revoked {
                    CredentialStatus::Revoked
                } else {
                    CredentialStatus::Good
                })
            })
        }
    }

    fn principal(method: AuthMethod, credential: &str) -> Principal {
        Principal::builder("partner-acme", method)
            .credential_id(credential)
            .role("key-admin")
            .build()
    }

    #[tokio::test]
    async fn a_token_ends_with_the_key_it_was_issued_to() {
        let (clock, control) = clock();
        let keys = Keys::default();
        let tokens = token_issuer(&clock).credential_check(keys.clone());
        let layer = JwtLayer::builder()
            .issuer(tokens.validating_issuer())
            .credential_cache(Duration::from_secs(5))
            .clock(clock.clone())
            .build()
            .unwrap();
        let service = service(layer);
        let issued = tokens
            .issue(&principal(AuthMethod::ApiKey, "k-1"), None)
            .unwrap();
        // The claim names the key, never anything secret.
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(issued.expose().split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (payload["cred"].as_str(), payload["auth_method"].as_str()),
            (Some("k-1"), Some("api_key"))
        );

        assert_eq!(
            send(&service, bearer(issued.expose())).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            *keys.seen.lock().unwrap(),
            [Credential {
                method: AuthMethod::ApiKey,
                id: "k-1".into(),
                principal: "partner-acme".into()
            }]
        );
        // Cached: the second request does not ask.
        assert_eq!(
            send(&service, bearer(issued.expose())).await.status(),
            StatusCode::OK
        );
        assert_eq!(keys.asked.load(Ordering::SeqCst), 1);

        keys.revoked.lock().unwrap().push("k-1".into());
        // Within the cache time the old answer stands; after it, the session is over.
        assert_eq!(
            send(&service, bearer(issued.expose())).await.status(),
            StatusCode::OK
        );
        control.advance(Duration::from_secs(5));
        let response = send(&service, bearer(issued.expose())).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.body().contains("credential_revoked"),
            "{}",
            response.body()
        );
        // Nor can it be extended, cache or not.
        assert_eq!(
            tokens.extend(issued.expose(), None).await.unwrap_err(),
            JwtRefusal::CredentialRevoked
        );

        // A failing check refuses with 503, never lets the session on unchecked.
        let other = tokens
            .issue(&principal(AuthMethod::ApiKey, "k-2"), None)
            .unwrap();
        keys.fail.store(true, Ordering::SeqCst);
        let response = send(&service, bearer(other.expose())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.body().contains("credential_check_unavailable"));
        assert_eq!(
            tokens.extend(other.expose(), None).await.unwrap_err(),
            JwtRefusal::CredentialCheckUnavailable
        );
        keys.fail.store(false, Ordering::SeqCst);

        // An extended token keeps naming the key, and ends with it too.
        let extended = tokens.extend(other.expose(), None).await.unwrap();
        assert_eq!(
            send(&service, bearer(extended.expose())).await.status(),
            StatusCode::OK
        );
        keys.revoked.lock().unwrap().push("k-2".into());
        control.advance(Duration::from_secs(5));
        assert_eq!(
            refused_with(&service, extended.expose()).await,
            "credential_revoked"
        );
    }

    #[tokio::test]
    async fn only_the_credentials_the_check_knows_are_asked_about() {
        let (clock, _) = clock();
        let keys = Keys::default();
        keys.revoked.lock().unwrap().push("sha256:ab".into());
        let tokens = token_issuer(&clock).credential_check(keys.clone());
        let layer = JwtLayer::builder()
            .issuer(tokens.validating_issuer())
            .issuer(
                Issuer::new("https://idp.example")
                    .audience(AUD)
                    .key(hs_key().verifying_key()),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        let service = service(layer);
        // A certificate session: the check answers for API keys only.
        let certificate = tokens
            .issue(&principal(AuthMethod::Certificate, "sha256:ab"), None)
            .unwrap();
        assert_eq!(
            send(&service, bearer(certificate.expose())).await.status(),
            StatusCode::OK
        );
        // A principal without a credential id: the token has no `cred`.
        let bare = tokens
            .issue(
                &Principal::builder("partner-acme", AuthMethod::ApiKey).build(),
                None,
            )
            .unwrap();
        assert_eq!(
            send(&service, bearer(bare.expose())).await.status(),
            StatusCode::OK
        );
        // Another issuer's token with a `cred` claim: that issuer checks nothing.
        let foreign = mint(&hs_key(), header(&hs_key()), {
            let mut c = claims();
            c["iss"] = json!("https://idp.example");
            c["cred"] = json!("sha256:ab");
            c["auth_method"] = json!("api_key");
            c
        });
        assert_eq!(
            send(&service, bearer(&foreign)).await.status(),
            StatusCode::OK
        );
        assert_eq!(keys.asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_mistyped_credential_claim_is_refused() {
        let (clock, _) = clock();
        let key = hs_key();
        let checked = Issuer::new(ISS)
            .audience(AUD)
            .key(key.verifying_key())
            .credential_check(Keys::default());
        let layer = JwtLayer::builder()
            .issuer(checked)
            .clock(clock.clone())
            .build()
            .unwrap();
        let service = service(layer);
        for (cred, method) in [
            (json!(7), json!("api_key")),
            (json!(""), json!("api_key")),
            (json!("k\u{1}"), json!("api_key")),
            (json!("k-1"), json!("password")),
            (json!("k-1"), json!(null)),
            (json!("k-1"), json!(["api_key"])),
        ] {
            let token = mint(&key, header(&key), {
                let mut c = claims();
                c["cred"] = cred.clone();
                if !method.is_null() {
                    c["auth_method"] = method.clone();
                }
                c
            });
            assert_eq!(
                refused_with(&service, &token).await,
                "invalid_claims",
                "{cred} {method}"
            );
        }
    }
}
