//! Where the backend's Redis is, and a connection to it: one server, a Redis Cluster,
//! or the master that Redis Sentinel names.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

use crate::redis::RedisError;

/// The URL schemes of a Redis Cluster (seed nodes, comma-separated).
const CLUSTER: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];
/// The URL schemes of Redis Sentinel (sentinels, comma-separated; the master's name as
/// the path).
const SENTINEL: [&str; 2] = ["redis+sentinel://", "rediss+sentinel://"];

/// Certificates for Redis over TLS (`rediss://`): the roots to trust instead of the
/// system's, and a client certificate for servers that ask for one.
#[derive(Clone, Default)]
pub struct RedisTls {
    root_certificates: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisTls")
            .field("root_certificates", &self.root_certificates.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// The system's roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in `pem` (one or more) instead of the system's roots.
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain and key (PEM) to servers that ask for one
    /// (`tls-auth-clients yes`).
    pub fn client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((chain_pem.into(), key_pem.into()));
        self
    }

    /// The roots and the client certificate (chain, key), as given.
    #[allow(clippy::type_complexity)]
    pub fn into_parts(self) -> (Option<Vec<u8>>, Option<(Vec<u8>, Vec<u8>)>) {
        (self.root_certificates, self.client)
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_certificates.clone(),
        }
    }
}

/// Where Redis is, as the connection URL says.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Box<redis::Client>),
    /// The seed nodes' URLs, and the certificates for TLS.
    Cluster(Arc<(Vec<String>, Option<redis::TlsCertificates>)>),
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
}

impl Target {
    /// Reads `redis://`/`rediss://` (one server), `redis+cluster://h1:p1,h2:p2/`
    /// (a cluster, from any of its nodes) or `redis+sentinel://s1:p1,s2:p2/master/db`
    /// (the master Sentinel names). User and password apply to the data nodes, and so
    /// does TLS (`rediss`): the sentinels are asked in plain text.
    pub(crate) fn parse(url: &str, tls: Option<&RedisTls>) -> Result<Self, RedisError> {
        let certificates = tls.map(RedisTls::certificates);
        if let Some((tls, rest)) = strip(url, CLUSTER) {
            let (userinfo, hosts, _path) = split(rest)?;
            let nodes: Vec<String> = hosts
                .split(',')
                .map(|host| format!("{}://{userinfo}{host}/", scheme(tls)))
                .collect();
            // Checked now; made again on first use, with the backend's budget.
            cluster_client(&nodes, certificates.as_ref(), Duration::from_secs(1))?;
            return Ok(Self::Cluster(Arc::new((nodes, certificates))));
        }
        if let Some((tls, rest)) = strip(url, SENTINEL) {
            let (userinfo, hosts, path) = split(rest)?;
            let mut path = path.split('/').filter(|part| !part.is_empty());
            let master = path.next().ok_or_else(|| {
                RedisError::Redis(
                    "a Sentinel URL names the master: redis+sentinel://host:port/MASTER".into(),
                )
            })?;
            let db = path.next().unwrap_or("0");
            // The data nodes' credentials and database, read as redis-rs reads a URL.
            let data = format!("redis://{userinfo}localhost/{db}")
                .into_connection_info()
                .map_err(url_error)?;
            let data = data.redis_settings();
            let mut sentinels = Vec::new();
            for host in hosts.split(',') {
                sentinels.push(socket_address(host)?);
            }
            let mut builder =
                SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
                    .set_client_to_redis_db(data.db());
            if let Some(username) = data.username() {
                builder = builder.set_client_to_redis_username(username);
            }
            if let Some(password) = data.password() {
                builder = builder.set_client_to_redis_password(password);
            }
            if tls {
                builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                if let Some(certificates) = certificates {
                    builder = builder.set_client_to_redis_certificates(certificates);
                }
            }
            return Ok(Self::Sentinel(Arc::new(tokio::sync::Mutex::new(
                builder.build()?,
            ))));
        }
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates),
            None => redis::Client::open(url),
        };
        Ok(Self::Single(Box::new(client.map_err(url_error)?)))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

fn cluster_client(
    nodes: &[String],
    certificates: Option<&redis::TlsCertificates>,
    budget: Duration,
) -> Result<ClusterClient, RedisError> {
    let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(budget)
        .response_timeout(budget);
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates.clone());
    }
    builder.build().map_err(url_error)
}

/// A URL that redis-rs refused. Its message may quote the URL, password and all, so
/// only the kind is kept.
fn url_error(error: redis::RedisError) -> RedisError {
    RedisError::Redis(format!(
        "{:?}: not a usable Redis URL (redis://, rediss://, redis+cluster://, \
         redis+sentinel://; see RedisBackend::connect)",
        error.kind()
    ))
}

