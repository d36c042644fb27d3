//! Sessions opened with an API key end with the key.

use std::fmt;
use std::time::SystemTime;

use portcullis_core::{
    AuthMethod, Clock, Credential, CredentialCheck, CredentialCheckError, CredentialFuture,
    CredentialStatus,
};

use crate::store::{KeyStore, Lookup, LookupResult};

/// A [`KeyStore`] asked about the keys that sessions were opened with: a token issued
/// to an API key stays good while the key is in the store, not revoked, within its
/// validity and owned by the principal the token names. Give it to the token issuer and
/// the JWT layer (`credential_check`).
///
/// ```
/// use std::sync::Arc;
/// use portcullis_api_key::{ApiKeyCredentials, ApiKeyLayer, MemoryKeyStore};
///
/// // One store, shared by the layer that checks keys and the check that ends sessions.
/// let store = Arc::new(MemoryKeyStore::new());
/// let layer = ApiKeyLayer::new(store.clone());
/// let sessions_end_with_their_key = ApiKeyCredentials::new(store);
/// # let _ = (layer, sessions_end_with_their_key);
/// ```
#[derive(Clone)]
pub struct ApiKeyCredentials<S> {
    store: S,
    clock: Clock,
}

impl<S: KeyStore + Clone> ApiKeyCredentials<S> {
    /// Checks credentials against `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            clock: Clock::system(),
        }
    }

    /// The clock the keys' validity is checked against (the system clock by default).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl<S> fmt::Debug for ApiKeyCredentials<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyCredentials").finish_non_exhaustive()
    }
}

impl<S: KeyStore + Clone> CredentialCheck for ApiKeyCredentials<S> {
    fn checks(&self, method: AuthMethod) -> bool {
        method == AuthMethod::ApiKey
    }

    fn check(&self, credential: &Credential) -> CredentialFuture {
        let credential = credential.clone();
        let now = self.clock.now();
        match self.store.find(&credential.id) {
            Lookup::Ready(result) => {
                let status = status(&credential, result, now);
                Box::pin(async move { status })
            }
            Lookup::Pending(lookup) => {
                Box::pin(async move { status(&credential, lookup.await, now) })
            }
        }
    }
}

fn status(
    credential: &Credential,
    found: LookupResult,
    now: SystemTime,
) -> Result<CredentialStatus, CredentialCheckError> {
    let stored = match found {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(CredentialStatus::Unknown),
        Err(error) => {
            return Err(CredentialCheckError::from_source(
                "the key store did not answer",
                error,
            ))
        }
    };
    if stored.principal().id() != &*credential.principal {
        return Ok(CredentialStatus::Unknown);
    }
    // The same state check the layer makes once the digest matched.
    Ok(match stored.state(|| now) {
        Ok(()) => CredentialStatus::Good,
        Err(_) => CredentialStatus::Revoked,
    })
}
