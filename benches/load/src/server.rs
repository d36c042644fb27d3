//! The servers under load: started as child processes on the first core, each found
//! by the address it prints, each stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// A server process and the address it listens on.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    child: Child,
}

/// The core the servers run on; the load generator takes the other one, so that the
/// two do not compete for a core.
pub(crate) const SERVER_CORE: &str = "0";
pub(crate) const CLIENT_CORE: &str = "1";

/// Whether `taskset` can pin processes here (two cores or more, and the tool present).
pub(crate) fn can_pin() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores >= 2
        && std::process::Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `program args…`, under `taskset -c core` when `pin`.
pub(crate) fn command(pin: bool, core: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = if pin {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args);
    command
}

impl Server {
    /// Starts `program args…` on the server core and waits until it prints the line
    /// `…listening on http://ADDR`. Its standard output (the audit events, if any go
    /// there) is thrown away.
    pub(crate) async fn start(
        name: &'static str,
        pin: bool,
        program: &Path,
        args: &[&str],
    ) -> Result<Self, String> {
        let mut child = command(pin, SERVER_CORE, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: starting {}: {e}", program.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    return addr
                        .trim()
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("{line:?}: {e}"));
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(format!("exited before listening:\n{seen}"))
        })
        .await
        .map_err(|_| format!("{name}: not listening after 60 s"))?
        .map_err(|e| format!("{name}: {e}"))?;
        // Keep reading what it prints, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { addr, child })
    }

    /// The process id of the server itself (not of `taskset`, which `exec`s it).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its resident memory now, from `/proc` (Linux), in KiB.
    pub(crate) fn resident_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The workspace's root, where `cargo build` runs and `target/` lives.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the gateway example in release and returns its path.
pub(crate) async fn build_gateway() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("load: cargo build --release --example gateway");
    let status = Command::new(cargo)
        .args(["build", "--release", "--example", "gateway"])
        .current_dir(workspace_root())
        .status()
        .await
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release --example gateway: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target
        .join("release/examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX)))
}
