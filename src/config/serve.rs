//! Serving a built gateway: its listeners with the `[server]` limits, its files reloaded
//! on change, and a graceful stop that leaves every answered request's audit event on
//! disk.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_mtls_identity::{serve_hyper_until, Listening, ServeReport, TlsListener};
use tokio::net::TcpListener;

use super::Gateway;

/// A gateway bound to its addresses, ready to serve: made by [`Gateway::bind`], so that
/// the caller learns the addresses (port `0` picks one) before it serves.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use portcullis::config::GatewayConfig;
///
/// let gateway = GatewayConfig::from_file("gateway.toml")?.build().await?;
/// let server = gateway.bind().await?;
/// eprintln!("listening on {}", server.local_addr());
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let summary = server
///     .serve(app, async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// eprintln!("{summary}");
/// # Ok(())
/// # }
/// ```
pub struct GatewayServer {
    gateway: Gateway,
    main: Listening,
    main_addr: SocketAddr,
    admin: Option<(Listening, SocketAddr)>,
    metrics: Option<(TcpListener, SocketAddr)>,
}

impl fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayServer")
            .field("local_addr", &self.main_addr)
            .field("admin_addr", &self.admin_addr())
            .field("tls", &self.gateway.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the gateway could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener's address could not be bound (in use, or not this host's).
    #[error("cannot listen on {address} ({listener}): {source}; free the address or change it in the file")]
    Bind {
        /// `"main"` or `"admin"`.
        listener: &'static str,
        /// The address in the file.
        address: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The gateway's files could not be watched for changes.
    #[error("cannot watch the gateway's files: {0}")]
    Watch(#[source] io::Error),
}

/// What a gateway did before it stopped.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServeSummary {
    /// The main listener's connections.
    pub main: ServeReport,
    /// The admin listener's, if there is one.
    pub admin: Option<ServeReport>,
    /// The first audit sink that could not be synced to disk, if any.
    pub audit_error: Option<io::Error>,
}

impl ServeSummary {
    /// Whether every request in flight finished and every audit event is on disk.
    pub fn is_clean(&self) -> bool {
        self.main.cut == 0
            && self.admin.is_none_or(|admin| admin.cut == 0)
            && self.audit_error.is_none()
    }
}

impl fmt::Display for ServeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} connections; {} open at shutdown, {} cut when the grace period ran out",
            self.main.connections, self.main.open_at_shutdown, self.main.cut
        )?;
        if self.main.refused_per_address > 0 {
            write!(
                f,
                "; {} refused over the per-address limit",
                self.main.refused_per_address
            )?;
        }
        if let Some(admin) = &self.admin {
            write!(f, "; admin: {} connections", admin.connections)?;
        }
        match &self.audit_error {
            None => f.write_str("; audit synced to disk"),
            Some(error) => write!(f, "; audit NOT synced: {error}"),
        }
    }
}

impl Gateway {
    /// Binds `[server] listen` and, with `[admin]`, the admin address; TLS when the
    /// file has `[tls]`. Nothing is served until [`GatewayServer::serve`].
    pub async fn bind(&self) -> Result<GatewayServer, ServeError> {
        let (main, main_addr) = self.listen_on("main", self.listen, true).await?;
        // `admin_router()` is `Some` exactly when `[admin]` is.
        let admin = match &self.admin {
            // The admin listener is for operators, not behind the balancer.
            Some(settings) => Some(self.listen_on("admin", settings.listen, false).await?),
            None => None,
        };
        let metrics = match self.metrics {
            Some(Some(address)) => Some(bind_tcp("metrics", address).await?),
            _ => None,
        };
        Ok(GatewayServer {
            gateway: self.clone(),
            main,
            main_addr,
            admin,
            metrics,
        })
    }

