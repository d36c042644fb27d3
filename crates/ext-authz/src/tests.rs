//! The layer against a real decision service on loopback (axum), with the application
//! behind the layer called in process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use portcullis_core::{AuditRecord, AuthMethod, Authentication, Denial, PeerAddr, Principal};
use tower::ServiceExt;

use crate::*;

/// What the decision service was sent.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: String,
    peer: SocketAddr,
}

#[derive(Clone, Default)]
struct Service {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Each path answers as its name says.
async fn decide(
    State(service): State<Service>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(behaviour): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Response {
    service.seen.lock().unwrap().push(Seen {
        method,
        headers: headers.clone(),
        body: body.clone(),
        peer,
    });
    match behaviour.as_str() {
        "allow" => StatusCode::OK.into_response(),
        "grant" => {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("x-user-id", "user-7"),
                ("x-user-id", "user-7b"),
                ("x-principal", "user-7"),
                ("x-roles", "reader, writer admin"),
                ("x-tenant", "acme"),
                ("x-not-listed", "dropped"),
            ] {
                headers.append(name, value.parse().unwrap());
            }
            (headers, "").into_response()
        }
        "by-token" => match headers.get("authorization").map(|v| v.as_bytes()) {
            Some(b"Bearer good") => ([("x-user-id", "user-7")], "").into_response(),
            _ => StatusCode::FORBIDDEN.into_response(),
        },
        "unauthorized" => (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", "Bearer realm=\"api\""),
                ("x-internal", "secret"),
            ],
            "{\"why\":\"internal detail\"}",
        )
            .into_response(),
        "login" => (
            StatusCode::FOUND,
            [("location", "https://login.example/")],
            "",
        )
            .into_response(),
        "forbidden-body" => (
            StatusCode::FORBIDDEN,
            [("content-type", "text/plain")],
            "you may not",
        )
            .into_response(),
        "no-store" => ([("cache-control", "private, no-store")], "").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK.into_response()
        }
        "broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn decision_service() -> (String, Service) {
    let service = Service::default();
    let app = Router::new()
        .route("/{behaviour}", any(decide))
        .with_state(service.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), service)
}

/// What the application behind the layer saw and answered.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    code: Option<&'static str>,
    notes: Vec<portcullis_core::AuditNote>,
}

/// Calls an application that answers with the `x-user-id` lines and principals it
/// sees, behind `layer`.
async fn call(layer: &ExtAuthzLayer, request: http::Request<Body>) -> Outcome {
    let app = Router::new()
        .fallback(|request: axum::extract::Request| async move {
            let users: Vec<_> = request
                .headers()
                .get_all("x-user-id")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let auth = Authentication::from_extensions(request.extensions());
            let principals: Vec<_> = auth
                .principals()
                .map(|p| {
                    let attributes: Vec<String> =
                        p.attributes().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "{}:{}:{}:{}",
                        p.method(),
                        p.id(),
                        p.roles().join("+"),
                        attributes.join("+")
                    )
                })
                .collect();
            format!(
                "users={} principals={}",
                users.join(","),
                principals.join(",")
            )
        })
        .layer(layer.clone());
    let record = AuditRecord::new();
    let mut request = request;
    request.extensions_mut().insert(record.clone());
    request
        .extensions_mut()
        .insert(PeerAddr("192.0.2.9:40000".parse().unwrap()));
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let code = response.extensions().get::<Denial>().map(Denial::code);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Outcome {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        code,
        notes: record.take(),
    }
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path).body(Body::empty()).unwrap()
}

