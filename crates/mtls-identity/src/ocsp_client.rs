//! An OCSP client over HTTP (feature `ocsp-http`): builds the RFC 6960 request, posts it
//! and verifies the signed answer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::asn1::{Null, OctetString};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Reader, SliceReader};
use portcullis_core::Clock;
use rustls_pki_types::SignatureVerificationAlgorithm;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, ExtendedKeyUsage};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest, Version,
};

use crate::certificate::CertificateError;
use crate::ocsp::{OcspAnswer, OcspCheck, OcspError, OcspFuture, OcspStatus};

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const ID_AD_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
const ID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_PE_AUTHORITY_INFO_ACCESS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");

/// How far a responder's clock may be from ours when judging `thisUpdate` and
/// `nextUpdate`.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// OCSP responses are small; anything larger is not one.
const MAX_RESPONSE: usize = 64 * 1024;

/// A certificate authority whose certificates the client asks about.
#[derive(Clone)]
struct Authority {
    subject: Vec<u8>,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    key: PublicKey,
}

/// A public key as signature verification needs it.
#[derive(Clone)]
struct PublicKey {
    /// The `AlgorithmIdentifier`'s contents, as rustls's algorithms name theirs.
    algorithm: Vec<u8>,
    bits: Vec<u8>,
}

/// Asks an OCSP responder over HTTP (RFC 6960 `POST`, `application/ocsp-request`) and
/// accepts only answers signed by the certificate's issuer or by a responder that
/// issuer delegated to (`id-kp-OCSPSigning`), that name the certificate, and that are
/// current. Signatures are checked with rustls's aws-lc-rs algorithms.
///
/// ```
/// use std::time::Duration;
/// use portcullis_mtls_identity::{Ocsp, OcspClient, MtlsIdentityLayer, ConnectorRegistry};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
/// # params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
/// # let client_ca_pem = params.self_signed(&rcgen::KeyPair::generate()?)?.pem();
/// let client = OcspClient::new(client_ca_pem.as_bytes())?
///     .responder("http://ocsp.plant.example")
///     .timeout(Duration::from_secs(2));
/// let layer = MtlsIdentityLayer::new(ConnectorRegistry::new()).ocsp(Ocsp::new(client).fail_open());
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OcspClient {
    authorities: Arc<Vec<Authority>>,
    responder: Option<String>,
    timeout: Duration,
    clock: Clock,
    /// One client, so queries share its connections and its TLS set-up.
    http: reqwest::Client,
}

