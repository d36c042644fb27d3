//! What an attacker tries against the token's form: repeated members, mistyped header
//! parameters and claims, encryption parameters, unexpected types, dirty identifiers,
//! colliding issuers, loose `Authorization` values and weak keys. Each class is tested
//! as a class: every member of a small class, or a property over a large one.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Request, StatusCode};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::tests::{
    bearer, builder, claims, clock, code, header, hs_key, issuer, mint, refused_with, send,
    service, Svc, AUD, ISS,
};
use crate::*;

/// Signs header and claims given as raw JSON text, so tests can write what `json!`
/// cannot: repeated members, escaped names, odd top-level values.
fn mint_raw(key: &SigningKey, header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{signature}")
}

/// Runs a future to completion on a fresh runtime, for property tests.
fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn default_service() -> Svc {
    let (clock, _) = clock();
    service(builder(&clock).build().unwrap())
}

/// The valid claims as JSON text without the closing brace, to append members to.
fn claims_prefix() -> String {
    let text = claims().to_string();
    text[..text.len() - 1].to_owned()
}

const HEADER: &str = r#"{"alg":"HS256","kid":"hs"}"#;

async fn accepted(service: &Svc, token: &str) -> Value {
    let response = send(service, bearer(token)).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", code(&response));
    serde_json::from_str(response.body()).unwrap()
}

