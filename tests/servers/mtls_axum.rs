//! Client certificates over real TLS on 127.0.0.1, with a CA, server and client
//! certificates made by rcgen here: registered connectors allowed, every other kind of
//! certificate refused with its code (or by the handshake), a connector blocked on an
//! open keep-alive connection, a trusted proxy's header, and tonic with mTLS.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis::core::{AuthMethod, Authentication, ClientCertThumbprint, Clock, TlsPeer};
use portcullis::mtls_identity::{
    ClientAuth, ClientCertificate, Connector, ConnectorRegistry, Crls, ForwardedCertificate,
    Identify, MtlsIdentityLayer, ServerTls, TlsListener,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA that signs certificates in the test.
pub(crate) struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate: its PEM, its key's PEM and its thumbprint.
    pub(crate) fn issue(
        &self,
        name: &str,
        usage: Option<ExtendedKeyUsagePurpose>,
        serial: u64,
    ) -> Leaf {
        self.issue_with(name, usage, serial, |_| {})
    }

    /// [`Ca::issue`], with the parameters edited first (extensions, validity).
    pub(crate) fn issue_with(
        &self,
        name: &str,
        usage: Option<ExtendedKeyUsagePurpose>,
        serial: u64,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = usage.into_iter().collect();
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            thumbprint: ClientCertificate::from_der(cert.der())
                .unwrap()
                .thumbprint(),
            pem: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub(crate) fn crl(&self, serials: &[u64]) -> String {
        self.crl_due(serials, 2036)
    }

    /// A CRL revoking `serials`, due again on 1 January of `year`.
    pub(crate) fn crl_due(&self, serials: &[u64], year: i32) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) pem: String,
    pub(crate) key: String,
    pub(crate) thumbprint: ClientCertThumbprint,
}

pub(crate) struct Pki {
    pub(crate) ca: Ca,
    pub(crate) server: Leaf,
}

pub(crate) fn pki() -> Pki {
    let ca = Ca::new("Plant CA");
    let server = ca.issue("localhost", Some(ExtendedKeyUsagePurpose::ServerAuth), 1);
    Pki { ca, server }
}

pub(crate) async fn who(request: Request) -> String {
    let auth = Authentication::from_extensions(request.extensions());
    let principal = auth.get(AuthMethod::Certificate).expect("the layer ran");
    let port = request
        .extensions()
        .get::<ConnectInfo<TlsPeer>>()
        .map(|ConnectInfo(peer)| peer.addr.port())
        .unwrap_or(0);
    let bound = request.extensions().get::<ClientCertThumbprint>().is_some();
    format!(
        "{} {:?} port={port} thumbprint={bound}",
        principal.id(),
        principal.roles()
    )
}

