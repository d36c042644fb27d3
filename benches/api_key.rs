//! The api-key layer's allow path with 1, 10,000 and 1,000,000 stored keys, its reject
//! paths (a malformed key, and a well-formed key the store does not know), and the cost
//! of checking a key's form, checksum and SHA-256 digest on its own.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use http::Request;
use portcullis::api_key::{
    ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore, PresentedKey,
};
use tower::Layer;

use common::{drive, noop_service, ALLOWED_PEER};

/// A store of `count` keys, and the secret of the one in the middle.
fn store(count: usize) -> (Arc<MemoryKeyStore>, String) {
    let prefix = KeyPrefix::default();
    let mut middle = String::new();
    let records = (0..count).map(|i| {
        let key = GeneratedKey::with_id(&prefix, &format!("key-{i}")).unwrap();
        if i == count / 2 {
            middle = key.expose_secret().to_owned();
        }
        KeyRecord::new(key.id(), format!("owner-{}", i % 1000), key.digest())
            .unwrap()
            .roles(["reader"])
    });
    let store = Arc::new(MemoryKeyStore::from_records(records.collect::<Vec<_>>()).unwrap());
    (store, middle)
}

fn request(key: &str) -> Request<()> {
    let mut request = common::request(ALLOWED_PEER);
    request
        .headers_mut()
        .insert("x-api-key", key.parse().unwrap());
    request
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("api_key");
    group.throughput(Throughput::Elements(1));

    let (small, small_key) = store(1);
    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || request(&small_key),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    let prefix = KeyPrefix::default();
    group.bench_function("parse_checksum_digest", |b| {
        b.iter(|| {
            black_box(
                PresentedKey::parse(&prefix, black_box(&small_key))
                    .unwrap()
                    .id()
                    .len(),
            )
        })
    });

    let mut service = ApiKeyLayer::new(small.clone()).layer(noop_service());
    let malformed = small_key.replace("pck_", "pck_x");
    group.bench_function("reject_malformed", |b| {
        b.iter_batched(
            || request(&malformed),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });
    let unknown = GeneratedKey::generate(&prefix).unwrap();
    group.bench_function("reject_unknown", |b| {
        b.iter_batched(
            || request(unknown.expose_secret()),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });

    for count in [1usize, 10_000, 1_000_000] {
        let (store, key) = if count == 1 {
            (small.clone(), small_key.clone())
        } else {
            store(count)
        };
        let mut service = ApiKeyLayer::new(store).layer(noop_service());
        group.bench_with_input(BenchmarkId::new("allow", count), &count, |b, _| {
            b.iter_batched(
                || request(&key),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
