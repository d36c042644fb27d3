//! The key format: a recognisable prefix, a public id, a random secret and a checksum.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Characters of the random part and of the checksum.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the random part: 32 base62 characters, about 190 bits from the OS.
pub const SECRET_LEN: usize = 32;

/// Length of the checksum: the CRC-32 of the rest, in 6 base62 characters.
pub const CHECKSUM_LEN: usize = 6;

/// Length of a generated id: 12 base62 characters.
pub const GENERATED_ID_LEN: usize = 12;

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 16;

/// Longest credential value read from a request, before any parsing.
pub const MAX_PRESENTED_LEN: usize = 256;

/// The prefix of every key a deployment issues, such as `pck` in
/// `pck_4fT9kQ2mZx1B_…`. Secret scanners search for it, and a key of another
/// deployment is refused without a store lookup.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(Box<str>);

impl KeyPrefix {
    /// A prefix: 1 to 16 lowercase ASCII letters and digits, starting with a letter.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let bytes = prefix.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_PREFIX_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(prefix.into()))
        } else {
            Err(InvalidPrefix)
        }
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    /// `pck`.
    fn default() -> Self {
        Self("pck".into())
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A prefix that is not 1 to 16 lowercase ASCII letters and digits starting with a letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a key prefix is 1 to 16 lowercase ASCII letters and digits, starting with a letter")]
pub struct InvalidPrefix;

/// Whether `id` is a valid key id: 1 to 64 ASCII letters, digits and `-`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The SHA-256 digest of a key, which is all a store keeps of it.
///
/// It covers the prefix, the id and the random part, so a secret cannot be moved to
/// another id. Compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the `sha256:<64 hex digits>` form used in key files.
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        let hex_part = text.strip_prefix("sha256:").ok_or(InvalidDigest)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| InvalidDigest)?;
        Ok(Self(bytes))
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison: how long it takes says nothing about where two digests
    /// differ.
    pub fn matches(&self, other: &KeyDigest) -> bool {
        // Four 64-bit words rather than 32 bytes: the same constant-time guarantee from
        // `subtle`, in an eighth of the operations.
        self.words().ct_eq(&other.words()).into()
    }

    fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_ne_bytes(bytes);
        }
        words
    }

    fn compute(canonical: &Canonical) -> Self {
        Self(Sha256::digest(canonical.as_bytes()).into())
    }
}

impl fmt::Display for KeyDigest {
    /// The `sha256:<hex>` form of key files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyDigest {
    /// Only the first bytes: enough to tell digests apart in a log, not enough to use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest(sha256:{}…)", hex::encode(&self.0[..4]))
    }
}

/// A digest that is not `sha256:` followed by 64 hexadecimal digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a key digest is \"sha256:\" followed by 64 hexadecimal digits")]
pub struct InvalidDigest;

/// A key as a client presented it, checked for form and checksum; borrowed from the
/// request, so parsing allocates nothing.
#[derive(Clone, Copy)]
pub struct PresentedKey<'a> {
    id: &'a str,
    digest: KeyDigest,
}

impl<'a> PresentedKey<'a> {
    /// Parses the compact form, `<prefix>_<id>_<random><checksum>`.
    pub fn parse(prefix: &KeyPrefix, text: &'a str) -> Result<Self, MalformedKey> {
        if text.len() > MAX_PRESENTED_LEN {
            return Err(MalformedKey::TooLong);
        }
        let rest = text
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(MalformedKey::WrongPrefix)?;
        let (id, tail) = rest.split_once('_').ok_or(MalformedKey::Shape)?;
        Self::from_parts(prefix, id, tail)
    }

    /// Parses the split form, `<prefix>_<random><checksum>/<id>`, as sent in
    /// `X-Auth-Token: <secret>/<id>`.
    pub fn parse_split(prefix: &KeyPrefix, text: &'a str) -> Result<Self, MalformedKey> {
        if text.len() > MAX_PRESENTED_LEN {
            return Err(MalformedKey::TooLong);
        }
        let (secret, id) = text.rsplit_once('/').ok_or(MalformedKey::Shape)?;
        let tail = secret
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(MalformedKey::WrongPrefix)?;
        Self::from_parts(prefix, id, tail)
    }

