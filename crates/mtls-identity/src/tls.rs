//! A rustls server config that asks for client certificates.

use std::fmt;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Whether the handshake requires a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate chained to the client CAs cannot connect.
    #[default]
    Required,
    /// The client may connect without one; the identity layer decides per request. A
    /// certificate that is sent must still verify.
    Optional,
    /// The server does not ask for client certificates: plain server-side TLS, for
    /// stacks that authenticate with API keys or tokens only. No client CA is needed.
    Off,
}

/// Why a TLS configuration could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// PEM that could not be read; `what` names it (the server chain, the server key,
    /// the client CAs, the CRLs, the forwarded intermediates).
    #[error("TLS configuration: {what}: {reason}")]
    Unreadable {
        /// Which input.
        what: &'static str,
        /// The reader's reason.
        reason: String,
    },
    /// PEM that holds no certificate where one is needed; `what` names it.
    #[error("TLS configuration: {what} holds no certificate")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// Client certificates are asked for, and no client CA was given.
    #[error("TLS configuration: no client CA: give .client_cas(pem) the CAs that issue client certificates")]
    NoClientCa,
    /// Client CAs or CRLs were given, and client certificates are off.
    #[error("TLS configuration: client CAs or CRLs were given, but client certificates are off: remove them, or ask for certificates with ClientAuth::Optional")]
    UnusedClientCas,
    /// rustls refused a readable input; `what` names it (a client CA, the client
    /// verifier, the protocol versions, the server certificate and key).
    #[error("TLS configuration: {what}: {reason}")]
    Refused {
        /// Which input.
        what: &'static str,
        /// rustls's reason.
        reason: String,
    },
}

/// Builds the rustls [`ServerConfig`] of an mTLS server: the server's chain and key,
/// the CAs client certificates must chain to, CRLs checked in the handshake, and
/// whether a client certificate is required. aws-lc-rs is the crypto provider; ALPN
/// offers HTTP/2 and HTTP/1.1.
///
/// ```
/// use portcullis_mtls_identity::{ClientAuth, ServerTls};
///
/// fn config(chain: &[u8], key: &[u8], client_ca: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
///     let config = ServerTls::new(chain, key)
///         .client_cas(client_ca)
///         .client_auth(ClientAuth::Required)
///         .build()?;
///     # let _ = config;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    chain: Vec<u8>,
    key: Vec<u8>,
    client_cas: Vec<u8>,
    crls: Vec<u8>,
    client_auth: ClientAuth,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server's certificate chain and private key, PEM.
    pub fn new(chain_pem: &[u8], key_pem: &[u8]) -> Self {
        Self {
            chain: chain_pem.to_vec(),
            key: key_pem.to_vec(),
            client_cas: Vec::new(),
            crls: Vec::new(),
            client_auth: ClientAuth::Required,
        }
    }

    /// The CAs client certificates must chain to, PEM (several certificates allowed).
    pub fn client_cas(mut self, pem: &[u8]) -> Self {
        self.client_cas = pem.to_vec();
        self
    }

    /// CRLs of those CAs, PEM: a revoked certificate fails the handshake.
    pub fn crls(mut self, pem: &[u8]) -> Self {
        self.crls = pem.to_vec();
        self
    }

    /// [`ClientAuth::Required`] (the default), [`ClientAuth::Optional`] or
    /// [`ClientAuth::Off`].
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// The verifier of client certificates: chained to the client CAs, checked against
    /// the CRLs, optional when [`ClientAuth::Optional`].
    fn client_verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.client_cas) {
            let ca = ca.map_err(|e| unreadable("the client CAs", e))?;
            roots.add(ca).map_err(|e| refused("a client CA", e))?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::NoClientCa);
        }
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(&self.crls)
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable("the CRLs", e))?;
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
        if self.client_auth == ClientAuth::Optional {
            verifier = verifier.allow_unauthenticated();
        }
        verifier
            .build()
            .map_err(|e| refused("the client verifier", e))
    }

    /// Checks everything and builds the config.
    pub fn build(self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.chain)
            .collect::<Result<_, _>>()
            .map_err(|e| unreadable("the server chain", e))?;
        if chain.is_empty() {
            return Err(TlsConfigError::Empty {
                what: "the server chain",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| unreadable("the server key", e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| refused("the protocol versions", e))?;
        let builder = if self.client_auth == ClientAuth::Off {
            // Client CAs or CRLs given here would be silently unused: say so instead.
            if !self.client_cas.is_empty() || !self.crls.is_empty() {
                return Err(TlsConfigError::UnusedClientCas);
            }
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_verifier(self.client_verifier(provider)?)
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| refused("the server certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

pub(crate) fn unreadable(what: &'static str, e: impl fmt::Display) -> TlsConfigError {
    TlsConfigError::Unreadable {
        what,
        reason: e.to_string(),
    }
}

pub(crate) fn refused(what: &'static str, e: impl fmt::Display) -> TlsConfigError {
    TlsConfigError::Refused {
        what,
        reason: e.to_string(),
    }
}
