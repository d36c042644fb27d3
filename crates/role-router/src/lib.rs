//! Who may call which route: method + path-pattern rules over the request's
//! [`Authentication`].
//!
//! [`RoleRouterLayer`] matches each request (method and normalized path) against a
//! [`Policy`], an ordered list of [`Rule`]s where the first match decides, and checks
//! the principals earlier layers (mTLS, API key, JWT) put in the request against the
//! rule's [`Requirement`]. Nothing authenticated where the rule needs it: 401 with the
//! configured challenges. Authenticated but not allowed: 403 `forbidden`. A path whose
//! meaning depends on who reads it (`..`, `//`, `%2F`): 400 `ambiguous_path`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{HeaderValue, Request, Response, StatusCode};
//! use portcullis_core::{AuthMethod, Authentication, Principal};
//! use portcullis_role_router::{Policy, Requirement, RoleRouterLayer, Rule};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::builder()
//!     .rule(Rule::new("/v1/versionInfo", Requirement::public()))
//!     .rule(Rule::new("/v1/key/**", Requirement::authenticated().any_role(["key-admin"])).name("keys"))
//!     .build()?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(RoleRouterLayer::new(policy).challenge(HeaderValue::from_static("Bearer")))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//!
//! // An authentication layer would have put this principal in the request.
//! let admin = |path: &str| {
//!     let mut request = Request::get(path).body(()).unwrap();
//!     let key = Principal::builder("key-7", AuthMethod::ApiKey).role("key-admin").build();
//!     Authentication::insert_into(request.extensions_mut(), key).unwrap();
//!     request
//! };
//!
//! # futures::executor::block_on(async {
//! let ok = service.clone().oneshot(admin("/v1/key/k1")).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//!
//! let anonymous = service.clone().oneshot(Request::get("/v1/key/k1").body(())?).await?;
//! assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
//!
//! let unlisted = service.clone().oneshot(admin("/v2/other")).await?;
//! assert_eq!(unlisted.status(), StatusCode::FORBIDDEN); // default deny
//!
//! let trick = service.oneshot(admin("/v1/versionInfo/../key/k1")).await?;
//! assert_eq!(trick.status(), StatusCode::BAD_REQUEST);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! Policies also come from TOML files ([`read_policy`]), and the `portcullis` CLI checks
//! them (`portcullis policy check FILE`) and explains decisions (`portcullis policy
//! explain FILE METHOD PATH --role …`).
//!
//! # Shadow mode
//!
//! [`RoleRouterLayer::shadow`] computes and audits every decision but lets every request
//! through, logging at `warn` what would have been refused: roll a policy out, watch,
//! then enforce.
//!
//! # Refusals
//!
//! | situation | status | code |
//! |---|---|---|
//! | nothing authenticated, or a required method missing | 401 with `WWW-Authenticate` | `unauthenticated` |
//! | a required role or scope missing | 403 | `forbidden` |
//! | no rule matches and the default is deny | 403 | `forbidden` |
//! | `.`/`..`/empty segment, encoded `/` `\` `.` `%`, bad encoding | 400 | `ambiguous_path` |
//! | a path longer than [`RoleRouterLayer::max_path_len`] (8 KiB by default) | 414 | `path_too_long` |
//!
//! Matching a path against a pattern takes at most (pattern segments + 1) × (path
//! segments + 1) steps, however many `**` the pattern holds, and
//! [`Policy::lint`] compares patterns in (segments × segments) steps.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod file;
mod path;
mod pattern;
mod policy;

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use portcullis_core::{
    AuditNote, AuditRecord, Authentication, Decision, DecisionFuture, RejectOrBody, Rejection,
    RenderRejection, Renderer,
};
use tower_layer::Layer;
use tower_service::Service;

pub use file::{parse_policy, read_policy, PolicyFileError};
pub use path::{normalize, AmbiguousPath};
pub use pattern::{PathPattern, PatternError};
pub use policy::{
    DefaultAction, Need, Policy, PolicyBuilder, PolicyError, Refusal, Requirement, Rule,
    ShadowedRule, Verdict,
};

/// The layer's name in [`Denial`](portcullis_core::Denial)s and audit notes.
pub const LAYER_NAME: &str = "role-router";

/// The longest path judged by default, in bytes.
pub const DEFAULT_MAX_PATH_LEN: usize = 8 * 1024;

#[derive(Clone, Debug)]
struct Config {
    /// Swapped whole by [`PolicyHandle::replace`]; a request decides under one policy.
    policy: Arc<ArcSwap<Policy>>,
    max_path_len: usize,
    mark_route: bool,
    shadow: bool,
    challenge: Option<HeaderValue>,
    renderer: Renderer,
}

