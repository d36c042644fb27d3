//! The account check: on every request, is the token's subject still there, not
//! blocked, and what are its roles now? Answers are cached for a short time.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::cache::{bounded, BoundedCache};
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
pub type SubjectCheckError = portcullis_core::CheckError;

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

#[derive(Clone)]
struct Entry {
    issuer: Arc<str>,
    id: Arc<str>,
    until: Duration,
    answer: Answer,
}

/// The check and its cache, keyed by a hash of issuer and subject (the entry holds both,
/// so a collision is a miss, never a wrong answer). Bounded, evicting by `quick_cache`'s
/// S3-FIFO policy (subjects seen once go first); `None` when answers are not kept.
type Answers = BoundedCache<u64, Entry, foldhash::fast::RandomState>;

pub(crate) struct SubjectCache {
    pub(crate) check: Arc<dyn SubjectCheck>,
    ttl: Duration,
    entries: Option<Answers>,
    hasher: foldhash::quality::RandomState,
}

impl fmt::Debug for SubjectCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.entries.as_ref().map_or(0, Answers::len))
            .finish_non_exhaustive()
    }
}

impl SubjectCache {
    pub(crate) fn new(check: Arc<dyn SubjectCheck>, ttl: Duration, capacity: usize) -> Self {
        let entries = (!ttl.is_zero() && capacity > 0)
            .then(|| bounded(capacity, foldhash::fast::RandomState::default()));
        Self {
            check,
            ttl,
            entries,
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
        let entries = self.entries.as_ref()?;
        let key = self.key(issuer, id);
        let entry = entries.get(&key)?;
        if &*entry.issuer != issuer || &*entry.id != id {
            return None;
        }
        if clock.monotonic() >= entry.until {
            entries.remove(&key);
            return None;
        }
        Some(entry.answer)
    }

    pub(crate) fn store(&self, subject: &Subject, answer: Answer, clock: &Clock) {
        let Some(entries) = &self.entries else {
            return;
        };
        let now = clock.monotonic();
        entries.insert(
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
        if let Some(entries) = &self.entries {
            entries.clear();
        }
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

    /// Full, the cache evicts rather than refusing new answers, keeps what is asked for
    /// again, and never grows past its capacity.
    #[test]
    fn a_full_cache_evicts_the_answers_not_asked_for_again() {
        let (clock, _) = Clock::manual(UNIX_EPOCH);
        let check = |_: Subject| async { Ok(SubjectStatus::Active) };
        let cache = SubjectCache::new(Arc::new(check), Duration::from_secs(60), 32);
        cache.store(&subject("regular"), Answer::Blocked, &clock);
        for n in 0..2_000 {
            assert!(
                cache.cached("iss", "regular", &clock).is_some(),
                "after {n}"
            );
            cache.store(&subject(&format!("once-{n}")), Answer::Unknown, &clock);
            assert!(cache.entries.as_ref().unwrap().len() <= 32);
        }
        assert!(cache.cached("iss", "once-1999", &clock).is_some());
        // A zero TTL keeps nothing.
        let off = SubjectCache::new(Arc::new(check), Duration::ZERO, 32);
        off.store(&subject("a"), Answer::Blocked, &clock);
        assert!(off.cached("iss", "a", &clock).is_none());
    }
}
