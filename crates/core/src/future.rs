//! The response future shared by layers whose decision is made before the inner call.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::RejectOrBody;

pin_project! {
    /// Response future of a layer that either refused the request up front or called
    /// the inner service. Neither case boxes: the refusal is stored ready, the inner
    /// future is polled in place.
    #[derive(Debug)]
    pub struct DecisionFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<RejectOrBody<B>>> },
    }
}

impl<F, B> DecisionFuture<F, B> {
    /// The request was allowed: drive the inner service's future.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// The request was refused with `response`.
    pub fn rejected(response: Response<RejectOrBody<B>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for DecisionFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RejectOrBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(RejectOrBody::inner)))
            }
            KindProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polling a completed future is a caller bug; answering it with a panic
                // would take the connection down, so report it as an internal error.
                None => Poll::Ready(Ok(polled_after_completion())),
            },
        }
    }
}

fn polled_after_completion<B>() -> Response<RejectOrBody<B>> {
    tracing::error!("portcullis: a response future was polled after it completed");
    let mut response = Response::new(RejectOrBody::rejection(bytes::Bytes::new()));
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response
}
