//! Claims as handlers see them, and the paths that turn claims into roles and scopes.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A path into the claims: names separated by dots, such as `roles`, `scope`,
/// `realm_access.roles` or `resource_access.my-api.roles`. A name that holds a dot (or a
/// quote) is written in double quotes, with `\"` and `\\` for a quote and a backslash
/// inside: `"https://example.com/roles"` (Auth0's namespaced claims),
/// `resource_access."api.example.com".roles`. A quoted name is only ever that one
/// claim: `"a.b"` never reads the nested `a` → `b`, and `a.b` never reads a claim
/// named `a.b`.
///
/// ```
/// use portcullis_jwt::ClaimPath;
///
/// let auth0 = ClaimPath::parse(r#""https://example.com/roles""#)?;
/// assert_eq!(auth0.to_string(), r#""https://example.com/roles""#);
/// assert!(ClaimPath::parse("realm_access..roles").is_err());
/// # Ok::<(), portcullis_jwt::InvalidClaimPath>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    /// Parses a path. Empty names, a quote left open, a quote inside an unquoted name,
    /// text after a closing quote and escapes other than `\"` and `\\` are refused.
    pub fn parse(path: &str) -> Result<Self, InvalidClaimPath> {
        let invalid = |reason: ClaimPathError| InvalidClaimPath {
            path: path.to_owned(),
            reason,
        };
        let mut segments = Vec::new();
        let mut chars = path.chars().peekable();
        loop {
            let mut segment = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(invalid(ClaimPathError::OpenQuote)),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => segment.push(c),
                            _ => return Err(invalid(ClaimPathError::BadEscape)),
                        },
                        Some(c) => segment.push(c),
                    }
                }
                if !matches!(chars.peek(), None | Some('.')) {
                    return Err(invalid(ClaimPathError::AfterQuote));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    match c {
                        '.' => break,
                        '"' => return Err(invalid(ClaimPathError::StrayQuote)),
                        _ => {
                            segment.push(c);
                            chars.next();
                        }
                    }
                }
            }
            if segment.is_empty() {
                return Err(invalid(ClaimPathError::EmptyName));
            }
            segments.push(segment.into_boxed_str());
            // The next character is the dot before another name, or nothing.
            if chars.next().is_none() {
                break;
            }
        }
        Ok(Self(segments.into()))
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

    /// The roles at this path: absent gives none; otherwise an array of non-empty
    /// strings without control characters.
    pub(crate) fn roles<'a>(
        &self,
        claims: &'a Map<String, Value>,
    ) -> Result<Vec<&'a str>, WrongType> {
        match self.lookup(claims) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().and_then(clean).ok_or(WrongType))
                .collect(),
            Some(_) => Err(WrongType),
        }
    }

    /// The scopes at this path. `scope` is a string of scope tokens separated by single
    /// spaces (RFC 6749 3.3, RFC 9068 2.2.3), `scp` an array of scope tokens; a claim of
    /// another name may be either. Absent gives none.
    pub(crate) fn scopes<'a>(
        &self,
        claims: &'a Map<String, Value>,
    ) -> Result<Vec<&'a str>, WrongType> {
        let last = self.0.last().map_or("", |segment| &**segment);
        match self.lookup(claims) {
            None => Ok(Vec::new()),
            Some(Value::String(text)) if last != "scp" => text
                .split(' ')
                .map(|scope| is_scope_token(scope).then_some(scope).ok_or(WrongType))
                .collect(),
            Some(Value::Array(items)) if last != "scope" => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .filter(|scope| is_scope_token(scope))
                        .ok_or(WrongType)
                })
                .collect(),
            Some(_) => Err(WrongType),
        }
    }

    /// A string claim (an attribute or a tier): absent gives `None`; otherwise a
    /// non-empty string without control characters.
    pub(crate) fn text<'a>(
        &self,
        claims: &'a Map<String, Value>,
    ) -> Result<Option<&'a str>, WrongType> {
        match self.lookup(claims) {
            None => Ok(None),
            Some(value) => value.as_str().and_then(clean).map(Some).ok_or(WrongType),
        }
    }
}

/// A claim of the wrong type, or holding a character it may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WrongType;

/// `text` when it is non-empty and holds no control character.
pub(crate) fn clean(text: &str) -> Option<&str> {
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 3.3).
pub(crate) fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Written back as [`ClaimPath::parse`] reads it: names that need quotes get them.
impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if segment.contains(['.', '"', '\\']) {
                f.write_str("\"")?;
                for c in segment.chars() {
                    if matches!(c, '"' | '\\') {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")?;
            } else {
                f.write_str(segment)?;
            }
        }
        Ok(())
    }
}

/// A string that is not a claim path, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} is not a claim path: {reason}")]
pub struct InvalidClaimPath {
    path: String,
    reason: ClaimPathError,
}

impl InvalidClaimPath {
    /// Why the path was refused.
    pub fn reason(&self) -> ClaimPathError {
        self.reason
    }
}