fn layer(endpoint: &str) -> ExtAuthzBuilder {
    ExtAuthzLayer::builder(endpoint).timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn the_service_is_told_about_the_request_and_allows_it() {
    let (base, service) = decision_service().await;
    let layer = layer(&format!("{base}/allow"))
        .forward_headers([
            "authorization".parse().unwrap(),
            "x-tenant".parse().unwrap(),
        ])
        .build()
        .unwrap();
    let mut request = http::Request::get("/v1/items?page=2")
        .header("authorization", "Bearer abc")
        .header("x-tenant", "a")
        .header("x-tenant", "b")
        .header("cookie", "session=never-forwarded")
        .body(Body::empty())
        .unwrap();
    Authentication::insert_into(
        request.extensions_mut(),
        Principal::builder("key-1", AuthMethod::ApiKey)
            .credential_id("kid-1")
            .role("reader")
            .attribute("org", "acme")
            .build(),
    )
    .unwrap();
    let outcome = call(&layer, request).await;
    assert_eq!(outcome.status, StatusCode::OK, "{outcome:?}");
    assert!(outcome
        .notes
        .iter()
        .any(|n| n.layer() == LAYER_NAME && n.reason_code().is_none()));
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    let input: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(input["method"], "GET");
    assert_eq!(input["path"], "/v1/items");
    assert_eq!(input["query"], "page=2");
    assert_eq!(input["client_ip"], "192.0.2.9");
    assert_eq!(
        input["headers"]["authorization"],
        serde_json::json!(["Bearer abc"])
    );
    assert_eq!(input["headers"]["x-tenant"], serde_json::json!(["a", "b"]));
    assert!(input["headers"].get("cookie").is_none(), "{input}");
    assert_eq!(input["principals"][0]["method"], "api_key");
    assert_eq!(input["principals"][0]["id"], "key-1");
    assert_eq!(input["principals"][0]["credential_id"], "kid-1");
    assert_eq!(
        input["principals"][0]["roles"],
        serde_json::json!(["reader"])
    );
    assert_eq!(input["principals"][0]["attributes"]["org"], "acme");
}

#[tokio::test]
async fn the_headers_encoding_speaks_forward_auth() {
    let (base, service) = decision_service().await;
    let layer = layer(&format!("{base}/allow"))
        .encoding(CheckEncoding::Headers)
        .forward_headers([
            "authorization".parse().unwrap(),
            "x-forwarded-for".parse().unwrap(),
        ])
        .build()
        .unwrap();
    let request = http::Request::post("/v1/sign?x=1")
        .header("authorization", "Bearer abc")
        // A client's own X-Forwarded-For is replaced by the address the layer resolved.
        .header("x-forwarded-for", "10.9.9.9")
        .body(Body::from("payload"))
        .unwrap();
    assert_eq!(call(&layer, request).await.status, StatusCode::OK);
    let seen = &service.seen()[0];
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.body, "");
    assert_eq!(seen.headers["authorization"], "Bearer abc");
    assert_eq!(seen.headers["x-forwarded-method"], "POST");
    assert_eq!(seen.headers["x-forwarded-uri"], "/v1/sign?x=1");
    assert_eq!(
        seen.headers
            .get_all("x-forwarded-for")
            .iter()
            .collect::<Vec<_>>(),
        ["192.0.2.9"]
    );
    assert_eq!(seen.headers["x-portcullis-principals"], "[]");
}

#[tokio::test]
async fn granted_headers_reach_the_application_and_client_copies_never_do() {
    let (base, _service) = decision_service().await;
    let spoofed = |path: &str| {
        http::Request::get(path)
            .header("x-user-id", "admin")
            .body(Body::empty())
            .unwrap()
    };
    let granting = layer(&format!("{base}/grant"))
        .upstream_headers(["x-user-id".parse().unwrap()])
        .build()
        .unwrap();
    let outcome = call(&granting, spoofed("/")).await;
    assert!(
        outcome.body.starts_with("users=user-7,user-7b "),
        "{}",
        outcome.body
    );
    // An allowing answer without the header: the client's copy is gone all the same.
    let silent = layer(&format!("{base}/allow"))
        .upstream_headers(["x-user-id".parse().unwrap()])
        .build()
        .unwrap();
    let outcome = call(&silent, spoofed("/")).await;
    assert!(outcome.body.starts_with("users= "), "{}", outcome.body);
    // Headers that frame the request cannot be taken from the service.
    for name in ["host", "content-length", "transfer-encoding", "connection"] {
        let error = layer(&base)
            .upstream_headers([name.parse().unwrap()])
            .build()
            .unwrap_err();
        assert_eq!(error, ExtAuthzConfigError::ForbiddenHeader(name.into()));
    }
}

