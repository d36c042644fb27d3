//! `Authorization`-style field lines (`<scheme> <credentials>`), read the same way by
//! every credential layer.

/// What one field line is to a layer that reads one authorization scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeLine<'a> {
    /// Another scheme's line (its first word is not this scheme): another layer's.
    Other,
    /// Exactly the scheme, one space and non-empty credentials with no space or tab at
    /// either end (RFC 9110 11.4, RFC 6750 2.1).
    Exact(&'a [u8]),
    /// This scheme, written any other way: a tab, two spaces, trailing whitespace, no
    /// credentials, a comma. An attempt, to be refused; the credentials are given
    /// trimmed, for layers that share a scheme and must tell whose attempt it is.
    Loose(&'a [u8]),
}

/// Reads `value` for `scheme` (compared without regard to ASCII case). A line whose
/// first word merely starts with the scheme (`Bearerish`) is another scheme's.
///
/// ```
/// use portcullis_core::{scheme_line, SchemeLine};
/// assert_eq!(scheme_line(b"bearer abc", "Bearer"), SchemeLine::Exact(b"abc"));
/// assert_eq!(scheme_line(b"Bearer\tabc", "Bearer"), SchemeLine::Loose(b"abc"));
/// assert_eq!(scheme_line(b"Bearer", "Bearer"), SchemeLine::Loose(b""));
/// assert_eq!(scheme_line(b"Basic abc", "Bearer"), SchemeLine::Other);
/// assert_eq!(scheme_line(b"Bearerish abc", "Bearer"), SchemeLine::Other);
/// ```
pub fn scheme_line<'a>(value: &'a [u8], scheme: &str) -> SchemeLine<'a> {
    let scheme = scheme.as_bytes();
    let Some(head) = value.get(..scheme.len()) else {
        return SchemeLine::Other;
    };
    let rest = &value[scheme.len()..];
    if !head.eq_ignore_ascii_case(scheme) || rest.first().is_some_and(|b| is_tchar(*b)) {
        return SchemeLine::Other;
    }
    let whitespace = |b: &u8| *b == b' ' || *b == b'\t';
    let start = rest
        .iter()
        .position(|b| !whitespace(b))
        .unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|b| !whitespace(b))
        .map_or(start, |last| last + 1);
    let credentials = &rest[start..end];
    if start == 1 && rest[0] == b' ' && end == rest.len() && !credentials.is_empty() {
        SchemeLine::Exact(credentials)
    } else {
        SchemeLine::Loose(credentials)
    }
}

/// `tchar` (RFC 9110 5.6.2): a byte of a token such as a scheme's name.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}
