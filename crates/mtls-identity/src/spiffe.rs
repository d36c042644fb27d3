//! SPIFFE IDs (`spiffe://trust-domain/path`) as the SPIFFE ID specification defines
//! them, and the trust domains a layer accepts them from.
//!
//! The syntax is checked exactly, because a lenient reading is a way around the
//! trust-domain check: `spiffe://Prod.example`, `spiffe://prod.example:443`,
//! `spiffe://user@prod.example` and `spiffe://prod.example/%2e%2e` are all refused
//! rather than normalized.

use std::fmt;
use std::str::FromStr;

/// The SPIFFE ID specification's bound on a whole ID, in bytes.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE ID specification's bound on a trust domain name, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// Empty.
    #[error("the SPIFFE ID is empty")]
    Empty,
    /// Longer than 2048 bytes.
    #[error("the SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// Does not start with `spiffe://` (the scheme is lowercase, exactly).
    #[error("a SPIFFE ID starts with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The trust domain has a character other than lowercase letters, digits, `.`, `-`
    /// and `_` (uppercase, a port, user info, percent-encoding included).
    #[error("a trust domain has only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainCharacter,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("a SPIFFE ID's path has no empty segments and no trailing '/'")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("a SPIFFE ID's path has no '.' or '..' segments")]
    DotSegment,
    /// The path has a character other than letters, digits, `.`, `-` and `_` (a query,
    /// a fragment and percent-encoding included).
    #[error("a SPIFFE ID's path has only letters, digits, '.', '-', '_' and '/'")]
    PathCharacter,
}

/// A trust domain name: lowercase letters, digits, `.`, `-` and `_`, at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The name, as in `spiffe://<name>/…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    /// A bare name (`prod.example`). A whole SPIFFE ID is refused: name the domain.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A syntactically valid SPIFFE ID.
///
/// ```
/// use portcullis_mtls_identity::SpiffeId;
///
/// let id: SpiffeId = "spiffe://prod.example/ns/payments/sa/api".parse()?;
/// assert_eq!(id.trust_domain(), "prod.example");
/// assert_eq!(id.path(), "/ns/payments/sa/api");
/// assert!("spiffe://Prod.example/api".parse::<SpiffeId>().is_err());
/// # Ok::<(), portcullis_mtls_identity::SpiffeIdError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    /// Where the path starts (the id's length when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain's name.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let path_start = check_id(id)?;
        Ok(Self {
            id: id.to_owned(),
            path_start,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Checks `id` and returns where its path starts.
fn check_id(id: &str) -> Result<usize, SpiffeIdError> {
    if id.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(SpiffeIdError::TooLong);
    }
    let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
    let domain_len = rest.find('/').unwrap_or(rest.len());
    check_trust_domain(&rest[..domain_len])?;
    let path = &rest[domain_len..];
    if !path.is_empty() {
        // Starts with '/': split after it, so every segment is checked, the last one too.
        for segment in path[1..].split('/') {
            check_segment(segment)?;
        }
    }
    Ok(SCHEME.len() + domain_len)
}

/// The trust domain of `id`, a SPIFFE ID checked in full.
pub(crate) fn trust_domain_of(id: &str) -> Result<&str, SpiffeIdError> {
    let path_start = check_id(id)?;
    Ok(&id[SCHEME.len()..path_start])
}

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if !name.bytes().all(allowed) {
        return Err(SpiffeIdError::TrustDomainCharacter);
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ => {
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
            if segment.bytes().all(allowed) {
                Ok(())
            } else {
                Err(SpiffeIdError::PathCharacter)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for (id, domain, path) in [
            ("spiffe://prod.example", "prod.example", ""),
            ("spiffe://prod.example/api", "prod.example", "/api"),
            (
                "spiffe://a_b-c.9/ns/x/sa/Y-1_.z",
                "a_b-c.9",
                "/ns/x/sa/Y-1_.z",
            ),
            ("spiffe://td/...", "td", "/..."),
        ] {
            let parsed: SpiffeId = id.parse().unwrap();
            assert_eq!(
                (parsed.trust_domain(), parsed.path()),
                (domain, path),
                "{id}"
            );
            assert_eq!(parsed.as_str(), id);
        }
        let longest = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN));
        assert!(longest.parse::<SpiffeId>().is_ok());
        let long_path = format!("spiffe://td/{}", "p".repeat(MAX_ID_LEN - 12));
        assert_eq!(long_path.len(), MAX_ID_LEN);
        assert!(long_path.parse::<SpiffeId>().is_ok());
    }

    #[test]
    fn every_class_of_invalid_id_has_its_reason() {
        use SpiffeIdError::*;
        let too_long_domain = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let too_long = format!("spiffe://td/{}", "p".repeat(MAX_ID_LEN - 11));
        for (id, reason) in [
            ("", Empty),
            (too_long.as_str(), TooLong),
            ("SPIFFE://prod.example/api", WrongScheme),
            ("Spiffe://prod.example/api", WrongScheme),
            ("https://prod.example/api", WrongScheme),
            ("spiffe:/prod.example/api", WrongScheme),
            (" spiffe://prod.example/api", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///api", MissingTrustDomain),
            (too_long_domain.as_str(), TrustDomainTooLong),
            ("spiffe://Prod.example/api", TrustDomainCharacter),
            ("spiffe://prod.example:443/api", TrustDomainCharacter),
            ("spiffe://user@prod.example/api", TrustDomainCharacter),
            ("spiffe://prod%2eexample/api", TrustDomainCharacter),
            ("spiffe://prod.example?x/api", TrustDomainCharacter),
            ("spiffe://prod.example#f", TrustDomainCharacter),
            ("spiffe://prod\u{0435}xample/api", TrustDomainCharacter),
            ("spiffe://prod.example /api", TrustDomainCharacter),
            ("spiffe://prod.example/", EmptySegment),
            ("spiffe://prod.example//api", EmptySegment),
            ("spiffe://prod.example/api/", EmptySegment),
            ("spiffe://prod.example/./api", DotSegment),
            ("spiffe://prod.example/api/..", DotSegment),
            ("spiffe://prod.example/a%2Fb", PathCharacter),
            ("spiffe://prod.example/api?x=1", PathCharacter),
            ("spiffe://prod.example/api#x", PathCharacter),
            ("spiffe://prod.example/a b", PathCharacter),
            ("spiffe://prod.example/a\nb", PathCharacter),
            ("spiffe://prod.example/\u{00e9}", PathCharacter),
            ("spiffe://prod.example/a\\b", PathCharacter),
        ] {
            assert_eq!(id.parse::<SpiffeId>(), Err(reason), "{id:?}");
        }
    }

    #[test]
    fn trust_domain_names() {
        assert_eq!(
            "prod.example".parse::<TrustDomain>().unwrap().as_str(),
            "prod.example"
        );
        for (name, reason) in [
            ("", SpiffeIdError::MissingTrustDomain),
            ("spiffe://prod.example", SpiffeIdError::TrustDomainCharacter),
            ("Prod.example", SpiffeIdError::TrustDomainCharacter),
            ("prod.example/api", SpiffeIdError::TrustDomainCharacter),
        ] {
            assert_eq!(name.parse::<TrustDomain>(), Err(reason), "{name:?}");
        }
    }
}
