//! The audit layer around the floor: with no one listening (the `tracing` event
//! disabled and no sink), to the in-memory JSON sink, and to the file sink.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::Request;
use portcullis::audit::{AuditLayer, FileSink, MemorySink, Rotation};
use tower::Layer;

use common::{drive, noop_service, ALLOWED_PEER};

fn request() -> Request<()> {
    let mut request = common::request(ALLOWED_PEER);
    *request.uri_mut() = "/v1/key/k1/attributes?page=2".parse().unwrap();
    request
        .headers_mut()
        .insert("user-agent", "client-sdk/1.4 (linux)".parse().unwrap());
    request
        .headers_mut()
        .insert("x-request-id", "4bf92f3577b34da6".parse().unwrap());
    request
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(1));

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            request,
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    // No subscriber is installed in this binary, so the tracing event is disabled.
    let mut silent = AuditLayer::new().layer(noop_service());
    group.bench_function("event_disabled", |b| {
        b.iter_batched(
            request,
            |req| black_box(drive(&mut silent, req)),
            BatchSize::SmallInput,
        )
    });

    let memory = MemorySink::new();
    let mut to_memory = AuditLayer::new().sink(memory.clone()).layer(noop_service());
    group.bench_function("memory_json_sink", |b| {
        b.iter_batched(
            request,
            |req| black_box(drive(&mut to_memory, req)),
            BatchSize::SmallInput,
        );
        memory.clear();
    });

    let dir = std::env::temp_dir().join(format!("portcullis-bench-audit-{}", std::process::id()));
    let file = FileSink::builder(&dir)
        .rotation(Rotation::Size(64 << 20))
        .capacity(65_536)
        .build()
        .unwrap();
    let mut to_file = AuditLayer::new().sink(file.clone()).layer(noop_service());
    group.bench_function("file_sink", |b| {
        b.iter_batched(
            request,
            |req| black_box(drive(&mut to_file, req)),
            BatchSize::SmallInput,
        )
    });
    file.flush();
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
