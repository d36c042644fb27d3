//! Whole stacks and the JWT peers.
//!
//! Group `stack`: the floor, and the full stack of DESIGN.md (audit to the in-memory
//! JSON sink, ip-allowlist over 10,000 networks, api-key over 10,000 keys or jwt HS256
//! with its verified-token cache, role-router over 100 rules, rate-limit per credential)
//! composed with `tower::ServiceBuilder`, on its allow path and on a 403 from the role
//! router; and the same API-key stack built from a configuration file through
//! `Gateway::layer` (each layer boxed, as the file picks them at run time).
//!
//! Group `jwt_peers`: one HS256 bearer check three ways over the same inner service (an
//! axum 0.7 body, which `jwt-authorizer` needs): our `JwtLayer` (cache off and on),
//! `jwt-authorizer` 0.15 from the same secret with the same issuer and audience checks,
//! and tower-http's `ValidateRequestHeaderLayer::bearer`, which only compares the
//! header with one fixed token (no signature, no claims: the floor of "a bearer check").

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{Request, Response};
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::audit::{AuditLayer, MemorySink};
use portcullis::core::{AuthMethod, Principal};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::jwt::jsonwebtoken::Algorithm;
use portcullis::jwt::{JwtLayer, SigningKey, TokenIssuer};
use portcullis::rate_limit::{KeyPart, Quota, Rate, RateLimitLayer};
use portcullis::role_router::RoleRouterLayer;
use tower::{Layer, ServiceBuilder};

use common::{drive, networks, noop_service, role_router_policy, ALLOWED_PEER};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "key-service";
/// 64 bytes of HMAC secret, as text because `jwt-authorizer` takes a `&str`.
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A GET the 100-rule policy opens to role `svc7-reader`.
fn request(header: (&'static str, &str)) -> Request<()> {
    let mut request = common::request(ALLOWED_PEER);
    *request.uri_mut() = "/v1/svc7/items/42".parse().unwrap();
    request
        .headers_mut()
        .insert(header.0, header.1.parse().unwrap());
    request
        .headers_mut()
        .insert("user-agent", "client-sdk/1.4 (linux)".parse().unwrap());
    request
}

/// 10,000 keys; the secrets of a `svc7-reader` and of a `svc8-reader`.
fn keys() -> (Arc<MemoryKeyStore>, String, String) {
    let prefix = KeyPrefix::default();
    let (mut reader, mut other) = (String::new(), String::new());
    let records: Vec<KeyRecord> = (0..10_000)
        .map(|i| {
            let key = GeneratedKey::with_id(&prefix, &format!("key-{i}")).unwrap();
            let role = match i {
                5_000 => {
                    reader = key.expose_secret().to_owned();
                    "svc7-reader".to_owned()
                }
                5_001 => {
                    other = key.expose_secret().to_owned();
                    "svc8-reader".to_owned()
                }
                _ => format!("svc{}-reader", i % 250),
            };
            KeyRecord::new(key.id(), format!("owner-{i}"), key.digest())
                .unwrap()
                .roles([role])
        })
        .collect();
    let store = Arc::new(MemoryKeyStore::from_records(records).unwrap());
    (store, reader, other)
}

/// Per credential, never reached here: the benchmark measures the charge, not a 429.
fn rate_limit() -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota(
            Quota::new("per-credential", Rate::per_second(1_000_000_000).unwrap())
                .key([KeyPart::Credential]),
        )
        .build()
        .unwrap()
}

