//! From a token string to a verified principal: size cap, parse, issuer, key, signature,
//! claims; and the cache of tokens already verified.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER as AWS_LC;
use portcullis_core::cache::BoundedCache;
use portcullis_core::{AuthMethod, Credential, Principal};

use crate::claims::{clean, ClaimsInner, JwtClaims, TypedClaims};
use crate::issuer::CompiledIssuer;
use crate::keyset::Selection;
use crate::refusal::JwtRefusal;
use crate::token::{self, Malformed};

/// A token that passed every check that depends only on the token and the keys.
pub(crate) struct Verified {
    pub(crate) issuer: usize,
    pub(crate) principal: Principal,
    pub(crate) claims: JwtClaims,
    /// `(exp + leeway)` in milliseconds: the token is refused from this instant on.
    pub(crate) valid_until_ms: u64,
    pub(crate) binding: Option<[u8; 32]>,
    pub(crate) typed: Option<Arc<dyn Any + Send + Sync>>,
    /// The credential the token was issued to, when its issuer checks credentials and
    /// the token names one.
    pub(crate) credential: Option<Arc<Credential>>,
}

pub(crate) enum Outcome {
    Valid(Arc<Verified>),
    Refused(JwtRefusal),
    /// The issuer's keys are being (or may be) refreshed: wait, then validate again.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    NeedKeys {
        wait: tokio::sync::watch::Receiver<u64>,
        timeout: Duration,
    },
}

impl From<JwtRefusal> for Outcome {
    fn from(refusal: JwtRefusal) -> Self {
        Outcome::Refused(refusal)
    }
}

impl From<Malformed> for Outcome {
    fn from(malformed: Malformed) -> Self {
        Outcome::Refused(JwtRefusal::Malformed(malformed))
    }
}

pub(crate) struct Validator {
    pub(crate) issuers: Vec<CompiledIssuer>,
    pub(crate) max_token_size: usize,
    pub(crate) cache: Option<TokenCache>,
    pub(crate) typed: Option<TypedClaims>,
    pub(crate) generation: Arc<AtomicU64>,
}

/// A copy with the same issuers and settings and an empty token cache of the same size.
impl Clone for Validator {
    fn clone(&self) -> Self {
        Self {
            issuers: self.issuers.clone(),
            max_token_size: self.max_token_size,
            cache: self
                .cache
                .as_ref()
                .map(|cache| TokenCache::new(cache.capacity)),
            typed: self.typed.clone(),
            generation: self.generation.clone(),
        }
    }
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuers", &self.issuers)
            .field("max_token_size", &self.max_token_size)
            .field("cache", &self.cache.as_ref().map(|c| c.capacity))
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// Validates `token` at `now_ms` (milliseconds since the epoch). `may_refresh`: an
    /// unknown `kid` may ask for a key refresh (false on the second pass after one).
    pub(crate) fn validate(&self, token: &str, now_ms: u64, may_refresh: bool) -> Outcome {
        // Checked before anything else touches the token.
        if token.len() > self.max_token_size {
            return Malformed::TooLarge.into();
        }
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(cache) = &self.cache {
            if let Some(verified) = cache.get(token, generation, now_ms) {
                if self.issuers[verified.issuer].ring.keys_too_old() {
                    return JwtRefusal::KeysUnavailable.into();
                }
                return Outcome::Valid(verified);
            }
        }
        let outcome = self.verify(token, now_ms, may_refresh);
        if let (Outcome::Valid(verified), Some(cache)) = (&outcome, &self.cache) {
            cache.insert(token, generation, verified.clone());
        }
        outcome
    }

