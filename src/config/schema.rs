//! The file's shape. Every table refuses keys it does not know; values that have a
//! syntax of their own (networks, rates, durations, header names) are checked while the
//! file is read, so their errors carry the line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use portcullis_core::NetworkSet;
use serde::{Deserialize, Deserializer};

pub(crate) fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"90s\", \"10m\", \"10h\""
        ))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// A token time (`lifetime`, `max_session`): `exp` and `auth_time` are whole seconds,
/// so a fraction of a second, or less than one, cannot be what was meant.
fn optional_token_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let duration = duration(deserializer)?;
    if duration.subsec_nanos() != 0 || duration < Duration::from_secs(1) {
        return Err(serde::de::Error::custom(format!(
            "{} is not a whole number of seconds of at least 1s: tokens carry their times in seconds",
            humantime::format_duration(duration)
        )));
    }
    Ok(Some(duration))
}

fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NetworkSet, D::Error> {
    let items = Vec::<String>::deserialize(deserializer)?;
    NetworkSet::parse_list("the list", &items.join("\n")).map_err(serde::de::Error::custom)
}

/// Trusted proxies: a list of networks that does not hold every address.
fn trusted_networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NetworkSet, D::Error> {
    let set = networks(deserializer)?;
    if set.covers_everything() {
        return Err(serde::de::Error::custom(
            "holds every address (0.0.0.0/0 or ::/0), so any client could name any address in a forwarding header: list your load balancers' networks, or set insecure_trust_every_peer = true if every peer really is a proxy you run",
        ));
    }
    Ok(set)
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) server: Server,
    pub(crate) tls: Option<Tls>,
    #[serde(default)]
    pub(crate) client_ip: ClientIp,
    pub(crate) token_issuer: Option<TokenIssuer>,
    pub(crate) admin: Option<Admin>,
    pub(crate) metrics: Option<Metrics>,
    #[serde(default, rename = "layer")]
    pub(crate) layers: Vec<toml::Spanned<toml::Table>>,
    /// `[[route]]`: path prefixes forwarded to upstream services.
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<Route>,
}

/// `[[route]]`: a path prefix forwarded to an upstream service, after the layers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    /// The prefix (`/api` matches `/api` and `/api/…`, not `/apis`); `/` for all.
    pub(crate) path: String,
    /// `http://host:port[/base-path]` or `https://…`.
    pub(crate) upstream: String,
    /// Remove `path` before appending the rest to the upstream's base path.
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    /// How long the upstream may take to start answering ("30s").
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) timeout: Option<Duration>,
    /// How long connecting may take ("5s").
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) connect_timeout: Option<Duration>,
    /// The largest request body forwarded (10 MiB by default).
    pub(crate) max_body_bytes: Option<std::num::NonZeroU64>,
    /// No limit on the request body (streams of any size).
    #[serde(default)]
    pub(crate) unlimited_body: bool,
    /// Send the client's Host on instead of the upstream's.
    #[serde(default)]
    pub(crate) preserve_host: bool,
    /// HTTP/2 only (gRPC upstreams).
    #[serde(default)]
    pub(crate) http2: bool,
    /// For https upstreams: a CA instead of the system's roots, a client certificate.
    pub(crate) tls: Option<ClientTlsFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub(crate) listen: SocketAddr,
    /// How long a client may take to send its headers, or idle between requests.
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) max_connections: Option<std::num::NonZeroUsize>,
    pub(crate) max_headers: Option<std::num::NonZeroUsize>,
    pub(crate) max_header_bytes: Option<std::num::NonZeroUsize>,
    /// How long a connection may go without the client sending anything.
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connections_per_address: Option<std::num::NonZeroUsize>,
    pub(crate) h2_max_concurrent_streams: Option<std::num::NonZeroU32>,
    /// How long a client may take to finish its TLS handshake.
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) tls_handshake_timeout: Option<Duration>,
    /// How long a shutdown waits for requests in flight ("0s": not at all).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) shutdown_grace: Option<Duration>,
    /// The largest request body, unless a `[[server.body_limit]]` says otherwise.
    pub(crate) max_body_bytes: Option<std::num::NonZeroUsize>,
    #[serde(default)]
    pub(crate) body_limit: Vec<BodyLimit>,
    /// `/healthz` and `/readyz` on this listener too, outside the layers.
    #[serde(default)]
    pub(crate) health: bool,
    /// Behind a TCP load balancer: the client's address from a PROXY protocol header.
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
}

