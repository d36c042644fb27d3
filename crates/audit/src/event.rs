//! The audit event: one per request, built when the response is ready.

use std::net::IpAddr;
use std::time::SystemTime;

use http::Method;
use portcullis_core::{AuditNote, Decision};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

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

/// One layer's note, as serialized.
#[derive(Serialize)]
struct NoteEntry<'a> {
    layer: &'static str,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Everything the audit layer records about one request.
///
/// Headers are never recorded except the user agent: credentials (`Authorization`,
/// `X-API-KEY`, `X-Auth-Token`, cookies, forwarded client certificates) cannot appear.
///
/// Serialized (by sinks) as one JSON object: `time`, `request_id`, `client_ip`,
/// `method`, `path`, `query` (when logged), `route`, `principals`, `decision`,
/// `refused_by`, `reason`, `status`, `latency_us`, `user_agent`, `notes`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When the request arrived.
    pub time: SystemTime,
    /// From the configured request-id header, or generated.
    pub request_id: String,
    /// The client address, when it could be resolved.
    pub client_ip: Option<IpAddr>,
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// The query string with sensitive values redacted, when the host opted in.
    pub query: Option<String>,
    /// How the request ended.
    pub decision: Outcome,
    /// The layer that refused it.
    pub refused_by: Option<&'static str>,
    /// The refusal's code.
    pub reason: Option<&'static str>,
    /// The response status, when there was a response.
    pub status: Option<u16>,
    /// Time from the request reaching the audit layer to the response (or the end).
    pub latency_us: u64,
    /// The user agent, truncated.
    pub user_agent: Option<String>,
    /// Every layer's note, in order.
    pub notes: Vec<AuditNote>,
}

impl AuditEvent {
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
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing strings, numbers and enums into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
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

impl Serialize for AuditEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Principals<'a>(&'a AuditEvent);
        impl Serialize for Principals<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.principals())
            }
        }
        struct Notes<'a>(&'a [AuditNote]);
        impl Serialize for Notes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|note| NoteEntry {
                    layer: note.layer(),
                    decision: note.decision().as_str(),
                    code: note.reason_code(),
                    credential: note.credential(),
                    rule: note.rule_name(),
                    detail: note.detail_text(),
                }))
            }
        }
        let mut event = serializer.serialize_struct("AuditEvent", 15)?;
        event.serialize_field("time", &Rfc3339(self.time))?;
        event.serialize_field("request_id", &self.request_id)?;
        event.serialize_field("client_ip", &self.client_ip)?;
        event.serialize_field("method", self.method.as_str())?;
        event.serialize_field("path", &self.path)?;
        if let Some(query) = &self.query {
            event.serialize_field("query", query)?;
        }
        if let Some(route) = self.route() {
            event.serialize_field("route", route)?;
        }
        event.serialize_field("principals", &Principals(self))?;
        event.serialize_field("decision", &self.decision)?;
        if let Some(layer) = self.refused_by {
            event.serialize_field("refused_by", layer)?;
        }
        if let Some(reason) = self.reason {
            event.serialize_field("reason", reason)?;
        }
        event.serialize_field("status", &self.status)?;
        event.serialize_field("latency_us", &self.latency_us)?;
        if let Some(agent) = &self.user_agent {
            event.serialize_field("user_agent", agent)?;
        }
        event.serialize_field("notes", &Notes(&self.notes))?;
        event.end()
    }
}

struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}