    fn verify(&self, token: &str, now_ms: u64, may_refresh: bool) -> Outcome {
        let parts = match token::split(token) {
            Ok(parts) => parts,
            Err(malformed) => return malformed.into(),
        };
        let header_bytes = match token::decode_part(parts.header) {
            Ok(bytes) => bytes,
            Err(malformed) => return malformed.into(),
        };
        let header = match token::parse_header(&header_bytes) {
            Ok(header) => header,
            Err(malformed) => return malformed.into(),
        };
        if header.crit.is_some() {
            return JwtRefusal::CriticalHeader.into();
        }
        let payload = match token::decode_part(parts.payload) {
            Ok(bytes) => bytes,
            Err(malformed) => return malformed.into(),
        };
        let claims = match token::parse_claims(&payload) {
            Ok(claims) => claims,
            Err(malformed) => return malformed.into(),
        };
        // The issuer is read before the signature is checked, only to choose whose keys
        // check it; nothing else from the claims is trusted until then.
        let Some((index, issuer)) = claims.iss.as_deref().and_then(|iss| {
            self.issuers
                .iter()
                .enumerate()
                .find(|(_, issuer)| &*issuer.name == iss)
        }) else {
            return JwtRefusal::InvalidIssuer.into();
        };
        if !issuer.accepts_type(header.typ.as_deref()) {
            return JwtRefusal::WrongType.into();
        }
        if issuer.ring.keys_too_old() {
            return JwtRefusal::KeysUnavailable.into();
        }
        let signature = match token::decode_part(parts.signature) {
            Ok(bytes) => bytes,
            Err(malformed) => return malformed.into(),
        };
        let keys = issuer.ring.keys();
        match keys.select(header.kid.as_deref(), &header.alg) {
            Selection::Keys(candidates) => {
                let verified = candidates.iter().any(|key| {
                    match (AWS_LC.verifier_factory)(&key.algorithm(), key.decoding_key()) {
                        Ok(verifier) => verifier
                            .verify(parts.signing_input.as_bytes(), &signature)
                            .is_ok(),
                        Err(error) => {
                            tracing::warn!(%error, kid = ?key.kid(), "jwt: a configured key cannot verify");
                            false
                        }
                    }
                });
                if !verified {
                    return JwtRefusal::InvalidSignature.into();
                }
            }
            Selection::UnknownKid => return self.missing_key(issuer, may_refresh, true),
            Selection::AlgorithmNotAccepted => {
                // With no keys at all (a key server not answered yet) a refresh may help;
                // otherwise the algorithm is simply not one the issuer uses.
                if keys.is_empty() {
                    return self.missing_key(issuer, may_refresh, false);
                }
                return JwtRefusal::AlgorithmNotAccepted.into();
            }
        }
        drop(keys);
        self.check_claims(index, issuer, claims, &payload, now_ms)
    }

    /// No key fits: ask for a refresh when the issuer's keys are fetched, else refuse.
    /// `unknown_kid`: whether the answer without a refresh is "unknown key" (true) or
    /// "algorithm not accepted" (false).
    fn missing_key(
        &self,
        issuer: &CompiledIssuer,
        may_refresh: bool,
        unknown_kid: bool,
    ) -> Outcome {
        #[cfg(feature = "remote")]
        if let Some(remote) = &issuer.ring.remote {
            if may_refresh {
                if let Some(wait) = remote.request_refresh() {
                    return Outcome::NeedKeys {
                        wait,
                        timeout: remote.wait,
                    };
                }
            }
            if !remote.is_loaded() && issuer.ring.keys().is_empty() {
                return JwtRefusal::KeysUnavailable.into();
            }
        }
        let _ = (issuer, may_refresh);
        if unknown_kid {
            JwtRefusal::UnknownKey.into()
        } else {
            JwtRefusal::AlgorithmNotAccepted.into()
        }
    }