pub(crate) async fn serve(pki: &Pki, tls: ServerTls, layer: MtlsIdentityLayer) -> SocketAddr {
    let config = tls.build().unwrap();
    let _ = pki;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/versionInfo", get(who))
        .layer(layer);
    tokio::spawn(async move {
        axum::serve(
            TlsListener::new(tcp, config).for_axum(),
            app.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .await
        .unwrap();
    });
    addr
}

pub(crate) fn server_tls(pki: &Pki) -> ServerTls {
    ServerTls::new(pki.server.pem.as_bytes(), pki.server.key.as_bytes())
        .client_cas(pki.ca.pem.as_bytes())
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One TLS connection, with `client` as the client certificate, kept open for several
/// requests. Errors are the handshake's.
pub(crate) async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> Result<Sender, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends a GET on the connection; a TLS 1.3 handshake refusal surfaces here.
pub(crate) async fn get_on(
    sender: &mut Sender,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut request = http::Request::get("/v1/versionInfo").header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    Ok((status, code.unwrap_or(body)))
}

pub(crate) async fn once(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&Leaf>,
) -> Result<(StatusCode, String), String> {
    let mut sender = connect(addr, &pki.ca.pem, client).await?;
    get_on(&mut sender, &[]).await
}

#[tokio::test]
async fn registered_connectors_in_and_every_other_certificate_out() {
    let pki = pki();
    let client_auth = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let seven = pki.ca.issue("connector-7", client_auth.clone(), 7);
    let unregistered = pki.ca.issue("connector-9", client_auth.clone(), 9);
    let sensor = pki.ca.issue("sensor-1", None, 11);
    let revoked = pki.ca.issue("connector-8", client_auth.clone(), 8);
    let foreign = Ca::new("Another CA").issue("connector-7", client_auth.clone(), 7);

    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7")
            .role("connector")
            .thumbprint(seven.thumbprint),
        Connector::new("connector-8")
            .role("connector")
            .thumbprint(revoked.thumbprint),
        Connector::new("sensor-1").thumbprint(sensor.thumbprint),
    ])
    .unwrap();
    let crls = Crls::from_bytes(pki.ca.crl(&[8]).as_bytes()).unwrap();
    let layer = MtlsIdentityLayer::new(registry).crls(crls);
    let addr = serve(
        &pki,
        server_tls(&pki).client_auth(ClientAuth::Optional),
        layer,
    )
    .await;

    let (status, body) = once(addr, &pki, Some(&seven)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("connector-7 [\"connector\"]"), "{body}");
    assert!(body.ends_with("thumbprint=true"), "{body}");

    for (leaf, code) in [
        (&unregistered, "unknown_connector"),
        (&sensor, "wrong_cert_usage"),
        (&revoked, "revoked_cert"),
    ] {
        let (status, got) = once(addr, &pki, Some(leaf)).await.unwrap();
        assert_eq!((status, got.as_str()), (StatusCode::UNAUTHORIZED, code));
    }
    let (status, code) = once(addr, &pki, None).await.unwrap();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "missing_client_cert")
    );

    // The handshake itself refuses another CA's certificate and a server's certificate.
    assert!(once(addr, &pki, Some(&foreign)).await.is_err());
    let server_as_client = pki.server.clone();
    assert!(once(addr, &pki, Some(&server_as_client)).await.is_err());
}

#[tokio::test]
async fn the_layer_checks_validity_itself_and_the_handshake_checks_crls() {
    let pki = pki();
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint)
    ])
    .unwrap();
    // rcgen's certificates last until 4096; a layer clock past that sees it expired
    // even though the TLS stack accepted it.
    let (far_future, _) =
        Clock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(100_000_000_000));
    let layer = MtlsIdentityLayer::new(registry.clone()).clock(far_future);
    let addr = serve(&pki, server_tls(&pki), layer).await;
    let (status, code) = once(addr, &pki, Some(&seven)).await.unwrap();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "expired_client_cert")
    );

    let (before, _) = Clock::manual(std::time::UNIX_EPOCH);
    let layer = MtlsIdentityLayer::new(registry.clone()).clock(before);
    let addr = serve(&pki, server_tls(&pki), layer).await;
    let (_, code) = once(addr, &pki, Some(&seven)).await.unwrap();
    assert_eq!(code, "client_cert_not_yet_valid");

    // With the CRL in the server config, the revoked certificate cannot even connect,
    // and a required client certificate means no certificate, no connection.
    let crl = pki.ca.crl(&[7]);
    let addr = serve(
        &pki,
        server_tls(&pki).crls(crl.as_bytes()),
        MtlsIdentityLayer::new(registry),
    )
    .await;
    assert!(once(addr, &pki, Some(&seven)).await.is_err());
    assert!(once(addr, &pki, None).await.is_err());
}

