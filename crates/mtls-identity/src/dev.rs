//! A development PKI made on the spot (feature `dev-pki`): for examples, tests and a
//! first run on a laptop, never for production.

use std::fmt;
use std::path::Path;

use portcullis_core::ClientCertThumbprint;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::certificate::{CertificateError, ClientCertificate};
use crate::tls::ServerTls;

fn failed(what: &'static str, e: impl fmt::Display) -> CertificateError {
    CertificateError::Generate {
        what,
        reason: e.to_string(),
    }
}

/// A CA, a server certificate signed by it, and client certificates on demand, all
/// ECDSA P-256, generated in memory.
///
/// ```
/// use portcullis_mtls_identity::DevPki;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pki = DevPki::generate(&["localhost"])?;
/// let connector = pki.client("connector-7")?;
/// let server_config = pki.server_tls().build()?;
/// assert!(connector.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// # let _ = server_config;
/// # Ok(())
/// # }
/// ```
pub struct DevPki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

impl DevPki {
    /// A new CA ("Portcullis development CA") and a server certificate for `server_names`
    /// (DNS names or IP addresses).
    pub fn generate(server_names: &[&str]) -> Result<Self, CertificateError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("the CA", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis development CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|e| failed("the CA key", e))?;
        let ca_pem = params
            .self_signed(&key)
            .map_err(|e| failed("the CA", e))?
            .pem();
        let ca = Issuer::new(params, key);

        let names: Vec<String> = server_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params =
            CertificateParams::new(names).map_err(|e| failed("the server names", e))?;
        if let Some(first) = server_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(|e| failed("the server key", e))?;
        let server_pem = params
            .signed_by(&key, &ca)
            .map_err(|e| failed("the server certificate", e))?
            .pem();
        Ok(Self {
            ca,
            ca_pem,
            server_pem,
            server_key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM: the server's trust anchor for client certificates, and
    /// the clients' for the server.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate, PEM.
    pub fn server_cert_pem(&self) -> &str {
        &self.server_pem
    }

    /// The server's private key, PEM.
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    /// A [`ServerTls`] with the server certificate, requiring client certificates from
    /// this CA.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls::new(self.server_pem.as_bytes(), self.server_key_pem.as_bytes())
            .client_cas(self.ca_pem.as_bytes())
    }

    /// A client certificate for `name` (subject CN and SAN DNS name), for client
    /// authentication only.
    pub fn client(&self, name: &str) -> Result<DevClient, CertificateError> {
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| failed("the client name", e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(|e| failed("the client key", e))?;
        let certificate = params
            .signed_by(&key, &self.ca)
            .map_err(|e| failed("the client certificate", e))?;
        Ok(DevClient {
            thumbprint: ClientCertificate::from_der(certificate.der())?.thumbprint(),
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` (mode 0600 on Unix) into `dir`,
    /// creating it.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        std::fs::write(dir.join("server.pem"), &self.server_pem)?;
        write_secret(&dir.join("server.key"), &self.server_key_pem)
    }
}

/// A client certificate from a [`DevPki`].
#[derive(Clone)]
pub struct DevClient {
    cert_pem: String,
    key_pem: String,
    thumbprint: ClientCertThumbprint,
}

impl fmt::Debug for DevClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("DevClient")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl DevClient {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Certificate and key in one PEM, as curl's `--cert` and reqwest's
    /// `Identity::from_pem` take them.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// The certificate's SHA-256 thumbprint, to register with a connector.
    pub fn thumbprint(&self) -> ClientCertThumbprint {
        self.thumbprint
    }

    /// Writes `{name}.pem` (certificate and key, mode 0600 on Unix) into `dir`.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_secret(&dir.join(format!("{name}.pem")), &self.identity_pem())
    }
}

fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
