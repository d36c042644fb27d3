//! End-to-end load on the gateway example, beside a bare axum server.
//!
//! ```sh
//! apt-get install -y wrk
//! cargo run --release -p portcullis-load              # throughput, then the soak
//! cargo run --release -p portcullis-load -- throughput --rounds 5 --seconds 10
//! cargo run --release -p portcullis-load -- soak --requests 1000000
//! cargo run --release -p portcullis-load -- redis --requests 3000   # needs redis-server
//! ```
//!
//! `throughput` starts one hello-world server per target, each pinned to the first
//! core: bare axum, the peer crates (tower_governor, tower-http's bearer check,
//! jwt-authorizer RS256), each of our layers alone and the whole stack, each built from
//! a gateway file and applied as the gateway applies it, all around the same handler;
//! and the whole stack forwarding (`[[route]]`) to a bare axum upstream of its own,
//! whose CPU time counts with the gateway's, to price the proxy hop.
//! It drives each in turn with `wrk` pinned to the second core, round after round, and
//! prints the server's CPU time per request (utime + stime from `/proc`, which load on
//! the other core does not inflate) beside requests per second, p50, p99 and the load
//! average. It exits non-zero if a judged target keeps less than its goal of bare
//! axum's CPU-bound throughput (issue 22: the whole stack 0.75, audit alone 0.93, each
//! other layer alone 0.97).
//!
//! `soak` sends a million requests with random credentials, good and bad, from random
//! source addresses on loopback, checks every answer against what that request may
//! get, and exits non-zero on any 5xx, unexpected answer or broken connection, or if
//! the gateway's resident memory at the end is more than 20 % above its memory after
//! the warm-up.
//!
//! `redis` measures a rate-limited request with its quota shared through a
//! `redis-server` it starts (two layer instances, the quota filled to 10, 50 and 95 %)
//! beside the in-process quota: added latency (mean, p50, p99) and script calls per
//! request.
//!
//! Not run in CI (two cores cannot give it a quiet machine); `cargo test` builds it and
//! runs its unit tests. See benches/README.md for the latest numbers.

mod hello;
mod redis_quota;
mod server;
mod setup;
mod soak;
mod throughput;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use server::{build_gateway, can_pin, workspace_root, Server};
use setup::{write_common, write_gateway, write_stack, write_stack_with_route, Layer, FULL_STACK};
use soak::SoakShape;
use throughput::{Shape, Target};

