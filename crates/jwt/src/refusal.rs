//! Why a token was refused, and how the refusal reads to the client.

use std::fmt;

use http::HeaderValue;
use portcullis_core::Rejection;

use crate::token::Malformed;

/// Why the layer (or the extend service) refused a request. [`code`](Self::code) is what
/// the client sees; [`reason`](Self::reason) is for logs and audit notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtRefusal {
    /// No token, in required mode.
    Missing,
    /// The token could not be read.
    Malformed(Malformed),
    /// The header names an algorithm no key of the issuer takes (`none` among them).
    AlgorithmNotAccepted,
    /// The header lists critical extensions (`crit`), none of which this layer
    /// understands.
    CriticalHeader,
    /// The header's `typ` is not one the issuer requires.
    WrongType,
    /// `iss` names no trusted issuer.
    InvalidIssuer,
    /// The `kid` names no key of the issuer, even after a refresh.
    UnknownKey,
    /// The issuer's keys have never been loaded (its key server has not answered yet),
    /// or every refresh has failed for longer than the issuer's maximum key age.
    KeysUnavailable,
    /// The signature does not verify.
    InvalidSignature,
    /// No `exp`.
    MissingExpiry,
    /// At or past `exp` plus leeway.
    Expired,
    /// Before `nbf`, or `iat` in the future, beyond leeway.
    NotYetValid,
    /// `aud` missing or naming none of the accepted audiences.
    InvalidAudience,
    /// No usable subject, a claim the layer maps (roles, scopes, attributes, tier) of the
    /// wrong type or with a character it may not hold, or the host's claims type does
    /// not fit the token.
    InvalidClaims,
    /// The token's `jti` is revoked.
    Revoked,
    /// A certificate-bound token on a connection with another client certificate.
    CertificateMismatch,
    /// A certificate-bound token on a connection without any client certificate.
    CertificateRequired,
    /// The subject's account is blocked.
    AccountDisabled,
    /// The subject's account no longer exists.
    UnknownAccount,
    /// The account check failed.
    AccountCheckUnavailable,
    /// The API key or client certificate the token was issued to has been revoked,
    /// removed, or its connector blocked: the session ended with its credential.
    CredentialRevoked,
    /// The credential check failed.
    CredentialCheckUnavailable,
    /// The revocation list cannot answer: an extension's revocation of the old token
    /// could not be kept (the journal cannot be written), or the list shared through
    /// Redis has been unreadable for a while and its policy refuses meanwhile.
    RevocationUnavailable,
    /// The token lacks a scope the layer requires.
    InsufficientScope,
    /// Another layer already put a JWT principal on the request.
    DuplicatePrincipal,
}

