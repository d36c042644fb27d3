//! Registered connectors: who each certificate belongs to, with what roles, and whether
//! the connector may still connect.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portcullis_core::{
    AuthMethod, ClientCertThumbprint, Credential, CredentialCheck, CredentialFuture,
    CredentialStatus, Principal,
};
use serde::Deserialize;

/// A registered client: its id, roles, the certificates bound to it, and whether it is
/// blocked.
///
/// ```
/// use portcullis_core::ClientCertThumbprint;
/// use portcullis_mtls_identity::Connector;
///
/// let connector = Connector::new("connector-7")
///     .role("connector")
///     .thumbprint(ClientCertThumbprint::from_bytes([7; 32]));
/// assert_eq!(connector.id(), "connector-7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    id: String,
    roles: Vec<String>,
    thumbprints: Vec<ClientCertThumbprint>,
    blocked: bool,
    tier: Option<String>,
}

impl Connector {
    /// A connector with its stable id (the principal id its requests get).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            roles: Vec::new(),
            thumbprints: Vec::new(),
            blocked: false,
            tier: None,
        }
    }

    /// Adds a role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Binds a certificate (by SHA-256 thumbprint) to this connector. A connector with
    /// bound certificates accepts only those.
    pub fn thumbprint(mut self, thumbprint: ClientCertThumbprint) -> Self {
        self.thumbprints.push(thumbprint);
        self
    }

    /// Marks the connector blocked: refused with `connector_blocked`.
    pub fn blocked(mut self, blocked: bool) -> Self {
        self.blocked = blocked;
        self
    }

    /// The rate-limit tier of its principal.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The roles.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The bound certificates.
    pub fn thumbprints(&self) -> &[ClientCertThumbprint] {
        &self.thumbprints
    }

    /// Whether it is blocked.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    fn principal(&self, thumbprint: Option<ClientCertThumbprint>) -> Principal {
        let mut builder = Principal::builder(self.id.as_str(), AuthMethod::Certificate)
            .roles(self.roles.iter().cloned());
        if let Some(thumbprint) = thumbprint {
            builder = builder.credential_id(thumbprint.to_string());
        }
        if let Some(tier) = &self.tier {
            builder = builder.rate_limit_tier(tier.as_str());
        }
        builder.build()
    }
}

/// A connector as the layer finds it, with its principal built once.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) connector: Connector,
    /// The principal for a request made with one of the bound certificates.
    pub(crate) principals: HashMap<ClientCertThumbprint, Principal>,
    /// The principal when no certificate is bound (subject mapping only).
    pub(crate) unbound: Principal,
}

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Arc<Registered>>,
    by_thumbprint: HashMap<ClientCertThumbprint, Arc<Registered>>,
}

impl Index {
    fn build(connectors: impl IntoIterator<Item = Connector>) -> Result<Self, RegistryError> {
        let mut index = Index::default();
        for connector in connectors {
            if index.by_id.contains_key(&connector.id) {
                return Err(RegistryError::DuplicateId(connector.id));
            }
            let principals = connector
                .thumbprints
                .iter()
                .map(|t| (*t, connector.principal(Some(*t))))
                .collect();
            let registered = Arc::new(Registered {
                unbound: connector.principal(None),
                principals,
                connector,
            });
            for thumbprint in &registered.connector.thumbprints {
                if let Some(other) = index.by_thumbprint.get(thumbprint) {
                    return Err(RegistryError::SharedCertificate(
                        *thumbprint,
                        other.connector.id.clone(),
                        registered.connector.id.clone(),
                    ));
                }
                index.by_thumbprint.insert(*thumbprint, registered.clone());
            }
            index
                .by_id
                .insert(registered.connector.id.clone(), registered);
        }
        Ok(index)
    }

