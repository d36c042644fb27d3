//! The gateway: a small HSM-style key service behind every Portcullis layer, composed
//! from one configuration file.
//!
//! ```sh
//! cargo run --example gateway                      # development setup, printed commands
//! cargo run --example gateway -- --fresh           # the same, everything made anew
//! cargo run --example gateway -- --config FILE     # exactly what FILE says
//! ```
//!
//! Without arguments it makes what is missing of a development setup in
//! `target/gateway-dev/` (a CA, server and client certificates, an API key, a token
//! secret, `examples/gateway.toml` and its role table) and reuses the rest, so keys made
//! with `portcullis key new` survive a restart; `--fresh` makes everything anew. It
//! prints `curl` commands that succeed (a client certificate, an API key, a JWT) and one
//! that is refused, and serves, with audit events on stdout.
//!
//! The gateway reads its files again when they change and on `SIGHUP`: a key revoked
//! with `portcullis key revoke`, a connector blocked in its file or a network added to a
//! deny list takes effect within a second, and sessions opened with a revoked key or a
//! blocked connector end too.

mod hsm;
#[path = "../common/logging.rs"]
mod logging;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::config::GatewayConfig;
use portcullis::core::{AuthMethod, Principal, TlsPeer};
use portcullis::mtls_identity::{serve_hyper_with, DevPki, TlsListener};

const CONFIG: &str = include_str!("../gateway.toml");
const POLICY: &str = include_str!("../gateway-policy.toml");

