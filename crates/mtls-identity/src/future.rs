//! The response future: decided at once, or after the one slow path, an OCSP query for
//! a certificate whose answer is not cached.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{ClientCertThumbprint, DecisionFuture, Principal, RejectOrBody};
use tower_service::Service;

use crate::layer::Config;
use crate::ocsp_policy::Query;

/// Everything the decision needs once the OCSP answer is in.
struct Waiting<S, ReqBody> {
    inner: S,
    request: Request<ReqBody>,
    config: Arc<Config>,
    principal: Principal,
    thumbprint: ClientCertThumbprint,
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, S, ReqBody> {
        Waiting {
            query: Query,
            waiting: Option<Waiting<S, ReqBody>>,
        },
        Decided {
            #[pin]
            future: DecisionFuture<F, ResBody>,
        },
    }
}

pin_project! {
    /// The response future of [`MtlsIdentity`](crate::MtlsIdentity).
    pub struct ResponseFuture<F, ResBody, S, ReqBody> {
        #[pin]
        state: State<F, ResBody, S, ReqBody>,
    }
}

impl<F, ResBody, S, ReqBody> From<DecisionFuture<F, ResBody>>
    for ResponseFuture<F, ResBody, S, ReqBody>
{
    fn from(future: DecisionFuture<F, ResBody>) -> Self {
        Self {
            state: State::Decided { future },
        }
    }
}

impl<F, ResBody, S, ReqBody> ResponseFuture<F, ResBody, S, ReqBody> {
    pub(crate) fn waiting(
        query: Query,
        inner: S,
        request: Request<ReqBody>,
        config: Arc<Config>,
        principal: Principal,
        thumbprint: ClientCertThumbprint,
    ) -> Self {
        Self {
            state: State::Waiting {
                query,
                waiting: Some(Waiting {
                    inner,
                    request,
                    config,
                    principal,
                    thumbprint,
                }),
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
                StateProj::Waiting { query, waiting } => {
                    let verdict = ready!(Pin::new(query).poll(cx));
                    let Some(mut w) = waiting.take() else {
                        // Only reachable if polled again after completing, which the
                        // Decided state prevents.
                        return Poll::Pending;
                    };
                    let config = w.config.clone();
                    config.after_ocsp(&mut w.inner, w.request, w.principal, w.thumbprint, &verdict)
                }
            };
            this.state.set(State::Decided { future: next });
        }
    }
}

impl<F, ResBody, S, ReqBody> fmt::Debug for ResponseFuture<F, ResBody, S, ReqBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting for the OCSP answer",
            State::Decided { .. } => "decided",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
