//! Keys: the public keys (or HMAC secrets) tokens are verified with, and the private
//! keys tokens are signed with. Each key carries the one algorithm it may be used with.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER as AWS_LC;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations,
    PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};

/// The shortest HMAC secret the layer accepts: 256 bits, and never shorter than the
/// hash's output (RFC 7518 section 3.2).
pub const MIN_HMAC_SECRET_LEN: usize = 32;
/// The smallest RSA modulus the layer accepts, in bits (RFC 7518 section 3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// Why a key was refused at configuration time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The algorithm does not fit this kind of key (an RSA key for `HS256`, …).
    #[error("{algorithm} cannot be used with {key}")]
    WrongAlgorithm {
        /// The algorithm asked for.
        algorithm: String,
        /// The kind of key given.
        key: &'static str,
    },
    /// An HMAC secret shorter than the algorithm needs.
    #[error("the HMAC secret is {len} bytes; use at least {min} random bytes (`portcullis token secret` makes one)")]
    WeakHmacSecret {
        /// The secret's length in bytes.
        len: usize,
        /// The shortest length accepted for the algorithm.
        min: usize,
    },
    /// An RSA key under 2048 bits.
    #[error("the RSA key has {bits} bits; use at least {MIN_RSA_BITS}")]
    WeakRsaKey {
        /// The modulus size.
        bits: usize,
    },
    /// An RSA public exponent that is even, or below 65537 (e = 1 makes every signature
    /// trivially forgeable, e = 3 invites known attacks).
    #[error("the RSA key{} has a weak public exponent: use an odd exponent of at least 65537", named(.kid.as_deref()))]
    WeakRsaExponent {
        /// The key's id, when it has one.
        kid: Option<String>,
    },
    /// An EC public key whose point is not on its curve (invalid-curve attacks).
    #[error("the EC key{} is not a point on its curve", named(.kid.as_deref()))]
    InvalidEcPoint {
        /// The key's id, when it has one.
        kid: Option<String>,
    },
    /// The PEM or DER could not be read as a key of the kind asked for.
    #[error("the key cannot be read: {0}")]
    Unreadable(String),
    /// A JWK the layer cannot use, and why.
    #[error("the JWK cannot be used: {0}")]
    UnusableJwk(&'static str),
}

fn named(kid: Option<&str>) -> String {
    kid.map(|kid| format!(" {kid:?}")).unwrap_or_default()
}

impl KeyError {
    /// Names the key in errors that are about one key's material.
    fn for_kid(self, kid: Option<&str>) -> Self {
        match self {
            Self::WeakRsaExponent { kid: None } => Self::WeakRsaExponent {
                kid: kid.map(str::to_owned),
            },
            Self::InvalidEcPoint { kid: None } => Self::InvalidEcPoint {
                kid: kid.map(str::to_owned),
            },
            other => other,
        }
    }
}

