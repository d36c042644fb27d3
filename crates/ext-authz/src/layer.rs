//! The layer, its service and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::{HeaderName, Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::cache::{bounded, BoundedCache};
use portcullis_core::{
    AuditNote, AuditRecord, AuthMethod, Authentication, ClientIpResolver, Decision as Audit,
    Denial, Principal, RejectOrBody, Rejection, Renderer,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::check::{Decision, Denied, Described, Grant, Unavailable};
use crate::config::{CacheKeyPart, CacheSettings, CheckEncoding, ExtAuthzBuilder, FailureMode};
use crate::LAYER_NAME;

type Answer = Result<(Decision, bool), Unavailable>;
type PendingAnswer = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// The compiled settings every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) endpoint: reqwest::Url,
    pub(crate) client: reqwest::Client,
    pub(crate) timeout: Duration,
    pub(crate) failure: FailureMode,
    pub(crate) encoding: CheckEncoding,
    pub(crate) forward_headers: Vec<HeaderName>,
    pub(crate) upstream_headers: Vec<HeaderName>,
    pub(crate) denial_headers: Vec<HeaderName>,
    pub(crate) principal_header: Option<HeaderName>,
    pub(crate) roles_header: Option<HeaderName>,
    pub(crate) attribute_headers: Vec<(HeaderName, String)>,
    pub(crate) pass_denial_body: bool,
    cache: Option<Cache>,
    resolver: ClientIpResolver,
    renderer: Renderer,
}

struct Cache {
    settings: CacheSettings,
    entries: BoundedCache<[u8; 32], (Instant, Decision), foldhash::quality::RandomState>,
}

