//! Quotas: a rate, the key it is charged to, and what happens at its edges.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method, Uri};

use crate::rate::Rate;

/// How a quota counts: GCRA's smooth refill, or a strict sliding window.
///
/// For `25 per 5m`:
///
/// | | smooth (default) | strict window |
/// |---|---|---|
/// | model | GCRA (governor's): a burst, then one request every `period / count` | a sliding log: never more than `count` requests in any `period` |
/// | after a burst of 25 | the 26th waits 12 s, then one more every 12 s | the 26th waits until the first of the 25 is 5 minutes old |
/// | most requests in any 5 minutes | up to `burst + count - 1` (49 with burst 25) | exactly 25 |
/// | memory per tracked key | 8 bytes | 8 bytes per request in the window |
///
/// Choose strict when the number is a contract ("25 calls every 5 minutes"); choose
/// smooth for throughput limits with large counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Semantics {
    /// GCRA: `burst` requests at once, then one per emission interval.
    #[default]
    Smooth,
    /// Never more than `count` requests within any `period`.
    StrictWindow,
}

/// Which requests a quota is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Charge {
    /// Every request the quota lets through (the default).
    #[default]
    Every,
    /// Only requests that an inner layer or the service answered with 401: failed
    /// authentication. A key or password guesser is throttled, then banned, while good
    /// traffic is never charged. The layer must wrap the layers that authenticate.
    ///
    /// Each request reserves its unit before the inner service runs and gets it back
    /// when the answer is not a 401, so at most the quota's worth of attempts is ever in
    /// flight, in one process or across instances sharing Redis: guesses sent in
    /// parallel cannot all reach the authenticator before the first 401 is counted. An
    /// answer that never comes (an error, a dropped request) keeps its reservation.
    Unauthenticated,
    /// Never: the quota is checked but not charged, so it refuses only once something
    /// else (another layer instance sharing its Redis keys) has used it up.
    Never,
}

/// Whether a quota refuses what it is over, or only reports it.
///
/// A dry run is how a new or tightened quota is tried on live traffic: a request over
/// it is let through, and the audit note (`code = "dry_run"`, the quota as its rule),
/// the metric `portcullis_rate_limit_dry_run_total` and a throttled log line say what
/// it would have got. Requests are counted as under enforcement (a request it would
/// refuse is not charged), so the dry run predicts exactly what enforcing would refuse.
/// A dry-run quota counts no strikes towards a [`Ban`], and a ban it holds from an
/// earlier enforcement is reported, not enforced. Switch at run time with
/// [`RateLimitHandle::set_mode`](crate::RateLimitHandle::set_mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Refuse requests over the quota (the default).
    #[default]
    Enforce,
    /// Let them through and report that the quota would have refused them.
    DryRun,
}

impl Mode {
    /// `enforce` or `dry-run`, as the gateway file and the admin route spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(text: &str) -> Result<Self, UnknownMode> {
        match text {
            "enforce" => Ok(Self::Enforce),
            "dry-run" => Ok(Self::DryRun),
            _ => Err(UnknownMode),
        }
    }
}

/// A mode other than `enforce` or `dry-run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a quota's mode is \"enforce\" or \"dry-run\"")]
pub struct UnknownMode;

/// What a quota does with a request that lacks a part of its key (no principal for a
/// per-principal quota, no header for a per-header one). The host must choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingKey {
    /// The quota does not apply to the request.
    Skip,
    /// The request is refused: 401 `rate_limit_key_missing` when the missing part needs
    /// a principal, 400 otherwise.
    Refuse,
}

