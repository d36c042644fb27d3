//! A small HSM-style key service: named Ed25519 keys held in memory, their attributes,
//! signing, and approval tasks. It trusts the stack in front of it for who may call
//! what; it reads the principals (the `Authenticated` extractor) only to say who did it,
//! in its answers and its log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use portcullis::core::extract::Authenticated;
use serde_json::{json, Value};

struct Key {
    pair: Ed25519KeyPair,
    attributes: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Keys(Arc<Mutex<BTreeMap<String, Key>>>);

impl Keys {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Key>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type Answer = (StatusCode, Json<Value>);

fn answer(status: StatusCode, body: Value) -> Answer {
    (status, Json(body))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn new_key() -> Option<Ed25519KeyPair> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).ok()?;
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).ok()
}

/// The routes, with one key ("default") already there.
pub(crate) fn router() -> Router {
    let keys = Keys::default();
    if let Some(pair) = new_key() {
        keys.lock().insert(
            "default".into(),
            Key {
                pair,
                attributes: BTreeMap::from([("usage".into(), "sign".into())]),
            },
        );
    }
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/versionInfo", get(version))
        .route("/v1/key", get(list).post(create))
        .route("/v1/key/{name}", get(read).delete(delete))
        .route(
            "/v1/key/{name}/attributes",
            get(attributes).put(set_attributes),
        )
        .route("/v1/sign", post(sign))
        .route("/v1/approval", get(approvals))
        .with_state(keys)
}

async fn version() -> Json<Value> {
    Json(json!({ "product": "portcullis-gateway-example", "version": env!("CARGO_PKG_VERSION") }))
}

async fn list(State(keys): State<Keys>) -> Json<Value> {
    Json(json!({ "keys": keys.lock().keys().collect::<Vec<_>>() }))
}

/// Who the stack in front authenticated, for the answer and the log.
fn who(auth: &Authenticated) -> Vec<String> {
    auth.0
        .principals()
        .map(|p| format!("{}:{}", p.method().as_str(), p.id()))
        .collect()
}

async fn create(State(keys): State<Keys>, auth: Authenticated, Json(body): Json<Value>) -> Answer {
    let Some(name) = body["name"].as_str().filter(|n| valid_name(n)) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "give {\"name\": \"[A-Za-z0-9_-]{1,64}\"}" }),
        );
    };
    let mut keys = keys.lock();
    if keys.contains_key(name) {
        return answer(
            StatusCode::CONFLICT,
            json!({ "error": "a key of that name exists" }),
        );
    }
    let Some(pair) = new_key() else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "key generation failed" }),
        );
    };
    let public = STANDARD.encode(pair.public_key().as_ref());
    keys.insert(
        name.to_owned(),
        Key {
            pair,
            attributes: BTreeMap::new(),
        },
    );
    tracing::info!(key = name, by = ?who(&auth), "hsm: key created");
    answer(
        StatusCode::CREATED,
        json!({ "name": name, "algorithm": "Ed25519", "public_key": public, "by": who(&auth) }),
    )
}

async fn read(State(keys): State<Keys>, Path(name): Path<String>) -> Answer {
    match keys.lock().get(&name) {
        Some(key) => answer(
            StatusCode::OK,
            json!({ "name": name, "algorithm": "Ed25519", "public_key": STANDARD.encode(key.pair.public_key().as_ref()) }),
        ),
        None => answer(StatusCode::NOT_FOUND, json!({ "error": "no such key" })),
    }
}

async fn delete(
    State(keys): State<Keys>,
    auth: Authenticated,
    Path(name): Path<String>,
) -> StatusCode {
    match keys.lock().remove(&name) {
        Some(_) => {
            tracing::info!(key = name, by = ?who(&auth), "hsm: key deleted");
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn attributes(State(keys): State<Keys>, Path(name): Path<String>) -> Answer {
    match keys.lock().get(&name) {
        Some(key) => answer(StatusCode::OK, json!(key.attributes)),
        None => answer(StatusCode::NOT_FOUND, json!({ "error": "no such key" })),
    }
}

async fn set_attributes(
    State(keys): State<Keys>,
    Path(name): Path<String>,
    Json(body): Json<BTreeMap<String, String>>,
) -> Answer {
    match keys.lock().get_mut(&name) {
        Some(key) => {
            key.attributes = body;
            answer(StatusCode::OK, json!(key.attributes))
        }
        None => answer(StatusCode::NOT_FOUND, json!({ "error": "no such key" })),
    }
}

async fn sign(State(keys): State<Keys>, auth: Authenticated, Json(body): Json<Value>) -> Answer {
    let (Some(name), Some(data)) = (body["key"].as_str(), body["data"].as_str()) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "give {\"key\": name, \"data\": base64}" }),
        );
    };
    let Ok(data) = STANDARD.decode(data) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "data is not base64" }),
        );
    };
    match keys.lock().get(name) {
        Some(key) => answer(
            StatusCode::OK,
            json!({ "key": name, "algorithm": "Ed25519", "signature": STANDARD.encode(key.pair.sign(&data).as_ref()), "by": who(&auth) }),
        ),
        None => answer(StatusCode::NOT_FOUND, json!({ "error": "no such key" })),
    }
}

async fn approvals() -> Json<Value> {
    Json(json!({ "tasks": [] }))
}