impl Shared {
    pub(crate) fn new(
        builder: ExtAuthzBuilder,
        endpoint: reqwest::Url,
        client: reqwest::Client,
    ) -> Self {
        Self {
            endpoint,
            client,
            timeout: builder.timeout,
            failure: builder.failure,
            encoding: builder.encoding,
            forward_headers: builder.forward_headers.clone(),
            upstream_headers: builder.upstream_headers,
            denial_headers: builder.denial_headers,
            principal_header: builder.principal_header,
            roles_header: builder.roles_header,
            attribute_headers: builder.attribute_headers,
            pass_denial_body: builder.pass_denial_body,
            cache: builder.cache.map(|mut settings| {
                if settings.key.is_empty() {
                    // Everything a check is built from: the same requests get the same
                    // check, so sharing its answer is always right.
                    settings.key = vec![
                        CacheKeyPart::Method,
                        CacheKeyPart::Path,
                        CacheKeyPart::Query,
                        CacheKeyPart::ClientIp,
                        CacheKeyPart::Principals,
                    ];
                    settings.key.extend(
                        builder
                            .forward_headers
                            .iter()
                            .cloned()
                            .map(CacheKeyPart::Header),
                    );
                }
                Cache {
                    entries: bounded(settings.max_entries, Default::default()),
                    settings,
                }
            }),
            resolver: builder.resolver,
            renderer: builder.renderer,
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Decision> {
        let cache = self.cache.as_ref()?;
        let (expires, decision) = cache.entries.get(key)?;
        if Instant::now() < expires {
            return Some(decision);
        }
        cache.entries.remove(key);
        None
    }

    fn keep(&self, key: [u8; 32], decision: &Decision) {
        if let Some(cache) = &self.cache {
            let expires = Instant::now() + cache.settings.ttl;
            cache.entries.insert(key, (expires, decision.clone()));
        }
    }

    /// What happens to the request once the answer (or its absence) is known.
    fn settle<ReqBody, ResBody>(
        &self,
        mut request: Request<ReqBody>,
        answer: Answer,
        key: Option<[u8; 32]>,
        cached: bool,
    ) -> Settled<ReqBody, ResBody> {
        let decision = match answer {
            Ok((decision, cacheable)) => {
                if let (Some(key), true) = (key, cacheable && !cached) {
                    self.keep(key, &decision);
                }
                decision
            }
            Err(error) => return self.unavailable(request, &error),
        };
        let cache = if cached { "hit" } else { "miss" };
        match decision {
            Decision::Allow(grant) => {
                metrics::counter!("portcullis_ext_authz_checks_total", "outcome" => "allow", "cache" => cache)
                    .increment(1);
                portcullis_core::count_allowed(LAYER_NAME);
                apply(&grant, &mut request);
                AuditRecord::note(request.extensions(), || AuditNote::allow(LAYER_NAME));
                Settled::Call(request)
            }
            Decision::Deny(denied) => {
                metrics::counter!("portcullis_ext_authz_checks_total", "outcome" => "deny", "cache" => cache)
                    .increment(1);
                Settled::Respond(self.refuse(&request, &denied))
            }
        }
    }

    fn unavailable<ReqBody, ResBody>(
        &self,
        request: Request<ReqBody>,
        error: &Unavailable,
    ) -> Settled<ReqBody, ResBody> {
        metrics::counter!("portcullis_ext_authz_checks_total", "outcome" => "unavailable", "cache" => "miss")
            .increment(1);
        portcullis_core::log_throttled!(
            warn,
            %error,
            policy = ?self.failure,
            "ext-authz: the authorization service did not answer"
        );
        let detail = format!("the authorization service did not answer: {error}");
        match self.failure {
            FailureMode::Open => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new(LAYER_NAME, Audit::Allow)
                        .code("authorization_unavailable")
                        .detail(detail)
                });
                Settled::Call(request)
            }
            FailureMode::Closed => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::deny(LAYER_NAME, "authorization_unavailable").detail(detail)
                });
                let rejection = Rejection::unavailable(
                    "authorization_unavailable",
                    "the authorization service cannot be reached right now; try again later",
                );
                Settled::Respond(self.renderer.respond(LAYER_NAME, &rejection, &request))
            }
        }
    }

    /// The client's answer to a refusal: the service's status, and its body or ours.
    fn refuse<ReqBody, ResBody>(
        &self,
        request: &Request<ReqBody>,
        denied: &Denied,
    ) -> Response<RejectOrBody<ResBody>> {
        AuditRecord::note(request.extensions(), || {
            AuditNote::deny(LAYER_NAME, "external_denied").detail(format!(
                "the authorization service answered {}",
                denied.status.as_u16()
            ))
        });
        let mut response = match &denied.body {
            Some((content_type, body)) => {
                let mut response = Response::new(RejectOrBody::rejection(body.clone()));
                *response.status_mut() = denied.status;
                if let Some(content_type) = content_type {
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, content_type.clone());
                }
                response
                    .extensions_mut()
                    .insert(Denial::new(LAYER_NAME, "external_denied"));
                response
            }
            None => {
                let rejection = Rejection::new(
                    denied.status,
                    "external_denied",
                    "the authorization service refused this request",
                );
                self.renderer.respond(LAYER_NAME, &rejection, request)
            }
        };
        let headers = response.headers_mut();
        for (name, _) in &denied.headers {
            headers.remove(name);
        }
        for (name, value) in &denied.headers {
            headers.append(name.clone(), value.clone());
        }
        response
    }
}

/// Adds what an allowing answer grants: headers for the application, and an external
/// principal or roles and attributes for the established ones.
fn apply<B>(grant: &Grant, request: &mut Request<B>) {
    let headers = request.headers_mut();
    for (name, value) in &grant.headers {
        headers.append(name.clone(), value.clone());
    }
    let adds = |mut builder: portcullis_core::PrincipalBuilder| {
        builder = builder.roles(grant.roles.iter().cloned());
        for (name, value) in &grant.attributes {
            builder = builder.attribute(name.clone(), value.clone());
        }
        builder.build()
    };
    let extensions = request.extensions_mut();
    match &grant.principal {
        Some(id) => {
            let principal = adds(Principal::builder(id.clone(), AuthMethod::External));
            match extensions.get_mut::<Authentication>() {
                Some(auth) => {
                    auth.replace(principal);
                }
                None => {
                    let mut auth = Authentication::new();
                    auth.replace(principal);
                    extensions.insert(auth);
                }
            }
        }
        None if grant.roles.is_empty() && grant.attributes.is_empty() => {}
        None => {
            if let Some(auth) = extensions.get_mut::<Authentication>() {
                let granted: Vec<Principal> =
                    auth.principals().map(|p| adds(p.to_builder())).collect();
                for principal in granted {
                    auth.replace(principal);
                }
            }
        }
    }
}