/// A key that verifies token signatures: an HMAC secret or an RSA, EC or Ed25519 public
/// key, bound to one algorithm and, optionally, a key id (`kid`).
///
/// The algorithm comes from the key, never from the token: a token whose header names
/// another algorithm is refused before any signature check, which is what stops
/// `alg: none` and RS256-to-HS256 key confusion. Weak keys are refused here, at
/// configuration time: HMAC secrets under 32 bytes (48 for `HS384`, 64 for `HS512`) and
/// RSA keys under 2048 bits.
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use portcullis_jwt::VerifyingKey;
///
/// let key = VerifyingKey::hmac(Algorithm::HS256, &[7; 32])?.with_kid("2026-11");
/// assert_eq!(key.kid(), Some("2026-11"));
/// assert!(VerifyingKey::hmac(Algorithm::HS256, b"too short").is_err());
/// # Ok::<(), portcullis_jwt::KeyError>(())
/// ```
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<Arc<str>>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl VerifyingKey {
    /// An HMAC secret for `HS256`, `HS384` or `HS512`.
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        check_family(algorithm, AlgorithmFamily::Hmac, "an HMAC secret")?;
        check_hmac_len(algorithm, secret.len())?;
        Ok(Self::unchecked(algorithm, DecodingKey::from_secret(secret)))
    }

    /// An RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), for `RS*` or `PS*`.
    pub fn rsa_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        check_family(algorithm, AlgorithmFamily::Rsa, "an RSA key")?;
        let key = DecodingKey::from_rsa_pem(pem).map_err(unreadable)?;
        Self::checked(algorithm, key)
    }

    /// An EC public key in PEM: P-256 for `ES256`, P-384 for `ES384`.
    pub fn ec_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        check_family(algorithm, AlgorithmFamily::Ec, "an EC key")?;
        let key = DecodingKey::from_ec_pem(pem).map_err(unreadable)?;
        Self::checked(algorithm, key)
    }

    /// An Ed25519 public key in PEM, for `EdDSA`.
    pub fn ed_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(unreadable)?;
        Self::checked(Algorithm::EdDSA, key)
    }

    /// A key from a JWK (RFC 7517). Its algorithm is the JWK's `alg`; without one, RSA
    /// keys are `RS256`, EC keys follow their curve and OKP keys are `EdDSA`. Symmetric
    /// (`oct`) keys must name their algorithm. Keys marked for encryption (`use: enc`,
    /// or `key_ops` without `verify`) are refused. The `kid` is kept.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(KeyError::UnusableJwk("it is an encryption key (use: enc)"));
        }
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
                return Err(KeyError::UnusableJwk("its key_ops do not include verify"));
            }
        }
        let algorithm = match jwk.common.key_algorithm {
            Some(alg) => key_algorithm(alg)?,
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return Err(KeyError::UnusableJwk("its curve is not supported")),
                },
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::OctetKey(_) => {
                    return Err(KeyError::UnusableJwk(
                        "a symmetric key must name its algorithm (alg)",
                    ))
                }
                _ => return Err(KeyError::UnusableJwk("its key type is not supported")),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(unreadable)?;
        let key = Self::checked(algorithm, key)
            .map_err(|error| error.for_kid(jwk.common.key_id.as_deref()))?;
        Ok(match &jwk.common.key_id {
            Some(kid) => key.with_kid(kid.as_str()),
            None => key,
        })
    }

    /// Names the key, so tokens select it with their `kid` header.
    pub fn with_kid(mut self, kid: impl Into<Arc<str>>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    fn unchecked(algorithm: Algorithm, key: DecodingKey) -> Self {
        Self {
            kid: None,
            algorithm,
            key,
        }
    }

    fn checked(algorithm: Algorithm, key: DecodingKey) -> Result<Self, KeyError> {
        if key.family() != algorithm.family() {
            return Err(KeyError::WrongAlgorithm {
                algorithm: format!("{algorithm:?}"),
                key: family_name(key.family()),
            });
        }
        match key.family() {
            AlgorithmFamily::Hmac => {
                let len = key.try_get_as_bytes().map_err(unreadable)?.len();
                check_hmac_len(algorithm, len)?;
            }
            AlgorithmFamily::Rsa => {
                let (bits, exponent_ok) = match key.kind() {
                    DecodingKeyKind::RsaModulusExponent { n, e } => {
                        (modulus_bits(n), strong_exponent(e))
                    }
                    DecodingKeyKind::SecretOrDer(der) => {
                        let (n, e) = (AWS_LC.key_utils.rsa_pub_components_from_public_key)(der)
                            .map_err(unreadable)?;
                        (modulus_bits(&n), strong_exponent(&e))
                    }
                };
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::WeakRsaKey { bits });
                }
                if !exponent_ok {
                    return Err(KeyError::WeakRsaExponent { kid: None });
                }
            }
            AlgorithmFamily::Ec => {
                // An uncompressed point: 0x04, then x and y of the curve's size.
                let point = key.try_get_as_bytes().map_err(unreadable)?;
                let (expected, curve) = match algorithm {
                    Algorithm::ES256 => (65, &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED),
                    _ => (97, &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED),
                };
                if point.len() != expected || point.first() != Some(&4) {
                    return Err(KeyError::WrongAlgorithm {
                        algorithm: format!("{algorithm:?}"),
                        key: "an EC key of another curve",
                    });
                }
                // Parsing checks that the point lies on the curve.
                if aws_lc_rs::signature::ParsedPublicKey::new(curve, point).is_err() {
                    return Err(KeyError::InvalidEcPoint { kid: None });
                }
            }
            AlgorithmFamily::Ed => {
                let point = key.try_get_as_bytes().map_err(unreadable)?;
                if point.len() != 32 {
                    return Err(KeyError::Unreadable("not an Ed25519 public key".into()));
                }
            }
        }
        Ok(Self::unchecked(algorithm, key))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A key that signs tokens: an HMAC secret or an RSA, EC or Ed25519 private key, bound to
