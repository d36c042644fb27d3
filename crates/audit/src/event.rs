//! The audit event: one per request, built when the response is ready.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri};
use portcullis_core::{AuditNote, Decision};
use serde::Serialize;

/// How a request ended, as the audit layer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Every layer let the request through and the service answered.
    Allow,
    /// A layer refused the request (see [`AuditEvent::refused_by`] and
    /// [`AuditEvent::reason`]).
    Deny,
    /// The inner service returned an error instead of a response.
    Error,
    /// The request was dropped before a response was ready (the client went away, or a
    /// timeout layer gave up).
    Dropped,
    /// The inner service panicked.
    Panicked,
}

impl Outcome {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
            Self::Dropped => "dropped",
            Self::Panicked => "panicked",
        }
    }
}

/// A principal that authenticated the request, as a layer noted it. Never a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PrincipalEntry<'a> {
    /// The layer that authenticated it (`api-key`, `jwt`, `mtls-identity`).
    pub layer: &'static str,
    /// The principal's id.
    pub id: &'a str,
    /// The credential's id (key id, token id, certificate thumbprint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
}

/// Everything the audit layer records about one request.
///
/// Headers are never recorded except the user agent: credentials (`Authorization`,
/// `X-API-KEY`, `X-Auth-Token`, cookies, forwarded client certificates) cannot appear.
///
/// The layer captures the request's parts as they are (shared, not copied) and
/// redacts when the event is read: [`path`](Self::path) and
/// [`user_agent`](Self::user_agent) never return a secret-shaped segment or word, and
/// neither does `Debug`.
///
/// Serialized (by sinks) as one JSON object: `time`, `request_id`, `client_ip`,
/// `method`, `path`, `query` (when logged), `route`, `principals`, `decision`,
/// `refused_by`, `reason`, `status`, `latency_us`, `user_agent`, `notes`.
#[derive(Clone)]
pub struct AuditEvent {
    pub(crate) time: SystemTime,
    /// Visible ASCII (checked when it was taken from the request, or generated).
    pub(crate) request_id: HeaderValue,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) query: Option<String>,
    pub(crate) decision: Outcome,
    pub(crate) refused_by: Option<&'static str>,
    pub(crate) reason: Option<&'static str>,
    pub(crate) status: Option<u16>,
    pub(crate) latency_us: u64,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) notes: Vec<AuditNote>,
}