    async fn listen_on(
        &self,
        listener: &'static str,
        address: SocketAddr,
        behind_balancer: bool,
    ) -> Result<(Listening, SocketAddr), ServeError> {
        let (tcp, bound) = bind_tcp(listener, address).await?;
        let proxy = self.proxy_protocol.clone().filter(|_| behind_balancer);
        let handshake_timeout = self
            .tls_handshake_timeout
            .unwrap_or(portcullis_mtls_identity::DEFAULT_HANDSHAKE_TIMEOUT);
        let listening = match (&self.tls, proxy) {
            (Some(tls), Some(proxy)) => Listening::Tls(TlsListener::with_proxy_protocol(
                tcp,
                tls.clone(),
                handshake_timeout,
                proxy,
            )),
            (Some(tls), None) => Listening::Tls(TlsListener::with_handshake_timeout(
                tcp,
                tls.clone(),
                handshake_timeout,
            )),
            (None, Some(proxy)) => {
                Listening::Proxied(portcullis_proxy_protocol::ProxyListener::new(tcp, proxy))
            }
            (None, None) => Listening::Plain(tcp),
        };
        Ok((listening, bound))
    }

    /// Waits until every audit event recorded so far is in its file, and the files are
    /// on disk (fsync). The first failure is returned; every sink is tried.
    pub async fn sync_audit(&self) -> io::Result<()> {
        let sinks = self.audit_files.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let mut first = None;
            for sink in &sinks {
                if let Err(error) = sink.sync() {
                    first.get_or_insert(error);
                }
            }
            first
        });
        match synced.await {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(error),
            Err(error) => Err(io::Error::other(error)),
        }
    }
}

/// Binds `address` for the `listener` named in errors; the socket and its bound address
/// (port `0` picks one).
async fn bind_tcp(
    listener: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bind_error = |source| ServeError::Bind {
        listener,
        address,
        source,
    };
    let tcp = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = tcp.local_addr().map_err(bind_error)?;
    Ok((tcp, bound))
}

impl GatewayServer {
    /// The main listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// The admin listener's address, with `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// The metrics listener's address, with `[metrics] listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves `app` behind the gateway's layers ([`Gateway::apply`]), and the admin
    /// routes, with the `[server]` limits, reloading the gateway's files when they
    /// change, until `shutdown` completes. Then it stops gracefully: both listeners
    /// close, requests in flight finish within `[server] shutdown_grace` (30 s), idle
    /// connections close, HTTP/2 clients get a GOAWAY, and the audit files are synced
    /// to disk, so that every answered request's event survives the process.
    pub async fn serve(
        self,
        app: axum::Router,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ServeSummary, ServeError> {
        let GatewayServer {
            gateway,
            main,
            admin,
            metrics,
            ..
        } = self;
        let reloads = gateway
            .reload_on_change(Duration::from_millis(200))
            .map_err(ServeError::Watch)?;
        let limits = gateway.serve_limits.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics_router = gateway.metrics_router();
        let metrics = match (metrics, metrics_router.clone()) {
            (Some((tcp, _)), Some(router)) => {
                let mut stopped = stopped.clone();
                let until = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                Some(tokio::spawn(serve_hyper_until(
                    tcp,
                    router,
                    limits.clone(),
                    until,
                )))
            }
            _ => None,
        };
        // Without a listener of its own, /metrics is on the admin listener, beside the
        // probes and outside the admin routes' credentials.
        let admin_router = match (gateway.admin_router(), metrics_router) {
            (Some(admin), Some(metrics)) if gateway.metrics == Some(None) => {
                Some(admin.merge(metrics))
            }
            (admin, _) => admin,
        };
        let admin = match (admin, admin_router) {
            (Some((listening, _)), Some(router)) => {
                let mut stopped = stopped.clone();
                let until = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                Some(tokio::spawn(serve_hyper_until(
                    listening,
                    router,
                    limits.clone(),
                    until,
                )))
            }
            _ => None,
        };
        let app = gateway.with_request_metrics(gateway.apply(app));
        let main = serve_hyper_until(main, app, limits, async move {
            shutdown.await;
            tracing::info!(
                target: "portcullis::serve",
                "shutting down: no new connections; waiting for requests in flight"
            );
            let _ = stop.send(true);
        })
        .await;
        let admin = match admin {
            Some(task) => task.await.ok(),
            None => None,
        };
        if let Some(task) = metrics {
            let _ = task.await;
        }
        reloads.abort();
        let audit_error = gateway.sync_audit().await.err();
        let summary = ServeSummary {
            main,
            admin,
            audit_error,
        };
        if summary.is_clean() {
            tracing::info!(target: "portcullis::serve", "stopped: {summary}");
        } else {
            tracing::warn!(target: "portcullis::serve", "stopped: {summary}");
        }
        Ok(summary)
    }
}
