//! One check: the request described to the service, its answer read into a decision,
//! and the key the decision is kept under.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode, Uri};
use portcullis_core::Authentication;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{CacheKeyPart, CheckEncoding};
use crate::layer::Shared;

/// The largest refusal body passed through to the client.
const MAX_DENIAL_BODY: usize = 64 * 1024;

/// What the service is asked: the request described, ready to send.
pub(crate) struct Check {
    pub(crate) method: reqwest::Method,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The service's answer.
#[derive(Clone, Debug)]
pub(crate) enum Decision {
    Allow(Arc<Grant>),
    Deny(Arc<Denied>),
}

/// What an allowing answer adds to the request.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) principal: Option<String>,
    pub(crate) roles: Vec<String>,
    pub(crate) attributes: Vec<(String, String)>,
}

/// What a refusing answer sends the client.
#[derive(Debug)]
pub(crate) struct Denied {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// The service's body and its content type, when passed through.
    pub(crate) body: Option<(Option<HeaderValue>, Bytes)>,
}

/// Why there is no decision.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unavailable {
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("{0}")]
    Transport(String),
    #[error("the service answered {0}")]
    ServerError(StatusCode),
    #[error("the answer named two principals in {0}")]
    Ambiguous(HeaderName),
}

/// The parts of the request a check reads.
pub(crate) struct Described<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: Option<IpAddr>,
    pub(crate) auth: &'a Authentication,
}

