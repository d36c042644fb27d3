//! The credential check's answers, cached briefly: a session ends with the API key or
//! certificate it was opened with, within the cache time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use portcullis_core::{Clock, Credential, CredentialStatus};

use crate::refusal::JwtRefusal;

/// How long an answer is kept unless the builder says otherwise.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The most answers kept; past it, expired ones are dropped, and new ones are not kept.
const CAPACITY: usize = 100_000;

struct Entry {
    until: Duration,
    status: CredentialStatus,
}

/// Answers by issuer and credential.
pub(crate) struct CredentialCache {
    ttl: Duration,
    entries: DashMap<(usize, Arc<Credential>), Entry>,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl CredentialCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: DashMap::new(),
        }
    }

    pub(crate) fn cached(
        &self,
        issuer: usize,
        credential: &Arc<Credential>,
        clock: &Clock,
    ) -> Option<CredentialStatus> {
        if self.ttl.is_zero() {
            return None;
        }
        let entry = self.entries.get(&(issuer, credential.clone()))?;
        (clock.monotonic() < entry.until).then_some(entry.status)
    }

    pub(crate) fn store(
        &self,
        issuer: usize,
        credential: &Arc<Credential>,
        status: CredentialStatus,
        clock: &Clock,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let now = clock.monotonic();
        if self.entries.len() >= CAPACITY {
            self.entries.retain(|_, entry| entry.until > now);
            if self.entries.len() >= CAPACITY {
                return;
            }
        }
        self.entries.insert(
            (issuer, credential.clone()),
            Entry {
                until: now.saturating_add(self.ttl),
                status,
            },
        );
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}

/// What an answer means for the request.
pub(crate) fn verdict(status: CredentialStatus) -> Result<(), JwtRefusal> {
    match status {
        CredentialStatus::Good => Ok(()),
        _ => Err(JwtRefusal::CredentialRevoked),
    }
}
