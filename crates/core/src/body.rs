//! The response body of every Portcullis layer: the inner service's body, or a rejection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's response body, passed through untouched, or the
    /// rendered body of a rejection.
    ///
    /// Generic over the inner body, so a layer's response works with axum, tonic and
    /// hyper as they are. The allow path wraps the inner body in place: no allocation,
    /// no boxing.
    #[derive(Debug)]
    pub struct RejectOrBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rejection { body: Option<Bytes> },
    }
}

impl<B> RejectOrBody<B> {
    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A rejection's body.
    pub fn rejection(body: Bytes) -> Self {
        let body = if body.is_empty() { None } else { Some(body) };
        Self {
            kind: Kind::Rejection { body },
        }
    }

    /// Whether this is a rejection's body.
    pub fn is_rejection(&self) -> bool {
        matches!(self.kind, Kind::Rejection { .. })
    }

    /// The inner service's body, or a rejection's bytes (empty once they were read).
    /// A host that boxes responses unwraps the allow path's body this way instead of
    /// boxing it again.
    pub fn into_inner(self) -> Result<B, Bytes> {
        match self.kind {
            Kind::Inner { body } => Ok(body),
            Kind::Rejection { body } => Err(body.unwrap_or_default()),
        }
    }
}

impl<B> Body for RejectOrBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rejection { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn passes_the_inner_body_through() {
        let body = RejectOrBody::inner(Full::new(Bytes::from_static(b"hello")));
        assert!(!body.is_rejection());
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        assert_eq!(bytes, "hello");
    }

    #[test]
    fn unwraps_into_the_inner_body_or_the_rejection() {
        let inner = RejectOrBody::inner(Full::new(Bytes::from_static(b"hello")));
        assert!(inner.into_inner().is_ok());
        let rejection = RejectOrBody::<Full<Bytes>>::rejection(Bytes::from_static(b"{}"));
        assert_eq!(rejection.into_inner().unwrap_err(), "{}");
    }

    #[test]
    fn yields_the_rejection_once() {
        let body = RejectOrBody::<Full<Bytes>>::rejection(Bytes::from_static(b"{}"));
        assert!(body.is_rejection());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(2));
        let bytes = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        assert_eq!(bytes, "{}");
    }

    #[test]
    fn empty_rejection_is_at_end() {
        let body = RejectOrBody::<Full<Bytes>>::rejection(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