#[tokio::test]
async fn a_connector_blocked_mid_connection_is_refused_on_its_next_request() {
    let pki = pki();
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint)
    ])
    .unwrap();
    let addr = serve(
        &pki,
        server_tls(&pki),
        MtlsIdentityLayer::new(registry.clone()),
    )
    .await;
    let mut connection = connect(addr, &pki.ca.pem, Some(&seven)).await.unwrap();
    let (status, first) = get_on(&mut connection, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    registry.block("connector-7").unwrap();
    let (status, code) = get_on(&mut connection, &[]).await.unwrap();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "connector_blocked")
    );
    registry.unblock("connector-7").unwrap();
    let (status, again) = get_on(&mut connection, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        first, again,
        "the same connection (same client port) throughout"
    );
    registry.remove("connector-7").unwrap();
    let (_, code) = get_on(&mut connection, &[]).await.unwrap();
    assert_eq!(code, "unknown_connector");
}

#[tokio::test]
async fn a_certificate_naming_another_connector_is_refused() {
    let pki = pki();
    let usage = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let seven = pki.ca.issue("connector-7", usage.clone(), 7);
    // Issued by the same CA, but claiming connector-7's name with another key.
    let impostor = pki.ca.issue("connector-7", usage.clone(), 70);
    let eight = pki.ca.issue("connector-8", usage, 8);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint),
        Connector::new("connector-8").thumbprint(eight.thumbprint),
    ])
    .unwrap();
    let layer = MtlsIdentityLayer::new(registry).identify(Identify::CommonName);
    let addr = serve(&pki, server_tls(&pki), layer).await;
    assert_eq!(
        once(addr, &pki, Some(&seven)).await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        once(addr, &pki, Some(&impostor)).await.unwrap().1,
        "certificate_not_bound"
    );
}

