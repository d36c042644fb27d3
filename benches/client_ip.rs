//! `ClientIp` resolution: the socket peer alone, and a client behind a five-hop
//! `X-Forwarded-For` / `Forwarded` chain of trusted proxies.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Extensions, HeaderMap, HeaderValue};
use portcullis::core::{ClientIpResolver, ForwardedHeader, PeerAddr};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_ip");
    group.throughput(Throughput::Elements(1));

    let mut extensions = Extensions::new();
    extensions.insert(PeerAddr("10.0.0.1:4000".parse().unwrap()));
    let proxies: portcullis::core::NetworkSet = "10.0.0.0/8".parse().unwrap();

    let socket_only = ClientIpResolver::new();
    let none = HeaderMap::new();
    group.bench_function("socket_peer", |b| {
        b.iter(|| black_box(socket_only.resolve(black_box(&extensions), black_box(&none))))
    });

    // Five hops: the client, then four trusted proxies; the socket peer is the fifth.
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.23, 10.0.0.5, 10.0.0.4, 10.0.0.3, 10.0.0.2"),
    );
    let behind_xff = ClientIpResolver::new()
        .trust_proxies(proxies.clone())
        .unwrap()
        .forwarded_header(ForwardedHeader::XForwardedFor);
    assert_eq!(
        behind_xff.resolve(&extensions, &xff).unwrap().to_string(),
        "198.51.100.23"
    );
    group.bench_function("x_forwarded_for_5_hops", |b| {
        b.iter(|| black_box(behind_xff.resolve(black_box(&extensions), black_box(&xff))))
    });

    let mut forwarded = HeaderMap::new();
    forwarded.insert(
        "forwarded",
        HeaderValue::from_static(
            "for=198.51.100.23;proto=https, for=10.0.0.5, for=10.0.0.4, for=\"10.0.0.3:8080\", for=10.0.0.2",
        ),
    );
    let behind_forwarded = ClientIpResolver::new()
        .trust_proxies(proxies)
        .unwrap()
        .forwarded_header(ForwardedHeader::Forwarded);
    assert_eq!(
        behind_forwarded
            .resolve(&extensions, &forwarded)
            .unwrap()
            .to_string(),
        "198.51.100.23"
    );
    group.bench_function("forwarded_5_hops", |b| {
        b.iter(|| {
            black_box(behind_forwarded.resolve(black_box(&extensions), black_box(&forwarded)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
