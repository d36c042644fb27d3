//! The gateway: a small HSM-style key service behind every Portcullis layer, composed
//! from one configuration file. The same program as `portcullis serve`
//! (`crates/cli/src/gateway`), kept as an example so that this works from a checkout:
//!
//! ```sh
//! cargo run --example gateway                      # development setup, printed commands
//! cargo run --example gateway -- --fresh           # the same, everything made anew
//! cargo run --example gateway -- --config FILE     # exactly what FILE says
//! cargo run --example gateway -- --log-format json  # the operational log as JSON lines
//! ```
//!
//! Without arguments it makes what is missing of a development setup in
//! `target/gateway-dev/` (a CA, server and client certificates, an API key, a token
//! secret, `examples/gateway.toml` and its role table) and reuses the rest, so keys made
//! with `portcullis key new` survive a restart; `--fresh` makes everything anew. It
//! starts an example upstream on a loopback port and forwards `/echo` to it, with the
//! caller's identity in headers and in a signed assertion that the upstream verifies.
//! It prints `curl` commands that succeed (a client certificate, an API key, a JWT,
//! through to the upstream) and ones that are refused, and serves, with audit events on
//! stdout.
//!
//! The gateway reads its files again when they change and on `SIGHUP`, and stops
//! gracefully on `SIGTERM` or `SIGINT`: requests in flight finish, audit files are
//! synced to disk. Exit status: 0 clean shutdown, 1 configuration error, 2 runtime
//! failure.

#[path = "../../crates/cli/src/gateway/mod.rs"]
mod gateway;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut log = gateway::LogFormat::Text;
    if let Some(at) = args.iter().position(|arg| arg == "--log-format") {
        log = match args.get(at + 1).map(String::as_str) {
            Some("json") => gateway::LogFormat::Json,
            Some("text") => gateway::LogFormat::Text,
            _ => {
                eprintln!("usage: --log-format text|json");
                return ExitCode::from(1);
            }
        };
        args.drain(at..at + 2);
    }
    let dev_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/gateway-dev");
    let setup = match args.as_slice() {
        [] => gateway::Setup::Dev {
            dir: dev_dir,
            fresh: false,
        },
        [flag] if flag == "--fresh" => gateway::Setup::Dev {
            dir: dev_dir,
            fresh: true,
        },
        [flag, path] if flag == "--config" => gateway::Setup::Config(PathBuf::from(path)),
        _ => {
            eprintln!("usage: gateway [--fresh | --config FILE] [--log-format text|json]");
            return ExitCode::from(1);
        }
    };
    gateway::run(setup, log)
}
