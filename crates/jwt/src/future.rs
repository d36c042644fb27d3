//! The response future: a decision made at once (a cached token, or a token verified
//! in the call), or after the slow paths only: a key refresh, an account check.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{
    ClientCertThumbprint, CredentialStatus, DecisionFuture, Principal, RejectOrBody,
};
use tokio::sync::watch;
use tower_service::Service;

use crate::layer::Config;
use crate::refusal::JwtRefusal;
use crate::subject::{Answer, Subject};
use crate::validator::{Outcome, Verified};

/// Where the slow path ends.
pub(crate) enum Step {
    Admit(Arc<Verified>, Principal),
    Refuse(JwtRefusal, Option<Arc<str>>),
}

/// The slow path of one request, boxed: it runs only on a key refresh or an account
/// check that is not cached, never on the common path.
pub(crate) struct Pending(Pin<Box<dyn Future<Output = Step> + Send>>);

impl Pending {
    /// Waits for the key refresh the request asked for, then validates again (without
    /// asking for another refresh).
    pub(crate) fn after_refresh(
        config: Arc<Config>,
        token: String,
        thumbprint: Option<ClientCertThumbprint>,
        mut wait: watch::Receiver<u64>,
        timeout: Duration,
    ) -> Self {
        Self(Box::pin(async move {
            // A timeout or a closed channel both mean: decide with the keys there are.
            let _ = tokio::time::timeout(timeout, wait.changed()).await;
            match config.validator.validate(&token, config.now_ms(), false) {
                Outcome::Valid(verified) => after_verification(config, verified, thumbprint).await,
                Outcome::Refused(refusal) => Step::Refuse(refusal, None),
                Outcome::NeedKeys { .. } => Step::Refuse(JwtRefusal::UnknownKey, None),
            }
        }))
    }

    /// Asks the account check about a verified token's subject (then, if the token
    /// names one, the credential check about its credential).
    pub(crate) fn account_check(
        config: Arc<Config>,
        verified: Arc<Verified>,
        subject: Subject,
    ) -> Self {
        Self(Box::pin(ask(config, verified, subject)))
    }

    /// Asks the credential check about the credential a verified token was issued to.
    pub(crate) fn credential_check(
        config: Arc<Config>,
        verified: Arc<Verified>,
        principal: Principal,
    ) -> Self {
        Self(Box::pin(ask_credential(config, verified, principal)))
    }
}

/// The last gate: the credential the token was issued to, if it names one and its
/// issuer checks credentials. A cached answer decides at once.
async fn ask_credential(
    config: Arc<Config>,
    verified: Arc<Verified>,
    principal: Principal,
) -> Step {
    let (Some(credential), Some(check)) = (
        verified.credential.clone(),
        config.validator.issuers[verified.issuer]
            .credentials
            .as_ref()
            .map(|c| c.0.clone()),
    ) else {
        return Step::Admit(verified, principal);
    };
    let id = verified.claims.0.subject.clone();
    let cache = &config.credentials;
    let status = match cache.cached(verified.issuer, &credential, &config.clock) {
        Some(status) => status,
        None if !check.checks(credential.method) => CredentialStatus::Good,
        None => match check.check(&credential).await {
            Ok(status) => {
                cache.store(verified.issuer, &credential, status, &config.clock);
                status
            }
            Err(error) => {
                portcullis_core::log_throttled!(
                    error,
                    subject = %id,
                    %error,
                    "jwt: the credential check failed; tokens that need it get 503 until it answers"
                );
                return Step::Refuse(JwtRefusal::CredentialCheckUnavailable, Some(id));
            }
        },
    };
    match crate::credential::verdict(status) {
        Ok(()) => Step::Admit(verified, principal),
        Err(refusal) => Step::Refuse(refusal, Some(id)),
    }
}

async fn after_verification(
    config: Arc<Config>,
    verified: Arc<Verified>,
    thumbprint: Option<ClientCertThumbprint>,
) -> Step {
    let id = verified.claims.0.subject.clone();
    if let Err(refusal) = config.per_request(&verified, thumbprint) {
        return Step::Refuse(refusal, Some(id));
    }
    let Some(subjects) = &config.subjects else {
        let principal = verified.principal.clone();
        return ask_credential(config, verified, principal).await;
    };
    let issuer = config.issuer_name(&verified);
    match subjects.cached(&issuer, &id, &config.clock) {
        Some(answer) => match config.apply(&verified, answer) {
            Ok(principal) => ask_credential(config, verified, principal).await,
            Err(refusal) => Step::Refuse(refusal, Some(id)),
        },
        None => ask(config.clone(), verified, Subject { issuer, id }).await,
    }
}

async fn ask(config: Arc<Config>, verified: Arc<Verified>, subject: Subject) -> Step {
    let Some(subjects) = &config.subjects else {
        let principal = verified.principal.clone();
        return ask_credential(config, verified, principal).await;
    };
    let id = subject.id.clone();
    match subjects.check.check(subject.clone()).await {
        Ok(status) => {
            let answer = Answer::from(status);
            subjects.store(&subject, answer.clone(), &config.clock);
            match config.apply(&verified, answer) {
                Ok(principal) => ask_credential(config, verified, principal).await,
                Err(refusal) => Step::Refuse(refusal, Some(id)),
            }
        }
        Err(error) => {
            portcullis_core::log_throttled!(
                error,
                subject = %id,
                %error,
                "jwt: the account check failed; tokens that need it get 503 until it answers"
            );
            Step::Refuse(JwtRefusal::AccountCheckUnavailable, Some(id))
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, S, ReqBody> {
        Pending {
            work: Pending,
            waiting: Option<(S, Request<ReqBody>, Arc<Config>)>,
        },
        Decided {
            #[pin]
            future: DecisionFuture<F, ResBody>,
        },
    }
}

pin_project! {
    /// The response future of [`Jwt`](crate::Jwt).
    pub struct ResponseFuture<F, ResBody, S, ReqBody> {
        #[pin]
        state: State<F, ResBody, S, ReqBody>,
    }
}

impl<F, ResBody, S, ReqBody> ResponseFuture<F, ResBody, S, ReqBody> {
    pub(crate) fn decided(future: DecisionFuture<F, ResBody>) -> Self {
        Self {
            state: State::Decided { future },
        }
    }

    pub(crate) fn pending(
        work: Pending,
        inner: S,
        request: Request<ReqBody>,
        config: Arc<Config>,
    ) -> Self {
        Self {
            state: State::Pending {
                work,
                waiting: Some((inner, request, config)),
            },
        }
    }
}

impl<F, ResBody, S, ReqBody, E> Future for ResponseFuture<F, ResBody, S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = E, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<RejectOrBody<ResBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Decided { future } => return future.poll(cx),
                StateProj::Pending { work, waiting } => {
                    let step = ready!(work.0.as_mut().poll(cx));
                    let Some((mut inner, request, config)) = waiting.take() else {
                        // Only reachable if polled again after completing, which the
                        // Decided state below prevents.
                        return Poll::Pending;
                    };
                    match step {
                        Step::Admit(verified, principal) => {
                            config.admit(&mut inner, request, &verified, principal)
                        }
                        Step::Refuse(refusal, id) => {
                            config.refuse(&request, refusal, id.as_deref())
                        }
                    }
                }
            };
            this.state.set(State::Decided { future: next });
        }
    }
}

impl<F, ResBody, S, ReqBody> fmt::Debug for ResponseFuture<F, ResBody, S, ReqBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Pending { .. } => "waiting for keys or the account check",
            State::Decided { .. } => "decided",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