    fn connectors(&self) -> Vec<Connector> {
        let mut all: Vec<_> = self.by_id.values().map(|r| r.connector.clone()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

/// Why a registry could not be built or loaded. The registry in use stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two connectors with one id.
    #[error("connector {0:?} is registered twice")]
    DuplicateId(String),
    /// One certificate bound to two connectors.
    #[error("certificate {0} is bound to both {1:?} and {2:?}")]
    SharedCertificate(ClientCertThumbprint, String, String),
    /// No connector with this id.
    #[error("no connector {0:?}")]
    UnknownId(String),
    /// The file could not be read.
    #[error("cannot read {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, std::io::Error),
    /// The file is not a valid registry: where, and why.
    #[error("{path}: {why}", path = .0.display(), why = .1)]
    Parse(PathBuf, String),
}

/// The registered connectors, shared by the layer and the host's administration code.
/// Cheap to clone; changes apply to the next request, on connections already open too.
///
/// ```
/// use portcullis_core::ClientCertThumbprint;
/// use portcullis_mtls_identity::{Connector, ConnectorRegistry};
///
/// let registry = ConnectorRegistry::new();
/// registry.insert(Connector::new("connector-7").role("connector"))?;
/// registry.block("connector-7")?;
/// assert!(registry.get("connector-7").unwrap().is_blocked());
/// # Ok::<(), portcullis_mtls_identity::RegistryError>(())
/// ```
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    index: Arc<ArcSwap<Index>>,
    file: Option<Arc<PathBuf>>,
    writes: Arc<Mutex<()>>,
}

impl fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorRegistry")
            .field("connectors", &self.index.load().by_id.len())
            .field("file", &self.file)
            .finish()
    }
}

impl ConnectorRegistry {
    /// An empty in-memory registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry of these connectors.
    pub fn from_connectors(
        connectors: impl IntoIterator<Item = Connector>,
    ) -> Result<Self, RegistryError> {
        let registry = Self::new();
        registry.index.store(Arc::new(Index::build(connectors)?));
        Ok(registry)
    }

