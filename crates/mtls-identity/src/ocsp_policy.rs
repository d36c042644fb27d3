//! How the layer uses an OCSP check: answers cached until their `nextUpdate`, one query
//! per certificate at a time, and what a failed check means.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use portcullis_core::{ClientCertThumbprint, Clock};

use crate::layer::MtlsRefusal;
use crate::ocsp::{OcspAnswer, OcspCheck, OcspError, OcspStatus};
use portcullis_core::cache::{bounded, BoundedCache};

/// What the layer does when the OCSP check gives no answer (the responder is down,
/// its answer does not verify) or answers "unknown".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OcspFailure {
    /// Fail closed: 503 `revocation_check_unavailable`, or 401 `revocation_unknown`
    /// (the default).
    #[default]
    Refuse,
    /// Fail open: let the certificate through, with a warning in the log and the audit
    /// event.
    Allow,
}

/// An OCSP check as the layer runs it. Answers are cached until the response's
/// `nextUpdate` (at most [`Ocsp::max_age`]); a failure, or an answer without
/// `nextUpdate`, for [`Ocsp::recheck_after`]. Requests presenting the same certificate
/// while a query is out wait for that one query.
///
/// The CRL and registry checks run first, so only certificates that would otherwise be
/// accepted reach the responder.
#[derive(Clone)]
pub struct Ocsp {
    check: Arc<dyn OcspCheck>,
    on_failure: OcspFailure,
    max_age: Duration,
    recheck_after: Duration,
    timeout: Duration,
    capacity: usize,
}

impl fmt::Debug for Ocsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ocsp")
            .field("on_failure", &self.on_failure)
            .field("max_age", &self.max_age)
            .field("recheck_after", &self.recheck_after)
            .field("timeout", &self.timeout)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Ocsp {
    /// Runs `check` ([`OcspClient`](crate::OcspClient) or the host's own), failing
    /// closed.
    pub fn new(check: impl OcspCheck) -> Self {
        Self {
            check: Arc::new(check),
            on_failure: OcspFailure::Refuse,
            max_age: Duration::from_secs(3600),
            recheck_after: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            capacity: 100_000,
        }
    }

    /// What a failed check means (see [`OcspFailure`]).
    pub fn on_failure(mut self, on_failure: OcspFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Shorthand for `.on_failure(OcspFailure::Allow)`.
    pub fn fail_open(self) -> Self {
        self.on_failure(OcspFailure::Allow)
    }

    /// The longest an answer is trusted, whatever its `nextUpdate` says (1 hour).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long a failure, or an answer without `nextUpdate`, is remembered before the
    /// responder is asked again (30 s).
    pub fn recheck_after(mut self, recheck_after: Duration) -> Self {
        self.recheck_after = recheck_after;
        self
    }

    /// How long the layer waits for the check before counting it failed (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many certificates' answers are remembered (100,000).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }
}

/// A check's result as the layer keeps it.
pub(crate) type Verdict = Result<OcspStatus, OcspError>;

/// A query several requests may wait for.
pub(crate) type Query = Shared<BoxFuture<'static, Verdict>>;

/// What the layer does after the check.
pub(crate) enum Outcome {
    Allow,
    /// Fail-open: allowed although the check did not say "good".
    AllowDespite(&'static str),
    Refuse(MtlsRefusal),
}

#[derive(Clone)]
struct Entry {
    verdict: Verdict,
    until: SystemTime,
}

/// Remembered answers, bounded and evicting by `quick_cache`'s S3-FIFO policy (answers
/// asked about once go first); `None` when the capacity is zero.
type Answers = BoundedCache<ClientCertThumbprint, Entry, foldhash::fast::RandomState>;

/// The running state of an [`Ocsp`] inside one layer.
pub(crate) struct OcspState {
    settings: Ocsp,
    answers: Option<Answers>,
    queries: Mutex<HashMap<ClientCertThumbprint, Query>>,
}

impl fmt::Debug for OcspState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OcspState")
            .field("settings", &self.settings)
            .field("answers", &self.answers.as_ref().map_or(0, Answers::len))
            .finish_non_exhaustive()
    }
}