/// `host:port` or `[v6]:port` as a plain TCP address. The error does not repeat the
/// text: a URL with its `@` mistyped would put the password there.
fn socket_address(text: &str) -> Result<ConnectionAddr, RedisError> {
    let invalid = || {
        RedisError::Redis(
            "each Sentinel address is host:port (redis+sentinel://s1:26379,s2:26379/MASTER)".into(),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(ConnectionAddr::Tcp(host.to_owned(), port))
}

fn strip<'a>(url: &'a str, schemes: [&str; 2]) -> Option<(bool, &'a str)> {
    let [plain, tls] = schemes;
    url.strip_prefix(plain)
        .map(|rest| (false, rest))
        .or_else(|| url.strip_prefix(tls).map(|rest| (true, rest)))
}

fn scheme(tls: bool) -> &'static str {
    match tls {
        true => "rediss",
        false => "redis",
    }
}

/// `user:pass@h1:p1,h2:p2/path` into `user:pass@`, the hosts and the path.
fn split(rest: &str) -> Result<(&str, &str, &str), RedisError> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (&authority[..=userinfo.len()], hosts),
        None => ("", authority),
    };
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        return Err(RedisError::Redis(
            "the URL names no host, or an empty one".into(),
        ));
    }
    Ok((userinfo, hosts, path))
}

/// The connections made from a [`Target`], on first use.
#[derive(Default)]
pub(crate) struct Links {
    single: OnceLock<ConnectionManager>,
    cluster: tokio::sync::OnceCell<ClusterConnection>,
    /// The master's connection, until it fails; then Sentinel is asked again.
    sentinel: std::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Links {
    /// A connection within `budget`: made now when there is none yet.
    pub(crate) async fn connect(
        &self,
        target: &Target,
        budget: Duration,
    ) -> Result<Connection, RedisError> {
        match target {
            Target::Single(client) => {
                if let Some(manager) = self.single.get() {
                    return Ok(Connection::Single(manager.clone()));
                }
                // The budget is the caller's: no response timeout of the client's own
                // answers first. A reconnection is one attempt, bounded by the budget,
                // so a Redis that refuses connections fails fast.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(budget))
                    .set_response_timeout(None)
                    .set_number_of_retries(0);
                let manager = ConnectionManager::new_lazy_with_config((**client).clone(), config)?;
                let _ = self.single.set(manager);
                Ok(Connection::Single(
                    self.single.get().cloned().expect("set just above"),
                ))
            }
            Target::Cluster(cluster) => {
                let (nodes, certificates) = &**cluster;
                let connection = self
                    .cluster
                    .get_or_try_init(|| async {
                        cluster_client(nodes, certificates.as_ref(), budget)?
                            .get_async_connection()
                            .await
                            .map_err(RedisError::from)
                    })
                    .await?;
                Ok(Connection::Cluster(connection.clone()))
            }
            Target::Sentinel(client) => {
                if let Some(connection) = self.sentinel_connection() {
                    return Ok(Connection::Sentinel(connection));
                }
                let master = client.lock().await.async_get_client().await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(budget))
                    .set_response_timeout(None);
                let connection = master
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                *self
                    .sentinel
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection.clone());
                Ok(Connection::Sentinel(connection))
            }
        }
    }

    fn sentinel_connection(&self) -> Option<MultiplexedConnection> {
        self.sentinel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Forgets a connection that failed, so the next one asks Sentinel for the master
    /// (which may have changed). The other kinds reconnect by themselves.
    pub(crate) fn failed(&self, target: &Target) {
        if let Target::Sentinel(_) = target {
            *self
                .sentinel
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

/// A connection to any kind of target.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_a_cluster_or_a_sentinel_master() {
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379/", None),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/", None),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse("rediss+cluster://user:secret@n1:7000,n2:7001", None),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse(
                "redis+sentinel://:secret@s1:26379,s2:26379/mymaster/2",
                None
            ),
            Ok(Target::Sentinel(_))
        ));
        for bad in [
            "redis+sentinel://:secretHs1:26379s/m",
            "resqu:secret@[::1]:6379/?protocol=resq",
            "redis://u:secret@h:1/?protocol=nope",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2/",
            "redis+cluster://user:pw@/",
            "http://127.0.0.1/",
        ] {
            let error = Target::parse(bad, None)
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn userinfo_stays_with_the_hosts() {
        assert_eq!(
            split("u:p@h1:1,h2:2/m/3").unwrap(),
            ("u:p@", "h1:1,h2:2", "m/3")
        );
        assert_eq!(split("h:1").unwrap(), ("", "h:1", ""));
        // A password may hold '@': the last one ends the user info.
        assert_eq!(split("u:p@x@h:1/").unwrap(), ("u:p@x@", "h:1", ""));
    }
}