/// `[server] proxy_protocol = { trusted = [...], required = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyProtocol {
    /// The balancers' networks: only they may send a header.
    #[serde(deserialize_with = "balancer_networks")]
    pub(crate) trusted: NetworkSet,
    /// Every connection must come from a balancer with a header (default); `false`
    /// serves others, and balancers without one, as plain clients.
    #[serde(default = "yes")]
    pub(crate) required: bool,
    /// How long a balancer may take to send its header ("5s" by default).
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) header_timeout: Option<Duration>,
    /// The longest v2 header (4096 bytes by default).
    pub(crate) max_header_bytes: Option<std::num::NonZeroUsize>,
}

fn yes() -> bool {
    true
}

/// Balancers that may send a PROXY protocol header: a non-empty list that does not
/// hold every address.
fn balancer_networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NetworkSet, D::Error> {
    let set = networks(deserializer)?;
    if set.is_empty() {
        return Err(serde::de::Error::custom(
            "is empty: list the load balancers' networks, which alone may send a PROXY protocol header",
        ));
    }
    if set.covers_everything() {
        return Err(serde::de::Error::custom(
            "holds every address (0.0.0.0/0 or ::/0), so any client could name any address in a PROXY protocol header: list your load balancers' networks",
        ));
    }
    Ok(set)
}

/// `[[server.body_limit]]`: the largest body on the paths a pattern matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodyLimit {
    pub(crate) path: String,
    pub(crate) max_bytes: std::num::NonZeroUsize,
}

fn optional_positive_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let duration = duration(deserializer)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom(
            "must be longer than zero, e.g. \"10s\"",
        ));
    }
    Ok(Some(duration))
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) listen: SocketAddr,
    /// The role a caller needs (`admin` by default).
    #[serde(default = "admin_role")]
    pub(crate) role: String,
    /// Listen on an address other than loopback.
    #[serde(default)]
    pub(crate) allow_remote: bool,
}

/// `[metrics]`: Prometheus text at `GET /metrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metrics {
    /// A listener of its own (plain HTTP); without it, the admin listener serves them.
    pub(crate) listen: Option<SocketAddr>,
    /// Listen on an address other than loopback.
    #[serde(default)]
    pub(crate) allow_remote: bool,
}

