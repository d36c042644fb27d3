//! What a store keeps about a key: never the secret, only its digest and its grants.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use portcullis_core::{AuthMethod, NetworkSet, Principal};

use crate::key::{is_valid_id, KeyDigest};

/// A key's record: who owns it, what it opens, when it is valid, and where it may be
/// used from.
///
/// The owner becomes the [`Principal`]'s id and the key id its credential id, so an
/// owner's several keys (rotation) all authenticate as the same principal. Roles are the
/// key's access levels.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use portcullis_api_key::{GeneratedKey, KeyPrefix, KeyRecord};
///
/// let key = GeneratedKey::generate(&KeyPrefix::default())?;
/// let record = KeyRecord::new(key.id(), "partner-acme", key.digest())?
///     .roles(["key-reader"])
///     .expires(SystemTime::now() + Duration::from_secs(90 * 24 * 3600))
///     .networks("203.0.113.0/24".parse()?)
///     .tier("gold")
///     .label("ticket", "OPS-1234");
/// assert_eq!(record.owner(), "partner-acme");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    id: String,
    owner: String,
    digest: KeyDigest,
    roles: Vec<String>,
    scopes: Vec<String>,
    created: Option<SystemTime>,
    not_before: Option<SystemTime>,
    expires: Option<SystemTime>,
    revoked: bool,
    networks: Option<NetworkSet>,
    tier: Option<String>,
    labels: BTreeMap<String, String>,
}

impl KeyRecord {
    /// A record for the key `id` owned by `owner`, valid from now on, with no grants.
    pub fn new(
        id: impl Into<String>,
        owner: impl Into<String>,
        digest: KeyDigest,
    ) -> Result<Self, InvalidRecord> {
        let id = id.into();
        let owner = owner.into();
        if !is_valid_id(&id) {
            return Err(InvalidRecord::Id);
        }
        if owner.is_empty() || owner.chars().any(char::is_control) {
            return Err(InvalidRecord::Owner);
        }
        Ok(Self {
            id,
            owner,
            digest,
            roles: Vec::new(),
            scopes: Vec::new(),
            created: None,
            not_before: None,
            expires: None,
            revoked: false,
            networks: None,
            tier: None,
            labels: BTreeMap::new(),
        })
    }

    /// The roles (access levels) the key grants.
    pub fn roles<I, R>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// The scopes the key grants.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// When the key was made (informational).
    pub fn created(mut self, at: SystemTime) -> Self {
        self.created = Some(at);
        self
    }

    /// The key is refused before this time.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// The key is refused from this time on.
    pub fn expires(mut self, at: SystemTime) -> Self {
        self.expires = Some(at);
        self
    }

    /// Marks the key revoked.
    pub fn revoked(mut self, revoked: bool) -> Self {
        self.revoked = revoked;
        self
    }

    /// The only networks the key may be used from.
    pub fn networks(mut self, networks: NetworkSet) -> Self {
        self.networks = Some(networks);
        self
    }

    /// The rate-limit tier of the key's principal.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// A free-form label, visible to later layers as a principal attribute.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's owner: the principal id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The digest of the key's secret.
    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// Granted roles.
    pub fn role_list(&self) -> &[String] {
        &self.roles
    }

    /// Granted scopes.
    pub fn scope_list(&self) -> &[String] {
        &self.scopes
    }

    /// When the key was made.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.created
    }

    /// The start of the key's validity.
    pub fn not_before_time(&self) -> Option<SystemTime> {
        self.not_before
    }

    /// The end of the key's validity.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires
    }

    /// Whether the record says the key is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// The networks the key is limited to.
    pub fn network_set(&self) -> Option<&NetworkSet> {
        self.networks.as_ref()
    }

    /// The rate-limit tier.
    pub fn tier_name(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// The labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn principal(&self) -> Principal {
        let mut builder = Principal::builder(self.owner.clone(), AuthMethod::ApiKey)
            .credential_id(self.id.clone())
            .roles(self.roles.iter().cloned())
            .scopes(self.scopes.iter().cloned());
        if let Some(networks) = &self.networks {
            builder = builder.allowed_networks(networks.clone());
        }
        if let Some(tier) = &self.tier {
            builder = builder.rate_limit_tier(tier.clone());
        }
        for (name, value) in &self.labels {
            builder = builder.attribute(name.clone(), value.clone());
        }
        builder.build()
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("digest", &self.digest)
            .field("roles", &self.roles)
            .field("scopes", &self.scopes)
            .field("not_before", &self.not_before)
            .field("expires", &self.expires)
            .field("revoked", &self.revoked)
            .field("networks", &self.networks)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

/// A record that cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    /// The id is not 1 to 64 ASCII letters, digits and `-`.
    #[error("a key id is 1 to 64 ASCII letters, digits and '-'")]
    Id,
    /// The owner is empty or holds control characters.
    #[error("a key owner is a non-empty name without control characters")]
    Owner,
}

/// A record as a store serves it: the [`Principal`] is built once, when the record is
/// stored, so the allow path only clones an `Arc`; revocation is a flag that takes effect
/// on the next request.
pub struct StoredKey {
    record: KeyRecord,
    principal: Principal,
    revoked: AtomicBool,
}

impl StoredKey {
    /// Compiles a record.
    pub fn new(record: KeyRecord) -> Self {
        Self {
            principal: record.principal(),
            revoked: AtomicBool::new(record.revoked),
            record,
        }
    }

    /// The record.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }

    /// The principal a request authenticated by this key gets.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the key is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Revokes the key for every request from now on.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Checks the presented digest and the key's state at `now`.
    pub(crate) fn check(
        &self,
        digest: &KeyDigest,
        now: impl FnOnce() -> SystemTime,
    ) -> Result<(), KeyState> {
        // The digest first: a caller who does not hold the secret learns nothing about
        // whether the key is revoked or expired.
        if !self.record.digest.matches(digest) {
            return Err(KeyState::WrongSecret);
        }
        self.state(now)
    }

    /// The key's own state at `now`, whoever asks: revoked, before its validity, past
    /// it, or good. The layer asks after the digest matched; the credential check asks
    /// for a session opened with the key.
    pub(crate) fn state(&self, now: impl FnOnce() -> SystemTime) -> Result<(), KeyState> {
        if self.is_revoked() {
            return Err(KeyState::Revoked);
        }
        if self.record.not_before.is_none() && self.record.expires.is_none() {
            return Ok(());
        }
        let now = now();
        if self.record.not_before.is_some_and(|start| now < start) {
            return Err(KeyState::NotYetValid);
        }
        if self.record.expires.is_some_and(|end| now >= end) {
            return Err(KeyState::Expired);
        }
        Ok(())
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("record", &self.record)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

/// Why a found key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyState {
    WrongSecret,
    Revoked,
    NotYetValid,
    Expired,
}
