//! Online revocation checks (OCSP, RFC 6960): what the layer asks and what it is told.
//! The HTTP client that asks a responder is in `ocsp_client` (feature `ocsp-http`).

use std::fmt;
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
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspError {
    /// The certificate could not be read.
    Certificate(String),
    /// None of the configured issuers issued the certificate.
    UnknownIssuer,
    /// No responder URL was configured and the certificate names none.
    NoResponder,
    /// The responder could not be reached, or took too long.
    Unreachable(String),
    /// The responder answered with an HTTP status other than 200.
    HttpStatus(u16),
    /// The responder refused the request (`malformedRequest`, `tryLater`, …).
    Refused(&'static str),
    /// The answer is not a well-formed basic OCSP response.
    Malformed(String),
    /// Neither the issuer nor a responder it delegated to signed the answer.
    BadSignature,
    /// The answer does not speak of this certificate.
    NotAnswered,
    /// The answer is from the future or past its `nextUpdate`.
    Stale,
}

impl fmt::Display for OcspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(why) => write!(f, "OCSP: unreadable certificate: {why}"),
            Self::UnknownIssuer => write!(
                f,
                "OCSP: no configured issuer issued the certificate; give OcspClient::new the CAs (and intermediates) that issue client certificates"
            ),
            Self::NoResponder => write!(
                f,
                "OCSP: the certificate names no responder; set OcspClient::responder(url)"
            ),
            Self::Unreachable(why) => write!(f, "OCSP: the responder is unreachable: {why}"),
            Self::HttpStatus(status) => write!(f, "OCSP: the responder answered HTTP {status}"),
            Self::Refused(status) => write!(f, "OCSP: the responder answered {status}"),
            Self::Malformed(why) => write!(f, "OCSP: malformed response: {why}"),
            Self::BadSignature => write!(
                f,
                "OCSP: the response is not signed by the issuer or a responder it authorised"
            ),
            Self::NotAnswered => write!(f, "OCSP: the response does not cover the certificate"),
            Self::Stale => write!(f, "OCSP: the response is outside its validity window"),
        }
    }
}

impl std::error::Error for OcspError {}

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
