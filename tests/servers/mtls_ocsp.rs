//! OCSP over real TLS on 127.0.0.1: a responder made here signs answers with the CA's
//! key (or a delegated responder's); the identity layer asks it through `OcspClient`.
//! Good, revoked and unknown certificates; answers cached until `nextUpdate`; the
//! responder named by the certificate; every bad answer and a responder that is down,
//! failing closed and failing open; one query for many requests at once.

use std::time::{Duration, SystemTime};

use der::Encode;
use http::StatusCode;
use portcullis::core::Clock;
use portcullis::mtls_identity::{
    Connector, ConnectorRegistry, MtlsIdentityLayer, Ocsp, OcspAnswer, OcspCheck, OcspClient,
    OcspError, OcspStatus,
};
use rcgen::{CustomExtension, ExtendedKeyUsagePurpose, KeyPair};
use x509_cert::der::asn1::Ia5String;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
use x509_cert::spki::ObjectIdentifier;

use crate::mtls_axum::{connect, get_on, once, pki, serve, server_tls, Ca, Leaf, Pki};
use crate::ocsp_responder::{Misbehave, Responder, Status};

const CLIENT: Option<ExtendedKeyUsagePurpose> = Some(ExtendedKeyUsagePurpose::ClientAuth);

fn ca_key(ca: &Ca) -> KeyPair {
    KeyPair::from_pem(&ca.issuer.key().serialize_pem()).unwrap()
}

/// A client certificate naming `url` as its OCSP responder (Authority Information
/// Access), as CAs issue them.
fn issue_naming_responder(ca: &Ca, name: &str, serial: u64, url: &str) -> Leaf {
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1"),
        access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(url).unwrap()),
    }])
    .to_der()
    .unwrap();
    ca.issue_with(name, CLIENT, serial, |params| {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                aia,
            ));
    })
}

fn der_of(leaf: &Leaf) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(leaf.pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn registry_of(leaves: &[(&str, &Leaf)]) -> ConnectorRegistry {
    let registry = ConnectorRegistry::new();
    for (id, leaf) in leaves {
        registry
            .insert(
                Connector::new(*id)
                    .role("connector")
                    .thumbprint(leaf.thumbprint),
            )
            .unwrap();
    }
    registry
}

fn client_for(pki: &Pki, responder: &Responder, clock: &Clock) -> OcspClient {
    OcspClient::new(pki.ca.pem.as_bytes())
        .unwrap()
        .responder(&responder.url)
        .clock(clock.clone())
}

async fn code(addr: std::net::SocketAddr, pki: &Pki, leaf: &Leaf) -> (StatusCode, String) {
    once(addr, pki, Some(leaf)).await.unwrap()
}

#[tokio::test]
async fn good_revoked_and_unknown_answers_decide_and_are_cached() {
    let pki = pki();
    let (clock, hands) = Clock::manual(SystemTime::now());
    let responder = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    let good = pki.ca.issue("connector-1", CLIENT, 101);
    let revoked = pki.ca.issue("connector-2", CLIENT, 102);
    let unknown = pki.ca.issue("connector-3", CLIENT, 103);
    responder.set(&good.pem, Status::Good);
    responder.set(&revoked.pem, Status::Revoked);
    let registry = registry_of(&[
        ("connector-1", &good),
        ("connector-2", &revoked),
        ("connector-3", &unknown),
    ]);
    let layer = MtlsIdentityLayer::new(registry)
        .clock(clock.clone())
        .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)));
    let addr = serve(&pki, server_tls(&pki), layer).await;

    let (status, body) = code(addr, &pki, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("connector-1"), "{body}");
    assert_eq!(
        code(addr, &pki, &revoked).await,
        (StatusCode::UNAUTHORIZED, "revoked_cert".into())
    );
    assert_eq!(
        code(addr, &pki, &unknown).await,
        (StatusCode::UNAUTHORIZED, "revocation_unknown".into())
    );
    assert_eq!(responder.queries(), 3);

    // Within nextUpdate (10 minutes) the answers come from the cache, on new
    // connections and on one kept open.
    let mut open = connect(addr, &pki.ca.pem, Some(&good)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(code(addr, &pki, &revoked).await.1, "revoked_cert");
    assert_eq!(responder.queries(), 3);

    // The CA revokes connector-1: the cached "good" holds until its nextUpdate, then
    // the next request asks again, on the open connection too.
    responder.set(&good.pem, Status::Revoked);
    hands.advance(Duration::from_secs(9 * 60));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    hands.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        get_on(&mut open, &[]).await.unwrap(),
        (StatusCode::UNAUTHORIZED, "revoked_cert".into())
    );
    assert_eq!(responder.queries(), 4);
}