/// Enforces a [`Policy`]. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct RoleRouterLayer {
    config: Config,
}

impl RoleRouterLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            config: Config {
                policy: Arc::new(ArcSwap::from_pointee(policy)),
                max_path_len: DEFAULT_MAX_PATH_LEN,
                mark_route: false,
                shadow: false,
                challenge: None,
                renderer: Renderer::default(),
            },
        }
    }

    /// Adds a `WWW-Authenticate` challenge to 401 responses (one per configured
    /// authentication method, e.g. `Bearer realm="api"` and `ApiKey`); several are
    /// joined with commas, as RFC 9110 allows.
    pub fn challenge(mut self, challenge: HeaderValue) -> Self {
        self.config.challenge = Some(match self.config.challenge.take() {
            None => challenge,
            Some(earlier) => {
                let mut joined = earlier.as_bytes().to_vec();
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(challenge.as_bytes());
                HeaderValue::from_bytes(&joined).unwrap_or(earlier)
            }
        });
        self
    }

    /// The longest request path the router judges, in bytes (8 KiB by default). A
    /// longer path is refused with 414 `path_too_long` before it is normalized or
    /// matched, so no request can make the router work in proportion to an unbounded
    /// path.
    pub fn max_path_len(mut self, bytes: std::num::NonZeroUsize) -> Self {
        self.config.max_path_len = bytes.get();
        self
    }

    /// A handle to replace the policy while the layer serves (after reading the policy
    /// file again, say): every service built from this layer, or a clone of it, decides
    /// by the new policy from its next request on.
    pub fn handle(&self) -> PolicyHandle {
        PolicyHandle(self.config.policy.clone())
    }

    /// Puts the matched rule's pattern in each allowed request as a
    /// [`MatchedRoute`](portcullis_core::MatchedRoute), so that a per-route rate limit
    /// inside (`KeyPart::Route`) keys on `/items/{id}`, not on each id. Off by default:
    /// it costs one extension per request, and axum already provides its own
    /// `MatchedPath`; turn it on for tonic, hyper, or routes coarser than axum's.
    pub fn mark_matched_route(mut self, mark: bool) -> Self {
        self.config.mark_route = mark;
        self
    }

    /// Shadow mode: decide and audit, but let every request through.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.config.shadow = shadow;
        self
    }

    /// Replaces the rejection renderer.
    pub fn renderer(mut self, renderer: impl RenderRejection) -> Self {
        self.config.renderer = Renderer::new(renderer);
        self
    }
}

impl<S> Layer<S> for RoleRouterLayer {
    type Service = RoleRouter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RoleRouter {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// Replaces the policy of a [`RoleRouterLayer`] and of every service built from it.
/// Cheap to clone.
///
/// ```
/// use portcullis_role_router::{Policy, Requirement, RoleRouterLayer, Rule};
///
/// let layer = RoleRouterLayer::new(Policy::builder().build()?);
/// let handle = layer.handle();
/// handle.replace(
///     Policy::builder()
///         .rule(Rule::new("/health", Requirement::public()))
///         .build()?,
/// );
/// assert_eq!(handle.current().len(), 1);
/// # Ok::<(), portcullis_role_router::PolicyError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    /// Decides every request from now on by `policy`.
    pub fn replace(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.0.load_full()
    }
}

/// The service built by [`RoleRouterLayer`].
#[derive(Clone, Debug)]
pub struct RoleRouter<S> {
    inner: S,
    config: Arc<Config>,
}

/// The response future of [`RoleRouter`].
pub type ResponseFuture<F, B> = DecisionFuture<F, B>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RoleRouter<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RejectOrBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.judge(&request) {
            Ok(route) => {
                if let Some(route) = route {
                    request.extensions_mut().insert(route);
                }
                DecisionFuture::inner(self.inner.call(request))
            }
            Err(rejection) if self.config.shadow => {
                tracing::warn!(
                    method = %request.method(),
                    path = request.uri().path(),
                    code = rejection.code(),
                    "role-router (shadow mode) would refuse a request"
                );
                DecisionFuture::inner(self.inner.call(request))
            }
            Err(rejection) => DecisionFuture::rejected(
                self.config
                    .renderer
                    .respond(LAYER_NAME, &rejection, &request),
            ),
        }
    }
}

