//! `portcullis admin`: the running gateway's admin routes (`[admin]` in its file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Read the gateway's files again (key files, connectors, role tables, lists, CRLs).
    ///
    /// Exit status: 0 when the reload took, 1 when it did not (nothing changed).
    Reload(Connection),
    /// Show what the gateway has loaded, and its last reload.
    Status(Connection),
    /// Lift a rate-limit ban in the gateway.
    LiftBan {
        #[command(flatten)]
        connection: Connection,
        /// The quota's name.
        #[arg(long)]
        quota: String,
        /// The banned key, as the ban list shows it.
        key: String,
    },
    /// Switch a rate-limit quota between enforcing and a dry run, at once.
    QuotaMode {
        #[command(flatten)]
        connection: Connection,
        /// The quota's name.
        quota: String,
        /// `enforce` or `dry-run`.
        #[arg(value_parser = ["enforce", "dry-run"])]
        mode: String,
    },
    /// What a rate-limit quota would answer for a key now, without charging it.
    CheckQuota {
        #[command(flatten)]
        connection: Connection,
        /// The quota's name.
        #[arg(long)]
        quota: String,
        /// A tier of the quota, for a principal of that tier.
        #[arg(long)]
        tier: Option<String>,
        /// The key's values, one per part of the quota's key: an address, an id, or
        /// "METHOD /path" for a route.
        #[arg(required = true)]
        key: Vec<String>,
    },
    /// Revoke a token by its id (`jti`) until it expires.
    Revoke {
        #[command(flatten)]
        connection: Connection,
        /// When the token expires (seconds since the epoch: its `exp`).
        #[arg(long)]
        expires_at: i64,
        /// The token's `jti`.
        jti: String,
    },
}

/// Where the admin routes are, and the caller's credential.
#[derive(Args)]
pub(crate) struct Connection {
    /// The admin listener, e.g. https://localhost:9443.
    #[arg(long)]
    url: String,
    /// An API key with the admin role (or set PORTCULLIS_ADMIN_KEY).
    #[arg(long, env = "PORTCULLIS_ADMIN_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A client certificate and its key, one PEM file, with the admin role.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The CA that signed the gateway's certificate (PEM), if not a public one.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// The API key's header (x-api-key by default).
    #[arg(long, default_value = "x-api-key")]
    key_header: String,
}

pub(crate) fn run(command: AdminCommand) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async move {
        let (connection, method, path, body) = match &command {
            AdminCommand::Reload(c) => (c, reqwest::Method::POST, "/reload".to_owned(), None),
            AdminCommand::Status(c) => (c, reqwest::Method::GET, "/status".to_owned(), None),
            AdminCommand::LiftBan {
                connection,
                quota,
                key,
            } => {
                let encode = |text: &str| {
                    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                (
                    connection,
                    reqwest::Method::POST,
                    format!("/bans/{}/lift?quota={}", encode(key), encode(quota)),
                    None,
                )
            }
            AdminCommand::QuotaMode {
                connection,
                quota,
                mode,
            } => (
                connection,
                reqwest::Method::PUT,
                format!(
                    "/rate-limit/quotas/{}/mode",
                    percent_encoding::utf8_percent_encode(
                        quota,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
                Some(serde_json::json!({ "mode": mode })),
            ),
            AdminCommand::CheckQuota {
                connection,
                quota,
                tier,
                key,
            } => (
                connection,
                reqwest::Method::POST,
                "/rate-limit/check".to_owned(),
                Some(serde_json::json!({ "quota": quota, "tier": tier, "key": key })),
            ),
            AdminCommand::Revoke {
                connection,
                expires_at,
                jti,
            } => (
                connection,
                reqwest::Method::POST,
                "/revocations".to_owned(),
                Some(serde_json::json!({ "jti": jti, "expires_at": expires_at })),
            ),
        };
        let client = connection.client()?;
        let url = format!("{}{path}", connection.url.trim_end_matches('/'));
        let mut request = client.request(method, &url);
        if let Some(key) = &connection.api_key {
            request = request.header(connection.key_header.as_str(), key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
        println!("{text}");
        if status.is_success() {
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!("portcullis admin: {url} answered {status}");
            Ok(ExitCode::FAILURE)
        }
    })
}

impl Connection {
    fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &self.cacert {
            let pem =
                std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            builder = builder.add_root_certificate(ca);
        }
        if let Some(path) = &self.identity {
            let pem =
                std::fs::read(path).map_err(|e| format!("--identity {}: {e}", path.display()))?;
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("--identity {}: {e}", path.display()))?;
            builder = builder.identity(identity);
        }
        builder
            .build()
            .map_err(|e| format!("the HTTPS client: {e}"))
    }
}
