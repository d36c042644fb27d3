//! Who a request is: principals and the set of them a request has proven.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::NetworkSet;

/// The kind of credential a principal was authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A client certificate (mutual TLS, in-process or forwarded by a trusted proxy).
    Certificate,
    /// An API key.
    ApiKey,
    /// A JSON Web Token.
    Jwt,
    /// An external authorization service that named the caller (the ext-authz layer,
    /// from its answer's headers).
    External,
}

impl AuthMethod {
    /// Every method, in a fixed order.
    pub const ALL: [AuthMethod; 4] = [
        AuthMethod::Certificate,
        AuthMethod::ApiKey,
        AuthMethod::Jwt,
        AuthMethod::External,
    ];

    /// A stable lower-case name: `certificate`, `api_key`, `jwt`, `external`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::External => "external",
        }
    }

    const fn index(self) -> usize {
        match self {
            AuthMethod::Certificate => 0,
            AuthMethod::ApiKey => 1,
            AuthMethod::Jwt => 2,
            AuthMethod::External => 3,
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AuthMethod {
    type Err = UnknownAuthMethod;

    /// Parses the stable name of [`AuthMethod::as_str`]: `certificate`, `api_key`, `jwt`,
    /// `external`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        AuthMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| UnknownAuthMethod(name.to_owned()))
    }
}

/// A name that is not one of [`AuthMethod`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an authentication method: use \"certificate\", \"api_key\" or \"jwt\"")]
pub struct UnknownAuthMethod(pub String);

/// An authenticated identity: who, by which method, with what roles and scopes.
///
/// Cheap to clone (one `Arc`). It never holds a secret: `credential_id` names the
/// credential (a key id, a certificate thumbprint, a token id), it is not the credential.
///
/// ```
/// use portcullis_core::{AuthMethod, Principal};
///
/// let principal = Principal::builder("connector-7", AuthMethod::Certificate)
///     .credential_id("sha256:9f86d081884c7d65")
///     .role("reader")
///     .scope("keys:read")
///     .attribute("tier", "gold")
///     .build();
/// assert!(principal.has_role("reader"));
/// assert_eq!(principal.attribute("tier"), Some("gold"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Debug, PartialEq, Eq)]
struct PrincipalInner {
    id: String,
    method: AuthMethod,
    credential_id: Option<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    allowed_networks: Option<NetworkSet>,
    rate_limit_tier: Option<String>,
    attributes: BTreeMap<String, String>,
}

impl Principal {
    /// Starts a principal with its stable id and the method that authenticated it.
    pub fn builder(id: impl Into<String>, method: AuthMethod) -> PrincipalBuilder {
        PrincipalBuilder {
            inner: PrincipalInner {
                id: id.into(),
                method,
                credential_id: None,
                roles: Vec::new(),
                scopes: Vec::new(),
                allowed_networks: None,
                rate_limit_tier: None,
                attributes: BTreeMap::new(),
            },
        }
    }

    /// A builder holding everything this principal has, to add to it: roles or
    /// attributes granted after it was established.
    pub fn to_builder(&self) -> PrincipalBuilder {
        let inner = &*self.0;
        PrincipalBuilder {
            inner: PrincipalInner {
                id: inner.id.clone(),
                method: inner.method,
                credential_id: inner.credential_id.clone(),
                roles: inner.roles.clone(),
                scopes: inner.scopes.clone(),
                allowed_networks: inner.allowed_networks.clone(),
                rate_limit_tier: inner.rate_limit_tier.clone(),
                attributes: inner.attributes.clone(),
            },
        }
    }

    /// The stable id: connector id, key id, JWT `sub`, certificate binding.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The method that produced this principal.
    pub fn method(&self) -> AuthMethod {
        self.0.method
    }

    /// The id of the credential used (never the secret itself).
    pub fn credential_id(&self) -> Option<&str> {
        self.0.credential_id.as_deref()
    }

    /// Roles or access levels.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// OAuth-style scopes.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Whether the principal has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// Whether the principal has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| s == scope)
    }

    /// The networks this principal may call from, when its credential is restricted.
    pub fn allowed_networks(&self) -> Option<&NetworkSet> {
        self.0.allowed_networks.as_ref()
    }

    /// The rate-limit tier, when the credential names one.
    pub fn rate_limit_tier(&self) -> Option<&str> {
        self.0.rate_limit_tier.as_deref()
    }

    /// A free-form attribute a layer attached.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.0.attributes.get(name).map(String::as_str)
    }

    /// All free-form attributes, sorted by name.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.0.id)
            .field("method", &self.0.method)
            .field("credential_id", &self.0.credential_id)
            .field("roles", &self.0.roles)
            .field("scopes", &self.0.scopes)
            .field("allowed_networks", &self.0.allowed_networks)
            .field("rate_limit_tier", &self.0.rate_limit_tier)
            .field("attributes", &self.0.attributes)
            .finish()
    }
}

