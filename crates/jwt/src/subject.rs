//! The account check: on every request, is the token's subject still there, not
//! blocked, and what are its roles now? Answers are cached for a short time.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use portcullis_core::Clock;

/// The subject a token names, as the account check is asked about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The token's issuer.
    pub issuer: Arc<str>,
    /// The principal id taken from the token (`sub` by default).
    pub id: Arc<str>,
}

/// What the account check found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectStatus {
    /// The account exists and may act; the token's roles stand.
    Active,
    /// The account exists and may act, with these roles instead of the token's.
    ActiveWithRoles(Vec<String>),
    /// The account exists but is blocked: 401 `account_disabled`.
    Blocked,
    /// No such account any more: 401 `unknown_account`.
    Unknown,
}

/// The account check could not answer (its store is down). The request is refused with
/// 503 `account_check_unavailable`: a check that cannot run never lets a request through.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the account check failed: {message}")]
pub struct SubjectCheckError {
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl SubjectCheckError {
    /// A failure described by `message` (logged, never sent to the client).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`, the store's own error, kept as the error's
    /// [`source`](std::error::Error::source).
    pub fn from_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// What failed, as given.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The boxed future an account check returns.
pub type SubjectFuture =
    Pin<Box<dyn Future<Output = Result<SubjectStatus, SubjectCheckError>> + Send + 'static>>;

/// Asked, for every request with a valid token, whether its subject may still act.
///
/// Implemented for closures returning a future, so a check against the host's own
/// account store is a few lines:
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::{Arc, RwLock};
/// use portcullis_jwt::{Subject, SubjectCheckError, SubjectStatus};
///
/// let blocked: Arc<RwLock<HashSet<String>>> = Arc::default();
/// let check = move |subject: Subject| {
///     let blocked = blocked.clone();
///     async move {
///         let blocked = blocked.read().map_err(|_| SubjectCheckError::new("lock poisoned"))?;
///         Ok(if blocked.contains(&*subject.id) { SubjectStatus::Blocked } else { SubjectStatus::Active })
///     }
/// };
/// # fn takes(_: impl portcullis_jwt::SubjectCheck) {}
/// # takes(check);
/// ```
pub trait SubjectCheck: Send + Sync + 'static {
    /// Looks the subject up.
    fn check(&self, subject: Subject) -> SubjectFuture;
}

impl<F, Fut> SubjectCheck for F
where
    F: Fn(Subject) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<SubjectStatus, SubjectCheckError>> + Send + 'static,
{
    fn check(&self, subject: Subject) -> SubjectFuture {
        Box::pin(self(subject))
    }
}

/// A cached answer. `roles` replaces the token's roles when set.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Active(Option<Arc<[String]>>),
    Blocked,
    Unknown,
}

impl From<SubjectStatus> for Answer {
    fn from(status: SubjectStatus) -> Self {
        match status {
            SubjectStatus::Active => Answer::Active(None),
            SubjectStatus::ActiveWithRoles(roles) => Answer::Active(Some(roles.into())),
            SubjectStatus::Blocked => Answer::Blocked,
            SubjectStatus::Unknown => Answer::Unknown,
        }
    }
}

struct Entry {
    issuer: Arc<str>,
    id: Arc<str>,
    until: Duration,
    answer: Answer,
}

/// The check and its cache, keyed by a hash of issuer and subject (the entry holds both,
/// so a collision is a miss, never a wrong answer).
pub(crate) struct SubjectCache {
    pub(crate) check: Arc<dyn SubjectCheck>,
    ttl: Duration,
    capacity: usize,
    entries: DashMap<u64, Entry>,
    hasher: foldhash::quality::RandomState,
}

impl fmt::Debug for SubjectCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl SubjectCache {
    pub(crate) fn new(check: Arc<dyn SubjectCheck>, ttl: Duration, capacity: usize) -> Self {
        Self {
            check,
            ttl,
            capacity,
            entries: DashMap::new(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn key(&self, issuer: &str, id: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        issuer.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    }

    pub(crate) fn cached(&self, issuer: &str, id: &str, clock: &Clock) -> Option<Answer> {
        if self.ttl.is_zero() {
            return None;
        }
        let entry = self.entries.get(&self.key(issuer, id))?;
        if &*entry.issuer != issuer || &*entry.id != id || clock.monotonic() >= entry.until {
            return None;
        }
        Some(entry.answer.clone())
    }

    pub(crate) fn store(&self, subject: &Subject, answer: Answer, clock: &Clock) {
        if self.ttl.is_zero() {
            return;
        }
        let now = clock.monotonic();
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, entry| entry.until > now);
            if self.entries.len() >= self.capacity {
                return;
            }
        }
        self.entries.insert(
            self.key(&subject.issuer, &subject.id),
            Entry {
                issuer: subject.issuer.clone(),
                id: subject.id.clone(),
                until: now.saturating_add(self.ttl),
                answer,
            },
        );
    }

    /// Forgets every answer, so the next request of each subject asks again.
    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn subject(id: &str) -> Subject {
        Subject {
            issuer: "iss".into(),
            id: id.into(),
        }
    }

    #[test]
    fn answers_last_for_the_ttl_only() {
        let (clock, control) = Clock::manual(UNIX_EPOCH + Duration::from_secs(100));
        let check = |_: Subject| async { Ok(SubjectStatus::Active) };
        let cache = SubjectCache::new(Arc::new(check), Duration::from_secs(5), 10);
        assert!(cache.cached("iss", "a", &clock).is_none());
        cache.store(&subject("a"), Answer::Blocked, &clock);
        assert!(matches!(
            cache.cached("iss", "a", &clock),
            Some(Answer::Blocked)
        ));
        assert!(cache.cached("iss", "b", &clock).is_none());
        assert!(cache.cached("other", "a", &clock).is_none());
        control.advance(Duration::from_millis(4_999));
        assert!(cache.cached("iss", "a", &clock).is_some());
        control.advance(Duration::from_millis(1));
        assert!(cache.cached("iss", "a", &clock).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_stops_storing() {
        let (clock, control) = Clock::manual(UNIX_EPOCH);
        let check = |_: Subject| async { Ok(SubjectStatus::Active) };
        let cache = SubjectCache::new(Arc::new(check), Duration::from_secs(1), 2);
        cache.store(&subject("a"), Answer::Unknown, &clock);
        cache.store(&subject("b"), Answer::Unknown, &clock);
        cache.store(&subject("c"), Answer::Unknown, &clock);
        assert!(cache.cached("iss", "c", &clock).is_none());
        control.advance(Duration::from_secs(2));
        cache.store(&subject("c"), Answer::Unknown, &clock);
        assert!(cache.cached("iss", "c", &clock).is_some());
        assert_eq!(cache.entries.len(), 1);
    }
}