/// Why a claim path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimPathError {
    /// An empty name: an empty path, `a..b`, a leading or trailing dot, or `""`.
    #[error("a name is empty; write names separated by dots, such as realm_access.roles")]
    EmptyName,
    /// A quoted name is not closed.
    #[error("a quoted name is not closed")]
    OpenQuote,
    /// A quote inside an unquoted name.
    #[error("a quote inside a name; quote the whole name, such as \"https://example.com/roles\"")]
    StrayQuote,
    /// Text after a quoted name's closing quote, before the next dot.
    #[error("a quoted name is followed by something other than a dot")]
    AfterQuote,
    /// A backslash inside quotes not followed by `"` or `\\`.
    #[error("inside quotes, a backslash escapes only a quote or a backslash")]
    BadEscape,
}

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

    #[test]
    fn quoted_names_hold_dots_and_stay_one_claim() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{
                "https://example.com/roles": ["admin"],
                "a.b": "literal",
                "a": {"b": "nested", "c.d": {"e": "deep"}},
                "q\"uote": "quoted",
                "back\\slash": "escaped"
            }"#,
        )
        .unwrap();
        let at = |path: &str| {
            ClaimPath::parse(path)
                .unwrap()
                .lookup(&claims)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        assert_eq!(
            ClaimPath::parse(r#""https://example.com/roles""#)
                .unwrap()
                .roles(&claims)
                .unwrap(),
            ["admin"]
        );
        assert_eq!(at("a.b").as_deref(), Some("nested"));
        assert_eq!(at(r#""a.b""#).as_deref(), Some("literal"));
        assert_eq!(at(r#"a."c.d".e"#).as_deref(), Some("deep"));
        assert_eq!(at("a.c.d.e"), None);
        assert_eq!(at(r#""q\"uote""#).as_deref(), Some("quoted"));
        assert_eq!(at(r#""back\\slash""#).as_deref(), Some("escaped"));
        // Quoting a name that needs none changes nothing.
        assert_eq!(at(r#""a"."b""#).as_deref(), Some("nested"));
    }

    #[test]
    fn claim_paths_print_as_they_parse() {
        for path in [
            "roles",
            "realm_access.roles",
            r#""https://example.com/roles""#,
            r#"resource_access."api.example.com".roles"#,
            r#""q\"uote".x"#,
            r#""back\\slash""#,
        ] {
            let parsed = ClaimPath::parse(path).unwrap();
            assert_eq!(parsed.to_string(), path);
            assert_eq!(ClaimPath::parse(&parsed.to_string()).unwrap(), parsed);
        }
        assert_eq!(ClaimPath::parse(r#""a"."b""#).unwrap().to_string(), "a.b");
    }

    #[test]
    fn malformed_claim_paths_say_why() {
        for (path, reason) in [
            ("", ClaimPathError::EmptyName),
            (".roles", ClaimPathError::EmptyName),
            ("roles.", ClaimPathError::EmptyName),
            ("a..b", ClaimPathError::EmptyName),
            (r#""""#, ClaimPathError::EmptyName),
            (r#"a."""#, ClaimPathError::EmptyName),
            (r#""https://example.com/roles"#, ClaimPathError::OpenQuote),
            (r#""a\""#, ClaimPathError::OpenQuote),
            (r#"a"b"#, ClaimPathError::StrayQuote),
            (r#"https://example.com/"roles""#, ClaimPathError::StrayQuote),
            (r#""a"b"#, ClaimPathError::AfterQuote),
            (r#""a" .b"#, ClaimPathError::AfterQuote),
            (r#""a\nb""#, ClaimPathError::BadEscape),
            (r#""a\"#, ClaimPathError::BadEscape),
        ] {
            let error = ClaimPath::parse(path).unwrap_err();
            assert_eq!(error.reason(), reason, "{path:?}");
            assert!(error.to_string().contains(&format!("{path:?}")), "{error}");
        }
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn paths_find_nested_claims_of_their_type() {
        let c = claims(
            r#"{"scope":"keys:read keys:write","scp":["a","b"],"realm_access":{"roles":["admin"]},"n":5,"org":"acme"}"#,
        );
        let path = |p: &str| ClaimPath::parse(p).unwrap();
        assert_eq!(
            path("scope").scopes(&c).unwrap(),
            ["keys:read", "keys:write"]
        );
        assert_eq!(path("scp").scopes(&c).unwrap(), ["a", "b"]);
        assert_eq!(path("realm_access.roles").roles(&c).unwrap(), ["admin"]);
        assert!(path("realm_access.missing").roles(&c).unwrap().is_empty());
        assert_eq!(path("org").text(&c).unwrap(), Some("acme"));
        assert_eq!(path("missing").text(&c).unwrap(), None);
        assert_eq!(path("n").roles(&c), Err(WrongType));
        assert_eq!(path("n").text(&c), Err(WrongType));
        assert_eq!(path("scope").roles(&c), Err(WrongType));
    }

    #[test]
    fn scopes_are_single_space_separated_tokens() {
        let path = |p: &str| ClaimPath::parse(p).unwrap();
        for bad in [
            r#"{"scope":"a  b"}"#,
            r#"{"scope":" a"}"#,
            r#"{"scope":"a "}"#,
            r#"{"scope":"a\tb"}"#,
            r#"{"scope":"a\nb"}"#,
            r#"{"scope":""}"#,
            r#"{"scope":"a\"b"}"#,
            r#"{"scope":"a\\b"}"#,
            r#"{"scope":"caf\u00e9"}"#,
            r#"{"scope":["a"]}"#,
            r#"{"scope":null}"#,
            r#"{"scp":"a b"}"#,
            r#"{"scp":["a b"]}"#,
            r#"{"scp":[""]}"#,
            r#"{"scp":["a",1]}"#,
        ] {
            let c = claims(bad);
            let name = c.keys().next().unwrap().clone();
            assert_eq!(path(&name).scopes(&c), Err(WrongType), "{bad}");
        }
        let c = claims(r#"{"perms":["a!","b~"],"other":"x y"}"#);
        assert_eq!(path("perms").scopes(&c).unwrap(), ["a!", "b~"]);
        assert_eq!(path("other").scopes(&c).unwrap(), ["x", "y"]);
    }

    #[test]
    fn empty_segments_are_refused() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ClaimPath::parse("a.b").unwrap().to_string(), "a.b");
    }
}