/// A plain-HTTP server behind a TLS-terminating proxy that forwards the certificate.
async fn serve_behind_proxy(layer: MtlsIdentityLayer) -> SocketAddr {
    async fn headers_seen(request: Request) -> String {
        let forwarded = request.headers().contains_key("x-forwarded-client-cert");
        let auth = Authentication::from_extensions(request.extensions());
        let id = auth.get(AuthMethod::Certificate).map(|p| p.id().to_owned());
        format!("{} header_seen={forwarded}", id.unwrap_or_default())
    }
    let app = Router::new()
        .route("/v1/versionInfo", get(headers_seen))
        .layer(layer);
    crate::client::serve_axum(app).await
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_certificate_and_nobody_else_can() {
    let pki = pki();
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let server_cert = pki.server.clone();
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint),
        Connector::new("web").thumbprint(server_cert.thumbprint),
    ])
    .unwrap();
    let escaped = |pem: &str| {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    // Envoy's Hash is the SHA-256 of the certificate's DER.
    let hash_of = |pem: &str| {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der))
    };
    let xfcc = |pem: &str| {
        format!(
            "By=spiffe://proxy;Hash={};Cert=\"{}\";Subject=\"CN=x\"",
            hash_of(pem),
            escaped(pem)
        )
    };

    let trusted = MtlsIdentityLayer::new(registry.clone())
        .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()))
        .verify_forwarded(pki.ca.pem.as_bytes())
        .unwrap();
    let addr = serve_behind_proxy(trusted).await;
    let send = |value: String| async move {
        crate::client::get(
            addr,
            "127.0.0.1",
            "/v1/versionInfo",
            &[("x-forwarded-client-cert", &value)],
        )
        .await
    };
    let reply = send(xfcc(&seven.pem)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body, "connector-7 header_seen=false",
        "the header never reaches the handler"
    );
    // Verified against the CAs, a server's certificate fails like any other that may
    // not authenticate a client.
    assert_eq!(
        send(xfcc(&server_cert.pem)).await.code().as_deref(),
        Some("untrusted_client_cert")
    );
    let foreign =
        Ca::new("Another CA").issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    assert_eq!(
        send(xfcc(&foreign.pem)).await.code().as_deref(),
        Some("untrusted_client_cert")
    );
    assert_eq!(
        send("Cert=\"garbage\"".into()).await.code().as_deref(),
        Some("untrusted_client_cert")
    );
    // A Hash that is not the certificate's, in any form, or a Cert given twice: the
    // element names two certificates, and is refused.
    let cert_only = format!("Cert=\"{}\"", escaped(&seven.pem));
    assert_eq!(
        send(cert_only.clone()).await.status,
        StatusCode::OK,
        "no Hash is fine"
    );
    let right = hash_of(&seven.pem);
    for hash in [
        hash_of(&server_cert.pem),
        "abc".to_owned(),
        String::new(),
        right[..62].to_owned(),
        format!("{right}00"),
        "zz".repeat(32),
    ] {
        let value = format!("Hash={hash};{cert_only}");
        assert_eq!(
            send(value).await.code().as_deref(),
            Some("untrusted_client_cert"),
            "Hash={hash}"
        );
    }
    let upper = format!("Hash={};{cert_only}", right.to_uppercase());
    assert_eq!(
        send(upper).await.status,
        StatusCode::OK,
        "hex in either case"
    );
    let twice = format!("{cert_only};Cert=\"{}\"", escaped(&server_cert.pem));
    assert_eq!(
        send(twice).await.code().as_deref(),
        Some("untrusted_client_cert")
    );

    // A proxy trusted to have verified the chain: the layer still refuses a server's
    // certificate by its extended key usage.
    let unverified = MtlsIdentityLayer::new(registry.clone())
        .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()));
    let addr = serve_behind_proxy(unverified).await;
    let reply = crate::client::get(
        addr,
        "127.0.0.1",
        "/v1/versionInfo",
        &[("x-forwarded-client-cert", &xfcc(&server_cert.pem))],
    )
    .await;
    assert_eq!(reply.code().as_deref(), Some("wrong_cert_usage"));

    // From a peer that is not a trusted proxy, the header is removed and ignored.
    let untrusted = MtlsIdentityLayer::new(registry)
        .forwarded(ForwardedCertificate::envoy("10.0.0.0/8".parse().unwrap()))
        .mode(portcullis::mtls_identity::Mode::Optional);
    let addr = serve_behind_proxy(untrusted).await;
    let reply = crate::client::get(
        addr,
        "127.0.0.1",
        "/v1/versionInfo",
        &[("x-forwarded-client-cert", &xfcc(&seven.pem))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body, " header_seen=false",
        "unauthenticated, and the header is gone"
    );
}

#[tokio::test]
async fn tonic_with_mtls() {
    use tonic::transport::{
        Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
    };
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let pki = pki();
    let usage = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let seven = pki.ca.issue("connector-7", usage.clone(), 7);
    let stranger = pki.ca.issue("connector-9", usage, 9);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint)
    ])
    .unwrap();
    let (listener, addr) = crate::client::listener().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.pem, &pki.server.key))
        .client_ca_root(Certificate::from_pem(&pki.ca.pem));
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .layer(MtlsIdentityLayer::new(registry))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let check = |leaf: Leaf| {
        let ca = pki.ca.pem.clone();
        async move {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .identity(Identity::from_pem(&leaf.pem, &leaf.key))
                        .domain_name("localhost"),
                )
                .unwrap()
                .connect()
                .await
                .unwrap();
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        }
    };
    assert!(check(seven).await.is_ok());
    let status = check(stranger).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("unknown_connector"),
        "{}",
        status.message()
    );
}

