//! The ext-authz layer against a no-op service floor: answers from its cache (under the
//! default key, everything the service is sent, and under a narrow key of one header), a
//! cached refusal, and, for scale, a check that asks a decision service on loopback
//! every time.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::Request;
use portcullis::ext_authz::{CacheKeyPart, ExtAuthzLayer};
use tower::{Layer, ServiceExt};

use common::{drive, noop_service, request, ALLOWED_PEER};

/// A request with a bearer token.
fn with_token(token: &'static str) -> Request<()> {
    let mut request = request(ALLOWED_PEER);
    request
        .headers_mut()
        .insert("authorization", http::HeaderValue::from_static(token));
    *request.uri_mut() = "/v1/items/7?page=2".parse().unwrap();
    request
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The decision service: `Bearer good` passes with a user id, anything else is 403.
    let endpoint = runtime.block_on(async {
        let app = axum::Router::new().route(
            "/check",
            axum::routing::post(|body: String| async move {
                if body.contains("Bearer good") {
                    (http::StatusCode::OK, [("x-user-id", "7")])
                } else {
                    (http::StatusCode::FORBIDDEN, [("x-user-id", "")])
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/check")
    });
    let builder = || {
        ExtAuthzLayer::builder(endpoint.clone())
            .forward_headers(["authorization".parse().unwrap()])
            .upstream_headers(["x-user-id".parse().unwrap()])
            .timeout(Duration::from_secs(2))
    };
    let default_key = builder()
        .cache(Duration::from_secs(3600), 10_000, [])
        .build()
        .unwrap();
    let header_key = builder()
        .cache(
            Duration::from_secs(3600),
            10_000,
            [CacheKeyPart::Header("authorization".parse().unwrap())],
        )
        .build()
        .unwrap();
    let uncached = builder().build().unwrap();

    // Fill the caches: the first answer of each comes from the service.
    runtime.block_on(async {
        for layer in [&default_key, &header_key] {
            for token in ["Bearer good", "Bearer bad"] {
                let _ = layer.layer(noop_service()).oneshot(with_token(token)).await;
            }
        }
    });

    let mut group = c.benchmark_group("ext_authz");
    group.throughput(Throughput::Elements(1));
    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || with_token("Bearer good"),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });
    for (name, layer, token) in [
        ("cached allow, default key", &default_key, "Bearer good"),
        ("cached allow, header as key", &header_key, "Bearer good"),
        ("cached refusal, default key", &default_key, "Bearer bad"),
    ] {
        let mut service = layer.layer(noop_service());
        group.bench_function(name, |b| {
            b.iter_batched(
                || with_token(token),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }
    let service = uncached.layer(noop_service());
    group.bench_function("uncached allow, loopback round trip", |b| {
        b.iter_batched(
            || with_token("Bearer good"),
            |req| black_box(runtime.block_on(service.clone().oneshot(req)).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