fn stack(c: &mut Criterion) {
    let mut group = c.benchmark_group("stack");
    group.throughput(Throughput::Elements(1));
    let (store, reader, other) = keys();
    let memory = MemorySink::new();

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request(("x-api-key", &reader)),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    let mut api_key_stack = ServiceBuilder::new()
        .layer(AuditLayer::new().sink(memory.clone()))
        .layer(IpAllowlistLayer::new(IpRules::new().deny(networks(10_000))))
        .layer(ApiKeyLayer::new(store.clone()))
        .layer(RoleRouterLayer::new(role_router_policy(100)))
        .layer(rate_limit())
        .service(noop_service());
    assert_eq!(
        drive(&mut api_key_stack, request(("x-api-key", &reader))).status(),
        200
    );
    assert_eq!(
        drive(&mut api_key_stack, request(("x-api-key", &other))).status(),
        403
    );
    group.bench_function("api_key_allow", |b| {
        b.iter_batched(
            || request(("x-api-key", &reader)),
            |req| black_box(drive(&mut api_key_stack, req)),
            BatchSize::SmallInput,
        );
        memory.clear();
    });
    group.bench_function("api_key_reject_403", |b| {
        b.iter_batched(
            || request(("x-api-key", &other)),
            |req| black_box(drive(&mut api_key_stack, req)),
            BatchSize::SmallInput,
        );
        memory.clear();
    });

    let signing = SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
    let issuer = TokenIssuer::new(signing, ISSUER, AUDIENCE).unwrap();
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["svc7-reader"])
        .build();
    let token = issuer.issue(&principal, None).unwrap().expose().to_owned();
    let bearer = format!("Bearer {token}");
    let mut jwt_stack = ServiceBuilder::new()
        .layer(AuditLayer::new().sink(memory.clone()))
        .layer(IpAllowlistLayer::new(IpRules::new().deny(networks(10_000))))
        .layer(
            JwtLayer::builder()
                .issuer(issuer.validating_issuer())
                .build()
                .unwrap(),
        )
        .layer(RoleRouterLayer::new(role_router_policy(100)))
        .layer(rate_limit())
        .service(noop_service());
    assert_eq!(
        drive(&mut jwt_stack, request(("authorization", &bearer))).status(),
        200
    );
    group.bench_function("jwt_cached_allow", |b| {
        b.iter_batched(
            || request(("authorization", &bearer)),
            |req| black_box(drive(&mut jwt_stack, req)),
            BatchSize::SmallInput,
        );
        memory.clear();
    });

    // The API-key stack from a file, through `Gateway::layer`.
    let dir = std::env::temp_dir().join(format!("portcullis-bench-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let records: String = [&reader, &other]
        .iter()
        .zip(["svc7-reader", "svc8-reader"])
        .enumerate()
        .map(|(i, (secret, role))| {
            let key =
                portcullis::api_key::PresentedKey::parse(&KeyPrefix::default(), secret).unwrap();
            let record = KeyRecord::new(key.id(), format!("owner-{i}"), *key.digest())
                .unwrap()
                .roles([role]);
            portcullis::api_key::render_key_record(&record)
        })
        .collect();
    std::fs::write(dir.join("keys.toml"), records).unwrap();
    let mut policy = String::from("default = \"deny\"\n");
    policy.push_str("[[rule]]\npath = \"/v1/svc7/items/{id}\"\nroles_any = [\"svc7-reader\"]\n");
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let file = "[server]\nlisten = \"127.0.0.1:0\"\n\
        [[layer]]\nkind = \"ip-allowlist\"\ndeny = [\"198.51.100.0/24\"]\n\
        [[layer]]\nkind = \"api-key\"\nkey_file = \"keys.toml\"\n\
        [[layer]]\nkind = \"role-router\"\npolicy = \"policy.toml\"\n\
        [[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"per-credential\"\nrate = \"1000000000/s\"\nkey = [\"credential\"]\n";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateway = runtime
        .block_on(
            portcullis::config::GatewayConfig::parse("bench.toml", file, &dir)
                .unwrap()
                .build(),
        )
        .unwrap();
    let mut boxed = gateway.layer().layer(noop_service());
    assert_eq!(
        drive(&mut boxed, request(("x-api-key", &reader))).status(),
        200
    );
    assert_eq!(
        drive(&mut boxed, request(("x-api-key", &other))).status(),
        403
    );
    let mut typed = ServiceBuilder::new()
        .layer(IpAllowlistLayer::new(
            IpRules::new().deny("198.51.100.0/24".parse().unwrap()),
        ))
        .layer(ApiKeyLayer::new(Arc::new(
            portcullis::api_key::FileKeyStore::open(dir.join("keys.toml")).unwrap(),
        )))
        .layer(RoleRouterLayer::new(
            portcullis::role_router::read_policy(dir.join("policy.toml")).unwrap(),
        ))
        .layer(rate_limit())
        .service(noop_service());
    group.bench_function("api_key_allow_four_layers_typed", |b| {
        b.iter_batched(
            || request(("x-api-key", &reader)),
            |req| black_box(drive(&mut typed, req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("api_key_allow_four_layers_from_config", |b| {
        b.iter_batched(
            || request(("x-api-key", &reader)),
            |req| black_box(drive(&mut boxed, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

type Noop07 = fn(Request<()>) -> std::future::Ready<Result<axum07::response::Response, Infallible>>;

/// The floor with an axum 0.7 body, which `jwt-authorizer`'s refusals are made of.
fn noop07() -> tower::util::ServiceFn<Noop07> {
    fn noop(_: Request<()>) -> std::future::Ready<Result<axum07::response::Response, Infallible>> {
        std::future::ready(Ok(Response::new(axum07::body::Body::empty())))
    }
    tower::service_fn(noop as Noop07)
}

fn jwt_peers(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_peers");
    group.throughput(Throughput::Elements(1));
    let signing = SigningKey::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
    let issuer = TokenIssuer::new(signing, ISSUER, AUDIENCE).unwrap();
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["operator"])
        .build();
    let token = issuer.issue(&principal, None).unwrap().expose().to_owned();
    let bearer = format!("Bearer {token}");
    let with_bearer = || {
        let mut request = common::request(ALLOWED_PEER);
        request
            .headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        request
    };

    let mut floor = noop07();
    group.bench_function("floor", |b| {
        b.iter_batched(
            with_bearer,
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for (name, cache) in [("portcullis_uncached", 0), ("portcullis_cached", 10_000)] {
        let layer = JwtLayer::builder()
            .issuer(issuer.validating_issuer())
            .token_cache(cache)
            .build()
            .unwrap();
        let mut service = layer.layer(noop07());
        assert_eq!(drive(&mut service, with_bearer()).status(), 200);
        group.bench_function(name, |b| {
            b.iter_batched(
                with_bearer,
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authorizer = runtime
        .block_on(
            jwt_authorizer::JwtAuthorizer::<jwt_authorizer::RegisteredClaims>::from_secret(SECRET)
                .validation(
                    jwt_authorizer::Validation::new()
                        .iss(&[ISSUER])
                        .aud(&[AUDIENCE]),
                )
                .build(),
        )
        .unwrap();
    let mut peer =
        jwt_authorizer::layer::AuthorizationLayer::new(vec![Arc::new(authorizer)]).layer(noop07());
    assert_eq!(drive(&mut peer, with_bearer()).status(), 200);
    let mut bad = with_bearer();
    bad.headers_mut()
        .insert("authorization", "Bearer e30.e30.e30".parse().unwrap());
    assert_eq!(drive(&mut peer, bad).status(), 401);
    group.bench_function("jwt_authorizer", |b| {
        b.iter_batched(
            with_bearer,
            |req| black_box(drive(&mut peer, req)),
            BatchSize::SmallInput,
        )
    });

    #[allow(deprecated)] // `bearer` is deprecated for its non-constant-time compare
    let mut header_check =
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&token).layer(noop07());
    assert_eq!(drive(&mut header_check, with_bearer()).status(), 200);
    group.bench_function("tower_http_validate_bearer", |b| {
        b.iter_batched(
            with_bearer,
            |req| black_box(drive(&mut header_check, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, stack, jwt_peers);
criterion_main!(benches);