/// One part of a quota's key. A key may combine several (per principal per route).
#[derive(Clone)]
#[non_exhaustive]
pub enum KeyPart {
    /// The client address. IPv6 addresses are grouped by [`Quota::ipv6_prefix`] (a /64
    /// by default), since one client usually holds a whole /64.
    ClientIp,
    /// The id of the request's first principal (in the order of `AuthMethod::ALL`).
    Principal,
    /// The credential id of the request's first principal that has one (an API key id,
    /// a certificate thumbprint).
    Credential,
    /// A principal attribute (`org`, `tenant`): every principal of an organisation
    /// shares the quota.
    Attribute(String),
    /// A request header's value, such as a tenant id. The value is never shown: ban
    /// listings name it by a digest.
    Header(HeaderName),
    /// The method and the route the request matched, as a pattern (`GET /items/{id}`):
    /// a [`MatchedRoute`](portcullis_core::MatchedRoute) put there by the role router
    /// or the host, or axum's `MatchedPath`. `/items/1` and `/items/2` share the quota,
    /// so walking ids does not multiply it. A request with no matched route lacks the
    /// part (see [`Quota::when_key_missing`]).
    Route,
    /// The method and the raw path (without the query): every distinct path is its own
    /// key, so a client that can vary the path (ids, trailing segments) gets a fresh
    /// quota for each. For fixed paths only.
    RawPath,
    /// A part the host computes from the request, such as the key id a client claims
    /// before any layer has checked it.
    Custom(CustomKey),
}

impl KeyPart {
    /// A part computed by `extract`, named `name` in ban listings. `None` means the
    /// request lacks the part.
    pub fn custom<F>(name: &'static str, extract: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    {
        Self::Custom(CustomKey {
            name,
            extract: Arc::new(extract),
        })
    }

    pub(crate) fn label_name(&self) -> &str {
        match self {
            Self::ClientIp => "ip",
            Self::Principal => "principal",
            Self::Credential => "credential",
            Self::Attribute(name) => name,
            Self::Header(name) => name.as_str(),
            Self::Route => "route",
            Self::RawPath => "raw-path",
            Self::Custom(custom) => custom.name,
        }
    }

    /// Whether a missing value of this part means "not authenticated".
    pub(crate) fn needs_principal(&self) -> bool {
        matches!(
            self,
            Self::Principal | Self::Credential | Self::Attribute(_)
        )
    }
}

impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("ClientIp"),
            Self::Principal => f.write_str("Principal"),
            Self::Credential => f.write_str("Credential"),
            Self::Attribute(name) => f.debug_tuple("Attribute").field(name).finish(),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Route => f.write_str("Route"),
            Self::RawPath => f.write_str("RawPath"),
            Self::Custom(custom) => f.debug_tuple("Custom").field(custom).finish(),
        }
    }
}

/// A host-computed key part; see [`KeyPart::custom`].
#[derive(Clone)]
pub struct CustomKey {
    pub(crate) name: &'static str,
    pub(crate) extract: Arc<ExtractKey>,
}

/// What a [`KeyPart::custom`] extractor is.
type ExtractKey = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;

impl fmt::Debug for CustomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The parts of a request a [`KeyPart::custom`] extractor may read.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions, with what outer layers put there.
    pub extensions: &'a Extensions,
}

/// Refusing a key that keeps hitting its quota: after more than `strikes` refusals
/// within `window`, the key is banned for `duration`.
///
/// ```
/// use std::time::Duration;
/// use portcullis_rate_limit::Ban;
///
/// // A key refused more than 3 times within 10 minutes is banned for an hour.
/// let ban = Ban::after(3, Duration::from_secs(600), Duration::from_secs(3600));
/// assert_eq!(ban.strikes(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    strikes: u32,
    window: Duration,
    duration: Duration,
    response: BanResponse,
}

impl Ban {
    /// Banned for `duration` after more than `strikes` refusals within `window`.
    pub fn after(strikes: u32, window: Duration, duration: Duration) -> Self {
        Self {
            strikes,
            window,
            duration,
            response: BanResponse::Forbidden,
        }
    }

