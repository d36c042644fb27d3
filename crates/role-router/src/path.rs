//! The request path as rules see it: percent-decoded, and refused when its meaning
//! depends on who reads it.

use std::borrow::Cow;
use std::fmt;

/// Why a request path was refused with 400 `ambiguous_path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmbiguousPath {
    /// The path does not start with `/` (`*`, or an empty path).
    NotAbsolute,
    /// A `.` or `..` segment: servers and proxies resolve them differently.
    DotSegment,
    /// An empty segment (`//`): some servers collapse it, others do not.
    EmptySegment,
    /// `%2F`, `%5C`, `%2E` or `%25`: an encoded separator, dot or percent sign, which
    /// one decoder turns into structure and another does not.
    EncodedDelimiter,
    /// A `\`, which some servers treat as `/`.
    Backslash,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// Decodes to invalid UTF-8 or to a control character.
    BadCharacter,
}

impl AmbiguousPath {
    /// A short description for logs and the rejection detail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAbsolute => "the path does not start with '/'",
            Self::DotSegment => "the path has a '.' or '..' segment",
            Self::EmptySegment => "the path has an empty segment ('//')",
            Self::EncodedDelimiter => "the path has an encoded '/', '\\', '.' or '%'",
            Self::Backslash => "the path has a '\\'",
            Self::BadPercentEncoding => "the path has a malformed percent-encoding",
            Self::BadCharacter => "the path decodes to invalid UTF-8 or a control character",
        }
    }
}

impl fmt::Display for AmbiguousPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path rules match against: percent-decoded, without a trailing `/` (so `/admin/`
/// is judged as `/admin`), and only when every reader would agree on its segments.
///
/// Dot segments and empty segments are refused rather than resolved: the host's router
/// sees the raw path, and a policy that judged `/v1/key/../sign` as `/v1/sign` would judge
/// a different route than the one that runs. Borrowed, with no allocation, unless the
/// path has percent-encodings.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    if !raw.starts_with('/') {
        return Err(AmbiguousPath::NotAbsolute);
    }
    if raw.as_bytes().contains(&b'%') {
        let mut decoded = decode(raw)?;
        let end = check(&decoded)?;
        decoded.truncate(end);
        Ok(Cow::Owned(decoded))
    } else {
        let end = check(raw)?;
        Ok(Cow::Borrowed(&raw[..end]))
    }
}