#[tokio::test]
async fn answers_without_next_update_and_the_max_age_bound_the_cache() {
    let pki = pki();
    let (clock, hands) = Clock::manual(SystemTime::now());
    let responder = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    let leaf = pki.ca.issue("connector-1", CLIENT, 201);
    responder.set(&leaf.pem, Status::Good);
    responder.next_update(None);
    let layer = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
        .clock(clock.clone())
        .ocsp(
            Ocsp::new(client_for(&pki, &responder, &clock))
                .recheck_after(Duration::from_secs(30))
                .max_age(Duration::from_secs(120)),
        );
    let addr = serve(&pki, server_tls(&pki), layer).await;
    let mut open = connect(addr, &pki.ca.pem, Some(&leaf)).await.unwrap();

    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    hands.advance(Duration::from_secs(20));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(responder.queries(), 1);
    hands.advance(Duration::from_secs(15));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(
        responder.queries(),
        2,
        "no nextUpdate: asked again after 30 s"
    );

    // A nextUpdate a day away is held to the max age.
    responder.next_update(Some(Duration::from_secs(86_400)));
    hands.advance(Duration::from_secs(31));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(responder.queries(), 3);
    hands.advance(Duration::from_secs(119));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(responder.queries(), 3);
    hands.advance(Duration::from_secs(2));
    assert_eq!(get_on(&mut open, &[]).await.unwrap().0, StatusCode::OK);
    assert_eq!(responder.queries(), 4);
}

#[tokio::test]
async fn the_responder_the_certificate_names_is_asked() {
    let pki = pki();
    let clock = Clock::system();
    let responder = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    let named = issue_naming_responder(&pki.ca, "connector-1", 301, &responder.url);
    let unnamed = pki.ca.issue("connector-2", CLIENT, 302);
    responder.set(&named.pem, Status::Good);
    responder.set(&unnamed.pem, Status::Good);
    let registry = registry_of(&[("connector-1", &named), ("connector-2", &unnamed)]);
    // No `.responder(url)`: the URL comes from each certificate.
    let client = OcspClient::new(pki.ca.pem.as_bytes()).unwrap();
    let layer = MtlsIdentityLayer::new(registry).ocsp(Ocsp::new(client));
    let addr = serve(&pki, server_tls(&pki), layer).await;

    assert_eq!(code(addr, &pki, &named).await.0, StatusCode::OK);
    assert_eq!(responder.queries(), 1);
    // A certificate naming no responder cannot be checked: fail closed.
    assert_eq!(
        code(addr, &pki, &unnamed).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_check_unavailable".into()
        )
    );
}

