//! The layer's decisions, one refusal at a time, through `Service::call`.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis_core::{
    AuditRecord, AuthMethod, Authentication, Clock, Decision, Denial, ManualClock, PeerAddr,
};
use tower::{service_fn, ServiceExt};
use tower_layer::Layer;

use crate::*;

const T0: Duration = Duration::from_secs(1_800_000_000);

struct Fixture {
    store: Arc<MemoryKeyStore>,
    clock: ManualClock,
    layer: ApiKeyLayer,
    key: GeneratedKey,
}

fn fixture() -> Fixture {
    let key = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(
            KeyRecord::new(key.id(), "partner-acme", key.digest())
                .unwrap()
                .roles(["reader", "ops"])
                .scopes(["keys:read"])
                .tier("gold")
                .label("team", "payments"),
        )
        .unwrap();
    let (clock, control) = Clock::manual(UNIX_EPOCH + T0);
    let layer = ApiKeyLayer::new(store.clone()).clock(clock);
    Fixture {
        store,
        clock: control,
        layer,
        key,
    }
}

/// What the inner service saw, and what came back.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    code: Option<&'static str>,
    challenge: Option<String>,
    body: String,
    seen: Option<Seen>,
    notes: Vec<portcullis_core::AuditNote>,
}

#[derive(Clone, Debug)]
struct Seen {
    auth: Authentication,
    headers: http::HeaderMap,
    uri: http::Uri,
}

fn call(layer: &ApiKeyLayer, request: Request<()>) -> Outcome {
    let seen = Arc::new(Mutex::new(None));
    let record = AuditRecord::new();
    let mut request = request;
    request.extensions_mut().insert(record.clone());
    let inner = {
        let seen = seen.clone();
        tower::util::BoxCloneService::new(service_fn(move |request: Request<()>| {
            *seen.lock().unwrap() = Some(Seen {
                auth: Authentication::from_extensions(request.extensions()),
                headers: request.headers().clone(),
                uri: request.uri().clone(),
            });
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"inner"),
            ))))
        }))
    };
    let response = futures::executor::block_on(layer.layer(inner).oneshot(request)).unwrap();
    let status = response.status();
    let code = response.extensions().get::<Denial>().map(Denial::code);
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = futures::executor::block_on(response.into_body().collect())
        .unwrap()
        .to_bytes();
    let seen = seen.lock().unwrap().clone();
    Outcome {
        status,
        code,
        challenge,
        body: String::from_utf8(body.to_vec()).unwrap(),
        seen,
        notes: record.notes(),
    }
}

fn with_header(name: &str, value: &str) -> Request<()> {
    Request::builder()
        .uri("/v1/key")
        .header(name, value)
        .body(())
        .unwrap()
}

fn with_key(value: &str) -> Request<()> {
    with_header("x-api-key", value)
}

fn assert_refused(outcome: &Outcome, status: StatusCode, code: &str) {
    assert_eq!(outcome.status, status, "{outcome:?}");
    assert_eq!(outcome.code, Some(code), "{outcome:?}");
    assert!(outcome.seen.is_none(), "the inner service must not run");
    assert!(outcome.body.contains(code), "{}", outcome.body);
    let note = outcome.notes.last().expect("an audit note");
    assert_eq!(note.decision(), Decision::Deny);
    assert_eq!(note.reason_code(), Some(code));
    if status == StatusCode::UNAUTHORIZED {
        let challenge = outcome
            .challenge
            .as_deref()
            .expect("a challenge on every 401");
        assert!(challenge.starts_with("ApiKey realm=\"api\""), "{challenge}");
        assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{challenge}"
        );
    }
}

