//! Where key records live: the [`KeyStore`] trait and the in-memory store.

use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::record::{KeyRecord, StoredKey};

/// A lookup's result: the key, no key with that id, or a store failure.
pub type LookupResult = Result<Option<Arc<StoredKey>>, StoreError>;

/// A lookup still running, for stores that ask a database or another service.
pub type PendingLookup = Pin<Box<dyn Future<Output = LookupResult> + Send + 'static>>;

/// The answer of [`KeyStore::find`]: at once, or later.
///
/// In-memory stores answer [`Lookup::Ready`], and the layer decides without boxing a
/// future; a store backed by a database answers [`Lookup::Pending`].
pub enum Lookup {
    /// The answer is known now.
    Ready(LookupResult),
    /// The answer comes from a future.
    Pending(PendingLookup),
}

impl Lookup {
    /// An answer from an async block or any other future.
    pub fn pending(future: impl Future<Output = LookupResult> + Send + 'static) -> Self {
        Self::Pending(Box::pin(future))
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(result) => f.debug_tuple("Ready").field(result).finish(),
            Self::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Finds key records by id.
///
/// The layer checks a key's form and checksum before it asks the store, and compares
/// the digest itself, in constant time, after the store answers: a store only maps ids
/// to records. A store that cannot answer returns [`StoreError`] and the request is
/// refused with 503 `key_store_unavailable` (fail closed).
///
/// ```
/// use std::sync::Arc;
/// use portcullis_api_key::{KeyStore, Lookup, MemoryKeyStore, StoreError};
///
/// /// A store whose records live in another service.
/// struct RemoteStore { cache: Arc<MemoryKeyStore> }
///
/// impl KeyStore for RemoteStore {
///     fn find(&self, id: &str) -> Lookup {
///         let cache = self.cache.clone();
///         let id = id.to_owned();
///         Lookup::pending(async move {
///             // ... ask the service; here, the cache answers.
///             Ok::<_, StoreError>(cache.get(&id))
///         })
///     }
/// }
/// ```
pub trait KeyStore: Send + Sync + 'static {
    /// The record of the key `id`, if there is one.
    fn find(&self, id: &str) -> Lookup;
}

impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    fn find(&self, id: &str) -> Lookup {
        (**self).find(id)
    }
}

/// A store that could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the key store failed: {0}")]
pub struct StoreError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error. Its text goes to the log, never to the client.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

type KeyMap = FxHashMap<Box<str>, Arc<StoredKey>>;

/// Key records in memory: one hash lookup per request, no lock shared by requests.
///
/// Reads go through an atomically swapped map. [`revoke`](Self::revoke) flips a flag on
/// the record and takes effect on the next request; [`insert`](Self::insert) and
/// [`remove`](Self::remove) copy the map (a million keys copy in tens of milliseconds),
/// so add many keys at once with [`replace_all`](Self::replace_all). Share the store
/// with the layer through an `Arc` to change it while serving.
///
/// ```
/// use std::sync::Arc;
/// use portcullis_api_key::{GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
///
/// let key = GeneratedKey::generate(&KeyPrefix::default())?;
/// let store = Arc::new(MemoryKeyStore::new());
/// store.insert(KeyRecord::new(key.id(), "partner-acme", key.digest())?)?;
/// assert!(store.get(key.id()).is_some());
/// assert!(store.revoke(key.id()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemoryKeyStore {
    keys: ArcSwap<KeyMap>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            keys: ArcSwap::from_pointee(KeyMap::default()),
        }
    }

    /// A store holding `records`. Two records with one id are refused.
    pub fn from_records(
        records: impl IntoIterator<Item = KeyRecord>,
    ) -> Result<Self, DuplicateKeyId> {
        let store = Self::new();
        store.replace_all(records)?;
        Ok(store)
    }

    /// Replaces every record at once. On error the store is unchanged.
    pub fn replace_all(
        &self,
        records: impl IntoIterator<Item = KeyRecord>,
    ) -> Result<(), DuplicateKeyId> {
        let map = build(records)?;
        self.keys.store(Arc::new(map));
        Ok(())
    }

    /// Adds a record. A record with the same id is refused: rotate by adding a key with
    /// a new id, then revoking or expiring the old one.
    pub fn insert(&self, record: KeyRecord) -> Result<(), DuplicateKeyId> {
        let stored = Arc::new(StoredKey::new(record));
        let mut result = Ok(());
        self.keys.rcu(|current| {
            let mut map = KeyMap::clone(current);
            result = match map.entry(stored.record().id().into()) {
                Entry::Occupied(entry) => Err(DuplicateKeyId(entry.key().to_string())),
                Entry::Vacant(entry) => {
                    entry.insert(stored.clone());
                    Ok(())
                }
            };
            map
        });
        result
    }

    /// Removes a record; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let mut found = false;
        self.keys.rcu(|current| {
            let mut map = KeyMap::clone(current);
            found = map.remove(id).is_some();
            map
        });
        found
    }

    /// Revokes a key from the next request on; whether it was there.
    pub fn revoke(&self, id: &str) -> bool {
        match self.keys.load().get(id) {
            Some(key) => {
                key.revoke();
                true
            }
            None => false,
        }
    }

    /// The record of `id`.
    pub fn get(&self, id: &str) -> Option<Arc<StoredKey>> {
        self.keys.load().get(id).cloned()
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryKeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyStore for MemoryKeyStore {
    fn find(&self, id: &str) -> Lookup {
        Lookup::Ready(Ok(self.keys.load().get(id).cloned()))
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("keys", &self.len())
            .finish()
    }
}

fn build(records: impl IntoIterator<Item = KeyRecord>) -> Result<KeyMap, DuplicateKeyId> {
    let mut map = KeyMap::default();
    for record in records {
        match map.entry(record.id().into()) {
            Entry::Occupied(entry) => return Err(DuplicateKeyId(entry.key().to_string())),
            Entry::Vacant(entry) => {
                entry.insert(Arc::new(StoredKey::new(record)));
            }
        }
    }
    Ok(map)
}

/// Two records with the same key id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("two key records have the id {0:?}")]
pub struct DuplicateKeyId(pub String);
