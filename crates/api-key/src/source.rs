//! Where in a request the key is read from.

use std::fmt;

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, Request, Uri};
use portcullis_core::{scheme_line, SchemeLine};

use crate::key::{KeyPrefix, MalformedKey, PresentedKey, MAX_PRESENTED_LEN};

/// Where the layer looks for a key. Several may be configured; a request that carries
/// two different keys is refused.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySource(Kind);

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    Header(HeaderName),
    Split(HeaderName),
    /// `shared`: the scheme is shared with other layers, and only values that start
    /// with the deployment's key prefix are ours.
    Authorization {
        scheme: Box<str>,
        shared: bool,
    },
    Query(Box<str>),
}

impl KeySource {
    /// The whole header value is the key: `X-API-KEY: pck_<id>_<secret>`.
    pub fn header(name: HeaderName) -> Self {
        Self(Kind::Header(name))
    }

    /// The header holds `<secret>/<id>`, as in `X-Auth-Token: pck_<secret>/<id>`.
    pub fn split_header(name: HeaderName) -> Self {
        Self(Kind::Split(name))
    }

    /// `Authorization: <scheme> <key>`, the scheme matched without regard to case
    /// (`ApiKey`, `Bearer`, …). An `Authorization` header with another scheme is left for
    /// other layers.
    pub fn authorization(scheme: &str) -> Result<Self, InvalidScheme> {
        let valid = !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if valid {
            Ok(Self(Kind::Authorization {
                scheme: scheme.into(),
                shared: false,
            }))
        } else {
            Err(InvalidScheme)
        }
    }

    /// `Authorization: <scheme> <key>` on a scheme that other credentials use too,
    /// typically `Bearer` shared with JWTs: only values that start with this
    /// deployment's key prefix (`pck_`) are taken as API keys; the rest are left for the
    /// other layers.
    pub fn shared_authorization(scheme: &str) -> Result<Self, InvalidScheme> {
        let mut source = Self::authorization(scheme)?;
        if let Kind::Authorization { shared, .. } = &mut source.0 {
            *shared = true;
        }
        Ok(source)
    }

    /// A query parameter, `?api_key=…`.
    ///
    /// **Avoid it.** URLs end up in proxy logs, browser history and `Referer` headers,
    /// so a key in a URL leaks. It exists for clients that cannot set headers. The layer
    /// removes the parameter before the inner service runs (unless told to keep
    /// credentials), but anything in front of the layer has already seen it.
    pub fn query_parameter(name: &str) -> Self {
        Self(Kind::Query(name.into()))
    }

    /// The scheme of an `Authorization` source, for the challenge.
    pub(crate) fn scheme(&self) -> Option<&str> {
        match &self.0 {
            Kind::Authorization { scheme, .. } => Some(scheme),
            _ => None,
        }
    }

    /// Header name to advertise in the challenge.
    pub(crate) fn header_name(&self) -> Option<&HeaderName> {
        match &self.0 {
            Kind::Header(name) | Kind::Split(name) => Some(name),
            _ => None,
        }
    }
}

impl Default for KeySource {
    /// `X-API-KEY`.
    fn default() -> Self {
        Self::header(HeaderName::from_static("x-api-key"))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Header(name) => write!(f, "header {name}"),
            Kind::Split(name) => write!(f, "header {name} (<secret>/<id>)"),
            Kind::Authorization {
                scheme,
                shared: false,
            } => write!(f, "Authorization: {scheme}"),
            Kind::Authorization {
                scheme,
                shared: true,
            } => {
                write!(f, "Authorization: {scheme} (prefixed keys only)")
            }
            Kind::Query(name) => write!(f, "query parameter {name}"),
        }
    }
}

/// An `Authorization` scheme that is not an HTTP token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an Authorization scheme is an HTTP token such as ApiKey or Bearer")]
pub struct InvalidScheme;

