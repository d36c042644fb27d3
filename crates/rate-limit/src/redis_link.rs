//! Where the backend's Redis is, and a connection to it: one server, a Redis Cluster,
//! or the master that Redis Sentinel names.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::redis::RedisError;

/// The URL schemes of a Redis Cluster (seed nodes, comma-separated).
const CLUSTER: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];
/// The URL schemes of Redis Sentinel (sentinels, comma-separated; the master's name as
/// the path).
const SENTINEL: [&str; 2] = ["redis+sentinel://", "rediss+sentinel://"];

/// Where Redis is, as the connection URL says.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    /// The seed nodes' URLs.
    Cluster(Arc<Vec<String>>),
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
}

impl Target {
    /// Reads `redis://`/`rediss://` (one server), `redis+cluster://h1:p1,h2:p2/`
    /// (a cluster, from any of its nodes) or `redis+sentinel://s1:p1,s2:p2/master/db`
    /// (the master Sentinel names). User and password apply to the data nodes.
    pub(crate) fn parse(url: &str) -> Result<Self, RedisError> {
        if let Some((tls, rest)) = strip(url, CLUSTER) {
            let (userinfo, hosts, _path) = split(rest)?;
            let nodes: Vec<String> = hosts
                .split(',')
                .map(|host| format!("{}://{userinfo}{host}/", scheme(tls)))
                .collect();
            // Checked now; made again on first use, with the backend's budget.
            ClusterClient::new(nodes.iter().map(String::as_str))?;
            return Ok(Self::Cluster(Arc::new(nodes)));
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
            let master_info = format!("{}://{userinfo}localhost/{db}", scheme(tls))
                .into_connection_info()?
                .redis_settings()
                .clone();
            let sentinels: Vec<String> = hosts
                .split(',')
                .map(|host| format!("redis://{host}/"))
                .collect();
            let mut node =
                SentinelNodeConnectionInfo::default().set_redis_connection_info(master_info);
            if tls {
                node = node.set_tls_mode(redis::TlsMode::Secure);
            }
            let client = SentinelClient::build(
                sentinels,
                master.to_owned(),
                Some(node),
                SentinelServerType::Master,
            )?;
            return Ok(Self::Sentinel(Arc::new(tokio::sync::Mutex::new(client))));
        }
        Ok(Self::Single(redis::Client::open(url)?))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
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
                let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                let _ = self.single.set(manager);
                Ok(Connection::Single(
                    self.single.get().cloned().expect("set just above"),
                ))
            }
            Target::Cluster(nodes) => {
                let connection = self
                    .cluster
                    .get_or_try_init(|| async {
                        ClusterClient::builder(nodes.iter().map(String::as_str))
                            .connection_timeout(budget)
                            .response_timeout(budget)
                            .build()?
                            .get_async_connection()
                            .await
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
            Target::parse("redis://127.0.0.1:6379/"),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse("rediss+cluster://user:secret@n1:7000,n2:7001"),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse("redis+sentinel://:secret@s1:26379,s2:26379/mymaster/2"),
            Ok(Target::Sentinel(_))
        ));
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2/",
            "redis+cluster://user:pw@/",
            "http://127.0.0.1/",
        ] {
            let error = Target::parse(bad)
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
