//! The layer on its own, with the connection's chain put in the request as a TLS
//! acceptor would: modes, naming by certificate fields, usage, validity, the parse
//! cache, a host's own OCSP check with the cache and both failure policies.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use portcullis_core::{
    AuditRecord, AuthMethod, Authentication, ClientCertThumbprint, Clock, TlsPeer,
};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use crate::{
    ClientCertificate, Connector, ConnectorRegistry, Identify, Mode, MtlsIdentityLayer, Ocsp,
    OcspAnswer, OcspCheck, OcspError, OcspFuture, OcspStatus,
};

fn certificate(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = CertificateParams::new(vec!["connector-7.plant.example".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "connector-7");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://plant.example/connector-7".try_into().unwrap(),
    ));
    params
        .subject_alt_names
        .push(SanType::Rfc822Name("ops@plant.example".try_into().unwrap()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    edit(&mut params);
    params
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

fn thumbprint(der: &[u8]) -> ClientCertThumbprint {
    ClientCertificate::from_der(der).unwrap().thumbprint()
}

fn request(der: Option<&[u8]>) -> Request<()> {
    let mut request = Request::new(());
    let chain = der.map(|der| Arc::from(vec![Bytes::copy_from_slice(der)]));
    request.extensions_mut().insert(TlsPeer {
        addr: "192.0.2.7:50000".parse().unwrap(),
        chain,
    });
    request.extensions_mut().insert(AuditRecord::new());
    request
}

/// Status, the certificate principal's id or the refusal code, and the audit note's
/// detail.
async fn run(layer: MtlsIdentityLayer, request: Request<()>) -> (StatusCode, String, String) {
    let record = request.extensions().get::<AuditRecord>().cloned().unwrap();
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|request: Request<()>| async move {
                let auth = Authentication::from_extensions(request.extensions());
                let id = auth
                    .get(AuthMethod::Certificate)
                    .map_or("(nobody)".to_owned(), |p| p.id().to_owned());
                Ok::<_, Infallible>(Response::new(id))
            }));
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let said = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| problem["code"].as_str().map(str::to_owned))
        .unwrap_or(body);
    let detail = record
        .notes()
        .last()
        .and_then(|n| n.detail_text().map(str::to_owned))
        .unwrap_or_default();
    (status, said, detail)
}

fn registered(der: &[u8]) -> ConnectorRegistry {
    let registry = ConnectorRegistry::new();
    registry
        .insert(Connector::new("connector-7").thumbprint(thumbprint(der)))
        .unwrap();
    registry
}

#[tokio::test]
async fn optional_mode_passes_requests_without_a_certificate_but_not_bad_ones() {
    let der = certificate(|_| {});
    let layer = MtlsIdentityLayer::new(registered(&der)).mode(Mode::Optional);
    let (status, id, _) = run(layer.clone(), request(None)).await;
    assert_eq!((status, id.as_str()), (StatusCode::OK, "(nobody)"));
    let (status, id, _) = run(layer.clone(), request(Some(&der))).await;
    assert_eq!((status, id.as_str()), (StatusCode::OK, "connector-7"));
    let stranger = certificate(|_| {});
    let (status, code, _) = run(layer.clone(), request(Some(&stranger))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unknown_connector")
    );
    let (status, code, _) = run(layer, request(Some(b"not a certificate"))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "untrusted_client_cert")
    );

    let required = MtlsIdentityLayer::new(registered(&der));
    let (status, code, _) = run(required, request(None)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "missing_client_cert")
    );
}

#[tokio::test]
async fn principals_named_by_certificate_fields() {
    let der = certificate(|_| {});
    for (identify, expected) in [
        (Identify::CommonName, "connector-7"),
        (Identify::DnsName, "connector-7.plant.example"),
        (Identify::Uri, "spiffe://plant.example/connector-7"),
        (Identify::Email, "ops@plant.example"),
    ] {
        let (status, id, _) = run(
            MtlsIdentityLayer::by_name(identify.clone()),
            request(Some(&der)),
        )
        .await;
        assert_eq!(
            (status, id.as_str()),
            (StatusCode::OK, expected),
            "{identify:?}"
        );
    }
    // A field the certificate lacks names nobody.
    let bare = certificate(|params| params.subject_alt_names.clear());
    let (status, code, _) = run(
        MtlsIdentityLayer::by_name(Identify::Uri),
        request(Some(&bare)),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unknown_connector")
    );
}

fn with_uris(uris: &[&str]) -> Vec<u8> {
    certificate(|params| {
        params
            .subject_alt_names
            .retain(|san| !matches!(san, SanType::URI(_)));
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
    })
}

