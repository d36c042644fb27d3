//! Refusals: what a layer decided, and how it is rendered for HTTP and gRPC clients.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::body::RejectOrBody;

/// A layer's refusal of a request: status, stable code, short detail, and the
/// `WWW-Authenticate` and `Retry-After` values when they apply.
///
/// The code is stable and machine-readable (`ip_denied`, `invalid_api_key`,
/// `rate_limited`, …); the detail is a short sentence for people. Neither ever contains
/// the credential that was presented.
///
/// ```
/// use portcullis_core::Rejection;
/// use http::StatusCode;
///
/// let rejection = Rejection::forbidden("ip_denied", "requests from this network are not allowed");
/// assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
/// assert_eq!(rejection.code(), "ip_denied");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    code: &'static str,
    detail: Cow<'static, str>,
    www_authenticate: Option<HeaderValue>,
    retry_after: Option<Duration>,
}

impl Rejection {
    /// A rejection with any status.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            www_authenticate: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401: no valid credential. Add a challenge with [`Rejection::with_www_authenticate`].
    pub fn unauthorized(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    /// 403: authenticated, or identified by address, but not allowed.
    pub fn forbidden(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 429: over a quota; clients should come back after `retry_after`.
    pub fn too_many_requests(
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
        retry_after: Duration,
    ) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, detail).with_retry_after(retry_after)
    }

    /// 500: the host's set-up keeps the layer from deciding.
    pub fn internal(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
    }