enum Settled<ReqBody, ResBody> {
    Call(Request<ReqBody>),
    Respond(Response<RejectOrBody<ResBody>>),
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoint's path and host only: its query or user info may hold a secret.
        f.debug_struct("ExtAuthz")
            .field("host", &self.endpoint.host_str())
            .field("path", &self.endpoint.path())
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("encoding", &self.encoding)
            .field("forward_headers", &self.forward_headers)
            .field("upstream_headers", &self.upstream_headers)
            .field("cache", &self.cache.as_ref().map(|c| &c.settings))
            .finish_non_exhaustive()
    }
}

/// Asks an external authorization service about each request; see the
/// [crate docs](crate).
#[derive(Clone, Debug)]
pub struct ExtAuthzLayer {
    shared: Arc<Shared>,
}

impl ExtAuthzLayer {
    /// A builder for a service at `endpoint` (an `http://` or `https://` URL).
    pub fn builder(endpoint: impl Into<String>) -> ExtAuthzBuilder {
        ExtAuthzBuilder::new(endpoint)
    }

    pub(crate) fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for ExtAuthzLayer {
    type Service = ExtAuthz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExtAuthz {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service built by [`ExtAuthzLayer`].
#[derive(Clone, Debug)]
pub struct ExtAuthz<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ExtAuthz<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<RejectOrBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        // The client's copies of the headers the service may set, allowed or not.
        for name in &shared.upstream_headers {
            request.headers_mut().remove(name);
        }
        let client = match shared
            .resolver
            .resolve_reusing(request.extensions(), request.headers())
        {
            Ok(client) => Some(client.ip()),
            Err(error) => {
                let rejection = error.to_rejection();
                AuditRecord::note(request.extensions(), || {
                    AuditNote::deny(LAYER_NAME, rejection.code())
                });
                return ResponseFuture::done(
                    shared.renderer.respond(LAYER_NAME, &rejection, &request),
                );
            }
        };
        let described = Described {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            client,
            auth: request
                .extensions()
                .get::<Authentication>()
                .unwrap_or(Authentication::empty()),
        };
        let key = shared
            .cache
            .as_ref()
            .map(|cache| shared.cache_key(&cache.settings.key, &described));
        if let Some(decision) = key.as_ref().and_then(|key| shared.cached(key)) {
            return match shared.settle(request, Ok((decision, true)), key, true) {
                Settled::Call(request) => ResponseFuture::calling(self.inner.call(request)),
                Settled::Respond(response) => ResponseFuture::done(response),
            };
        }
        let check = shared.describe(&described);
        let asking = shared.clone();
        let answer: PendingAnswer = Box::pin(async move { asking.ask(check).await });
        // The clone goes back in place; the instance that was polled ready serves this
        // request once the service has answered.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Checking {
                answer,
                waiting: Some(Box::new(Waiting {
                    inner,
                    request,
                    shared: shared.clone(),
                    key,
                })),
            },
        }
    }
}

/// A request waiting for the service's answer.
struct Waiting<S, ReqBody> {
    inner: S,
    request: Request<ReqBody>,
    shared: Arc<Shared>,
    key: Option<[u8; 32]>,
}

pin_project! {
    #[project = StateProjection]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Checking {
            answer: PendingAnswer,
            waiting: Option<Box<Waiting<S, ReqBody>>>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        Done {
            response: Option<Response<RejectOrBody<ResBody>>>,
        },
    }
}

pin_project! {
    /// The response future of [`ExtAuthz`]: the service's answer, then the inner
    /// call or the refusal.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn done(response: Response<RejectOrBody<ResBody>>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<RejectOrBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProjection::Checking { answer, waiting } => {
                    let answer = ready!(answer.as_mut().poll(cx));
                    let Some(waiting) = waiting.take() else {
                        // Polled again after it finished: a contract breach by the caller.
                        return Poll::Pending;
                    };
                    let Waiting {
                        mut inner,
                        request,
                        shared,
                        key,
                    } = *waiting;
                    match shared.settle(request, answer, key, false) {
                        Settled::Call(request) => this.state.set(State::Calling {
                            future: inner.call(request),
                        }),
                        Settled::Respond(response) => {
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProjection::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(RejectOrBody::inner)));
                }
                StateProjection::Done { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
