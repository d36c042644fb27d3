//! API keys: read from the request, checked against hashed records, turned into a
//! [`Principal`](portcullis_core::Principal).
//!
//! [`ApiKeyLayer`] finds the key where the host says (`X-API-KEY` by default,
//! `Authorization: <scheme> <key>`, the `<secret>/<id>` form of `X-Auth-Token`, or, only
//! if asked, a query parameter), refuses a malformed key or a checksum typo without a
//! store lookup, finds the record by the key's id in a [`KeyStore`], compares digests in
//! constant time, checks revocation, validity and the key's allowed networks, and adds
//! the key's principal to the request's
//! [`Authentication`](portcullis_core::Authentication). The key's header is removed
//! before the inner service runs.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response, StatusCode};
//! use portcullis_api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
//! use portcullis_core::{AuthMethod, Authentication};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Issue a key: show the secret once, store only the record.
//! let key = GeneratedKey::generate(&KeyPrefix::default())?;
//! let store = Arc::new(MemoryKeyStore::new());
//! store.insert(KeyRecord::new(key.id(), "partner-acme", key.digest())?.roles(["reader"]))?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(store.clone()))
//!     .service(service_fn(|request: Request<()>| async move {
//!         let auth = Authentication::from_extensions(request.extensions());
//!         let owner = auth.get(AuthMethod::ApiKey).map(|p| p.id().to_owned());
//!         assert!(request.headers().get("x-api-key").is_none(), "the key is removed");
//!         Ok::<_, Infallible>(Response::new(owner.unwrap_or_default()))
//!     }));
//!
//! let with = |value: &str| Request::builder().header("x-api-key", value).body(()).unwrap();
//! # futures::executor::block_on(async {
//! let allowed = service.clone().oneshot(with(key.expose_secret())).await?;
//! assert_eq!(allowed.status(), StatusCode::OK);
//!
//! // One character changed: the checksum refuses it before the store is asked.
//! let mut typo = key.expose_secret().to_owned();
//! let last = typo.pop().unwrap();
//! typo.push(if last == 'x' { 'y' } else { 'x' });
//! let typo = service.clone().oneshot(with(&typo)).await?;
//! assert_eq!(typo.status(), StatusCode::UNAUTHORIZED);
//!
//! store.revoke(key.id());
//! let revoked = service.clone().oneshot(with(key.expose_secret())).await?;
//! assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
//!
//! let missing = service.oneshot(Request::new(())).await?;
//! assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Infallible>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! A key reads `pck_4fT9kQ2mZx1B_<32 random base62 characters><6-character checksum>`:
//! a deployment prefix secret scanners can search for ([`KeyPrefix`]), a public id, about
//! 190 bits from the operating system's random source, and a CRC-32 checksum that lets
//! the layer refuse typos and made-up keys without touching the store. The same key in
//! split form, `pck_<secret><checksum>/4fT9kQ2mZx1B`, suits `X-Auth-Token`-style
//! headers. Stores keep only the SHA-256 [`KeyDigest`]; `portcullis key new` makes a key
//! and appends its record to a key file ([`FileKeyStore`]).
//!
//! Rotation: give the owner a second key (a new id, same owner), let both work while
//! clients move, then expire or revoke the old one. Both authenticate as the same
//! principal.
//!
//! # Refusals
//!
//! | situation | status | code |
//! |---|---|---|
//! | no key, in `required` mode | 401 | `missing_api_key` |
//! | not a key of this deployment's form, or a checksum mismatch | 401 | `malformed_api_key` |
//! | no such key, a wrong secret, or not yet valid | 401 | `invalid_api_key` |
//! | past its expiry | 401 | `expired_api_key` |
//! | revoked | 401 | `revoked_api_key` |
//! | used from outside the key's networks | 403 | `ip_not_allowed_for_key` |
//! | two different keys in one request, or one source's key on two field lines (or twice in the query) | 400 | `conflicting_api_keys` |
//! | the store failed | 503 | `key_store_unavailable` |
//!
//! Every 401 carries a `WWW-Authenticate` challenge. Expiry and revocation are only
//! told to a caller whose secret matched. No response, log line, audit note or `Debug`
//! output holds the secret; they name the key by its id.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod credentials;
mod file;
mod future;
mod key;
mod layer;
mod record;
mod source;
mod store;
#[cfg(test)]
mod tests;

pub use credentials::ApiKeyCredentials;
pub use file::{
    parse_key_file, read_key_file, render_key_record, revoke_in_key_file, FileKeyStore,
    KeyFileError,
};
pub use future::ResponseFuture;
pub use key::{
    is_valid_id, GenerateError, GeneratedKey, InvalidDigest, InvalidPrefix, KeyDigest, KeyPrefix,
    MalformedKey, PresentedKey, CHECKSUM_LEN, GENERATED_ID_LEN, MAX_ID_LEN, MAX_PREFIX_LEN,
    MAX_PRESENTED_LEN, SECRET_LEN,
};
pub use layer::{ApiKey, ApiKeyLayer, ApiKeyRefusal, Mode};
pub use record::{InvalidRecord, KeyRecord, StoredKey};
pub use source::{InvalidScheme, KeySource};
pub use store::{
    DuplicateKeyId, KeyStore, Lookup, LookupResult, MemoryKeyStore, PendingLookup, StoreError,
};

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "api-key";