/// JSON text of a member name, written plainly or with some letters as `\u` escapes.
fn spell(name: &str, escaped: u32) -> String {
    let mut out = String::from("\"");
    for (index, c) in name.chars().enumerate() {
        if escaped & (1 << (index % 32)) != 0 && c.is_ascii() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

#[tokio::test]
async fn the_baseline_token_is_accepted() {
    let service = default_service();
    let token = mint_raw(&hs_key(), HEADER, &claims().to_string());
    let body = accepted(&service, &token).await;
    assert_eq!(body["id"], "app-7");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A member name given twice, at any depth, in the claims, with equal or different
    /// values and either spelling escaped: always `malformed_token`.
    #[test]
    fn repeated_claim_members_are_malformed(
        name in prop_oneof![
            Just("sub".to_owned()), Just("scope".to_owned()), Just("roles".to_owned()),
            Just("exp".to_owned()), Just("iss".to_owned()), Just("aud".to_owned()),
            Just("jti".to_owned()), Just("org".to_owned()), Just("cnf".to_owned()),
            "[a-z_]{1,12}",
        ],
        depth in 0usize..4,
        same_value in any::<bool>(),
        escaped_first in any::<u32>(),
        escaped_second in any::<u32>(),
    ) {
        let first = if same_value { "\"x\"" } else { "\"first\"" };
        let mut nested = format!(
            "{{{}:{first},{}:\"x\"}}",
            spell(&name, escaped_first),
            spell(&name, escaped_second)
        );
        for level in 0..depth {
            nested = match level % 2 {
                0 => format!("{{\"n{level}\":{nested}}}"),
                _ => format!("[1,{nested}]"),
            };
        }
        let claims = if depth == 0 {
            format!("{},{}", claims_prefix(), &nested[1..])
        } else {
            format!("{},\"extra\":{nested}}}", claims_prefix())
        };
        let token = mint_raw(&hs_key(), HEADER, &claims);
        let code = run(refused_with(&default_service(), &token));
        prop_assert_eq!(code, "malformed_token");
    }

    /// The same in the header.
    #[test]
    fn repeated_header_members_are_malformed(
        name in prop_oneof![
            Just("alg".to_owned()), Just("kid".to_owned()), Just("typ".to_owned()),
            "[a-z]{1,8}",
        ],
        escaped in any::<u32>(),
    ) {
        let value = match name.as_str() {
            "alg" => "\"HS256\"",
            "kid" => "\"hs\"",
            "typ" => "\"JWT\"",
            _ => "1",
        };
        let repeated = format!("{}:{value}", spell(&name, escaped));
        let header = format!("{{\"alg\":\"HS256\",\"kid\":\"hs\",\"typ\":\"JWT\",{repeated}}}");
        let header = if matches!(name.as_str(), "alg" | "kid" | "typ") {
            header
        } else {
            // The name is new: give it twice.
            header.replacen('}', &format!(",{repeated}}}"), 1)
        };
        let token = mint_raw(&hs_key(), &header, &claims().to_string());
        let code = run(refused_with(&default_service(), &token));
        prop_assert_eq!(code, "malformed_token");
    }
}

#[tokio::test]
async fn the_header_is_an_object_whose_members_have_their_types() {
    let service = default_service();
    let key = hs_key();
    let claims = claims().to_string();
    let malformed = [
        r#"[]"#,
        r#"["alg","HS256"]"#,
        r#""HS256""#,
        "1",
        "null",
        "true",
        r#"{"alg":"HS256","kid":1}"#,
        r#"{"alg":"HS256","kid":null}"#,
        r#"{"alg":"HS256","kid":["hs"]}"#,
        r#"{"alg":"HS256","kid":"hs","typ":1}"#,
        r#"{"alg":"HS256","kid":"hs","typ":{}}"#,
        r#"{"alg":"HS256","kid":"hs","typ":null}"#,
        // `crit` is a non-empty array of names, or absent.
        r#"{"alg":"HS256","kid":"hs","crit":null}"#,
        r#"{"alg":"HS256","kid":"hs","crit":[]}"#,
        r#"{"alg":"HS256","kid":"hs","crit":"exp"}"#,
        r#"{"alg":"HS256","kid":"hs","crit":[1]}"#,
        r#"{"alg":"HS256","kid":"hs","crit":{}}"#,
        r#"{"alg":["HS256"],"kid":"hs"}"#,
    ];
    for header in malformed {
        let token = mint_raw(&key, header, &claims);
        assert_eq!(
            refused_with(&service, &token).await,
            "malformed_token",
            "{header}"
        );
    }
    // A well-formed `crit` names extensions this layer does not understand.
    for crit in [r#"["b64"]"#, r#"["exp"]"#, r#"["a","b"]"#] {
        let header = format!(r#"{{"alg":"HS256","kid":"hs","crit":{crit}}}"#);
        let token = mint_raw(&key, &header, &claims);
        assert_eq!(
            refused_with(&service, &token).await,
            "unsupported_critical_header",
            "{crit}"
        );
    }
}

#[tokio::test]
async fn encryption_parameters_in_a_signed_token_are_refused() {
    let service = default_service();
    let key = hs_key();
    for name in ["enc", "zip", "epk", "apu", "apv", "p2s", "p2c", "iv", "tag"] {
        for value in [json!("A256GCM"), json!(1), json!(null), json!({})] {
            let mut header = header(&key);
            header[name] = value.clone();
            let token = mint(&key, header, claims());
            assert_eq!(
                refused_with(&service, &token).await,
                "malformed_token",
                "{name}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn without_a_configured_type_only_access_token_types_pass() {
    let service = default_service();
    let key = hs_key();
    for typ in [
        "JWT",
        "jwt",
        "application/JWT",
        "Application/jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
    ] {
        let mut header = header(&key);
        header["typ"] = json!(typ);
        accepted(&service, &mint(&key, header, claims())).await;
    }
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/logout+jwt",
        "token-introspection+jwt",
        "JOSE",
        "JOSE+JSON",
        "",
        "JWT ",
        " JWT",
        "application/",
        "at+jwt;x=1",
        "JWTX",
        // Found by fuzzing: a multi-byte character across the 12th byte used to panic.
        "a:1900000t\u{755}wt",
        "applicationé",
    ] {
        let mut header = header(&key);
        header["typ"] = json!(typ);
        assert_eq!(
            refused_with(&service, &mint(&key, header, claims())).await,
            "invalid_token_type",
            "{typ:?}"
        );
    }
}

/// A claims object with `name` set to `value`, the rest valid.
fn with_claim(name: &str, value: Value) -> Value {
    let mut claims = claims();
    claims[name] = value;
    claims
}

#[tokio::test]
async fn mapped_claims_of_the_wrong_type_are_invalid_claims() {
    let (clock, _) = clock();
    let service = service(
        JwtLayer::builder()
            .issuer(issuer().tier_claim("tier").unwrap())
            .clock(clock)
            .build()
            .unwrap(),
    );
    let key = hs_key();
    let cases: Vec<(&str, Value)> = vec![
        ("roles", json!("operator")),
        ("roles", json!(["operator", 1])),
        ("roles", json!([["operator"]])),
        ("roles", json!([""])),
        ("roles", json!(["oper\u{0}ator"])),
        ("roles", json!(["oper\nator"])),
        ("roles", json!(null)),
        ("roles", json!({"operator": true})),
        ("roles", json!(true)),
        ("scope", json!(["keys:read"])),
        ("scope", json!("keys:read  keys:sign")),
        ("scope", json!("keys:read\tkeys:sign")),
        ("scope", json!("keys:read\nkeys:sign")),
        ("scope", json!(" keys:read")),
        ("scope", json!("keys:read ")),
        ("scope", json!("")),
        ("scope", json!("keys:\"read")),
        ("scope", json!("keys:\\read")),
        ("scope", json!("clé")),
        ("scope", json!(null)),
        ("scope", json!(7)),
        ("scp", json!("keys:read")),
        ("scp", json!(["keys:read", ""])),
        ("scp", json!(["keys read"])),
        ("scp", json!(["keys:read", 2])),
        ("scp", json!(null)),
        ("org", json!(7)),
        ("org", json!(["acme"])),
        ("org", json!(null)),
        ("org", json!("")),
        ("org", json!("ac\u{1b}me")),
        ("tier", json!(3)),
        ("tier", json!({"name": "gold"})),
        ("tier", json!("gold\r")),
    ];
    for (name, value) in cases {
        let token = mint(&key, header(&key), with_claim(name, value.clone()));
        assert_eq!(
            refused_with(&service, &token).await,
            "invalid_claims",
            "{name}: {value}"
        );
    }
    let token = mint(
        &key,
        header(&key),
        with_claim(
            "scp",
            json!(["keys:read", "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~"]),
        ),
    );
    let body = accepted(&service, &token).await;
    assert_eq!(
        body["scopes"],
        json!([
            "keys:read",
            "keys:sign",
            "keys:read",
            "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~"
        ])
        .as_array()
        .map(|scopes| {
            let mut seen: Vec<Value> = Vec::new();
            for scope in scopes {
                if !seen.contains(scope) {
                    seen.push(scope.clone());
                }
            }
            Value::Array(seen)
        })
        .unwrap()
    );
}

/// The reference definition of a valid `scope` string (RFC 6749 3.3).
fn valid_scope(text: &str) -> bool {
    text.split(' ').all(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any `scope` string: accepted exactly when it is valid, and then its scopes are
    /// exactly its tokens.
    #[test]
    fn scope_strings_are_accepted_exactly_when_valid(
        scope in prop_oneof![
            "[ -~]{0,24}",
            "[a-z:]{1,6}( [a-z:]{1,6}){0,3}",
            "[a-z \t\n\r\u{0}\u{7f}\u{85}é\"\\\\]{0,16}",
        ]
    ) {
        let key = hs_key();
        let token = mint(&key, header(&key), with_claim("scope", json!(scope)));
        let response = run(send(&default_service(), bearer(&token)));
        if valid_scope(&scope) {
            prop_assert_eq!(response.status(), StatusCode::OK);
            let body: Value = serde_json::from_str(response.body()).unwrap();
            let mut expected: Vec<&str> = Vec::new();
            for token in scope.split(' ') {
                if !expected.contains(&token) {
                    expected.push(token);
                }
            }
            prop_assert_eq!(&body["scopes"], &json!(expected));
        } else {
            prop_assert_eq!(code(&response), "invalid_claims");
        }
    }

    /// A subject with any control character in it is refused.
    #[test]
    fn subjects_with_control_characters_are_refused(
        before in "[a-z]{0,6}",
        control in prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
            Just('\u{7f}'),
            (0x80u32..0xa0).prop_map(|c| char::from_u32(c).unwrap()),
        ],
        after in "[a-z]{0,6}",
    ) {
        let key = hs_key();
        let sub = format!("{before}{control}{after}");
        let token = mint(&key, header(&key), with_claim("sub", json!(sub)));
        let code = run(refused_with(&default_service(), &token));
        prop_assert_eq!(code, "invalid_claims");
    }
}

#[tokio::test]
async fn subjects_of_another_type_are_refused() {
    let service = default_service();
    let key = hs_key();
    for sub in [
        json!(7),
        json!(null),
        json!(["app-7"]),
        json!({}),
        json!(""),
        json!(true),
    ] {
        let token = mint(&key, header(&key), with_claim("sub", sub.clone()));
        assert_eq!(
            refused_with(&service, &token).await,
            "invalid_claims",
            "{sub}"
        );
    }
}

#[tokio::test]
async fn equal_subjects_of_two_issuers_are_two_principals() {
    let (clock, _) = clock();
    let other_key = SigningKey::hmac(Algorithm::HS256, &[9; 32])
        .unwrap()
        .with_kid("other");
    let service = service(
        JwtLayer::builder()
            .issuer(issuer().alias("corp"))
            .issuer(
                Issuer::new("https://partner.example")
                    .audience(AUD)
                    .key(other_key.verifying_key()),
            )
            .clock(clock)
            .build()
            .unwrap(),
    );
    let ours = mint(&hs_key(), header(&hs_key()), claims());
    let mut theirs_claims = claims();
    theirs_claims["iss"] = json!("https://partner.example");
    let theirs = mint(&other_key, header(&other_key), theirs_claims);
    let ours = accepted(&service, &ours).await;
    let theirs = accepted(&service, &theirs).await;
    assert_eq!(ours["id"], "corp#app-7");
    assert_eq!(theirs["id"], "https://partner.example#app-7");
    // Handlers still read the raw subject from the claims.
    assert_eq!(ours["claims"], "app-7");
    assert_eq!(theirs["claims"], "app-7");
}

#[test]
fn issuer_aliases_are_checked() {
    let second = || {
        Issuer::new("https://partner.example")
            .audience(AUD)
            .key(hs_key().verifying_key())
    };
    let build = |a: Issuer, b: Issuer| JwtLayer::builder().issuer(a).issuer(b).build();
    let same = build(issuer().alias("x"), second().alias("x")).unwrap_err();
    assert!(same.to_string().contains("unique"), "{same}");
    for bad in ["", "a#b", "a b", "a\tb", "a\u{0}"] {
        let error = build(issuer().alias(bad), second()).unwrap_err();
        assert!(error.to_string().contains("alias"), "{bad:?}: {error}");
    }
    // An issuer named with '#' needs an alias once the layer has several issuers.
    let hashed = Issuer::new("https://idp.example/#x")
        .audience(AUD)
        .key(hs_key().verifying_key());
    assert!(build(hashed.clone(), second()).is_err());
    assert!(build(hashed.alias("idp"), second()).is_ok());
    assert!(JwtLayer::builder()
        .issuer(issuer().alias("a b"))
        .build()
        .is_err());
}

/// The request with these `Authorization` lines.
fn with_lines(lines: &[&str]) -> Request<()> {
    let mut request = Request::new(());
    for line in lines {
        request.headers_mut().append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(line).unwrap(),
        );
    }
    request
}

#[tokio::test]
async fn the_authorization_value_is_parsed_exactly_in_both_modes() {
    let (clock, _) = clock();
    let required = service(builder(&clock).build().unwrap());
    let optional = service(builder(&clock).mode(Mode::Optional).build().unwrap());
    let key = hs_key();
    let token = mint(&key, header(&key), claims());
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let line = format!("{scheme} {token}");
        for service in [&required, &optional] {
            let response = send(service, with_lines(&[&line])).await;
            assert_eq!(response.status(), StatusCode::OK, "{scheme}");
        }
    }
    let malformed = [
        format!("Bearer\t{token}"),
        format!("Bearer  {token}"),
        format!("Bearer {token} "),
        format!("Bearer {token}\t"),
        format!("Bearer \t{token}"),
        format!("Bearer,{token}"),
        format!("Bearer {token} extra"),
        format!("Bearer {token},"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Bearer  ".to_owned(),
        "bearer\t".to_owned(),
    ];
    for line in &malformed {
        for service in [&required, &optional] {
            let response = send(service, with_lines(&[line])).await;
            assert_eq!(code(&response), "malformed_token", "{line:?}");
        }
    }
    // Two bearer lines, equal or not, in any order with another scheme's line.
    let good = format!("Bearer {token}");
    for lines in [
        vec![good.as_str(), good.as_str()],
        vec![good.as_str(), "Bearer e30.e30.AAAA"],
        vec!["Basic dXNlcjpwYXNz", good.as_str(), good.as_str()],
    ] {
        for service in [&required, &optional] {
            let response = send(service, with_lines(&lines)).await;
            assert_eq!(code(&response), "malformed_token", "{lines:?}");
        }
    }
    // Another scheme is another layer's: not an attempt, and it stays in place while
    // the bearer line is removed.
    for service in [&required, &optional] {
        let response = send(service, with_lines(&["Basic dXNlcjpwYXNz", &good])).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["authorization"], true);
    }
    for other in [
        "Basic dXNlcjpwYXNz",
        "Bearerish abc",
        "ApiKey pck_x",
        "Bearer-Token x",
    ] {
        let response = send(&optional, with_lines(&[other])).await;
        assert_eq!(response.status(), StatusCode::OK, "{other}");
        let response = send(&required, with_lines(&[other])).await;
        assert_eq!(code(&response), "missing_token", "{other}");
    }
}

#[tokio::test]
async fn only_the_bearer_line_is_removed() {
    let (clock, _) = clock();
    let layer = builder(&clock).build().unwrap();
    let key = hs_key();
    let token = mint(&key, header(&key), claims());
    let handler = tower::service_fn(|request: Request<()>| async move {
        let lines: Vec<String> = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        Ok::<_, std::convert::Infallible>(http::Response::new(lines.join("|")))
    });
    let service = tower::ServiceBuilder::new().layer(layer).service(handler);
    let request = with_lines(&["ApiKey pck_a", &format!("Bearer {token}"), "Basic x"]);
    let response = tower::ServiceExt::oneshot(service, request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"ApiKey pck_a|Basic x");
}

/// DER of an RSA public key (PKCS#1) with this modulus and exponent, as PEM.
fn rsa_public_pem(n: &[u8], e: &[u8]) -> String {
    fn integer(bytes: &[u8]) -> Vec<u8> {
        // Minimal encoding: no leading zero bytes, one zero byte for a high bit.
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        let mut value = bytes[start..].to_vec();
        if value.first().is_some_and(|b| b & 0x80 != 0) {
            value.insert(0, 0);
        }
        tlv(0x02, &value)
    }
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match value.len() {
            len @ 0..=0x7f => out.push(len as u8),
            len @ 0x80..=0xff => out.extend([0x81, len as u8]),
            len => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(value);
        out
    }
    let mut body = integer(n);
    body.extend(integer(e));
    let der = tlv(0x30, &body);
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

#[test]
fn weak_rsa_exponents_are_refused_from_pem_and_jwk() {
    let signing = SigningKey::generate(Algorithm::RS256).unwrap();
    let jwk = serde_json::to_value(signing.public_jwk()).unwrap();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let good = [
        vec![1, 0, 1],
        vec![1, 0, 3],
        vec![0, 1, 0, 1],
        vec![0x7f, 0xff, 0xff, 0xff],
    ];
    let weak = [
        vec![1],
        vec![3],
        vec![0, 3],
        vec![17],
        vec![1, 0, 0],
        vec![1, 0, 2],
        vec![0xff, 0xfe],
        vec![0],
        vec![],
    ];
    for e in &good {
        VerifyingKey::rsa_pem(Algorithm::RS256, rsa_public_pem(&n, e).as_bytes())
            .unwrap_or_else(|error| panic!("{e:?}: {error}"));
        let mut jwk = jwk.clone();
        jwk["e"] = json!(URL_SAFE_NO_PAD.encode(e));
        let jwk: Jwk = serde_json::from_value(jwk).unwrap();
        VerifyingKey::from_jwk(&jwk).unwrap_or_else(|error| panic!("{e:?}: {error}"));
    }
    for e in &weak {
        if !e.is_empty() {
            let error = VerifyingKey::rsa_pem(Algorithm::RS256, rsa_public_pem(&n, e).as_bytes())
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    KeyError::WeakRsaExponent { .. } | KeyError::Unreadable(_)
                ),
                "{e:?}: {error}"
            );
        }
        let mut jwk = jwk.clone();
        jwk["e"] = json!(URL_SAFE_NO_PAD.encode(e));
        jwk["kid"] = json!("weak-1");
        let jwk: Jwk = serde_json::from_value(jwk).unwrap();
        let error = VerifyingKey::from_jwk(&jwk).unwrap_err();
        assert!(
            matches!(
                error,
                KeyError::WeakRsaExponent { .. } | KeyError::Unreadable(_)
            ),
            "{e:?}: {error}"
        );
        if matches!(error, KeyError::WeakRsaExponent { .. }) {
            assert!(error.to_string().contains("\"weak-1\""), "{error}");
        }
    }
}

#[test]
fn ec_points_off_the_curve_are_refused_from_pem_and_jwk() {
    for (algorithm, spki_prefix) in [
        (
            Algorithm::ES256,
            "3059301306072a8648ce3d020106082a8648ce3d030107034200",
        ),
        (
            Algorithm::ES384,
            "3076301006072a8648ce3d020106052b81040022036200",
        ),
    ] {
        let signing = SigningKey::generate(algorithm).unwrap();
        let jwk = serde_json::to_value(signing.public_jwk()).unwrap();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        let pem = |x: &[u8], y: &[u8]| {
            let mut der = hex::decode(spki_prefix).unwrap();
            der.push(4);
            der.extend_from_slice(x);
            der.extend_from_slice(y);
            let text = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n")
        };
        VerifyingKey::ec_pem(algorithm, pem(&x, &y).as_bytes()).unwrap();
        for flip in [0usize, 7, y.len() - 1] {
            let mut bad_y = y.clone();
            bad_y[flip] ^= 1;
            let error = VerifyingKey::ec_pem(algorithm, pem(&x, &bad_y).as_bytes()).unwrap_err();
            assert!(
                matches!(
                    error,
                    KeyError::InvalidEcPoint { .. } | KeyError::Unreadable(_)
                ),
                "{algorithm:?}: {error}"
            );
            let mut bad = jwk.clone();
            bad["y"] = json!(URL_SAFE_NO_PAD.encode(&bad_y));
            bad["kid"] = json!("off-curve");
            let bad: Jwk = serde_json::from_value(bad).unwrap();
            let error = VerifyingKey::from_jwk(&bad).unwrap_err();
            assert!(
                matches!(
                    error,
                    KeyError::InvalidEcPoint { .. } | KeyError::Unreadable(_)
                ),
                "{algorithm:?}: {error}"
            );
        }
        // The point at x = y = 0 is on no curve used here.
        let zero = vec![0u8; x.len()];
        assert!(VerifyingKey::ec_pem(algorithm, pem(&zero, &zero).as_bytes()).is_err());
    }
}

#[test]
fn a_weak_key_in_a_jwks_file_is_skipped_and_the_rest_load() {
    let good = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("good");
    let mut weak = serde_json::to_value(
        SigningKey::generate(Algorithm::RS256)
            .unwrap()
            .with_kid("weak")
            .public_jwk(),
    )
    .unwrap();
    weak["e"] = json!("Aw");
    let jwks = json!({ "keys": [weak, good.public_jwk()] });
    let dir = std::env::temp_dir().join(format!("portcullis-jwks-weak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let keys = crate::keyset::read_jwks_file(&path).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid().map(str::to_owned)).collect();
    assert_eq!(kids, [Some("good".to_owned())]);
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = ISS;
}

/// Every `TokenIssuer` builder called on a clone of an issuer still in use takes effect
/// on the clone and leaves the original alone (copy on write, not a silent no-op).
#[tokio::test]
async fn token_issuer_builders_on_a_clone_take_effect() {
    use crate::tests::{token_issuer, Accounts};
    use portcullis_core::{AuthMethod, Principal};

    let (clock, _) = clock();
    let base = token_issuer(&clock);
    let app = Principal::builder("app-7", AuthMethod::ApiKey).build();

    let bound = base.clone().binding(Binding::Required);
    assert!(matches!(
        bound.issue(&app, None),
        Err(IssueError::NoClientCertificate)
    ));
    assert!(base.issue(&app, None).is_ok());

    let short = base.clone().lifetime(Duration::from_secs(60));
    let claims = |token: &IssuedToken| -> Value {
        let payload = token.expose().split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    let (a, b) = (
        short.issue(&app, None).unwrap(),
        base.issue(&app, None).unwrap(),
    );
    let life =
        |t: &IssuedToken| claims(t)["exp"].as_i64().unwrap() - claims(t)["iat"].as_i64().unwrap();
    assert_eq!((life(&a), life(&b)), (60, 10 * 3600));

    let revocations = Revocations::new();
    let revoking = base.clone().revocations(revocations.clone());
    let old = revoking.issue(&app, None).unwrap();
    revoking.extend(old.expose(), None).await.unwrap();
    let old_jti = claims(&old)["jti"].as_str().unwrap().to_owned();
    assert!(
        revocations.is_revoked(&old_jti),
        "the clone revokes what it extends"
    );
    let kept = base.issue(&app, None).unwrap();
    base.extend(kept.expose(), None).await.unwrap();
    base.extend(kept.expose(), None)
        .await
        .expect("the original keeps no list");

    let accounts = Accounts::default();
    accounts.set(SubjectStatus::Blocked);
    let checking = base.clone().subject_check(accounts.check());
    let token = checking.issue(&app, None).unwrap();
    assert_eq!(
        checking.extend(token.expose(), None).await.unwrap_err(),
        JwtRefusal::AccountDisabled
    );
    assert!(base.extend(token.expose(), None).await.is_ok());

    let capped = base.clone().max_session(Duration::ZERO);
    let token = capped.issue(&app, None).unwrap();
    assert_eq!(
        capped.extend(token.expose(), None).await.unwrap_err(),
        JwtRefusal::Expired
    );
    assert!(base.extend(token.expose(), None).await.is_ok());
}
