//! A compact JWS read without trusting it: its three parts, its header and its claims.
//! Nothing here checks a signature; the validator does that before any claim is used.
//!
//! Both JSON documents are read strictly: a member name given twice, at any depth, makes
//! the token malformed (with "last one wins", a signed token could carry two identities
//! and two readers could disagree about which one it names), and every member this layer
//! reads must have its registered type.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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
    /// The header is not a JSON object with a string `alg`, a member has the wrong type,
    /// or a member name is repeated.
    Header,
    /// The header carries a parameter that only an encrypted token (JWE) has: a token of
    /// one kind is never read as another (RFC 8725 3.11).
    EncryptionHeader,
    /// The claims are not a JSON object, a registered claim has the wrong type, or a
    /// member name is repeated at some depth.
    Claims,
    /// The `Authorization` value is not exactly the scheme, one space and one token, or
    /// the request carried more than one.
    Authorization,
}

impl Malformed {
    /// A short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "token larger than the size cap",
            Self::NotCompact => "not a compact JWS of three parts",
            Self::Base64 => "a part is not base64url",
            Self::Header => {
                "unreadable JOSE header: not an object, a member of the wrong type, or a repeated member"
            }
            Self::EncryptionHeader => "a JWE header parameter in a signed token",
            Self::Claims => {
                "unreadable claims: not an object, a registered claim of the wrong type, or a repeated member"
            }
            Self::Authorization => {
                "the authorization header is not exactly one scheme, one space and one token"
            }
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

/// A JSON value in which no object, at any depth, names a member twice. Names are
/// compared after JSON unescaping, so `"sub"` and `"s\u0075b"` are the same name.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if members.insert(name, value).is_some() {
                return Err(de::Error::custom("a member name is repeated"));
            }
        }
        Ok(Value::Object(members))
    }
}

/// Parses a JSON object, refusing repeated member names at every depth.
pub(crate) fn strict_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(members))) => Some(members),
        _ => None,
    }
}

/// JOSE header parameters that belong to encrypted tokens (RFC 7516 4.1, RFC 7518 4.6,
/// 4.7, 4.8). A signed token that carries one is refused.
const ENCRYPTION_PARAMETERS: &[&str] =
    &["enc", "zip", "epk", "apu", "apv", "p2s", "p2c", "iv", "tag"];

/// The JOSE header fields the layer reads. Everything else (`jwk`, `jku`, `x5u`, `x5c`,
/// …) is ignored: keys come only from configuration, never from the token.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
    pub(crate) typ: Option<String>,
    /// RFC 7515 4.1.11: the critical extensions the token names, a non-empty list of
    /// names. A recipient must refuse a token naming extensions it does not understand;
    /// this layer understands none.
    pub(crate) crit: Option<Vec<String>>,
}

pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, Malformed> {
    let mut members = strict_object(bytes).ok_or(Malformed::Header)?;
    if ENCRYPTION_PARAMETERS
        .iter()
        .any(|name| members.contains_key(*name))
    {
        return Err(Malformed::EncryptionHeader);
    }
    let Some(Value::String(alg)) = members.remove("alg") else {
        return Err(Malformed::Header);
    };
    let kid = optional_string(members.remove("kid")).ok_or(Malformed::Header)?;
    let typ = optional_string(members.remove("typ")).ok_or(Malformed::Header)?;
    let crit = match members.remove("crit") {
        None => None,
        // `null`, `[]`, a string, or a list with anything but names is not "absent".
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(name) = item else {
                    return Err(Malformed::Header);
                };
                names.push(name);
            }
            Some(names)
        }
        Some(_) => return Err(Malformed::Header),
    };
    Ok(Header {
        alg,
        kid,
        typ,
        crit,
    })
}

/// `Some(None)` when absent, `Some(Some(s))` for a string, `None` for any other type
/// (`null` included).
fn optional_string(value: Option<Value>) -> Option<Option<String>> {
    match value {
        None => Some(None),
        Some(Value::String(text)) => Some(Some(text)),
        Some(_) => None,
    }
}

/// The claims the layer validates, with everything else kept for claim mapping and for
/// handlers. A registered claim of the wrong type (an `exp` string) makes the token
/// malformed rather than the claim absent.
#[derive(Debug)]
pub(crate) struct RawClaims {
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
    pub(crate) iat: Option<i64>,
    pub(crate) iss: Option<String>,
    pub(crate) aud: Option<Audience>,
    pub(crate) jti: Option<String>,
    pub(crate) cnf: Option<Confirmation>,
    pub(crate) other: Map<String, Value>,
}

pub(crate) fn parse_claims(bytes: &[u8]) -> Result<RawClaims, Malformed> {
    let mut other = strict_object(bytes).ok_or(Malformed::Claims)?;
    let mut date = |name: &str| match other.remove(name) {
        None => Ok(None),
        Some(value) => numeric_date(&value).map(Some).ok_or(Malformed::Claims),
    };
    let exp = date("exp")?;
    let nbf = date("nbf")?;
    let iat = date("iat")?;
    let iss = optional_string(other.remove("iss")).ok_or(Malformed::Claims)?;
    let jti = optional_string(other.remove("jti")).ok_or(Malformed::Claims)?;
    let aud = match other.remove("aud") {
        None => None,
        Some(value) => Some(Audience::from_value(value).ok_or(Malformed::Claims)?),
    };
    let cnf = match other.remove("cnf") {
        None => None,
        Some(Value::Object(mut members)) => {
            let x5t_s256 = optional_string(members.remove("x5t#S256")).ok_or(Malformed::Claims)?;
            Some(Confirmation {
                x5t_s256,
                other: members,
            })
        }
        Some(_) => return Err(Malformed::Claims),
    };
    Ok(RawClaims {
        exp,
        nbf,
        iat,
        iss,
        aud,
        jti,
        cnf,
        other,
    })
}

/// `aud`: one string or an array of strings (RFC 7519 4.1.3).
#[derive(Debug)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::String(one) => Some(Self::One(one)),
            Value::Array(items) => {
                let mut many = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(aud) = item else {
                        return None;
                    };
                    many.push(aud);
                }
                Some(Self::Many(many))
            }
            _ => None,
        }
    }

    pub(crate) fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Audience::One(aud) => accepted.iter().any(|a| a == aud),
            Audience::Many(auds) => auds.iter().any(|aud| accepted.iter().any(|a| a == aud)),
        }
    }
}

/// `cnf` (RFC 7800). Only `x5t#S256` (RFC 8705) is acted on; a `cnf` with any other
/// confirmation method is refused, since the layer cannot check it.
#[derive(Debug)]
pub(crate) struct Confirmation {
    pub(crate) x5t_s256: Option<String>,
    pub(crate) other: Map<String, Value>,
}

/// A NumericDate: seconds since the epoch as a JSON number, integer or not (RFC 7519 2).
/// Strings, `null`, negative or out-of-range values are errors, not "absent".
fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(whole) = number.as_u64() {
        return i64::try_from(whole).ok();
    }
    if number.is_i64() {
        // A negative integer.
        return None;
    }
    let seconds = number.as_f64()?;
    if !seconds.is_finite() || seconds < 0.0 || seconds >= i64::MAX as f64 {
        return None;
    }
    Some(seconds.floor() as i64)
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