    /// A registry read from a TOML file, reloaded with [`ConnectorRegistry::reload`]:
    ///
    /// ```toml
    /// [[connector]]
    /// id = "connector-7"
    /// roles = ["connector"]
    /// thumbprints = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    /// blocked = false
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref().to_owned();
        let connectors = read_file(&path)?;
        let registry = Self::from_connectors(connectors)?;
        Ok(Self {
            file: Some(Arc::new(path)),
            ..registry
        })
    }

    /// Reads the file again. On error the registry in use stays.
    pub fn reload(&self) -> Result<(), RegistryError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let index = Index::build(read_file(path)?)?;
        let _guard = self.lock();
        self.index.store(Arc::new(index));
        Ok(())
    }

    /// Adds or replaces a connector.
    pub fn insert(&self, connector: Connector) -> Result<(), RegistryError> {
        self.change(|connectors| {
            connectors.retain(|c| c.id != connector.id);
            connectors.push(connector);
            Ok(())
        })
    }

    /// Blocks a connector: its next request is refused, on open connections too.
    pub fn block(&self, id: &str) -> Result<(), RegistryError> {
        self.set_blocked(id, true)
    }

    /// Lifts a block.
    pub fn unblock(&self, id: &str) -> Result<(), RegistryError> {
        self.set_blocked(id, false)
    }

    /// Deletes a connector: its certificates become unknown.
    pub fn remove(&self, id: &str) -> Result<(), RegistryError> {
        self.change(|connectors| {
            let before = connectors.len();
            connectors.retain(|c| c.id != id);
            if connectors.len() == before {
                return Err(RegistryError::UnknownId(id.to_owned()));
            }
            Ok(())
        })
    }

    /// A connector by id.
    pub fn get(&self, id: &str) -> Option<Connector> {
        self.index.load().by_id.get(id).map(|r| r.connector.clone())
    }

    /// Every connector, sorted by id.
    pub fn connectors(&self) -> Vec<Connector> {
        self.index.load().connectors()
    }

    pub(crate) fn by_thumbprint(
        &self,
        thumbprint: &ClientCertThumbprint,
    ) -> Option<Arc<Registered>> {
        self.index.load().by_thumbprint.get(thumbprint).cloned()
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Registered>> {
        self.index.load().by_id.get(id).cloned()
    }

    fn set_blocked(&self, id: &str, blocked: bool) -> Result<(), RegistryError> {
        self.change(
            |connectors| match connectors.iter_mut().find(|c| c.id == id) {
                Some(connector) => {
                    connector.blocked = blocked;
                    Ok(())
                }
                None => Err(RegistryError::UnknownId(id.to_owned())),
            },
        )
    }

    fn change(
        &self,
        edit: impl FnOnce(&mut Vec<Connector>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let _guard = self.lock();
        let mut connectors = self.index.load().connectors();
        edit(&mut connectors)?;
        self.index.store(Arc::new(Index::build(connectors)?));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    connector: Vec<ConnectorEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorEntry {
    id: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    thumbprints: Vec<String>,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    tier: Option<String>,
}

fn read_file(path: &Path) -> Result<Vec<Connector>, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Io(path.to_owned(), e))?;
    parse(&text).map_err(|why| RegistryError::Parse(path.to_owned(), why))
}

pub(crate) fn parse(text: &str) -> Result<Vec<Connector>, String> {
    let file: RegistryFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.connector
        .into_iter()
        .map(|entry| {
            let mut connector = Connector::new(entry.id.clone()).blocked(entry.blocked);
            connector.roles = entry.roles;
            connector.tier = entry.tier;
            for text in &entry.thumbprints {
                connector
                    .thumbprints
                    .push(parse_thumbprint(text).map_err(|why| {
                        format!("connector {:?}: thumbprint {text:?}: {why}", entry.id)
                    })?);
            }
            Ok(connector)
        })
        .collect()
}

/// `sha256:<64 hex>` or the 64 hex digits alone, any case, colons allowed between bytes.
pub fn parse_thumbprint(text: &str) -> Result<ClientCertThumbprint, &'static str> {
    let hex_digits: String = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&hex_digits).map_err(|_| "not hexadecimal")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "a SHA-256 thumbprint has 64 hex digits")?;
    Ok(ClientCertThumbprint::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse_and_refuse_mistakes() {
        let hex = "ab".repeat(32);
        let connectors = parse(&format!(
            "[[connector]]\nid = \"c7\"\nroles = [\"connector\"]\nthumbprints = [\"sha256:{hex}\"]\n"
        ))
        .unwrap();
        assert_eq!(
            connectors[0].thumbprints()[0],
            ClientCertThumbprint::from_bytes([0xab; 32])
        );
        assert!(parse("[[connector]]\nid = \"c\"\nrole = [\"typo\"]\n").is_err());
        assert!(parse("[[connector]]\nid = \"c\"\nthumbprints = [\"abc\"]\n").is_err());
        assert!(parse("[[connector]]\nid = \"c\"\nthumbprints = [\"zz\"]\n").is_err());
    }

    #[test]
    fn one_certificate_belongs_to_one_connector() {
        let t = ClientCertThumbprint::from_bytes([1; 32]);
        let err = ConnectorRegistry::from_connectors([
            Connector::new("a").thumbprint(t),
            Connector::new("b").thumbprint(t),
        ])
        .unwrap_err();
        assert!(matches!(err, RegistryError::SharedCertificate(..)));
        let err = ConnectorRegistry::from_connectors([Connector::new("a"), Connector::new("a")])
            .unwrap_err();
        assert!(matches!(err, RegistryError::DuplicateId(_)));
    }

    #[test]
    fn block_unblock_remove() {
        let t = ClientCertThumbprint::from_bytes([1; 32]);
        let registry =
            ConnectorRegistry::from_connectors([Connector::new("a").thumbprint(t)]).unwrap();
        registry.block("a").unwrap();
        assert!(registry.by_thumbprint(&t).unwrap().connector.is_blocked());
        registry.unblock("a").unwrap();
        assert!(!registry.by_thumbprint(&t).unwrap().connector.is_blocked());
        registry.remove("a").unwrap();
        assert!(registry.by_thumbprint(&t).is_none());
        assert!(matches!(
            registry.block("a"),
            Err(RegistryError::UnknownId(_))
        ));
    }
}