/// RFC 8705 end to end: an app authenticated by its client certificate is issued a token
/// bound to that certificate; the token works on the app's own TLS connection and is
/// refused on a connection made with another connector's certificate.
#[tokio::test]
async fn a_certificate_bound_token_works_only_with_its_certificate() {
    use portcullis::jwt::jsonwebtoken::Algorithm;
    use portcullis::jwt::{Binding, JwtLayer, Mode as JwtMode, SigningKey, TokenIssuer};

    let pki = pki();
    let usage = Some(ExtendedKeyUsagePurpose::ClientAuth);
    let seven = pki.ca.issue("connector-7", usage.clone(), 7);
    let eight = pki.ca.issue("connector-8", usage, 8);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7")
            .role("connector")
            .thumbprint(seven.thumbprint),
        Connector::new("connector-8")
            .role("connector")
            .thumbprint(eight.thumbprint),
    ])
    .unwrap();
    let tokens = TokenIssuer::new(
        SigningKey::generate(Algorithm::ES256).unwrap(),
        "https://security-server.example",
        "connector-api",
    )
    .unwrap()
    .binding(Binding::Required);
    let jwt = JwtLayer::builder()
        .issuer(tokens.validating_issuer())
        .mode(JwtMode::Optional)
        .build()
        .unwrap();
    async fn token_principal(request: Request) -> String {
        let auth = Authentication::from_extensions(request.extensions());
        let jwt = auth.get(AuthMethod::Jwt).map(|p| p.id().to_owned());
        jwt.unwrap_or_else(|| "no token".into())
    }
    let app = Router::new()
        .route_service("/token", tokens.issue_service())
        .route("/v1/versionInfo", get(token_principal))
        .layer(jwt)
        .layer(MtlsIdentityLayer::new(registry));
    let config = server_tls(&pki).build().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            TlsListener::new(tcp, config).for_axum(),
            app.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .await
        .unwrap();
    });

    let mut own = connect(addr, &pki.ca.pem, Some(&seven)).await.unwrap();
    own.ready().await.unwrap();
    let issued = own
        .send_request(
            http::Request::post("/token")
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::OK);
    let body = issued.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let bearer = format!("Bearer {}", body["access_token"].as_str().unwrap());

    let (status, who) = get_on(&mut own, &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!((status, who.as_str()), (StatusCode::OK, "connector-7"));

    let mut other = connect(addr, &pki.ca.pem, Some(&eight)).await.unwrap();
    let (status, code) = get_on(&mut other, &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "certificate_mismatch")
    );
}

/// `crls`, `forwarded` and `verify_forwarded` called on a clone of a layer that is still
/// in use take effect on the clone (copy on write) and leave the original alone: a
/// revocation list or a forwarded-certificate check is never silently dropped.
#[tokio::test]
async fn revocation_and_proxy_settings_on_a_clone_take_effect() {
    let pki = pki();
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let server_cert = pki.server.clone();
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint),
        Connector::new("web").thumbprint(server_cert.thumbprint),
    ])
    .unwrap();
    let xfcc = |pem: &str| {
        let escaped =
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC);
        format!("Cert=\"{escaped}\"")
    };
    let ask = |addr: std::net::SocketAddr, pem: String| async move {
        crate::client::get(
            addr,
            "127.0.0.1",
            "/v1/versionInfo",
            &[("x-forwarded-client-cert", &xfcc(&pem))],
        )
        .await
    };
    let base =
        MtlsIdentityLayer::new(registry.clone()).mode(portcullis::mtls_identity::Mode::Optional);

    // `forwarded` on a clone: the clone reads the header, the original ignores it.
    let forwarding = base
        .clone()
        .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()));
    let with_header = serve_behind_proxy(forwarding.clone()).await;
    let without = serve_behind_proxy(base.clone()).await;
    assert_eq!(
        ask(with_header, seven.pem.clone()).await.body,
        "connector-7 header_seen=false"
    );
    // The original has no forwarded-certificate setting: nobody is authenticated (the
    // header is not one it knows).
    assert_eq!(
        ask(without, seven.pem.clone()).await.body,
        " header_seen=true"
    );

    // `crls` on a clone of the forwarding layer: revoked there, not in the original.
    let crls = Crls::from_bytes(pki.ca.crl(&[7]).as_bytes()).unwrap();
    let revoking = serve_behind_proxy(forwarding.clone().crls(crls)).await;
    assert_eq!(
        ask(revoking, seven.pem.clone()).await.code().as_deref(),
        Some("revoked_cert")
    );
    assert_eq!(
        ask(with_header, seven.pem.clone()).await.status,
        StatusCode::OK
    );

    // `verify_forwarded` on a clone: the server's certificate fails the CA check there.
    let verifying = forwarding
        .clone()
        .verify_forwarded(pki.ca.pem.as_bytes())
        .unwrap();
    let verified = serve_behind_proxy(verifying).await;
    let foreign =
        Ca::new("Another CA").issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    assert_eq!(
        ask(verified, foreign.pem.clone()).await.code().as_deref(),
        Some("untrusted_client_cert")
    );
    assert_eq!(
        ask(with_header, foreign.pem.clone())
            .await
            .code()
            .as_deref(),
        Some("unknown_connector")
    );
    drop((base, forwarding));
}