#[tokio::test]
async fn every_bad_answer_fails_closed_or_open_as_the_host_chose() {
    let pki = pki();
    let clock = Clock::system();
    let responder = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    let cases = [
        (Misbehave::HttpError, "HttpStatus(500)"),
        (Misbehave::TryLater, "Refused(\"tryLater\")"),
        (Misbehave::Garbage, "Malformed("),
        (Misbehave::WrongSerial, "NotAnswered"),
        (Misbehave::BadSignature, "BadSignature"),
        (Misbehave::Stale, "Stale"),
    ];
    for (n, (misbehave, error)) in cases.into_iter().enumerate() {
        let serial = 400 + n as u64;
        let closed_leaf = pki.ca.issue("closed", CLIENT, serial * 10);
        let open_leaf = pki.ca.issue("open", CLIENT, serial * 10 + 1);
        responder.set(&closed_leaf.pem, Status::Good);
        responder.set(&open_leaf.pem, Status::Good);
        responder.misbehave(misbehave);
        // The client names what is wrong with the answer...
        let answer = client_for(&pki, &responder, &clock)
            .check(&der_of(&closed_leaf))
            .await;
        assert!(
            format!("{answer:?}").starts_with(&format!("Err({error}")),
            "{misbehave:?}: {answer:?}"
        );
        // ...and the layer fails closed or open on it.
        let closed = MtlsIdentityLayer::new(registry_of(&[("closed", &closed_leaf)]))
            .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)));
        let open = MtlsIdentityLayer::new(registry_of(&[("open", &open_leaf)]))
            .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)).fail_open());
        let closed = serve(&pki, server_tls(&pki), closed).await;
        let open = serve(&pki, server_tls(&pki), open).await;

        let before = responder.queries();
        assert_eq!(
            code(closed, &pki, &closed_leaf).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation_check_unavailable".into()
            ),
            "{misbehave:?}, failing closed"
        );
        // The failure is remembered for a while: the responder is not asked again.
        assert_eq!(
            code(closed, &pki, &closed_leaf).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(responder.queries(), before + 1, "{misbehave:?}");
        let (status, body) = code(open, &pki, &open_leaf).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{misbehave:?}, failing open: {body}"
        );
    }

    // The same responder behaving again: a good answer for a fresh certificate.
    responder.misbehave(Misbehave::Not);
    let leaf = pki.ca.issue("fine", CLIENT, 499);
    responder.set(&leaf.pem, Status::Good);
    let layer = MtlsIdentityLayer::new(registry_of(&[("fine", &leaf)]))
        .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)));
    let addr = serve(&pki, server_tls(&pki), layer).await;
    assert_eq!(code(addr, &pki, &leaf).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_responder_that_is_down_or_slow() {
    let pki = pki();
    let leaf = pki.ca.issue("connector-1", CLIENT, 501);
    // A port nobody listens on.
    let closed_port = {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.local_addr().unwrap()
    };
    let down = OcspClient::new(pki.ca.pem.as_bytes())
        .unwrap()
        .responder(format!("http://{closed_port}/"));
    let closed = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
        .ocsp(Ocsp::new(down.clone()));
    let addr = serve(&pki, server_tls(&pki), closed).await;
    assert_eq!(
        code(addr, &pki, &leaf).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_check_unavailable".into()
        )
    );
    let open = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
        .ocsp(Ocsp::new(down).fail_open());
    let addr = serve(&pki, server_tls(&pki), open).await;
    assert_eq!(code(addr, &pki, &leaf).await.0, StatusCode::OK);

    // A responder slower than the layer's timeout counts as down.
    let clock = Clock::system();
    let slow = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    slow.set(&leaf.pem, Status::Good);
    slow.misbehave(Misbehave::Slow(Duration::from_secs(5)));
    let layer = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
        .ocsp(Ocsp::new(client_for(&pki, &slow, &clock)).timeout(Duration::from_millis(300)));
    let addr = serve(&pki, server_tls(&pki), layer).await;
    assert_eq!(
        code(addr, &pki, &leaf).await.1,
        "revocation_check_unavailable"
    );
}

