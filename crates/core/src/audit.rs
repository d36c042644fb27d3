//! Audit notes: how any layer records its decision for an outer audit layer.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// What a layer decided about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The layer let the request through.
    Allow,
    /// The layer refused the request.
    Deny,
    /// The layer had nothing to check (an optional credential that was absent).
    Skip,
    /// The layer would have refused, but runs in shadow mode and let it through.
    ShadowDeny,
}

impl Decision {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Skip => "skip",
            Self::ShadowDeny => "shadow_deny",
        }
    }
}

/// A note's text: written by the layer, or shared with what it came from, so that a
/// note costs no copy of a principal's id or a rule's name on every request.
#[derive(Clone, PartialEq, Eq)]
enum NoteText {
    Own(Cow<'static, str>),
    Shared(Arc<str>),
}

impl NoteText {
    fn as_str(&self) -> &str {
        match self {
            Self::Own(text) => text,
            Self::Shared(text) => text,
        }
    }
}

impl fmt::Debug for NoteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One layer's note about one request.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditNote {
    layer: &'static str,
    decision: Decision,
    code: Option<&'static str>,
    principal_id: Option<String>,
    credential_id: Option<String>,
    /// Set by [`AuditNote::principal_of`]: its id and credential id are read from it.
    principal: Option<crate::Principal>,
    rule: Option<NoteText>,
    detail: Option<Cow<'static, str>>,
}

impl fmt::Debug for AuditNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditNote")
            .field("layer", &self.layer)
            .field("decision", &self.decision)
            .field("code", &self.code)
            .field("principal_id", &self.principal())
            .field("credential_id", &self.credential())
            .field("rule", &self.rule_name())
            .field("detail", &self.detail)
            .finish()
    }
}

impl AuditNote {
    /// A note by `layer`.
    pub fn new(layer: &'static str, decision: Decision) -> Self {
        Self {
            layer,
            decision,
            code: None,
            principal_id: None,
            credential_id: None,
            principal: None,
            rule: None,
            detail: None,
        }
    }

    /// The name of the route rule that decided (role-router sets it).
    pub fn rule(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.rule = Some(NoteText::Own(name.into()));
        self
    }

    /// The name of the route rule that decided, shared with the policy that holds it
    /// (no copy per request).
    pub fn shared_rule(mut self, name: Arc<str>) -> Self {
        self.rule = Some(NoteText::Shared(name));
        self
    }

    /// The route rule that decided, if the layer matched one.
    pub fn rule_name(&self) -> Option<&str> {
        self.rule.as_ref().map(NoteText::as_str)
    }

    /// `layer` let the request through.
    pub fn allow(layer: &'static str) -> Self {
        Self::new(layer, Decision::Allow)
    }

    /// `layer` refused the request with `code`.
    pub fn deny(layer: &'static str, code: &'static str) -> Self {
        Self::new(layer, Decision::Deny).code(code)
    }

    /// Sets the reason code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Sets the principal id.
    pub fn principal_id(mut self, id: impl Into<String>) -> Self {
        self.principal_id = Some(id.into());
        self
    }

    /// Sets the credential id (never the secret).
    pub fn credential_id(mut self, id: impl Into<String>) -> Self {
        self.credential_id = Some(id.into());
        self
    }

    /// Sets the principal id and the credential id to `principal`'s, sharing the
    /// principal rather than copying its ids. Ids set with
    /// [`principal_id`](Self::principal_id) and [`credential_id`](Self::credential_id)
    /// take precedence.
    pub fn principal_of(mut self, principal: &crate::Principal) -> Self {
        self.principal = Some(principal.clone());
        self
    }

