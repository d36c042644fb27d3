//! Tokens through `JwtLayer`, cached and uncached.
//!
//! The first byte picks the input's form: an arbitrary `Authorization` value, or a
//! header and claims (split at the first 0xFF) that are base64url-encoded and signed
//! with the layer's own key, so that every byte reaches the claim checks.
//!
//! Invariants: no panic; never a 5xx; the cached layer (first and second call) and the
//! uncached one decide the same; an accepted token's header and claims are JSON objects
//! with no member name repeated at any depth (checked by an independent reader), a
//! string `sub` without control characters that is the principal's id, an accepted
//! `typ`, and scopes that are RFC 6749 scope tokens.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{
    AuthMethod, Authentication, Clock, Credential, CredentialCheck, CredentialFuture,
    CredentialStatus, Denial,
};
use portcullis_jwt::jsonwebtoken::Algorithm;
use portcullis_jwt::{Issuer, JwtLayer, SigningKey};
use tower::{Layer, ServiceExt};

const NOW: u64 = 1_900_000_000;

/// What the inner service saw: the principal's id and scopes.
type Seen = Arc<Mutex<Option<(String, Vec<String>)>>>;

/// The credential check: every API key is good but the one with id `revoked`.
struct Keys;

impl CredentialCheck for Keys {
    fn checks(&self, method: AuthMethod) -> bool {
        method == AuthMethod::ApiKey
    }

    fn check(&self, credential: &Credential) -> CredentialFuture {
        let revoked = &*credential.id == "revoked";
        Box::pin(async move {
            Ok(if revoked {
                CredentialStatus::Revoked
            } else {
                CredentialStatus::Good
            })
        })
    }
}

struct Setup {
    hmac: aws_lc_rs::hmac::Key,
    cached: JwtLayer,
    uncached: JwtLayer,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let key = SigningKey::hmac(Algorithm::HS256, &[42; 32])
            .unwrap()
            .with_kid("hs");
        let (clock, _) = Clock::manual(UNIX_EPOCH + Duration::from_secs(NOW));
        let layer = |cache: usize| {
            JwtLayer::builder()
                .issuer(
                    Issuer::new("https://auth.example")
                        .audience("api")
                        .key(key.verifying_key())
                        .attribute_claim("org", "org")
                        .unwrap()
                        .tier_claim("tier")
                        .unwrap()
                        .credential_check(Keys),
                )
                .token_cache(cache)
                .clock(clock.clone())
                .build()
                .unwrap()
        };
        Setup {
            cached: layer(1_000),
            uncached: layer(0),
            hmac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[42; 32]),
        }
    })
}

fn call(
    layer: &JwtLayer,
    value: &HeaderValue,
) -> (
    StatusCode,
    Option<&'static str>,
    Option<(String, Vec<String>)>,
) {
    let seen: Seen = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |request: Request<()>| {
            let seen = seen.clone();
            async move {
                let auth = Authentication::from_extensions(request.extensions());
                if let Some(principal) = auth.get(AuthMethod::Jwt) {
                    *seen.lock().unwrap() =
                        Some((principal.id().to_owned(), principal.scopes().to_vec()));
                }
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            }
        })
    };
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, value.clone());
    let response = futures::executor::block_on(layer.layer(inner).oneshot(request)).unwrap();
    let code = response.extensions().get::<Denial>().map(|d| d.code());
    let principal = seen.lock().unwrap().take();
    (response.status(), code, principal)
}

/// An independent reader: whether any object in `bytes` repeats a member name.
fn has_repeated_member(bytes: &[u8]) -> Option<bool> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> Visitor<'de> for Check {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("json")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut repeated = false;
            while let Some(inner) = seq.next_element_seed(Seed)? {
                repeated |= inner;
            }
            Ok(repeated)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut names = std::collections::BTreeSet::new();
            let mut repeated = false;
            while let Some(name) = map.next_key::<String>()? {
                repeated |= !names.insert(name);
                repeated |= map.next_value_seed(Seed)?;
            }
            Ok(repeated)
        }
    }
    struct Seed;
    impl<'de> serde::de::DeserializeSeed<'de> for Seed {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(Check)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let repeated = serde::de::DeserializeSeed::deserialize(Seed, &mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(repeated)
}

fn scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let setup = setup();
    let signed = form & 1 == 1;
    let (value, parts) = if signed {
        let (header, claims) = match rest.iter().position(|b| *b == 0xff) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (&br#"{"alg":"HS256","kid":"hs"}"#[..], rest),
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = aws_lc_rs::hmac::sign(&setup.hmac, input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(tag.as_ref());
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {input}.{signature}")) else {
            return;
        };
        (value, Some((header, claims)))
    } else {
        let Ok(value) = HeaderValue::from_bytes(rest) else {
            return;
        };
        (value, None)
    };

    let uncached = call(&setup.uncached, &value);
    let first = call(&setup.cached, &value);
    let second = call(&setup.cached, &value);
    assert_eq!(uncached.0, first.0, "cached and uncached disagree");
    assert_eq!(uncached.1, first.1);
    assert_eq!(first.0, second.0, "a cached decision changed");
    assert_eq!(first.1, second.1);
    assert_eq!(first.2, second.2);
    assert!(!uncached.0.is_server_error(), "{:?}", uncached);
    let Some((id, scopes)) = uncached.2 else {
        assert_ne!(uncached.0, StatusCode::OK, "allowed without a principal");
        return;
    };
    assert_eq!(uncached.0, StatusCode::OK);
    for scope in &scopes {
        assert!(scope_token(scope), "scope {scope:?}");
    }
    if let Some((header, claims)) = parts {
        assert_eq!(
            has_repeated_member(header),
            Some(false),
            "header with a repeated member accepted"
        );
        assert_eq!(
            has_repeated_member(claims),
            Some(false),
            "claims with a repeated member accepted"
        );
        let header: serde_json::Value = serde_json::from_slice(header).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(claims).unwrap();
        if let Some(typ) = header.get("typ") {
            let typ = typ.as_str().expect("typ is a string").to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            assert!(typ == "jwt" || typ == "at+jwt", "typ {typ}");
        }
        let sub = claims["sub"].as_str().expect("sub is a string");
        assert!(!sub.is_empty() && !sub.chars().any(char::is_control));
        assert_eq!(id, sub);
        // A token that names the credential it was issued to is allowed only with a
        // clean id, a known method, and a credential the check says is good.
        if let Some(cred) = claims.get("cred") {
            let cred = cred.as_str().expect("cred is a string");
            assert!(!cred.is_empty() && !cred.chars().any(char::is_control));
            let method = claims["auth_method"]
                .as_str()
                .expect("auth_method is a string");
            assert!(
                ["certificate", "api_key", "jwt"].contains(&method),
                "auth_method {method:?}"
            );
            assert!(
                !(method == "api_key" && cred == "revoked"),
                "a session of a revoked key was allowed"
            );
        }
    }
});
