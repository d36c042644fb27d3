//! The response future: a decision made at once, or after an async store answers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{DecisionFuture, RejectOrBody};
use tower_service::Service;

use crate::key::KeyDigest;
use crate::layer::{decide, judge, Config};
use crate::store::PendingLookup;

/// What a request waiting on an async store needs once the answer comes.
pub(crate) struct Waiting<S, ReqBody> {
    pub(crate) inner: S,
    pub(crate) request: Request<ReqBody>,
    pub(crate) config: Arc<Config>,
    pub(crate) id: Box<str>,
    pub(crate) digest: KeyDigest,
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, S, ReqBody> {
        Looking {
            lookup: PendingLookup,
            waiting: Option<Waiting<S, ReqBody>>,
        },
        Decided {
            #[pin]
            future: DecisionFuture<F, ResBody>,
        },
    }
}

pin_project! {
    /// The response future of [`ApiKey`](crate::ApiKey). With an in-memory store it is
    /// the decision itself; with an async store it first waits for the lookup.
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

    pub(crate) fn looking(lookup: PendingLookup, waiting: Waiting<S, ReqBody>) -> Self {
        Self {
            state: State::Looking {
                lookup,
                waiting: Some(waiting),
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
                StateProj::Looking { lookup, waiting } => {
                    let result = ready!(lookup.as_mut().poll(cx));
                    let Waiting {
                        mut inner,
                        request,
                        config,
                        id,
                        digest,
                    } = waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let verdict = judge(&config, result, &digest, &id);
                    decide(&config, &mut inner, request, verdict)
                }
            };
            this.state.set(State::Decided { future: next });
        }
    }
}

impl<F, ResBody, S, ReqBody> fmt::Debug for ResponseFuture<F, ResBody, S, ReqBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Looking { .. } => "looking up the key",
            State::Decided { .. } => "decided",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