/// The credential a request carries, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    None,
    Compact(&'a str),
    Split(&'a str),
    /// Two different values.
    Conflict,
    /// A value that is not visible ASCII, or too long to be a key.
    Unreadable(MalformedKey),
}

impl<'a> Found<'a> {
    pub(crate) fn parse(self, prefix: &KeyPrefix) -> Result<PresentedKey<'a>, MalformedKey> {
        match self {
            Self::Compact(text) => PresentedKey::parse(prefix, text),
            Self::Split(text) => PresentedKey::parse_split(prefix, text),
            Self::Unreadable(reason) => Err(reason),
            // Callers handle the other cases first.
            Self::None | Self::Conflict => Err(MalformedKey::Shape),
        }
    }
}

/// Reads every configured source; allocates nothing.
pub(crate) fn find<'a, B>(
    sources: &[KeySource],
    prefix: &KeyPrefix,
    request: &'a Request<B>,
) -> Found<'a> {
    let mut found = Found::None;
    let mut add = |candidate: Found<'a>| {
        found = match (found, candidate) {
            (Found::None, next) => next,
            (Found::Unreadable(reason), _) | (_, Found::Unreadable(reason)) => {
                Found::Unreadable(reason)
            }
            (current, next) if current == next => current,
            _ => Found::Conflict,
        };
    };
    for source in sources {
        // Every field line (or query parameter) of a source is read; a source that
        // carries a credential more than once is a conflict, equal values or not, so
        // no line is left unread for the inner service.
        let mut lines = 0usize;
        let mut one = |candidate: Found<'a>, add: &mut dyn FnMut(Found<'a>)| {
            lines += 1;
            add(if lines > 1 {
                Found::Conflict
            } else {
                candidate
            });
        };
        match &source.0 {
            Kind::Header(name) => header_values(request.headers(), name, &mut |value| {
                one(
                    value.map_or_else(Found::Unreadable, |v| Found::Compact(v.trim())),
                    &mut add,
                )
            }),
            Kind::Split(name) => header_values(request.headers(), name, &mut |value| {
                one(
                    value.map_or_else(Found::Unreadable, |v| Found::Split(v.trim())),
                    &mut add,
                )
            }),
            Kind::Authorization { scheme, shared } => {
                header_values(
                    request.headers(),
                    &AUTHORIZATION,
                    &mut |value| match value {
                        Ok(value) => match claimed(value, scheme, *shared, prefix) {
                            Claim::Ours(credentials) => one(Found::Compact(credentials), &mut add),
                            Claim::Loose => one(Found::Unreadable(MalformedKey::Shape), &mut add),
                            Claim::Other => {}
                        },
                        // An unreadable value on a shared scheme may be another layer's.
                        Err(reason) if !*shared => one(Found::Unreadable(reason), &mut add),
                        Err(_) => {}
                    },
                )
            }
            Kind::Query(name) => {
                for value in query_values(request.uri(), name) {
                    one(Found::Compact(value), &mut add);
                }
            }
        }
    }
    found
}

fn header_values<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    each: &mut dyn FnMut(Result<&'a str, MalformedKey>),
) {
    for value in headers.get_all(name) {
        let text = if value.len() > MAX_PRESENTED_LEN + 64 {
            Err(MalformedKey::TooLong)
        } else {
            value.to_str().map_err(|_| MalformedKey::NotText)
        };
        each(text);
    }
}

/// What an `Authorization` value is to a source.
enum Claim<'a> {
    /// Exactly `<scheme> <credentials>`: ours.
    Ours(&'a str),
    /// Our scheme (and, on a shared scheme, our prefix) written loosely: a tab, two
    /// spaces, trailing space or no credentials. An attempt, refused as malformed.
    Loose,
    /// Another scheme, or on a shared scheme another layer's credential.
    Other,
}