impl<S> RoleRouter<S> {
    /// Decides, writes the audit note, and returns the matched rule's route to mark
    /// (none when the default decided or marking is off) or the rejection.
    fn judge<B>(
        &self,
        request: &Request<B>,
    ) -> Result<Option<portcullis_core::MatchedRoute>, Rejection> {
        let config = &self.config;
        let refused = if config.shadow {
            Decision::ShadowDeny
        } else {
            Decision::Deny
        };
        if request.uri().path().len() > config.max_path_len {
            AuditRecord::note(request.extensions(), || {
                AuditNote::new(LAYER_NAME, refused)
                    .code("path_too_long")
                    .detail("the path is longer than the router judges")
            });
            return Err(Rejection::new(
                http::StatusCode::URI_TOO_LONG,
                "path_too_long",
                "the request path is too long",
            ));
        }
        let path = match normalize(request.uri().path()) {
            Ok(path) => path,
            Err(why) => {
                AuditRecord::note(request.extensions(), || {
                    AuditNote::new(LAYER_NAME, refused)
                        .code("ambiguous_path")
                        .detail(why.as_str())
                });
                return Err(Rejection::bad_request("ambiguous_path", why.as_str()));
            }
        };
        let auth = request
            .extensions()
            .get::<Authentication>()
            .unwrap_or(Authentication::empty());
        let policy = config.policy.load();
        let verdict = policy.decide(request.method(), &path, auth);
        let rule_name = match verdict.rule {
            Some(index) => policy.rule_name(index).unwrap_or("?"),
            None => "default",
        };
        let Err(refusal) = verdict.result else {
            portcullis_core::count_allowed(LAYER_NAME);
            AuditRecord::note(request.extensions(), || {
                let note = AuditNote::allow(LAYER_NAME);
                match verdict
                    .rule
                    .and_then(|index| policy.shared_rule_name(index))
                {
                    Some(name) => note.shared_rule(name.clone()),
                    // No rule matched: the policy's default decided.
                    None => note.rule("default"),
                }
            });
            let route = match (config.mark_route, verdict.rule) {
                (true, Some(index)) => policy.rule_route(index).cloned(),
                _ => None,
            };
            return Ok(route);
        };
        let rejection = if refusal.is_unauthenticated() {
            let rejection =
                Rejection::unauthorized("unauthenticated", "this route requires authentication");
            match &config.challenge {
                Some(challenge) => rejection.with_www_authenticate(challenge.clone()),
                None => rejection,
            }
        } else {
            Rejection::forbidden(
                "forbidden",
                "the credentials presented do not allow this route",
            )
        };
        AuditRecord::note(request.extensions(), || {
            AuditNote::new(LAYER_NAME, refused)
                .code(rejection.code())
                .rule(rule_name.to_owned())
                .detail(refusal.as_str())
        });
        tracing::debug!(
            rule = rule_name,
            reason = refusal.as_str(),
            "role-router refused a request"
        );
        Err(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Method, StatusCode};
    use http_body_util::Empty;
    use portcullis_core::{AuthMethod, Denial, Principal};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    fn ok(_: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
        std::future::ready(Ok(Response::new(Empty::new())))
    }

    fn policy() -> Policy {
        Policy::builder()
            .rule(Rule::new("/public", Requirement::public()))
            .rule(
                Rule::new(
                    "/admin/**",
                    Requirement::authenticated().any_role(["admin"]),
                )
                .name("admin"),
            )
            .rule(Rule::new("/**", Requirement::authenticated()).methods([Method::GET]))
            .build()
            .unwrap()
    }

    fn request(method: Method, path: &str, roles: Option<&[&str]>) -> Request<()> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        if let Some(roles) = roles {
            let principal = Principal::builder("p", AuthMethod::Jwt)
                .roles(roles.iter().copied())
                .build();
            Authentication::insert_into(request.extensions_mut(), principal).unwrap();
        }
        request
    }

    fn call(
        layer: &RoleRouterLayer,
        request: Request<()>,
    ) -> (StatusCode, Option<Denial>, Option<HeaderValue>) {
        let svc = layer.layer(service_fn(ok));
        let response = futures::executor::block_on(svc.oneshot(request)).unwrap();
        (
            response.status(),
            response.extensions().get::<Denial>().copied(),
            response
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .cloned(),
        )
    }

