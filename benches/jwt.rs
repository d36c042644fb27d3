//! The JWT layer's allow path for HS256, RS256, ES256 and EdDSA, uncached and cached,
//! next to a raw `jsonwebtoken::decode` of the same token with the same checks, and its
//! reject paths (a malformed token, a bad signature).

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::Request;
use portcullis::core::{AuthMethod, Principal};
use portcullis::jwt::jsonwebtoken::{self, Algorithm, DecodingKey, Validation};
use portcullis::jwt::{JwtLayer, SigningKey, TokenIssuer};
use tower::Layer;

use common::{drive, noop_service, ALLOWED_PEER};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "key-service";

fn request(token: &str) -> Request<()> {
    let mut request = common::request(ALLOWED_PEER);
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    group.throughput(Throughput::Elements(1));
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["operator", "auditor"])
        .scopes(["keys:read", "keys:sign"])
        .build();

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request("e30.e30.e30"),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for algorithm in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let name = format!("{algorithm:?}");
        let key = SigningKey::generate(algorithm).unwrap().with_kid("k1");
        let issuer = TokenIssuer::new(key.clone(), ISSUER, AUDIENCE).unwrap();
        let token = issuer.issue(&principal, None).unwrap().expose().to_owned();

        // What a host would write with jsonwebtoken alone: the same key, algorithm,
        // issuer, audience and expiry checks.
        let decoding = DecodingKey::from_jwk(&key.public_jwk()).unwrap();
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        group.bench_function(format!("raw_decode/{name}"), |b| {
            b.iter(|| {
                black_box(
                    jsonwebtoken::decode::<serde_json::Value>(
                        black_box(&token),
                        &decoding,
                        &validation,
                    )
                    .unwrap(),
                )
            })
        });

        let uncached = JwtLayer::builder()
            .issuer(issuer.validating_issuer())
            .token_cache(0)
            .build()
            .unwrap();
        let mut service = uncached.layer(noop_service());
        assert_eq!(drive(&mut service, request(&token)).status(), 200);
        group.bench_function(format!("allow_uncached/{name}"), |b| {
            b.iter_batched(
                || request(&token),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });

        let cached = JwtLayer::builder()
            .issuer(issuer.validating_issuer())
            .build()
            .unwrap();
        let mut service = cached.layer(noop_service());
        assert_eq!(drive(&mut service, request(&token)).status(), 200);
        group.bench_function(format!("allow_cached/{name}"), |b| {
            b.iter_batched(
                || request(&token),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });

        if algorithm == Algorithm::HS256 {
            let mut bad = token.clone();
            let last = bad.pop().unwrap();
            bad.push(if last == 'A' { 'B' } else { 'A' });
            assert_eq!(drive(&mut service, request(&bad)).status(), 401);
            group.bench_function("reject_bad_signature/HS256", |b| {
                b.iter_batched(
                    || request(&bad),
                    |req| black_box(drive(&mut service, req)),
                    BatchSize::SmallInput,
                )
            });
            group.bench_function("reject_malformed", |b| {
                b.iter_batched(
                    || request("not-a-token"),
                    |req| black_box(drive(&mut service, req)),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