    /// How a banned key is answered: 403 `banned` (the default) or 429 `banned` with
    /// the ban's remaining time in `Retry-After`.
    pub fn respond_with(mut self, response: BanResponse) -> Self {
        self.response = response;
        self
    }

    /// The refusals tolerated within the window.
    pub fn strikes(&self) -> u32 {
        self.strikes
    }

    /// The window strikes are counted in.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long a ban lasts.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How a banned key is answered.
    pub fn response(&self) -> BanResponse {
        self.response
    }
}

/// How a banned key is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanResponse {
    /// 403 `banned`: the client is told it is blocked.
    Forbidden,
    /// 429 `banned` with `Retry-After`: the client is told when to come back.
    TooManyRequests,
}

/// What happens to a new key once a quota tracks [`Quota::max_tracked_keys`] keys.
///
/// Idle keys are dropped by the sweep, so the cap is reached only by a flood of distinct
/// keys (a million source addresses). Past it, memory stays bounded either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// New keys share one overflow state with the quota's rate (the default): the flood
    /// as a whole gets one key's quota, keys already tracked keep theirs.
    #[default]
    SharedBucket,
    /// New keys are refused with 429 `rate_limit_capacity` until the sweep frees room.
    Refuse,
}

/// A named quota: a rate, the key it is charged to, and how it behaves at its edges.
///
/// ```
/// use std::time::Duration;
/// use portcullis_rate_limit::{Ban, KeyPart, MissingKey, Quota, Semantics};
///
/// // 25 calls every 5 minutes per API key, strictly, banned for a day after
/// // being refused more than 10 times in an hour.
/// let per_key = Quota::new("per-key", "25 per 5m".parse()?)
///     .key([KeyPart::Credential])
///     .semantics(Semantics::StrictWindow)
///     .when_key_missing(MissingKey::Skip)
///     .ban(Ban::after(10, Duration::from_secs(3600), Duration::from_secs(86_400)));
/// # let _ = per_key;
/// # Ok::<(), portcullis_rate_limit::InvalidRate>(())
/// ```
#[derive(Clone, Debug)]
pub struct Quota {
    pub(crate) name: String,
    pub(crate) rate: Rate,
    pub(crate) burst: Option<u32>,
    pub(crate) semantics: Semantics,
    pub(crate) key: Vec<KeyPart>,
    pub(crate) ipv6_prefix: u8,
    pub(crate) charge: Charge,
    pub(crate) missing: MissingKey,
    pub(crate) tiers: Vec<(String, Rate, Option<u32>)>,
    pub(crate) ban: Option<Ban>,
    pub(crate) max_tracked_keys: usize,
    pub(crate) overflow: Overflow,
    pub(crate) paths: Vec<String>,
    pub(crate) mode: Mode,
    pub(crate) exact: bool,
}

impl Quota {
    /// The default cap on tracked keys per quota and tier.
    pub const DEFAULT_MAX_TRACKED_KEYS: usize = 1_000_000;

    /// A quota named `name` (shown in `RateLimit-Policy`, logs and Redis keys: letters,
    /// digits, `-`, `_` and `.`), charged per client IP at `rate`, smooth, with a burst
    /// of the rate's count.
    pub fn new(name: impl Into<String>, rate: Rate) -> Self {
        Self {
            name: name.into(),
            rate,
            burst: None,
            semantics: Semantics::Smooth,
            key: vec![KeyPart::ClientIp],
            ipv6_prefix: 64,
            charge: Charge::Every,
            missing: MissingKey::Refuse,
            tiers: Vec::new(),
            ban: None,
            max_tracked_keys: Self::DEFAULT_MAX_TRACKED_KEYS,
            overflow: Overflow::SharedBucket,
            paths: Vec::new(),
            mode: Mode::Enforce,
            exact: false,
        }
    }