impl AuditEvent {
    /// When the request arrived.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// From the configured request-id header, or generated.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The client address, when it could be resolved.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    /// The HTTP method (an extension method shaped like a credential is `REDACTED`).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query string, with secret-shaped segments replaced by
    /// `REDACTED`.
    pub fn path(&self) -> Cow<'_, str> {
        crate::redact::redact_path(self.uri.path())
    }

    /// The query string with sensitive values redacted, when the host opted in.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// How the request ended.
    pub fn decision(&self) -> Outcome {
        self.decision
    }

    /// The layer that refused it.
    pub fn refused_by(&self) -> Option<&'static str> {
        self.refused_by
    }

    /// The refusal's code.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// The response status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Time from the request reaching the audit layer to the response (or the end).
    pub fn latency_us(&self) -> u64 {
        self.latency_us
    }

    /// The user agent: secret-shaped words replaced by `REDACTED`, cut to 256 bytes at a
    /// character boundary, control characters removed.
    pub fn user_agent(&self) -> Option<Cow<'_, str>> {
        let value = self.user_agent.as_ref()?;
        // Redacted before it is cut, so a cut never leaves half a secret.
        Some(match value.to_str() {
            // Visible ASCII, as nearly every client sends: borrowed unless a word is
            // redacted or the text is cut.
            Ok(text) => match crate::redact::redact_text(text) {
                Cow::Borrowed(redacted) => truncate(redacted, USER_AGENT_MAX),
                Cow::Owned(redacted) => {
                    Cow::Owned(truncate(&redacted, USER_AGENT_MAX).into_owned())
                }
            },
            Err(_) => {
                let text = String::from_utf8_lossy(value.as_bytes());
                let redacted = crate::redact::redact_text(&text);
                Cow::Owned(truncate(&redacted, USER_AGENT_MAX).into_owned())
            }
        })
    }

    /// Every layer's note, in order.
    pub fn notes(&self) -> &[AuditNote] {
        &self.notes
    }

    /// The route rule that matched, from the role router's note.
    pub fn route(&self) -> Option<&str> {
        self.notes.iter().find_map(AuditNote::rule_name)
    }

    /// Who the request authenticated as: the principals the layers that allowed it
    /// noted.
    pub fn principals(&self) -> impl Iterator<Item = PrincipalEntry<'_>> {
        self.notes.iter().filter_map(|note| {
            if note.decision() != Decision::Allow {
                return None;
            }
            Some(PrincipalEntry {
                layer: note.layer(),
                id: note.principal()?,
                credential: note.credential(),
            })
        })
    }

    /// The event as one line of JSON, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        out
    }

    /// Appends the event as one line of JSON, without the newline.
    ///
    /// Written by hand rather than through `serde`: the field names are constant
    /// fragments, and only values that need it go through JSON escaping (most are
    /// plain ASCII). The output is what `serde_json` would write for the same object.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_rfc3339_millis(out, self.time);
        out.extend_from_slice(b"\",\"request_id\":");
        json::string(out, self.request_id());
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                // An address's text is digits, letters, '.' and ':': nothing to escape.
                match ip {
                    IpAddr::V4(v4) => {
                        for (index, octet) in v4.octets().into_iter().enumerate() {
                            if index > 0 {
                                out.push(b'.');
                            }
                            json::number(out, u64::from(octet));
                        }
                    }
                    IpAddr::V6(v6) => {
                        let _ = write!(out, "{v6}");
                    }
                }
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json::string(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json::string(out, &self.path());
        if let Some(query) = &self.query {
            out.extend_from_slice(b",\"query\":");
            json::string(out, query);
        }
        if let Some(route) = self.route() {
            out.extend_from_slice(b",\"route\":");
            json::string(out, route);
        }
        out.extend_from_slice(b",\"principals\":[");
        for (index, principal) in self.principals().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"layer\":");
            json::string(out, principal.layer);
            out.extend_from_slice(b",\"id\":");
            json::string(out, principal.id);
            if let Some(credential) = principal.credential {
                out.extend_from_slice(b",\"credential\":");
                json::string(out, credential);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"decision\":\"");
        out.extend_from_slice(self.decision.as_str().as_bytes());
        out.push(b'"');
        if let Some(layer) = self.refused_by {
            out.extend_from_slice(b",\"refused_by\":");
            json::string(out, layer);
        }
        if let Some(reason) = self.reason {
            out.extend_from_slice(b",\"reason\":");
            json::string(out, reason);
        }
        out.extend_from_slice(b",\"status\":");
        match self.status {
            Some(status) => json::number(out, u64::from(status)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"latency_us\":");
        json::number(out, self.latency_us);
        if let Some(agent) = self.user_agent() {
            out.extend_from_slice(b",\"user_agent\":");
            json::string(out, &agent);
        }
        out.extend_from_slice(b",\"notes\":[");
        for (index, note) in self.notes.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"layer\":");
            json::string(out, note.layer());
            out.extend_from_slice(b",\"decision\":\"");
            out.extend_from_slice(note.decision().as_str().as_bytes());
            out.push(b'"');
            let optional = [
                (&b",\"code\":"[..], note.reason_code()),
                (b",\"credential\":", note.credential()),
                (b",\"rule\":", note.rule_name()),
                (b",\"detail\":", note.detail_text()),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    out.extend_from_slice(name);
                    json::string(out, value);
                }
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }

    /// The principals as `layer:id(credential)`, comma-separated, for one-line logs.
    pub fn principals_summary(&self) -> String {
        let mut out = String::new();
        for (index, principal) in self.principals().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(principal.layer);
            out.push(':');
            out.push_str(principal.id);
            if let Some(credential) = principal.credential {
                out.push('(');
                out.push_str(credential);
                out.push(')');
            }
        }
        out
    }
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through the redacting accessors: the raw path and user agent may hold secrets.
        f.debug_struct("AuditEvent")
            .field("time", &self.time)
            .field("request_id", &self.request_id())
            .field("client_ip", &self.client_ip)
            .field("method", &self.method)
            .field("path", &self.path())
            .field("query", &self.query)
            .field("decision", &self.decision)
            .field("refused_by", &self.refused_by)
            .field("reason", &self.reason)
            .field("status", &self.status)
            .field("latency_us", &self.latency_us)
            .field("user_agent", &self.user_agent())
            .field("notes", &self.notes)
            .finish()
    }
}

/// Longest user agent recorded; longer ones are cut at a character boundary.
const USER_AGENT_MAX: usize = 256;

/// `text` cut to `max` bytes at a character boundary, without control characters.
fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &text[..end];
    // Most user agents are plain printable ASCII: borrow them as they are.
    if cut.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(cut);
    }
    Cow::Owned(cut.chars().filter(|c| !c.is_control()).collect())
}

