//! A client certificate as the identity layer reads it, and the verified chain the TLS
//! plumbing hands each request.

use std::fmt;

use portcullis_core::ClientCertThumbprint;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate could not be read (or, for `DevPki` of feature `dev-pki`, made).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Not a DER X.509 certificate: the parser's reason.
    #[error("unreadable certificate: {0}")]
    Malformed(String),
    /// Bytes after the certificate's DER.
    #[error("unreadable certificate: trailing bytes after the certificate")]
    TrailingBytes,
    /// A PEM bundle that could not be read; `what` names it.
    #[error("unreadable certificate: {what}: {reason}")]
    Pem {
        /// Which bundle.
        what: &'static str,
        /// The reader's reason.
        reason: String,
    },
    /// An issuer certificate given for OCSP whose name or key cannot be used.
    #[error("unusable issuer certificate: {0}")]
    UnusableIssuer(String),
    /// No issuer certificate in the PEM given for OCSP.
    #[error("OCSP needs the CAs that issue client certificates, PEM")]
    NoIssuers,
    /// The OCSP client's HTTP client could not start.
    #[error("OCSP: cannot start the HTTP client: {0}")]
    HttpClient(String),
    /// A development certificate could not be made; `what` names it.
    #[error("cannot make {what}: {reason}")]
    Generate {
        /// Which certificate or key.
        what: &'static str,
        /// The generator's reason.
        reason: String,
    },
}

/// What the extended key usage extension allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUsage {
    /// No extended key usage extension: RFC 5280 allows any use.
    Unrestricted,
    /// `clientAuth` (or `anyExtendedKeyUsage`) is listed.
    ClientAuth,
    /// The extension lists other uses only: a server's certificate, a sensor's.
    Other,
}

/// A client certificate, parsed once: what the layer decides on.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    thumbprint: ClientCertThumbprint,
    common_name: Option<String>,
    dns_names: Vec<String>,
    uris: Vec<String>,
    emails: Vec<String>,
    key_usage: KeyUsage,
    not_before: i64,
    not_after: i64,
    serial: Vec<u8>,
    issuer: Vec<u8>,
}

impl ClientCertificate {
    /// Parses a DER certificate. Its thumbprint is the SHA-256 of these bytes.
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| CertificateError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertificateError::TrailingBytes);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut thumbprint = [0u8; 32];
        thumbprint.copy_from_slice(digest.as_ref());
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let (mut dns_names, mut uris, mut emails) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::RFC822Name(email) => emails.push((*email).to_owned()),
                    _ => {}
                }
            }
        }
        let key_usage = match cert.extended_key_usage() {
            Ok(None) => KeyUsage::Unrestricted,
            Ok(Some(eku)) if eku.value.client_auth || eku.value.any => KeyUsage::ClientAuth,
            Ok(Some(_)) => KeyUsage::Other,
            // A malformed or duplicated extension grants nothing.
            Err(_) => KeyUsage::Other,
        };
        let validity = cert.validity();
        Ok(Self {
            thumbprint: ClientCertThumbprint::from_bytes(thumbprint),
            common_name,
            dns_names,
            uris,
            emails,
            key_usage,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: cert.raw_serial().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }

    /// The SHA-256 thumbprint.
    pub fn thumbprint(&self) -> ClientCertThumbprint {
        self.thumbprint
    }

    /// The subject's first common name.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// DNS names among the subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// URIs among the subject alternative names (SPIFFE ids among them).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// E-mail addresses among the subject alternative names.
    pub fn emails(&self) -> &[String] {
        &self.emails
    }

    /// What the extended key usage allows.
    pub fn key_usage(&self) -> KeyUsage {
        self.key_usage
    }

    /// `notBefore`, seconds since the epoch.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// `notAfter`, seconds since the epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The serial number's bytes, as encoded.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The issuer's distinguished name, DER.
    pub(crate) fn issuer_der(&self) -> &[u8] {
        &self.issuer
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("thumbprint", &self.thumbprint)
            .field("common_name", &self.common_name)
            .field("dns_names", &self.dns_names)
            .field("uris", &self.uris)
            .field("key_usage", &self.key_usage)
            .finish_non_exhaustive()
    }
}