/// The credentials of an `Authorization` value that this source claims: its scheme,
/// and on a shared scheme only keys with this deployment's prefix.
fn claimed<'a>(value: &'a str, scheme: &str, shared: bool, prefix: &KeyPrefix) -> Claim<'a> {
    let (credentials, exact) = match scheme_line(value.as_bytes(), scheme) {
        SchemeLine::Other => return Claim::Other,
        SchemeLine::Exact(credentials) => (credentials, true),
        SchemeLine::Loose(credentials) => (credentials, false),
    };
    let ours = !shared
        || credentials
            .strip_prefix(prefix.as_str().as_bytes())
            .is_some_and(|rest| rest.starts_with(b"_"));
    // A slice of `value` cut at ASCII bytes, so still text.
    match (ours, exact, std::str::from_utf8(credentials)) {
        (false, _, _) => Claim::Other,
        (true, true, Ok(credentials)) => Claim::Ours(credentials),
        (true, _, _) => Claim::Loose,
    }
}

/// Whether a query parameter's name, percent-decoded, is `name`: `api%5Fkey` is
/// `api_key`, for finding and for stripping alike.
fn same_name(encoded: &str, name: &str) -> bool {
    if !encoded.contains('%') {
        return encoded == name;
    }
    percent_encoding::percent_decode_str(encoded).eq(name.bytes())
}

fn query_values<'a, 'n>(
    uri: &'a Uri,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            same_name(key, name).then_some(value)
        })
}

/// Removes every configured source from the request, so the inner service never sees
/// the secret.
pub(crate) fn strip<B>(sources: &[KeySource], prefix: &KeyPrefix, request: &mut Request<B>) {
    for source in sources {
        match &source.0 {
            Kind::Header(name) | Kind::Split(name) => {
                request.headers_mut().remove(name);
            }
            Kind::Authorization { scheme, shared } => {
                // Only the lines that carried this source's key: a bearer token on
                // another line stays for its layer.
                portcullis_core::remove_field_lines(
                    request.headers_mut(),
                    &AUTHORIZATION,
                    |value| {
                        value.to_str().is_ok_and(|value| {
                            matches!(
                                claimed(value, scheme, *shared, prefix),
                                Claim::Ours(_) | Claim::Loose
                            )
                        })
                    },
                );
            }
            Kind::Query(name) => strip_query(request, name),
        }
    }
}

