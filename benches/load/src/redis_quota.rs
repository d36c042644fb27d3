//! `redis`: what a rate-limited request costs with its quota shared through Redis,
//! beside the in-process quota: two layer instances on one `redis-server` (started
//! here on a loopback port), a quota filled to 10 %, 50 % and 95 % before the measured
//! requests, which alternate between the instances. Per request: the added latency
//! over a no-op service (mean, p50, p99) and the Redis commands it took (from `INFO
//! commandstats`), with every request decided in Redis (`exact`) and with leases (the
//! default).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, Response};
use portcullis::core::PeerAddr;
use portcullis::rate_limit::{Quota, RateLimitLayer, RedisBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt};

/// The quota: large enough that the measured requests (3,000 by default) stay under it
/// at 95 %.
const COUNT: u32 = 100_000;

/// A `redis-server` on a free loopback port, killed when dropped.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_redis() -> Result<RedisServer, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    launch_redis(port).await
}

async fn launch_redis(port: u16) -> Result<RedisServer, String> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server (apt-get install -y redis-server): {e}"))?;
    let server = RedisServer {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while command(server.addr, "PING").await.as_deref() != Some("+PONG") {
        if Instant::now() > deadline {
            return Err("redis-server did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(server)
}

/// One inline command's whole answer, or `None` if Redis cannot be reached.
async fn command(addr: SocketAddr, line: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = vec![0u8; 64 * 1024];
    tokio::time::sleep(Duration::from_millis(20)).await;
    let n = stream.read(&mut answer).await.ok()?;
    Some(String::from_utf8_lossy(&answer[..n]).trim_end().to_owned())
}

/// Script calls so far (`EVALSHA` and `EVAL`).
async fn script_calls(addr: SocketAddr) -> u64 {
    let stats = command(addr, "INFO commandstats").await.unwrap_or_default();
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

type Noop =
    tower::util::ServiceFn<fn(Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>>>;

fn noop() -> Noop {
    fn answer(_: Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>> {
        std::future::ready(Ok(Response::new(())))
    }
    tower::service_fn(answer as fn(_) -> _)
}

fn from(client: &str) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(PeerAddr(
        format!("{client}:40000").parse().expect("an address"),
    ));
    request
}

/// The time of each of `n` requests through `service`, from `client`.
async fn timed<S>(services: &mut [S], n: usize, client: &str) -> Vec<Duration>
where
    S: Service<Request<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let service = &mut services[i % services.len()];
        let started = Instant::now();
        let ready = service.ready().await.expect("ready");
        let _ = ready.call(from(client)).await;
        times.push(started.elapsed());
    }
    times
}

/// Mean, p50 and p99 in microseconds, over the floor's mean.
fn summary(times: &mut [Duration], floor: Duration) -> (f64, f64, f64) {
    times.sort();
    let over = |d: Duration| d.saturating_sub(floor).as_secs_f64() * 1e6;
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1);
    (
        over(mean),
        over(times[times.len() / 2]),
        over(times[times.len() * 99 / 100]),
    )
}

pub(crate) async fn run(requests: usize) -> Result<(), String> {
    let mut redis = start_redis().await?;
    let url = format!("redis://{}/", redis.addr);
    let quota = || Quota::new("q", format!("{COUNT} per 1h").parse().expect("a rate"));
    let mut floor = [noop()];
    let floor_mean = {
        let times = timed(&mut floor, requests, "192.0.2.1").await;
        times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1)
    };
    println!(
        "floor (a no-op service): {:.2} µs mean",
        floor_mean.as_secs_f64() * 1e6
    );
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>10} {:>14}",
        "mode", "filled", "mean µs", "p50 µs", "p99 µs", "scripts/req"
    );
    for level in [10u32, 50, 95] {
        let prefill = (COUNT * level / 100) as usize;
        // In process: one instance.
        let local = RateLimitLayer::builder()
            .quota(quota())
            .build()
            .map_err(|e| e.to_string())?;
        let mut services = [local.layer(noop())];
        timed(&mut services, prefill, "198.51.100.1").await;
        let mut times = timed(&mut services, requests, "198.51.100.1").await;
        let (mean, p50, p99) = summary(&mut times, floor_mean);
        println!(
            "{:<12} {:>5}% {mean:>10.2} {p50:>10.2} {p99:>10.2} {:>14}",
            "in-process", level, "0"
        );
        // Through Redis: two instances sharing it, requests alternating; each request
        // decided in Redis (exact), then with leases (the default).
        for exact in [true, false] {
            let namespace = format!("load-{level}-{exact}");
            let mut services = Vec::new();
            for _ in 0..2 {
                let backend = RedisBackend::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?
                    .namespace(namespace.clone())
                    .instances(2)
                    .timeout(Duration::from_millis(200));
                let layer = RateLimitLayer::builder()
                    .quota(quota().exact(exact))
                    .redis(backend)
                    .build()
                    .map_err(|e| e.to_string())?;
                services.push(layer.layer(noop()));
            }
            timed(&mut services, prefill, "198.51.100.2").await;
            let before = script_calls(redis.addr).await;
            let mut times = timed(&mut services, requests, "198.51.100.2").await;
            let calls = script_calls(redis.addr).await.saturating_sub(before);
            let (mean, p50, p99) = summary(&mut times, floor_mean);
            println!(
                "{:<12} {:>5}% {mean:>10.2} {p50:>10.2} {p99:>10.2} {:>14.3}",
                if exact { "redis exact" } else { "redis leased" },
                level,
                calls as f64 / requests as f64
            );
        }
    }
    concurrent(&redis).await?;
    outage(&mut redis).await
}