/// Sessions opened with a client certificate end with its connector: a token issued to
/// a certificate is good while the certificate is still registered to the connector it
/// named and the connector is not blocked. The credential's id is the certificate's
/// thumbprint (`sha256:…`), as the layer writes it.
impl CredentialCheck for ConnectorRegistry {
    fn checks(&self, method: AuthMethod) -> bool {
        method == AuthMethod::Certificate
    }

    fn check(&self, credential: &Credential) -> CredentialFuture {
        let status = self.credential_status(credential);
        Box::pin(async move { Ok(status) })
    }
}

impl ConnectorRegistry {
    fn credential_status(&self, credential: &Credential) -> CredentialStatus {
        let Ok(thumbprint) = parse_thumbprint(&credential.id) else {
            return CredentialStatus::Unknown;
        };
        let registered = match self.by_thumbprint(&thumbprint) {
            Some(owner) => owner,
            // A connector identified by name with no certificate bound to it.
            None => match self.by_id(&credential.principal) {
                Some(named) if named.connector.thumbprints().is_empty() => named,
                _ => return CredentialStatus::Unknown,
            },
        };
        if registered.connector.id() != &*credential.principal {
            CredentialStatus::Unknown
        } else if registered.connector.is_blocked() {
            CredentialStatus::Revoked
        } else {
            CredentialStatus::Good
        }
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    /// A certificate session is good while its certificate is registered to the
    /// connector it named and that connector is not blocked.
    #[tokio::test]
    async fn the_registry_says_whether_a_sessions_certificate_is_still_good() {
        let bound = ClientCertThumbprint::from_bytes([7; 32]);
        let registry = ConnectorRegistry::from_connectors([
            Connector::new("connector-7").thumbprint(bound),
            Connector::new("by-name"),
        ])
        .unwrap();
        assert!(registry.checks(AuthMethod::Certificate));
        assert!(!registry.checks(AuthMethod::ApiKey));
        let ask = |id: String, principal: &str| {
            let asked = registry.check(&Credential {
                method: AuthMethod::Certificate,
                id: id.into(),
                principal: principal.into(),
            });
            async move { asked.await.map_err(|e| e.to_string()) }
        };
        let other = ClientCertThumbprint::from_bytes([8; 32]).to_string();
        assert_eq!(
            ask(bound.to_string(), "connector-7").await,
            Ok(CredentialStatus::Good)
        );
        assert_eq!(
            ask(bound.to_string(), "by-name").await,
            Ok(CredentialStatus::Unknown)
        );
        assert_eq!(
            ask(other.clone(), "connector-7").await,
            Ok(CredentialStatus::Unknown)
        );
        assert_eq!(
            ask(other.clone(), "by-name").await,
            Ok(CredentialStatus::Good)
        );
        assert_eq!(
            ask("not a thumbprint".into(), "by-name").await,
            Ok(CredentialStatus::Unknown)
        );
        registry.block("connector-7").unwrap();
        registry.block("by-name").unwrap();
        assert_eq!(
            ask(bound.to_string(), "connector-7").await,
            Ok(CredentialStatus::Revoked)
        );
        assert_eq!(ask(other, "by-name").await, Ok(CredentialStatus::Revoked));
        registry.remove("connector-7").unwrap();
        assert_eq!(
            ask(bound.to_string(), "connector-7").await,
            Ok(CredentialStatus::Unknown)
        );
    }
}