/// A CRL past its `nextUpdate` may miss revocations: by default its issuer's
/// certificates are refused with 503 `revocation_check_unavailable` until a fresh CRL
/// is loaded; `StaleCrl::AcceptWithWarning` decides by the stale list instead.
#[tokio::test]
async fn a_crl_past_its_next_update_follows_the_stale_policy() {
    use portcullis::mtls_identity::StaleCrl;
    let pki = pki();
    let (seven, eight, registry) = seven_and_eight(&pki);
    // The helper's CRL is due again on 2036-01-01 and revokes serial 8.
    let crl = pki.ca.crl(&[8]);
    let at = |year: i32| {
        let (clock, _) = Clock::manual(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(
                    u64::try_from(i64::from(year - 1970) * 31_557_600).unwrap(),
                ),
        );
        clock
    };
    let xfcc = |pem: &str| {
        let escaped =
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC);
        format!("Cert=\"{escaped}\"")
    };
    let layer = |year: i32, policy: Option<StaleCrl>| {
        let crls = Crls::from_bytes(crl.as_bytes()).unwrap();
        let crls = match policy {
            Some(policy) => crls.stale_policy(policy),
            None => crls,
        };
        MtlsIdentityLayer::new(registry.clone())
            .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()))
            .crls(crls)
            .clock(at(year))
    };
    let ask = |addr: std::net::SocketAddr, pem: String| async move {
        crate::client::get(
            addr,
            "127.0.0.1",
            "/v1/versionInfo",
            &[("x-forwarded-client-cert", &xfcc(&pem))],
        )
        .await
    };

    let fresh = serve_behind_proxy(layer(2030, None)).await;
    assert_eq!(ask(fresh, seven.pem.clone()).await.status, StatusCode::OK);
    assert_eq!(
        ask(fresh, eight.pem.clone()).await.code().as_deref(),
        Some("revoked_cert")
    );

    let stale = serve_behind_proxy(layer(2037, None)).await;
    for leaf in [&seven, &eight] {
        let reply = ask(stale, leaf.pem.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert_eq!(
            reply.code().as_deref(),
            Some("revocation_check_unavailable")
        );
    }

    let lenient = serve_behind_proxy(layer(2037, Some(StaleCrl::AcceptWithWarning))).await;
    assert_eq!(ask(lenient, seven.pem.clone()).await.status, StatusCode::OK);
    assert_eq!(
        ask(lenient, eight.pem.clone()).await.code().as_deref(),
        Some("revoked_cert")
    );
}

/// Connectors 7 and 8, with certificates of serials 7 and 8, registered.
fn seven_and_eight(pki: &Pki) -> (Leaf, Leaf, ConnectorRegistry) {
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let eight = pki
        .ca
        .issue("connector-8", Some(ExtendedKeyUsagePurpose::ClientAuth), 8);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint),
        Connector::new("connector-8").thumbprint(eight.thumbprint),
    ])
    .unwrap();
    (seven, eight, registry)
}