fn admin_role() -> String {
    "admin".into()
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ClientCerts {
    Required,
    Optional,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    #[serde(default)]
    pub(crate) client_ca: Option<PathBuf>,
    #[serde(default)]
    pub(crate) crls: Vec<PathBuf>,
    /// What a CRL past its `nextUpdate` means for the certificates of its issuer.
    #[serde(default)]
    pub(crate) stale_crls: StaleCrlName,
    #[serde(default = "optional_certs")]
    pub(crate) client_certs: ClientCerts,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StaleCrlName {
    #[default]
    Refuse,
    AcceptWithWarning,
}

fn optional_certs() -> ClientCerts {
    ClientCerts::Optional
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ForwardedHeaderName {
    #[default]
    XForwardedFor,
    Forwarded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientIp {
    #[serde(default, deserialize_with = "trusted_networks")]
    pub(crate) trusted_proxies: NetworkSet,
    /// Every peer is a trusted proxy: only for a server that nothing but your own
    /// proxies can reach.
    #[serde(default)]
    pub(crate) insecure_trust_every_peer: bool,
    pub(crate) max_forwarded_elements: Option<std::num::NonZeroUsize>,
    #[serde(default)]
    pub(crate) header: ForwardedHeaderName,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenIssuer {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) secret_file: PathBuf,
    #[serde(default, deserialize_with = "optional_token_seconds")]
    pub(crate) lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "optional_token_seconds")]
    pub(crate) max_session: Option<Duration>,
    #[serde(default = "issue_path")]
    pub(crate) issue_path: String,
    #[serde(default = "extend_path")]
    pub(crate) extend_path: String,
    #[serde(default)]
    pub(crate) binding: BindingName,
    /// An append-only journal of revoked tokens, read back at start.
    pub(crate) revocations_file: Option<PathBuf>,
    /// Revoked tokens shared by every instance through this Redis server.
    pub(crate) revocations_redis: Option<String>,
    /// While Redis cannot be read: refuse tokens (503), or decide by the local copy.
    #[serde(default)]
    pub(crate) revocations_on_redis_failure: RevocationFailureName,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RevocationFailureName {
    #[default]
    Refuse,
    DecideLocally,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BindingName {
    #[default]
    Never,
    WhenPresent,
    Required,
}

fn issue_path() -> String {
    "/v1/token".into()
}

fn extend_path() -> String {
    "/v1/token/extend".into()
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpAllowlist {
    #[serde(default, deserialize_with = "networks")]
    pub(crate) allow: NetworkSet,
    #[serde(default, deserialize_with = "networks")]
    pub(crate) deny: NetworkSet,
    pub(crate) allow_file: Option<PathBuf>,
    pub(crate) deny_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtlsIdentity {
    /// A `[[connector]]` file.
    pub(crate) connectors: PathBuf,
    #[serde(default)]
    pub(crate) mode: Mode,
    /// How a certificate names its connector.
    #[serde(default)]
    pub(crate) identify: IdentifyName,
    /// With `identify = "spiffe"`: the trust domains whose SPIFFE IDs are accepted.
    #[serde(default)]
    pub(crate) trust_domains: Vec<String>,
    /// Accept client certificates whose extended key usage does not name clientAuth.
    #[serde(default)]
    pub(crate) allow_unrestricted_usage: bool,
    /// The certificate a trusted proxy forwards in a header.
    pub(crate) forwarded: Option<Forwarded>,
    /// Revocation checks with OCSP, after every other check passed.
    pub(crate) ocsp: Option<OcspSection>,
}

/// `[layer.ocsp]`: ask an OCSP responder whether client certificates are revoked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OcspSection {
    /// The CAs (PEM) that issue client certificates, intermediates included.
    pub(crate) issuers: PathBuf,
    /// Ask this responder, whatever the certificates name (their AIA by default).
    pub(crate) responder: Option<String>,
    /// A responder that fails or does not answer: "refuse" (503) or "allow".
    #[serde(default)]
    pub(crate) on_failure: OcspFailureName,
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) max_age: Option<Duration>,
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) recheck_after: Option<Duration>,
    pub(crate) capacity: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OcspFailureName {
    #[default]
    Refuse,
    Allow,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum IdentifyName {
    #[default]
    Thumbprint,
    CommonName,
    DnsName,
    Uri,
    Email,
    Spiffe,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ForwardedFormatName {
    /// Envoy's `x-forwarded-client-cert`.
    EnvoyXfcc,
    /// nginx's `$ssl_client_escaped_cert` in a header of your choosing.
    EscapedPem,
}

/// `[layer.forwarded]`: a proxy terminates TLS and forwards the client certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Forwarded {
    pub(crate) format: ForwardedFormatName,
    /// The header (`x-forwarded-client-cert` for Envoy; required for escaped-pem).
    pub(crate) header: Option<String>,
    /// The proxies believed; the header is removed from everyone else's requests.
    #[serde(deserialize_with = "trusted_networks")]
    pub(crate) trusted_proxies: NetworkSet,
    /// CAs (PEM) to verify forwarded certificates against, for a proxy that does not.
    pub(crate) verify_with: Option<PathBuf>,
    /// Intermediate CAs (PEM) for `verify_with`.
    pub(crate) intermediates: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKey {
    pub(crate) key_file: PathBuf,
    #[serde(default)]
    pub(crate) mode: Mode,
    /// Headers holding the key itself (`X-API-KEY` when nothing is given).
    #[serde(default)]
    pub(crate) headers: Vec<String>,
    /// Headers holding `<secret>/<id>` (`X-Auth-Token`).
    #[serde(default)]
    pub(crate) split_headers: Vec<String>,
    /// `Authorization: <scheme> <key>`.
    pub(crate) authorization_scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Jwt {
    #[serde(default)]
    pub(crate) mode: Mode,
    /// Trust the tokens `[token_issuer]` issues.
    #[serde(default)]
    pub(crate) trust_token_issuer: bool,
    #[serde(default, rename = "issuer")]
    pub(crate) issuers: Vec<JwtIssuer>,
    #[serde(default)]
    pub(crate) require_scopes: Vec<String>,
    /// Verified tokens remembered (10,000 by default; 0 turns the cache off).
    pub(crate) token_cache: Option<usize>,
    /// The largest token accepted, in bytes.
    pub(crate) max_token_size: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtIssuer {
    pub(crate) issuer: String,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) algorithm: Option<String>,
    pub(crate) jwks_file: Option<PathBuf>,
    pub(crate) jwks_url: Option<String>,
    #[serde(default)]
    pub(crate) discover: bool,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) leeway: Option<Duration>,
    pub(crate) token_type: Option<String>,
    pub(crate) alias: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) max_key_age: Option<Duration>,
    #[serde(default)]
    pub(crate) trust_stale_keys_indefinitely: bool,
    pub(crate) subject_claim: Option<String>,
    pub(crate) roles_claim: Option<String>,
    pub(crate) scopes_claim: Option<String>,
}

/// Where the role table is: a policy file (`[[rule]]`s, as `portcullis policy check`
/// reads it), or the same keys inline in the `[[layer]]` (`default`, `[[layer.rule]]`),
/// checked when the configuration is read.
#[derive(Debug)]
pub(crate) struct RoleRouter {
    pub(crate) policy: PolicySource,
    /// `max_path_len`: the longest path the router judges (its default when absent).
    pub(crate) max_path_len: Option<std::num::NonZeroUsize>,
    /// `shadow = true`: log and audit what would be refused, refuse nothing.
    pub(crate) shadow: bool,
}

#[derive(Debug)]
pub(crate) enum PolicySource {
    File(PathBuf),
    Inline(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimit {
    pub(crate) redis: Option<String>,
    /// The whole budget of a request's Redis work.
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) redis_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) redis_on_failure: RedisFailureName,
    /// How long Redis is left alone after it failed to answer.
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) redis_retry_after: Option<Duration>,
    /// The prefix of this layer's Redis keys.
    pub(crate) redis_namespace: Option<String>,
    /// How many instances share the quotas (while Redis is out, each allows its share);
    /// learned from heartbeats without it.
    pub(crate) redis_instances: Option<std::num::NonZeroU32>,
    /// How often an instance says it is alive in Redis ("5s" by default).
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) redis_heartbeat_every: Option<Duration>,
    /// How long an instance may spend a lease of permits ("1s" by default; "0s": no
    /// leases).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) redis_lease_ttl: Option<Duration>,
    /// The most permits one lease holds (64 by default, at most 1000).
    pub(crate) redis_max_lease: Option<std::num::NonZeroU32>,
    /// Certificates for `rediss://`: a CA instead of the system's roots, a client
    /// certificate.
    pub(crate) redis_tls: Option<ClientTlsFiles>,
    /// How often idle keys are forgotten ("60s" by default).
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) sweep_every: Option<Duration>,
    #[serde(default)]
    pub(crate) headers_on_allowed: bool,
    /// Whether dry-run quotas send their RateLimit headers.
    #[serde(default)]
    pub(crate) dry_run_headers: bool,
    #[serde(rename = "quota")]
    pub(crate) quotas: Vec<Quota>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientTlsFiles {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RedisFailureName {
    #[default]
    LocalFallback,
    FailClosed,
    FailOpen,
}

/// A part of a quota's key: `client-ip`, `principal`, `credential`, `route`,
/// `raw-path`, `header:NAME` or `attribute:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPartName {
    ClientIp,
    Principal,
    Credential,
    /// The matched route pattern (axum's, or the role router's rule).
    Route,
    /// The raw path: every distinct path is its own key.
    RawPath,
    /// A request header's value (the first line).
    Header(http::HeaderName),
    /// An attribute of the principal (from the key file or a token claim).
    Attribute(String),
}

impl FromStr for KeyPartName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "client-ip" => Self::ClientIp,
            "principal" => Self::Principal,
            "credential" => Self::Credential,
            "route" => Self::Route,
            "raw-path" => Self::RawPath,
            _ => match text.split_once(':') {
                Some(("header", name)) => Self::Header(
                    http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{name:?} is not a header name"))?,
                ),
                Some(("attribute", name)) if !name.is_empty() => Self::Attribute(name.to_owned()),
                _ => {
                    return Err(format!(
                        "{text:?} is not a key part: client-ip, principal, credential, route, raw-path, header:NAME or attribute:NAME"
                    ))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for KeyPartName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(deserializer)
    }
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SemanticsName {
    /// GCRA: the rate spread evenly, `burst` at once.
    #[default]
    Smooth,
    /// At most `count` in each fixed window of `period`.
    StrictWindow,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KeyOverflowName {
    #[default]
    SharedBucket,
    Refuse,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanStatusName {
    #[default]
    #[serde(rename = "403")]
    Forbidden,
    #[serde(rename = "429")]
    TooManyRequests,
}

/// `[[layer.quota.tier]]`: another rate for principals of this tier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tier {
    pub(crate) name: String,
    #[serde(deserialize_with = "from_str")]
    pub(crate) rate: portcullis_rate_limit::Rate,
    pub(crate) burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ChargeName {
    #[default]
    Every,
    Unauthenticated,
    /// Checked, never charged: a quota that only reports (the RateLimit headers).
    Never,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MissingKeyName {
    #[default]
    Skip,
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Quota {
    pub(crate) name: String,
    #[serde(deserialize_with = "from_str")]
    pub(crate) rate: portcullis_rate_limit::Rate,
    pub(crate) burst: Option<u32>,
    #[serde(default = "by_ip")]
    pub(crate) key: Vec<KeyPartName>,
    #[serde(default)]
    pub(crate) charge: ChargeName,
    #[serde(default)]
    pub(crate) when_key_missing: MissingKeyName,
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    pub(crate) ban: Option<Ban>,
    #[serde(default)]
    pub(crate) semantics: SemanticsName,
    /// IPv6 client addresses count by this prefix (64 by default).
    pub(crate) ipv6_prefix: Option<u8>,
    /// The most keys tracked at once.
    pub(crate) max_tracked_keys: Option<std::num::NonZeroUsize>,
    /// Past `max_tracked_keys`: new keys share one bucket, or are refused.
    #[serde(default)]
    pub(crate) on_key_overflow: KeyOverflowName,
    #[serde(default, rename = "tier")]
    pub(crate) tiers: Vec<Tier>,
    /// `enforce` (default) or `dry-run`: report what it would refuse, refuse nothing.
    #[serde(default, deserialize_with = "from_str")]
    pub(crate) mode: portcullis_rate_limit::Mode,
    /// With Redis: every request a round trip, no leases.
    #[serde(default)]
    pub(crate) exact: bool,
}

fn by_ip() -> Vec<KeyPartName> {
    vec![KeyPartName::ClientIp]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ban {
    pub(crate) strikes: u32,
    #[serde(deserialize_with = "duration")]
    pub(crate) window: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) duration: Duration,
    /// The status a banned key gets: "403" (default) or "429".
    #[serde(default)]
    pub(crate) status: BanStatusName,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Audit {
    /// One JSON line per request on standard output.
    #[serde(default)]
    pub(crate) stdout: bool,
    /// Daily files in this folder, hash-chained.
    pub(crate) directory: Option<PathBuf>,
    /// The `tracing` event as well.
    #[serde(default)]
    pub(crate) tracing: bool,
    /// When the writer falls behind: wait ("block", lossless) or drop and count.
    #[serde(default)]
    pub(crate) overflow: AuditOverflowName,
    /// Events queued for the writer at most.
    pub(crate) capacity: Option<std::num::NonZeroUsize>,
    /// The query string too (redacted), not only the path.
    #[serde(default)]
    pub(crate) log_query: bool,
    /// Which requests get an event.
    #[serde(default)]
    pub(crate) level: AuditLevelName,
    /// With `level = "refusals"`: one allowed request in this many is recorded too.
    pub(crate) sample_allowed: Option<std::num::NonZeroU32>,
    /// The header carrying request ids (`x-request-id`).
    pub(crate) request_id_header: Option<String>,
    /// More query parameters whose values are redacted.
    #[serde(default)]
    pub(crate) redact_query_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AuditLevelName {
    #[default]
    All,
    Refusals,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AuditOverflowName {
    #[default]
    Block,
    Drop,
}

/// `kind = "identity-headers"`: the caller's identity for the service behind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityHeaders {
    pub(crate) principal_header: Option<HeaderNameText>,
    pub(crate) method_header: Option<HeaderNameText>,
    pub(crate) credential_header: Option<HeaderNameText>,
    pub(crate) roles_header: Option<HeaderNameText>,
    pub(crate) scopes_header: Option<HeaderNameText>,
    pub(crate) client_ip_header: Option<HeaderNameText>,
    /// Attribute name = the header it is written into.
    #[serde(default)]
    pub(crate) attributes: std::collections::BTreeMap<String, HeaderNameText>,
    /// Headers removed from every request though nothing is written into them.
    #[serde(default)]
    pub(crate) also_remove: Vec<HeaderNameText>,
    /// Which principal speaks for the request: methods, first present wins.
    pub(crate) prefer: Option<Vec<String>>,
    pub(crate) assertion: Option<IdentityAssertion>,
}

/// `[layer.assertion]` of an identity-headers layer: a signed JWT for the upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityAssertion {
    pub(crate) header: HeaderNameText,
    /// The `iss` (the gateway's name).
    pub(crate) issuer: String,
    /// The `aud` (the upstream's name).
    pub(crate) audience: String,
    /// The header's `typ` ("identity+jwt" by default).
    pub(crate) token_type: Option<String>,
    /// "60s" by default.
    #[serde(default, deserialize_with = "optional_token_seconds")]
    pub(crate) lifetime: Option<Duration>,
    /// EdDSA, ES256, ES384, RS256, … with `private_key_file`; HS256, … with `secret_file`.
    pub(crate) algorithm: Option<String>,
    pub(crate) private_key_file: Option<PathBuf>,
    pub(crate) secret_file: Option<PathBuf>,
    /// The key id written as `kid`.
    pub(crate) key_id: Option<String>,
}

/// `kind = "ext-authz"`: decisions asked of an external service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtAuthz {
    /// The decision endpoint (`http://` or `https://`).
    pub(crate) url: String,
    /// The whole budget of one check ("500ms" by default).
    #[serde(default, deserialize_with = "optional_positive_duration")]
    pub(crate) timeout: Option<Duration>,
    /// `closed` (503, the default) or `open` when the service cannot answer.
    #[serde(default)]
    pub(crate) on_failure: ExtAuthzFailureName,
    /// `json` (default) or `headers`.
    #[serde(default)]
    pub(crate) encoding: ExtAuthzEncodingName,
    #[serde(default)]
    pub(crate) forward_headers: Vec<HeaderNameText>,
    #[serde(default)]
    pub(crate) upstream_headers: Vec<HeaderNameText>,
    pub(crate) denial_headers: Option<Vec<HeaderNameText>>,
    pub(crate) principal_header: Option<HeaderNameText>,
    pub(crate) roles_header: Option<HeaderNameText>,
    /// Attribute name = the answer's header it is read from.
    #[serde(default)]
    pub(crate) attributes: std::collections::BTreeMap<String, HeaderNameText>,
    #[serde(default)]
    pub(crate) pass_denial_body: bool,
    pub(crate) cache: Option<ExtAuthzCache>,
}

/// `[layer.cache]` of an ext-authz layer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtAuthzCache {
    #[serde(deserialize_with = "duration")]
    pub(crate) ttl: Duration,
    pub(crate) max_entries: std::num::NonZeroUsize,
    /// `method`, `path`, `query`, `client-ip`, `principals`, `header:NAME`; empty:
    /// everything the service is sent.
    #[serde(default)]
    pub(crate) key: Vec<CacheKeyPartText>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ExtAuthzFailureName {
    #[default]
    Closed,
    Open,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ExtAuthzEncodingName {
    #[default]
    Json,
    Headers,
}

/// A header name, checked when the file is read.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNameText(pub(crate) http::HeaderName);

impl<'de> Deserialize<'de> for HeaderNameText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a header name")))
    }
}

/// A cache key part, checked when the file is read.
#[derive(Debug, Clone)]
pub(crate) struct CacheKeyPartText(pub(crate) portcullis_ext_authz::CacheKeyPart);

impl<'de> Deserialize<'de> for CacheKeyPartText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(deserializer).map(Self)
    }
}
