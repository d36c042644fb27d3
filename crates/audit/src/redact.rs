//! Keeping credentials out of audit events: request text (method, path, query, user
//! agent, request id) is recorded only after secrets are replaced by `REDACTED`.
//!
//! Two rules, so that neither a parameter's name nor its value can route around them:
//!
//! - **By name.** A query parameter's name is compared after percent-decoding, in lower
//!   case, with `-` and `_` alike and an `x_` prefix ignored: `api%5Fkey`, `API-KEY`,
//!   `x-api-key` and `X_Api_Key` are all `api_key`. Names that contain a strong word
//!   (`token`, `secret`, `password`, …) are sensitive whatever surrounds the word.
//! - **By shape.** Any value, path segment or word of free text that, after
//!   percent-decoding (repeatedly, so double encoding does not hide it), holds
//!   something shaped like this project's API keys (`<prefix>_…_<38 base62>` or the
//!   split form) or like a JWS/JWE compact token (`eyJ….….…`) is replaced whole, whatever
//!   its parameter is called.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "REDACTED";

/// Query parameters whose values are never recorded, compared as normalized names.
pub(crate) const SENSITIVE_NAMES: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "bearer",
    "client_secret",
    "code",
    "id_token",
    "jwt",
    "key",
    "password",
    "refresh_token",
    "secret",
    "sig",
    "signature",
    "token",
];

/// Words that make any parameter name that contains them sensitive.
const SENSITIVE_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "credential",
    "session",
    "signature",
    "private",
];

/// How many rounds of percent-decoding are undone before a value is judged.
const DECODE_ROUNDS: usize = 4;

/// Length of the random part and checksum of an API key: 32 + 6 base62 characters.
const KEY_TAIL: usize = 38;

/// A name as the redaction rules compare it: percent-decoded, lower case, `-` as `_`,
/// without an `x_` prefix.
pub(crate) fn normalize_name(name: &str) -> String {
    let decoded = decode(name);
    let mut normalized: String = decoded
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if normalized.starts_with("x_") {
        normalized.drain(..2);
    }
    normalized
}

/// Whether values of a parameter so named are redacted. `extra` holds the host's
/// names, already normalized.
fn sensitive_name(name: &str, extra: &[String]) -> bool {
    let name = normalize_name(name);
    SENSITIVE_NAMES.contains(&name.as_str())
        || extra.contains(&name)
        || SENSITIVE_WORDS.iter().any(|word| name.contains(word))
}

/// One round of percent-decoding, or `None` when it changes nothing. Bytes that are
/// not UTF-8 are replaced, which cannot make a secret look harmless.
fn decode_once(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes: Vec<u8> = percent_decode(text.as_bytes()).collect();
    let next = String::from_utf8_lossy(&bytes).into_owned();
    (next != text).then_some(next)
}

/// `text`, then each round of percent-decoding that changes it (at most
/// [`DECODE_ROUNDS`]), so that double encoding hides nothing.
fn decodings(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    std::iter::successors(Some(Cow::Borrowed(text)), |current| {
        decode_once(current).map(Cow::Owned)
    })
    .take(DECODE_ROUNDS + 1)
}

/// Percent-decodes `text` until it no longer changes.
fn decode(text: &str) -> Cow<'_, str> {
    decodings(text).last().unwrap_or(Cow::Borrowed(text))
}

/// Whether `text` holds, anywhere, something shaped like an API key or a compact JWS,
/// as given or after any round of percent-decoding.
pub(crate) fn looks_secret(text: &str) -> bool {
    // Decoding never lengthens a text (`%XX` becomes one byte, or the three of U+FFFD),
    // so a text shorter than the shortest secret cannot hold one after any round.
    text.len() >= MIN_SECRET_LEN && decodings(text).any(|text| shaped_secret(&text))
}

/// The shortest word [`token_shaped`] accepts: eight header bytes, a dot, one payload
/// byte and a dot. A key-shaped word needs `_` and [`KEY_TAIL`] more.
const MIN_SECRET_LEN: usize = 11;

/// A byte that can be part of a key or a token: base64url and the dot.
fn word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

/// Whether some word of `text` is shaped like a key or a token.
fn shaped_secret(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Cheap first looks: a key needs more than `KEY_TAIL` bytes, a token needs `eyJ`.
    let may_be_key = bytes.len() > KEY_TAIL;
    let may_be_token = find(bytes, b"eyJ").is_some();
    (may_be_key || may_be_token)
        && bytes
            .split(|b| !word_byte(*b))
            .any(|word| (may_be_key && key_shaped(word)) || (may_be_token && token_shaped(word)))
}

/// `<prefix>_<id>_<38 base62>` or `<prefix>_<38 base62>`: an underscore followed by at
/// least 38 base62 characters, the random part and checksum every key ends with.
fn key_shaped(word: &[u8]) -> bool {
    let mut run = 0usize;
    let mut after_underscore = false;
    for byte in word {
        if byte.is_ascii_alphanumeric() {
            if after_underscore {
                run += 1;
                if run >= KEY_TAIL {
                    return true;
                }
            }
        } else {
            after_underscore = *byte == b'_';
            run = 0;
        }
    }
    false
}

