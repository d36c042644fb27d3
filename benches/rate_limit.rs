//! The rate-limit layer's allow path with 1, 10,000 and 1,000,000 tracked keys, its
//! reject path, two quotas at once, the Redis allow path on loopback (when
//! `redis-server` is installed), and `tower_governor` configured for the same quota in
//! the same run.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{Request, Response};
use portcullis::core::PeerAddr;
use portcullis::rate_limit::{KeyPart, MissingKey, Quota, Rate, RateLimitLayer, RedisBackend};
use tower::{Layer, Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

use common::{drive, noop_service};

/// A quota no benchmark exhausts: a refill of one per nanosecond and a burst of four
/// billion, the same for us and for the peer.
fn roomy(name: &str) -> Quota {
    Quota::new(
        name,
        Rate::new(1_000_000, Duration::from_millis(1)).unwrap(),
    )
    .burst(u32::MAX)
}

/// A request from the `i`th client address, with the socket peer as both our
/// `PeerAddr` and axum's `ConnectInfo` (which `tower_governor` reads).
fn from(i: u32) -> Request<()> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 4000);
    let mut request = Request::new(());
    request.extensions_mut().insert(PeerAddr(addr));
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    request
}

/// Charges `count` distinct client addresses once, so that the map holds them.
fn track<S, B>(service: &mut S, count: u32)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    for i in 0..count {
        drive(service, from(i));
    }
}

fn axum_noop(_: Request<()>) -> std::future::Ready<Result<Response<axum::body::Body>, Infallible>> {
    std::future::ready(Ok(Response::new(axum::body::Body::empty())))
}

type AxumNoop =
    fn(Request<()>) -> std::future::Ready<Result<Response<axum::body::Body>, Infallible>>;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    group.throughput(Throughput::Elements(1));

    let mut floor = noop_service();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || from(0),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for (label, count) in [("1", 1), ("10k", 10_000), ("1m", 1_000_000)] {
        let layer = RateLimitLayer::builder()
            .quota(roomy("per-ip"))
            .sweep_every(None)
            .build()
            .unwrap();
        let mut service = layer.layer(noop_service());
        track(&mut service, count);
        let middle = count / 2;
        group.bench_function(format!("allow_{label}_keys"), |b| {
            b.iter_batched(
                || from(middle),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }

    let two = RateLimitLayer::builder()
        .quota(roomy("per-ip"))
        .quota(
            roomy("per-principal")
                .key([KeyPart::Principal])
                .when_key_missing(MissingKey::Skip),
        )
        .sweep_every(None)
        .build()
        .unwrap();
    let mut service = two.layer(noop_service());
    group.bench_function("allow_two_quotas", |b| {
        b.iter_batched(
            || from(1),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });

    let with_headers = RateLimitLayer::builder()
        .quota(roomy("per-ip"))
        .headers_on_allowed(true)
        .sweep_every(None)
        .build()
        .unwrap();
    let mut service = with_headers.layer(noop_service());
    group.bench_function("allow_with_headers", |b| {
        b.iter_batched(
            || from(1),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });

    let spent = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "1 per 1h".parse().unwrap()))
        .sweep_every(None)
        .build()
        .unwrap();
    let mut service = spent.layer(noop_service());
    drive(&mut service, from(7));
    group.bench_function("reject", |b| {
        b.iter_batched(
            || from(7),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });

    redis_allow(&mut group);
    group.finish();

    peers(c);
}

/// The Redis allow path on loopback: one script call per request (`redis_allow_exact`),
/// and with leases, one per lease (`redis_allow_leased`).
fn redis_allow(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let Some(mut server) = start_redis() else {
        eprintln!("rate_limit/redis_allow skipped: redis-server is not installed");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, exact) in [("redis_allow_exact", true), ("redis_allow_leased", false)] {
        let layer = runtime.block_on(async {
            let backend = RedisBackend::connect(&format!("redis://127.0.0.1:{}/", server.1))
                .await
                .unwrap()
                .namespace(name);
            RateLimitLayer::builder()
                .quota(roomy("per-ip").exact(exact))
                .redis(backend)
                .sweep_every(None)
                .build()
                .unwrap()
        });
        let mut service = layer.layer(noop_service());
        group.bench_function(name, |b| {
            b.iter_batched(
                || from(3),
                |req| {
                    runtime.block_on(async {
                        let ready = service.ready().await.unwrap();
                        black_box(ready.call(req).await.unwrap())
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
}

fn start_redis() -> Option<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Ours and `tower_governor`, the same per-IP GCRA quota, the same inner service.
fn peers(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_peers");
    group.throughput(Throughput::Elements(1));
    let noop = || tower::service_fn(axum_noop as AxumNoop);

    let mut floor = noop();
    group.bench_function("floor", |b| {
        b.iter_batched(
            || from(0),
            |req| black_box(drive(&mut floor, req)),
            BatchSize::SmallInput,
        )
    });

    for (label, count) in [("1", 1), ("1m", 1_000_000)] {
        let ours = RateLimitLayer::builder()
            .quota(roomy("per-ip"))
            .sweep_every(None)
            .build()
            .unwrap();
        let mut service = ours.layer(noop());
        track(&mut service, count);
        group.bench_function(format!("portcullis_allow_{label}_keys"), |b| {
            b.iter_batched(
                || from(count / 2),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });

        let config = GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .finish()
            .unwrap();
        let mut service = GovernorLayer::new(config).layer(noop());
        track(&mut service, count);
        group.bench_function(format!("tower_governor_allow_{label}_keys"), |b| {
            b.iter_batched(
                || from(count / 2),
                |req| black_box(drive(&mut service, req)),
                BatchSize::SmallInput,
            )
        });
    }

    let ours = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "1 per 1h".parse().unwrap()))
        .sweep_every(None)
        .build()
        .unwrap();
    let mut service = ours.layer(noop());
    drive(&mut service, from(7));
    group.bench_function("portcullis_reject", |b| {
        b.iter_batched(
            || from(7),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(3600))
        .burst_size(1)
        .finish()
        .unwrap();
    let mut service = GovernorLayer::new(config).layer(noop());
    drive(&mut service, from(7));
    group.bench_function("tower_governor_reject", |b| {
        b.iter_batched(
            || from(7),
            |req| black_box(drive(&mut service, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