#[tokio::test]
async fn spiffe_ids_are_checked_and_held_to_their_trust_domains() {
    let spiffe = |domains: &[&str]| {
        MtlsIdentityLayer::by_name(Identify::Spiffe {
            trust_domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
        })
    };
    let layer = spiffe(&["plant.example", "staging.example"]);
    for id in [
        "spiffe://plant.example/connector-7",
        "spiffe://staging.example/ns/x/sa/y",
        "spiffe://plant.example",
    ] {
        let (status, said, _) = run(layer.clone(), request(Some(&with_uris(&[id])))).await;
        assert_eq!((status, said.as_str()), (StatusCode::OK, id));
    }
    // The principal says which trust domain vouched for it.
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|request: Request<()>| async move {
            let auth = Authentication::from_extensions(request.extensions());
            let domain = auth
                .get(AuthMethod::Certificate)
                .unwrap()
                .attribute("trust_domain");
            Ok::<_, Infallible>(Response::new(domain.unwrap_or("").to_owned()))
        }));
    let response = service
        .oneshot(request(Some(&with_uris(&["spiffe://staging.example/a"]))))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"staging.example");

    for (uris, code) in [
        // Another trust domain, and look-alikes of an accepted one.
        (
            &["spiffe://evil.example/connector-7"][..],
            "foreign_trust_domain",
        ),
        (
            &["spiffe://plant.example.evil/connector-7"],
            "foreign_trust_domain",
        ),
        (&["spiffe://example/connector-7"], "foreign_trust_domain"),
        (
            &["spiffe://xplant.example/connector-7"],
            "foreign_trust_domain",
        ),
        // Not SPIFFE IDs by the specification: never normalized into an accepted one.
        (&["spiffe://Plant.example/connector-7"], "invalid_spiffe_id"),
        (&["SPIFFE://plant.example/connector-7"], "invalid_spiffe_id"),
        (
            &["spiffe://plant.example:443/connector-7"],
            "invalid_spiffe_id",
        ),
        (
            &["spiffe://user@plant.example/connector-7"],
            "invalid_spiffe_id",
        ),
        (
            &["spiffe://plant.example/../connector-7"],
            "invalid_spiffe_id",
        ),
        (&["spiffe://plant.example/a%2Fb"], "invalid_spiffe_id"),
        (
            &["spiffe://plant.example/connector-7/"],
            "invalid_spiffe_id",
        ),
        (
            &["spiffe://plant.example/connector-7?x=1"],
            "invalid_spiffe_id",
        ),
        (&["https://plant.example/connector-7"], "invalid_spiffe_id"),
        // An X.509-SVID has exactly one URI SAN: none, or two (even both valid), is not one.
        (&[], "invalid_spiffe_id"),
        (
            &["spiffe://plant.example/a", "spiffe://plant.example/b"],
            "invalid_spiffe_id",
        ),
        (
            &["spiffe://evil.example/a", "spiffe://plant.example/b"],
            "invalid_spiffe_id",
        ),
    ] {
        let (status, said, _) = run(layer.clone(), request(Some(&with_uris(uris)))).await;
        assert_eq!(
            (status, said.as_str()),
            (StatusCode::UNAUTHORIZED, code),
            "{uris:?}"
        );
    }
    // No trust domain accepts nobody.
    let (status, said, _) = run(
        spiffe(&[]),
        request(Some(&with_uris(&["spiffe://plant.example/connector-7"]))),
    )
    .await;
    assert_eq!(
        (status, said.as_str()),
        (StatusCode::UNAUTHORIZED, "foreign_trust_domain")
    );
    // With a registry, the SPIFFE ID names the connector, bound as any name is.
    let der = with_uris(&["spiffe://plant.example/connector-7"]);
    let registry = ConnectorRegistry::new();
    registry
        .insert(Connector::new("spiffe://plant.example/connector-7").thumbprint(thumbprint(&der)))
        .unwrap();
    let bound = MtlsIdentityLayer::new(registry).identify(Identify::Spiffe {
        trust_domains: vec!["plant.example".parse().unwrap()],
    });
    let (status, said, _) = run(bound.clone(), request(Some(&der))).await;
    assert_eq!(
        (status, said.as_str()),
        (StatusCode::OK, "spiffe://plant.example/connector-7")
    );
    let impostor = with_uris(&["spiffe://plant.example/connector-7"]);
    let (status, said, _) = run(bound, request(Some(&impostor))).await;
    assert_eq!(
        (status, said.as_str()),
        (StatusCode::UNAUTHORIZED, "certificate_not_bound")
    );
}