fn strip_query<B>(request: &mut Request<B>, name: &str) {
    let Some(query) = request.uri().query() else {
        return;
    };
    if query_values(request.uri(), name).next().is_none() {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !same_name(pair.split_once('=').map_or(*pair, |(key, _)| key), name))
        .collect();
    let path = request.uri().path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn all() -> Vec<KeySource> {
        vec![
            KeySource::default(),
            KeySource::split_header(HeaderName::from_static("x-auth-token")),
            KeySource::authorization("ApiKey").unwrap(),
            KeySource::query_parameter("api_key"),
        ]
    }

    #[test]
    fn each_source_is_read() {
        let sources = all();
        assert_eq!(
            find(
                &sources,
                &KeyPrefix::default(),
                &request(&[("x-api-key", " k1 ")], "/")
            ),
            Found::Compact("k1")
        );
        assert_eq!(
            find(
                &sources,
                &KeyPrefix::default(),
                &request(&[("x-auth-token", "s/1")], "/")
            ),
            Found::Split("s/1")
        );
        assert_eq!(
            find(
                &sources,
                &KeyPrefix::default(),
                &request(&[("authorization", "apikey k1")], "/")
            ),
            Found::Compact("k1")
        );
        assert_eq!(
            find(
                &sources,
                &KeyPrefix::default(),
                &request(&[], "/a?x=1&api_key=k1")
            ),
            Found::Compact("k1")
        );
        assert_eq!(
            find(
                &sources,
                &KeyPrefix::default(),
                &request(&[("authorization", "Bearer jwt")], "/")
            ),
            Found::None
        );
        assert_eq!(
            find(&sources, &KeyPrefix::default(), &request(&[], "/a?x=1")),
            Found::None
        );
    }

    #[test]
    fn two_different_keys_conflict_and_the_same_key_twice_does_not() {
        let sources = all();
        let both = request(&[("x-api-key", "k1"), ("authorization", "ApiKey k2")], "/");
        assert_eq!(
            find(&sources, &KeyPrefix::default(), &both),
            Found::Conflict
        );
        let same = request(&[("x-api-key", "k1"), ("authorization", "ApiKey k1")], "/");
        assert_eq!(
            find(&sources, &KeyPrefix::default(), &same),
            Found::Compact("k1")
        );
        let repeated = request(&[("x-api-key", "k1"), ("x-api-key", "k2")], "/");
        assert_eq!(
            find(&sources, &KeyPrefix::default(), &repeated),
            Found::Conflict
        );
        let query = request(&[("x-api-key", "k1")], "/?api_key=k2");
        assert_eq!(
            find(&sources, &KeyPrefix::default(), &query),
            Found::Conflict
        );
    }

    #[test]
    fn unreadable_values_are_malformed() {
        let mut bad = request(&[], "/");
        bad.headers_mut().insert(
            "x-api-key",
            http::HeaderValue::from_bytes(b"k\xff1").unwrap(),
        );
        assert_eq!(
            find(&all(), &KeyPrefix::default(), &bad),
            Found::Unreadable(MalformedKey::NotText)
        );
        let long = "k".repeat(1000);
        assert_eq!(
            find(
                &all(),
                &KeyPrefix::default(),
                &request(&[("x-api-key", &long)], "/")
            ),
            Found::Unreadable(MalformedKey::TooLong)
        );
    }

    #[test]
    fn strip_removes_every_source_and_keeps_the_rest() {
        let sources = all();
        let mut req = request(
            &[
                ("x-api-key", "k1"),
                ("x-auth-token", "s/1"),
                ("authorization", "ApiKey k1"),
                ("accept", "*/*"),
            ],
            "http://h/a/b?x=1&api_key=k1&y=2",
        );
        strip(&sources, &KeyPrefix::default(), &mut req);
        assert!(req.headers().get("x-api-key").is_none());
        assert!(req.headers().get("x-auth-token").is_none());
        assert!(req.headers().get("authorization").is_none());
        assert!(req.headers().get("accept").is_some());
        assert_eq!(req.uri().to_string(), "http://h/a/b?x=1&y=2");

        let mut bearer = request(&[("authorization", "Bearer jwt")], "/only?api_key=k1");
        strip(&sources, &KeyPrefix::default(), &mut bearer);
        assert!(
            bearer.headers().get("authorization").is_some(),
            "another scheme is not ours"
        );
        assert_eq!(bearer.uri().to_string(), "/only");
    }

    #[test]
    fn a_shared_scheme_takes_only_prefixed_keys() {
        let sources = vec![KeySource::shared_authorization("Bearer").unwrap()];
        let prefix = KeyPrefix::default();
        let jwt = request(
            &[("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig")],
            "/",
        );
        assert_eq!(find(&sources, &prefix, &jwt), Found::None);
        let key = request(&[("authorization", "Bearer pck_k1_secret")], "/");
        assert_eq!(
            find(&sources, &prefix, &key),
            Found::Compact("pck_k1_secret")
        );
        let mut jwt = jwt;
        strip(&sources, &prefix, &mut jwt);
        assert!(
            jwt.headers().get("authorization").is_some(),
            "the JWT stays for its layer"
        );
        let mut key = key;
        strip(&sources, &prefix, &mut key);
        assert!(key.headers().get("authorization").is_none());
    }

    #[test]
    fn schemes_are_tokens() {
        assert!(KeySource::authorization("Api Key").is_err());
        assert!(KeySource::authorization("").is_err());
        assert!(KeySource::authorization("Bearer").is_ok());
    }
}
