//! Certificate revocation lists: which serial numbers each issuer has revoked.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::certificate::ClientCertificate;

/// Why CRLs could not be loaded. The lists in use stay.
#[derive(Debug)]
#[non_exhaustive]
pub enum CrlError {
    /// A file could not be read.
    Io(PathBuf, std::io::Error),
    /// Not a CRL (PEM `X509 CRL` or DER): where, and why.
    Parse(String, String),
}

impl fmt::Display for CrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(path, e) => write!(f, "cannot read the CRL {}: {e}", path.display()),
            Self::Parse(source, why) => write!(f, "{source}: not a CRL: {why}"),
        }
    }
}

impl std::error::Error for CrlError {}

#[derive(Debug, Default)]
struct Index {
    /// Issuer name (DER) → revoked serial numbers (as encoded).
    revoked: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
}

/// Revoked certificates, from CRL files the host trusts (the same files it gives the TLS
/// stack), reloadable at run time. Cheap to clone.
///
/// The TLS handshake already refuses revoked certificates when the server config has
/// the CRLs; the identity layer checks again so that certificates forwarded by a proxy,
/// and connections opened before a CRL update, are refused too.
#[derive(Clone, Default)]
pub struct Crls {
    index: Arc<ArcSwap<Index>>,
    files: Arc<Vec<PathBuf>>,
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index.load();
        f.debug_struct("Crls")
            .field("issuers", &index.revoked.len())
            .field("files", &self.files)
            .finish()
    }
}

impl Crls {
    /// No revocations.
    pub fn new() -> Self {
        Self::default()
    }

    /// CRLs read from files (PEM, several per file, or DER), reloaded with
    /// [`Crls::reload`].
    pub fn from_files(
        files: impl IntoIterator<Item = impl Into<PathBuf>>,
    ) -> Result<Self, CrlError> {
        let files: Vec<PathBuf> = files.into_iter().map(Into::into).collect();
        let crls = Self {
            index: Arc::default(),
            files: Arc::new(files),
        };
        crls.reload()?;
        Ok(crls)
    }

    /// CRLs from PEM or DER bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CrlError> {
        let crls = Self::new();
        let mut index = Index::default();
        add(&mut index, "(bytes)", bytes)?;
        crls.index.store(Arc::new(index));
        Ok(crls)
    }

    /// Reads the files again; on error the lists in use stay.
    pub fn reload(&self) -> Result<(), CrlError> {
        let mut index = Index::default();
        for path in self.files.iter() {
            let bytes = std::fs::read(path).map_err(|e| CrlError::Io(path.clone(), e))?;
            add(&mut index, &path.display().to_string(), &bytes)?;
        }
        self.index.store(Arc::new(index));
        Ok(())
    }

    pub(crate) fn is_revoked(&self, certificate: &ClientCertificate) -> bool {
        self.index
            .load()
            .revoked
            .get(certificate.issuer_der())
            .is_some_and(|serials| serials.contains(certificate.serial()))
    }
}

fn add(index: &mut Index, source: &str, bytes: &[u8]) -> Result<(), CrlError> {
    let parse_error = |why: String| CrlError::Parse(source.to_owned(), why);
    if bytes.starts_with(b"-----BEGIN") || bytes.iter().take(64).all(u8::is_ascii) {
        let mut found = false;
        for pem in Pem::iter_from_buffer(bytes) {
            let pem = pem.map_err(|e| parse_error(e.to_string()))?;
            if pem.label != "X509 CRL" {
                continue;
            }
            add_der(index, &pem.contents).map_err(parse_error)?;
            found = true;
        }
        if !found {
            return Err(parse_error("no X509 CRL block".into()));
        }
        return Ok(());
    }
    add_der(index, bytes).map_err(parse_error)
}

fn add_der(index: &mut Index, der: &[u8]) -> Result<(), String> {
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| e.to_string())?;
    let serials = index
        .revoked
        .entry(crl.issuer().as_raw().to_vec())
        .or_default();
    for revoked in crl.iter_revoked_certificates() {
        serials.insert(revoked.raw_serial().to_vec());
    }
    Ok(())
}