/// Several CRLs of one issuer: the newest (due last) decides staleness whatever order
/// the file lists them in, revocations of every list count, and a DER CRL followed by
/// other bytes is refused when loaded rather than read in part.
#[tokio::test]
async fn several_crls_of_one_issuer_in_any_order() {
    let pki = pki();
    let (seven, eight, registry) = seven_and_eight(&pki);
    // An old list due in 2028 that revokes 8, and a newer one due in 2036 that does not
    // (an operator who appends rather than replaces).
    let (old, new) = (pki.ca.crl_due(&[8], 2028), pki.ca.crl_due(&[], 2036));
    let (clock, _) =
        Clock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(60 * 365 * 24 * 3600));
    for file in [format!("{old}{new}"), format!("{new}{old}")] {
        let crls = Crls::from_bytes(file.as_bytes()).unwrap();
        let layer = MtlsIdentityLayer::new(registry.clone())
            .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()))
            .crls(crls)
            .clock(clock.clone());
        let addr = serve_behind_proxy(layer).await;
        for (leaf, expected) in [(&seven, "200"), (&eight, "revoked_cert")] {
            let escaped = percent_encoding::utf8_percent_encode(
                &leaf.pem,
                percent_encoding::NON_ALPHANUMERIC,
            );
            let reply = crate::client::get(
                addr,
                "127.0.0.1",
                "/v1/versionInfo",
                &[("x-forwarded-client-cert", &format!("Cert=\"{escaped}\""))],
            )
            .await;
            let got = match reply.status {
                StatusCode::OK => "200".to_owned(),
                _ => reply.code().unwrap_or_default(),
            };
            assert_eq!(got, expected, "{}", reply.body);
        }
    }

    let der = |pem: &str| {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let mut trailing = der(&old);
    assert!(Crls::from_bytes(&trailing).is_ok());
    trailing.extend_from_slice(&der(&new));
    let error = Crls::from_bytes(&trailing).unwrap_err().to_string();
    assert!(error.contains("trailing bytes after the CRL"), "{error}");
}

