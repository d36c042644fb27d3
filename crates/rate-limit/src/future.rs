//! The response future: a refusal, the inner call (with headers and deferred charges
//! applied to its response), or, with Redis, first the wait for Redis's answer.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use portcullis_core::RejectOrBody;
use tower_service::Service;

use crate::engine::{Deferred, Verdict};
use crate::headers::Report;
use crate::layer::{after_verdict, Shared};

/// What happens to an allowed request's response.
pub(crate) struct After {
    pub(crate) shared: Arc<Shared>,
    pub(crate) reports: Vec<Report>,
    pub(crate) deferred: Vec<Deferred>,
}

/// Redis's answer, on its way.
pub(crate) type PendingVerdict = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// A refund of a failed-authentication reservation on its way to Redis.
pub(crate) type PendingCharge = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request waiting on Redis.
pub(crate) struct Waiting<S, ReqBody> {
    inner: S,
    request: Request<ReqBody>,
    client: Option<IpAddr>,
    shared: Arc<Shared>,
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, S, ReqBody> {
        Deciding {
            verdict: PendingVerdict,
            // Boxed: the request is large, and every request's future would carry its
            // size otherwise, Redis or not.
            waiting: Option<Box<Waiting<S, ReqBody>>>,
        },
        // Everything but the inner future is boxed: the allow path without headers
        // carries none of it, and a small future is cheap to move.
        Calling {
            #[pin]
            future: F,
            after: Option<Box<After>>,
        },
        Charging {
            charge: PendingCharge,
            response: Option<Box<Response<RejectOrBody<ResBody>>>>,
        },
        Rejected {
            response: Option<Box<Response<RejectOrBody<ResBody>>>>,
        },
    }
}

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit). In process, the
    /// decision is made before it exists; with Redis, it first waits for Redis.
    pub struct ResponseFuture<F, ResBody, S, ReqBody> {
        #[pin]
        state: State<F, ResBody, S, ReqBody>,
    }
}

impl<F, ResBody, S, ReqBody> ResponseFuture<F, ResBody, S, ReqBody> {
    pub(crate) fn rejected(response: Response<RejectOrBody<ResBody>>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn calling(future: F, after: Option<Box<After>>) -> Self {
        Self {
            state: State::Calling { future, after },
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deciding(
        verdict: PendingVerdict,
        inner: S,
        request: Request<ReqBody>,
        client: Option<IpAddr>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Deciding {
                verdict,
                waiting: Some(Box::new(Waiting {
                    inner,
                    request,
                    client,
                    shared,
                })),
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
                StateProj::Rejected { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(*response)),
                        None => Poll::Ready(Ok(polled_after_completion())),
                    }
                }
                StateProj::Calling { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    let Some(after) = after.take() else {
                        return Poll::Ready(Ok(response.map(RejectOrBody::inner)));
                    };
                    after
                        .shared
                        .write_reports(response.headers_mut(), &after.reports);
                    // A failed authentication keeps its reservation; any other answer
                    // gives it back.
                    let charge = match response.status() {
                        StatusCode::UNAUTHORIZED => None,
                        _ if after.deferred.is_empty() => None,
                        _ => after.shared.refund_deferred(after.deferred),
                    };
                    let response = response.map(RejectOrBody::inner);
                    match charge {
                        // The answer goes out once Redis has the refund, so the client's
                        // next attempt already sees it.
                        Some(charge) => State::Charging {
                            charge,
                            response: Some(Box::new(response)),
                        },
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::Charging { charge, response } => {
                    ready!(charge.as_mut().poll(cx));
                    return Poll::Ready(Ok(response
                        .take()
                        .map_or_else(polled_after_completion, |response| *response)));
                }
                StateProj::Deciding { verdict, waiting } => {
                    let verdict = ready!(verdict.as_mut().poll(cx));
                    let Some(waiting) = waiting.take() else {
                        return Poll::Ready(Ok(polled_after_completion()));
                    };
                    let Waiting {
                        mut inner,
                        request,
                        client,
                        shared,
                    } = *waiting;
                    let verdict = if verdict.redis_failed {
                        without_redis(&shared, &request, client)
                    } else {
                        verdict
                    };
                    // `after_verdict` built the future just now and it was never
                    // pinned: moving its state out is fine.
                    after_verdict(&shared, &mut inner, request, verdict).state
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(feature = "redis")]
fn without_redis<B>(shared: &Shared, request: &Request<B>, client: Option<IpAddr>) -> Verdict {
    shared.decide_without_redis(request, client)
}

#[cfg(not(feature = "redis"))]
fn without_redis<B>(shared: &Shared, request: &Request<B>, client: Option<IpAddr>) -> Verdict {
    shared.decide_locally(request, client)
}

fn polled_after_completion<B>() -> Response<RejectOrBody<B>> {
    tracing::error!("portcullis: a response future was polled after it completed");
    let mut response = Response::new(RejectOrBody::rejection(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

impl<F, ResBody, S, ReqBody> fmt::Debug for ResponseFuture<F, ResBody, S, ReqBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Deciding { .. } => "waiting for Redis",
            State::Calling { .. } => "calling the inner service",
            State::Charging { .. } => "charging a failed authentication",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