    /// The smooth semantics' burst: how many requests may come at once (the rate's
    /// count by default). Ignored by the strict window, whose burst is its count.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// [`Semantics::Smooth`] (the default) or [`Semantics::StrictWindow`].
    pub fn semantics(mut self, semantics: Semantics) -> Self {
        self.semantics = semantics;
        self
    }

    /// What the quota is charged to (the client IP by default). Several parts make one
    /// combined key.
    pub fn key(mut self, parts: impl IntoIterator<Item = KeyPart>) -> Self {
        self.key = parts.into_iter().collect();
        self
    }

    /// How many leading bits of an IPv6 client address form its key (64 by default;
    /// 128 keys each address on its own).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// Which requests are charged; see [`Charge`].
    pub fn charge(mut self, charge: Charge) -> Self {
        self.charge = charge;
        self
    }

    /// What happens to a request without the key's parts. [`MissingKey::Refuse`] by
    /// default; a quota placed before authentication that keys on the principal wants
    /// [`MissingKey::Skip`].
    pub fn when_key_missing(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// Another rate for principals whose rate-limit tier is `tier` (the first principal
    /// with a tier decides). The tier's burst is its rate's count.
    pub fn tier(mut self, tier: impl Into<String>, rate: Rate) -> Self {
        self.tiers.push((tier.into(), rate, None));
        self
    }

    /// Like [`Quota::tier`], with a burst for the smooth semantics.
    pub fn tier_with_burst(mut self, tier: impl Into<String>, rate: Rate, burst: u32) -> Self {
        self.tiers.push((tier.into(), rate, Some(burst)));
        self
    }

    /// Bans keys that this quota keeps refusing.
    pub fn ban(mut self, ban: Ban) -> Self {
        self.ban = Some(ban);
        self
    }

    /// The most keys tracked at once, per tier (1,000,000 by default), and what happens
    /// to new keys past it.
    pub fn max_tracked_keys(mut self, max: usize, overflow: Overflow) -> Self {
        self.max_tracked_keys = max;
        self.overflow = overflow;
        self
    }

    /// Limits the quota to requests whose path is one of `prefixes` or below it
    /// (`/v1/sign` matches `/v1/sign` and `/v1/sign/x`, not `/v1/signature`). All paths
    /// by default.
    pub fn paths<I, P>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.paths = prefixes
            .into_iter()
            .map(|p| p.into().trim_end_matches('/').to_owned())
            .collect();
        self
    }