    fn check_claims(
        &self,
        index: usize,
        issuer: &CompiledIssuer,
        claims: token::RawClaims,
        payload: &[u8],
        now_ms: u64,
    ) -> Outcome {
        let leeway_ms = issuer.leeway_ms;
        let Some(exp) = claims.exp else {
            return JwtRefusal::MissingExpiry.into();
        };
        let valid_until_ms = seconds_to_ms(exp).saturating_add(leeway_ms);
        if now_ms >= valid_until_ms {
            return JwtRefusal::Expired.into();
        }
        for not_before in [claims.nbf, claims.iat].into_iter().flatten() {
            if now_ms.saturating_add(leeway_ms) < seconds_to_ms(not_before) {
                return JwtRefusal::NotYetValid.into();
            }
        }
        if !issuer.any_audience {
            match &claims.aud {
                Some(aud) if aud.contains_any(&issuer.audiences) => {}
                _ => return JwtRefusal::InvalidAudience.into(),
            }
        }
        let binding = match &claims.cnf {
            None => None,
            Some(cnf) => {
                // A confirmation method this layer cannot check must not be ignored.
                if !cnf.other.is_empty() {
                    return JwtRefusal::InvalidClaims.into();
                }
                let Some(thumbprint) = &cnf.x5t_s256 else {
                    return JwtRefusal::InvalidClaims.into();
                };
                match URL_SAFE_NO_PAD.decode(thumbprint) {
                    Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
                        Ok(digest) => Some(digest),
                        Err(_) => return JwtRefusal::InvalidClaims.into(),
                    },
                    Err(_) => return JwtRefusal::InvalidClaims.into(),
                }
            }
        };
        let Ok(subject) = subject(issuer, &claims) else {
            return JwtRefusal::InvalidClaims.into();
        };
        let typed = match &self.typed {
            Some(typed) => match (typed.parse)(payload) {
                Ok(parsed) => Some(parsed),
                Err(error) => {
                    tracing::debug!(%error, "jwt: the claims do not fit the host's claims type");
                    return JwtRefusal::InvalidClaims.into();
                }
            },
            None => None,
        };
        let Ok(principal) = principal(issuer, subject, &claims) else {
            return JwtRefusal::InvalidClaims.into();
        };
        // Only a credential the issuer's check answers for is kept, so that a request
        // never waits on a check that has nothing to say.
        let credential = match &issuer.credentials {
            None => None,
            Some(check) => match session_credential(subject, &claims) {
                Ok(credential) => credential.filter(|c| check.0.checks(c.method)),
                Err(refusal) => return refusal.into(),
            },
        };
        let subject: Arc<str> = subject.into();
        let claims = JwtClaims(Arc::new(ClaimsInner {
            issuer: issuer.name.clone(),
            subject,
            expires_at: exp,
            issued_at: claims.iat,
            token_id: claims.jti.as_deref().map(Arc::from),
            binding,
            other: claims.other,
        }));
        Outcome::Valid(Arc::new(Verified {
            issuer: index,
            principal,
            claims,
            valid_until_ms,
            binding,
            typed,
            credential,
        }))
    }
}

/// `cred` and `auth_method` of a token whose issuer checks credentials: both strings,
/// or `cred` absent (a token issued without a credential, never asked about).
fn session_credential(
    subject: &str,
    claims: &token::RawClaims,
) -> Result<Option<Arc<Credential>>, JwtRefusal> {
    let Some(id) = claims.other.get("cred") else {
        return Ok(None);
    };
    let id = id
        .as_str()
        .and_then(clean)
        .ok_or(JwtRefusal::InvalidClaims)?;
    let method = claims
        .other
        .get("auth_method")
        .and_then(|value| value.as_str())
        .ok_or(JwtRefusal::InvalidClaims)?;
    crate::issue::session_credential(subject, method, id).map(|c| Some(Arc::new(c)))
}

/// A claim is present with the wrong type or a character it may not hold: the token's
/// author and this layer would disagree about what it grants, so the token is refused.
struct BadClaim;