thread_local! {
    /// The last second written and its `YYYY-MM-DDTHH:MM:SS`: events of the same
    /// second (nearly all of them, under load) copy it instead of formatting a date.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-11-30T14:05:09.123Z`), as
/// `humantime::format_rfc3339_millis` writes it.
fn write_rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != second {
        let text =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second)).to_string();
        match text.as_bytes().get(..19) {
            Some(bytes) => prefix.copy_from_slice(bytes),
            // Outside humantime's range: write it uncached.
            None => {
                out.extend_from_slice(
                    humantime::format_rfc3339_millis(time)
                        .to_string()
                        .as_bytes(),
                );
                return;
            }
        }
        SECOND.set((second, prefix));
    }
    out.extend_from_slice(&prefix);
    let millis = since_epoch.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

mod json {
    //! The two JSON value writers the event needs.

    /// `text` as a JSON string, escaped as `serde_json` escapes (`"`, `\\` and control
    /// characters; everything else, non-ASCII included, as it is).
    pub(super) fn string(out: &mut Vec<u8>, text: &str) {
        out.push(b'"');
        let bytes = text.as_bytes();
        let mut start = 0;
        while let Some(offset) = first_to_escape(&bytes[start..]) {
            let index = start + offset;
            out.extend_from_slice(&bytes[start..index]);
            escape(out, bytes[index]);
            start = index + 1;
        }
        out.extend_from_slice(&bytes[start..]);
        out.push(b'"');
    }

    /// Where the first byte that JSON must escape is, looking at eight bytes at a time:
    /// most of what an event holds (paths, ids, names) has none, and is then copied in
    /// one piece.
    fn first_to_escape(bytes: &[u8]) -> Option<usize> {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        // A byte of `word` is zero exactly when this sets its high bit (the classic
        // "has a zero byte" test; other bytes may be flagged only after a zero one,
        // which is then found first by the byte-wise look below).
        let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
        let mut chunks = bytes.chunks_exact(8);
        let mut offset = 0;
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let word = u64::from_ne_bytes(word);
            // Control characters are the bytes below 0x20: those whose top three bits
            // are zero. A quote or a backslash is a zero byte once XORed with it.
            let control = has_zero(word & u64::from_ne_bytes([0xe0; 8]));
            let quote = has_zero(word ^ u64::from_ne_bytes([b'"'; 8]));
            let backslash = has_zero(word ^ u64::from_ne_bytes([b'\\'; 8]));
            if control | quote | backslash != 0 {
                return chunk
                    .iter()
                    .position(|&b| needs_escape(b))
                    .map(|at| offset + at);
            }
            offset += 8;
        }
        chunks
            .remainder()
            .iter()
            .position(|&b| needs_escape(b))
            .map(|at| offset + at)
    }

    fn needs_escape(byte: u8) -> bool {
        byte < 0x20 || byte == b'"' || byte == b'\\'
    }

    fn escape(out: &mut Vec<u8>, byte: u8) {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
                return;
            }
        };
        out.extend_from_slice(short);
    }

    /// A number, in decimal.
    pub(super) fn number(out: &mut Vec<u8>, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for text in [
            "",
            "plain",
            "quote \" and \\ backslash",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "é ü 日本 🦀",
            "end\\",
        ] {
            let mut out = Vec::new();
            json::string(&mut out, text);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn addresses_are_written_as_serde_json_writes_them() {
        for ip in [
            "0.0.0.0",
            "192.0.2.1",
            "255.255.255.255",
            "10.20.0.9",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let event = AuditEvent {
                time: UNIX_EPOCH,
                request_id: HeaderValue::from_static("r"),
                client_ip: Some(ip.parse().unwrap()),
                method: Method::GET,
                uri: Uri::from_static("/"),
                query: None,
                decision: Outcome::Allow,
                refused_by: None,
                reason: None,
                status: None,
                latency_us: 0,
                user_agent: None,
                notes: Vec::new(),
            };
            let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
            assert_eq!(
                value["client_ip"],
                serde_json::json!(ip.parse::<IpAddr>().unwrap())
            );
        }
    }

    proptest::proptest! {
        /// Any text, at any alignment, is escaped exactly as `serde_json` escapes it.
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(
            text in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f]|é|日){0,40}",
        ) {
            let mut out = Vec::new();
            json::string(&mut out, &text);
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&text).unwrap()
            );
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for value in [0, 7, 10, 999, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            json::number(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn times_match_humantime_across_seconds() {
        let base = UNIX_EPOCH + Duration::from_millis(1_764_511_509_000);
        for offset_ms in [0, 1, 999, 1000, 1001, 59_999, 86_400_000, 5] {
            let time = base + Duration::from_millis(offset_ms);
            let mut out = Vec::new();
            write_rfc3339_millis(&mut out, time);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_millis(time).to_string()
            );
        }
    }
}