/// Builds a [`Principal`].
#[derive(Debug)]
#[must_use = "call .build() to get the Principal"]
pub struct PrincipalBuilder {
    inner: PrincipalInner,
}

impl PrincipalBuilder {
    /// Names the credential used (a key id, a thumbprint, a `jti`); never pass a secret.
    pub fn credential_id(mut self, id: impl Into<String>) -> Self {
        self.inner.credential_id = Some(id.into());
        self
    }

    /// Adds a role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.inner.roles.push(role.into());
        self
    }

    /// Adds several roles.
    pub fn roles<I, R>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.inner.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// Adds a scope.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.inner.scopes.push(scope.into());
        self
    }

    /// Adds several scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inner.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Restricts the principal to calls from these networks.
    pub fn allowed_networks(mut self, networks: NetworkSet) -> Self {
        self.inner.allowed_networks = Some(networks);
        self
    }

    /// Sets the rate-limit tier.
    pub fn rate_limit_tier(mut self, tier: impl Into<String>) -> Self {
        self.inner.rate_limit_tier = Some(tier.into());
        self
    }

    /// Sets a free-form attribute, replacing an earlier value of the same name.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.attributes.insert(name.into(), value.into());
        self
    }

    /// Finishes the principal. Roles and scopes are de-duplicated.
    pub fn build(mut self) -> Principal {
        dedup(&mut self.inner.roles);
        dedup(&mut self.inner.scopes);
        Principal(Arc::new(self.inner))
    }
}

fn dedup(values: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    values.retain(|v| seen.insert(v.clone()));
}

/// The principals a request has proven, at most one per [`AuthMethod`].
///
/// Authentication layers add to it in the request's extensions with
/// [`Authentication::insert_into`]; the role router and rate limiter read it. Cheap to
/// clone.
///
/// ```
/// use portcullis_core::{AuthMethod, Authentication, Principal};
///
/// let mut request = http::Request::new(());
/// let key = Principal::builder("key-1", AuthMethod::ApiKey).role("admin").build();
/// Authentication::insert_into(request.extensions_mut(), key)?;
///
/// let auth = Authentication::from_extensions(request.extensions());
/// assert!(auth.has(AuthMethod::ApiKey));
/// assert!(!auth.has(AuthMethod::Jwt));
/// assert!(auth.principals().any(|p| p.has_role("admin")));
/// # Ok::<(), portcullis_core::DuplicateMethod>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Authentication {
    by_method: [Option<Principal>; 4],
}

impl Authentication {
    /// No principal.
    pub const fn new() -> Self {
        Self {
            by_method: [None, None, None, None],
        }
    }

    /// An empty `Authentication` with a `'static` lifetime, for layers that borrow the
    /// request's `Authentication` and need something to point at when there is none.
    pub fn empty() -> &'static Authentication {
        static EMPTY: Authentication = Authentication::new();
        &EMPTY
    }

    /// Adds a principal. A second principal for the same method is refused: two layers
    /// that authenticate the same kind of credential is a misconfiguration, and silently
    /// keeping either one could grant the wrong identity.
    pub fn insert(&mut self, principal: Principal) -> Result<(), DuplicateMethod> {
        let slot = &mut self.by_method[principal.method().index()];
        if slot.is_some() {
            return Err(DuplicateMethod(principal.method()));
        }
        *slot = Some(principal);
        Ok(())
    }

    /// Puts `principal` in its method's place, replacing the one there: for a layer
    /// that adds to what an earlier layer established (roles an external service
    /// granted), never for a second credential of the same kind (see [`insert`](Self::insert)).
    pub fn replace(&mut self, principal: Principal) -> Option<Principal> {
        self.by_method[principal.method().index()].replace(principal)
    }

    /// Adds a principal to the `Authentication` in `extensions`, creating it if needed.
    pub fn insert_into(
        extensions: &mut http::Extensions,
        principal: Principal,
    ) -> Result<(), DuplicateMethod> {
        match extensions.get_mut::<Authentication>() {
            Some(auth) => auth.insert(principal),
            None => {
                let mut auth = Authentication::new();
                auth.insert(principal)?;
                extensions.insert(auth);
                Ok(())
            }
        }
    }

    /// Leaves an empty `Authentication` in `extensions` when there is none: what an
    /// authentication layer does with a request it lets through without credentials
    /// (optional mode), so that extractors can tell "nobody authenticated" (401) from
    /// "no authentication layer ran" (a misconfiguration).
    pub fn mark_checked(extensions: &mut http::Extensions) {
        if extensions.get::<Authentication>().is_none() {
            extensions.insert(Authentication::new());
        }
    }

    /// The `Authentication` in `extensions`, or an empty one.
    pub fn from_extensions(extensions: &http::Extensions) -> Authentication {
        extensions
            .get::<Authentication>()
            .cloned()
            .unwrap_or_default()
    }

    /// The principal for `method`.
    pub fn get(&self, method: AuthMethod) -> Option<&Principal> {
        self.by_method[method.index()].as_ref()
    }

    /// Whether `method` succeeded.
    pub fn has(&self, method: AuthMethod) -> bool {
        self.get(method).is_some()
    }

    /// Whether any method succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.by_method.iter().any(Option::is_some)
    }

    /// The principals, in the order of [`AuthMethod::ALL`].
    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.by_method.iter().flatten()
    }

    /// The methods that succeeded.
    pub fn methods(&self) -> impl Iterator<Item = AuthMethod> + '_ {
        self.principals().map(Principal::method)
    }
}

