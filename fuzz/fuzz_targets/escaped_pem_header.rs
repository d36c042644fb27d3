//! A URL-escaped PEM certificate header (nginx's `$ssl_client_escaped_cert`) from a
//! trusted proxy through `MtlsIdentityLayer`.
//!
//! In the input, `CERT` stands for the registered certificate's URL-escaped PEM, `PEM`
//! for its plain PEM and `B64` for its base64 body, so the fuzzer reaches the allow path
//! and the variations around it.
//!
//! Invariants: no panic; never a 5xx; a request is allowed only when the value,
//! URL-decoded, is exactly one `CERTIFICATE` block (surrounding whitespace aside) whose
//! body is the registered certificate, as the checker's own reader says.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::PeerAddr;
use portcullis_mtls_identity::{
    ClientCertificate, Connector, ConnectorRegistry, ForwardedCertificate, MtlsIdentityLayer,
};
use tower::{Layer, ServiceExt};

const PEM: &str = include_str!("../data/client.pem");
const HEADER: &str = "x-ssl-client-cert";

struct Setup {
    layer: MtlsIdentityLayer,
    der: Vec<u8>,
    escaped: String,
    body: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let body: String = PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(&body).unwrap();
        let thumbprint = ClientCertificate::from_der(&der).unwrap().thumbprint();
        let registry = ConnectorRegistry::from_connectors([
            Connector::new("connector-7").thumbprint(thumbprint)
        ])
        .unwrap();
        let layer = MtlsIdentityLayer::new(registry).forwarded(ForwardedCertificate::escaped_pem(
            HeaderName::from_static(HEADER),
            "127.0.0.0/8".parse().unwrap(),
        ));
        Setup {
            layer,
            der,
            escaped: percent_encoding::utf8_percent_encode(PEM, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            body,
        }
    })
}

/// The checker's reading: one `CERTIFICATE` block, nothing but whitespace around it,
/// base64 lines inside; the DER it holds.
fn exactly_one_certificate(value: &str) -> Option<Vec<u8>> {
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8().ok()?;
    let text = decoded.trim_matches(|c: char| c.is_ascii_whitespace());
    let inner = text
        .strip_prefix("-----BEGIN CERTIFICATE-----")?
        .strip_suffix("-----END CERTIFICATE-----")?;
    if inner.contains("-----") {
        return None;
    }
    let body: String = inner.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let text = String::from_utf8_lossy(data)
        .replace("CERT", &setup.escaped)
        .replace("PEM", PEM)
        .replace("B64", &setup.body);
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr("127.0.0.1:5000".parse().unwrap()));
    // Several lines when the text holds a 0x00: each part is one header line.
    for line in text.split('\0') {
        let Ok(value) = HeaderValue::from_str(line) else {
            return;
        };
        request.headers_mut().append(HEADER, value);
    }
    let lines = request.headers().get_all(HEADER).iter().count();
    let inner = tower::service_fn(|request: Request<()>| async move {
        // The handler never sees the proxy's header.
        assert!(request.headers().get(HEADER).is_none());
        Ok::<_, std::convert::Infallible>(Response::new(()))
    });
    let response = futures::executor::block_on(setup.layer.layer(inner).oneshot(request)).unwrap();
    assert!(!response.status().is_server_error(), "{}", response.status());
    if response.status() == StatusCode::OK {
        assert_eq!(lines, 1, "allowed with {lines} header lines");
        assert_eq!(
            exactly_one_certificate(&text).as_deref(),
            Some(setup.der.as_slice()),
            "allowed a value that is not exactly the registered certificate"
        );
    }
});
