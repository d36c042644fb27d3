//! The audit event: one per request, built when the response is ready.

use std::net::IpAddr;
use std::time::SystemTime;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrincipalEntry {
    /// The layer that authenticated it (`api-key`, `jwt`, `mtls-identity`).
    pub layer: &'static str,
    /// The principal's id.
    pub id: String,
    /// The credential's id (key id, token id, certificate thumbprint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// One layer's note, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoteEntry {
    /// The layer.
    pub layer: &'static str,
    /// What it decided: `allow`, `deny`, `skip`, `shadow_deny`.
    pub decision: &'static str,
    /// Its reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// The credential id it saw (also on refusals: which key id was tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The route rule it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// More detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Everything the audit layer records about one request.
///
/// Headers are never recorded except the user agent: credentials (`Authorization`,
/// `X-API-KEY`, `X-Auth-Token`, cookies, forwarded client certificates) cannot appear.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// From the configured request-id header, or generated.
    pub request_id: String,
    /// The client address, when it could be resolved.
    pub client_ip: Option<IpAddr>,
    /// The HTTP method.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string with sensitive values redacted, when the host opted in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The route rule that matched, from the role router's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Who the request authenticated as.
    pub principals: Vec<PrincipalEntry>,
    /// How the request ended.
    pub decision: Outcome,
    /// The layer that refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<&'static str>,
    /// The refusal's code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The response status, when there was a response.
    pub status: Option<u16>,
    /// Time from the request reaching the audit layer to the response (or the end).
    pub latency_us: u64,
    /// The user agent, truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Every layer's note, in order.
    pub notes: Vec<NoteEntry>,
}

impl AuditEvent {
    /// The event as one line of JSON, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and enums into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The principals as `layer:id(credential)`, comma-separated, for one-line logs.
    pub fn principals_summary(&self) -> String {
        let mut out = String::new();
        for (index, principal) in self.principals.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(principal.layer);
            out.push(':');
            out.push_str(&principal.id);
            if let Some(credential) = &principal.credential {
                out.push('(');
                out.push_str(credential);
                out.push(')');
            }
        }
        out
    }
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}
