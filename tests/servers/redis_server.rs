//! A real `redis-server` on a free loopback port, started and stopped by the test.
//!
//! Without `redis-server` on the PATH the Redis tests say they were skipped and how to
//! install it. `PORTCULLIS_REQUIRE_REDIS=1` (set by `.ci/run`) turns that skip into a
//! failure, so CI always runs them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REQUIRE_VAR: &str = "PORTCULLIS_REQUIRE_REDIS";

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Arguments beside the port and the defaults (a config file first, for Sentinel).
    before: Vec<String>,
    after: Vec<String>,
    /// Its working directory: a replica writes the master's data there, and a server
    /// loads what it finds there, so none may share one (or the tests' own).
    dir: Scratch,
}

/// Whether `redis-server` can run here; if not and the environment does not require
/// it, says the test was skipped.
fn installed(test: &str) -> bool {
    let runs = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !runs {
        let message = format!(
            "SKIPPED {test}: redis-server is not installed. Install it (Debian/Ubuntu: \
             `apt-get install -y redis-server`, macOS: `brew install redis`) to run the \
             Redis tests."
        );
        if std::env::var_os(REQUIRE_VAR).is_some_and(|v| v != "0") {
            panic!("{message} {REQUIRE_VAR} is set, so a skip is a failure.");
        }
        // Straight to stderr: `eprintln!` is captured and hidden for passing tests, and
        // a skip must be seen.
        let _ = writeln!(std::io::stderr(), "{message}");
    }
    runs
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server, or returns `None` (having said why) if `redis-server` is not
    /// installed and the environment does not require it.
    pub async fn start(test: &str) -> Option<Self> {
        if !installed(test) {
            return None;
        }
        Some(Self::launched(Vec::new(), Vec::new()).await)
    }

    async fn launched(before: Vec<String>, after: Vec<String>) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            before,
            after,
            dir: Scratch::new(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.0.to_string_lossy().into_owned();
        let defaults = [
            "--dir",
            &dir,
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ];
        let child = Command::new("redis-server")
            .args(&self.before)
            .args(defaults)
            .args(&self.after)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers_ping().await {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|child| child.try_wait()) {
                panic!("redis-server on port {port} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr()).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG\r\n"
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Resumed first, so that a frozen server is never left behind.
            let _ = rustix::process::kill_process(Pid::from_child(&child), Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as
    /// when Redis stalls.
    pub fn stop(&self) {
        self.signal(Signal::STOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the server runs");
        let pid = Pid::from_child(child);
        rustix::process::kill_process(pid, signal).expect("a signal to redis-server");
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// A plain client, for looking at what the layer wrote.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory of its own under the system's temporary one, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("portcullis-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One command's answer from `server`, as text.
async fn ask(server: &RedisServer, args: &[&str]) -> String {
    let mut client = server.client().await;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    match command
        .query_async::<redis::Value>(&mut client)
        .await
        .unwrap()
    {
        redis::Value::Okay => "OK".into(),
        redis::Value::SimpleString(text) => text,
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    }
}

/// A Redis Cluster of three masters on loopback ports, made by the test (slots split
/// in three, the nodes introduced to each other), killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(test: &str) -> Option<Self> {
        if !installed(test) {
            return None;
        }
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        for _ in 0..3 {
            // The bus port is chosen too: by default it is the node's port + 10000, which
            // does not exist for a third of the ephemeral range (the node then refuses
            // to start) and may be taken for the rest.
            let bus_port = free_port();
            buses.push(bus_port);
            let bus = bus_port.to_string();
            // The configuration file is relative: in the node's own directory.
            let after = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus,
            ]
            .map(String::from)
            .to_vec();
            nodes.push(RedisServer::launched(Vec::new(), after).await);
        }
        for (i, node) in nodes.iter().enumerate() {
            let (first, last) = (i * 16384 / 3, (i + 1) * 16384 / 3 - 1);
            let answer = ask(
                node,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )
            .await;
            assert_eq!(answer, "OK");
        }
        for (node, bus) in nodes.iter().zip(&buses).skip(1) {
            let (port, bus) = (node.port.to_string(), bus.to_string());
            assert_eq!(
                ask(&nodes[0], &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]).await,
                "OK"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for node in &nodes {
                let info = ask(node, &["CLUSTER", "INFO"]).await;
                ready &=
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
            }
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Self { nodes })
    }

    /// The cluster's URL, naming two of its nodes (the client learns the third).
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}/",
            self.nodes[0].port, self.nodes[1].port
        )
    }
}

/// A master, its replica, and one Sentinel watching them (a master down for 500 ms is
/// failed over to the replica), killed when dropped.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisServer,
    _dir: Scratch,
}

impl RedisSentinel {
    pub const MASTER: &str = "portcullis-master";

    pub async fn start(test: &str) -> Option<Self> {
        if !installed(test) {
            return None;
        }
        let dir = Scratch::new();
        let master = RedisServer::launched(Vec::new(), Vec::new()).await;
        let replica = RedisServer::launched(
            Vec::new(),
            ["--replicaof", "127.0.0.1", &master.port.to_string()]
                .map(String::from)
                .to_vec(),
        )
        .await;
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let config = dir.0.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "sentinel monitor {} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {0} 500\n\
                 sentinel failover-timeout {0} 5000\n",
                Self::MASTER,
                master.port
            ),
        )
        .unwrap();
        let sentinel = RedisServer::launched(
            vec![config.to_string_lossy().into_owned(), "--sentinel".into()],
            Vec::new(),
        )
        .await;
        // Wait until Sentinel knows the replica, so that it can fail over to it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ask(&sentinel, &["SENTINEL", "REPLICAS", Self::MASTER])
            .await
            .contains(&replica.port.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "Sentinel did not find the replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Self {
            master,
            replica,
            sentinel,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}",
            self.sentinel.port,
            Self::MASTER
        )
    }

    /// The master Sentinel names now.
    pub async fn master_port(&self) -> u16 {
        let mut client = self.sentinel.client().await;
        let (_host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(Self::MASTER)
            .query_async(&mut client)
            .await
            .unwrap();
        port
    }
}

/// A `redis-server` that also listens with TLS (its certificate and key, the CA whose
/// clients it accepts, and whether it requires a client certificate), killed when
/// dropped. Its plain port stays open for looking at what was written.
pub struct TlsRedisServer {
    pub server: RedisServer,
    pub tls_port: u16,
    _files: Scratch,
}

impl TlsRedisServer {
    pub async fn start(
        test: &str,
        certificate: &str,
        key: &str,
        client_ca: &str,
        require_client_certificate: bool,
    ) -> Option<Self> {
        if !installed(test) {
            return None;
        }
        let files = Scratch::new();
        let write = |name: &str, pem: &str| {
            let path = files.0.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_string_lossy().into_owned()
        };
        let tls_port = free_port();
        let after = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            write("server.pem", certificate),
            "--tls-key-file".to_owned(),
            write("server-key.pem", key),
            "--tls-ca-cert-file".to_owned(),
            write("ca.pem", client_ca),
            "--tls-auth-clients".to_owned(),
            if require_client_certificate {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ];
        let server = RedisServer::launched(Vec::new(), after).await;
        Some(Self {
            server,
            tls_port,
            _files: files,
        })
    }

    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port)
    }
}