#[test]
fn a_valid_key_authenticates_as_its_owner_and_is_removed() {
    let f = fixture();
    let outcome = call(&f.layer, with_key(f.key.expose_secret()));
    assert_eq!(outcome.status, StatusCode::OK);
    assert_eq!(outcome.body, "inner");
    let seen = outcome.seen.unwrap();
    let principal = seen.auth.get(AuthMethod::ApiKey).unwrap();
    assert_eq!(principal.id(), "partner-acme");
    assert_eq!(principal.credential_id(), Some("key-1"));
    assert!(principal.has_role("reader") && principal.has_role("ops"));
    assert!(principal.has_scope("keys:read"));
    assert_eq!(principal.rate_limit_tier(), Some("gold"));
    assert_eq!(principal.attribute("team"), Some("payments"));
    assert!(seen.headers.get("x-api-key").is_none());
    let note = &outcome.notes[0];
    assert_eq!(note.decision(), Decision::Allow);
    assert_eq!(note.principal(), Some("partner-acme"));
    assert_eq!(note.credential(), Some("key-1"));
}

#[test]
fn keep_credentials_leaves_the_header() {
    let f = fixture();
    let outcome = call(
        &f.layer.clone().keep_credentials(true),
        with_key(f.key.expose_secret()),
    );
    assert_eq!(outcome.status, StatusCode::OK);
    assert!(outcome.seen.unwrap().headers.get("x-api-key").is_some());
}

#[test]
fn a_missing_key_is_401_in_required_mode_and_passes_in_optional_mode() {
    let f = fixture();
    let request = || Request::builder().uri("/").body(()).unwrap();
    assert_refused(
        &call(&f.layer, request()),
        StatusCode::UNAUTHORIZED,
        "missing_api_key",
    );

    let optional = f.layer.clone().mode(Mode::Optional);
    let outcome = call(&optional, request());
    assert_eq!(outcome.status, StatusCode::OK);
    assert!(!outcome.seen.unwrap().auth.is_authenticated());
    assert_eq!(outcome.notes[0].decision(), Decision::Skip);

    // Present but wrong is refused in both modes.
    assert_refused(
        &call(&optional, with_key("pck_nonsense")),
        StatusCode::UNAUTHORIZED,
        "malformed_api_key",
    );
}

/// Counts lookups, so a test can show that the checksum refuses typos on its own.
struct CountingStore {
    inner: Arc<MemoryKeyStore>,
    lookups: Arc<AtomicUsize>,
}

impl KeyStore for CountingStore {
    fn find(&self, id: &str) -> Lookup {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find(id)
    }
}

#[test]
fn malformed_keys_and_typos_are_refused_without_a_lookup() {
    let f = fixture();
    let lookups = Arc::new(AtomicUsize::new(0));
    let layer = ApiKeyLayer::new(CountingStore {
        inner: f.store.clone(),
        lookups: lookups.clone(),
    });
    let token = f.key.expose_secret();
    let mut typo = token.to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'x' { 'y' } else { 'x' });
    let other_prefix = token.replacen("pck_", "acme_", 1);
    for bad in [
        typo.as_str(),
        &other_prefix,
        "",
        "pck_key-1_short",
        &token[..token.len() - 1],
        "Bearer x",
    ] {
        assert_refused(
            &call(&layer, with_key(bad)),
            StatusCode::UNAUTHORIZED,
            "malformed_api_key",
        );
    }
    let mut not_text = with_key("x");
    not_text.headers_mut().insert(
        "x-api-key",
        http::HeaderValue::from_bytes(b"pck_\xfe").unwrap(),
    );
    assert_refused(
        &call(&layer, not_text),
        StatusCode::UNAUTHORIZED,
        "malformed_api_key",
    );
    assert_eq!(lookups.load(Ordering::SeqCst), 0);

    assert_eq!(call(&layer, with_key(token)).status, StatusCode::OK);
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
}