/// one algorithm and optionally a `kid`. The same strength rules as [`VerifyingKey`].
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use portcullis_jwt::SigningKey;
///
/// let key = SigningKey::generate(Algorithm::ES256)?.with_kid("issuer-1");
/// let public = key.public_jwk();
/// assert_eq!(public.common.key_id.as_deref(), Some("issuer-1"));
/// assert!(format!("{key:?}").contains("ES256"));
/// # Ok::<(), portcullis_jwt::KeyError>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    kid: Option<Arc<str>>,
    algorithm: Algorithm,
    key: EncodingKey,
    public: VerifyingKey,
}

impl SigningKey {
    /// An HMAC secret for `HS256`, `HS384` or `HS512`.
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        let public = VerifyingKey::hmac(algorithm, secret)?;
        Ok(Self::new(
            algorithm,
            EncodingKey::from_secret(secret),
            public,
        ))
    }

    /// An RSA private key in PEM (PKCS#1 or PKCS#8), for `RS*` or `PS*`.
    pub fn rsa_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        check_family(algorithm, AlgorithmFamily::Rsa, "an RSA key")?;
        let key = EncodingKey::from_rsa_pem(pem).map_err(unreadable)?;
        let (n, e) = (AWS_LC.key_utils.rsa_pub_components_from_private_key)(key.as_bytes())
            .map_err(unreadable)?;
        let public =
            VerifyingKey::checked(algorithm, DecodingKey::from_rsa_raw_components(&n, &e))?;
        Ok(Self::new(algorithm, key, public))
    }

    /// An EC private key in PEM (PKCS#8): P-256 for `ES256`, P-384 for `ES384`.
    pub fn ec_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        check_family(algorithm, AlgorithmFamily::Ec, "an EC key")?;
        Self::ec(
            algorithm,
            EncodingKey::from_ec_pem(pem).map_err(unreadable)?,
        )
    }

    /// An Ed25519 private key in PEM (PKCS#8), for `EdDSA`.
    pub fn ed_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Self::ed(EncodingKey::from_ed_pem(pem).map_err(unreadable)?)
    }

    /// A new random key: 64 random bytes for `HS*`, a fresh key pair for `ES256`,
    /// `ES384` and `EdDSA`, a 2048-bit RSA key for `RS*` and `PS*` (slow: most of a
    /// second).
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
            ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let failed = |_| KeyError::Unreadable("the system random source failed".into());
        match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let mut secret = [0u8; 64];
                getrandom::fill(&mut secret)
                    .map_err(|_| KeyError::Unreadable("the system random source failed".into()))?;
                Self::hmac(algorithm, &secret)
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if algorithm == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(curve, &rng).map_err(failed)?;
                Self::ec(algorithm, EncodingKey::from_ec_der(pkcs8.as_ref()))
            }
            Algorithm::EdDSA => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?;
                Self::ed(EncodingKey::from_ed_der(pkcs8.as_ref()))
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                use aws_lc_rs::encoding::AsDer;
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(failed)?;
                let pkcs8 = pair.as_der().map_err(failed)?;
                Self::rsa_pem(algorithm, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            }
            other => Err(KeyError::WrongAlgorithm {
                algorithm: format!("{other:?}"),
                key: "a generated key",
            }),
        }
    }

    /// Names the key: tokens carry it as `kid`, and so does [`SigningKey::public_jwk`].
    pub fn with_kid(mut self, kid: impl Into<Arc<str>>) -> Self {
        let kid = kid.into();
        self.public = self.public.with_kid(kid.clone());
        self.kid = Some(kid);
        self
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key that verifies this key's signatures (for HMAC, the same secret).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public.clone()
    }

    /// The public key as a JWK, with `kid`, `alg` and `use: sig`, to publish in a JWKS.
    /// An HMAC key has no public half: its JWK holds the secret, so never publish it.
    pub fn public_jwk(&self) -> Jwk {
        let algorithm =
            match Jwk::from_decoding_key(self.public.decoding_key(), Some(self.algorithm)) {
                Ok(jwk) => jwk.algorithm,
                // Every public key here was built from components the provider produced.
                Err(_) => AlgorithmParameters::Other(Default::default()),
            };
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(self.algorithm.into()),
                key_id: self.kid.as_deref().map(str::to_owned),
                ..Default::default()
            },
            algorithm,
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<String, KeyError> {
        let signer = (AWS_LC.signer_factory)(&self.algorithm, &self.key).map_err(unreadable)?;
        let signature = signer
            .try_sign(message)
            .map_err(|e| KeyError::Unreadable(format!("signing failed: {e}")))?;
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }

    fn ec(algorithm: Algorithm, key: EncodingKey) -> Result<Self, KeyError> {
        let (_, x, y) =
            (AWS_LC.key_utils.ec_pub_components_from_private_key)(key.as_bytes(), algorithm)
                .map_err(|_| KeyError::WrongAlgorithm {
                    algorithm: format!("{algorithm:?}"),
                    key: "this EC key (wrong curve, or not PKCS#8)",
                })?;
        let public =
            DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y))
                .map_err(unreadable)?;
        let public = VerifyingKey::checked(algorithm, public)?;
        Ok(Self::new(algorithm, key, public))
    }

    fn ed(key: EncodingKey) -> Result<Self, KeyError> {
        let x = (AWS_LC.key_utils.ed_pub_components_from_private_key)(
            key.as_bytes(),
            &EllipticCurve::Ed25519,
        )
        .map_err(unreadable)?;
        let public =
            DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(x)).map_err(unreadable)?;
        let public = VerifyingKey::checked(Algorithm::EdDSA, public)?;
        Ok(Self::new(Algorithm::EdDSA, key, public))
    }

    fn new(algorithm: Algorithm, key: EncodingKey, public: VerifyingKey) -> Self {
        Self {
            kid: None,
            algorithm,
            key,
            public,
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// DER in a PEM envelope, as `jsonwebtoken` reads keys (with the `pem` crate it uses).
fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// The name of an algorithm as tokens write it in `alg`.
pub(crate) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Result<Algorithm, KeyError> {
    Algorithm::try_from(alg).map_err(|_| {
        KeyError::UnusableJwk("its alg is not a signature algorithm this layer supports")
    })
}

fn check_family(
    algorithm: Algorithm,
    family: AlgorithmFamily,
    key: &'static str,
) -> Result<(), KeyError> {
    if algorithm.family() == family {
        Ok(())
    } else {
        Err(KeyError::WrongAlgorithm {
            algorithm: format!("{algorithm:?}"),
            key,
        })
    }
}

fn check_hmac_len(algorithm: Algorithm, len: usize) -> Result<(), KeyError> {
    let min = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => MIN_HMAC_SECRET_LEN,
    };
    if len < min {
        return Err(KeyError::WeakHmacSecret { len, min });
    }
    Ok(())
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "an HMAC secret",
        AlgorithmFamily::Rsa => "an RSA key",
        AlgorithmFamily::Ec => "an EC key",
        AlgorithmFamily::Ed => "an Ed25519 key",
    }
}