    #[test]
    fn decisions_and_codes() {
        let layer = RoleRouterLayer::new(policy())
            .challenge(HeaderValue::from_static("Bearer realm=\"api\""))
            .challenge(HeaderValue::from_static("ApiKey"));
        assert_eq!(
            call(&layer, request(Method::GET, "/public", None)).0,
            StatusCode::OK
        );
        let (status, denial, challenge) = call(&layer, request(Method::GET, "/admin/x", None));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(denial.unwrap().code(), "unauthenticated");
        assert_eq!(challenge.unwrap(), "Bearer realm=\"api\", ApiKey");
        let (status, denial, challenge) =
            call(&layer, request(Method::GET, "/admin/x", Some(&["user"])));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(denial.unwrap(), Denial::new(LAYER_NAME, "forbidden"));
        assert!(challenge.is_none());
        assert_eq!(
            call(&layer, request(Method::GET, "/admin/x", Some(&["admin"]))).0,
            StatusCode::OK
        );
        assert_eq!(
            call(&layer, request(Method::GET, "/other", Some(&["user"]))).0,
            StatusCode::OK
        );
        // POST to an unlisted route: the default denies.
        let (status, denial, _) = call(&layer, request(Method::POST, "/other", Some(&["user"])));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(denial.unwrap().code(), "forbidden");
    }

    #[test]
    fn trailing_slash_cannot_dodge_a_rule() {
        let layer = RoleRouterLayer::new(policy());
        assert_eq!(
            call(&layer, request(Method::GET, "/admin/", Some(&["user"]))).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&layer, request(Method::GET, "/admin", Some(&["user"]))).0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn path_tricks_are_400() {
        let layer = RoleRouterLayer::new(policy());
        for path in [
            "/public/../admin/x",
            "/public/%2e%2e/admin",
            "//admin/x",
            "/admin%2Fx",
            "/%61dmin/..%2f",
        ] {
            let (status, denial, _) = call(&layer, request(Method::GET, path, Some(&["admin"])));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(denial.unwrap().code(), "ambiguous_path");
        }
        // An encoded letter is decoded, so it reaches the rule it spells.
        assert_eq!(
            call(&layer, request(Method::GET, "/%61dmin/x", Some(&["user"]))).0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn shadow_mode_lets_through_and_audits() {
        let layer = RoleRouterLayer::new(policy()).shadow(true);
        let record = AuditRecord::new();
        let mut req = request(Method::GET, "/admin/x", Some(&["user"]));
        req.extensions_mut().insert(record.clone());
        assert_eq!(call(&layer, req).0, StatusCode::OK);
        let notes = record.notes();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].decision(), Decision::ShadowDeny);
        assert_eq!(notes[0].reason_code(), Some("forbidden"));
        assert_eq!(notes[0].rule_name(), Some("admin"));
        assert_eq!(notes[0].detail_text(), Some("a required role is missing"));
    }

    #[test]
    fn audit_note_names_the_matched_rule() {
        let layer = RoleRouterLayer::new(policy());
        let record = AuditRecord::new();
        let mut req = request(Method::GET, "/admin/x", Some(&["admin"]));
        req.extensions_mut().insert(record.clone());
        call(&layer, req);
        assert_eq!(record.notes()[0].rule_name(), Some("admin"));
        assert_eq!(record.notes()[0].decision(), Decision::Allow);
    }

    #[test]
    fn paths_over_the_limit_are_414_before_any_matching() {
        let layer = RoleRouterLayer::new(policy());
        let at_limit = format!("/public{}", "/a".repeat((DEFAULT_MAX_PATH_LEN - 7) / 2));
        assert!(at_limit.len() <= DEFAULT_MAX_PATH_LEN);
        let (status, denial, _) = call(&layer, request(Method::GET, &at_limit, None));
        assert_eq!(
            (status, denial.map(|d| d.code())),
            (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
        );
        let over = format!("{at_limit}/bb");
        assert!(over.len() > DEFAULT_MAX_PATH_LEN);
        for roles in [None, Some(&["admin"][..])] {
            let (status, denial, _) = call(&layer, request(Method::GET, &over, roles));
            assert_eq!(status, StatusCode::URI_TOO_LONG);
            assert_eq!(denial.unwrap().code(), "path_too_long");
        }
        let short =
            RoleRouterLayer::new(policy()).max_path_len(std::num::NonZeroUsize::new(10).unwrap());
        let (status, _, _) = call(&short, request(Method::GET, "/public/abcd", None));
        assert_eq!(status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn a_policy_with_many_double_stars_judges_an_adversarial_path() {
        // With the recursive matcher this request pinned a core for about a minute.
        let policy = Policy::builder()
            .rule(Rule::new("/**/a/**/a/**/b", Requirement::public()))
            .build()
            .unwrap();
        let layer = RoleRouterLayer::new(policy);
        let path = format!("{}/c", "/a".repeat(2_000));
        let (status, denial, _) = call(&layer, request(Method::GET, &path, None));
        assert_eq!(
            (status, denial.map(|d| d.code())),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        let (status, _, _) = call(
            &layer,
            request(Method::GET, &format!("{}/b", "/a".repeat(2_000)), None),
        );
        assert_eq!(status, StatusCode::OK);
    }
}