/// Concurrent requests for different keys in exact mode: one script call each, but
/// sharing one multiplexed connection, so their round trips overlap (pipelined) rather
/// than queue.
async fn concurrent(redis: &RedisServer) -> Result<(), String> {
    let url = format!("redis://{}/", redis.addr);
    println!("\nconcurrent keys, exact mode, one instance (one multiplexed connection):");
    println!(
        "{:<22} {:>12} {:>14} {:>14}",
        "clients", "requests/s", "scripts/req", "connections"
    );
    for clients in [1usize, 8, 64] {
        let backend = RedisBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())?
            .namespace(format!("concurrent-{clients}"))
            .instances(1)
            .timeout(Duration::from_secs(2));
        let layer = RateLimitLayer::builder()
            .quota(Quota::new("q", format!("{COUNT} per 1h").parse().expect("a rate")).exact(true))
            .redis(backend)
            .build()
            .map_err(|e| e.to_string())?;
        let service = layer.layer(noop());
        // One request first, so the connection exists before the clock starts.
        timed(&mut [service.clone()], 1, "203.0.113.250").await;
        let per_client = 2_000 / clients;
        let before = script_calls(redis.addr).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let mut services = [service.clone()];
                tokio::spawn(async move {
                    timed(&mut services, per_client, &format!("203.0.113.{c}")).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
        let elapsed = started.elapsed();
        let total = per_client * clients;
        let calls = script_calls(redis.addr).await.saturating_sub(before);
        let info = command(redis.addr, "INFO clients")
            .await
            .unwrap_or_default();
        // Less the connection that asks.
        let connections = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .saturating_sub(1);
        println!(
            "{:<22} {:>12.0} {:>14.3} {:>14}",
            format!("{clients} (distinct keys)"),
            total as f64 / elapsed.as_secs_f64(),
            calls as f64 / total as f64,
            connections
        );
    }
    Ok(())
}

/// Redis killed under load and started again (empty): the failure policy (local
/// fallback, each instance its half) answers meanwhile, the leases held at the kill are
/// spent, nothing panics, and the first request after the restart is decided in Redis.
async fn outage(redis: &mut RedisServer) -> Result<(), String> {
    let url = format!("redis://{}/", redis.addr);
    let quota = || Quota::new("q", "6000 per 1h".parse().expect("a rate")).burst(200);
    let mut services = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())?
            .namespace("outage")
            .instances(2)
            .lease_ttl(Duration::from_secs(60))
            .timeout(Duration::from_millis(200));
        let layer = RateLimitLayer::builder()
            .quota(quota())
            .redis(backend)
            .build()
            .map_err(|e| e.to_string())?;
        handles.push(layer.handle());
        services.push(layer.layer(noop()));
    }
    let client = "198.51.100.3";
    println!(
        "\noutage: two instances, 6000 per hour with a burst of 200, leases of up to a \
         minute, local fallback (each instance half); 40 requests, Redis killed, 400 \
         requests, restarted"
    );
    let (before, _) = admitted(&mut services, 40, client).await;
    let left = handles[0]
        .check_key("q", None, &[client])
        .await
        .map_err(|e| e.to_string())?
        .remaining;
    let held = 200u32.saturating_sub(left).saturating_sub(before as u32);
    redis.child.kill().map_err(|e| e.to_string())?;
    let _ = redis.child.wait();
    let (during, _) = admitted(&mut services, 400, client).await;
    let port = redis.addr.port();
    *redis = launch_redis(port).await?;
    let (after, first) = admitted(&mut services, 1, client).await;
    let calls = script_calls(redis.addr).await;
    println!(
        "admitted before the kill: {before}; leased permits held at the kill: {held}; \
         during the outage: {during} (the two local halves, 200, and those leases)"
    );
    println!(
        "after the restart: the first request {} in {:.0} µs, decided in the new Redis \
         ({calls} script calls there: a NOSCRIPT answer, then the script loaded)",
        if after == 1 { "allowed" } else { "refused" },
        first.as_secs_f64() * 1e6,
    );
    if calls == 0 {
        return Err("the first request after the restart did not reach Redis".into());
    }
    Ok(())
}

/// How many of `n` requests from `client` were allowed, and the last one's time.
async fn admitted<S>(services: &mut [S], n: usize, client: &str) -> (usize, Duration)
where
    S: Service<Request<()>, Response = Response<portcullis::core::RejectOrBody<()>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut allowed = 0;
    let mut last = Duration::ZERO;
    for i in 0..n {
        let service = &mut services[i % services.len()];
        let started = Instant::now();
        let ready = service.ready().await.expect("ready");
        let response = ready.call(from(client)).await.expect("an answer");
        last = started.elapsed();
        allowed += usize::from(response.status() == http::StatusCode::OK);
    }
    (allowed, last)
}
