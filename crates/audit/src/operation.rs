//! Events that are not requests: a gateway reloading its files, for example. Written to
//! the same sinks as the requests' events, one JSON object per line, so the audit trail
//! says when the keys, connectors and lists in force changed.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// An operation on the running service. Its JSON line has `time` (RFC 3339, UTC),
/// `operation` (`"reload"`), `trigger` (`"sighup"`, `"file change"`, `"admin"`, …),
/// `ok`, and the operation's own `details` (counts, a file and line: never a secret).
///
/// ```
/// use portcullis_audit::{MemorySink, AuditLayer, OperationEvent};
///
/// let sink = MemorySink::new();
/// let audit = AuditLayer::new().sink(sink.clone());
/// audit.record_operation(
///     &OperationEvent::new("reload", "sighup", true).detail("api_keys", 12),
/// );
/// let event = &sink.events()[0];
/// assert_eq!((event["operation"].as_str(), event["details"]["api_keys"].as_u64()), (Some("reload"), Some(12)));
/// ```
#[derive(Clone, Debug)]
pub struct OperationEvent {
    time: SystemTime,
    operation: String,
    trigger: String,
    ok: bool,
    details: Map<String, Value>,
}

impl OperationEvent {
    /// `operation` (what), `trigger` (why now), and whether it succeeded.
    pub fn new(operation: impl Into<String>, trigger: impl Into<String>, ok: bool) -> Self {
        Self {
            time: SystemTime::now(),
            operation: operation.into(),
            trigger: trigger.into(),
            ok,
            details: Map::new(),
        }
    }

    /// Adds a detail: a count, a file name, an error's text. Never a secret.
    pub fn detail(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.details.insert(name.into(), value.into());
        self
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The JSON object, without a newline.
    pub fn to_json(&self) -> Vec<u8> {
        let time = humantime::format_rfc3339_millis(self.time).to_string();
        let since = self
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let value = serde_json::json!({
            "time": time,
            "time_ms": since as u64,
            "operation": self.operation,
            "trigger": self.trigger,
            "ok": self.ok,
            "details": self.details,
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }
}
