//! Revoked token ids (`jti`), kept until the tokens would have expired anyway.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

/// A shared list of revoked token ids. Give the same list to the [`JwtLayer`](crate::JwtLayer)
/// and the [`TokenIssuer`](crate::TokenIssuer): a revoked token is refused with
/// `revoked_token` on its next request and cannot be extended. Cheap to clone.
///
/// ```
/// use portcullis_jwt::Revocations;
///
/// let revoked = Revocations::new();
/// revoked.revoke("token-1", 1_900_000_000);
/// assert!(revoked.is_revoked("token-1"));
/// revoked.sweep(1_900_000_001);
/// assert!(!revoked.is_revoked("token-1"), "forgotten once the token has expired");
/// ```
#[derive(Clone, Default)]
pub struct Revocations(Arc<DashMap<Box<str>, i64>>);

impl Revocations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes the token with id `jti`, which expires at `expires_at` (seconds since
    /// the epoch); the entry is swept after that.
    pub fn revoke(&self, jti: &str, expires_at: i64) {
        self.0.insert(jti.into(), expires_at);
    }

    /// Whether `jti` is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.0.contains_key(jti)
    }

    /// Forgets ids of tokens expired at `now` (seconds since the epoch).
    pub fn sweep(&self, now: i64) {
        self.0.retain(|_, expires_at| *expires_at >= now);
    }

    /// How many ids are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no id is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("len", &self.len())
            .finish()
    }
}
