//! Online revocation checks (OCSP, RFC 6960): what the layer asks and what it is told.
//! The HTTP client that asks a responder is in `ocsp_client` (feature `ocsp-http`).

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

/// What a responder says of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    /// Not revoked.
    Good,
    /// Revoked.
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
}

/// A verified answer about one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OcspAnswer {
    /// The certificate's status.
    pub status: OcspStatus,
    /// Until when the answer holds (the response's `nextUpdate`), if the responder said.
    pub next_update: Option<SystemTime>,
}

/// Why an OCSP check gave no answer. The layer's failure policy decides what follows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The certificate could not be read.
    #[error("OCSP: unreadable certificate: {0}")]
    Certificate(String),
    /// None of the configured issuers issued the certificate.
    #[error("OCSP: no configured issuer issued the certificate; give OcspClient::new the CAs (and intermediates) that issue client certificates")]
    UnknownIssuer,
    /// No responder URL was configured and the certificate names none.
    #[error("OCSP: the certificate names no responder; set OcspClient::responder(url)")]
    NoResponder,
    /// The responder could not be reached, or took too long.
    #[error("OCSP: the responder is unreachable: {0}")]
    Unreachable(String),
    /// The responder answered with an HTTP status other than 200.
    #[error("OCSP: the responder answered HTTP {0}")]
    HttpStatus(u16),
    /// The responder refused the request (`malformedRequest`, `tryLater`, …).
    #[error("OCSP: the responder answered {0}")]
    Refused(&'static str),
    /// The answer is not a well-formed basic OCSP response.
    #[error("OCSP: malformed response: {0}")]
    Malformed(String),
    /// Neither the issuer nor a responder it delegated to signed the answer.
    #[error("OCSP: the response is not signed by the issuer or a responder it authorised")]
    BadSignature,
    /// The answer does not speak of this certificate.
    #[error("OCSP: the response does not cover the certificate")]
    NotAnswered,
    /// The answer is from the future or past its `nextUpdate`.
    #[error("OCSP: the response is outside its validity window")]
    Stale,
}

/// A boxed future of an OCSP answer.
pub type OcspFuture<'a> = Pin<Box<dyn Future<Output = Result<OcspAnswer, OcspError>> + Send + 'a>>;

/// Tells the revocation status of a client certificate. `OcspClient` (feature `ocsp-http`) asks an OCSP
/// responder over HTTP; a host can implement this to ask something else (a database of
/// its own, a responder reached another way). The layer caches answers and applies its
/// failure policy; implementations only answer.
pub trait OcspCheck: Send + Sync + 'static {
    /// The status of `leaf`, a DER certificate the TLS stack (or a trusted proxy)
    /// verified.
    fn check<'a>(&'a self, leaf: &'a [u8]) -> OcspFuture<'a>;
}