impl fmt::Debug for OcspClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OcspClient")
            .field("issuers", &self.authorities.len())
            .field("responder", &self.responder)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OcspClient {
    /// A client for certificates issued by these CAs (PEM; intermediates included).
    /// The responder is the one each certificate names (its Authority Information
    /// Access), unless [`OcspClient::responder`] sets one.
    pub fn new(issuers_pem: &[u8]) -> Result<Self, CertificateError> {
        use rustls_pki_types::pem::PemObject;
        let mut authorities = Vec::new();
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(issuers_pem) {
            let der = der.map_err(|e| CertificateError::Pem {
                what: "the issuers' PEM",
                reason: e.to_string(),
            })?;
            let ca = Certificate::from_der(&der)
                .map_err(|e| CertificateError::UnusableIssuer(e.to_string()))?;
            authorities.push(authority(&ca)?);
        }
        if authorities.is_empty() {
            return Err(CertificateError::NoIssuers);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CertificateError::HttpClient(e.to_string()))?;
        Ok(Self {
            authorities: Arc::new(authorities),
            responder: None,
            timeout: Duration::from_secs(5),
            clock: Clock::system(),
            http,
        })
    }

    /// Asks this responder for every certificate, whatever the certificate names.
    pub fn responder(mut self, url: impl Into<String>) -> Self {
        self.responder = Some(url.into());
        self
    }

    /// How long one query may take (5 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock responses' validity is judged by.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    async fn query(&self, leaf: &[u8]) -> Result<OcspAnswer, OcspError> {
        let certificate =
            Certificate::from_der(leaf).map_err(|e| OcspError::Certificate(e.to_string()))?;
        let issuer_name = certificate
            .tbs_certificate
            .issuer
            .to_der()
            .map_err(|e| OcspError::Certificate(e.to_string()))?;
        let authority = self
            .authorities
            .iter()
            .find(|a| a.subject == issuer_name)
            .ok_or(OcspError::UnknownIssuer)?;
        let url = match &self.responder {
            Some(url) => url.clone(),
            None => responder_url(&certificate).ok_or(OcspError::NoResponder)?,
        };
        let cert_id = CertId {
            hash_algorithm: sha1_algorithm(),
            issuer_name_hash: octets(&authority.name_hash)?,
            issuer_key_hash: octets(&authority.key_hash)?,
            serial_number: certificate.tbs_certificate.serial_number.clone(),
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(|e| OcspError::Certificate(e.to_string()))?;

        let mut response = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(request)
            .send()
            .await
            .map_err(|e| OcspError::Unreachable(e.without_url().to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(OcspError::HttpStatus(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OcspError::Unreachable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(OcspError::Malformed(format!(
                    "larger than {MAX_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        verify_response(&body, &cert_id, authority, self.clock.now())
    }
}

impl OcspCheck for OcspClient {
    fn check<'a>(&'a self, leaf: &'a [u8]) -> OcspFuture<'a> {
        Box::pin(self.query(leaf))
    }
}

fn authority(ca: &Certificate) -> Result<Authority, CertificateError> {
    let subject = ca
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| CertificateError::UnusableIssuer(e.to_string()))?;
    let key = public_key(ca).map_err(CertificateError::UnusableIssuer)?;
    Ok(Authority {
        name_hash: sha1(&subject),
        key_hash: sha1(&key.bits),
        subject,
        key,
    })
}

fn public_key(certificate: &Certificate) -> Result<PublicKey, String> {
    let spki = &certificate.tbs_certificate.subject_public_key_info;
    Ok(PublicKey {
        algorithm: algorithm_contents(&spki.algorithm)?,
        bits: spki.subject_public_key.raw_bytes().to_vec(),
    })
}

/// An `AlgorithmIdentifier` without its SEQUENCE header, the form rustls compares.
fn algorithm_contents(algorithm: &AlgorithmIdentifierOwned) -> Result<Vec<u8>, String> {
    let mut contents = algorithm.oid.to_der().map_err(|e| e.to_string())?;
    if let Some(parameters) = &algorithm.parameters {
        contents.extend(parameters.to_der().map_err(|e| e.to_string())?);
    }
    Ok(contents)
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    // SHA-1 is what RFC 5019 responders index CertIDs by; it names, it does not sign.
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

fn sha1_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ID_SHA1,
        parameters: Some(Any::from(Null)),
    }
}

fn octets(bytes: &[u8]) -> Result<OctetString, OcspError> {
    OctetString::new(bytes).map_err(|e| OcspError::Certificate(e.to_string()))
}

/// The first `http` OCSP responder in the certificate's Authority Information Access.
fn responder_url(certificate: &Certificate) -> Option<String> {
    let extensions = certificate.tbs_certificate.extensions.as_ref()?;
    let aia = extensions
        .iter()
        .find(|e| e.extn_id == ID_PE_AUTHORITY_INFO_ACCESS)?;
    let aia = AuthorityInfoAccessSyntax::from_der(aia.extn_value.as_bytes()).ok()?;
    aia.0
        .iter()
        .find_map(|access| match &access.access_location {
            GeneralName::UniformResourceIdentifier(uri)
                if access.access_method == ID_AD_OCSP && uri.as_str().starts_with("http") =>
            {
                Some(uri.as_str().to_owned())
            }
            _ => None,
        })
}

/// Checks a responder's answer about `cert_id` and reads the status.
fn verify_response(
    bytes: &[u8],
    cert_id: &CertId,
    authority: &Authority,
    now: SystemTime,
) -> Result<OcspAnswer, OcspError> {
    let malformed = |e: &dyn fmt::Display| OcspError::Malformed(e.to_string());
    let response = OcspResponse::from_der(bytes).map_err(|e| malformed(&e))?;
    match response.response_status {
        OcspResponseStatus::Successful => {}
        OcspResponseStatus::MalformedRequest => return Err(OcspError::Refused("malformedRequest")),
        OcspResponseStatus::InternalError => return Err(OcspError::Refused("internalError")),
        OcspResponseStatus::TryLater => return Err(OcspError::Refused("tryLater")),
        OcspResponseStatus::SigRequired => return Err(OcspError::Refused("sigRequired")),
        OcspResponseStatus::Unauthorized => return Err(OcspError::Refused("unauthorized")),
    }
    let body = response
        .response_bytes
        .ok_or_else(|| malformed(&"a successful response without a body"))?;
    if body.response_type != ID_PKIX_OCSP_BASIC {
        return Err(malformed(&"not a basic OCSP response"));
    }
    let basic_der = body.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der).map_err(|e| malformed(&e))?;
    // The signature covers the bytes as sent, not a re-encoding of what was decoded.
    let signed = first_element(basic_der).map_err(|e| malformed(&e))?;
    let signature = basic
        .signature
        .as_bytes()
        .ok_or_else(|| malformed(&"the signature has unused bits"))?;
    let signature_algorithm =
        algorithm_contents(&basic.signature_algorithm).map_err(|e| malformed(&e))?;

    let by_issuer = verify_signature(&authority.key, &signature_algorithm, signed, signature);
    let by_delegate = || {
        basic.certs.iter().flatten().any(|delegate| {
            is_delegate(delegate, authority, now)
                && public_key(delegate).is_ok_and(|key| {
                    verify_signature(&key, &signature_algorithm, signed, signature)
                })
        })
    };
    if !by_issuer && !by_delegate() {
        return Err(OcspError::BadSignature);
    }

    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|single| same_certificate(&single.cert_id, cert_id))
        .ok_or(OcspError::NotAnswered)?;
    if single.this_update.0.to_system_time() > now + CLOCK_SKEW {
        return Err(OcspError::Stale);
    }
    let next_update = single.next_update.map(|t| t.0.to_system_time());
    if next_update.is_some_and(|next| next + CLOCK_SKEW < now) {
        return Err(OcspError::Stale);
    }
    let status = match single.cert_status {
        CertStatus::Good(_) => OcspStatus::Good,
        CertStatus::Revoked(_) => OcspStatus::Revoked,
        CertStatus::Unknown(_) => OcspStatus::Unknown,
    };
    Ok(OcspAnswer {
        status,
        next_update,
    })
}

/// The first element of a DER SEQUENCE, header included: the signed part.
fn first_element(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let header = der::Header::decode(&mut reader)?;
    if header.tag != der::Tag::Sequence {
        return Err(der::ErrorKind::TagUnexpected {
            expected: Some(der::Tag::Sequence),
            actual: header.tag,
        }
        .into());
    }
    reader.tlv_bytes()
}

/// A responder certificate the issuer signed for OCSP signing (RFC 6960 §4.2.2.2), and
/// valid now.
fn is_delegate(delegate: &Certificate, authority: &Authority, now: SystemTime) -> bool {
    let tbs = &delegate.tbs_certificate;
    if tbs.issuer.to_der().ok().as_deref() != Some(authority.subject.as_slice()) {
        return false;
    }
    let validity = &tbs.validity;
    if now < validity.not_before.to_system_time() || now > validity.not_after.to_system_time() {
        return false;
    }
    let for_ocsp = tbs.extensions.iter().flatten().any(|extension| {
        extension.extn_id == ID_CE_EXT_KEY_USAGE
            && ExtendedKeyUsage::from_der(extension.extn_value.as_bytes())
                .is_ok_and(|eku| eku.0.contains(&ID_KP_OCSP_SIGNING))
    });
    if !for_ocsp {
        return false;
    }
    let (Ok(signed), Ok(algorithm)) = (
        tbs.to_der(),
        algorithm_contents(&delegate.signature_algorithm),
    ) else {
        return false;
    };
    delegate
        .signature
        .as_bytes()
        .is_some_and(|signature| verify_signature(&authority.key, &algorithm, &signed, signature))
}

fn verify_signature(key: &PublicKey, algorithm: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|candidate: &&&dyn SignatureVerificationAlgorithm| {
            candidate.public_key_alg_id().as_ref() == key.algorithm.as_slice()
                && candidate.signature_alg_id().as_ref() == algorithm
        })
        .any(|candidate| {
            candidate
                .verify_signature(&key.bits, message, signature)
                .is_ok()
        })
}

fn same_certificate(answered: &CertId, asked: &CertId) -> bool {
    answered.hash_algorithm.oid == asked.hash_algorithm.oid
        && answered.issuer_name_hash == asked.issuer_name_hash
        && answered.issuer_key_hash == asked.issuer_key_hash
        && answered.serial_number == asked.serial_number
}