#[derive(Parser, Debug)]
#[command(
    about = "Load and soak runs of the gateway example against bare axum",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: throughput, then the soak, with these flags.
    #[command(flatten)]
    throughput: ThroughputArgs,
    #[command(flatten)]
    soak: SoakArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Throughput and latency of the whole stack against bare axum.
    Throughput(ThroughputArgs),
    /// A million requests with random credentials and addresses: answers and memory.
    Soak(SoakArgs),
    /// A rate-limited request through Redis (two instances) beside in process:
    /// added latency and Redis script calls per request.
    Redis {
        /// Measured requests per mode and fill level.
        #[arg(long, default_value_t = 3000)]
        requests: usize,
    },
    /// The hello-world server, bare or behind a stack or a peer (started by
    /// `throughput`).
    #[command(hide = true)]
    Hello {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The layers of this gateway file in front.
        #[arg(long, conflicts_with = "peer")]
        config: Option<PathBuf>,
        /// A peer crate in front: tower-governor, tower-http-bearer (with --token) or
        /// jwt-authorizer (with --jwks).
        #[arg(long)]
        peer: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Serve with Portcullis's serve loop (`serve_hyper_with`, plain TCP, default
        /// limits) instead of `axum::serve`.
        #[arg(long)]
        serve_loop: bool,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct ThroughputArgs {
    /// Rounds; each runs every target once.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per target per round.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// Connections `wrk` keeps open.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Only the targets whose names contain one of these words (comma-separated);
    /// bare axum, the baseline, always runs.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
struct SoakArgs {
    /// Requests in all.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Requests after which memory is taken as the baseline.
    #[arg(long, default_value_t = 200_000)]
    warm_up: u64,
    /// Connections open at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Client addresses drawn from (127.1.0.0 upwards).
    #[arg(long, default_value_t = 8192)]
    addresses: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (throughput_args, soak_args, redis_requests) = match cli.command {
        Some(Command::Hello {
            listen,
            config,
            peer,
            token,
            jwks,
            serve_loop,
        }) => {
            let front = match (config, peer.as_deref(), token, jwks) {
                (Some(config), None, _, _) => hello::Front::Gateway(config),
                (None, None, _, _) => hello::Front::Nothing,
                (None, Some("tower-governor"), _, _) => hello::Front::TowerGovernor,
                (None, Some("tower-http-bearer"), Some(token), _) => {
                    hello::Front::TowerHttpBearer(token)
                }
                (None, Some("jwt-authorizer"), _, Some(jwks)) => hello::Front::JwtAuthorizer(jwks),
                _ => {
                    eprintln!("hello: give --config FILE, or --peer tower-governor, --peer tower-http-bearer --token T, or --peer jwt-authorizer --jwks FILE");
                    return ExitCode::FAILURE;
                }
            };
            return match hello::serve(listen, front, serve_loop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("hello: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Redis { requests }) => (None, None, Some(requests)),
        Some(Command::Throughput(args)) => (Some(args), None, None),
        Some(Command::Soak(args)) => (None, Some(args), None),
        None => (Some(cli.throughput), Some(cli.soak), None),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "load: build with --release: a debug build of the baseline measures the wrong thing"
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load: starting Tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let mut met = true;
        if let Some(args) = throughput_args {
            met &= throughput(&args).await?;
        }
        if let Some(args) = soak_args {
            met &= soak(&args).await?;
        }
        if let Some(requests) = redis_requests {
            redis_quota::run(requests.max(100)).await?;
        }
        Ok::<bool, String>(met)
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("load: the goal was not met (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A fresh folder under `target/load`.
fn run_dir(name: &str) -> Result<PathBuf, String> {
    let dir = workspace_root().join("target/load").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn print_machine(pin: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cpu}, {cores} cores; servers {}",
        if pin {
            "on core 0, load generator on core 1"
        } else {
            "and load generator unpinned (taskset missing or one core)"
        }
    );
}

/// The gateway example serving `config`.
async fn start_gateway(
    name: &'static str,
    pin: bool,
    gateway: &Path,
    config: &Path,
) -> Result<Server, String> {
    let config = config.to_string_lossy();
    Server::start(name, pin, gateway, &["--config", &config]).await
}

/// The whole stack answering an API key's request itself.
const FULL_STACK_API_KEY: &str = "full stack, API key";
/// The same, forwarding the request to bare axum (the upstream's CPU counted too).
const PROXIED: &str = "full stack, API key, proxied to bare axum";
/// A gateway without layers forwarding to bare axum (the upstream's CPU counted too).
const PROXY_ALONE: &str = "no layers, proxied to bare axum";

/// A target before its server starts: its name, the hello server's arguments, the
/// request's headers, and its goal.
type Planned = (&'static str, Vec<String>, Vec<String>, Option<f64>);

async fn throughput(args: &ThroughputArgs) -> Result<bool, String> {
    let dir = run_dir("throughput")?;
    let credentials = write_common(&dir, 1000)?;
    let pin = can_pin();
    print_machine(pin);
    let me = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let path = |p: PathBuf| p.to_string_lossy().into_owned();

    let api_key = format!("x-api-key: {}", credentials.api_keys[500]);
    let api_key_header = api_key.clone();
    let bearer = format!("authorization: Bearer {}", credentials.rs256_tokens[500]);
    let bearer_token = credentials.rs256_tokens[500].clone();
    let jwks = path(dir.join("idp-jwks.json"));
    let mut plan: Vec<Planned> = vec![
        ("bare axum hello", vec![], vec![], None),
        (
            "tower_governor 0.8, per IP",
            vec!["--peer".into(), "tower-governor".into()],
            vec![],
            None,
        ),
        (
            "tower-http 0.6 bearer (fixed token)",
            vec![
                "--peer".into(),
                "tower-http-bearer".into(),
                "--token".into(),
                bearer_token,
            ],
            vec![bearer.clone()],
            None,
        ),
        (
            "jwt-authorizer 0.15, RS256",
            vec![
                "--peer".into(),
                "jwt-authorizer".into(),
                "--jwks".into(),
                jwks,
            ],
            vec![bearer.clone()],
            None,
        ),
    ];
    plan.push((
        "bare axum hello, Portcullis serve loop",
        vec!["--serve-loop".into()],
        vec![],
        None,
    ));
    let alone: [(&'static str, Layer, Vec<String>, f64); 6] = [
        (
            "audit alone (hash-chained file)",
            Layer::Audit,
            vec![],
            0.93,
        ),
        (
            "ip-allowlist alone (10,000 networks)",
            Layer::IpAllowlist,
            vec![],
            0.97,
        ),
        (
            "api-key alone (1,000 keys)",
            Layer::ApiKey,
            vec![api_key.clone()],
            0.97,
        ),
        (
            "jwt alone (RS256, cached)",
            Layer::Jwt,
            vec![bearer.clone()],
            0.97,
        ),
        (
            "role-router alone (100 rules)",
            Layer::RoleRouterPublic,
            vec![],
            0.97,
        ),
        (
            "rate-limit alone (per IP)",
            Layer::RateLimitPerIp,
            vec![],
            0.97,
        ),
    ];
    for (index, (name, layer, headers, goal)) in alone.into_iter().enumerate() {
        let config = write_stack(&dir, &format!("alone-{index}"), &[layer])?;
        plan.push((
            name,
            vec!["--config".into(), path(config)],
            headers,
            Some(goal),
        ));
    }
    let full = path(write_stack(&dir, "full", FULL_STACK)?);
    let without_audit = path(write_stack(&dir, "no-audit", &FULL_STACK[1..])?);
    plan.push((
        FULL_STACK_API_KEY,
        vec!["--config".into(), full.clone()],
        vec![api_key.clone()],
        Some(0.75),
    ));
    plan.push((
        "full stack, RS256 JWT (cached)",
        vec!["--config".into(), full],
        vec![bearer],
        Some(0.75),
    ));
    plan.push((
        "full stack without audit, API key",
        vec!["--config".into(), without_audit],
        vec![api_key],
        None,
    ));

    // An empty word (`--only a,`) would match every name: it is ignored.
    let words: Vec<&str> = args
        .only
        .iter()
        .map(|word| word.trim())
        .filter(|word| !word.is_empty())
        .collect();
    let wanted = |name: &str| {
        name == "bare axum hello"
            || words.is_empty()
            || words.iter().any(|word| name.contains(word))
    };
    plan.retain(|(name, ..)| wanted(name));
    let mut servers = Vec::with_capacity(plan.len());
    let mut targets = Vec::with_capacity(plan.len());
    for (name, server_args, headers, goal) in plan {
        let mut all = vec!["hello".to_owned()];
        all.extend(server_args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let server = Server::start(name, pin, &me, &all).await?;
        targets.push(Target {
            name,
            url: format!("http://{}/v1/key/default", server.addr),
            headers,
            pid: server.pid(),
            upstream_pid: None,
            goal,
        });
        servers.push(server);
    }
    // A gateway forwarding (`[[route]]`) to a bare axum of its own, both on the server
    // core: their CPU per request together. Without layers, and with the full stack
    // beside the stack answering itself.
    let proxied: [(&'static str, &[Layer], Vec<String>); 2] = [
        (PROXY_ALONE, &[], vec![]),
        (PROXIED, FULL_STACK, vec![api_key_header]),
    ];
    for (name, layers, headers) in proxied {
        if !wanted(name) {
            continue;
        }
        let upstream = Server::start("upstream", pin, &me, &["hello"]).await?;
        let config = write_stack_with_route(&dir, name, layers, Some(upstream.addr))?;
        let config = path(config);
        let proxy = Server::start(name, pin, &me, &["hello", "--config", &config]).await?;
        targets.push(Target {
            name,
            url: format!("http://{}/v1/key/default", proxy.addr),
            headers,
            pid: proxy.pid(),
            upstream_pid: upstream.pid(),
            goal: None,
        });
        servers.push(proxy);
        servers.push(upstream);
    }
    let shape = Shape {
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds,
        pin,
    };
    let samples = throughput::measure(&targets, shape, &dir).await?;
    drop(servers);
    let (table, met) = throughput::report(&targets, &samples);
    println!(
        "\nwrk, 1 thread, {} connections, {} rounds of {} s per target; every target serves the same hello-world handler at GET /v1/key/default; medians of the rounds; load average {}\n\n{table}",
        args.connections,
        args.rounds,
        args.seconds,
        throughput::load_average().map_or("unknown".into(), |l| format!("{l:.2}")),
    );
    let named = |name: &str| targets.iter().position(|target| target.name == name);
    if let Some(alone) = named(PROXY_ALONE) {
        println!(
            "{}\n",
            throughput::proxy_hop("no layers", &samples[0], &samples[0], &samples[alone])
        );
    }
    if let (Some(local), Some(proxied)) = (named(FULL_STACK_API_KEY), named(PROXIED)) {
        println!(
            "{}\n",
            throughput::proxy_hop(
                "the full stack",
                &samples[0],
                &samples[local],
                &samples[proxied]
            )
        );
    }
    println!(
        "goal (issue 22: full stack ≥ 0.75 of bare axum's CPU-bound throughput, audit alone ≥ 0.93, each other layer alone ≥ 0.97): {}",
        if met { "met" } else { "NOT met" }
    );
    remove_audit(&dir);
    Ok(met)
}

async fn soak(args: &SoakArgs) -> Result<bool, String> {
    if args.warm_up >= args.requests || args.addresses == 0 || args.addresses > 65_536 {
        return Err("give --warm-up below --requests and --addresses from 1 to 65536".into());
    }
    let gateway = build_gateway().await?;
    let dir = run_dir("soak")?;
    let credentials = write_common(&dir, 1000)?;
    let config = write_gateway(&dir, "soak")?;
    let pin = can_pin();
    print_machine(pin);
    let mut server = start_gateway("gateway, whole stack", pin, &gateway, &config).await?;
    let shape = SoakShape {
        requests: args.requests,
        warm_up: args.warm_up,
        concurrency: args.concurrency,
        addresses: args.addresses,
    };
    let report = soak::run(&mut server, credentials, shape).await?;
    drop(server);
    println!(
        "\nsoak: {} connections at once, each 1–20 requests from a random address of {} (127.1.0.0 up) or, one in 50, of the denied {}\n\n{}",
        args.concurrency,
        args.addresses,
        setup::DENIED_NETWORK,
        soak::render(&report)
    );
    let passed = soak::passed(&report);
    println!(
        "goal (no 5xx, every answer expected, memory at the end within 20 % of after warm-up): {}",
        if passed { "met" } else { "NOT met" }
    );
    remove_audit(&dir);
    Ok(passed)
}

/// The audit files of a run hold one event per request: gigabytes after a soak.
fn remove_audit(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("audit-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