/// The principal's subject: the first configured subject claim present, which must be a
/// non-empty string without control characters.
fn subject<'c>(issuer: &CompiledIssuer, claims: &'c token::RawClaims) -> Result<&'c str, BadClaim> {
    for path in &issuer.subject {
        let value = match path.registered() {
            // Registered claims are parsed out of `other`; two may name a subject.
            Some("iss") => claims.iss.as_deref(),
            Some("jti") => claims.jti.as_deref(),
            _ => match path.lookup(&claims.other) {
                None => None,
                Some(value) => Some(value.as_str().ok_or(BadClaim)?),
            },
        };
        if let Some(subject) = value {
            return clean(subject).ok_or(BadClaim);
        }
    }
    Err(BadClaim)
}

/// The principal a verified token stands for. With several trusted issuers its id is
/// qualified by the issuer's alias (`alias#sub`), so equal subjects of two issuers are
/// two principals.
fn principal(
    issuer: &CompiledIssuer,
    subject: &str,
    claims: &token::RawClaims,
) -> Result<Principal, BadClaim> {
    let mut principal = match &issuer.alias {
        Some(alias) => Principal::builder(format!("{alias}#{subject}"), AuthMethod::Jwt),
        None => Principal::builder(subject, AuthMethod::Jwt),
    };
    if let Some(jti) = &claims.jti {
        principal = principal.credential_id(jti.as_str());
    }
    for path in &issuer.roles {
        principal = principal.roles(path.roles(&claims.other).map_err(|_| BadClaim)?);
    }
    for path in &issuer.scopes {
        principal = principal.scopes(path.scopes(&claims.other).map_err(|_| BadClaim)?);
    }
    for (path, attribute) in &issuer.attributes {
        if let Some(value) = path.text(&claims.other).map_err(|_| BadClaim)? {
            principal = principal.attribute(attribute.as_str(), value);
        }
    }
    if let Some(path) = &issuer.tier {
        if let Some(tier) = path.text(&claims.other).map_err(|_| BadClaim)? {
            principal = principal.rate_limit_tier(tier);
        }
    }
    Ok(principal.build())
}

fn seconds_to_ms(seconds: i64) -> u64 {
    u64::try_from(seconds).unwrap_or(0).saturating_mul(1000)
}

/// Tokens already verified: a token seen again skips parsing and the signature check.
/// An entry is used only while the token is within `exp` (plus leeway) and the keys have
/// not changed since it was verified.
///
/// Entries are found by a 64-bit hash of the token under a per-process random seed, and
/// a hit is confirmed by comparing the whole token, so a hash collision is a miss, never
/// one token passing as another. A cryptographic digest as the key would cost more than
/// the whole cached path: SHA-256 of a 450-byte token takes about 450 ns here.
///
/// The map is `quick_cache`'s: bounded, and when full it evicts by its S3-FIFO policy
/// (tokens seen once go first), so a full cache keeps caching the tokens in use.
pub(crate) struct TokenCache {
    entries: BoundedCache<u64, Arc<CacheEntry>, BuildIdentity>,
    hasher: foldhash::quality::RandomState,
    pub(crate) capacity: usize,
}

struct CacheEntry {
    token: Box<str>,
    generation: u64,
    verified: Arc<Verified>,
}

/// The keys are already seeded hashes: the map uses them as they are.
#[derive(Clone, Default)]
struct BuildIdentity;

impl std::hash::BuildHasher for BuildIdentity {
    type Hasher = Identity;
    fn build_hasher(&self) -> Identity {
        Identity(0)
    }
}

struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Equality without an early exit, so the time taken says nothing about how much of a
/// cached token a presented one shares. The differences of all 64-bit words are folded
/// with branch-free OR, and `subtle` decides on the result. `subtle`'s byte-slice compare
/// gives the same guarantee, but at one optimization barrier per byte it doubled the
/// whole cached path (3,769 to 7,279 instructions a request for a 450-byte token).
fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut difference = 0u64;
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_ne_bytes(y.try_into().unwrap_or_default());
        difference |= x ^ y;
    }
    for (x, y) in rest_a.iter().zip(rest_b) {
        difference |= u64::from(x ^ y);
    }
    difference.ct_eq(&0).into()
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: portcullis_core::cache::bounded(capacity, BuildIdentity),
            hasher: foldhash::quality::RandomState::default(),
            capacity,
        }
    }

    /// Hashes the token's last 64 bytes: the signature, which already differs between
    /// any two tokens. The whole token is compared on a hit.
    fn key(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        std::hash::BuildHasher::hash_one(&self.hasher, tail)
    }

    fn get(&self, token: &str, generation: u64, now_ms: u64) -> Option<Arc<Verified>> {
        let key = self.key(token);
        let entry = self.entries.get(&key)?;
        if !same_token(&entry.token, token) {
            return None;
        }
        if entry.generation != generation || now_ms >= entry.verified.valid_until_ms {
            // Expired, or verified under keys since replaced: never usable again.
            self.entries.remove(&key);
            return None;
        }
        Some(entry.verified.clone())
    }

    fn insert(&self, token: &str, generation: u64, verified: Arc<Verified>) {
        self.entries.insert(
            self.key(token),
            Arc::new(CacheEntry {
                token: token.into(),
                generation,
                verified,
            }),
        );
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::claims::ClaimsInner;
    use portcullis_core::AuthMethod;

    fn verified(valid_until_ms: u64) -> Arc<Verified> {
        Arc::new(Verified {
            issuer: 0,
            principal: Principal::builder("app", AuthMethod::Jwt).build(),
            claims: JwtClaims(Arc::new(ClaimsInner {
                issuer: "iss".into(),
                subject: "app".into(),
                expires_at: 0,
                issued_at: None,
                token_id: None,
                binding: None,
                other: serde_json::Map::new(),
            })),
            valid_until_ms,
            binding: None,
            typed: None,
            credential: None,
        })
    }

    fn token(n: usize) -> String {
        format!("header.claims.signature-{n:064}")
    }

    #[test]
    fn hits_need_the_same_token_generation_and_time() {
        let cache = TokenCache::new(100);
        cache.insert(&token(1), 7, verified(1_000));
        assert!(cache.get(&token(1), 7, 999).is_some());
        assert!(cache.get(&token(2), 7, 999).is_none());
        // Same signature tail, different token: a miss, not the cached verdict.
        let lookalike = format!("other.{}", token(1));
        assert!(cache.get(&lookalike, 7, 999).is_none());
        // Other keys, or past exp: a miss, and the entry is gone for good.
        assert!(cache.get(&token(1), 8, 999).is_none());
        assert_eq!(cache.len(), 0);
        cache.insert(&token(1), 7, verified(1_000));
        assert!(cache.get(&token(1), 7, 1_000).is_none());
        assert_eq!(cache.len(), 0);
    }

    /// A full cache evicts tokens seen once before tokens in use (S3-FIFO), and never
    /// grows past its capacity; the old map stopped caching anything new once full.
    #[test]
    fn a_full_cache_keeps_the_tokens_in_use_and_takes_new_ones() {
        let cache = TokenCache::new(64);
        cache.insert(&token(0), 1, verified(u64::MAX));
        for n in 1..5_000 {
            assert!(
                cache.get(&token(0), 1, 0).is_some(),
                "after {n} one-off tokens"
            );
            cache.insert(&token(n), 1, verified(u64::MAX));
            assert!(cache.len() <= 64);
        }
        // The newest tokens were cached, though the cache was full long before.
        assert!(cache.get(&token(4_999), 1, 0).is_some());
    }

    #[test]
    fn same_token_compares_every_byte() {
        let a = "a".repeat(37);
        for i in 0..37 {
            let mut b = a.clone().into_bytes();
            b[i] = b'b';
            assert!(
                !same_token(&a, std::str::from_utf8(&b).unwrap()),
                "byte {i}"
            );
        }
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &a[..36]));
        assert!(same_token("", ""));
    }
}
