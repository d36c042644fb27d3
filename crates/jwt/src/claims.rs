//! Claims as handlers see them, and the paths that turn claims into roles and scopes.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A dotted path into the claims: `roles`, `scope`, `realm_access.roles`,
/// `resource_access.my-api.roles`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    /// Parses `a.b.c`. Empty segments are refused.
    pub fn parse(path: &str) -> Result<Self, InvalidClaimPath> {
        let segments: Box<[Box<str>]> = path.split('.').map(Box::from).collect();
        if path.is_empty() || segments.iter().any(|s| s.is_empty()) {
            return Err(InvalidClaimPath(path.to_owned()));
        }
        Ok(Self(segments))
    }

    /// The claim's name, when the path is one registered claim the validator reads
    /// itself (`iss`, `jti`).
    pub(crate) fn registered(&self) -> Option<&str> {
        match &*self.0 {
            [only] if matches!(&**only, "iss" | "jti") => Some(only),
            _ => None,
        }
    }

    pub(crate) fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(&**first)?;
        for segment in rest {
            value = value.as_object()?.get(&**segment)?;
        }
        Some(value)
    }

    /// Every string the path holds: a space-separated string (`scope`) gives its words,
    /// an array gives its string members. Other types give nothing.
    pub(crate) fn strings<'a>(&self, claims: &'a Map<String, Value>) -> Vec<&'a str> {
        match self.lookup(claims) {
            Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A claim path with an empty segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidClaimPath(pub String);

impl fmt::Display for InvalidClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a claim path: write names separated by dots, such as realm_access.roles",
            self.0
        )
    }
}

impl std::error::Error for InvalidClaimPath {}

/// The verified token's claims, in the request's extensions for handlers that need more
/// than the [`Principal`](portcullis_core::Principal). Only the claims outside the
/// registered set are here; `iss`, `exp` and the rest are on [`JwtClaims::issuer`] and
/// the accessors beside it.
///
/// ```
/// # use portcullis_jwt::JwtClaims;
/// fn tenant(claims: &JwtClaims) -> Option<&str> {
///     claims.get("tenant")?.as_str()
/// }
/// ```
#[derive(Clone)]
pub struct JwtClaims(pub(crate) Arc<ClaimsInner>);

pub(crate) struct ClaimsInner {
    pub(crate) issuer: Arc<str>,
    pub(crate) subject: Arc<str>,
    pub(crate) expires_at: i64,
    pub(crate) issued_at: Option<i64>,
    pub(crate) token_id: Option<Arc<str>>,
    /// `cnf.x5t#S256`, decoded.
    pub(crate) binding: Option<[u8; 32]>,
    pub(crate) other: Map<String, Value>,
}

impl JwtClaims {
    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.0.issuer
    }

    /// The subject the principal was built from.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// `exp`, in seconds since the epoch.
    pub fn expires_at(&self) -> i64 {
        self.0.expires_at
    }

    /// `iat`, when the token has one.
    pub fn issued_at(&self) -> Option<i64> {
        self.0.issued_at
    }

    /// `jti`, when the token has one.
    pub fn token_id(&self) -> Option<&str> {
        self.0.token_id.as_deref()
    }

    /// A claim outside the registered set, by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.other.get(name)
    }

    /// A claim by dotted path (`realm_access.roles`).
    pub fn path(&self, path: &ClaimPath) -> Option<&Value> {
        path.lookup(&self.0.other)
    }

    /// Every claim outside the registered set.
    pub fn others(&self) -> &Map<String, Value> {
        &self.0.other
    }
}

/// Claims can name people and tenants; `Debug` shows only the registered ones.
impl fmt::Debug for JwtClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtClaims")
            .field("issuer", &self.0.issuer)
            .field("subject", &self.0.subject)
            .field("expires_at", &self.0.expires_at)
            .field("token_id", &self.0.token_id)
            .finish_non_exhaustive()
    }
}

/// The host's own claims type, deserialized once per verified token and put in the
/// request's extensions when the layer is configured with
/// [`JwtLayerBuilder::claims`](crate::JwtLayerBuilder::claims). A token whose claims do
/// not deserialize into `T` is refused with `invalid_claims`.
///
/// ```
/// use serde::Deserialize;
/// use portcullis_jwt::Claims;
///
/// #[derive(Deserialize)]
/// struct MyClaims { tenant: String }
///
/// fn tenant(request: &http::Request<()>) -> Option<&str> {
///     let claims = request.extensions().get::<Claims<MyClaims>>()?;
///     Some(&claims.tenant)
/// }
/// ```
pub struct Claims<T>(pub Arc<T>);

impl<T> Clone for Claims<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for Claims<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Claims<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Claims(..)")
    }
}

/// The host's claims, parsed once per verified token and kept with it in the cache.
pub(crate) type ParsedClaims = Arc<dyn Any + Send + Sync>;

/// Turns a token's payload into the host's `T`, and puts `Claims<T>` into extensions.
#[derive(Clone)]
pub(crate) struct TypedClaims {
    pub(crate) parse: fn(&[u8]) -> Result<ParsedClaims, serde_json::Error>,
    pub(crate) insert: fn(&ParsedClaims, &mut http::Extensions),
}

impl TypedClaims {
    pub(crate) fn of<T: DeserializeOwned + Send + Sync + 'static>() -> Self {
        Self {
            parse: |payload| {
                let claims: T = serde_json::from_slice(payload)?;
                Ok(Arc::new(claims))
            },
            insert: |parsed, extensions| {
                if let Ok(claims) = Arc::clone(parsed).downcast::<T>() {
                    extensions.insert(Claims(claims));
                }
            },
        }
    }
}

impl fmt::Debug for TypedClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypedClaims")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn paths_find_nested_strings() {
        let c = claims(
            r#"{"scope":"keys:read  keys:write","scp":["a","b",3],"realm_access":{"roles":["admin"]},"n":5}"#,
        );
        let path = |p: &str| ClaimPath::parse(p).unwrap();
        assert_eq!(path("scope").strings(&c), ["keys:read", "keys:write"]);
        assert_eq!(path("scp").strings(&c), ["a", "b"]);
        assert_eq!(path("realm_access.roles").strings(&c), ["admin"]);
        assert!(path("realm_access.missing").strings(&c).is_empty());
        assert!(path("n").strings(&c).is_empty());
        assert!(path("scope.deeper").strings(&c).is_empty());
    }

    #[test]
    fn empty_segments_are_refused() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ClaimPath::parse("a.b").unwrap().to_string(), "a.b");
    }
}