#[tokio::test]
async fn roles_attributes_and_an_external_principal_are_granted() {
    let (base, _service) = decision_service().await;
    // Named by the service: an `external` principal.
    let naming = layer(&format!("{base}/grant"))
        .principal_header("x-principal".parse().unwrap())
        .roles_header("x-roles".parse().unwrap())
        .attribute_header("x-tenant".parse().unwrap(), "tenant")
        .build()
        .unwrap();
    let outcome = call(&naming, get("/")).await;
    assert!(
        outcome
            .body
            .ends_with("principals=external:user-7:reader+writer+admin:tenant=acme"),
        "{}",
        outcome.body
    );
    // An answer naming two principals is not an answer.
    let ambiguous = layer(&format!("{base}/grant"))
        .principal_header("x-user-id".parse().unwrap())
        .build()
        .unwrap();
    let outcome = call(&ambiguous, get("/")).await;
    assert_eq!(outcome.code, Some("authorization_unavailable"));
    // Without a principal header: granted to the principals already established.
    let adding = layer(&format!("{base}/grant"))
        .roles_header("x-roles".parse().unwrap())
        .build()
        .unwrap();
    let mut request = get("/");
    Authentication::insert_into(
        request.extensions_mut(),
        Principal::builder("key-1", AuthMethod::ApiKey)
            .role("reader")
            .build(),
    )
    .unwrap();
    let outcome = call(&adding, request).await;
    assert!(
        outcome
            .body
            .ends_with("principals=api_key:key-1:reader+writer+admin:"),
        "{}",
        outcome.body
    );
}

#[tokio::test]
async fn refusals_keep_the_services_status_and_only_the_named_headers() {
    let (base, _service) = decision_service().await;
    let outcome = call(
        &layer(&format!("{base}/unauthorized")).build().unwrap(),
        get("/"),
    )
    .await;
    assert_eq!(outcome.status, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome.code, Some("external_denied"));
    assert_eq!(outcome.headers["www-authenticate"], "Bearer realm=\"api\"");
    assert!(outcome.headers.get("x-internal").is_none());
    assert!(
        outcome.body.contains("\"code\":\"external_denied\""),
        "{}",
        outcome.body
    );
    assert!(
        !outcome.body.contains("internal detail"),
        "{}",
        outcome.body
    );
    let note = outcome
        .notes
        .iter()
        .find(|n| n.layer() == LAYER_NAME)
        .unwrap();
    assert_eq!(note.reason_code(), Some("external_denied"));
    assert!(note.detail_text().unwrap().contains("401"));

    let outcome = call(&layer(&format!("{base}/login")).build().unwrap(), get("/")).await;
    assert_eq!(outcome.status, StatusCode::FOUND);
    assert_eq!(outcome.headers["location"], "https://login.example/");

    // The service's own body, only when the host asks for it.
    let passing = layer(&format!("{base}/forbidden-body"))
        .pass_denial_body(true)
        .build()
        .unwrap();
    let outcome = call(&passing, get("/")).await;
    assert_eq!(outcome.status, StatusCode::FORBIDDEN);
    assert_eq!(outcome.body, "you may not");
    assert_eq!(outcome.headers["content-type"], "text/plain");
    assert_eq!(outcome.code, Some("external_denied"));
    // An unknown path answers 404: refused with 404, never let through.
    let outcome = call(
        &layer(&format!("{base}/no-such")).build().unwrap(),
        get("/"),
    )
    .await;
    assert_eq!(
        (outcome.status, outcome.code),
        (StatusCode::NOT_FOUND, Some("external_denied"))
    );
}

