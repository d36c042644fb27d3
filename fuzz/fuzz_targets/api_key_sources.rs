//! Arbitrary field lines and query strings through `ApiKeyLayer` with every source.
//!
//! The input is lines separated by `\n`. The first byte of a line picks its field
//! (`x-api-key`, `x-auth-token`, `authorization`, or another one); the rest is its value,
//! in which `KEY` stands for the store's key and `SPLIT` for its split form, so the
//! fuzzer reaches the allow path. A line that starts with `?` is the query string.
//!
//! Invariants: no panic; never a 5xx; an allowed request names the store's key; it
//! carried that key at most once per source; and the inner service sees no line or
//! parameter that carried a key: no `x-api-key`, no `x-auth-token`, no `Authorization`
//! line of the `ApiKey` scheme, no query parameter whose decoded name is `api_key`.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use portcullis_api_key::{
    ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, KeySource, MemoryKeyStore, Mode,
};
use portcullis_core::{AuthMethod, Authentication};
use tower::{Layer, ServiceExt};

struct Setup {
    key: GeneratedKey,
    required: ApiKeyLayer,
    optional: ApiKeyLayer,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let key = GeneratedKey::with_id(&KeyPrefix::default(), "key-1").unwrap();
        let store = Arc::new(MemoryKeyStore::new());
        store
            .insert(KeyRecord::new(key.id(), "owner", key.digest()).unwrap())
            .unwrap();
        let layer = ApiKeyLayer::new(store).sources([
            KeySource::default(),
            KeySource::split_header(HeaderName::from_static("x-auth-token")),
            KeySource::authorization("ApiKey").unwrap(),
            KeySource::query_parameter("api_key"),
        ]);
        Setup {
            key,
            optional: layer.clone().mode(Mode::Optional),
            required: layer,
        }
    })
}

/// What the inner service saw.
#[derive(Clone, Debug)]
struct Seen {
    principal: Option<String>,
    headers: http::HeaderMap,
    uri: Uri,
}

fn decoded_name(pair: &str) -> Vec<u8> {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    percent_encoding::percent_decode_str(name).collect()
}

fn apikey_scheme(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes.len() >= 6
        && bytes[..6].eq_ignore_ascii_case(b"apikey")
        && bytes
            .get(6)
            .is_none_or(|b| !b.is_ascii_alphanumeric() && !b"!#$%&'*+-.^_`|~".contains(b))
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let mut request = Request::new(());
    let mut query = None;
    for line in data.split(|b| *b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(value)
            .replace("SPLIT", setup.key.expose_split_secret())
            .replace("KEY", setup.key.expose_secret());
        if which == b'?' {
            query = Some(text);
            continue;
        }
        let name = match which % 4 {
            0 => HeaderName::from_static("x-api-key"),
            1 => HeaderName::from_static("x-auth-token"),
            2 => AUTHORIZATION,
            _ => HeaderName::from_static("x-other"),
        };
        if let Ok(value) = HeaderValue::from_bytes(text.as_bytes()) {
            request.headers_mut().append(name, value);
        }
    }
    if let Some(query) = &query {
        match format!("/v1/keys?{query}").parse::<Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return,
        }
    }
    let headers = request.headers().clone();
    let uri = request.uri().clone();
    for layer in [&setup.required, &setup.optional] {
        let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
        let inner = {
            let seen = seen.clone();
            tower::service_fn(move |request: Request<()>| {
                let seen = seen.clone();
                async move {
                    let auth = Authentication::from_extensions(request.extensions());
                    *seen.lock().unwrap() = Some(Seen {
                        principal: auth.get(AuthMethod::ApiKey).map(|p| p.id().to_owned()),
                        headers: request.headers().clone(),
                        uri: request.uri().clone(),
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(()))
                }
            })
        };
        let mut copy = Request::new(());
        *copy.headers_mut() = headers.clone();
        *copy.uri_mut() = uri.clone();
        let response = futures::executor::block_on(layer.layer(inner).oneshot(copy)).unwrap();
        assert!(
            !response.status().is_server_error(),
            "{:?}",
            response.status()
        );
        let seen = seen.lock().unwrap().take();
        let Some(seen) = seen else {
            assert_ne!(response.status(), StatusCode::OK);
            continue;
        };
        let Some(principal) = seen.principal else {
            // Optional mode with no credential at all.
            assert!(headers.get("x-api-key").is_none() && headers.get("x-auth-token").is_none());
            assert!(!headers.get_all(AUTHORIZATION).iter().any(apikey_scheme));
            continue;
        };
        assert_eq!(
            principal, "owner",
            "an allowed request names the store's key owner"
        );
        assert!(headers.get_all("x-api-key").iter().count() <= 1);
        assert!(headers.get_all("x-auth-token").iter().count() <= 1);
        assert!(
            headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter(|v| apikey_scheme(v))
                .count()
                <= 1
        );
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "a key line reached the service"
        );
        assert!(
            seen.headers.get("x-auth-token").is_none(),
            "a key line reached the service"
        );
        assert!(
            !seen
                .headers
                .get_all(AUTHORIZATION)
                .iter()
                .any(apikey_scheme),
            "a key line reached the service"
        );
        let other_lines = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter(|v| !apikey_scheme(v))
            .count();
        assert_eq!(
            seen.headers.get_all(AUTHORIZATION).iter().count(),
            other_lines,
            "another layer's line was removed"
        );
        if let Some(query) = seen.uri.query() {
            for pair in query.split('&') {
                assert_ne!(
                    decoded_name(pair),
                    b"api_key",
                    "a key parameter reached the service"
                );
            }
        }
    }
});
