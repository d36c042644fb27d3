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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// A file could not be read.
    #[error("cannot read the CRL {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, std::io::Error),
    /// Not a CRL (PEM `X509 CRL` or DER): where, and why.
    #[error("{0}: not a CRL: {1}")]
    Parse(String, String),
}

#[derive(Debug, Default)]
struct Index {
    /// Issuer name (DER) → revoked serial numbers (as encoded).
    revoked: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// Issuer name (DER) → when its newest CRL says the next one is due (seconds since
    /// the epoch); `None` when a CRL of the issuer names no `nextUpdate`.
    next_update: HashMap<Vec<u8>, Option<i64>>,
}

/// What the layer does with a certificate whose issuer's CRL is past its `nextUpdate`:
/// the list may miss revocations made since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleCrl {
    /// Refuse with 503 `revocation_check_unavailable` until a fresh CRL is loaded (the
    /// default).
    #[default]
    Refuse,
    /// Decide by the stale list, and log a warning.
    AcceptWithWarning,
}

/// A certificate checked against the CRLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrlVerdict {
    /// Not on its issuer's CRL, or its issuer has none.
    Good,
    /// On its issuer's CRL.
    Revoked,
    /// Its issuer's CRL is past `nextUpdate`, and the policy refuses.
    Stale,
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
    stale: StaleCrl,
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index.load();
        f.debug_struct("Crls")
            .field("issuers", &index.revoked.len())
            .field("files", &self.files)
            .field("stale", &self.stale)
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
            stale: StaleCrl::default(),
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

    /// What to do with a certificate whose issuer's CRL is past its `nextUpdate`
    /// ([`StaleCrl::Refuse`] by default).
    pub fn stale_policy(mut self, policy: StaleCrl) -> Self {
        self.stale = policy;
        self
    }

    /// Checks `certificate` at `now` (seconds since the epoch).
    pub(crate) fn check(&self, certificate: &ClientCertificate, now: i64) -> CrlVerdict {
        let index = self.index.load();
        let issuer = certificate.issuer_der();
        let revoked = index
            .revoked
            .get(issuer)
            .is_some_and(|serials| serials.contains(certificate.serial()));
        let stale = index
            .next_update
            .get(issuer)
            .is_some_and(|due| due.is_some_and(|due| now > due));
        match (stale, self.stale, revoked) {
            (true, StaleCrl::Refuse, _) => CrlVerdict::Stale,
            (true, StaleCrl::AcceptWithWarning, revoked) => {
                tracing::warn!(
                    "mtls: a client certificate was checked against a CRL past its nextUpdate; reload fresh CRLs"
                );
                if revoked {
                    CrlVerdict::Revoked
                } else {
                    CrlVerdict::Good
                }
            }
            (false, _, true) => CrlVerdict::Revoked,
            (false, _, false) => CrlVerdict::Good,
        }
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
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| e.to_string())?;
    // Bytes after the CRL are not part of it: a file that is more than one CRL, or a
    // CRL and something else, is refused rather than read in part.
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".into());
    }
    let issuer = crl.issuer().as_raw().to_vec();
    // Several CRLs of one issuer: the one due last is the newest, and one that names no
    // `nextUpdate` is never stale, whichever order the files list them in.
    let due = crl.next_update().map(|next| next.timestamp());
    index
        .next_update
        .entry(issuer.clone())
        .and_modify(|entry| {
            *entry = match (*entry, due) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            }
        })
        .or_insert(due);
    let serials = index.revoked.entry(issuer).or_default();
    for revoked in crl.iter_revoked_certificates() {
        serials.insert(revoked.raw_serial().to_vec());
    }
    Ok(())
}