/// nginx's `$ssl_client_escaped_cert`: exactly one PEM certificate and nothing else.
/// Text before it, a second certificate after it, a block of another label, a mangled
/// boundary or two header lines are all refused as `untrusted_client_cert`.
#[tokio::test]
async fn an_escaped_pem_header_is_exactly_one_certificate() {
    let pki = pki();
    let seven = pki
        .ca
        .issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let other = pki
        .ca
        .issue("connector-8", Some(ExtendedKeyUsagePurpose::ClientAuth), 8);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(seven.thumbprint)
    ])
    .unwrap();
    let layer = MtlsIdentityLayer::new(registry).forwarded(ForwardedCertificate::escaped_pem(
        http::HeaderName::from_static("x-ssl-client-cert"),
        "127.0.0.0/8".parse().unwrap(),
    ));
    let addr = serve_behind_proxy(layer).await;
    let escape = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let pem = seven.pem.trim().to_owned();
    let ask = |values: Vec<String>| async move {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("x-ssl-client-cert", v.as_str()))
            .collect();
        crate::client::get(addr, "127.0.0.1", "/v1/versionInfo", &headers).await
    };
    // Allowed: the certificate, escaped or plain, with surrounding whitespace.
    for value in [
        escape(&pem),
        escape(&format!("\n{pem}\n\n")),
        pem.replace('\n', "%0A"),
    ] {
        let reply = ask(vec![value]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let body_of = |pem: &str| {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let refused = [
        format!("junk\n{pem}"),
        format!("{pem}\n{}", other.pem),
        format!("{}\n{pem}", other.pem),
        format!("{pem}\ntrailer"),
        pem.replace("-----END CERTIFICATE-----", "-----END PRIVATE KEY-----"),
        pem.replace(
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----x",
        ),
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----",
            body_of(&pem)
        ),
        format!(
            "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n{}\n-----END CERTIFICATE-----",
            body_of(&pem)
        ),
        body_of(&pem),
        String::new(),
    ];
    for text in refused {
        let reply = ask(vec![escape(&text)]).await;
        assert_eq!(
            reply.code().as_deref(),
            Some("untrusted_client_cert"),
            "{text:?}: {} {}",
            reply.status,
            reply.body
        );
    }
    let reply = ask(vec![escape(&pem), escape(&pem)]).await;
    assert_eq!(reply.code().as_deref(), Some("untrusted_client_cert"));
}

/// A CA certificate issued by `root`.
fn intermediate(root: &Ca, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.signed_by(&key, &root.issuer).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// `verify_forwarded` accepts a leaf issued by an intermediate CA when the intermediate
/// arrives in the XFCC `Chain` or is configured, and never lets an intermediate stand in
/// for a root.
#[tokio::test]
async fn forwarded_leaves_of_an_intermediate_verify_through_the_chain() {
    let root = Ca::new("Plant Root CA");
    let issuing = intermediate(&root, "Plant Issuing CA");
    let rogue = intermediate(&Ca::new("Another Root"), "Plant Issuing CA");
    let leaf = issuing.issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let rogue_leaf = rogue.issue("connector-7", Some(ExtendedKeyUsagePurpose::ClientAuth), 7);
    let registry = ConnectorRegistry::from_connectors([
        Connector::new("connector-7").thumbprint(leaf.thumbprint),
        Connector::new("rogue").thumbprint(rogue_leaf.thumbprint),
    ])
    .unwrap();
    let escaped = |pem: &str| {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let ask = |addr: std::net::SocketAddr, value: String| async move {
        crate::client::get(
            addr,
            "127.0.0.1",
            "/v1/versionInfo",
            &[("x-forwarded-client-cert", &value)],
        )
        .await
    };
    let base = MtlsIdentityLayer::new(registry)
        .forwarded(ForwardedCertificate::envoy("127.0.0.0/8".parse().unwrap()))
        .verify_forwarded(root.pem.as_bytes())
        .unwrap();
    let plain = serve_behind_proxy(base.clone()).await;
    let cert_only = format!("Cert=\"{}\"", escaped(&leaf.pem));
    let with_chain = |chain: String| format!("{cert_only};Chain=\"{}\"", escaped(&chain));

    assert_eq!(
        ask(plain, cert_only.clone()).await.code().as_deref(),
        Some("untrusted_client_cert"),
        "no way to the root without the intermediate"
    );
    let reply = ask(plain, with_chain(format!("{}{}", leaf.pem, issuing.pem))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "connector-7 header_seen=false");
    // A chain that does not reach the root, or holds something else, is refused.
    assert_eq!(
        ask(plain, with_chain(format!("{}{}", leaf.pem, rogue.pem)))
            .await
            .code()
            .as_deref(),
        Some("untrusted_client_cert")
    );
    assert_eq!(
        ask(
            plain,
            with_chain("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into())
        )
        .await
        .code()
        .as_deref(),
        Some("untrusted_client_cert")
    );
    let rogue_value = format!(
        "Cert=\"{}\";Chain=\"{}\"",
        escaped(&rogue_leaf.pem),
        escaped(&format!("{}{}", rogue_leaf.pem, rogue.pem))
    );
    assert_eq!(
        ask(plain, rogue_value.clone()).await.code().as_deref(),
        Some("untrusted_client_cert")
    );

    // Configured intermediates: no chain needed, and still no way for the rogue one.
    let configured = serve_behind_proxy(
        base.forwarded_intermediates(issuing.pem.as_bytes())
            .unwrap(),
    )
    .await;
    assert_eq!(ask(configured, cert_only).await.status, StatusCode::OK);
    assert_eq!(
        ask(configured, rogue_value).await.code().as_deref(),
        Some("untrusted_client_cert")
    );
}
