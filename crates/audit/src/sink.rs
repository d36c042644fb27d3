//! Where events go besides `tracing`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::event::AuditEvent;
use crate::operation::OperationEvent;

/// Receives every audit event the layer emits.
///
/// Called on the request's task when the response is ready: a sink that does I/O hands
/// the event to a writer of its own (as [`FileSink`](crate::FileSink) does) rather than
/// blocking the request.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one event.
    fn record(&self, event: &AuditEvent);

    /// Takes an event that is not a request (a reload of the gateway's files). Ignored
    /// unless the sink implements it; the sinks of this crate write it as a line of
    /// its own.
    fn record_operation(&self, event: &OperationEvent) {
        let _ = event;
    }
}

impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    fn record(&self, event: &AuditEvent) {
        (**self).record(event)
    }

    fn record_operation(&self, event: &OperationEvent) {
        (**self).record_operation(event)
    }
}

/// JSON lines in memory: for tests, and for hosts that ship events themselves.
///
/// ```
/// use portcullis_audit::MemorySink;
///
/// let sink = MemorySink::new();
/// assert!(sink.lines().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far, one JSON object a line.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The events so far, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Empties the sink.
    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: &AuditEvent) {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Serialize straight into the buffer: no intermediate copy.
        event.write_json(&mut bytes);
        bytes.push(b'\n');
    }

    fn record_operation(&self, event: &OperationEvent) {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(&event.to_json());
        bytes.push(b'\n');
    }
}

impl fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySink")
            .field(
                "bytes",
                &self.0.lock().unwrap_or_else(PoisonError::into_inner).len(),
            )
            .finish()
    }
}