/// A JWS or JWE in compact form anywhere in the word: `eyJ` (base64url of `{"`), the
/// rest of a base64url header, a dot, a non-empty base64url part and another dot. What
/// stands before it (`8.eyJ…`, `x_eyJ…`) does not hide it.
fn token_shaped(word: &[u8]) -> bool {
    let base64url = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
    let mut from = 0;
    while let Some(at) = find(&word[from..], b"eyJ") {
        let start = from + at;
        let rest = &word[start..];
        let header = rest.iter().take_while(|b| base64url(b)).count();
        let after_header = &rest[header..];
        if header >= 8 && after_header.first() == Some(&b'.') {
            let payload = after_header[1..]
                .iter()
                .take_while(|b| base64url(b))
                .count();
            if payload > 0 && after_header.get(1 + payload) == Some(&b'.') {
                return true;
            }
        }
        from = start + 1;
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The query string with the values of sensitive names, and every secret-shaped name
/// or value, replaced.
pub(crate) fn redact_query(query: &str, extra: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    for (index, pair) in query.split('&').enumerate() {
        if index > 0 {
            out.push('&');
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name_secret = looks_secret(name);
        out.push_str(if name_secret { REDACTED } else { name });
        if pair.contains('=') {
            out.push('=');
            let hide = !value.is_empty()
                && (name_secret || sensitive_name(name, extra) || looks_secret(value));
            out.push_str(if hide { REDACTED } else { value });
        }
    }
    out
}

/// The path with every secret-shaped segment replaced.
pub(crate) fn redact_path(path: &str) -> Cow<'_, str> {
    // One check of the whole path answers for every segment: `/` separates words, and
    // percent-decoding never joins two segments.
    if !looks_secret(path) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if looks_secret(segment) {
                REDACTED
            } else {
                segment
            }
        })
        .collect();
    Cow::Owned(segments.join("/"))
}

/// Free text (a user agent): every secret-shaped word replaced.
pub(crate) fn redact_text(text: &str) -> Cow<'_, str> {
    if !looks_secret(text) {
        return Cow::Borrowed(text);
    }
    let words: Vec<&str> = text
        .split(' ')
        .map(|word| if looks_secret(word) { REDACTED } else { word })
        .collect();
    let joined = words.join(" ");
    // A secret that spans a space-free separator the word split missed: drop it all.
    if looks_secret(&joined) {
        return Cow::Borrowed(REDACTED);
    }
    Cow::Owned(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pck_4fT9kQ2mZx1B_Kr6qkmPkkvny1txH7Um6qAE3EgBW7oGC09vqjL";
    const SPLIT: &str = "pck_Kr6qkmPkkvny1txH7Um6qAE3EgBW7oGC09vqjL/4fT9kQ2mZx1B";
    const JWS: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWJ5dGVz";

    #[test]
    fn the_shortest_secret_is_found_and_nothing_shorter_is_looked_at() {
        let minimal = "eyJhbGci.e.";
        assert_eq!(minimal.len(), MIN_SECRET_LEN);
        assert!(looks_secret(minimal));
        assert!(!looks_secret(&minimal[..MIN_SECRET_LEN - 1]));
    }

    proptest::proptest! {
        /// The whole-path check in `redact_path` agrees with checking each segment.
        #[test]
        fn a_path_looks_secret_when_a_segment_does(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "/", "eyJ", "hbGciOi", ".", "e", "_", "%2", "%", "F", "5", "x",
                    "pck", "Kr6qkmPkkvny1txH7Um6qAE3EgBW7oGC09vqjL", "%2F", "%252F", "%5F",
                ]),
                0..16,
            )
        ) {
            let path: String = parts.concat();
            proptest::prop_assert_eq!(
                looks_secret(&path),
                path.split('/').any(looks_secret),
                "{}", path
            );
        }
    }

    #[test]
    fn names_are_normalized() {
        for name in [
            "api_key",
            "api%5Fkey",
            "API-KEY",
            "x-api-key",
            "X_Api_Key",
            "%2561pi_key",
        ] {
            assert_eq!(normalize_name(name), "api_key", "{name}");
        }
        assert!(sensitive_name("My-Session-Id", &[]));
        assert!(sensitive_name("refreshToken", &[]));
        assert!(!sensitive_name("page", &[]));
        assert!(sensitive_name("tenant", &["tenant".to_owned()]));
    }

    #[test]
    fn shapes_are_found_under_any_encoding() {
        for secret in [KEY, SPLIT, JWS] {
            assert!(looks_secret(secret), "{secret}");
            assert!(looks_secret(&format!("Bearer {secret}")), "{secret}");
            let encoded: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
            assert!(looks_secret(&encoded), "{encoded}");
            let twice = encoded.replace('%', "%25");
            assert!(looks_secret(&twice), "{twice}");
        }
        for harmless in [
            "page",
            "1.2.3",
            "550e8400-e29b-41d4-a716-446655440000",
            "a_b_c",
            "curl/8.5",
            "eyJ.x.y",
            "eyJhbGciOi",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(!looks_secret(harmless), "{harmless}");
        }
    }

    #[test]
    fn queries_paths_and_text_are_redacted() {
        assert_eq!(
            redact_query(&format!("page=2&API-KEY=x&q={KEY}&{JWS}=1&flag&e="), &[]),
            "page=2&API-KEY=REDACTED&q=REDACTED&REDACTED=REDACTED&flag&e="
        );
        assert_eq!(
            redact_path(&format!("/v1/keys/{KEY}/x")),
            "/v1/keys/REDACTED/x"
        );
        assert_eq!(
            redact_path(&format!("/v1/{SPLIT}")),
            "/v1/REDACTED/4fT9kQ2mZx1B"
        );
        assert!(matches!(redact_path("/v1/keys/7"), Cow::Borrowed(_)));
        assert_eq!(redact_text(&format!("curl/8.5 {JWS}")), "curl/8.5 REDACTED");
        // Found by fuzzing: text glued before the token hid it from a whole-word match.
        assert_eq!(
            redact_query(&format!("curl/8.{JWS}&page=2"), &[]),
            "REDACTED&page=2"
        );
        assert!(looks_secret(&format!("x_{JWS}")));
        assert!(looks_secret(&format!("a.b.{JWS}.c")));
    }
}