    fn from_parts(prefix: &KeyPrefix, id: &'a str, tail: &'a str) -> Result<Self, MalformedKey> {
        if !is_valid_id(id) {
            return Err(MalformedKey::BadId);
        }
        if tail.len() != SECRET_LEN + CHECKSUM_LEN {
            return Err(MalformedKey::Shape);
        }
        if !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MalformedKey::BadCharacter);
        }
        let (random, checksum) = tail.split_at(SECRET_LEN);
        let canonical = Canonical::new(prefix.as_str(), id, random);
        if checksum.as_bytes() != canonical.checksum() {
            return Err(MalformedKey::Checksum);
        }
        Ok(Self {
            id,
            digest: KeyDigest::compute(&canonical),
        })
    }

    /// The key's id: public, used to find the record.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The digest to compare with the stored one.
    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a presented key was refused before any lookup. All answer `malformed_api_key`;
/// the reason is for logs and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    /// Longer than [`MAX_PRESENTED_LEN`].
    #[error("too long")]
    TooLong,
    /// Does not start with this deployment's prefix.
    #[error("wrong prefix")]
    WrongPrefix,
    /// Not the `<prefix>_<id>_<secret>` shape, or the secret has the wrong length.
    #[error("wrong shape")]
    Shape,
    /// The id is not 1 to 64 letters, digits and `-`.
    #[error("invalid id")]
    BadId,
    /// The secret holds a character outside base62.
    #[error("invalid character")]
    BadCharacter,
    /// The checksum does not match: a typo, a truncated copy, or a made-up key.
    #[error("checksum mismatch")]
    Checksum,
    /// The header value is not visible ASCII.
    #[error("not visible ASCII")]
    NotText,
}

impl MalformedKey {
    /// A short description for logs and audit notes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too long",
            Self::WrongPrefix => "wrong prefix",
            Self::Shape => "wrong shape",
            Self::BadId => "invalid id",
            Self::BadCharacter => "invalid character",
            Self::Checksum => "checksum mismatch",
            Self::NotText => "not visible ASCII",
        }
    }
}

/// `<prefix>_<id>_<random>`, what the checksum and the digest cover, assembled on the
/// stack so that both hash one contiguous slice.
struct Canonical {
    bytes: [u8; MAX_PREFIX_LEN + MAX_ID_LEN + SECRET_LEN + 2],
    len: usize,
}

impl Canonical {
    fn new(prefix: &str, id: &str, random: &str) -> Self {
        let mut bytes = [0u8; MAX_PREFIX_LEN + MAX_ID_LEN + SECRET_LEN + 2];
        let mut len = 0;
        for part in [
            prefix.as_bytes(),
            b"_",
            id.as_bytes(),
            b"_",
            random.as_bytes(),
        ] {
            // Callers pass a valid prefix, id and random part, whose lengths fit.
            let end = (len + part.len()).min(bytes.len());
            bytes[len..end].copy_from_slice(&part[..end - len]);
            len = end;
        }
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn checksum(&self) -> [u8; CHECKSUM_LEN] {
        let mut value = crc32fast::hash(self.as_bytes());
        let mut out = [b'0'; CHECKSUM_LEN];
        for slot in out.iter_mut().rev() {
            *slot = BASE62[(value % 62) as usize];
            value /= 62;
        }
        out
    }
}

/// A newly generated key. The secret exists only here: show it to its owner once, store
/// the [`KeyDigest`], and drop this.
pub struct GeneratedKey {
    id: String,
    token: String,
    split: String,
    digest: KeyDigest,
}

impl GeneratedKey {
    /// A key with a random id.
    pub fn generate(prefix: &KeyPrefix) -> Result<Self, GenerateError> {
        let id = random_base62(GENERATED_ID_LEN).map_err(GenerateError::Random)?;
        Self::with_id(prefix, &id)
    }