/// An RSA public exponent (big-endian) that is odd and at least 65537.
fn strong_exponent(e: &[u8]) -> bool {
    let e = match e.iter().position(|b| *b != 0) {
        Some(start) => &e[start..],
        None => return false,
    };
    let odd = e.last().is_some_and(|last| last & 1 == 1);
    let large =
        e.len() > 3 || (e.len() == 3 && u32::from_be_bytes([0, e[0], e[1], e[2]]) >= 65_537);
    odd && large
}

fn modulus_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(start) => &n[start..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

fn unreadable(error: jsonwebtoken::errors::Error) -> KeyError {
    KeyError::Unreadable(error.to_string())
}

/// Reads an HMAC secret file as `portcullis token secret` writes it: base64url (or
/// standard base64) text. The error names the file, never its contents.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| STANDARD.decode(text))
        .map_err(|_| format!("{} does not hold a base64 secret", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_secrets_are_checked_against_their_algorithm() {
        assert!(VerifyingKey::hmac(Algorithm::HS256, &[1; 32]).is_ok());
        assert_eq!(
            VerifyingKey::hmac(Algorithm::HS256, &[1; 31]).unwrap_err(),
            KeyError::WeakHmacSecret { len: 31, min: 32 }
        );
        assert_eq!(
            VerifyingKey::hmac(Algorithm::HS512, &[1; 32]).unwrap_err(),
            KeyError::WeakHmacSecret { len: 32, min: 64 }
        );
        assert!(matches!(
            VerifyingKey::hmac(Algorithm::RS256, &[1; 64]),
            Err(KeyError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn generated_keys_verify_their_own_signatures() {
        for algorithm in [
            Algorithm::HS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let key = SigningKey::generate(algorithm).unwrap();
            let signature = key.sign(b"header.payload").unwrap();
            let public = key.verifying_key();
            assert_eq!(public.algorithm(), algorithm);
            assert!(jsonwebtoken::crypto::verify(
                &signature,
                b"header.payload",
                public.decoding_key(),
                algorithm
            )
            .unwrap());
        }
        let rsa = SigningKey::generate(Algorithm::PS256).unwrap();
        let jwk = rsa.public_jwk();
        assert_eq!(
            VerifyingKey::from_jwk(&jwk).unwrap().algorithm(),
            Algorithm::PS256
        );
    }

    #[test]
    fn public_jwks_round_trip() {
        for algorithm in [Algorithm::ES256, Algorithm::EdDSA] {
            let key = SigningKey::generate(algorithm).unwrap().with_kid("k1");
            let jwk = key.public_jwk();
            let back = VerifyingKey::from_jwk(&jwk).unwrap();
            assert_eq!(back.kid(), Some("k1"));
            assert_eq!(back.algorithm(), algorithm);
        }
    }

    #[test]
    fn weak_rsa_keys_are_refused() {
        let n = URL_SAFE_NO_PAD.encode([0xff; 128]);
        let jwk: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB"})).unwrap();
        assert_eq!(
            VerifyingKey::from_jwk(&jwk).unwrap_err(),
            KeyError::WeakRsaKey { bits: 1024 }
        );
    }

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x01, 0]), 9);
        assert_eq!(modulus_bits(&[0, 0]), 0);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::hmac(Algorithm::HS256, &[0x41; 32]).unwrap();
        let text = format!("{key:?} {:?}", key.verifying_key());
        assert!(!text.contains("65") && !text.contains("AAAA") && !text.contains("QUFB"));
    }
}