    /// Sets a short detail (a matched rule, a network, a quota).
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The layer.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The decision.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The reason code.
    pub fn reason_code(&self) -> Option<&'static str> {
        self.code
    }

    /// The principal id.
    pub fn principal(&self) -> Option<&str> {
        self.principal_id
            .as_deref()
            .or_else(|| self.principal.as_ref().map(crate::Principal::id))
    }

    /// The credential id.
    pub fn credential(&self) -> Option<&str> {
        self.credential_id
            .as_deref()
            .or_else(|| self.principal.as_ref()?.credential_id())
    }

    /// The detail.
    pub fn detail_text(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// The notes layers make about one request, shared between the audit layer that
/// created it and the layers inside it.
///
/// An audit layer inserts an `AuditRecord` into the request's extensions and reads the
/// notes once the response is ready. Other layers call [`AuditRecord::note`], which
/// does nothing, and builds nothing, when no audit layer is present.
///
/// ```
/// use portcullis_core::{AuditNote, AuditRecord, Decision};
///
/// let record = AuditRecord::new();
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(record.clone());
///
/// AuditRecord::note(request.extensions(), || AuditNote::deny("ip-allowlist", "ip_denied"));
///
/// let notes = record.notes();
/// assert_eq!(notes[0].decision(), Decision::Deny);
/// assert_eq!(notes[0].reason_code(), Some("ip_denied"));
/// ```
#[derive(Clone, Default)]
pub struct AuditRecord(Arc<Mutex<RecordInner>>);

#[derive(Clone, Default)]
struct RecordInner {
    notes: Vec<AuditNote>,
    /// The client address the last layer to resolve one used.
    client_ip: Option<std::net::IpAddr>,
}

impl AuditRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `make()` to the record in `extensions`, if there is one.
    pub fn note(extensions: &http::Extensions, make: impl FnOnce() -> AuditNote) {
        if let Some(record) = extensions.get::<AuditRecord>() {
            record.push(make());
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, RecordInner> {
        // A panic elsewhere while holding this per-request lock leaves the notes intact.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a note.
    pub fn push(&self, note: AuditNote) {
        self.inner().notes.push(note);
    }

    /// A copy of the notes so far, in the order they were made.
    pub fn notes(&self) -> Vec<AuditNote> {
        self.inner().notes.clone()
    }

    /// Takes the notes, leaving the record empty.
    pub fn take(&self) -> Vec<AuditNote> {
        std::mem::take(&mut self.inner().notes)
    }

    /// Records the client address a layer resolved and acted on. Called by
    /// [`ClientIpResolver::resolve_request`](crate::ClientIpResolver::resolve_request);
    /// the last one wins, so the audit event names the address the innermost deciding
    /// layer used.
    pub fn set_client_ip(&self, ip: std::net::IpAddr) {
        self.inner().client_ip = Some(ip);
    }

    /// The client address the last resolving layer used, if any did.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.inner().client_ip
    }
}

impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuditRecord").field(&self.notes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_kept_in_order_and_shared_by_clones() {
        let record = AuditRecord::new();
        let mut ext = http::Extensions::new();
        ext.insert(record.clone());
        AuditRecord::note(&ext, || {
            AuditNote::allow("api-key")
                .principal_id("p")
                .credential_id("k1")
        });
        AuditRecord::note(&ext, || {
            AuditNote::deny("role-router", "forbidden").detail("rule 3")
        });
        let notes = record.notes();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].layer(), "api-key");
        assert_eq!(notes[0].credential(), Some("k1"));
        assert_eq!(notes[0].principal(), Some("p"));
        assert_eq!(notes[1].decision().as_str(), "deny");
        assert_eq!(notes[1].detail_text(), Some("rule 3"));
        assert_eq!(record.take().len(), 2);
        assert!(record.notes().is_empty());
    }

    #[test]
    fn a_note_shares_its_principal_and_rule_without_copying_them() {
        let principal = crate::Principal::builder("partner-acme", crate::AuthMethod::ApiKey)
            .credential_id("key-1")
            .build();
        let rule: Arc<str> = Arc::from("keys");
        let note = AuditNote::allow("api-key")
            .principal_of(&principal)
            .shared_rule(rule.clone());
        assert_eq!(note.principal(), Some("partner-acme"));
        assert_eq!(note.credential(), Some("key-1"));
        assert_eq!(note.rule_name(), Some("keys"));
        assert_eq!(Arc::strong_count(&rule), 2, "shared, not copied");
        let debug = format!("{note:?}");
        assert!(
            debug.contains("\"partner-acme\"") && debug.contains("\"keys\""),
            "{debug}"
        );
        // Ids set explicitly take precedence over the principal's.
        let explicit = note.clone().credential_id("key-2").principal_id("other");
        assert_eq!(explicit.credential(), Some("key-2"));
        assert_eq!(explicit.principal(), Some("other"));
        let anonymous = crate::Principal::builder("x", crate::AuthMethod::Jwt).build();
        assert_eq!(
            AuditNote::allow("jwt")
                .principal_of(&anonymous)
                .credential(),
            None
        );
    }

    #[test]
    fn nothing_is_built_without_a_record() {
        let ext = http::Extensions::new();
        AuditRecord::note(&ext, || unreachable!("the note must not be built"));
    }
}
