//! One trustworthy audit event per request: who called what, when, from where, and
//! why it was allowed or refused.
//!
//! [`AuditLayer`] goes outermost. It gives the request an
//! [`AuditRecord`](portcullis_core::AuditRecord) that every Portcullis layer inside
//! writes its decision into, and when the response is ready (or the service fails,
//! panics, or the request is dropped) it writes one [`AuditEvent`]: time, request id,
//! client IP, method, path, the matched route rule, each principal (id and credential
//! id, never a secret), the decision with the refusing layer and its code, status,
//! latency and user agent.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use portcullis_audit::{AuditLayer, MemorySink};
//! use portcullis_core::{AuditNote, AuditRecord};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sink = MemorySink::new();
//! let service = ServiceBuilder::new()
//!     .layer(AuditLayer::new().sink(sink.clone()))
//!     .service(service_fn(|request: Request<()>| async move {
//!         // Any layer inside notes its decision.
//!         AuditRecord::note(request.extensions(), || {
//!             AuditNote::allow("api-key").principal_id("partner-acme").credential_id("key-1")
//!         });
//!         Ok::<_, Infallible>(Response::new(()))
//!     }));
//!
//! # futures::executor::block_on(async {
//! let request = Request::get("/v1/key?secret=x").header("x-request-id", "req-42").body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["x-request-id"], "req-42");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//!
//! let event = &sink.events()[0];
//! assert_eq!(event["request_id"], "req-42");
//! assert_eq!(event["path"], "/v1/key"); // no query string unless asked for
//! assert_eq!(event["decision"], "allow");
//! assert_eq!(event["principals"][0]["id"], "partner-acme");
//! # Ok(())
//! # }
//! ```
//!
//! # Sinks
//!
//! - `tracing`: an event with target `portcullis::audit` (INFO when allowed, WARN
//!   otherwise) for whatever subscriber the host runs. On by default.
//! - [`FileSink`]: JSON lines, daily or size rotation, written by a background thread;
//!   [`Overflow::Block`] (lossless) or [`Overflow::Drop`] (counted, and the count is
//!   itself written to the file); optionally sealed in a SHA-256 hash chain that
//!   [`verify_files`] and `portcullis audit verify` check.
//! - [`MemorySink`], or any [`AuditSink`] of the host's.
//!
//! # What is never recorded
//!
//! No header but the user agent, so `Authorization`, `X-API-KEY`, `X-Auth-Token`,
//! cookies and forwarded client certificates cannot leak into the audit trail. The
//! query string only when the host asks ([`AuditLayer::log_query`]), with the values of
//! sensitive parameters redacted.
//!
//! # Levels
//!
//! [`AuditLevel::All`] (the default), [`AuditLevel::RefusalsOnly`], or
//! [`AuditLevel::RefusalsAndSample`]. Refusals, errors, drops and panics are always
//! recorded.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod chain;
mod event;
mod file;
mod layer;
mod operation;
mod redact;
mod sink;
#[cfg(test)]
mod tests;

pub use chain::{verify_files, ChainBreak, ChainProblem, ChainReport, VerifyError, GENESIS};
pub use event::{AuditEvent, Outcome, PrincipalEntry};
pub use file::{FileSink, FileSinkBuilder, Overflow, Rotation};
pub use layer::{Audit, AuditLayer, AuditLevel, ResponseFuture};
pub use operation::OperationEvent;
pub use sink::{AuditSink, MemorySink};