#[tokio::test]
async fn a_delegated_responder_must_be_the_issuers_and_for_ocsp() {
    let pki = pki();
    let clock = Clock::system();
    let leaf = pki.ca.issue("connector-1", CLIENT, 601);
    let delegates = [
        // (the delegate, is it acceptable)
        (
            pki.ca.issue(
                "ocsp.plant.example",
                Some(ExtendedKeyUsagePurpose::OcspSigning),
                602,
            ),
            true,
        ),
        (pki.ca.issue("not-for-ocsp", CLIENT, 603), false),
        (
            Ca::new("Another CA").issue(
                "ocsp.elsewhere.example",
                Some(ExtendedKeyUsagePurpose::OcspSigning),
                604,
            ),
            false,
        ),
    ];
    for (delegate, acceptable) in delegates {
        let der = der_of(&delegate);
        let key = KeyPair::from_pem(&delegate.key).unwrap();
        let responder = Responder::start(key, vec![der], clock.clone()).await;
        responder.set(&leaf.pem, Status::Good);
        let layer = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
            .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)));
        let addr = serve(&pki, server_tls(&pki), layer).await;
        let expected = if acceptable {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let (status, body) = code(addr, &pki, &leaf).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(responder.queries(), 1);
        let answer = client_for(&pki, &responder, &clock)
            .check(&der_of(&leaf))
            .await;
        let expected = if acceptable {
            Ok(OcspAnswer {
                status: OcspStatus::Good,
                next_update: answer.as_ref().ok().and_then(|a| a.next_update),
            })
        } else {
            Err(OcspError::BadSignature)
        };
        assert_eq!(answer, expected);
    }
}

#[tokio::test]
async fn many_requests_for_one_certificate_make_one_query() {
    let pki = pki();
    let clock = Clock::system();
    let responder = Responder::start(ca_key(&pki.ca), vec![], clock.clone()).await;
    let leaf = pki.ca.issue("connector-1", CLIENT, 701);
    responder.set(&leaf.pem, Status::Good);
    responder.misbehave(Misbehave::Slow(Duration::from_millis(300)));
    let layer = MtlsIdentityLayer::new(registry_of(&[("connector-1", &leaf)]))
        .ocsp(Ocsp::new(client_for(&pki, &responder, &clock)));
    let addr = serve(&pki, server_tls(&pki), layer).await;

    let mut connections = Vec::new();
    for _ in 0..12 {
        connections.push(connect(addr, &pki.ca.pem, Some(&leaf)).await.unwrap());
    }
    let requests = connections
        .iter_mut()
        .map(|sender| async move { get_on(sender, &[]).await.unwrap().0 });
    let statuses = futures::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(responder.queries(), 1);
}

