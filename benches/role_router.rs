//! The role-router layer's allow and deny paths against a no-op service floor, with
//! policies of 10, 100 and 1,000 rules.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use portcullis::role_router::RoleRouterLayer;
use tower::Layer;

use common::{drive, noop_service, role_request as request, role_router_policy as policy};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("role_router");
    group.throughput(Throughput::Elements(1));

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request("/v1/svc1/items/k1", "svc1-reader"),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for size in [10usize, 100, 1_000] {
        let mut service = RoleRouterLayer::new(policy(size)).layer(noop_service());
        // A route of a service in the middle of the policy.
        let middle = size / 8;
        let path = format!("/v1/svc{middle}/items/k1");
        let reader = format!("svc{middle}-reader");
        group.bench_with_input(BenchmarkId::new("allow", size), &size, |b, _| {
            b.iter_batched(
                || request(&path, &reader),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("deny", size), &size, |b, _| {
            b.iter_batched(
                || request(&path, "nobody"),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
