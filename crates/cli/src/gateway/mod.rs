//! The gateway program: a small HSM-style key service behind every Portcullis layer,
//! composed from one configuration file. `portcullis serve` runs it, and so does
//! `cargo run --example gateway` (a thin wrapper around this module).
//!
//! Exit status: 0 after a clean shutdown (SIGTERM or SIGINT, requests in flight
//! finished or the grace period over, audit files synced to disk); 1 when the
//! configuration is wrong (the message names the file, line and key); 2 when it cannot
//! run (an address in use, files it cannot write or watch, audit files it cannot sync,
//! or a second signal that stopped it without waiting).

mod dev;
mod echo;
mod hsm;

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis::config::GatewayConfig;

/// What to serve.
#[derive(Debug)]
pub(crate) enum Setup {
    /// Exactly what the file says.
    Config(PathBuf),
    /// The development setup in `dir`, made where missing (everything with `fresh`).
    Dev { dir: PathBuf, fresh: bool },
}

/// How the operational log on stderr is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// The exit status for a configuration that is wrong.
const CONFIG_ERROR: u8 = 1;
/// The exit status for a gateway that could not run, or stopped without finishing.
const RUNTIME_FAILURE: u8 = 2;

/// Runs the gateway until SIGTERM or SIGINT, and says how it ended.
pub(crate) fn run(setup: Setup, log: LogFormat) -> ExitCode {
    init_logging(log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the runtime: {error}");
            return ExitCode::from(RUNTIME_FAILURE);
        }
    };
    let code = runtime.block_on(serve(setup));
    // Connections still open after the grace period were cut; their tasks go with the
    // runtime, without waiting for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The gateway a setup describes, built (every file it names read and checked), with
/// the file's path and the development setup's commands; or the exit status and a
/// message already printed. With `example_upstream`, the development setup starts its
/// example upstream and adds its route to what it reads from the file.
pub(crate) async fn load(
    setup: Setup,
    example_upstream: bool,
) -> Result<(PathBuf, Option<dev::DevSetup>, portcullis::config::Gateway), ExitCode> {
    let (config_path, mut dev) = match setup {
        Setup::Config(path) => (path, None),
        Setup::Dev { dir, fresh } => match dev::write_dev_setup(&dir, fresh) {
            Ok(dev) => (dir.join("gateway.toml"), Some(dev)),
            Err(error) => {
                eprintln!(
                    "gateway: cannot make the development setup in {}: {error}",
                    dir.display()
                );
                return Err(ExitCode::from(RUNTIME_FAILURE));
            }
        },
    };
    let config = match dev.as_mut() {
        Some(dev) if example_upstream => {
            let upstream = match echo::start(dev.assertion_key.clone()).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    eprintln!("gateway: {error}");
                    return Err(ExitCode::from(RUNTIME_FAILURE));
                }
            };
            dev.example_upstream = Some(upstream);
            with_example_upstream(&config_path, upstream)
        }
        _ => GatewayConfig::from_file(&config_path),
    };
    let built = match config {
        Ok(config) => config.build().await,
        Err(error) => Err(error),
    };
    match built {
        Ok(gateway) => Ok((config_path, dev, gateway)),
        Err(error) => {
            eprintln!("gateway: {error}");
            Err(ExitCode::from(CONFIG_ERROR))
        }
    }
}

/// The file at `path` with the example upstream's entries after its own.
fn with_example_upstream(
    path: &std::path::Path,
    upstream: std::net::SocketAddr,
) -> Result<GatewayConfig, portcullis::config::ConfigError> {
    // Read as `from_file` reads, so that its errors name the file the same way.
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(_) => return GatewayConfig::from_file(path),
    };
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    GatewayConfig::parse(
        &path.display().to_string(),
        &(text + &dev::DevSetup::example_upstream_config(upstream)),
        &base,
    )
}

async fn serve(setup: Setup) -> ExitCode {
    let (config_path, dev, gateway) = match load(setup, true).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let server = match gateway.bind().await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(RUNTIME_FAILURE);
        }
    };
    let scheme = if gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(admin) = server.admin_addr() {
        eprintln!("gateway: admin on {scheme}://{admin}");
    }
    if let Some(metrics) = server.metrics_addr() {
        eprintln!("gateway: metrics on http://{metrics}/metrics");
    }
    eprintln!(
        "gateway: {} with layers {:?}",
        config_path.display(),
        gateway.layer_kinds()
    );
    let addr = server.local_addr();
    eprintln!("gateway: listening on {scheme}://{addr}");
    if let Some(dev) = &dev {
        if let Some(upstream) = dev.example_upstream {
            eprintln!(
                "gateway: the development setup adds to what it reads from the file (never to the file):{}",
                dev::DevSetup::example_upstream_config(upstream)
            );
        }
        dev.print_commands(addr.port());
        eprintln!(
            "gateway: what the file says, without the example upstream: portcullis serve --config {}",
            config_path.display()
        );
    }
    // With `[[route]]`s the gateway stands in front of other services; without, it
    // serves its own demonstration service. The development setup serves both: its
    // example upstream's route is the one it adds.
    let app = match gateway.has_routes() && dev.is_none() {
        true => axum::Router::new(),
        false => hsm::router(),
    };
    match server.serve(app, first_signal()).await {
        // The summary is in the log (`portcullis::serve`).
        Ok(summary) => {
            if summary.audit_error.is_some() {
                ExitCode::from(RUNTIME_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::from(RUNTIME_FAILURE)
        }
    }
}

/// Completes on the first SIGTERM or SIGINT; a second one ends the process at once.
async fn first_signal() {
    let Ok(mut signals) = Signals::new() else {
        eprintln!("gateway: cannot listen for signals; stop it with SIGKILL");
        return std::future::pending().await;
    };
    let name = signals.next().await;
    eprintln!("gateway: {name}: shutting down gracefully (send it again to stop at once)");
    tokio::spawn(async move {
        let name = signals.next().await;
        eprintln!("gateway: {name} again: stopping now, without waiting for requests in flight");
        std::process::exit(i32::from(RUNTIME_FAILURE));
    });
}

/// SIGTERM and SIGINT (Ctrl-C), received as often as they come.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The operational log on stderr, `RUST_LOG` choosing what (`info` by default), so
/// that audit events written to stdout stay alone there.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
