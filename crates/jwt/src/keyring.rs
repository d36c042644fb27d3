//! An issuer's keys over time: configured keys, a JWKS file, and a JWKS fetched from the
//! network and refreshed in the background.
//!
//! Requests never fetch keys themselves. A token with an unknown `kid` asks the
//! background task for a refresh, at most once per minimum interval, and waits for it
//! (bounded); a flood of random `kid`s inside the interval is refused at once, so it
//! cannot hammer the key server. When a fetch fails the last good set stays in use.

use std::path::PathBuf;
#[cfg(feature = "remote")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "remote")]
use std::sync::Weak;
use std::sync::{Arc, Mutex};
#[cfg(feature = "remote")]
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
#[cfg(feature = "remote")]
use tokio::sync::{watch, Notify};

use crate::key::VerifyingKey;
use crate::keyset::{read_jwks_file, JwksError, KeySet};

pub(crate) struct KeyRing {
    issuer: Arc<str>,
    current: ArcSwap<KeySet>,
    /// Bumped, layer-wide, whenever any issuer's keys change, so cached verdicts made
    /// under the old keys are dropped.
    generation: Arc<AtomicU64>,
    configured: Vec<VerifyingKey>,
    file: Option<PathBuf>,
    file_keys: Mutex<KeySet>,
    remote_keys: Mutex<KeySet>,
    #[cfg(feature = "remote")]
    pub(crate) remote: Option<Remote>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("issuer", &self.issuer)
            .field("keys", &self.current.load().len())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    pub(crate) fn new(
        issuer: Arc<str>,
        configured: Vec<VerifyingKey>,
        file: Option<PathBuf>,
        generation: Arc<AtomicU64>,
    ) -> Result<Self, JwksError> {
        let file_keys = match &file {
            Some(path) => read_jwks_file(path)?,
            None => KeySet::default(),
        };
        let ring = Self {
            issuer,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation,
            configured,
            file,
            file_keys: Mutex::new(file_keys),
            remote_keys: Mutex::new(KeySet::default()),
            #[cfg(feature = "remote")]
            remote: None,
        };
        ring.publish();
        Ok(ring)
    }

    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// Reads the JWKS file again. On error the keys in use stay.
    pub(crate) fn reload_file(&self) -> Result<(), JwksError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let keys = read_jwks_file(path)?;
        *lock(&self.file_keys) = keys;
        self.publish();
        tracing::info!(issuer = %self.issuer, path = %path.display(), "jwt: JWKS file reloaded");
        Ok(())
    }

    #[cfg(feature = "remote")]
    fn set_remote(&self, keys: KeySet) {
        *lock(&self.remote_keys) = keys;
        self.publish();
    }

    /// Whether this issuer's fetched keys have failed to refresh for longer than its
    /// maximum key age: its tokens are then refused with 503 until a fetch succeeds.
    pub(crate) fn keys_too_old(&self) -> bool {
        #[cfg(feature = "remote")]
        if let Some(remote) = &self.remote {
            return remote.stale.load(Ordering::Acquire);
        }
        false
    }

    fn publish(&self) {
        let mut all = self.configured.clone();
        all.extend(lock(&self.file_keys).iter().cloned());
        all.extend(lock(&self.remote_keys).iter().cloned());
        self.current.store(Arc::new(KeySet::new(all)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave a half-written key set: each write is
    // one assignment. Carry on with the value.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "remote")]
pub(crate) use remote::{Remote, RemoteSource};

#[cfg(feature = "remote")]
mod remote {
    use super::*;
    use crate::keyset::parse_jwks;

    /// Where an issuer's keys are published.
    #[derive(Clone, Debug)]
    pub(crate) enum RemoteSource {
        Jwks(String),
        /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
        Discovery(String),
    }

    /// The largest key document read; identity providers publish a few kilobytes.
    const MAX_DOCUMENT: usize = 512 * 1024;

    pub(crate) struct Remote {
        source: RemoteSource,
        client: reqwest::Client,
        allow_http: bool,
        refresh_every: Duration,
        min_interval: Duration,
        pub(crate) wait: Duration,
        origin: Instant,
        /// Milliseconds since `origin` when the last fetch started, plus one (0: never).
        last_fetch: AtomicU64,
        fetching: AtomicBool,
        loaded: AtomicBool,
        max_key_age: Option<Duration>,
        /// When the last fetch succeeded, as a monotonic instant and as wall time for
        /// the log.
        last_success: Mutex<Option<(Instant, std::time::SystemTime)>>,
        /// Set by the refresh task once every fetch has failed for longer than
        /// `max_key_age`; read by every request.
        pub(crate) stale: AtomicBool,
        wake: Arc<Notify>,
        done: watch::Sender<u64>,
        jwks_uri: Mutex<Option<String>>,
    }

    impl std::fmt::Debug for Remote {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Remote")
                .field("source", &self.source)
                .field("refresh_every", &self.refresh_every)
                .finish_non_exhaustive()
        }
    }

    pub(crate) struct RemoteSettings {
        pub(crate) source: RemoteSource,
        /// The host's client, when it gave one.
        pub(crate) client: Option<reqwest::Client>,
        pub(crate) allow_http: bool,
        pub(crate) refresh_every: Duration,
        pub(crate) min_interval: Duration,
        pub(crate) timeout: Duration,
        pub(crate) max_key_age: Option<Duration>,
    }

    impl Remote {
        pub(crate) fn new(settings: RemoteSettings) -> Result<Self, JwksError> {
            let client = match settings.client {
                Some(client) => client,
                None => reqwest::Client::builder()
                    .timeout(settings.timeout)
                    .connect_timeout(settings.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| JwksError::Fetch("(client)".into(), e.to_string()))?,
            };
            let (done, _) = watch::channel(0);
            Ok(Self {
                source: settings.source,
                client,
                allow_http: settings.allow_http,
                refresh_every: settings.refresh_every,
                min_interval: settings.min_interval,
                wait: settings.timeout,
                origin: Instant::now(),
                last_fetch: AtomicU64::new(0),
                fetching: AtomicBool::new(false),
                loaded: AtomicBool::new(false),
                max_key_age: settings.max_key_age,
                last_success: Mutex::new(None),
                stale: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                done,
                jwks_uri: Mutex::new(None),
            })
        }

        fn now_ms(&self) -> u64 {
            u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
        }

        /// After a failed fetch: warns while the last good keys are young enough, and
        /// marks them stale (refusing the issuer's tokens) once they are older than
        /// `max_key_age`.
        fn check_age(&self, issuer: &str, error: &JwksError) {
            metrics::counter!("portcullis_jwt_key_fetch_failures_total", "issuer" => issuer.to_owned())
                .increment(1);
            let last = *lock(&self.last_success);
            let Some((at, wall)) = last else {
                tracing::warn!(issuer, %error, "jwt: fetching keys failed; no keys were ever fetched");
                return;
            };
            let age = at.elapsed();
            let since = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            match self.max_key_age {
                Some(max) if age > max => {
                    if !self.stale.swap(true, Ordering::AcqRel) {
                        tracing::error!(
                            issuer,
                            %error,
                            last_good_fetch_unix = since,
                            failing_for_secs = age.as_secs(),
                            max_key_age_secs = max.as_secs(),
                            "jwt: the issuer's keys could not be refreshed for longer than the maximum key age; its tokens are refused with 503 until a fetch succeeds"
                        );
                    }
                }
                _ => tracing::warn!(
                    issuer,
                    %error,
                    last_good_fetch_unix = since,
                    "jwt: fetching keys failed; the last good keys stay in use"
                ),
            }
        }

        pub(crate) fn is_loaded(&self) -> bool {
            self.loaded.load(Ordering::Acquire)
        }

        /// When the last fetch succeeded (wall time), if one ever did.
        pub(crate) fn last_success(&self) -> Option<std::time::SystemTime> {
            lock(&self.last_success).map(|(_, wall)| wall)
        }

        /// A request met a `kid` it does not know (or no keys yet). Returns what to wait
        /// on when a fetch is running or may start now; `None` when the last fetch was
        /// too recent, and the request should be refused at once.
        pub(crate) fn request_refresh(&self) -> Option<watch::Receiver<u64>> {
            let receiver = self.done.subscribe();
            if self.fetching.load(Ordering::Acquire) {
                return Some(receiver);
            }
            let last = self.last_fetch.load(Ordering::Acquire);
            let now = self.now_ms();
            let min = u64::try_from(self.min_interval.as_millis()).unwrap_or(u64::MAX);
            if last != 0 && now.saturating_sub(last - 1) < min {
                // Too soon to fetch for this request, but the task fetches as soon as
                // the interval ends, so a real rotation is learnt then.
                self.wake.notify_one();
                return None;
            }
            self.wake.notify_one();
            Some(receiver)
        }

        /// The keys, and how long the key server says they stay fresh.
        async fn fetch(&self) -> Result<(KeySet, Option<Duration>), JwksError> {
            let jwks_uri = match &self.source {
                RemoteSource::Jwks(url) => url.clone(),
                RemoteSource::Discovery(issuer) => {
                    let known = lock(&self.jwks_uri).clone();
                    match known {
                        Some(uri) => uri,
                        None => {
                            let uri = self.discover(issuer).await?;
                            *lock(&self.jwks_uri) = Some(uri.clone());
                            uri
                        }
                    }
                }
            };
            let fetched = self.get(&jwks_uri).await;
            if fetched.is_err() {
                // The provider may have moved its keys: discover again next time.
                *lock(&self.jwks_uri) = None;
            }
            let (body, max_age) = fetched?;
            Ok((parse_jwks(&body, false)?, max_age))
        }

        /// When to fetch again after a success: the key server's `max-age`, kept
        /// between the minimum interval and `refresh_every`; `refresh_every` without one.
        fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
            match max_age {
                Some(age) => age.min(self.refresh_every).max(self.min_interval),
                None => self.refresh_every,
            }
        }

        async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let (body, _) = self.get(&url).await?;
            let document: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| JwksError::Fetch(url.clone(), format!("not JSON: {e}")))?;
            // OpenID Connect Discovery 4.3: the document must name the issuer it was
            // fetched for, or its keys are not that issuer's.
            if document.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
                return Err(JwksError::Fetch(
                    url,
                    format!("the document's issuer is not {issuer:?}"),
                ));
            }
            document
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| JwksError::Fetch(url, "the document has no jwks_uri".into()))
        }

        /// The document at `url`, and its `Cache-Control: max-age`.
        async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
            let fail = |why: String| JwksError::Fetch(url.to_owned(), why);
            check_url(url, self.allow_http).map_err(|why| fail(why.into()))?;
            let mut response = self
                .client
                .get(url)
                // Bounds the host's client too, whatever its own timeouts.
                .timeout(self.wait)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| fail(e.to_string()))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(fail(format!("status {}", response.status())));
            }
            let max_age = crate::cache_control::max_age(response.headers());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(fail(format!("larger than {MAX_DOCUMENT} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, max_age))
        }
    }

    /// Plain `http://` is accepted only for loopback addresses (tests, sidecars) unless
    /// the host allows it: keys fetched in the clear can be swapped on the way.
    pub(crate) fn check_url(url: &str, allow_http: bool) -> Result<(), &'static str> {
        let parsed: http::Uri = url.parse().map_err(|_| "not a URL")?;
        match parsed.scheme_str() {
            Some("https") => Ok(()),
            Some("http") => {
                let host = parsed.host().unwrap_or("");
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if loopback || allow_http {
                    Ok(())
                } else {
                    Err("plain http is refused for key servers other than loopback; use https or allow_insecure_http")
                }
            }
            _ => Err("only https (or http on loopback) URLs are fetched"),
        }
    }

    /// Starts the background refresh of `ring`, on the current tokio runtime. The task
    /// holds only a weak reference and ends once the layer is dropped.
    pub(crate) fn spawn(ring: &Arc<KeyRing>) -> Result<(), &'static str> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "fetching JWKS needs a tokio runtime: build the layer inside one")?;
        handle.spawn(run(Arc::downgrade(ring)));
        Ok(())
    }

    async fn run(ring: Weak<KeyRing>) {
        loop {
            let fetched_at = Instant::now();
            let (wake, wait, min_interval) = {
                let Some(ring) = ring.upgrade() else { return };
                let Some(remote) = &ring.remote else { return };
                let started = remote.now_ms();
                remote.last_fetch.store(started + 1, Ordering::Release);
                remote.fetching.store(true, Ordering::Release);
                let result = remote.fetch().await;
                let wait = match result {
                    Ok((keys, max_age)) => {
                        tracing::info!(issuer = %ring.issuer, keys = keys.len(), "jwt: keys fetched");
                        ring.set_remote(keys);
                        remote.loaded.store(true, Ordering::Release);
                        *lock(&remote.last_success) =
                            Some((Instant::now(), std::time::SystemTime::now()));
                        if remote.stale.swap(false, Ordering::AcqRel) {
                            tracing::info!(issuer = %ring.issuer, "jwt: keys fetched again; the issuer's tokens are accepted again");
                        }
                        remote.next_refresh(max_age)
                    }
                    Err(error) => {
                        remote.check_age(&ring.issuer, &error);
                        remote.min_interval.max(Duration::from_millis(100))
                    }
                };
                remote.fetching.store(false, Ordering::Release);
                remote.done.send_modify(|n| *n += 1);
                (remote.wake.clone(), wait, remote.min_interval)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
            // However often requests ask, fetch at most once per minimum interval.
            let since = fetched_at.elapsed();
            if since < min_interval {
                tokio::time::sleep(min_interval - since).await;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::check_url;

        #[test]
        fn plain_http_only_on_loopback() {
            assert!(check_url("https://idp.example/jwks", false).is_ok());
            assert!(check_url("http://127.0.0.1:8080/jwks", false).is_ok());
            assert!(check_url("http://[::1]:8080/jwks", false).is_ok());
            assert!(check_url("http://localhost/jwks", false).is_ok());
            assert!(check_url("http://idp.example/jwks", false).is_err());
            assert!(check_url("http://idp.example/jwks", true).is_ok());
            assert!(check_url("file:///etc/passwd", true).is_err());
            assert!(check_url("not a url", true).is_err());
        }
    }
}

#[cfg(feature = "remote")]
pub(crate) use remote::{check_url, spawn, RemoteSettings};
