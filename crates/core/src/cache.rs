//! The bounded caches the layers keep (verified tokens, account checks, OCSP answers,
//! parsed certificates): `quick_cache`, evicting by S3-FIFO, so that entries seen once
//! make room for the ones in use and a full cache keeps caching.

use std::hash::{BuildHasher, Hash};

/// A cache of at most a fixed number of entries.
pub type BoundedCache<K, V, B> = quick_cache::sync::Cache<K, V, quick_cache::UnitWeighter, B>;

/// A cache of at most `capacity` entries, hashing keys with `hasher`.
///
/// ```
/// use std::collections::hash_map::RandomState;
/// use portcullis_core::cache::bounded;
///
/// let cache = bounded::<u64, &str, _>(2, RandomState::new());
/// for n in 0..10 {
///     cache.insert(n, "answer");
/// }
/// assert!(cache.len() <= 2);
/// ```
pub fn bounded<K, V, B>(capacity: usize, hasher: B) -> BoundedCache<K, V, B>
where
    K: Eq + Hash,
    V: Clone,
    B: BuildHasher + Clone,
{
    quick_cache::sync::Cache::with(
        capacity,
        u64::try_from(capacity).unwrap_or(u64::MAX),
        quick_cache::UnitWeighter,
        hasher,
        quick_cache::sync::DefaultLifecycle::default(),
    )
}