    /// 503: a backend the layer needs is down and its policy is to fail closed.
    pub fn unavailable(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    /// Sets the `WWW-Authenticate` challenge.
    pub fn with_www_authenticate(mut self, challenge: HeaderValue) -> Self {
        self.www_authenticate = Some(challenge);
        self
    }

    /// Sets `Retry-After`. It is sent in whole seconds, rounded up, so that clients never
    /// come back too early.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Replaces the status, keeping the code (for hosts that answer 404 instead of 403).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The short human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The `WWW-Authenticate` challenge, if any.
    pub fn www_authenticate(&self) -> Option<&HeaderValue> {
        self.www_authenticate.as_ref()
    }

    /// The `Retry-After` delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// `Retry-After` in whole seconds, rounded up.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }

    /// The gRPC status code for this rejection's HTTP status.
    pub fn grpc_status(&self) -> GrpcCode {
        GrpcCode::from_http(self.status)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

/// The gRPC status codes a rejection maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 2: a status with no better mapping.
    Unknown = 2,
    /// 3: the request is malformed (HTTP 400).
    InvalidArgument = 3,
    /// 5: not found (HTTP 404).
    NotFound = 5,
    /// 7: not allowed (HTTP 403).
    PermissionDenied = 7,
    /// 8: over a quota (HTTP 429).
    ResourceExhausted = 8,
    /// 13: the server cannot decide (HTTP 500).
    Internal = 13,
    /// 14: a needed backend is down (HTTP 503).
    Unavailable = 14,
    /// 16: no valid credential (HTTP 401).
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code for an HTTP status.
    pub fn from_http(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST | StatusCode::URI_TOO_LONG => Self::InvalidArgument,
            StatusCode::UNAUTHORIZED => Self::Unauthenticated,
            StatusCode::FORBIDDEN => Self::PermissionDenied,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::TOO_MANY_REQUESTS => Self::ResourceExhausted,
            StatusCode::INTERNAL_SERVER_ERROR => Self::Internal,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    /// The numeric code, as sent in `grpc-status`.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Which layer refused a response, and why. Every rejection response carries one in its
/// extensions, so an outer audit layer or the host can tell refusals apart from the
/// inner service's own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    layer: &'static str,
    code: &'static str,
}

impl Denial {
    /// A denial by `layer` with `code`.
    pub fn new(layer: &'static str, code: &'static str) -> Self {
        Self { layer, code }
    }

    /// The layer that refused (`ip-allowlist`, `api-key`, …).
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The rejection code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// The parts of the refused request a renderer may look at.
#[derive(Clone, Copy, Debug)]
pub struct RejectionContext<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RejectionContext<'a> {
    /// The context of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }

    /// Whether the request is gRPC (`content-type: application/grpc*`).
    pub fn is_grpc(&self) -> bool {
        grpc_content_type(self.headers).is_some()
    }
}

/// Turns a [`Rejection`] into a response. Replace the default to shape error bodies.
///
/// The headers every rejection needs (`WWW-Authenticate`, `Retry-After`) and the
/// [`Denial`] extension are added after rendering when the renderer did not set them, so
/// a renderer only has to decide the body.
///
/// A renderer for an API whose clients expect `{"success": false, "message": …}`, that
/// still answers gRPC clients with a proper status:
///
/// ```
/// use bytes::Bytes;
/// use portcullis_core::{grpc_response, Rejection, RejectionContext, Renderer};
///
/// let renderer = Renderer::new(|rejection: &Rejection, request: &RejectionContext<'_>| {
///     if request.is_grpc() {
///         return grpc_response(rejection, request);
///     }
///     let body = serde_json::json!({ "success": false, "message": rejection.detail() });
///     http::Response::builder()
///         .status(rejection.status())
///         .header(http::header::CONTENT_TYPE, "application/json")
///         .body(Bytes::from(body.to_string()))
///         .unwrap_or_default()
/// });
/// # let _ = renderer;
/// ```
pub trait RenderRejection: Send + Sync + 'static {
    /// Renders `rejection` for the request described by `request`.
    fn render(&self, rejection: &Rejection, request: &RejectionContext<'_>) -> Response<Bytes>;
}

impl<F> RenderRejection for F
where
    F: Fn(&Rejection, &RejectionContext<'_>) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, rejection: &Rejection, request: &RejectionContext<'_>) -> Response<Bytes> {
        self(rejection, request)
    }
}

/// The default renderer: a trailers-only gRPC status for gRPC requests
/// ([`grpc_response`]), `application/problem+json` (RFC 9457) for everything else
/// ([`problem_json_response`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRenderer;

impl RenderRejection for DefaultRenderer {
    fn render(&self, rejection: &Rejection, request: &RejectionContext<'_>) -> Response<Bytes> {
        if request.is_grpc() {
            grpc_response(rejection, request)
        } else {
            problem_json_response(rejection)
        }
    }
}

/// A shared, cloneable [`RenderRejection`], as layers hold it.
#[derive(Clone)]
pub struct Renderer(Arc<dyn RenderRejection>);

impl Renderer {
    /// Wraps a renderer.
    pub fn new(renderer: impl RenderRejection) -> Self {
        Self(Arc::new(renderer))
    }

    /// Renders `rejection` by `layer` for `request`, adds `WWW-Authenticate`,
    /// `Retry-After` and the [`Denial`] extension, and wraps the body for the layer's
    /// response type.
    pub fn respond<B, ReqBody>(
        &self,
        layer: &'static str,
        rejection: &Rejection,
        request: &Request<ReqBody>,
    ) -> Response<RejectOrBody<B>> {
        let context = RejectionContext::of(request);
        let mut response = self.0.render(rejection, &context);
        let headers = response.headers_mut();
        if let Some(challenge) = rejection.www_authenticate() {
            if !headers.contains_key(WWW_AUTHENTICATE) {
                headers.insert(WWW_AUTHENTICATE, challenge.clone());
            }
        }
        if let Some(secs) = rejection.retry_after_secs() {
            if !headers.contains_key(RETRY_AFTER) {
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        response
            .extensions_mut()
            .insert(Denial::new(layer, rejection.code()));
        if crate::decision_metrics_enabled() {
            metrics::counter!("portcullis_refusals_total", "layer" => layer, "code" => rejection.code())
                .increment(1);
        }
        response.map(RejectOrBody::rejection)
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(DefaultRenderer)
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Renderer(..)")
    }
}

/// Renders a rejection as `application/problem+json` (RFC 9457) with our stable `code`:
///
/// ```json
/// {"type":"urn:portcullis:problem:ip_denied","title":"Forbidden","status":403,
///  "detail":"requests from this network are not allowed","code":"ip_denied"}
/// ```
pub fn problem_json_response(rejection: &Rejection) -> Response<Bytes> {
    let status = rejection.status();
    // Written by hand: under a flood of refused requests this is the whole cost of a
    // refusal, and building a `serde_json::Value` first costs several times as much.
    let detail = rejection.detail();
    let mut body = String::with_capacity(128 + 2 * rejection.code().len() + detail.len());
    body.push_str("{\"type\":\"urn:portcullis:problem:");
    push_json_chars(&mut body, rejection.code());
    body.push_str("\",\"title\":\"");
    push_json_chars(&mut body, status.canonical_reason().unwrap_or("Error"));
    body.push_str("\",\"status\":");
    body.push_str(status.as_str());
    body.push_str(",\"detail\":\"");
    push_json_chars(&mut body, detail);
    body.push_str("\",\"code\":\"");
    push_json_chars(&mut body, rejection.code());
    body.push_str("\"}");
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Appends `text` escaped for the inside of a JSON string (RFC 8259, section 7).
fn push_json_chars(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Characters gRPC requires percent-encoded in `grpc-message`: everything outside
/// printable ASCII, and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Renders a rejection as a trailers-only gRPC response: HTTP 200 with `grpc-status`
/// and `grpc-message` in the headers and no body, which tonic and every other gRPC
/// client read as a `Status`.
pub fn grpc_response(rejection: &Rejection, request: &RejectionContext<'_>) -> Response<Bytes> {
    let content_type = grpc_content_type(request.headers).unwrap_or("application/grpc");
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(rejection.grpc_status().as_u8())),
    );
    let message = format!("{}: {}", rejection.code(), rejection.detail());
    let encoded = utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// The gRPC response content type matching a gRPC request's, or `None` for other
/// requests.
fn grpc_content_type(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get(CONTENT_TYPE)?.as_bytes();
    let is = |prefix: &[u8]| {
        value.len() >= prefix.len()
            && value[..prefix.len()].eq_ignore_ascii_case(prefix)
            && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
    };
    if is(b"application/grpc-web-text") {
        Some("application/grpc-web-text")
    } else if is(b"application/grpc-web") {
        Some("application/grpc-web")
    } else if is(b"application/grpc") {
        Some("application/grpc")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn grpc_request() -> Request<()> {
        Request::builder()
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap()
    }

    fn body_of<B: http_body::Body<Data = Bytes> + Unpin>(body: B) -> Bytes
    where
        B::Error: fmt::Debug,
    {
        futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn problem_json_has_rfc9457_members_and_code() {
        let response = Renderer::default().respond::<http_body_util::Empty<Bytes>, _>(
            "ip-allowlist",
            &Rejection::forbidden("ip_denied", "requests from this network are not allowed"),
            &Request::new(()),
        );
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            response.extensions().get::<Denial>(),
            Some(&Denial::new("ip-allowlist", "ip_denied"))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&body_of(response.into_body())).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "urn:portcullis:problem:ip_denied",
                "title": "Forbidden",
                "status": 403,
                "detail": "requests from this network are not allowed",
                "code": "ip_denied",
            })
        );
    }

    #[test]
    fn detail_is_json_escaped() {
        let response =
            problem_json_response(&Rejection::bad_request("x", "a \"quoted\"\n\\ detail"));
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["detail"], "a \"quoted\"\n\\ detail");
    }

    proptest::proptest! {
        #[test]
        fn problem_json_is_valid_json_for_any_detail(detail in "\\PC*|[\\x00-\\x1f\"\\\\]{0,8}") {
            let response = problem_json_response(&Rejection::bad_request("some_code", detail.clone()));
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            proptest::prop_assert_eq!(body["detail"].as_str(), Some(detail.as_str()));
            proptest::prop_assert_eq!(body["status"].as_u64(), Some(400));
            proptest::prop_assert_eq!(body["type"].as_str(), Some("urn:portcullis:problem:some_code"));
        }
    }

    #[test]
    fn challenge_and_retry_after_are_added() {
        let rejection =
            Rejection::too_many_requests("rate_limited", "slow down", Duration::from_millis(1500))
                .with_www_authenticate(HeaderValue::from_static("ApiKey realm=\"api\""));
        assert_eq!(rejection.retry_after_secs(), Some(2));
        let response = Renderer::default().respond::<http_body_util::Empty<Bytes>, _>(
            "rate-limit",
            &rejection,
            &Request::new(()),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "ApiKey realm=\"api\"");
    }

    #[test]
    fn retry_after_rounds_up_and_keeps_whole_seconds() {
        let secs = |d| Rejection::too_many_requests("r", "", d).retry_after_secs();
        assert_eq!(secs(Duration::from_secs(3)), Some(3));
        assert_eq!(secs(Duration::from_nanos(1)), Some(1));
        assert_eq!(secs(Duration::ZERO), Some(0));
        assert_eq!(Rejection::forbidden("f", "").retry_after_secs(), None);
    }

    #[test]
    fn grpc_requests_get_trailers_only_status() {
        for (status, code) in [
            (StatusCode::BAD_REQUEST, 3),
            (StatusCode::UNAUTHORIZED, 16),
            (StatusCode::FORBIDDEN, 7),
            (StatusCode::TOO_MANY_REQUESTS, 8),
            (StatusCode::SERVICE_UNAVAILABLE, 14),
            (StatusCode::INTERNAL_SERVER_ERROR, 13),
            (StatusCode::IM_A_TEAPOT, 2),
        ] {
            let response = Renderer::default().respond::<http_body_util::Empty<Bytes>, _>(
                "test",
                &Rejection::new(status, "some_code", "100% wrong, naïve"),
                &grpc_request(),
            );
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], code.to_string().as_str());
            assert_eq!(
                response.headers()["grpc-message"],
                "some_code: 100%25 wrong, na%C3%AFve"
            );
            assert!(body_of(response.into_body()).is_empty());
        }
    }