impl JwtRefusal {
    /// The stable code in the response.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Malformed(_) => "malformed_token",
            Self::AlgorithmNotAccepted => "invalid_algorithm",
            Self::CriticalHeader => "unsupported_critical_header",
            Self::WrongType => "invalid_token_type",
            Self::InvalidIssuer => "invalid_issuer",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::InvalidSignature => "invalid_signature",
            Self::MissingExpiry | Self::InvalidClaims => "invalid_claims",
            Self::Expired => "expired_token",
            Self::NotYetValid => "token_not_yet_valid",
            Self::InvalidAudience => "invalid_audience",
            Self::Revoked => "revoked_token",
            Self::CertificateMismatch => "certificate_mismatch",
            Self::CertificateRequired => "certificate_required",
            Self::AccountDisabled => "account_disabled",
            Self::UnknownAccount => "unknown_account",
            Self::AccountCheckUnavailable => "account_check_unavailable",
            Self::CredentialRevoked => "credential_revoked",
            Self::CredentialCheckUnavailable => "credential_check_unavailable",
            Self::RevocationUnavailable => "revocation_unavailable",
            Self::InsufficientScope => "insufficient_scope",
            Self::DuplicatePrincipal => "duplicate_authentication",
        }
    }

    /// The precise reason, for logs and audit notes.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no bearer token",
            Self::Malformed(why) => why.as_str(),
            Self::AlgorithmNotAccepted => "the token's alg is not one the issuer's keys take",
            Self::CriticalHeader => "the header lists critical extensions",
            Self::WrongType => "the header's typ is not the one required",
            Self::InvalidIssuer => "iss names no trusted issuer",
            Self::UnknownKey => "kid names no key of the issuer",
            Self::KeysUnavailable => {
                "the issuer's keys have not been loaded, or are older than the maximum key age"
            }
            Self::InvalidSignature => "the signature does not verify",
            Self::MissingExpiry => "no exp claim",
            Self::Expired => "past exp",
            Self::NotYetValid => "before nbf, or iat in the future",
            Self::InvalidAudience => "aud names no accepted audience",
            Self::InvalidClaims => {
                "no usable subject, a mapped claim of the wrong type or with a bad character, or claims that do not fit the host's type"
            }
            Self::Revoked => "jti is revoked",
            Self::CertificateMismatch => "cnf x5t#S256 does not match the client certificate",
            Self::CertificateRequired => "cnf x5t#S256 is set and the connection has no client certificate",
            Self::AccountDisabled => "the subject's account is blocked",
            Self::UnknownAccount => "the subject's account does not exist",
            Self::AccountCheckUnavailable => "the account check failed",
            Self::CredentialRevoked => {
                "the credential the token was issued to is revoked, removed or blocked"
            }
            Self::CredentialCheckUnavailable => "the credential check failed",
            Self::RevocationUnavailable => {
                "the revocation list cannot answer or cannot keep a revocation"
            }
            Self::InsufficientScope => "a required scope is missing",
            Self::DuplicatePrincipal => "a JWT principal was already present",
        }
    }

    /// The sentence the client reads in `detail` and `error_description`.
    fn description(self) -> &'static str {
        match self {
            Self::Missing => "this request needs a bearer token",
            Self::Malformed(_) => "the bearer token is malformed",
            Self::AlgorithmNotAccepted => "the token's signing algorithm is not accepted",
            Self::CriticalHeader => {
                "the token uses critical header extensions this server does not support"
            }
            Self::WrongType => "the token is not of the accepted type",
            Self::InvalidIssuer => "the token's issuer is not trusted",
            Self::UnknownKey => "the token was signed with an unknown key",
            Self::KeysUnavailable => "the token issuer's keys are not available; try again later",
            Self::InvalidSignature => "the token's signature is invalid",
            Self::MissingExpiry => "the token has no expiry",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::InvalidAudience => "the token is not meant for this service",
            Self::InvalidClaims => "the token's claims are not acceptable",
            Self::Revoked => "the token has been revoked",
            Self::CertificateMismatch => "the token is bound to another client certificate",
            Self::CertificateRequired => {
                "the token is bound to a client certificate; send it over a connection with that certificate"
            }
            Self::AccountDisabled => "the account is disabled",
            Self::UnknownAccount => "the account does not exist",
            Self::AccountCheckUnavailable => {
                "the account cannot be checked right now; try again later"
            }
            Self::CredentialRevoked => {
                "the credential this token was issued to is no longer valid; authenticate again"
            }
            Self::CredentialCheckUnavailable => {
                "the token's credential cannot be checked right now; try again later"
            }
            Self::RevocationUnavailable => {
                "the token cannot be extended right now; try again later"
            }
            Self::InsufficientScope => "the token does not carry the scope this request needs",
            Self::DuplicatePrincipal => "the server is misconfigured: two JWT layers ran",
        }
    }

    /// The refusal as a [`Rejection`], with the RFC 6750 challenge for 401 and 403.
    pub fn to_rejection(self, realm: &str, required_scopes: &str) -> Rejection {
        let challenge = |error: Option<&str>| {
            let mut value = format!("Bearer realm=\"{realm}\"");
            if let Some(error) = error {
                value.push_str(&format!(
                    ", error=\"{error}\", error_description=\"{}\"",
                    self.description()
                ));
            }
            if self == Self::InsufficientScope && !required_scopes.is_empty() {
                value.push_str(&format!(", scope=\"{required_scopes}\""));
            }
            HeaderValue::try_from(value).ok()
        };
        let with = |rejection: Rejection, error: Option<&str>| match challenge(error) {
            Some(value) => rejection.with_www_authenticate(value),
            None => rejection,
        };
        match self {
            // RFC 6750 3.1: a request without credentials gets no error code.
            Self::Missing => with(
                Rejection::unauthorized(self.code(), self.description()),
                None,
            ),
            Self::InsufficientScope => with(
                Rejection::forbidden(self.code(), self.description()),
                Some("insufficient_scope"),
            ),
            Self::KeysUnavailable
            | Self::AccountCheckUnavailable
            | Self::CredentialCheckUnavailable
            | Self::RevocationUnavailable => {
                Rejection::unavailable(self.code(), self.description())
            }
            Self::DuplicatePrincipal => Rejection::internal(self.code(), self.description()),
            _ => with(
                Rejection::unauthorized(self.code(), self.description()),
                Some("invalid_token"),
            ),
        }
    }
}

impl fmt::Display for JwtRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn challenges_follow_rfc_6750() {
        let missing = JwtRefusal::Missing.to_rejection("api", "");
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.www_authenticate().unwrap(), "Bearer realm=\"api\"");

        let expired = JwtRefusal::Expired.to_rejection("api", "");
        assert_eq!(
            expired.www_authenticate().unwrap(),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\""
        );

        let scope = JwtRefusal::InsufficientScope.to_rejection("api", "keys:write");
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
        let value = scope.www_authenticate().unwrap().to_str().unwrap();
        assert!(
            value.contains("error=\"insufficient_scope\"")
                && value.contains("scope=\"keys:write\"")
        );

        let down = JwtRefusal::AccountCheckUnavailable.to_rejection("api", "");
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