/// `[layer.ocsp]` in a gateway file, behind a proxy forwarding the certificate (XFCC):
/// a good certificate passes, a revoked one is refused, and with the responder gone
/// `on_failure` decides (refuse: 503; allow: admitted).
#[tokio::test]
async fn the_gateway_file_configures_ocsp() {
    let pki = pki();
    let responder = Responder::start(ca_key(&pki.ca), vec![], Clock::system()).await;
    let good = pki.ca.issue("connector-1", CLIENT, 41);
    let revoked = pki.ca.issue("connector-2", CLIENT, 42);
    responder.set(&good.pem, Status::Good);
    responder.set(&revoked.pem, Status::Revoked);
    let dir = std::env::temp_dir().join(format!("portcullis-ocsp-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca.pem).unwrap();
    std::fs::write(
        dir.join("connectors.toml"),
        format!(
            "[[connector]]\nid = \"one\"\nroles = [\"r\"]\nthumbprints = [\"{}\"]\n\n[[connector]]\nid = \"two\"\nroles = [\"r\"]\nthumbprints = [\"{}\"]\n",
            good.thumbprint,
            revoked.thumbprint
        ),
    )
    .unwrap();
    let serve_file = |on_failure: &str, responder: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"mtls-identity\"\nconnectors = \"connectors.toml\"\n[layer.forwarded]\nformat = \"envoy-xfcc\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nverify_with = \"ca.pem\"\n[layer.ocsp]\nissuers = \"ca.pem\"\nresponder = \"{responder}\"\non_failure = \"{on_failure}\"\ntimeout = \"2s\"\n"
        );
        let dir = dir.clone();
        async move {
            crate::client::serve_gateway_file(
                &text,
                &dir,
                axum::Router::new().fallback(|| async { "ok" }),
            )
            .await
        }
    };
    let xfcc = |leaf: &Leaf| {
        format!(
            "Cert=\"{}\"",
            percent_encoding::utf8_percent_encode(&leaf.pem, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    let client = reqwest::Client::new();
    let ask = |addr: std::net::SocketAddr, leaf: &Leaf| {
        client
            .get(format!("http://{addr}/"))
            .header("x-forwarded-client-cert", xfcc(leaf))
            .send()
    };
    let addr = serve_file("refuse", &responder.url).await;
    assert_eq!(ask(addr, &good).await.unwrap().status(), StatusCode::OK);
    let answer = ask(addr, &revoked).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(answer.text().await.unwrap().contains("revoked_cert"));
    assert!(responder.queries() >= 2);

    // No responder at this address: refuse, or admit, as the file says.
    let gone = "http://127.0.0.1:9/";
    let addr = serve_file("refuse", gone).await;
    assert_eq!(
        ask(addr, &good).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let addr = serve_file("allow", gone).await;
    assert_eq!(ask(addr, &good).await.unwrap().status(), StatusCode::OK);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Behind nginx (`format = "escaped-pem"`, `header = "x-ssl-client-cert"`), with
/// connectors identified by the certificate's common name (`identify = "common-name"`)
/// and certificates without the clientAuth usage accepted only with
/// `allow_unrestricted_usage = true`: all from the gateway file.
#[tokio::test]
async fn the_gateway_file_configures_nginx_and_identification_by_name() {
    let pki = pki();
    let named = pki.ca.issue("connector-5", CLIENT, 51);
    let no_eku = pki.ca.issue("connector-6", None, 52);
    let dir = std::env::temp_dir().join(format!("portcullis-nginx-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca.pem).unwrap();
    std::fs::write(
        dir.join("connectors.toml"),
        "[[connector]]\nid = \"connector-5\"\nroles = [\"r\"]\n\n[[connector]]\nid = \"connector-6\"\nroles = [\"r\"]\n",
    )
    .unwrap();
    let serve_file = |extra: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"mtls-identity\"\nconnectors = \"connectors.toml\"\n{extra}[layer.forwarded]\nformat = \"escaped-pem\"\nheader = \"x-ssl-client-cert\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nverify_with = \"ca.pem\"\n"
        );
        let dir = dir.clone();
        async move {
            crate::client::serve_gateway_file(
                &text,
                &dir,
                axum::Router::new().fallback(crate::mtls_axum::who),
            )
            .await
        }
    };
    let client = reqwest::Client::new();
    let ask = |addr: std::net::SocketAddr, leaf: &Leaf| {
        let escaped = percent_encoding::utf8_percent_encode(
            leaf.pem.trim(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        client
            .get(format!("http://{addr}/"))
            .header("x-ssl-client-cert", escaped)
            .send()
    };
    // By common name or by DNS name (the test CA writes the name in both).
    for identify in ["common-name", "dns-name"] {
        let addr = serve_file(&format!("identify = \"{identify}\"\n")).await;
        let answer = ask(addr, &named).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{identify}");
        assert!(answer.text().await.unwrap().starts_with("connector-5 "));
        assert_eq!(
            ask(addr, &no_eku).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // By thumbprint (the default), a connector with no bound certificate names none.
    let addr = serve_file("").await;
    assert_eq!(
        ask(addr, &named).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let addr = serve_file("identify = \"common-name\"\nallow_unrestricted_usage = true\n").await;
    let answer = ask(addr, &no_eku).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.text().await.unwrap().starts_with("connector-6 "));
    std::fs::remove_dir_all(&dir).unwrap();
}
