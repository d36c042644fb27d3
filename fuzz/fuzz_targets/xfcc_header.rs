//! Envoy `X-Forwarded-Client-Cert` values from a trusted proxy through
//! `MtlsIdentityLayer`.
//!
//! In the input, `CERT` stands for the registered certificate's URL-escaped PEM and
//! `HASH` for its SHA-256 in hex, so the fuzzer reaches the allow path.
//!
//! Invariants: no panic; never a 5xx; a request is allowed only when the last element's
//! `Cert` is the registered certificate and its `Hash`, if any, is that certificate's.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{AuthMethod, Authentication, PeerAddr};
use portcullis_mtls_identity::{
    ClientCertificate, Connector, ConnectorRegistry, ForwardedCertificate, MtlsIdentityLayer,
};
use tower::{Layer, ServiceExt};

const PEM: &str = include_str!("../data/client.pem");

struct Setup {
    layer: MtlsIdentityLayer,
    escaped: String,
    hash: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let der = pem_der(PEM);
        let thumbprint = ClientCertificate::from_der(&der).unwrap().thumbprint();
        let registry = ConnectorRegistry::from_connectors([
            Connector::new("connector-7").thumbprint(thumbprint)
        ])
        .unwrap();
        let layer = MtlsIdentityLayer::new(registry)
            .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()));
        Setup {
            layer,
            escaped: percent_encoding::utf8_percent_encode(PEM, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            hash: hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref()),
        }
    })
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checker's own quote-aware split (separators inside `"…"` do not count; `\`
/// escapes inside quotes); `None` for an unbalanced quote.
fn split_quoted(text: &str, separator: char) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(String::new());
            continue;
        }
        parts.last_mut()?.push(c);
    }
    (!quoted && !escaped).then_some(parts)
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let text = String::from_utf8_lossy(data)
        .replace("CERT", &setup.escaped)
        .replace("HASH", &setup.hash);
    let Ok(value) = HeaderValue::from_str(&text) else {
        return;
    };
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr("127.0.0.1:5000".parse().unwrap()));
    request
        .headers_mut()
        .insert("x-forwarded-client-cert", value);
    let inner = tower::service_fn(|request: Request<()>| async move {
        let auth = Authentication::from_extensions(request.extensions());
        let who = auth.get(AuthMethod::Certificate).map(|p| p.id().to_owned());
        Ok::<_, std::convert::Infallible>(Response::new(who.unwrap_or_default()))
    });
    let response = futures::executor::block_on(setup.layer.layer(inner).oneshot(request)).unwrap();
    assert!(
        !response.status().is_server_error(),
        "{}",
        response.status()
    );
    if response.status() == StatusCode::OK {
        // The last element (outside quotes) carries the registered certificate, and
        // any Hash in it is the certificate's.
        let last = split_quoted(&text, ',')
            .and_then(|mut elements| elements.pop())
            .expect("an allowed value is well quoted");
        assert!(
            text.contains(&setup.escaped),
            "allowed without the registered certificate"
        );
        for pair in split_quoted(&last, ';').expect("an allowed value is well quoted") {
            if let Some((key, value)) = pair.split_once('=') {
                if key.trim().eq_ignore_ascii_case("hash") {
                    let value = value.trim().trim_matches('"');
                    assert!(
                        value.eq_ignore_ascii_case(&setup.hash),
                        "allowed with Hash={value}"
                    );
                }
            }
        }
    }
});