    /// [`Mode::Enforce`] (the default) or [`Mode::DryRun`]: report requests over the
    /// quota instead of refusing them.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// With Redis: decide every request of this quota in Redis (one round trip each),
    /// instead of spending leased permits in process (the default, see
    /// `RedisBackend::lease_ttl`). For quotas where every request must be ordered
    /// globally, at the cost of a round trip per request. Without Redis it changes
    /// nothing: in process every decision is exact.
    pub fn exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }

    /// The quota's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quota's base rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// This quota as one of `instances` shares it: count and burst divided, at least 1.
    #[cfg(feature = "redis")]
    pub(crate) fn share(&self, instances: u32) -> Self {
        let part = |n: u32| (n / instances.max(1)).max(1);
        let rate = |rate: Rate| Rate::new(part(rate.count()), rate.period()).unwrap_or(rate);
        let mut share = self.clone();
        share.rate = rate(self.rate);
        share.burst = self.burst.map(part);
        for tier in &mut share.tiers {
            tier.1 = rate(tier.1);
            tier.2 = tier.2.map(part);
        }
        share
    }

    pub(crate) fn applies_to(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|prefix| {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}

/// The largest count a strict window may have: it keeps one timestamp per request.
pub const MAX_STRICT_COUNT: u32 = 10_000;

/// Why a rate-limit configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No quotas.
    #[error("a rate-limit layer needs at least one quota")]
    NoQuotas,
    /// A quota name is empty or has characters other than letters, digits, `-`, `_`, `.`.
    #[error("quota name {0:?} must be non-empty and use only letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// Two quotas have the same name.
    #[error("two quotas are named {0:?}")]
    DuplicateName(String),
    /// A quota has an empty key.
    #[error("quota {0:?} has an empty key; give it at least one KeyPart")]
    EmptyKey(String),
    /// A burst of zero.
    #[error("quota {0:?} has a burst of 0")]
    ZeroBurst(String),
    /// A strict window with a count above [`MAX_STRICT_COUNT`].
    #[error("quota {0:?} is a strict window over {MAX_STRICT_COUNT} requests; use the smooth semantics for large counts")]
    StrictCountTooLarge(String),
    /// An IPv6 prefix longer than 128 bits.
    #[error("quota {0:?} has an IPv6 prefix longer than 128 bits")]
    InvalidIpv6Prefix(String),
    /// `max_tracked_keys` of zero.
    #[error("quota {0:?} may track 0 keys")]
    ZeroCapacity(String),
    /// Two tiers of one quota with the same name.
    #[error("quota {0:?} has two tiers named {1:?}")]
    DuplicateTier(String, String),
    /// A burst whose refill (`period / count × burst`) is longer than
    /// [`MAX_BURST_REFILL`]: the quota's arithmetic would overflow.
    #[error("quota {0:?} has a burst whose refill (period / count × burst) is longer than 100 years; lower the burst or shorten the period")]
    BurstTooLarge(String),
    /// A ban whose window or duration is zero or longer than [`Rate::MAX_PERIOD`].
    #[error("quota {0:?} has a ban whose window or duration is zero or longer than a year")]
    InvalidBan(String),
    /// A duration setting of the layer (named) is zero: `sweep_every` (to leave sweeping
    /// to the host, pass `None`) or the Redis backend's `timeout`.
    #[error(
        "{0} is zero; give it a positive duration (sweep_every(None) leaves sweeping to the host)"
    )]
    ZeroDuration(&'static str),
}

