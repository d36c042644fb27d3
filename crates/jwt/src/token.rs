//! A compact JWS read without trusting it: its three parts, its header and its claims.
//! Nothing here checks a signature; the validator does that before any claim is used.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Why a token could not even be read. The client sees `malformed_token`; the reason goes
/// to logs and audit notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// Longer than the layer's size cap; refused before any decoding.
    TooLarge,
    /// Not three dot-separated parts (a JWE, or not a JWT at all).
    NotCompact,
    /// A part is not unpadded base64url.
    Base64,
    /// The header is not a JSON object with a string `alg`.
    Header,
    /// The claims are not a JSON object, or a registered claim has the wrong type.
    Claims,
    /// The header carried a second `Authorization` value or no token after the scheme.
    Authorization,
}

impl Malformed {
    /// A short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "token larger than the size cap",
            Self::NotCompact => "not a compact JWS of three parts",
            Self::Base64 => "a part is not base64url",
            Self::Header => "unreadable JOSE header",
            Self::Claims => "unreadable claims, or a registered claim of the wrong type",
            Self::Authorization => "the authorization header is not one bearer token",
        }
    }
}

/// The three parts of a compact JWS, still encoded.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
}

pub(crate) fn split(token: &str) -> Result<Parts<'_>, Malformed> {
    let mut dots = token.match_indices('.').map(|(at, _)| at);
    let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(Malformed::NotCompact);
    };
    Ok(Parts {
        header: &token[..first],
        payload: &token[first + 1..second],
        signature: &token[second + 1..],
        signing_input: &token[..second],
    })
}

pub(crate) fn decode_part(part: &str) -> Result<Vec<u8>, Malformed> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Malformed::Base64)
}

/// The JOSE header fields the layer reads. Everything else (`jwk`, `jku`, `x5u`, `x5c`,
/// …) is ignored: keys come only from configuration, never from the token.
#[derive(Debug, Deserialize)]
pub(crate) struct Header<'a> {
    #[serde(borrow)]
    pub(crate) alg: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) typ: Option<Cow<'a, str>>,
    /// RFC 7515 4.1.11: a recipient must refuse a token naming critical extensions it
    /// does not understand. This layer understands none.
    #[serde(default)]
    pub(crate) crit: Option<IgnoredAny>,
}

pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header<'_>, Malformed> {
    serde_json::from_slice(bytes).map_err(|_| Malformed::Header)
}

/// The claims the layer validates, with everything else kept for claim mapping and for
/// handlers. A registered claim of the wrong type (an `exp` string) or given twice makes
/// the token malformed rather than the claim absent.
#[derive(Debug, Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub(crate) iat: Option<i64>,
    #[serde(default)]
    pub(crate) iss: Option<String>,
    #[serde(default)]
    pub(crate) aud: Option<Audience>,
    #[serde(default)]
    pub(crate) jti: Option<String>,
    #[serde(default)]
    pub(crate) cnf: Option<Confirmation>,
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

pub(crate) fn parse_claims(bytes: &[u8]) -> Result<RawClaims, Malformed> {
    serde_json::from_slice(bytes).map_err(|_| Malformed::Claims)
}

/// `aud`: one string or an array of strings (RFC 7519 4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Audience::One(aud) => accepted.iter().any(|a| a == aud),
            Audience::Many(auds) => auds.iter().any(|aud| accepted.iter().any(|a| a == aud)),
        }
    }
}

/// `cnf` (RFC 7800). Only `x5t#S256` (RFC 8705) is acted on; a `cnf` with any other
/// confirmation method is refused, since the layer cannot check it.
#[derive(Debug, Deserialize)]
pub(crate) struct Confirmation {
    #[serde(rename = "x5t#S256", default)]
    pub(crate) x5t_s256: Option<String>,
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

/// A NumericDate: seconds since the epoch as a JSON number, integer or not (RFC 7519 2).
/// Strings, negative or non-finite values are errors, not "absent".
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("NumericDate out of range"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            if v < 0 {
                return Err(E::custom("negative NumericDate"));
            }
            Ok(Some(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
                return Err(E::custom("NumericDate out of range"));
            }
            Ok(Some(v.floor() as i64))
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_exactly_three_parts() {
        let parts = split("a.b.c").unwrap();
        assert_eq!(
            (parts.header, parts.payload, parts.signature),
            ("a", "b", "c")
        );
        assert_eq!(parts.signing_input, "a.b");
        assert_eq!(split("a.b").unwrap_err(), Malformed::NotCompact);
        assert_eq!(split("a.b.c.d.e").unwrap_err(), Malformed::NotCompact);
        assert_eq!(split("").unwrap_err(), Malformed::NotCompact);
    }

    #[test]
    fn registered_claims_of_the_wrong_type_are_malformed() {
        assert!(parse_claims(br#"{"exp":"1900000000"}"#).is_err());
        assert!(parse_claims(br#"{"exp":-1}"#).is_err());
        assert!(parse_claims(br#"{"iss":7}"#).is_err());
        assert!(parse_claims(br#"{"aud":[1]}"#).is_err());
        assert!(parse_claims(br#"[]"#).is_err());
        let claims = parse_claims(br#"{"exp":1.9e9,"aud":["a","b"],"x":1}"#).unwrap();
        assert_eq!(claims.exp, Some(1_900_000_000));
        assert!(claims.aud.unwrap().contains_any(&["b".to_owned()]));
        assert_eq!(claims.other.get("x"), Some(&Value::from(1)));
    }

    #[test]
    fn a_registered_claim_given_twice_is_malformed() {
        assert!(parse_claims(br#"{"exp":1,"exp":2}"#).is_err());
        assert!(parse_claims(br#"{"iss":"a","iss":"b"}"#).is_err());
        assert!(parse_header(br#"{"alg":"HS256","alg":"none"}"#).is_err());
    }

    #[test]
    fn headers_need_a_string_alg() {
        assert!(parse_header(br#"{"typ":"JWT"}"#).is_err());
        assert!(parse_header(br#"{"alg":null}"#).is_err());
        let header =
            parse_header(br#"{"alg":"ES256","kid":"k","crit":["b64"],"jku":"https://evil"}"#)
                .unwrap();
        assert_eq!(header.alg, "ES256");
        assert_eq!(header.kid.as_deref(), Some("k"));
        assert!(header.crit.is_some());
    }
}
