//! An OCSP responder (RFC 6960 over HTTP POST) on 127.0.0.1 for the tests: it decodes
//! real requests, answers from a table of serial numbers, signs with the key it is
//! given, and can be told to misbehave in each way a client must refuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use der::asn1::{BitString, OctetString};
use der::{Decode, Encode};
use portcullis::core::Clock;
use rcgen::{KeyPair, SigningKey};
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};

/// What the responder says of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Good,
    Revoked,
    Unknown,
}

/// Ways to be a bad responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Misbehave {
    Not,
    /// HTTP 500.
    HttpError,
    /// A `tryLater` OCSP status.
    TryLater,
    /// Bytes that are not OCSP.
    Garbage,
    /// A good answer about another serial number.
    WrongSerial,
    /// One byte of the signature changed.
    BadSignature,
    /// An answer whose `nextUpdate` passed an hour ago.
    Stale,
    /// Answers after this long.
    Slow(Duration),
}

struct Table {
    statuses: HashMap<Vec<u8>, Status>,
    next_update: Option<Duration>,
    misbehave: Misbehave,
}

struct Signer {
    key: KeyPair,
    /// Certificates sent along (a delegated responder's own).
    certs: Vec<Vec<u8>>,
}

#[derive(Clone)]
struct Shared {
    table: Arc<Mutex<Table>>,
    signer: Arc<Signer>,
    clock: Clock,
    queries: Arc<AtomicUsize>,
}

/// A running responder.
pub(crate) struct Responder {
    pub(crate) url: String,
    shared: Shared,
}

impl Responder {
    /// Starts a responder signing with `key`, sending `certs` along; unknown serials are
    /// `Unknown`, answers hold for 10 minutes after the clock's now.
    pub(crate) async fn start(key: KeyPair, certs: Vec<Vec<u8>>, clock: Clock) -> Self {
        let shared = Shared {
            table: Arc::new(Mutex::new(Table {
                statuses: HashMap::new(),
                next_update: Some(Duration::from_secs(600)),
                misbehave: Misbehave::Not,
            })),
            signer: Arc::new(Signer { key, certs }),
            clock,
            queries: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/", post(answer))
            .with_state(shared.clone());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = tcp.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/"),
            shared,
        }
    }

    /// Sets the status of the certificate `pem`.
    pub(crate) fn set(&self, pem: &str, status: Status) {
        let serial = serial_of(pem);
        self.shared
            .table
            .lock()
            .unwrap()
            .statuses
            .insert(serial, status);
    }

    pub(crate) fn next_update(&self, next_update: Option<Duration>) {
        self.shared.table.lock().unwrap().next_update = next_update;
    }

    pub(crate) fn misbehave(&self, misbehave: Misbehave) {
        self.shared.table.lock().unwrap().misbehave = misbehave;
    }

    /// How many requests it answered.
    pub(crate) fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

fn serial_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let certificate = Certificate::from_der(&der).unwrap();
    certificate
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec()
}

fn ocsp_response(bytes: Vec<u8>) -> axum::response::Response {
    axum::response::Response::builder()
        .header("content-type", "application/ocsp-response")
        .body(axum::body::Body::from(bytes))
        .unwrap()
}

async fn answer(State(shared): State<Shared>, body: Bytes) -> axum::response::Response {
    shared.queries.fetch_add(1, Ordering::SeqCst);
    let Ok(request) = OcspRequest::from_der(&body) else {
        return ocsp_response(OcspResponse::malformed_request().to_der().unwrap());
    };
    let (statuses, next_update, misbehave) = {
        let table = shared.table.lock().unwrap();
        (table.statuses.clone(), table.next_update, table.misbehave)
    };
    match misbehave {
        Misbehave::HttpError => {
            return axum::response::Response::builder()
                .status(500)
                .body(axum::body::Body::empty())
                .unwrap()
        }
        Misbehave::TryLater => return ocsp_response(OcspResponse::try_later().to_der().unwrap()),
        Misbehave::Garbage => return ocsp_response(b"this is not OCSP".to_vec()),
        Misbehave::Slow(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let now = shared.clock.now();
    let (this_update, next_update) = match misbehave {
        Misbehave::Stale => (
            now - Duration::from_secs(7200),
            Some(now - Duration::from_secs(3600)),
        ),
        _ => (now, next_update.map(|d| now + d)),
    };
    let time = |t| OcspGeneralizedTime::try_from(t).unwrap();
    let responses = request
        .tbs_request
        .request_list
        .iter()
        .map(|asked| {
            let mut cert_id = asked.req_cert.clone();
            let status = statuses
                .get(cert_id.serial_number.as_bytes())
                .copied()
                .unwrap_or(Status::Unknown);
            if misbehave == Misbehave::WrongSerial {
                cert_id.serial_number =
                    x509_cert::serial_number::SerialNumber::new(&[0x7f, 1, 2, 3]).unwrap();
            }
            SingleResponse {
                cert_id,
                cert_status: match status {
                    Status::Good => CertStatus::good(),
                    Status::Revoked => CertStatus::revoked(RevokedInfo {
                        revocation_time: time(now - Duration::from_secs(60)),
                        revocation_reason: None,
                    }),
                    Status::Unknown => CertStatus::unknown(),
                },
                this_update: time(this_update),
                next_update: next_update.map(time),
                single_extensions: None,
            }
        })
        .collect();
    let key_hash = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        shared.signer.key.public_key_raw(),
    );
    let data = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(key_hash.as_ref()).unwrap()),
        produced_at: time(now),
        responses,
        response_extensions: None,
    };
    let mut signature = shared.signer.key.sign(&data.to_der().unwrap()).unwrap();
    if misbehave == Misbehave::BadSignature {
        let last = signature.len() - 2;
        signature[last] ^= 0x01;
    }
    let certs = (!shared.signer.certs.is_empty()).then(|| {
        shared
            .signer
            .certs
            .iter()
            .map(|der| Certificate::from_der(der).unwrap())
            .collect()
    });
    let basic = BasicOcspResponse {
        tbs_response_data: data,
        signature_algorithm: AlgorithmIdentifierOwned {
            // ecdsa-with-SHA256: rcgen's default keys are P-256.
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(&signature).unwrap(),
        certs,
    };
    ocsp_response(OcspResponse::successful(basic).unwrap().to_der().unwrap())
}