/// Byte classes for the one-pass check.
const CONTROL: u8 = 1;
const BACKSLASH: u8 = 2;
const NON_ASCII: u8 = 4;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if b < 0x20 || b == 0x7f {
            CONTROL
        } else if b == b'\\' as usize {
            BACKSLASH
        } else if b >= 0x80 {
            NON_ASCII
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Checks an absolute, decoded path in one pass and returns where it ends without its
/// trailing `/`.
fn check(path: &str) -> Result<usize, AmbiguousPath> {
    let bytes = path.as_bytes();
    if bytes.ends_with(b"//") {
        return Err(AmbiguousPath::EmptySegment);
    }
    let end = if bytes.len() > 1 && bytes.ends_with(b"/") {
        bytes.len() - 1
    } else {
        bytes.len()
    };
    let body = &bytes[1..end];
    let mut classes = 0u8;
    for &byte in body {
        classes |= CLASSES[byte as usize];
    }
    // `/` alone is the root, not an empty segment.
    if !body.is_empty() {
        for segment in body.split(|&b| b == b'/') {
            check_segment(segment)?;
        }
    }
    if classes & BACKSLASH != 0 {
        return Err(AmbiguousPath::Backslash);
    }
    // C1 control characters are two bytes in UTF-8; look for them only when needed.
    if classes & CONTROL != 0 || (classes & NON_ASCII != 0 && path.chars().any(char::is_control)) {
        return Err(AmbiguousPath::BadCharacter);
    }
    Ok(end)
}

fn check_segment(segment: &[u8]) -> Result<(), AmbiguousPath> {
    match segment {
        b"" => Err(AmbiguousPath::EmptySegment),
        b"." | b".." => Err(AmbiguousPath::DotSegment),
        _ => Ok(()),
    }
}

/// Decodes with `percent-encoding`, after checking every escape ourselves: its decoder
/// is lenient (a malformed `%zz` stays as it is), and an encoded delimiter would give
/// the path other segments than the router sees.
fn decode(raw: &str) -> Result<String, AmbiguousPath> {
    for escape in raw.as_bytes().split(|&b| b == b'%').skip(1) {
        let hex = |b: &u8| (*b as char).to_digit(16);
        let (Some(hi), Some(lo)) = (escape.first().and_then(hex), escape.get(1).and_then(hex))
        else {
            return Err(AmbiguousPath::BadPercentEncoding);
        };
        if matches!((hi * 16 + lo) as u8, b'/' | b'\\' | b'.' | b'%') {
            return Err(AmbiguousPath::EncodedDelimiter);
        }
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| AmbiguousPath::BadCharacter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_paths_are_borrowed_and_kept() {
        for path in [
            "/",
            "/v1/key",
            "/v1/key/abc/attributes",
            "/grpc.health.v1.Health/Check",
        ] {
            let normal = normalize(path).unwrap();
            assert!(matches!(normal, Cow::Borrowed(_)));
            assert_eq!(normal, path);
        }
    }

    #[test]
    fn trailing_slash_is_dropped() {
        assert_eq!(normalize("/admin/").unwrap(), "/admin");
        assert_eq!(normalize("/").unwrap(), "/");
    }

    #[test]
    fn unreserved_percent_encodings_are_decoded() {
        assert_eq!(normalize("/v1/%6Bey/x").unwrap(), "/v1/key/x");
        assert_eq!(normalize("/caf%C3%A9").unwrap(), "/café");
    }

    #[test]
    fn path_tricks_are_refused() {
        for (path, why) in [
            ("/v1/key/../sign", AmbiguousPath::DotSegment),
            ("/v1/./key", AmbiguousPath::DotSegment),
            ("/..", AmbiguousPath::DotSegment),
            ("/v1/key/%2e%2e/sign", AmbiguousPath::EncodedDelimiter),
            ("/v1/key/%2E%2E/sign", AmbiguousPath::EncodedDelimiter),
            ("/v1/key%2Fsign", AmbiguousPath::EncodedDelimiter),
            ("/v1/key%2fsign", AmbiguousPath::EncodedDelimiter),
            ("/v1/key%5Csign", AmbiguousPath::EncodedDelimiter),
            ("/v1/key/%252e%252e/sign", AmbiguousPath::EncodedDelimiter),
            ("/v1//key", AmbiguousPath::EmptySegment),
            ("//v1/key", AmbiguousPath::EmptySegment),
            ("/v1/key//", AmbiguousPath::EmptySegment),
            ("//", AmbiguousPath::EmptySegment),
            ("/v1/%C2%85", AmbiguousPath::BadCharacter),
            ("/v1\\key", AmbiguousPath::Backslash),
            ("/v1/%zz", AmbiguousPath::BadPercentEncoding),
            ("/v1/%4", AmbiguousPath::BadPercentEncoding),
            ("/v1/%C3", AmbiguousPath::BadCharacter),
            ("/v1/%00", AmbiguousPath::BadCharacter),
            ("/v1/%0a", AmbiguousPath::BadCharacter),
            ("*", AmbiguousPath::NotAbsolute),
            ("", AmbiguousPath::NotAbsolute),
        ] {
            assert_eq!(normalize(path), Err(why), "{path}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(path in "\\PC{0,64}") {
            let _ = normalize(&path);
        }

        // Whatever is accepted is absolute, has no dot or empty segment, and normalizing
        // it again changes nothing.
        #[test]
        fn accepted_paths_are_stable(path in "(/[a-zA-Z0-9._~%-]{0,6}){0,6}/?") {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                let again = normalize(&normal);
                prop_assert_eq!(again.as_deref(), Ok(&*normal));
                if normal.len() > 1 {
                    for segment in normal[1..].split('/') {
                        prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                    }
                }
            }
        }
    }
}