impl OcspState {
    pub(crate) fn new(settings: Ocsp) -> Arc<Self> {
        let answers = (settings.capacity > 0)
            .then(|| bounded(settings.capacity, foldhash::fast::RandomState::default()));
        Arc::new(Self {
            settings,
            answers,
            queries: Mutex::new(HashMap::new()),
        })
    }

    /// The remembered verdict for a certificate, if it is still good to use.
    pub(crate) fn cached(
        &self,
        thumbprint: &ClientCertThumbprint,
        now: SystemTime,
    ) -> Option<Verdict> {
        let fresh = self.answers.as_ref().and_then(|answers| {
            let entry = answers.get(thumbprint)?;
            if now < entry.until {
                Some(entry.verdict)
            } else {
                // Past its time: never usable again.
                answers.remove(thumbprint);
                None
            }
        });
        // Literal labels: a static key, no allocation per request.
        if fresh.is_some() {
            metrics::counter!("portcullis_ocsp_cache_total", "result" => "hit").increment(1);
        } else {
            metrics::counter!("portcullis_ocsp_cache_total", "result" => "miss").increment(1);
        }
        fresh
    }

    /// Asks the check about a certificate, or joins the query already out for it.
    pub(crate) fn query(
        self: &Arc<Self>,
        thumbprint: ClientCertThumbprint,
        leaf: Bytes,
        clock: Clock,
    ) -> Query {
        let mut queries = lock(&self.queries);
        if let Some(query) = queries.get(&thumbprint) {
            return query.clone();
        }
        let state = self.clone();
        let query = async move {
            let answer = match tokio::time::timeout(
                state.settings.timeout,
                state.settings.check.check(&leaf),
            )
            .await
            {
                Ok(answer) => answer,
                Err(_) => Err(OcspError::Unreachable("the check timed out".into())),
            };
            let verdict = state.store(thumbprint, answer, clock.now());
            lock(&state.queries).remove(&thumbprint);
            verdict
        }
        .boxed()
        .shared();
        queries.insert(thumbprint, query.clone());
        query
    }

    fn store(
        &self,
        thumbprint: ClientCertThumbprint,
        answer: Result<OcspAnswer, OcspError>,
        now: SystemTime,
    ) -> Verdict {
        let settings = &self.settings;
        let (verdict, until) = match answer {
            Ok(answer) => {
                let longest = later(now, settings.max_age);
                let until = match answer.next_update {
                    Some(next) => next.min(longest),
                    None => later(now, settings.recheck_after.min(settings.max_age)),
                };
                (Ok(answer.status), until)
            }
            Err(error) => {
                metrics::counter!("portcullis_ocsp_failures_total").increment(1);
                portcullis_core::log_throttled!(
                    warn,
                    %thumbprint,
                    %error,
                    "mtls: the OCSP check failed; the failure policy applies until the responder answers"
                );
                (Err(error), later(now, settings.recheck_after))
            }
        };
        if let Some(answers) = self.answers.as_ref().filter(|_| until > now) {
            answers.insert(
                thumbprint,
                Entry {
                    verdict: verdict.clone(),
                    until,
                },
            );
        }
        verdict
    }

    /// What a verdict means under the failure policy.
    pub(crate) fn outcome(&self, verdict: &Verdict) -> Outcome {
        let allow = self.settings.on_failure == OcspFailure::Allow;
        match verdict {
            Ok(OcspStatus::Good) => Outcome::Allow,
            Ok(OcspStatus::Revoked) => Outcome::Refuse(MtlsRefusal::Revoked),
            Ok(OcspStatus::Unknown) if allow => Outcome::AllowDespite(
                "the OCSP responder does not know the certificate; allowed by the fail-open policy",
            ),
            Ok(OcspStatus::Unknown) => Outcome::Refuse(MtlsRefusal::RevocationUnknown),
            Err(_) if allow => {
                Outcome::AllowDespite("the OCSP check failed; allowed by the fail-open policy")
            }
            Err(_) => Outcome::Refuse(MtlsRefusal::RevocationUnavailable),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent across a panic elsewhere: take it back.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `now + by`, or a century from now when `by` is too long to add: an answer cached
/// "for ever" rather than a panic.
fn later(now: SystemTime, by: Duration) -> SystemTime {
    now.checked_add(by)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
