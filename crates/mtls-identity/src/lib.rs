//! Client certificates as identities: the verified leaf certificate becomes a
//! [`Principal`](portcullis_core::Principal), bound to a registered connector.
//!
//! The certificate reaches the layer from the connection — [`TlsListener`] for
//! `axum::serve`, tonic's own TLS connect info (feature `tonic`), or a host's acceptor
//! inserting [`TlsPeer`](portcullis_core::TlsPeer) — or from a trusted proxy's header
//! ([`ForwardedCertificate`]: Envoy's `X-Forwarded-Client-Cert`, nginx's escaped PEM).
//! [`MtlsIdentityLayer`] then refuses certificates that are expired or not yet valid even
//! if the TLS stack let them through, whose extended key usage lacks `clientAuth` (a
//! server's or a sensor's certificate), that are on a CRL ([`Crls`]) or revoked by an
//! OCSP responder ([`Ocsp`], [`OcspClient`]), that no connector
//! registered, that claim a connector whose certificates are others, or whose connector
//! is blocked. It puts the connector's principal in the request's
//! [`Authentication`](portcullis_core::Authentication) and the certificate's
//! [`ClientCertThumbprint`](portcullis_core::ClientCertThumbprint) in its extensions, for
//! certificate-bound tokens.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis_core::{AuthMethod, Authentication, TlsPeer};
//! use portcullis_mtls_identity::{ClientCertificate, Connector, ConnectorRegistry, MtlsIdentityLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A client certificate, as the TLS stack would have verified it.
//! let mut params = rcgen::CertificateParams::new(vec!["connector-7.plant.example".into()])?;
//! params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
//! let der = params.self_signed(&rcgen::KeyPair::generate()?)?.der().to_vec();
//! let thumbprint = ClientCertificate::from_der(&der)?.thumbprint();
//!
//! let registry = ConnectorRegistry::new();
//! registry.insert(Connector::new("connector-7").role("connector").thumbprint(thumbprint))?;
//! let service = ServiceBuilder::new()
//!     .layer(MtlsIdentityLayer::new(registry.clone()))
//!     .service(service_fn(|request: Request<()>| async move {
//!         let auth = Authentication::from_extensions(request.extensions());
//!         let id = auth.get(AuthMethod::Certificate).map(|p| p.id().to_owned());
//!         Ok::<_, Infallible>(Response::new(id.unwrap_or_default()))
//!     }));
//!
//! let on_connection = |der: &[u8]| {
//!     let mut request = Request::new(());
//!     let chain: Arc<[Bytes]> = Arc::from(vec![Bytes::copy_from_slice(der)]);
//!     request.extensions_mut().insert(TlsPeer { addr: "192.0.2.7:50000".parse().unwrap(), chain: Some(chain) });
//!     request
//! };
//! # futures::executor::block_on(async {
//! let allowed = service.clone().oneshot(on_connection(&der)).await?;
//! assert_eq!(allowed.status(), StatusCode::OK);
//!
//! registry.block("connector-7")?;
//! let blocked = service.clone().oneshot(on_connection(&der)).await?;
//! assert_eq!(blocked.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Serving TLS
//!
//! - axum: [`TlsListener::for_axum`] with `into_make_service_with_connect_info::<TlsPeer>()`.
//! - plain hyper: `serve_hyper` (feature `hyper`).
//! - tonic (feature `tonic`): tonic terminates TLS itself and keeps the peer chain in
//!   its `TlsConnectInfo`, which the layer reads:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_mtls_identity::{Connector, ConnectorRegistry, DevPki, MtlsIdentityLayer};
//! use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! let pki = DevPki::generate(&["localhost"])?;
//! let (connector, stranger) = (pki.client("connector-7")?, pki.client("connector-9")?);
//! let registry = ConnectorRegistry::new();
//! registry.insert(Connector::new("connector-7").thumbprint(connector.thumbprint()))?;
//!
//! let tls = ServerTlsConfig::new()
//!     .identity(Identity::from_pem(pki.server_cert_pem(), pki.server_key_pem()))
//!     .client_ca_root(Certificate::from_pem(pki.ca_pem()));
//! let (_, health) = tonic_health::server::health_reporter();
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = tcp.local_addr()?;
//! let server = Server::builder()
//!     .tls_config(tls)?
//!     .layer(MtlsIdentityLayer::new(registry))
//!     .add_service(health)
//!     .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(tcp));
//! tokio::spawn(server);
//!
//! # let ca = pki.ca_pem().to_owned();
//! let call = |client: portcullis_mtls_identity::DevClient| {
//!     # let ca = ca.clone();
//!     async move {
//!         let tls = ClientTlsConfig::new()
//!             .ca_certificate(Certificate::from_pem(ca))
//!             .identity(Identity::from_pem(client.cert_pem(), client.key_pem()))
//!             .domain_name("localhost");
//!         let channel = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
//!         let answer = HealthClient::new(channel).check(HealthCheckRequest::default()).await;
//!         Ok::<_, Box<dyn std::error::Error>>(answer)
//!     }
//! };
//! assert!(call(connector).await?.is_ok());
//! let refused = call(stranger).await?.unwrap_err();
//! assert_eq!(refused.code(), tonic::Code::Unauthenticated);
//! assert!(refused.message().starts_with("unknown_connector"));
//! # Ok(())
//! # }
//! ```
//!
//! # Sessions that end with their connector
//!
//! A token issued to a client certificate (`portcullis_jwt::TokenIssuer`) outlives the
//! request that got it. The [`ConnectorRegistry`] is a
//! [`CredentialCheck`](portcullis_core::CredentialCheck): given to the issuer, a token
//! stays good only while its certificate is registered to the connector it named and
//! the connector is not blocked, so blocking a connector (or reloading a connector file
//! that blocks it) ends its sessions too.
//!
//! ```
//! use portcullis_core::{AuthMethod, Credential, CredentialCheck, CredentialStatus};
//! use portcullis_mtls_identity::{ClientCertificate, Connector, ConnectorRegistry};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pki = portcullis_mtls_identity::DevPki::generate(&["localhost"])?;
//! # let client = pki.client("connector-7")?;
//! let registry = ConnectorRegistry::new();
//! registry.insert(Connector::new("connector-7").thumbprint(client.thumbprint()))?;
//! // issuer = TokenIssuer::new(..)?.credential_check(registry.clone());
//! let session = Credential {
//!     method: AuthMethod::Certificate,
//!     id: client.thumbprint().to_string().into(),
//!     principal: "connector-7".into(),
//! };
//! let ask = |registry: &ConnectorRegistry| futures::executor::block_on(registry.check(&session));
//! assert_eq!(ask(&registry)?, CredentialStatus::Good);
//! registry.block("connector-7")?;
//! assert_eq!(ask(&registry)?, CredentialStatus::Revoked);
//! # Ok(())
//! # }
//! ```
//!
//! # Refusals
//!
//! | situation | status | code |
//! |---|---|---|
//! | no certificate, in `required` mode | 401 | `missing_client_cert` |
//! | unreadable; a forwarded one that does not verify; a trusted proxy's malformed header | 401 | `untrusted_client_cert` |
//! | past `notAfter` / before `notBefore` | 401 | `expired_client_cert` / `client_cert_not_yet_valid` |
//! | extended key usage without `clientAuth` (or none, unless allowed) | 401 | `wrong_cert_usage` |
//! | on a CRL | 401 | `revoked_cert` |
//! | no connector registered for it | 401 | `unknown_connector` |
//! | names a connector whose bound certificates are others | 401 | `certificate_not_bound` |
//! | its connector is blocked | 401 | `connector_blocked` |
//! | OCSP: revoked | 401 | `revoked_cert` |
//! | OCSP: the responder does not know it (failing closed) | 401 | `revocation_unknown` |
//! | OCSP: no usable answer — responder down, bad signature, stale (failing closed) | 503 | `revocation_check_unavailable` |
//! | the issuer's CRL is past its `nextUpdate` ([`StaleCrl::Refuse`], the default) | 503 | `revocation_check_unavailable` |
//! | another certificate layer already authenticated the request | 500 | `duplicate_authentication` |
//!
//! A certificate of another CA never gets this far: the TLS handshake refuses it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod certificate;
#[cfg(feature = "dev-pki")]
mod dev;
mod forwarded;
mod future;
#[cfg(feature = "hyper")]
mod hyper_serve;
mod layer;
#[cfg(test)]
mod layer_tests;
mod listener;
mod ocsp;
#[cfg(feature = "ocsp-http")]
mod ocsp_client;
mod ocsp_policy;
mod registry;
mod revocation;
mod spiffe;
mod tls;

pub use certificate::{CertificateError, ClientCertificate, KeyUsage};
#[cfg(feature = "dev-pki")]
pub use dev::{DevClient, DevPki};
pub use forwarded::{CertificateHeaderFormat, ForwardedCertificate};
pub use future::ResponseFuture;
#[cfg(feature = "hyper")]
pub use hyper_serve::{
    serve_hyper, serve_hyper_until, serve_hyper_with, Listening, ServeLimits, ServeReport,
};
pub use layer::{Identify, Mode, MtlsIdentity, MtlsIdentityLayer, MtlsRefusal};
#[cfg(feature = "axum")]
pub use listener::AxumTlsListener;
pub use listener::{TlsListener, DEFAULT_HANDSHAKE_TIMEOUT};
pub use ocsp::{OcspAnswer, OcspCheck, OcspError, OcspFuture, OcspStatus};
#[cfg(feature = "ocsp-http")]
pub use ocsp_client::OcspClient;
pub use ocsp_policy::{Ocsp, OcspFailure};
pub use registry::{parse_thumbprint, Connector, ConnectorRegistry, RegistryError};
pub use revocation::{CrlError, Crls, StaleCrl};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{ClientAuth, ServerTls, TlsConfigError};

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "mtls-identity";