#[tokio::test]
async fn a_slow_down_or_broken_service_fails_closed_or_open_as_chosen() {
    let (base, _service) = decision_service().await;
    // A port nobody listens on.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for endpoint in [
        format!("{base}/slow"),
        format!("{base}/broken"),
        format!("http://{closed_port}/check"),
    ] {
        let started = std::time::Instant::now();
        let outcome = call(&layer(&endpoint).build().unwrap(), get("/")).await;
        assert_eq!(
            outcome.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{endpoint}"
        );
        assert_eq!(outcome.code, Some("authorization_unavailable"));
        assert!(
            !outcome.body.contains(&endpoint),
            "the endpoint leaked: {}",
            outcome.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{endpoint}: the timeout was not kept"
        );
        let open = layer(&endpoint)
            .on_failure(FailureMode::Open)
            .build()
            .unwrap();
        let outcome = call(&open, get("/")).await;
        assert_eq!(outcome.status, StatusCode::OK, "{endpoint}");
        let note = outcome
            .notes
            .iter()
            .find(|n| n.layer() == LAYER_NAME)
            .unwrap();
        assert_eq!(note.reason_code(), Some("authorization_unavailable"));
    }
}

#[tokio::test]
async fn answers_are_cached_by_key_for_their_ttl() {
    let (base, service) = decision_service().await;
    let cached = layer(&format!("{base}/by-token"))
        .encoding(CheckEncoding::Headers)
        .forward_headers(["authorization".parse().unwrap()])
        .upstream_headers(["x-user-id".parse().unwrap()])
        .cache(Duration::from_millis(300), 100, [])
        .build()
        .unwrap();
    let with = |token: &str| {
        http::Request::get("/")
            .header("authorization", token)
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..5 {
        let outcome = call(&cached, with("Bearer good")).await;
        assert!(
            outcome.body.starts_with("users=user-7 "),
            "{}",
            outcome.body
        );
        assert_eq!(
            call(&cached, with("Bearer bad")).await.status,
            StatusCode::FORBIDDEN
        );
    }
    // One question per distinct request, allowed and refused alike.
    assert_eq!(service.count(), 2);
    // A cached allow still strips the client's copies and adds the service's.
    let mut spoof = with("Bearer good");
    spoof
        .headers_mut()
        .insert("x-user-id", "admin".parse().unwrap());
    assert!(call(&cached, spoof).await.body.starts_with("users=user-7 "));
    assert_eq!(service.count(), 2);
    // After the TTL, asked again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(&cached, with("Bearer good")).await;
    assert_eq!(service.count(), 3);

    // A narrower key: the path does not matter, the token does.
    let by_token = layer(&format!("{base}/by-token"))
        .encoding(CheckEncoding::Headers)
        .forward_headers(["authorization".parse().unwrap()])
        .cache(
            Duration::from_secs(60),
            100,
            [CacheKeyPart::Header("authorization".parse().unwrap())],
        )
        .build()
        .unwrap();
    let before = service.count();
    for path in ["/a", "/b", "/c"] {
        let request = http::Request::get(path)
            .header("authorization", "Bearer good")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&by_token, request).await.status, StatusCode::OK);
    }
    assert_eq!(service.count(), before + 1);

    // Answers marked no-store, and failures, are never kept.
    let no_store = layer(&format!("{base}/no-store"))
        .cache(Duration::from_secs(60), 100, [])
        .build()
        .unwrap();
    let before = service.count();
    for _ in 0..3 {
        call(&no_store, get("/")).await;
    }
    assert_eq!(service.count(), before + 3);
    let broken = layer(&format!("{base}/broken"))
        .cache(Duration::from_secs(60), 100, [])
        .build()
        .unwrap();
    let before = service.count();
    for _ in 0..3 {
        assert_eq!(
            call(&broken, get("/")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(service.count(), before + 3);
}

#[tokio::test]
async fn checks_reuse_connections() {
    let (base, service) = decision_service().await;
    let layer = layer(&format!("{base}/allow")).build().unwrap();
    for _ in 0..10 {
        assert_eq!(call(&layer, get("/")).await.status, StatusCode::OK);
    }
    let ports: std::collections::BTreeSet<u16> =
        service.seen().iter().map(|seen| seen.peer.port()).collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
}

#[tokio::test]
async fn settings_are_checked_by_name() {
    for endpoint in [
        "",
        "not a url",
        "ftp://authz.local/check",
        "/check",
        "unix:/tmp/x",
    ] {
        assert!(
            matches!(
                ExtAuthzLayer::builder(endpoint).build(),
                Err(ExtAuthzConfigError::InvalidEndpoint)
            ),
            "{endpoint:?}"
        );
    }
    let base = ExtAuthzLayer::builder("http://127.0.0.1:1/check");
    assert_eq!(
        base.timeout(Duration::ZERO).build().unwrap_err(),
        ExtAuthzConfigError::Zero("timeout")
    );
    let error = ExtAuthzLayer::builder("http://127.0.0.1:1/check")
        .cache(Duration::ZERO, 10, [])
        .build()
        .unwrap_err();
    assert_eq!(error, ExtAuthzConfigError::Zero("the cache's ttl"));
    let error = ExtAuthzLayer::builder("http://127.0.0.1:1/check")
        .cache(Duration::from_secs(1), 0, [])
        .build()
        .unwrap_err();
    assert_eq!(error, ExtAuthzConfigError::Zero("the cache's max_entries"));
    let error = ExtAuthzLayer::builder("http://127.0.0.1:1/check")
        .attribute_header("x-tenant".parse().unwrap(), "")
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        ExtAuthzConfigError::EmptyAttribute("x-tenant".into())
    );
    // Debug names no secret of the endpoint.
    let layer = ExtAuthzLayer::builder("http://user:hunter2@authz.local/check?token=s3cret")
        .build()
        .unwrap();
    let debug = format!("{layer:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("s3cret"),
        "{debug}"
    );
    for part in [
        "method",
        "path",
        "query",
        "client-ip",
        "principals",
        "header:authorization",
    ] {
        assert!(part.parse::<CacheKeyPart>().is_ok(), "{part}");
    }
    for wrong in ["", "header:", "header:bad name", "cookie"] {
        assert!(wrong.parse::<CacheKeyPart>().is_err(), "{wrong}");
    }
}

#[tokio::test]
async fn the_default_key_tells_apart_everything_the_service_is_sent() {
    let (base, service) = decision_service().await;
    let cached = layer(&format!("{base}/allow"))
        .forward_headers(["x-tenant".parse().unwrap()])
        .cache(Duration::from_secs(60), 100, [])
        .build()
        .unwrap();
    let request = |path: &str, tenant: Option<&str>, principal: Option<(&str, &str)>| {
        let mut request = http::Request::get(path);
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        let mut request = request.body(Body::empty()).unwrap();
        if let Some((id, role)) = principal {
            Authentication::insert_into(
                request.extensions_mut(),
                Principal::builder(id, AuthMethod::ApiKey)
                    .role(role)
                    .build(),
            )
            .unwrap();
        }
        request
    };
    let distinct = [
        request("/a", None, None),
        request("/b", None, None),
        request("/a?x=1", None, None),
        request("/a", Some("t1"), None),
        request("/a", Some("t2"), None),
        request("/a", None, Some(("k1", "reader"))),
        request("/a", None, Some(("k1", "writer"))),
        request("/a", None, Some(("k2", "reader"))),
    ];
    let count = distinct.len();
    for request in distinct {
        call(&cached, request).await;
    }
    assert_eq!(service.count(), count, "two requests shared an answer");
    // And the same ones again are answered from the cache.
    call(&cached, request("/a", Some("t1"), None)).await;
    call(&cached, request("/a", None, Some(("k1", "writer")))).await;
    // A header the service is not sent does not split the key.
    let mut other = request("/a", None, None);
    other.headers_mut().insert("cookie", "x=1".parse().unwrap());
    call(&cached, other).await;
    assert_eq!(service.count(), count);
}
