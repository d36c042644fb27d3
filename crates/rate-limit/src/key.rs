//! A request's key under a quota: a keyed hash for the in-process maps, a readable label
//! for ban listings, and stable bytes for Redis.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr};

use portcullis_core::{Authentication, Principal};

use crate::quota::{KeyPart, RequestHead};

/// Everything a key part may be read from.
pub(crate) struct KeySource<'a> {
    pub(crate) head: RequestHead<'a>,
    pub(crate) client: Option<IpAddr>,
    pub(crate) auth: &'a Authentication,
}

impl KeySource<'_> {
    fn first_principal(&self) -> Option<&Principal> {
        self.auth.principals().next()
    }

    /// The rate-limit tier of the first principal that has one.
    pub(crate) fn tier(&self) -> Option<&str> {
        self.auth.principals().find_map(Principal::rate_limit_tier)
    }
}

/// The request lacks a part of the key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MissingPart {
    pub(crate) needs_principal: bool,
}

/// One part's value.
enum Value<'a> {
    Ip(IpAddr, u8),
    Text(&'a str),
    Owned(String),
    /// A header value: hashed into keys, shown only as a digest.
    Secretish(&'a [u8]),
    Route(&'a str, &'a str),
    RawPath(&'a str, &'a str),
}

#[inline]
fn group(ip: IpAddr, ipv6_prefix: u8) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => (IpAddr::V4(v4), 32),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = match ipv6_prefix {
                0 => 0,
                n => u128::MAX << (128 - u32::from(n.min(128))),
            };
            (IpAddr::V6(Ipv6Addr::from(bits & mask)), ipv6_prefix)
        }
    }
}

fn visit<'a>(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    source: &'a KeySource<'a>,
    mut each: impl FnMut(&KeyPart, Value<'_>),
) -> Result<(), MissingPart> {
    for part in parts {
        let missing = MissingPart {
            needs_principal: part.needs_principal(),
        };
        let value = match part {
            KeyPart::ClientIp => {
                let (ip, prefix) = group(source.client.ok_or(missing)?, ipv6_prefix);
                Value::Ip(ip, prefix)
            }
            KeyPart::Principal => Value::Text(source.first_principal().ok_or(missing)?.id()),
            KeyPart::Credential => Value::Text(
                source
                    .auth
                    .principals()
                    .find_map(Principal::credential_id)
                    .ok_or(missing)?,
            ),
            KeyPart::Attribute(name) => Value::Text(
                source
                    .auth
                    .principals()
                    .find_map(|p| p.attribute(name))
                    .ok_or(missing)?,
            ),
            KeyPart::Header(name) => {
                Value::Secretish(source.head.headers.get(name).ok_or(missing)?.as_bytes())
            }
            KeyPart::Route => Value::Route(
                source.head.method.as_str(),
                portcullis_core::matched_route(source.head.extensions).ok_or(missing)?,
            ),
            KeyPart::RawPath => Value::RawPath(source.head.method.as_str(), source.head.uri.path()),
            KeyPart::Custom(custom) => Value::Owned((custom.extract)(&source.head).ok_or(missing)?),
        };
        each(part, value);
    }
    Ok(())
}

/// A key given as text (one value per part) that does not fit the quota's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyValueError {
    Count {
        expected: usize,
        got: usize,
    },
    Invalid {
        index: usize,
        part: String,
        reason: &'static str,
    },
}