impl Default for Authentication {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.principals()).finish()
    }
}

/// Returned when a request already has a principal for the method being added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request already has a {0} principal: only one layer per authentication method may run"
)]
pub struct DuplicateMethod(pub AuthMethod);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_every_field_and_dedups() {
        let networks: NetworkSet = "10.0.0.0/8".parse().unwrap();
        let p = Principal::builder("app", AuthMethod::Jwt)
            .credential_id("jti-1")
            .roles(["a", "b", "a"])
            .scopes(["s1", "s1"])
            .allowed_networks(networks.clone())
            .rate_limit_tier("gold")
            .attribute("org", "acme")
            .attribute("org", "acme2")
            .build();
        assert_eq!(p.id(), "app");
        assert_eq!(p.method(), AuthMethod::Jwt);
        assert_eq!(p.credential_id(), Some("jti-1"));
        assert_eq!(p.roles(), ["a", "b"]);
        assert_eq!(p.scopes(), ["s1"]);
        assert!(p.has_role("b") && !p.has_role("c"));
        assert!(p.has_scope("s1") && !p.has_scope("s2"));
        assert_eq!(p.allowed_networks(), Some(&networks));
        assert_eq!(p.rate_limit_tier(), Some("gold"));
        assert_eq!(p.attribute("org"), Some("acme2"));
        assert_eq!(p.attributes().collect::<Vec<_>>(), [("org", "acme2")]);
    }

    #[test]
    fn methods_parse_from_their_names() {
        for method in AuthMethod::ALL {
            assert_eq!(method.as_str().parse::<AuthMethod>(), Ok(method));
        }
        let err = "password".parse::<AuthMethod>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"password\" is not an authentication method: use \"certificate\", \"api_key\" or \"jwt\""
        );
    }

    #[test]
    fn clones_share_one_allocation() {
        let p = Principal::builder("x", AuthMethod::ApiKey).build();
        let q = p.clone();
        assert!(Arc::ptr_eq(&p.0, &q.0));
    }

    #[test]
    fn one_principal_per_method() {
        let mut auth = Authentication::new();
        assert!(!auth.is_authenticated());
        auth.insert(Principal::builder("k", AuthMethod::ApiKey).build())
            .unwrap();
        auth.insert(Principal::builder("c", AuthMethod::Certificate).build())
            .unwrap();
        let err = auth
            .insert(Principal::builder("k2", AuthMethod::ApiKey).build())
            .unwrap_err();
        assert_eq!(err, DuplicateMethod(AuthMethod::ApiKey));
        assert_eq!(auth.get(AuthMethod::ApiKey).unwrap().id(), "k");
        assert_eq!(
            auth.methods().collect::<Vec<_>>(),
            [AuthMethod::Certificate, AuthMethod::ApiKey]
        );
        assert!(err.to_string().contains("api_key"));
    }

    #[test]
    fn insert_into_extensions() {
        let mut ext = http::Extensions::new();
        assert!(!Authentication::from_extensions(&ext).is_authenticated());
        Authentication::insert_into(&mut ext, Principal::builder("j", AuthMethod::Jwt).build())
            .unwrap();
        Authentication::insert_into(
            &mut ext,
            Principal::builder("k", AuthMethod::ApiKey).build(),
        )
        .unwrap();
        assert!(Authentication::insert_into(
            &mut ext,
            Principal::builder("j2", AuthMethod::Jwt).build()
        )
        .is_err());
        let auth = Authentication::from_extensions(&ext);
        assert_eq!(auth.principals().count(), 2);
        assert_eq!(auth.get(AuthMethod::Jwt).unwrap().id(), "j");
    }
}
