//! The main demo, for now: an axum server behind the ip-allowlist layer.
//!
//! ```text
//! cargo run --example allowlist_server
//! ```
//!
//! It listens on 127.0.0.1:3000 (set `PORT` to change it) and prints `curl` commands
//! that show each decision. All of 127.0.0.0/8 is loopback on Linux, so `curl
//! --interface 127.0.0.66` connects from a different, denied, client address.
//!
//! The deny list lives in a file (`PORTCULLIS_DENY_FILE`, default
//! `target/allowlist-demo-deny.txt`); edit it while the server runs and the new list is
//! swapped in within two seconds, without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Extension, Router};
use portcullis::core::{ClientIp, ClientIpResolver, ForwardedHeader, NetworkSet};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules, IpRulesHandle};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,portcullis_ip_allowlist=debug".into()),
        )
        .init();

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let deny_file = std::env::var_os("PORTCULLIS_DENY_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/allowlist-demo-deny.txt"));
    if !deny_file.exists() {
        if let Some(dir) = deny_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &deny_file,
            "# one address or CIDR network a line\n127.0.0.66\n",
        )?;
    }

    // Only loopback clients, minus the deny list. 127.0.0.10 plays a reverse proxy
    // that names the real client in X-Forwarded-For.
    let allow: NetworkSet = "127.0.0.0/8, ::1".parse()?;
    let rules = IpRules::new()
        .allow(allow.clone())
        .deny(NetworkSet::from_file(&deny_file)?);
    let allowlist = IpAllowlistLayer::new(rules).client_ip(
        ClientIpResolver::new()
            .trust_proxies("127.0.0.10".parse()?)?
            .forwarded_header(ForwardedHeader::XForwardedFor),
    );
    tokio::spawn(reload_on_change(
        allowlist.handle(),
        allow,
        deny_file.clone(),
    ));

    let app = Router::new().route("/", get(hello)).layer(allowlist);

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("Portcullis demo on http://{addr}");
    println!("  allowed:  curl -i http://{addr}/");
    println!("  denied:   curl -i --interface 127.0.0.66 http://{addr}/");
    println!("  spoofing: curl -i --interface 127.0.0.66 -H 'X-Forwarded-For: 127.0.0.1' http://{addr}/   (still denied: not a trusted proxy)");
    println!("  proxied:  curl -i --interface 127.0.0.10 -H 'X-Forwarded-For: 127.0.0.66' http://{addr}/   (denied: the proxy names a denied client)");
    println!(
        "  deny list: {} (edit it while the server runs)",
        deny_file.display()
    );

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

async fn hello(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<Extension<ClientIp>>,
) -> String {
    match client {
        Some(Extension(client)) => format!("hello {client} (connected from {peer})\n"),
        None => format!("hello (connected from {peer})\n"),
    }
}

/// Re-reads the deny list when its modification time changes. A file with a bad line
/// is reported and ignored: the rules in force stay as they are.
async fn reload_on_change(handle: IpRulesHandle, allow: NetworkSet, path: PathBuf) {
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match NetworkSet::from_file(&path) {
            Ok(deny) => {
                tracing::info!(ranges = deny.range_count(), "deny list reloaded");
                handle.replace(IpRules::new().allow(allow.clone()).deny(deny));
            }
            Err(error) => tracing::warn!("deny list not reloaded: {error}"),
        }
    }
}