impl Described<'_> {
    fn principals(&self) -> Value {
        Value::Array(
            self.auth
                .principals()
                .map(|p| {
                    json!({
                        "method": p.method().as_str(),
                        "id": p.id(),
                        "credential_id": p.credential_id(),
                        "roles": p.roles(),
                        "scopes": p.scopes(),
                        "attributes": p.attributes().map(|(k, v)| (k.to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    })
                })
                .collect(),
        )
    }

    fn header_lines(&self, name: &HeaderName) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

impl Shared {
    /// The check request for `request`.
    pub(crate) fn describe(&self, request: &Described<'_>) -> Check {
        match self.encoding {
            CheckEncoding::Json => {
                let headers: serde_json::Map<String, Value> = self
                    .forward_headers
                    .iter()
                    .filter(|name| request.headers.contains_key(*name))
                    .map(|name| (name.to_string(), json!(request.header_lines(name))))
                    .collect();
                let body = json!({
                    "method": request.method.as_str(),
                    "path": request.uri.path(),
                    "query": request.uri.query(),
                    "headers": headers,
                    "client_ip": request.client.map(|ip| ip.to_string()),
                    "principals": request.principals(),
                });
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Check {
                    method: reqwest::Method::POST,
                    headers,
                    body: Bytes::from(body.to_string()),
                }
            }
            CheckEncoding::Headers => {
                let mut headers = HeaderMap::new();
                for name in &self.forward_headers {
                    for value in request.headers.get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                // Ours last, replacing any forwarded copy: the service must be able to
                // trust them.
                let mut set = |name: &'static str, value: &str| {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(HeaderName::from_static(name), value);
                    }
                };
                set("x-forwarded-method", request.method.as_str());
                let target = request
                    .uri
                    .path_and_query()
                    .map_or("/", |target| target.as_str());
                set("x-forwarded-uri", target);
                if let Some(client) = request.client {
                    set("x-forwarded-for", &client.to_string());
                }
                // JSON escapes control characters, so any id fits one header line.
                let principals = request.principals().to_string();
                if let Ok(value) = HeaderValue::from_bytes(principals.as_bytes()) {
                    headers.insert(HeaderName::from_static("x-portcullis-principals"), value);
                }
                Check {
                    method: reqwest::Method::GET,
                    headers,
                    body: Bytes::new(),
                }
            }
        }
    }

    /// The key a decision is kept under: a SHA-256 digest of the parts, each
    /// length-prefixed. The default parts are everything a check is built from (see
    /// [`Shared::new`]), read from the request rather than from the serialized check,
    /// so that a cache hit builds no check at all.
    pub(crate) fn cache_key(&self, parts: &[CacheKeyPart], request: &Described<'_>) -> [u8; 32] {
        let mut digest = Sha256::new();
        // Length-prefixed fields: ("ab", "c") and ("a", "bc") differ.
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        for part in parts {
            match part {
                CacheKeyPart::Method => field(request.method.as_str().as_bytes()),
                CacheKeyPart::Path => field(request.uri.path().as_bytes()),
                CacheKeyPart::Query => field(request.uri.query().unwrap_or("").as_bytes()),
                CacheKeyPart::Header(name) => {
                    let lines = request.headers.get_all(name);
                    field(&(lines.iter().count() as u64).to_be_bytes());
                    for value in lines {
                        field(value.as_bytes());
                    }
                }
                CacheKeyPart::ClientIp => field(
                    request
                        .client
                        .map(|ip| ip.to_string())
                        .unwrap_or_default()
                        .as_bytes(),
                ),
                CacheKeyPart::Principals => {
                    field(&(request.auth.principals().count() as u64).to_be_bytes());
                    for p in request.auth.principals() {
                        field(p.method().as_str().as_bytes());
                        field(p.id().as_bytes());
                        field(p.credential_id().unwrap_or("").as_bytes());
                        field(&(p.roles().len() as u64).to_be_bytes());
                        for role in p.roles() {
                            field(role.as_bytes());
                        }
                        field(&(p.scopes().len() as u64).to_be_bytes());
                        for scope in p.scopes() {
                            field(scope.as_bytes());
                        }
                        field(&(p.attributes().count() as u64).to_be_bytes());
                        for (name, value) in p.attributes() {
                            field(name.as_bytes());
                            field(value.as_bytes());
                        }
                    }
                }
            }
        }
        digest.finalize().into()
    }

    /// Sends `check` and reads the answer into a decision, within the timeout. The
    /// second value says whether the answer may be kept.
    pub(crate) async fn ask(&self, check: Check) -> Result<(Decision, bool), Unavailable> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.ask_without_limit(check)).await {
            Ok(answer) => answer,
            Err(_) => Err(Unavailable::TimedOut(timeout)),
        }
    }

    async fn ask_without_limit(&self, check: Check) -> Result<(Decision, bool), Unavailable> {
        let response = self
            .client
            .request(check.method, self.endpoint.clone())
            .headers(check.headers)
            .body(check.body)
            .send()
            .await
            .map_err(|e| Unavailable::Transport(without_url(e)))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Unavailable::ServerError(status));
        }
        let cacheable = !response.headers().get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-store"))
        });
        if status.is_success() {
            let grant = self.grant(response.headers())?;
            return Ok((Decision::Allow(Arc::new(grant)), cacheable));
        }
        let headers = copy(response.headers(), &self.denial_headers);
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = match self.pass_denial_body {
            true => Some((content_type, read_at_most(response, MAX_DENIAL_BODY).await)),
            false => None,
        };
        Ok((
            Decision::Deny(Arc::new(Denied {
                status,
                headers,
                body,
            })),
            cacheable,
        ))
    }

    fn grant(&self, answer: &HeaderMap) -> Result<Grant, Unavailable> {
        if let Some(name) = &self.principal_header {
            if answer.get_all(name).iter().count() > 1 {
                return Err(Unavailable::Ambiguous(name.clone()));
            }
        }
        let text = |name: &HeaderName| {
            answer
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(Grant {
            headers: copy(answer, &self.upstream_headers),
            principal: self.principal_header.as_ref().and_then(text),
            roles: self
                .roles_header
                .as_ref()
                .and_then(text)
                .map(|roles| {
                    roles
                        .split(|c: char| c == ',' || c.is_ascii_whitespace())
                        .filter(|role| !role.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            attributes: self
                .attribute_headers
                .iter()
                .filter_map(|(name, attribute)| Some((attribute.clone(), text(name)?)))
                .collect(),
        })
    }
}

/// Every line of the named headers.
fn copy(from: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, HeaderValue)> {
    names
        .iter()
        .flat_map(|name| {
            from.get_all(name)
                .iter()
                .map(move |value| (name.clone(), value.clone()))
        })
        .collect()
}

/// Up to `max` bytes of the body; a longer or broken body is cut where it stopped.
async fn read_at_most(mut response: reqwest::Response, max: usize) -> Bytes {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Bytes::from(out)
}

/// A transport error without the URL, which may hold credentials.
fn without_url(error: reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_request() {
        "the request failed"
    } else if error.is_body() || error.is_decode() {
        "the answer's body could not be read"
    } else {
        "transport error"
    };
    let error = error.without_url();
    format!("{kind}: {error}")
}