#[tokio::test]
async fn a_name_lookup_still_honours_bound_certificates() {
    let bound = certificate(|_| {});
    let other = certificate(|_| {});
    let layer = MtlsIdentityLayer::new(registered(&bound)).identify(Identify::CommonName);
    assert_eq!(
        run(layer.clone(), request(Some(&bound))).await.1,
        "connector-7"
    );
    // Same CN, another key: the connector's bound certificate is the other one.
    assert_eq!(
        run(layer, request(Some(&other))).await.1,
        "certificate_not_bound"
    );
}

#[tokio::test]
async fn usage_and_validity_are_checked_by_the_layer() {
    let server = certificate(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let unrestricted = certificate(|p| p.extended_key_usages.clear());
    let expired = certificate(|p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let future = certificate(|p| {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    });
    for (der, code) in [
        (&server, "wrong_cert_usage"),
        (&unrestricted, "wrong_cert_usage"),
        (&expired, "expired_client_cert"),
        (&future, "client_cert_not_yet_valid"),
    ] {
        let (status, said, _) =
            run(MtlsIdentityLayer::new(registered(der)), request(Some(der))).await;
        assert_eq!((status, said.as_str()), (StatusCode::UNAUTHORIZED, code));
    }
    let allowing = MtlsIdentityLayer::new(registered(&unrestricted)).allow_unrestricted_usage(true);
    assert_eq!(
        run(allowing, request(Some(&unrestricted))).await.1,
        "connector-7"
    );
}

#[tokio::test]
async fn the_parse_cache_changes_nothing_but_speed() {
    let der = certificate(|_| {});
    let stranger = certificate(|_| {});
    for capacity in [0, 1, 10_000] {
        let layer = MtlsIdentityLayer::new(registered(&der)).parse_cache(capacity);
        for _ in 0..3 {
            assert_eq!(
                run(layer.clone(), request(Some(&der))).await.1,
                "connector-7"
            );
            assert_eq!(
                run(layer.clone(), request(Some(&stranger))).await.1,
                "unknown_connector"
            );
        }
    }
}

#[tokio::test]
async fn two_certificate_layers_are_a_server_error() {
    let der = certificate(|_| {});
    let inner = MtlsIdentityLayer::new(registered(&der));
    let outer = MtlsIdentityLayer::new(registered(&der));
    let service = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let response = service.oneshot(request(Some(&der))).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A host's own revocation source: a table, and a switch to make it fail.
#[derive(Clone, Default)]
struct Table {
    revoked: Arc<Mutex<Vec<ClientCertThumbprint>>>,
    failing: Arc<Mutex<bool>>,
    asked: Arc<AtomicUsize>,
}

impl OcspCheck for Table {
    fn check<'a>(&'a self, leaf: &'a [u8]) -> OcspFuture<'a> {
        Box::pin(async move {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if *self.failing.lock().unwrap() {
                return Err(OcspError::Unreachable("the table is offline".into()));
            }
            let revoked = self.revoked.lock().unwrap().contains(&thumbprint(leaf));
            Ok(OcspAnswer {
                status: if revoked {
                    OcspStatus::Revoked
                } else {
                    OcspStatus::Good
                },
                next_update: Some(SystemTime::now() + Duration::from_secs(60)),
            })
        })
    }
}

#[tokio::test]
async fn a_hosts_own_check_is_cached_and_its_failures_follow_the_policy() {
    let der = certificate(|_| {});
    let table = Table::default();
    let (clock, hands) = Clock::manual(SystemTime::now());
    let layer = MtlsIdentityLayer::new(registered(&der))
        .clock(clock)
        .ocsp(Ocsp::new(table.clone()).recheck_after(Duration::from_secs(5)));
    assert_eq!(
        run(layer.clone(), request(Some(&der))).await.1,
        "connector-7"
    );
    assert_eq!(
        run(layer.clone(), request(Some(&der))).await.1,
        "connector-7"
    );
    assert_eq!(table.asked.load(Ordering::SeqCst), 1);

    table.revoked.lock().unwrap().push(thumbprint(&der));
    hands.advance(Duration::from_secs(61));
    let (status, code, detail) = run(layer.clone(), request(Some(&der))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "revoked_cert")
    );
    assert_eq!(detail, "the client certificate has been revoked");

    *table.failing.lock().unwrap() = true;
    hands.advance(Duration::from_secs(61));
    let (status, code, _) = run(layer.clone(), request(Some(&der))).await;
    assert_eq!(
        (status, code.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_check_unavailable"
        )
    );

    // Failing open: allowed, and the audit event says why.
    let open = MtlsIdentityLayer::new(registered(&der)).ocsp(Ocsp::new(table.clone()).fail_open());
    let (status, id, detail) = run(open, request(Some(&der))).await;
    assert_eq!((status, id.as_str()), (StatusCode::OK, "connector-7"));
    assert!(detail.contains("fail-open"), "{detail}");
}

#[tokio::test]
async fn the_service_is_ready_again_after_a_waiting_call() {
    // The call that waits for the check takes the ready inner service with it; the
    // layer's own service must still work for the next call.
    let der = certificate(|_| {});
    let table = Table::default();
    let mut service = ServiceBuilder::new()
        .layer(MtlsIdentityLayer::new(registered(&der)).ocsp(Ocsp::new(table)))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for _ in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(Some(&der)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Every builder called on a clone of a layer that is still in use takes effect on the
/// clone, and leaves the original as it was (copy on write, not a silent no-op).
#[tokio::test]
async fn builder_calls_on_a_clone_take_effect_and_leave_the_original_alone() {
    let der = certificate(|_| {});
    let base = MtlsIdentityLayer::new(registered(&der));

    let optional = base.clone().mode(Mode::Optional);
    assert_eq!(run(optional, request(None)).await.0, StatusCode::OK);
    assert_eq!(
        run(base.clone(), request(None)).await.1,
        "missing_client_cert"
    );

    let named = base.clone().identify(Identify::CommonName);
    let stranger = certificate(|_| {});
    assert_eq!(
        run(named, request(Some(&stranger))).await.1,
        "certificate_not_bound"
    );
    assert_eq!(
        run(base.clone(), request(Some(&stranger))).await.1,
        "unknown_connector"
    );

    let old_cert = certificate(|p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let dated = MtlsIdentityLayer::new(registered(&old_cert));
    let (in_2020, _) = Clock::manual(std::time::UNIX_EPOCH + Duration::from_secs(1_590_000_000));
    assert_eq!(
        run(dated.clone().clock(in_2020), request(Some(&old_cert)))
            .await
            .1,
        "connector-7"
    );
    assert_eq!(
        run(dated, request(Some(&old_cert))).await.1,
        "expired_client_cert"
    );

    let table = Table::default();
    table.revoked.lock().unwrap().push(thumbprint(&der));
    let checked = base.clone().ocsp(Ocsp::new(table));
    assert_eq!(run(checked, request(Some(&der))).await.1, "revoked_cert");
    assert_eq!(
        run(base.clone(), request(Some(&der))).await.1,
        "connector-7"
    );

    let unrestricted = certificate(|p| p.extended_key_usages.clear());
    let strict = MtlsIdentityLayer::new(registered(&unrestricted));
    let lenient = strict.clone().allow_unrestricted_usage(true);
    assert_eq!(
        run(lenient, request(Some(&unrestricted))).await.1,
        "connector-7"
    );
    assert_eq!(
        run(strict.clone(), request(Some(&unrestricted))).await.1,
        "wrong_cert_usage"
    );

    let uncached = base.clone().parse_cache(0);
    assert_eq!(run(uncached, request(Some(&der))).await.1, "connector-7");
    drop(base);
}

/// The OCSP durations and counts at their extremes: answers kept "for ever" (a century)
/// instead of a panic when the duration cannot be added to the clock, failures that the
/// policy decides on every request, and a zero timeout that takes only ready answers.
#[tokio::test]
async fn ocsp_durations_at_their_extremes_never_panic() {
    let der = certificate(|_| {});
    let table = Table::default();
    let layer = MtlsIdentityLayer::new(registered(&der))
        .parse_cache(usize::MAX)
        .ocsp(
            Ocsp::new(table.clone())
                .max_age(Duration::MAX)
                .recheck_after(Duration::MAX)
                .timeout(Duration::MAX)
                .capacity(usize::MAX),
        );
    for _ in 0..2 {
        assert_eq!(
            run(layer.clone(), request(Some(&der))).await.1,
            "connector-7"
        );
    }
    assert_eq!(table.asked.load(Ordering::SeqCst), 1);
    *table.failing.lock().unwrap() = true;
    let failing = MtlsIdentityLayer::new(registered(&der)).ocsp(
        Ocsp::new(table.clone())
            .recheck_after(Duration::MAX)
            .capacity(0),
    );
    for _ in 0..2 {
        let (status, code, _) = run(failing.clone(), request(Some(&der))).await;
        assert_eq!(
            (status, code.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation_check_unavailable"
            )
        );
    }
    let instant = MtlsIdentityLayer::new(registered(&der))
        .parse_cache(0)
        .ocsp(Ocsp::new(Table::default()).timeout(Duration::ZERO));
    // A zero timeout still takes an answer that is ready at once.
    assert_eq!(run(instant, request(Some(&der))).await.1, "connector-7");
}
