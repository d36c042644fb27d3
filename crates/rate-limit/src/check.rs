//! Checks without charging: what a request, or a key, would get from the quotas now.

use std::time::Duration;

use crate::engine::{Applied, Engine, Refusal};
use crate::key::{KeySource, KeyValueError};
use crate::quota::Mode;

/// What one quota would answer now, without being charged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaCheck {
    /// The quota's name.
    pub quota: String,
    /// Whether it enforces or only reports.
    pub mode: Mode,
    /// Whether it would let one more request through.
    pub allowed: bool,
    /// Whether the key is banned under it.
    pub banned: bool,
    /// The rate's count (the tier's, for a principal with one).
    pub limit: u32,
    /// The rate's period.
    pub window: Duration,
    /// Requests left now.
    pub remaining: u32,
    /// Until the whole quota is available again (for a ban: until it ends).
    pub reset: Duration,
    /// For a refusal: until a request would be allowed. Zero when allowed.
    pub retry_after: Duration,
}

/// What a request would get from the layer now, without being charged; see
/// [`RateLimitHandle::check`](crate::RateLimitHandle::check).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitCheck {
    /// Whether the request would be let through: no enforced quota refuses it.
    pub allowed: bool,
    /// The code it would be refused with (`rate_limited`, `banned`,
    /// `rate_limit_key_missing`, …), or `None`.
    pub refusal: Option<&'static str>,
    /// The longest wait among the enforced quotas that refuse.
    pub retry_after: Duration,
    /// Every quota that applies to the request, in the layer's order. Empty when the
    /// request is refused before any quota is asked (no client address, a missing key).
    pub quotas: Vec<QuotaCheck>,
}

impl RateLimitCheck {
    pub(crate) fn from_quotas(quotas: Vec<QuotaCheck>) -> Self {
        let refusing = quotas
            .iter()
            .filter(|q| !q.allowed && q.mode == Mode::Enforce);
        let retry_after = refusing.clone().map(|q| q.retry_after).max();
        let refusal = refusing.max_by_key(|q| q.retry_after).map(|q| {
            if q.banned {
                "banned"
            } else {
                "rate_limited"
            }
        });
        Self {
            allowed: refusal.is_none(),
            refusal,
            retry_after: retry_after.unwrap_or_default(),
            quotas,
        }
    }

    pub(crate) fn refused(code: &'static str) -> Self {
        Self {
            allowed: false,
            refusal: Some(code),
            retry_after: Duration::ZERO,
            quotas: Vec::new(),
        }
    }
}

/// Why [`RateLimitHandle::check_key`](crate::RateLimitHandle::check_key) could not
/// answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckKeyError {
    /// No quota has that name.
    #[error("there is no quota named {0:?}")]
    UnknownQuota(String),
    /// The key has a different number of parts than the quota's key.
    #[error("quota {quota:?} has a key of {expected} parts; {got} were given")]
    WrongPartCount {
        /// The quota.
        quota: String,
        /// Its key's parts.
        expected: usize,
        /// The values given.
        got: usize,
    },
    /// A value does not fit its part (an address that does not parse, a route without
    /// its method).
    #[error("quota {quota:?}: key part {index} ({part}) {reason}")]
    InvalidPart {
        /// The quota.
        quota: String,
        /// The part's position, from 0.
        index: usize,
        /// The part's name (`ip`, `route`, …).
        part: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The quota has tiers and the tier named is not one of them.
    #[error("quota {quota:?} has no tier named {tier:?}")]
    UnknownTier {
        /// The quota.
        quota: String,
        /// The tier given.
        tier: String,
    },
    /// Redis cannot answer and the layer fails closed.
    #[error("rate limits cannot be checked right now: Redis does not answer")]
    Unavailable,
}

impl CheckKeyError {
    pub(crate) fn from_value(quota: &str, error: KeyValueError) -> Self {
        match error {
            KeyValueError::Count { expected, got } => Self::WrongPartCount {
                quota: quota.to_owned(),
                expected,
                got,
            },
            KeyValueError::Invalid {
                index,
                part,
                reason,
            } => Self::InvalidPart {
                quota: quota.to_owned(),
                index,
                part,
                reason,
            },
        }
    }
}

impl Engine {
    /// The quotas that apply to a request, or the refusal that comes before any.
    pub(crate) fn applied_all(&self, source: &KeySource<'_>) -> Result<Vec<Applied>, Refusal> {
        let mut applied = Vec::with_capacity(self.quotas.len());
        for index in 0..self.quotas.len() {
            if let Some(one) = self.applied(index, source)? {
                applied.push(one);
            }
        }
        Ok(applied)
    }

    /// What quota `one.quota` answers for its key now, in process, charging nothing
    /// and counting no strike.
    pub(crate) fn peek(&self, one: &Applied) -> QuotaCheck {
        let compiled = &self.quotas[one.quota];
        let rate = compiled.limiters[one.tier].rate();
        let base = QuotaCheck {
            quota: compiled.quota.name.clone(),
            mode: compiled.mode(),
            allowed: true,
            banned: false,
            limit: rate.count(),
            window: rate.period(),
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        };
        if let Some(left) = compiled.bans.as_ref().and_then(|b| b.banned(one.key)) {
            return QuotaCheck {
                allowed: false,
                banned: true,
                reset: left,
                retry_after: left,
                ..base
            };
        }
        let measure = compiled.limiters[one.tier].check(one.key, false);
        QuotaCheck {
            allowed: measure.allowed,
            remaining: measure.remaining(),
            reset: measure.reset(),
            retry_after: measure.retry_after,
            ..base
        }
    }

    /// The tier index named `tier` under quota `quota` (the base rate for `None`).
    pub(crate) fn tier_named(&self, quota: usize, tier: Option<&str>) -> Option<usize> {
        match tier {
            None => Some(0),
            Some(name) => self.quotas[quota]
                .quota
                .tiers
                .iter()
                .position(|(t, ..)| t == name)
                .map(|i| i + 1),
        }
    }
}
