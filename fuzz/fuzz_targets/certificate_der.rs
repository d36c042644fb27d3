//! Certificate and CRL DER (or PEM) through `MtlsIdentityLayer`.
//!
//! The first byte picks the form:
//! - even: the rest is the client certificate the TLS stack handed over (a `TlsPeer`
//!   leaf), judged by a layer that identifies by thumbprint and by one that identifies
//!   by DNS name;
//! - odd: the rest is a CRL file loaded into the layer, which then judges the registered
//!   certificate (serial 0x1001 of "Fuzz CRL CA").
//!
//! Invariants: no panic; never a 5xx other than 503 for a stale CRL; by thumbprint only
//! the registered certificate is allowed; by DNS name only a certificate whose first DNS
//! name is the registered one, within its validity, with `clientAuth` usage, as an
//! independent reading with x509-parser says; a certificate that a loaded CRL of its
//! issuer lists is never allowed, nor one whose issuer's CRLs are all past
//! `nextUpdate`; and an up-to-date CRL that does not list it never refuses it.

#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::TlsPeer;
use portcullis_mtls_identity::{
    ClientCertificate, Connector, ConnectorRegistry, Crls, Identify, MtlsIdentityLayer,
};
use tower::{Layer, ServiceExt};
use x509_parser::prelude::*;

const CLIENT: &[u8] = include_bytes!("../data/crl_client.der");

struct Setup {
    by_thumbprint: MtlsIdentityLayer,
    by_dns_name: MtlsIdentityLayer,
    registry: ConnectorRegistry,
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let client = ClientCertificate::from_der(CLIENT).unwrap();
        let registry =
            ConnectorRegistry::from_connectors([Connector::new("connector-9").thumbprint(client.thumbprint())])
                .unwrap();
        let names = ConnectorRegistry::from_connectors([Connector::new("client.example")]).unwrap();
        let (_, parsed) = X509Certificate::from_der(CLIENT).unwrap();
        Setup {
            by_thumbprint: MtlsIdentityLayer::new(registry.clone()),
            by_dns_name: MtlsIdentityLayer::new(names).identify(Identify::DnsName),
            registry,
            issuer: parsed.issuer().as_raw().to_vec(),
            serial: parsed.raw_serial().to_vec(),
        }
    })
}

fn status(layer: &MtlsIdentityLayer, leaf: &[u8]) -> StatusCode {
    let mut request = Request::new(());
    request.extensions_mut().insert(TlsPeer {
        addr: "127.0.0.1:5000".parse().unwrap(),
        chain: Some(Arc::from(vec![Bytes::copy_from_slice(leaf)])),
    });
    let inner = tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(()))
    });
    futures::executor::block_on(layer.layer(inner).oneshot(request))
        .unwrap()
        .status()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The checker's own reading of a certificate the DNS-name layer may allow.
fn may_allow_by_dns_name(der: &[u8]) -> bool {
    let Ok((rest, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let first_dns = cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    });
    let usage = match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value.client_auth || eku.value.any,
        _ => false,
    };
    let validity = cert.validity();
    rest.is_empty()
        && first_dns == Some("client.example")
        && usage
        && validity.not_before.timestamp() <= now()
        && now() <= validity.not_after.timestamp()
}

/// The CRLs in `bytes` as the checker reads them: every PEM `X509 CRL` block, or the
/// bytes as one DER CRL.
fn crl_blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        match pem {
            Ok(pem) if pem.label == "X509 CRL" => blocks.push(pem.contents),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if blocks.is_empty() {
        blocks.push(bytes.to_vec());
    }
    blocks
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let setup = setup();
    if form % 2 == 0 {
        let by_thumbprint = status(&setup.by_thumbprint, rest);
        assert!(!by_thumbprint.is_server_error(), "{by_thumbprint}");
        assert_eq!(
            by_thumbprint == StatusCode::OK,
            rest == CLIENT,
            "by thumbprint: {by_thumbprint}"
        );
        let by_dns_name = status(&setup.by_dns_name, rest);
        assert!(!by_dns_name.is_server_error(), "{by_dns_name}");
        if by_dns_name == StatusCode::OK {
            assert!(may_allow_by_dns_name(rest), "allowed by DNS name");
        }
        if let Ok(certificate) = ClientCertificate::from_der(rest) {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rest);
            assert!(certificate.thumbprint().matches(digest.as_ref()));
        }
        return;
    }
    let Ok(crls) = Crls::from_bytes(rest) else {
        return;
    };
    // What the loaded CRLs say about the registered certificate, read independently.
    let (mut lists_it, mut of_issuer, mut newest_due) = (false, false, None::<i64>);
    let mut undated = false;
    for block in crl_blocks(rest) {
        let Ok((rest, crl)) = CertificateRevocationList::from_der(&block) else {
            continue;
        };
        if !rest.is_empty() {
            continue;
        }
        if crl.issuer().as_raw() != setup.issuer.as_slice() {
            continue;
        }
        of_issuer = true;
        match crl.next_update() {
            Some(due) => newest_due = Some(newest_due.map_or(due.timestamp(), |d| d.max(due.timestamp()))),
            None => undated = true,
        }
        lists_it |= crl
            .iter_revoked_certificates()
            .any(|revoked| revoked.raw_serial() == setup.serial.as_slice());
    }
    let layer = MtlsIdentityLayer::new(setup.registry.clone()).crls(crls);
    let status = status(&layer, CLIENT);
    let stale = of_issuer && !undated && newest_due.is_some_and(|due| now() > due);
    if lists_it || stale {
        assert_ne!(status, StatusCode::OK, "allowed a revoked certificate (stale: {stale})");
    }
    if !of_issuer {
        assert_eq!(status, StatusCode::OK, "refused by a CRL of another issuer");
    }
    if of_issuer && !lists_it && !stale {
        assert_eq!(status, StatusCode::OK, "refused by CRLs that do not list it");
    }
    if status.is_server_error() {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(stale, "503 without a stale CRL");
    }
});
