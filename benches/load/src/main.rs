//! End-to-end load on the gateway example, beside a bare axum server.
//!
//! ```sh
//! apt-get install -y wrk
//! cargo run --release -p portcullis-load              # throughput, then the soak
//! cargo run --release -p portcullis-load -- throughput --rounds 5 --seconds 10
//! cargo run --release -p portcullis-load -- soak --requests 1000000
//! ```
//!
//! `throughput` builds the gateway example in release, starts it (the whole stack, and
//! again with no layers) and axum's hello world, each pinned to the first core, and
//! drives each in turn with `wrk` pinned to the second, round after round. It prints
//! requests per second and p50/p99 latency as ratios to the bare axum server, and
//! exits non-zero if the whole stack keeps less than 90 % of its throughput or has a
//! p99 over 1.2× its p99.
//!
//! `soak` sends a million requests with random credentials, good and bad, from random
//! source addresses on loopback, checks every answer against what that request may
//! get, and exits non-zero on any 5xx, unexpected answer or broken connection, or if
//! the gateway's resident memory at the end is more than 20 % above its memory after
//! the warm-up.
//!
//! Not run in CI (two cores cannot give it a quiet machine); `cargo test` builds it and
//! runs its unit tests. See benches/README.md for the latest numbers.

mod hello;
mod server;
mod setup;
mod soak;
mod throughput;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use server::{build_gateway, can_pin, workspace_root, Server};
use setup::{write_common, write_gateway, Quotas};
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
    /// The bare axum server (started by `throughput`).
    #[command(hide = true)]
    Hello {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct ThroughputArgs {
    /// Rounds; each runs every target once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per target per round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Connections `wrk` keeps open.
    #[arg(long, default_value_t = 50)]
    connections: u32,
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
    let (throughput_args, soak_args) = match cli.command {
        Some(Command::Hello { listen }) => {
            return match hello::serve(listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("hello: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Throughput(args)) => (Some(args), None),
        Some(Command::Soak(args)) => (None, Some(args)),
        None => (Some(cli.throughput), Some(cli.soak)),
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

async fn throughput(args: &ThroughputArgs) -> Result<bool, String> {
    let gateway = build_gateway().await?;
    let dir = run_dir("throughput")?;
    let credentials = write_common(&dir, 1000)?;
    let full = write_gateway(&dir, "full", true, Quotas::Unreachable)?;
    let bare = write_gateway(&dir, "bare", false, Quotas::Unreachable)?;
    let pin = can_pin();
    print_machine(pin);

    let me = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let hello = Server::start("axum hello", pin, &me, &["hello"]).await?;
    let bare = start_gateway("gateway, no layers", pin, &gateway, &bare).await?;
    let full = start_gateway("gateway, whole stack", pin, &gateway, &full).await?;

    let route = "/v1/key/default";
    let targets = [
        Target {
            name: "bare axum hello world",
            url: format!("http://{}/", hello.addr),
            headers: vec![],
        },
        Target {
            name: "gateway routes, no layers",
            url: format!("http://{}{route}", bare.addr),
            headers: vec![],
        },
        Target {
            name: "whole stack, API key",
            url: format!("http://{}{route}", full.addr),
            headers: vec![format!("x-api-key: {}", credentials.api_keys[500])],
        },
        Target {
            name: "whole stack, JWT (cached)",
            url: format!("http://{}{route}", full.addr),
            headers: vec![format!("authorization: Bearer {}", credentials.tokens[500])],
        },
    ];
    let shape = Shape {
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds,
        pin,
    };
    let samples = throughput::measure(&targets, shape, &dir).await?;
    drop((hello, bare, full));
    let (table, met) = throughput::report(&targets, &samples);
    println!(
        "\nwrk, 1 thread, {} connections, {} rounds of {} s per target; medians of the rounds\n\n{table}",
        args.connections, args.rounds, args.seconds
    );
    println!(
        "goal (whole stack ≥ 90 % of bare axum's throughput, p99 ≤ 1.2×): {}",
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
    let config = write_gateway(&dir, "soak", true, Quotas::Realistic)?;
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