/// The longest time a full burst may take to come back: 100 years. Longer ones cannot be
/// meant, and would overflow the limiter's nanosecond arithmetic.
pub const MAX_BURST_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) fn validate(quotas: &[Quota]) -> Result<(), ConfigError> {
    if quotas.is_empty() {
        return Err(ConfigError::NoQuotas);
    }
    for (index, quota) in quotas.iter().enumerate() {
        let name = || quota.name.clone();
        let valid_name = !quota.name.is_empty()
            && quota.name.len() <= 64
            && quota
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            return Err(ConfigError::InvalidName(name()));
        }
        if quotas[..index].iter().any(|q| q.name == quota.name) {
            return Err(ConfigError::DuplicateName(name()));
        }
        if quota.key.is_empty() {
            return Err(ConfigError::EmptyKey(name()));
        }
        if quota.burst == Some(0) || quota.tiers.iter().any(|t| t.2 == Some(0)) {
            return Err(ConfigError::ZeroBurst(name()));
        }
        let too_large = |rate: &Rate| rate.count() > MAX_STRICT_COUNT;
        if quota.semantics == Semantics::StrictWindow
            && (too_large(&quota.rate) || quota.tiers.iter().any(|t| too_large(&t.1)))
        {
            return Err(ConfigError::StrictCountTooLarge(name()));
        }
        if quota.ipv6_prefix > 128 {
            return Err(ConfigError::InvalidIpv6Prefix(name()));
        }
        if quota.max_tracked_keys == 0 {
            return Err(ConfigError::ZeroCapacity(name()));
        }
        for (i, tier) in quota.tiers.iter().enumerate() {
            if quota.tiers[..i].iter().any(|t| t.0 == tier.0) {
                return Err(ConfigError::DuplicateTier(name(), tier.0.clone()));
            }
        }
        // Every (rate, burst) pair, the quota's own and each tier's: the refill of a
        // full burst must fit the limiter's arithmetic.
        let refill_fits = |rate: &Rate, burst: Option<u32>| {
            let burst = burst.unwrap_or(rate.count());
            rate.emission_interval()
                .checked_mul(burst)
                .is_some_and(|refill| refill <= MAX_BURST_REFILL)
        };
        if !refill_fits(&quota.rate, quota.burst)
            || quota
                .tiers
                .iter()
                .any(|t| !refill_fits(&t.1, t.2.or(quota.burst)))
        {
            return Err(ConfigError::BurstTooLarge(name()));
        }
        if let Some(ban) = &quota.ban {
            let sane = |d: Duration| !d.is_zero() && d <= Rate::MAX_PERIOD;
            if !sane(ban.window()) || !sane(ban.duration()) {
                return Err(ConfigError::InvalidBan(name()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(name: &str) -> Quota {
        Quota::new(name, "10/s".parse().unwrap())
    }

    #[test]
    fn paths_match_on_segment_boundaries() {
        let q = quota("q").paths(["/v1/sign", "/admin/"]);
        assert!(q.applies_to("/v1/sign"));
        assert!(q.applies_to("/v1/sign/batch"));
        assert!(q.applies_to("/admin"));
        assert!(q.applies_to("/admin/users"));
        assert!(!q.applies_to("/v1/signature"));
        assert!(!q.applies_to("/v1"));
        assert!(quota("all").applies_to("/anything"));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_share_divides_counts_and_bursts_and_keeps_at_least_one() {
        let quota = Quota::new("q", "100 per 1m".parse().unwrap())
            .burst(30)
            .tier_with_burst("gold", "10 per 1m".parse().unwrap(), 7)
            .tier("tiny", "1 per 1h".parse().unwrap());
        let share = quota.share(3);
        assert_eq!(share.rate.count(), 33);
        assert_eq!(share.rate.period(), Duration::from_secs(60));
        assert_eq!(share.burst, Some(10));
        assert_eq!((share.tiers[0].1.count(), share.tiers[0].2), (3, Some(2)));
        assert_eq!(share.tiers[1].1.count(), 1);
        assert_eq!(quota.share(0).rate.count(), 100);
        assert_eq!(quota.share(1000).rate.count(), 1);
    }

    #[test]
    fn every_configuration_error_is_named() {
        assert_eq!(validate(&[]), Err(ConfigError::NoQuotas));
        assert_eq!(
            validate(&[quota("has space")]),
            Err(ConfigError::InvalidName("has space".into()))
        );
        assert_eq!(
            validate(&[quota("")]),
            Err(ConfigError::InvalidName("".into()))
        );
        assert_eq!(
            validate(&[quota("a"), quota("a")]),
            Err(ConfigError::DuplicateName("a".into()))
        );
        assert_eq!(
            validate(&[quota("a").key([])]),
            Err(ConfigError::EmptyKey("a".into()))
        );
        assert_eq!(
            validate(&[quota("a").burst(0)]),
            Err(ConfigError::ZeroBurst("a".into()))
        );
        assert_eq!(
            validate(&[
                Quota::new("a", "20000/s".parse().unwrap()).semantics(Semantics::StrictWindow)
            ]),
            Err(ConfigError::StrictCountTooLarge("a".into()))
        );
        assert_eq!(
            validate(&[quota("a").ipv6_prefix(129)]),
            Err(ConfigError::InvalidIpv6Prefix("a".into()))
        );
        assert_eq!(
            validate(&[quota("a").max_tracked_keys(0, Overflow::Refuse)]),
            Err(ConfigError::ZeroCapacity("a".into()))
        );
        let rate = "1/s".parse().unwrap();
        assert_eq!(
            validate(&[quota("a").tier("gold", rate).tier("gold", rate)]),
            Err(ConfigError::DuplicateTier("a".into(), "gold".into()))
        );
        assert_eq!(validate(&[quota("a"), quota("b.c_d-1")]), Ok(()));
    }

    /// Any numbers a host can give the builder: building never panics, and a layer
    /// that builds decides requests without panicking.
    mod numbers {
        use super::*;
        use crate::RateLimitLayer;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn any_numbers_build_or_are_refused_by_name(
                count in 1u32..=u32::MAX,
                period_ms in 1u64..=Rate::MAX_PERIOD.as_millis() as u64,
                burst in proptest::option::of(0u32..=u32::MAX),
                strict in any::<bool>(),
                ban in proptest::option::of((0u32..100, 0u64..u64::MAX / 2, 0u64..u64::MAX / 2)),
                tracked in prop_oneof![Just(0usize), 1usize..4, Just(usize::MAX)],
                ipv6_prefix in any::<u8>(),
                sweep in proptest::option::of(prop_oneof![Just(0u64), 1u64..u64::MAX]),
            ) {
                let period = Duration::from_millis(period_ms);
                let rate = match Rate::new(count, period) {
                    Ok(rate) => rate,
                    Err(error) => {
                        // Only a rate finer than one request per nanosecond is refused.
                        prop_assert_eq!(error, crate::InvalidRate::TooFine);
                        prop_assert!(period.as_nanos() < u128::from(count));
                        return Ok(());
                    }
                };
                let mut quota = Quota::new("q", rate)
                    .semantics(if strict { Semantics::StrictWindow } else { Semantics::Smooth })
                    .max_tracked_keys(tracked, Overflow::SharedBucket)
                    .ipv6_prefix(ipv6_prefix);
                if let Some(burst) = burst {
                    quota = quota.burst(burst);
                }
                if let Some((strikes, window, duration)) = ban {
                    quota = quota.ban(Ban::after(strikes, Duration::from_nanos(window), Duration::from_nanos(duration)));
                }
                let builder = RateLimitLayer::builder()
                    .quota(quota)
                    .sweep_every(sweep.map(Duration::from_nanos));
                match builder.build() {
                    Ok(layer) => {
                        let mut request = http::Request::new(());
                        request.extensions_mut().insert(portcullis_core::PeerAddr("192.0.2.1:1".parse().unwrap()));
                        let service = tower_layer::Layer::layer(&layer, tower::service_fn(|_: http::Request<()>| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(()))
                        }));
                        let response = futures::executor::block_on(tower::ServiceExt::oneshot(service, request)).unwrap();
                        prop_assert!(response.status().is_success() || response.status() == http::StatusCode::TOO_MANY_REQUESTS);
                    }
                    Err(ConfigError::ZeroDuration(setting)) => {
                        prop_assert_eq!(setting, "sweep_every");
                        prop_assert_eq!(sweep, Some(0));
                    }
                    Err(error) => prop_assert!(error.to_string().contains("\"q\""), "{error}"),
                }
            }
        }

        #[test]
        fn the_reported_overflow_is_refused_by_name() {
            let rate: Rate = "1 per 366d".parse().unwrap();
            let error = RateLimitLayer::builder()
                .quota(Quota::new("yearly", rate).burst(585))
                .build()
                .unwrap_err();
            assert_eq!(error, ConfigError::BurstTooLarge("yearly".into()));
            let error = RateLimitLayer::builder()
                .quota(Quota::new("q", rate).ban(Ban::after(
                    1,
                    Duration::ZERO,
                    Duration::from_secs(1),
                )))
                .build()
                .unwrap_err();
            assert_eq!(error, ConfigError::InvalidBan("q".into()));
            // A zero sweep interval used to mean "never sweep" without a word.
            let error = RateLimitLayer::builder()
                .quota(Quota::new("q", rate))
                .sweep_every(Some(Duration::ZERO))
                .build()
                .unwrap_err();
            assert_eq!(error, ConfigError::ZeroDuration("sweep_every"));
            assert!(error.to_string().contains("sweep_every is zero"), "{error}");
        }
    }
}
