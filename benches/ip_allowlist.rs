//! The ip-allowlist layer's allow and reject paths against a no-op service floor, with
//! deny lists of 10, 10,000 and 100,000 networks.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use portcullis::core::ClientIp;
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use tower::Layer;

use common::{drive, networks, noop_service, request, ALLOWED_PEER, DENIED_PEER};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ip_allowlist");
    group.throughput(Throughput::Elements(1));

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request(ALLOWED_PEER),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for size in [10usize, 10_000, 100_000] {
        let deny = networks(size);
        let mut service = IpAllowlistLayer::new(IpRules::new().deny(deny)).layer(noop_service());

        group.bench_with_input(BenchmarkId::new("allow", size), &size, |b, _| {
            b.iter_batched(
                || request(ALLOWED_PEER),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
        // The same, with the ClientIp already resolved by an outer layer.
        group.bench_with_input(BenchmarkId::new("allow_resolved", size), &size, |b, _| {
            b.iter_batched(
                || {
                    let mut req = request(ALLOWED_PEER);
                    req.extensions_mut()
                        .insert(ClientIp::new("192.0.2.1".parse().unwrap()));
                    req
                },
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("reject", size), &size, |b, _| {
            b.iter_batched(
                || request(DENIED_PEER),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