    #[test]
    fn grpc_detection() {
        let ctx = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            grpc_content_type(&headers)
        };
        assert_eq!(ctx("application/grpc"), Some("application/grpc"));
        assert_eq!(ctx("Application/GRPC+proto"), Some("application/grpc"));
        assert_eq!(
            ctx("application/grpc;charset=utf-8"),
            Some("application/grpc")
        );
        assert_eq!(
            ctx("application/grpc-web+proto"),
            Some("application/grpc-web")
        );
        assert_eq!(
            ctx("application/grpc-web-text"),
            Some("application/grpc-web-text")
        );
        assert_eq!(ctx("application/grpcx"), None);
        assert_eq!(ctx("application/json"), None);
        assert_eq!(grpc_content_type(&HeaderMap::new()), None);
    }

    #[test]
    fn custom_renderer_shapes_the_body_and_keeps_the_headers() {
        let renderer = Renderer::new(|rejection: &Rejection, _: &RejectionContext<'_>| {
            let body = serde_json::json!({ "success": false, "message": rejection.detail() });
            let mut response = Response::new(Bytes::from(body.to_string()));
            *response.status_mut() = rejection.status();
            response
        });
        let rejection = Rejection::unauthorized("invalid_api_key", "the API key is not valid")
            .with_www_authenticate(HeaderValue::from_static("ApiKey"));
        let response = renderer.respond::<http_body_util::Empty<Bytes>, _>(
            "api-key",
            &rejection,
            &Request::new(()),
        );
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "ApiKey");
        assert_eq!(
            response.extensions().get::<Denial>().unwrap().code(),
            "invalid_api_key"
        );
        let body: serde_json::Value =
            serde_json::from_slice(&body_of(response.into_body())).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"success": false, "message": "the API key is not valid"})
        );
    }
}