    /// A key with a chosen id (1 to 64 letters, digits and `-`).
    pub fn with_id(prefix: &KeyPrefix, id: &str) -> Result<Self, GenerateError> {
        if !is_valid_id(id) {
            return Err(GenerateError::InvalidId);
        }
        let random = random_base62(SECRET_LEN).map_err(GenerateError::Random)?;
        let canonical = Canonical::new(prefix.as_str(), id, &random);
        let checksum = canonical.checksum();
        let checksum = std::str::from_utf8(&checksum).unwrap_or_default();
        Ok(Self {
            id: id.to_owned(),
            token: format!("{prefix}_{id}_{random}{checksum}"),
            split: format!("{prefix}_{random}{checksum}/{id}"),
            digest: KeyDigest::compute(&canonical),
        })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret key in its compact form, `<prefix>_<id>_<secret>`, for `X-API-KEY` or
    /// `Authorization`. Show it once.
    pub fn expose_secret(&self) -> &str {
        &self.token
    }

    /// The same key in the split form, `<prefix>_<secret>/<id>`, for
    /// `X-Auth-Token`-style headers.
    pub fn expose_split_secret(&self) -> &str {
        &self.split
    }

    /// What the store keeps.
    pub fn digest(&self) -> KeyDigest {
        self.digest
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("id", &self.id)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The chosen id is not 1 to 64 letters, digits and `-`.
    #[error("a key id is 1 to 64 ASCII letters, digits and '-'")]
    InvalidId,
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(getrandom::Error),
}

/// `len` uniformly random base62 characters from the OS, by rejection sampling (bytes
/// of 248 and above are dropped so that every character is equally likely).
fn random_base62(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buffer)?;
        for &byte in &buffer {
            if byte < 248 && out.len() < len {
                out.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix() -> KeyPrefix {
        KeyPrefix::default()
    }

    #[test]
    fn generated_keys_parse_in_both_forms_to_the_stored_digest() {
        let key = GeneratedKey::generate(&prefix()).unwrap();
        assert_eq!(key.id().len(), GENERATED_ID_LEN);
        let compact = PresentedKey::parse(&prefix(), key.expose_secret()).unwrap();
        let split = PresentedKey::parse_split(&prefix(), key.expose_split_secret()).unwrap();
        assert_eq!(compact.id(), key.id());
        assert_eq!(split.id(), key.id());
        assert!(compact.digest().matches(&key.digest()));
        assert!(split.digest().matches(&key.digest()));
        assert!(key.expose_secret().starts_with("pck_"));
    }

    #[test]
    fn keys_differ() {
        let a = GeneratedKey::generate(&prefix()).unwrap();
        let b = GeneratedKey::generate(&prefix()).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!a.digest().matches(&b.digest()));
    }

    #[test]
    fn every_single_character_typo_fails_the_checksum_or_the_form() {
        let key = GeneratedKey::with_id(&prefix(), "partner-1").unwrap();
        let token = key.expose_secret();
        let start = "pck_partner-1_".len();
        for position in start..token.len() {
            let mut bytes = token.as_bytes().to_vec();
            bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(
                PresentedKey::parse(&prefix(), &typo).unwrap_err(),
                MalformedKey::Checksum,
                "typo at {position}"
            );
        }
    }

    #[test]
    fn malformed_keys_name_their_fault() {
        let key = GeneratedKey::with_id(&prefix(), "k1").unwrap();
        let token = key.expose_secret();
        let other = KeyPrefix::new("acme").unwrap();
        assert_eq!(
            PresentedKey::parse(&other, token).unwrap_err(),
            MalformedKey::WrongPrefix
        );
        assert_eq!(
            PresentedKey::parse(&prefix(), "pck_k1").unwrap_err(),
            MalformedKey::Shape
        );
        assert_eq!(
            PresentedKey::parse(&prefix(), &token[..token.len() - 1]).unwrap_err(),
            MalformedKey::Shape
        );
        let long = "x".repeat(MAX_PRESENTED_LEN + 1);
        assert_eq!(
            PresentedKey::parse(&prefix(), &long).unwrap_err(),
            MalformedKey::TooLong
        );
        let bad_char = token.replacen("pck_k1_", "pck_k1_!", 1);
        let bad_char = &bad_char[..bad_char.len() - 1];
        assert_eq!(
            PresentedKey::parse(&prefix(), bad_char).unwrap_err(),
            MalformedKey::BadCharacter
        );
        let bad_id = token.replacen("_k1_", "_k.1_", 1);
        assert_eq!(
            PresentedKey::parse(&prefix(), &bad_id).unwrap_err(),
            MalformedKey::BadId
        );
        assert_eq!(
            PresentedKey::parse_split(&prefix(), token).unwrap_err(),
            MalformedKey::Shape
        );
        // The id after the slash is covered by the checksum: moving a secret to another
        // id is a checksum failure, not a lookup.
        let moved = key.expose_split_secret().replace("/k1", "/k2");
        assert_eq!(
            PresentedKey::parse_split(&prefix(), &moved).unwrap_err(),
            MalformedKey::Checksum
        );
    }

    #[test]
    fn prefixes_and_digests_validate() {
        assert!(KeyPrefix::new("pck").is_ok());
        assert!(KeyPrefix::new("acme2").is_ok());
        for bad in ["", "Pck", "2ab", "a_b", "abcdefghijklmnopq"] {
            assert!(KeyPrefix::new(bad).is_err(), "{bad}");
        }
        let key = GeneratedKey::generate(&prefix()).unwrap();
        let text = key.digest().to_string();
        assert_eq!(KeyDigest::parse(&text).unwrap(), key.digest());
        assert!(KeyDigest::parse(&text[7..]).is_err());
        assert!(KeyDigest::parse("sha256:00").is_err());
        assert!(KeyDigest::parse(&text.replace('a', "g")).is_err() || !text.contains('a'));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = GeneratedKey::generate(&prefix()).unwrap();
        let secret_part = &key.expose_secret()[4 + GENERATED_ID_LEN + 1..];
        let debug = format!("{key:?}");
        assert!(!debug.contains(secret_part));
        let presented = PresentedKey::parse(&prefix(), key.expose_secret()).unwrap();
        assert!(!format!("{presented:?}").contains(secret_part));
        assert!(!format!("{:?}", key.digest()).contains(&key.digest().to_string()[7..]));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,300}") {
            let _ = PresentedKey::parse(&prefix(), &text);
            let _ = PresentedKey::parse_split(&prefix(), &text);
        }

        #[test]
        fn near_misses_of_a_real_key_are_refused(
            cut in 0usize..60,
            insert in proptest::char::any(),
            at in 0usize..60,
        ) {
            let key = GeneratedKey::with_id(&prefix(), "abc").unwrap();
            let token = key.expose_secret();
            let truncated = &token[..cut.min(token.len() - 1)];
            prop_assert!(PresentedKey::parse(&prefix(), truncated).is_err());
            let mut inserted = token.to_owned();
            let at = at.min(token.len());
            inserted.insert(at, insert);
            prop_assert!(PresentedKey::parse(&prefix(), &inserted).is_err());
        }

        #[test]
        fn any_valid_id_round_trips(id in "[A-Za-z0-9-]{1,64}") {
            let key = GeneratedKey::with_id(&prefix(), &id).unwrap();
            let parsed = PresentedKey::parse(&prefix(), key.expose_secret()).unwrap();
            prop_assert_eq!(parsed.id(), id.as_str());
            prop_assert!(parsed.digest().matches(&key.digest()));
            let split = PresentedKey::parse_split(&prefix(), key.expose_split_secret()).unwrap();
            prop_assert!(split.digest().matches(&key.digest()));
        }
    }
}