#[test]
fn unknown_keys_and_wrong_secrets_are_invalid() {
    let f = fixture();
    let stranger = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    assert_refused(
        &call(&f.layer, with_key(stranger.expose_secret())),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    );
    // Same id, another secret: well formed, found, and refused by the digest.
    let forged = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    let outcome = call(&f.layer, with_key(forged.expose_secret()));
    assert_refused(&outcome, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(outcome.notes[0].detail_text(), Some("wrong secret"));
    assert_eq!(outcome.notes[0].credential(), Some("key-1"));
}

#[test]
fn validity_window_is_checked_to_the_second() {
    let f = fixture();
    let key = GeneratedKey::with_id(&KeyPrefix::default(), "windowed").unwrap();
    f.store
        .insert(
            KeyRecord::new(key.id(), "partner-acme", key.digest())
                .unwrap()
                .not_before(UNIX_EPOCH + T0 + Duration::from_secs(10))
                .expires(UNIX_EPOCH + T0 + Duration::from_secs(20)),
        )
        .unwrap();
    let token = key.expose_secret();
    assert_refused(
        &call(&f.layer, with_key(token)),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    );
    f.clock.advance(Duration::from_secs(10));
    assert_eq!(call(&f.layer, with_key(token)).status, StatusCode::OK);
    f.clock.advance(Duration::from_millis(9_999));
    assert_eq!(call(&f.layer, with_key(token)).status, StatusCode::OK);
    f.clock.advance(Duration::from_millis(1));
    assert_refused(
        &call(&f.layer, with_key(token)),
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
}

#[test]
fn rotation_keeps_both_keys_working_until_the_old_one_expires() {
    let f = fixture();
    let old = GeneratedKey::with_id(&KeyPrefix::default(), "acme-2026").unwrap();
    let new = GeneratedKey::with_id(&KeyPrefix::default(), "acme-2027").unwrap();
    let record = |key: &GeneratedKey| {
        KeyRecord::new(key.id(), "acme", key.digest())
            .unwrap()
            .roles(["reader"])
    };
    f.store
        .insert(record(&old).expires(UNIX_EPOCH + T0 + Duration::from_secs(3600)))
        .unwrap();
    f.store.insert(record(&new)).unwrap();
    for key in [&old, &new] {
        let outcome = call(&f.layer, with_key(key.expose_secret()));
        assert_eq!(outcome.status, StatusCode::OK);
        let auth = outcome.seen.unwrap().auth;
        assert_eq!(
            auth.get(AuthMethod::ApiKey).unwrap().id(),
            "acme",
            "same principal"
        );
    }
    f.clock.advance(Duration::from_secs(3600));
    assert_refused(
        &call(&f.layer, with_key(old.expose_secret())),
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
    assert_eq!(
        call(&f.layer, with_key(new.expose_secret())).status,
        StatusCode::OK
    );
}

#[test]
fn revocation_applies_to_the_next_request_only_with_the_right_secret() {
    let f = fixture();
    let service = f.layer.clone();
    assert_eq!(
        call(&service, with_key(f.key.expose_secret())).status,
        StatusCode::OK
    );
    assert!(f.store.revoke("key-1"));
    assert_refused(
        &call(&service, with_key(f.key.expose_secret())),
        StatusCode::UNAUTHORIZED,
        "revoked_api_key",
    );
    // Someone without the secret does not learn that the key is revoked.
    let forged = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    assert_refused(
        &call(&service, with_key(forged.expose_secret())),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    );
    assert!(!f.store.revoke("no-such-key"));
}

#[test]
fn keys_limited_to_networks_check_the_client_address() {
    let f = fixture();
    let key = GeneratedKey::with_id(&KeyPrefix::default(), "office").unwrap();
    f.store
        .insert(
            KeyRecord::new(key.id(), "office", key.digest())
                .unwrap()
                .networks("203.0.113.0/24, 2001:db8::/32".parse().unwrap()),
        )
        .unwrap();
    let from = |peer: &str| {
        let mut request = with_key(key.expose_secret());
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        request
    };
    assert_eq!(
        call(&f.layer, from("203.0.113.7:4000")).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&f.layer, from("[2001:db8::1]:4000")).status,
        StatusCode::OK
    );
    assert_eq!(
        call(&f.layer, from("[::ffff:203.0.113.7]:4000")).status,
        StatusCode::OK
    );
    assert_refused(
        &call(&f.layer, from("198.51.100.1:4000")),
        StatusCode::FORBIDDEN,
        "ip_not_allowed_for_key",
    );
    // No connect info at all: the safe outcome, with the reason named.
    assert_refused(
        &call(&f.layer, with_key(key.expose_secret())),
        StatusCode::INTERNAL_SERVER_ERROR,
        "client_ip_unavailable",
    );
    // A key without networks needs no client address.
    assert_eq!(
        call(&f.layer, with_key(f.key.expose_secret())).status,
        StatusCode::OK
    );
}

#[test]
fn every_source_form_works_and_two_different_keys_conflict() {
    let f = fixture();
    let layer = f.layer.clone().sources([
        KeySource::default(),
        KeySource::split_header(HeaderName::from_static("x-auth-token")),
        KeySource::authorization("ApiKey").unwrap(),
        KeySource::query_parameter("api_key"),
    ]);
    let token = f.key.expose_secret();
    let split = f.key.expose_split_secret();
    let auth = format!("ApiKey {token}");
    let via_query = Request::builder()
        .uri(format!("/v1/key?api_key={token}&page=2"))
        .body(())
        .unwrap();
    for request in [
        with_key(token),
        with_header("x-auth-token", split),
        with_header("authorization", &auth),
        via_query,
    ] {
        let outcome = call(&layer, request);
        assert_eq!(outcome.status, StatusCode::OK, "{outcome:?}");
        let seen = outcome.seen.unwrap();
        assert!(seen.headers.get("x-auth-token").is_none());
        assert!(seen.headers.get("authorization").is_none());
        assert!(!seen.uri.to_string().contains("api_key"), "{}", seen.uri);
    }
    let other = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let mut both = with_key(token);
    both.headers_mut()
        .insert("x-auth-token", other.expose_split_secret().parse().unwrap());
    assert_refused(
        &call(&layer, both),
        StatusCode::BAD_REQUEST,
        "conflicting_api_keys",
    );
    // The challenge names the Authorization scheme when one is configured.
    let outcome = call(&layer, Request::new(()));
    assert!(outcome
        .challenge
        .unwrap()
        .starts_with("ApiKey realm=\"api\", header=\"x-api-key\""));
}

#[test]
fn a_second_api_key_principal_is_a_server_error_not_a_silent_pick() {
    let f = fixture();
    let mut request = with_key(f.key.expose_secret());
    let other = portcullis_core::Principal::builder("someone", AuthMethod::ApiKey).build();
    Authentication::insert_into(request.extensions_mut(), other).unwrap();
    assert_refused(
        &call(&f.layer, request),
        StatusCode::INTERNAL_SERVER_ERROR,
        "duplicate_authentication",
    );
}

/// A store that answers on the second poll, as a database would, or fails.
struct SlowStore {
    inner: Arc<MemoryKeyStore>,
    fail: bool,
}

struct YieldOnce<T>(Option<T>, bool);

impl<T: Unpin> Future for YieldOnce<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if self.1 {
            Poll::Ready(self.0.take().unwrap())
        } else {
            self.1 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl KeyStore for SlowStore {
    fn find(&self, id: &str) -> Lookup {
        let answer = if self.fail {
            Err(StoreError::new("connection refused by db.internal:5432"))
        } else {
            Ok(self.inner.get(id))
        };
        Lookup::pending(YieldOnce(Some(answer), false))
    }
}

#[test]
fn async_stores_decide_after_the_lookup() {
    let f = fixture();
    let layer = ApiKeyLayer::new(SlowStore {
        inner: f.store.clone(),
        fail: false,
    });
    let outcome = call(&layer, with_key(f.key.expose_secret()));
    assert_eq!(outcome.status, StatusCode::OK);
    assert_eq!(
        outcome
            .seen
            .unwrap()
            .auth
            .get(AuthMethod::ApiKey)
            .unwrap()
            .id(),
        "partner-acme"
    );
    let forged = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    assert_refused(
        &call(&layer, with_key(forged.expose_secret())),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    );

    let failing = ApiKeyLayer::new(SlowStore {
        inner: f.store.clone(),
        fail: true,
    });
    let outcome = call(&failing, with_key(f.key.expose_secret()));
    assert_refused(
        &outcome,
        StatusCode::SERVICE_UNAVAILABLE,
        "key_store_unavailable",
    );
    assert!(
        !outcome.body.contains("db.internal"),
        "store errors stay in the log"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_secret_in_any_response_log_line_note_or_debug_output() {
    let f = fixture();
    let token = f.key.expose_secret().to_owned();
    let secret_part = token["pck_key-1_".len()..].to_owned();
    let forged = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    let forged_part = forged.expose_secret()["pck_key-1_".len()..].to_owned();
    let mut typo = token.clone();
    typo.pop();
    typo.push('!');

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let mut everything = String::new();
    tracing::subscriber::with_default(subscriber, || {
        for request in [
            with_key(&token),
            with_key(forged.expose_secret()),
            with_key(&typo),
        ] {
            let outcome = call(&f.layer, request);
            everything.push_str(&format!("{outcome:?}"));
        }
        f.store.revoke("key-1");
        let outcome = call(&f.layer, with_key(&token));
        everything.push_str(&format!("{outcome:?}"));
    });
    everything.push_str(&String::from_utf8(captured.0.lock().unwrap().clone()).unwrap());
    everything.push_str(&format!(
        "{:?}{:?}{:?}{:?}",
        f.layer,
        f.store,
        f.store.get("key-1"),
        f.key
    ));
    assert!(everything.contains("key-1"), "the id is what names a key");
    assert!(!everything.contains(&secret_part[..16]), "secret leaked");
    assert!(
        !everything.contains(&forged_part[..16]),
        "presented secret leaked"
    );
}

#[test]
fn a_bearer_scheme_shared_with_jwts_leaves_tokens_alone() {
    let f = fixture();
    let layer = f
        .layer
        .clone()
        .mode(Mode::Optional)
        .sources([KeySource::shared_authorization("Bearer").unwrap()]);
    // A JWT is not ours: no refusal, no principal, and the header stays for its layer.
    let outcome = call(
        &layer,
        with_header("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
    );
    assert_eq!(outcome.status, StatusCode::OK);
    let seen = outcome.seen.unwrap();
    assert!(!seen.auth.is_authenticated());
    assert!(seen.headers.get("authorization").is_some());
    // A key of ours is checked and removed.
    let bearer = format!("Bearer {}", f.key.expose_secret());
    let outcome = call(&layer, with_header("authorization", &bearer));
    assert_eq!(outcome.status, StatusCode::OK);
    let seen = outcome.seen.unwrap();
    assert_eq!(
        seen.auth.get(AuthMethod::ApiKey).unwrap().id(),
        "partner-acme"
    );
    assert!(seen.headers.get("authorization").is_none());
    // A prefixed but wrong key is still refused.
    let mut wrong = bearer.clone();
    wrong.pop();
    let outcome = call(&layer, with_header("authorization", &wrong));
    assert_eq!(outcome.code, Some("malformed_api_key"));
}

/// A request to `/v1/key` with these header lines, in this order.
fn with_lines(lines: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().uri("/v1/key").body(()).unwrap();
    for (name, value) in lines {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

fn every_source(layer: &ApiKeyLayer) -> ApiKeyLayer {
    layer.clone().sources([
        KeySource::default(),
        KeySource::split_header(HeaderName::from_static("x-auth-token")),
        KeySource::authorization("ApiKey").unwrap(),
        KeySource::query_parameter("api_key"),
    ])
}

/// Every configured header carrying a key on two lines, equal or not, in any order with
/// other lines: 400 `conflicting_api_keys`, in both modes, and the inner service never
/// runs.
#[test]
fn a_key_on_two_field_lines_is_a_conflict() {
    let f = fixture();
    let other = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
    let (token, split) = (f.key.expose_secret(), f.key.expose_split_secret());
    let (auth, other_auth) = (
        format!("ApiKey {token}"),
        format!("ApiKey {}", other.expose_secret()),
    );
    for mode in [Mode::Required, Mode::Optional] {
        let layer = every_source(&f.layer).mode(mode);
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("x-api-key", token), ("x-api-key", token)],
            vec![("x-api-key", token), ("x-api-key", other.expose_secret())],
            vec![("x-api-key", "garbage"), ("x-api-key", token)],
            vec![("x-auth-token", split), ("x-auth-token", split)],
            vec![("authorization", &auth), ("authorization", &auth)],
            vec![
                ("authorization", "Bearer a.b.c"),
                ("authorization", &auth),
                ("authorization", &other_auth),
            ],
            vec![("x-api-key", token), ("authorization", &other_auth)],
        ];
        for lines in cases {
            let outcome = call(&layer, with_lines(&lines));
            assert_eq!(
                outcome.status,
                StatusCode::BAD_REQUEST,
                "{mode:?} {lines:?}"
            );
            assert_eq!(outcome.code, Some("conflicting_api_keys"), "{lines:?}");
            assert!(outcome.seen.is_none());
        }
        for query in [
            format!("/v1/key?api_key={token}&api_key={token}"),
            format!("/v1/key?api_key={token}&api%5Fkey={token}"),
            format!("/v1/key?API_KEY=x&api%5fkey={token}&api_key={token}"),
        ] {
            let request = Request::builder().uri(&query).body(()).unwrap();
            let outcome = call(&layer, request);
            assert_eq!(outcome.code, Some("conflicting_api_keys"), "{query}");
        }
    }
}

/// A key line beside another layer's `Authorization` line, in either order: only the key
/// line is removed, and the other layer's line reaches the inner service.
#[test]
fn only_the_lines_that_carried_the_key_are_removed() {
    let f = fixture();
    let token = f.key.expose_secret();
    let auth = format!("ApiKey {token}");
    let shared = f
        .layer
        .clone()
        .sources([KeySource::shared_authorization("Bearer").unwrap()]);
    for (layer, key_line) in [
        (every_source(&f.layer), auth.clone()),
        (shared, format!("Bearer {token}")),
    ] {
        for lines in [
            vec![
                ("authorization", key_line.as_str()),
                ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
            ],
            vec![
                ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
                ("authorization", key_line.as_str()),
            ],
        ] {
            let outcome = call(&layer, with_lines(&lines));
            assert_eq!(outcome.status, StatusCode::OK, "{outcome:?}");
            let seen = outcome.seen.unwrap();
            let left: Vec<_> = seen.headers.get_all("authorization").iter().collect();
            assert_eq!(left, ["Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"]);
        }
    }
}

/// The query parameter's name is compared after percent-decoding, for finding and for
/// stripping: `api%5Fkey` is `api_key` and never reaches the inner service.
#[test]
fn encoded_query_parameter_names_are_found_and_stripped() {
    let f = fixture();
    let layer = every_source(&f.layer);
    let token = f.key.expose_secret();
    for name in [
        "api_key",
        "api%5Fkey",
        "api%5fkey",
        "%61pi_key",
        "%61%70%69%5F%6B%65%79",
    ] {
        let request = Request::builder()
            .uri(format!("/v1/key?page=2&{name}={token}&sort=id"))
            .body(())
            .unwrap();
        let outcome = call(&layer, request);
        assert_eq!(outcome.status, StatusCode::OK, "{name}: {outcome:?}");
        let uri = outcome.seen.unwrap().uri.to_string();
        assert_eq!(uri, "/v1/key?page=2&sort=id", "{name}");
    }
    // Other names stay, even close ones.
    let request = Request::builder()
        .uri(format!(
            "/v1/key?api-key=1&API_KEY=2&api_key2=3&x-api-key={token}"
        ))
        .body(())
        .unwrap();
    let outcome = call(&layer.mode(Mode::Optional), request);
    assert_eq!(outcome.status, StatusCode::OK);
    assert!(outcome.seen.unwrap().uri.to_string().contains("API_KEY=2"));
}

/// An `Authorization` value of this layer's scheme written loosely is an attempt:
/// malformed in both modes, never "no key".
#[test]
fn loose_authorization_values_are_malformed_in_both_modes() {
    let f = fixture();
    let token = f.key.expose_secret();
    for mode in [Mode::Required, Mode::Optional] {
        let layer = every_source(&f.layer).mode(mode);
        for value in [
            format!("ApiKey\t{token}"),
            format!("ApiKey  {token}"),
            format!("ApiKey {token} "),
            format!("ApiKey {token}\t"),
            "ApiKey".to_owned(),
            "ApiKey ".to_owned(),
            format!("apikey,{token}"),
        ] {
            let outcome = call(&layer, with_lines(&[("authorization", &value)]));
            assert_eq!(
                outcome.status,
                StatusCode::UNAUTHORIZED,
                "{mode:?} {value:?}"
            );
            assert_eq!(outcome.code, Some("malformed_api_key"), "{value:?}");
        }
        let outcome = call(
            &layer,
            with_lines(&[("authorization", &format!("APIKEY {token}"))]),
        );
        assert_eq!(
            outcome.status,
            StatusCode::OK,
            "the scheme is case-insensitive"
        );
    }
    let shared = f
        .layer
        .clone()
        .mode(Mode::Optional)
        .sources([KeySource::shared_authorization("Bearer").unwrap()]);
    for value in [
        format!("Bearer  {token}"),
        format!("Bearer\t{token}"),
        format!("Bearer {token} "),
    ] {
        let outcome = call(&shared, with_lines(&[("authorization", &value)]));
        assert_eq!(outcome.code, Some("malformed_api_key"), "{value:?}");
    }
    let outcome = call(
        &shared,
        with_lines(&[("authorization", "Bearer  eyJ.e30.c2ln")]),
    );
    assert_eq!(
        outcome.status,
        StatusCode::OK,
        "another layer's token is not ours"
    );
}

/// The store answers for the keys that sessions were opened with: good while the key is
/// there, owned by the same principal, not revoked and within its validity.
#[test]
fn the_store_says_whether_a_sessions_key_is_still_good() {
    use portcullis_core::{Credential, CredentialCheck, CredentialStatus};
    let key = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store
        .insert(
            KeyRecord::new(key.id(), "partner-acme", key.digest())
                .unwrap()
                .expires(UNIX_EPOCH + T0 + Duration::from_secs(60)),
        )
        .unwrap();
    let (clock, control) = Clock::manual(UNIX_EPOCH + T0);
    let check = ApiKeyCredentials::new(store.clone()).clock(clock);
    assert!(check.checks(AuthMethod::ApiKey));
    assert!(!check.checks(AuthMethod::Certificate));
    let ask = |id: &str, principal: &str| {
        futures::executor::block_on(check.check(&Credential {
            method: AuthMethod::ApiKey,
            id: id.into(),
            principal: principal.into(),
        }))
        .map_err(|e| e.to_string())
    };
    assert_eq!(ask("key-1", "partner-acme"), Ok(CredentialStatus::Good));
    assert_eq!(ask("key-1", "someone-else"), Ok(CredentialStatus::Unknown));
    assert_eq!(ask("key-9", "partner-acme"), Ok(CredentialStatus::Unknown));
    control.advance(Duration::from_secs(60));
    assert_eq!(ask("key-1", "partner-acme"), Ok(CredentialStatus::Revoked));
    control.set(UNIX_EPOCH + T0);
    assert!(store.revoke("key-1"));
    assert_eq!(ask("key-1", "partner-acme"), Ok(CredentialStatus::Revoked));
    assert!(store.remove("key-1"));
    assert_eq!(ask("key-1", "partner-acme"), Ok(CredentialStatus::Unknown));
}