#[tokio::main]
async fn main() -> ExitCode {
    // Logs (key fetches, reloads, refusals worth an operator's attention) on stderr.
    logging::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fresh = match args.first().map(String::as_str) {
        Some("--fresh") if args.len() == 1 => true,
        None => false,
        Some("--config") if args.len() == 2 => false,
        _ => return Err("usage: gateway [--fresh | --config FILE]".into()),
    };
    let (config_path, dev) = match args.as_slice() {
        [flag, path] if flag == "--config" => (PathBuf::from(path), None),
        _ => {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/gateway-dev");
            let dev = write_dev_setup(&dir, fresh)?;
            (dir.join("gateway.toml"), Some(dev))
        }
    };
    let config = GatewayConfig::from_file(&config_path)?;
    let gateway = config.build().await?;
    let app = gateway.apply(hsm::router());
    let tcp = tokio::net::TcpListener::bind(gateway.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", gateway.listen))?;
    let addr = tcp.local_addr()?;
    // Key files, connectors, role tables, lists and CRLs: read again when they change.
    let _reloads = gateway.reload_on_change(Duration::from_millis(200))?;
    if let (Some(admin), Some(settings)) = (gateway.admin_router(), &gateway.admin) {
        let tcp = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin): {e}", settings.listen))?;
        let addr = tcp.local_addr()?;
        match &gateway.tls {
            Some(tls) => {
                eprintln!("gateway: admin on https://{addr}");
                let listener = TlsListener::new(tcp, tls.clone()).for_axum();
                tokio::spawn(async move {
                    let _ = axum::serve(
                        listener,
                        admin.into_make_service_with_connect_info::<TlsPeer>(),
                    )
                    .await;
                });
            }
            None => {
                eprintln!("gateway: admin on http://{addr}");
                tokio::spawn(async move {
                    let _ = axum::serve(
                        tcp,
                        admin.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                    )
                    .await;
                });
            }
        }
    }
    eprintln!(
        "gateway: {} with layers {:?}",
        config_path.display(),
        gateway.layer_kinds()
    );
    match &gateway.tls {
        Some(tls) => {
            eprintln!("gateway: listening on https://{addr}");
            if let Some(dev) = &dev {
                dev.print_commands(addr.port());
                eprintln!(
                    "gateway: the same setup without the example: --config {}",
                    config_path.display()
                );
            }
            // hyper with the [server] limits: headers within 10 s, idle keep-alive
            // closed after it, bounded headers and connections.
            serve_hyper_with(
                TlsListener::new(tcp, tls.clone()),
                app,
                gateway.serve_limits.clone(),
            )
            .await;
        }
        None => {
            eprintln!("gateway: listening on http://{addr}");
            axum::serve(
                tcp,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await?;
        }
    }
    Ok(())
}

/// What the development setup made, for the printed commands.
struct DevSetup {
    dir: PathBuf,
    /// The API key's secret, when it was made now (only its digest is kept).
    api_key: Option<String>,
    token: String,
}

impl DevSetup {
    fn print_commands(&self, port: u16) {
        let dir = self.dir.display();
        let base = format!("https://localhost:{port}");
        let ca = format!("--cacert {dir}/ca.pem");
        println!("\nTry (each succeeds):");
        println!("  curl {ca} --cert {dir}/connector-7.pem {base}/v1/key");
        match &self.api_key {
            Some(key) => println!("  curl {ca} -H 'x-api-key: {key}' -X POST -H 'content-type: application/json' -d '{{\"name\":\"k2\"}}' {base}/v1/key"),
            None => println!("  (the API key was printed when it was made; another: portcullis key new --file {dir}/api-keys.toml --owner you --roles key-admin)"),
        }
        println!("  curl {ca} -H 'authorization: Bearer {}' -X POST -H 'content-type: application/json' -d '{{\"key\":\"default\",\"data\":\"aGVsbG8=\"}}' {base}/v1/sign", self.token);
        println!("  curl {ca} --cert {dir}/connector-7.pem -X POST {base}/v1/token");
        println!("Refused (401, no credentials):");
        println!("  curl {ca} {base}/v1/key\n");
    }
}

/// Makes what is missing of the development setup in `dir` (everything with `fresh`),
/// and keeps the rest: the CA and certificates together, the key file, the token
/// secret, the configuration and the role table each on their own.
fn write_dev_setup(dir: &Path, fresh: bool) -> Result<DevSetup, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let missing = |names: &[&str]| fresh || names.iter().any(|name| !dir.join(name).exists());
    let pki_files = [
        "ca.pem",
        "server.pem",
        "server.key",
        "connector-7.pem",
        "connectors.toml",
    ];
    if missing(&pki_files) {
        let pki = DevPki::generate(&["localhost", "127.0.0.1"])?;
        pki.write_to(dir)?;
        let connector = pki.client("connector-7")?;
        connector.write_to(dir, "connector-7")?;
        std::fs::write(
            dir.join("connectors.toml"),
            format!(
                "# Registered connectors and their certificates' thumbprints.\n[[connector]]\nid = \"connector-7\"\nroles = [\"signer\", \"key-reader\"]\nthumbprints = [\"{}\"]\n",
                connector.thumbprint()
            ),
        )?;
    }

    let api_key = if missing(&["api-keys.toml"]) {
        let key = GeneratedKey::generate(&KeyPrefix::default())?;
        let record = KeyRecord::new(key.id(), "partner-acme", key.digest())?.roles(["key-admin"]);
        std::fs::write(dir.join("api-keys.toml"), render_key_record(&record))?;
        Some(key.expose_secret().to_owned())
    } else {
        None
    };

    let secret = if missing(&["token.secret"]) {
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret)?;
        let secret_text = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        };
        write_private(&dir.join("token.secret"), &secret_text)?;
        secret.to_vec()
    } else {
        portcullis::jwt::read_secret_file(&dir.join("token.secret"))?
    };
    if missing(&["policy.toml"]) {
        std::fs::write(dir.join("policy.toml"), POLICY)?;
    }
    if missing(&["gateway.toml"]) {
        std::fs::write(dir.join("gateway.toml"), CONFIG)?;
    }

    // A token as the issue route would give connector-7, to paste.
    let signing = portcullis::jwt::SigningKey::hmac(
        portcullis::jwt::jsonwebtoken::Algorithm::HS256,
        &secret,
    )?;
    let issuer = portcullis::jwt::TokenIssuer::new(signing, "https://gateway.local", "hsm")?;
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["signer", "key-reader"])
        .build();
    let token = issuer.issue(&principal, None)?.expose().to_owned();
    Ok(DevSetup {
        dir: dir.to_owned(),
        api_key,
        token,
    })
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
