//! Whether the credential a session was opened with is still good: the link between a
//! token issued to an API key or a client certificate and that key or certificate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::AuthMethod;

/// The credential a principal authenticated with: its method, the credential's id (the
/// API key's id, the client certificate's thumbprint `sha256:…`) and the principal it
/// named (the key's owner, the connector).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Credential {
    /// How the principal authenticated.
    pub method: AuthMethod,
    /// The credential's id: never a secret.
    pub id: Arc<str>,
    /// The principal the credential named.
    pub principal: Arc<str>,
}

/// What a [`CredentialCheck`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialStatus {
    /// The credential exists and may still be used.
    Good,
    /// The credential was revoked, has expired, or its holder is blocked.
    Revoked,
    /// No such credential any more (removed from its store).
    Unknown,
}

/// A check could not answer (its store is down or unreadable): a credential check, or
/// the JWT layer's account check. Layers refuse with 503 rather than let a request go
/// on unchecked; the message is logged, never sent to the client.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the check could not answer: {message}")]
pub struct CheckError {
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CheckError {
    /// A failure described by `message`.
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

/// Why a [`CredentialCheck`] gave no answer.
pub type CredentialCheckError = CheckError;

/// The boxed future a [`CredentialCheck`] returns.
pub type CredentialFuture =
    Pin<Box<dyn Future<Output = Result<CredentialStatus, CredentialCheckError>> + Send + 'static>>;

/// Answers whether a credential is still good. The API-key stores and the mTLS connector
/// registry implement it, so that a token issued to a key or a certificate ends when the
/// key is revoked or the connector blocked; the JWT layer and the token issuer ask it.
///
/// A check answers only for the methods it knows: [`checks`](Self::checks) says which,
/// so several checks combine with [`CredentialChecks`].
///
/// ```
/// use portcullis_core::{AuthMethod, Credential, CredentialCheck, CredentialFuture, CredentialStatus};
///
/// /// Every key is good except `k-revoked`.
/// struct Keys;
///
/// impl CredentialCheck for Keys {
///     fn checks(&self, method: AuthMethod) -> bool {
///         method == AuthMethod::ApiKey
///     }
///     fn check(&self, credential: &Credential) -> CredentialFuture {
///         let revoked = &*credential.id == "k-revoked";
///         Box::pin(async move {
///             Ok(if revoked { CredentialStatus::Revoked } else { CredentialStatus::Good })
///         })
///     }
/// }
/// # let _ = Keys;
/// ```
pub trait CredentialCheck: Send + Sync + 'static {
    /// Whether this check answers for credentials of `method`.
    fn checks(&self, method: AuthMethod) -> bool;

    /// Looks the credential up.
    fn check(&self, credential: &Credential) -> CredentialFuture;
}

impl<T: CredentialCheck + ?Sized> CredentialCheck for Arc<T> {
    fn checks(&self, method: AuthMethod) -> bool {
        (**self).checks(method)
    }

    fn check(&self, credential: &Credential) -> CredentialFuture {
        (**self).check(credential)
    }
}

/// Several checks, each answering for its own methods: the first that
/// [`checks`](CredentialCheck::checks) a credential's method decides it. Cheap to clone.
///
/// ```
/// use portcullis_core::CredentialChecks;
///
/// let checks = CredentialChecks::new(); // .with(api_key_store).with(connector_registry)
/// assert!(checks.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct CredentialChecks(Arc<[Arc<dyn CredentialCheck>]>);

impl CredentialChecks {
    /// No checks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check, consulted after the ones already added.
    pub fn with(self, check: impl CredentialCheck) -> Self {
        let mut checks: Vec<Arc<dyn CredentialCheck>> = self.0.iter().cloned().collect();
        checks.push(Arc::new(check));
        Self(checks.into())
    }

    /// Whether no check was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The check that answers for `method`, if any.
    fn for_method(&self, method: AuthMethod) -> Option<&Arc<dyn CredentialCheck>> {
        self.0.iter().find(|check| check.checks(method))
    }
}

impl CredentialCheck for CredentialChecks {
    fn checks(&self, method: AuthMethod) -> bool {
        self.for_method(method).is_some()
    }

    fn check(&self, credential: &Credential) -> CredentialFuture {
        match self.for_method(credential.method) {
            Some(check) => check.check(credential),
            // Not reached through `checks`; a caller that asks anyway learns nothing good.
            None => Box::pin(async { Ok(CredentialStatus::Unknown) }),
        }
    }
}

impl fmt::Debug for CredentialChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<&str> = AuthMethod::ALL
            .iter()
            .filter(|method| self.checks(**method))
            .map(|method| method.as_str())
            .collect();
        f.debug_struct("CredentialChecks")
            .field("methods", &methods)
            .finish()
    }
}
