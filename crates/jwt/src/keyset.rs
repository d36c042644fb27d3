//! An issuer's current keys, and JWKS documents read into them.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use serde_json::Value;

use crate::key::{algorithm_name, VerifyingKey};

/// Tokens without a `kid` are tried against at most this many keys of their algorithm,
/// so a large key set cannot turn one request into many signature checks.
const MAX_KIDLESS_CANDIDATES: usize = 4;

/// The keys one issuer signs with, as last loaded.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// Which keys may verify a token.
pub(crate) enum Selection<'a> {
    Keys(Vec<&'a VerifyingKey>),
    /// The `kid` names no key here.
    UnknownKid,
    /// No key here takes the token's `alg` (or the `kid`'s key takes another).
    AlgorithmNotAccepted,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<VerifyingKey>) -> Self {
        Self { keys }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter()
    }

    pub(crate) fn select(&self, kid: Option<&str>, alg: &str) -> Selection<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid() == Some(kid)) {
                Some(key) if algorithm_name(key.algorithm()) == alg => Selection::Keys(vec![key]),
                Some(_) => Selection::AlgorithmNotAccepted,
                None => Selection::UnknownKid,
            },
            None => {
                let keys: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|k| algorithm_name(k.algorithm()) == alg)
                    .take(MAX_KIDLESS_CANDIDATES)
                    .collect();
                if keys.is_empty() {
                    Selection::AlgorithmNotAccepted
                } else {
                    Selection::Keys(keys)
                }
            }
        }
    }
}

/// Why a JWKS could not be used. The last good set stays in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, std::io::Error),
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS document: {0}")]
    NotAJwks(String),
    /// No key in it can verify signatures here (each skipped key is logged with why).
    #[error("the JWKS has no usable signature key (see the warnings for each key skipped)")]
    NoUsableKeys,
    /// Fetching it failed: the address, and what went wrong.
    #[error("fetching {0} failed: {1}")]
    Fetch(String, String),
}

/// Reads a JWKS document. Keys the layer cannot use (encryption keys, unknown types,
/// weak keys) are skipped with a warning rather than failing the whole set, so one odd
/// key at an identity provider does not stop every other key from working. Symmetric
/// keys are taken only when `allow_symmetric` (a local file may hold them; a key server
/// on the network must not).
pub(crate) fn parse_jwks(bytes: &[u8], allow_symmetric: bool) -> Result<KeySet, JwksError> {
    let document: Value =
        serde_json::from_slice(bytes).map_err(|e| JwksError::NotAJwks(e.to_string()))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err(JwksError::NotAJwks("no \"keys\" array".into()));
    };
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(index, %error, "jwt: skipping a JWKS entry that is not a JWK");
                continue;
            }
        };
        if !allow_symmetric && matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            tracing::warn!(index, kid = ?jwk.common.key_id, "jwt: skipping a symmetric key served by a key server");
            continue;
        }
        match VerifyingKey::from_jwk(&jwk) {
            Ok(key) => keys.push(key),
            Err(error) => {
                tracing::warn!(index, kid = ?jwk.common.key_id, %error, "jwt: skipping a JWKS key");
            }
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(KeySet::new(keys))
}

pub(crate) fn read_jwks_file(path: &Path) -> Result<KeySet, JwksError> {
    let bytes = std::fs::read(path).map_err(|e| JwksError::Io(path.to_owned(), e))?;
    parse_jwks(&bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use jsonwebtoken::Algorithm;

    fn jwks(keys: &[Jwk]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let good = SigningKey::generate(Algorithm::ES256)
            .unwrap()
            .with_kid("good")
            .public_jwk();
        let mut document: Value = serde_json::from_slice(&jwks(&[good])).unwrap();
        let keys = document["keys"].as_array_mut().unwrap();
        keys.push(serde_json::json!({"kty":"RSA","kid":"tiny","n":"AQAB","e":"AQAB"}));
        keys.push(serde_json::json!({"kty":"EC","use":"enc","crv":"P-256","x":"x","y":"y"}));
        keys.push(serde_json::json!({"kty":"oct","kid":"secret","alg":"HS256","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}));
        keys.push(serde_json::json!("not even an object"));
        let bytes = serde_json::to_vec(&document).unwrap();
        let set = parse_jwks(&bytes, false).unwrap();
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.select(Some("good"), "ES256"),
            Selection::Keys(_)
        ));
        assert!(matches!(
            set.select(Some("secret"), "HS256"),
            Selection::UnknownKid
        ));
        assert!(matches!(
            set.select(Some("good"), "HS256"),
            Selection::AlgorithmNotAccepted
        ));
        let with_secret = parse_jwks(&bytes, true).unwrap();
        assert_eq!(with_secret.len(), 2);
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(matches!(
            parse_jwks(b"{}", true),
            Err(JwksError::NotAJwks(_))
        ));
        assert!(matches!(
            parse_jwks(b"not json", true),
            Err(JwksError::NotAJwks(_))
        ));
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#, true),
            Err(JwksError::NoUsableKeys)
        ));
    }

    #[test]
    fn kidless_tokens_try_only_keys_of_their_algorithm() {
        let set = KeySet::new(vec![
            SigningKey::generate(Algorithm::ES256)
                .unwrap()
                .verifying_key(),
            SigningKey::generate(Algorithm::EdDSA)
                .unwrap()
                .verifying_key(),
        ]);
        match set.select(None, "EdDSA") {
            Selection::Keys(keys) => assert_eq!(keys.len(), 1),
            _ => panic!("expected the EdDSA key"),
        }
        assert!(matches!(
            set.select(None, "none"),
            Selection::AlgorithmNotAccepted
        ));
        assert!(matches!(
            set.select(None, "HS256"),
            Selection::AlgorithmNotAccepted
        ));
    }
}
