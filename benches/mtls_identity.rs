//! The client-certificate layer: identity from an already verified chain (parse, check,
//! map to a registered connector), with the parse cache on and off, with a cached OCSP
//! answer, and its reject paths (an unregistered certificate, no certificate).

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::Request;
use portcullis::core::TlsPeer;
use portcullis::mtls_identity::{
    DevPki, MtlsIdentityLayer, Ocsp, OcspAnswer, OcspCheck, OcspFuture, OcspStatus,
};
use tower::Layer;

use common::{connectors, der, drive, noop_service, ALLOWED_PEER};

fn request(chain: Option<&Arc<[Bytes]>>) -> Request<()> {
    let mut request = common::request(ALLOWED_PEER);
    request.extensions_mut().insert(TlsPeer {
        addr: ALLOWED_PEER.parse().unwrap(),
        chain: chain.cloned(),
    });
    request
}

/// An OCSP source that always says good for a minute; the benchmark only ever hits the
/// layer's cache.
struct AlwaysGood;

impl OcspCheck for AlwaysGood {
    fn check<'a>(&'a self, _: &'a [u8]) -> OcspFuture<'a> {
        Box::pin(async {
            Ok(OcspAnswer {
                status: OcspStatus::Good,
                next_update: Some(SystemTime::now() + Duration::from_secs(3600)),
            })
        })
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("mtls_identity");
    group.throughput(Throughput::Elements(1));
    let pki = DevPki::generate(&["localhost"]).unwrap();
    let (registry, clients) = connectors(&pki, 1_000);
    let connector = &clients[7];
    let chain: Arc<[Bytes]> = Arc::from(vec![der(connector.cert_pem()), der(pki.ca_pem())]);
    let stranger = pki.client("stranger").unwrap();
    let stranger: Arc<[Bytes]> = Arc::from(vec![der(stranger.cert_pem())]);

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request(Some(&chain)),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    let cases = [
        ("allow_cached", MtlsIdentityLayer::new(registry.clone())),
        (
            "allow_uncached",
            MtlsIdentityLayer::new(registry.clone()).parse_cache(0),
        ),
        (
            "allow_cached_with_ocsp",
            MtlsIdentityLayer::new(registry.clone()).ocsp(Ocsp::new(AlwaysGood)),
        ),
    ];
    for (name, layer) in cases {
        let mut service = layer.layer(noop_service());
        // The first request fills the caches (and, with OCSP, waits for the answer).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            use tower::ServiceExt;
            let response = service
                .clone()
                .oneshot(request(Some(&chain)))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        });
        assert_eq!(drive(&mut service, request(Some(&chain))).status(), 200);
        group.bench_function(name, |b| {
            b.iter_batched(
                || request(Some(&chain)),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }

    let mut service = MtlsIdentityLayer::new(registry.clone()).layer(noop_service());
    assert_eq!(drive(&mut service, request(Some(&stranger))).status(), 401);
    group.bench_function("reject_unknown_connector", |b| {
        b.iter_batched(
            || request(Some(&stranger)),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });
    assert_eq!(drive(&mut service, request(None)).status(), 401);
    group.bench_function("reject_missing", |b| {
        b.iter_batched(
            || request(None),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