/// Like [`visit`], from values given as text, one per part, as a host names a key
/// (`192.0.2.7`, `acme-app`, `POST /v1/{action}`): the key a request with those
/// values would have.
fn visit_values(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    values: &[&str],
    mut each: impl FnMut(&KeyPart, Value<'_>),
) -> Result<(), KeyValueError> {
    if parts.len() != values.len() {
        return Err(KeyValueError::Count {
            expected: parts.len(),
            got: values.len(),
        });
    }
    for (index, (part, text)) in parts.iter().zip(values).enumerate() {
        let invalid = |reason| KeyValueError::Invalid {
            index,
            part: part.label_name().to_owned(),
            reason,
        };
        let value = match part {
            KeyPart::ClientIp => {
                let ip: IpAddr = text.parse().map_err(|_| invalid("is not an IP address"))?;
                let (ip, prefix) = group(ip.to_canonical(), ipv6_prefix);
                Value::Ip(ip, prefix)
            }
            KeyPart::Principal
            | KeyPart::Credential
            | KeyPart::Attribute(_)
            | KeyPart::Custom(_) => Value::Text(text),
            KeyPart::Header(_) => Value::Secretish(text.as_bytes()),
            KeyPart::Route | KeyPart::RawPath => {
                let (method, path) = text
                    .split_once(' ')
                    .filter(|(m, p)| !m.is_empty() && p.starts_with('/'))
                    .ok_or_else(|| invalid("must be a method and a path: \"GET /items/{id}\""))?;
                match part {
                    KeyPart::Route => Value::Route(method, path),
                    _ => Value::RawPath(method, path),
                }
            }
        };
        each(part, value);
    }
    Ok(())
}

/// The keyed hash of a key given as text; see [`visit_values`].
pub(crate) fn hash_values(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    values: &[&str],
    seed: &impl BuildHasher,
) -> Result<u64, KeyValueError> {
    let mut hasher = seed.build_hasher();
    visit_values(parts, ipv6_prefix, values, |_, value| {
        write_value(&mut hasher, &value)
    })?;
    Ok(hasher.finish())
}

/// The keyed hash of the request's key. The hasher (foldhash) is seeded per process,
/// so nobody outside can make two keys collide on purpose.
pub(crate) fn hash(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    source: &KeySource<'_>,
    seed: &impl BuildHasher,
) -> Result<u64, MissingPart> {
    let mut hasher = seed.build_hasher();
    if let ([KeyPart::ClientIp], Some(client)) = (parts, source.client) {
        // The most common key, without the general walk over parts.
        let (ip, prefix) = group(client, ipv6_prefix);
        write_value(&mut hasher, &Value::Ip(ip, prefix));
        return Ok(hasher.finish());
    }
    visit(parts, ipv6_prefix, source, |_, value| {
        write_value(&mut hasher, &value)
    })?;
    Ok(hasher.finish())
}

#[inline]
fn write_value(out: &mut impl Hasher, value: &Value<'_>) {
    // Tags and lengths keep ("ab", "c") apart from ("a", "bc"); an address is one
    // write, so the common key costs one round of the hasher.
    match value {
        Value::Ip(IpAddr::V4(ip), _) => out.write_u64(4 << 32 | u64::from(ip.to_bits())),
        Value::Ip(IpAddr::V6(ip), prefix) => {
            out.write_u128(ip.to_bits());
            out.write_u8(6 << 4 ^ prefix);
        }
        Value::Text(text) => write_bytes(out, 1, text.as_bytes()),
        Value::Owned(text) => write_bytes(out, 1, text.as_bytes()),
        Value::Secretish(bytes) => write_bytes(out, 2, bytes),
        Value::Route(method, path) => {
            write_bytes(out, 3, method.as_bytes());
            write_bytes(out, 3, path.as_bytes());
        }
        Value::RawPath(method, path) => {
            write_bytes(out, 4, method.as_bytes());
            write_bytes(out, 4, path.as_bytes());
        }
    }
}

fn write_bytes(out: &mut impl Hasher, tag: u8, bytes: &[u8]) {
    out.write_u64(u64::from(tag) << 56 | bytes.len() as u64);
    out.write(bytes);
}

/// A readable name of the request's key, for ban listings and logs: `ip=2001:db8::/64`,
/// `principal=acme,route=POST /v1/sign`. Header values appear only as a digest.
pub(crate) fn label(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    source: &KeySource<'_>,
    seed: &impl BuildHasher,
) -> Result<String, MissingPart> {
    let mut label = String::new();
    visit(parts, ipv6_prefix, source, |part, value| {
        if !label.is_empty() {
            label.push(',');
        }
        let _ = write!(label, "{}=", part.label_name());
        let _ = match value {
            Value::Ip(ip, prefix) => write!(label, "{ip}/{prefix}"),
            Value::Text(text) => write!(label, "{}", text.escape_debug()),
            Value::Owned(text) => write!(label, "{}", text.escape_debug()),
            Value::Secretish(bytes) => {
                let mut hasher = seed.build_hasher();
                hasher.write(bytes);
                write!(label, "#{:016x}", hasher.finish())
            }
            Value::Route(method, path) | Value::RawPath(method, path) => {
                write!(label, "{method} {}", path.escape_debug())
            }
        };
    })?;
    Ok(label)
}

/// Stable bytes naming the request's key, the same on every instance (Redis keys are
/// derived from their digest).
#[cfg(feature = "redis")]
pub(crate) fn material(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    source: &KeySource<'_>,
) -> Result<Vec<u8>, MissingPart> {
    material_by(|each| visit(parts, ipv6_prefix, source, each))
}

/// [`material`] of a key given as text; see [`visit_values`].
#[cfg(feature = "redis")]
pub(crate) fn material_values(
    parts: &[KeyPart],
    ipv6_prefix: u8,
    values: &[&str],
) -> Result<Vec<u8>, KeyValueError> {
    material_by(|each| visit_values(parts, ipv6_prefix, values, each))
}

#[cfg(feature = "redis")]
fn material_by<E>(
    walk: impl FnOnce(&mut dyn FnMut(&KeyPart, Value<'_>)) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    struct Bytes(Vec<u8>);
    impl Hasher for Bytes {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        // Big-endian and fixed width, so the bytes are the same on every platform.
        fn write_u8(&mut self, n: u8) {
            self.0.push(n);
        }
        fn write_u64(&mut self, n: u64) {
            self.0.extend_from_slice(&n.to_be_bytes());
        }
        fn write_u128(&mut self, n: u128) {
            self.0.extend_from_slice(&n.to_be_bytes());
        }
        fn write_usize(&mut self, n: usize) {
            self.0.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut out = Bytes(Vec::with_capacity(64));
    walk(&mut |_, value| write_value(&mut out, &value))?;
    Ok(out.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::quality::RandomState;
    use http::{Extensions, HeaderMap, HeaderValue, Method, Uri};
    use portcullis_core::AuthMethod;

    fn head<'a>(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            uri,
            headers,
            extensions,
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_ipv4_kept_whole() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(group(a, 64), group(b, 64));
        assert_ne!(group(a, 64), group(c, 64));
        assert_eq!(group(a, 48), group(c, 48));
        assert_ne!(group(a, 128), group(b, 128));
        assert_eq!(group(a, 0).0, "::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(group(v4, 64), (v4, 32));
    }

    #[test]
    fn keys_combine_parts_and_report_what_is_missing() {
        let (method, uri) = (Method::POST, Uri::from_static("/v1/sign?x=1"));
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("tenant-secret-ish"));
        let mut extensions = Extensions::new();
        extensions.insert(portcullis_core::MatchedRoute("/v1/{action}".into()));
        let mut auth = Authentication::new();
        auth.insert(
            Principal::builder("acme-app", AuthMethod::ApiKey)
                .credential_id("k1")
                .attribute("org", "acme")
                .build(),
        )
        .unwrap();
        let source = KeySource {
            head: head(&method, &uri, &headers, &extensions),
            client: Some("2001:db8::5".parse().unwrap()),
            auth: &auth,
        };
        let seed = RandomState::default();
        let parts = [
            KeyPart::ClientIp,
            KeyPart::Principal,
            KeyPart::Credential,
            KeyPart::Attribute("org".into()),
            KeyPart::Header("x-tenant".parse().unwrap()),
            KeyPart::Route,
            KeyPart::RawPath,
        ];
        let label = label(&parts, 64, &source, &seed).unwrap();
        assert!(label
            .starts_with("ip=2001:db8::/64,principal=acme-app,credential=k1,org=acme,x-tenant=#"));
        assert!(
            label.ends_with(",route=POST /v1/{action},raw-path=POST /v1/sign"),
            "{label}"
        );
        // The route and the raw path are different parts even when their texts agree.
        assert_ne!(
            hash(&[KeyPart::Route], 64, &source, &seed).unwrap(),
            hash(&[KeyPart::RawPath], 64, &source, &seed).unwrap()
        );
        assert!(!label.contains("tenant-secret-ish"));
        assert_eq!(
            hash(&parts, 64, &source, &seed).unwrap(),
            hash(&parts, 64, &source, &seed).unwrap()
        );
        assert_ne!(
            hash(&parts[..1], 64, &source, &seed).unwrap(),
            hash(&parts[..2], 64, &source, &seed).unwrap()
        );

        // Without a matched route the route part is missing, never the raw path.
        let bare = Extensions::new();
        let unrouted = KeySource {
            head: head(&method, &uri, &headers, &bare),
            client: None,
            auth: &auth,
        };
        assert!(hash(&[KeyPart::Route], 64, &unrouted, &seed).is_err());
        assert!(hash(&[KeyPart::RawPath], 64, &unrouted, &seed).is_ok());

        let anonymous = Authentication::new();
        let source = KeySource {
            auth: &anonymous,
            client: None,
            ..source
        };
        assert!(
            hash(&[KeyPart::Principal], 64, &source, &seed)
                .unwrap_err()
                .needs_principal
        );
        assert!(
            !hash(&[KeyPart::ClientIp], 64, &source, &seed)
                .unwrap_err()
                .needs_principal
        );
        assert!(
            !hash(
                &[KeyPart::Header("x-other".parse().unwrap())],
                64,
                &source,
                &seed
            )
            .unwrap_err()
            .needs_principal
        );
    }

    #[test]
    fn custom_parts_read_the_request() {
        let (method, uri) = (Method::GET, Uri::from_static("/"));
        let mut headers = HeaderMap::new();
        headers.insert("x-claimed", HeaderValue::from_static("key-7"));
        let extensions = Extensions::new();
        let auth = Authentication::new();
        let source = KeySource {
            head: head(&method, &uri, &headers, &extensions),
            client: None,
            auth: &auth,
        };
        let part = KeyPart::custom("claimed", |head| {
            head.headers
                .get("x-claimed")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let seed = RandomState::default();
        assert_eq!(
            label(std::slice::from_ref(&part), 64, &source, &seed).unwrap(),
            "claimed=key-7"
        );
    }
}
