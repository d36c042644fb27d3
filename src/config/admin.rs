//! The admin routes of `[admin]`: reload the files, report what is loaded, lift a ban,
//! revoke a token. Behind the gateway's own audit, allow-list and credential layers, and
//! a rule that asks for the admin role from a client certificate or an API key.

use std::time::UNIX_EPOCH;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use portcullis_core::AuthMethod;
use portcullis_role_router::{Policy, Requirement, RoleRouterLayer, Rule};
use serde::Deserialize;
use serde_json::json;

use super::build::{Built, Gateway};

impl Gateway {
    /// The admin routes, when the file has an `[admin]` section:
    ///
    /// | route | what it does |
    /// |---|---|
    /// | `POST /reload` | [`reload`](Self::reload): 200 with the counts, or 422 naming the broken file and line |
    /// | `GET /status` | the layers, the watched files, the last reload, keys, connectors, revoked tokens |
    /// | `POST /bans/{key}/lift?quota=NAME` | lifts a rate-limit ban in this process |
    /// | `POST /revocations` with `{"jti": "…", "expires_at": SECONDS}` | revokes a token (kept in the journal when there is one) |
    /// | `PUT /rate-limit/quotas/{name}/mode` with `{"mode": "dry-run"}` or `"enforce"` | switches a quota's mode at once, in every rate-limit layer that has it |
    /// | `POST /rate-limit/check` with `{"quota": "…", "key": ["…"], "tier": "…"}` | what the quota would answer for that key now, charging nothing |
    /// | `GET /healthz`, `GET /readyz` | the [probes](Self::health_router), without credentials |
    ///
    /// Every route needs a principal with the configured role (`admin`) from a client
    /// certificate or an API key; the gateway's audit, allow-list, mTLS and API-key
    /// layers run in front, in the file's order, so admin calls are audited and
    /// refused like any other.
    pub fn admin_router(&self) -> Option<Router> {
        let settings = self.admin.as_ref()?;
        let policy = Policy::builder()
            .rule(Rule::new(
                "/**",
                Requirement::authenticated()
                    .any_role([settings.role.clone()])
                    .any_method([AuthMethod::Certificate, AuthMethod::ApiKey]),
            ))
            .build()
            .expect("a one-rule policy with a fixed pattern builds");
        let mut admin = Router::new()
            .route("/reload", post(reload))
            .route("/status", get(status))
            .route("/bans/{key}/lift", post(lift_ban))
            .route("/revocations", post(revoke))
            .route("/rate-limit/quotas/{name}/mode", put(set_quota_mode))
            .route("/rate-limit/check", post(check_quota))
            .with_state(self.clone())
            .layer(RoleRouterLayer::new(policy));
        // axum's last `.layer` is the outermost: the file's list backwards.
        for (_, layer) in self.layers.iter().rev() {
            admin = match layer.clone() {
                Built::Audit(layer) => admin.layer(layer),
                Built::IpAllowlist(layer) => admin.layer(layer),
                Built::MtlsIdentity(layer) => admin.layer(layer),
                Built::ApiKey(layer) => admin.layer(layer),
                Built::Jwt(_)
                | Built::RoleRouter(_)
                | Built::RateLimit(_)
                | Built::ExtAuthz(_)
                | Built::IdentityHeaders(_) => admin,
            };
        }
        // The probes, merged after the layers: outside them.
        Some(admin.merge(self.health_router()))
    }
}

impl Gateway {
    /// `GET /healthz` (the process answers: 200) and `GET /readyz` (200 once every
    /// issuer whose keys come from a key server has them and they are not past their
    /// maximum age, and the revocations shared through Redis are in sync; 503 with what
    /// it waits for otherwise), for an orchestrator's probes. Outside the security
    /// layers, and they name no file, URL or key: put them on a port the orchestrator
    /// reaches. The admin listener serves them without credentials; `[server] health =
    /// true` adds them to the main listener.
    pub fn health_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { Json(json!({ "alive": true })) }))
            .route("/readyz", get(ready))
            .with_state(self.clone())
    }

    /// What keeps the gateway from being ready: nothing when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut waiting = Vec::new();
        let keys_missing = self.reloadable.jwt.iter().any(|handle| {
            handle
                .key_sets()
                .iter()
                .any(|keys| keys.fetched && (keys.last_fetch.is_none() || keys.stale))
        });
        if keys_missing {
            waiting.push("token signing keys");
        }
        if !self.revocations.is_available() {
            waiting.push("shared revocations");
        }
        waiting
    }
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    let waiting = gateway.not_ready();
    if waiting.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": waiting })),
        )
            .into_response()
    }
}

fn problem(status: StatusCode, code: &str, detail: String) -> Response {
    let body = json!({
        "type": format!("urn:portcullis:problem:{code}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

async fn reload(State(gateway): State<Gateway>) -> Response {
    // Reading files blocks; keep it off the runtime's workers.
    let outcome = tokio::task::spawn_blocking(move || gateway.reload_for("admin")).await;
    match outcome {
        Ok(Ok(report)) => Json(json!({ "reloaded": true, "loaded": report })).into_response(),
        Ok(Err(error)) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            format!("{error}; everything stays as it was"),
        ),
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            "the reload task did not finish".into(),
        ),
    }
}

async fn status(State(gateway): State<Gateway>) -> Json<serde_json::Value> {
    let files = &gateway.reloadable;
    let last = files
        .last
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let last = last.map(|last| {
        let at = last
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match last.outcome {
            Ok(report) => json!({ "at": at, "ok": true, "loaded": report }),
            Err(error) => json!({ "at": at, "ok": false, "error": error }),
        }
    });
    Json(json!({
        "layers": gateway.layer_kinds(),
        "files": gateway.watched_files(),
        "last_reload": last,
        "api_keys": files.key_files.iter().map(|store| store.len()).sum::<usize>(),
        "connectors": files
            .connectors
            .iter()
            .map(|(_, registry)| registry.connectors().len())
            .sum::<usize>(),
        "revoked_tokens": gateway.revocations.len(),
        "revocations_shared": gateway.revocations.is_shared(),
        "revocations_sync_age_ms": gateway
            .revocations
            .shared_sync_age()
            .map(|age| age.as_millis() as u64),
        "key_sets": files
            .jwt
            .iter()
            .flat_map(|handle| handle.key_sets())
            .map(|keys| json!({
                "issuer": keys.issuer,
                "fetched": keys.fetched,
                "last_fetch": keys
                    .last_fetch
                    .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                    .map(|since| since.as_secs()),
                "stale": keys.stale,
            }))
            .collect::<Vec<_>>(),
        "bans": files
            .rate_limits
            .iter()
            .map(|handle| handle.bans().len())
            .sum::<usize>(),
        "quota_modes": files
            .rate_limits
            .iter()
            .flat_map(|handle| handle.modes())
            .map(|(quota, mode)| (quota, json!(mode.as_str())))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

#[derive(Deserialize)]
struct BanQuery {
    quota: String,
}

async fn lift_ban(
    State(gateway): State<Gateway>,
    Path(key): Path<String>,
    Query(query): Query<BanQuery>,
) -> Json<serde_json::Value> {
    let mut lifted = false;
    for handle in &gateway.reloadable.rate_limits {
        lifted |= handle.lift_ban(&query.quota, &key);
    }
    tracing::info!(quota = %query.quota, lifted, "gateway: an admin lifted a ban");
    Json(json!({ "lifted": lifted }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeChange {
    mode: String,
}

async fn set_quota_mode(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    body: Result<Json<ModeChange>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(mode) = body
        .ok()
        .and_then(|Json(change)| change.mode.parse::<portcullis_rate_limit::Mode>().ok())
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_mode",
            "send {\"mode\": \"dry-run\"} or {\"mode\": \"enforce\"} as application/json".into(),
        );
    };
    let previous: Vec<_> = gateway
        .reloadable
        .rate_limits
        .iter()
        .filter_map(|handle| handle.set_mode(&name, mode))
        .collect();
    let Some(first) = previous.first() else {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown_quota",
            format!("no rate-limit layer has a quota named {name:?}"),
        );
    };
    tracing::info!(quota = %name, %mode, "gateway: an admin set a quota's mode");
    Json(json!({ "quota": name, "mode": mode.as_str(), "previous": first.as_str() }))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    quota: String,
    key: Vec<String>,
    #[serde(default)]
    tier: Option<String>,
}

async fn check_quota(
    State(gateway): State<Gateway>,
    body: Result<Json<CheckRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_check",
            "send {\"quota\": \"…\", \"key\": [\"…\"]} (and optionally \"tier\") as application/json".into(),
        );
    };
    let key: Vec<&str> = request.key.iter().map(String::as_str).collect();
    let mut last_error = None;
    for handle in &gateway.reloadable.rate_limits {
        match handle
            .check_key(&request.quota, request.tier.as_deref(), &key)
            .await
        {
            Ok(check) => {
                return Json(json!({
                    "quota": check.quota,
                    "mode": check.mode.as_str(),
                    "allowed": check.allowed,
                    "banned": check.banned,
                    "limit": check.limit,
                    "window_secs": check.window.as_secs_f64(),
                    "remaining": check.remaining,
                    "reset_secs": check.reset.as_secs_f64(),
                    "retry_after_secs": check.retry_after.as_secs_f64(),
                }))
                .into_response()
            }
            // Another layer may hold the quota.
            Err(portcullis_rate_limit::CheckKeyError::UnknownQuota(_)) => {}
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(portcullis_rate_limit::CheckKeyError::Unavailable) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limit_unavailable",
            "Redis does not answer and the layer fails closed".into(),
        ),
        Some(error) => problem(StatusCode::BAD_REQUEST, "invalid_check", error.to_string()),
        None => problem(
            StatusCode::NOT_FOUND,
            "unknown_quota",
            format!("no rate-limit layer has a quota named {:?}", request.quota),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocation {
    jti: String,
    expires_at: i64,
}

async fn revoke(
    State(gateway): State<Gateway>,
    body: Result<Json<Revocation>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(revocation)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_revocation",
            "send {\"jti\": \"…\", \"expires_at\": SECONDS} as application/json".into(),
        );
    };
    match tokio::task::spawn_blocking(move || {
        gateway
            .revocations
            .revoke(&revocation.jti, revocation.expires_at)
    })
    .await
    {
        Ok(Ok(())) => Json(json!({ "revoked": true })).into_response(),
        Ok(Err(portcullis_jwt::RevocationError::InvalidId)) => problem(
            StatusCode::BAD_REQUEST,
            "invalid_revocation",
            "a token id is non-empty, without whitespace or control characters".into(),
        ),
        Ok(Err(error)) => {
            tracing::error!(%error, "gateway: an admin revocation could not be kept");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation_unavailable",
                "the token is refused by this process, but the journal could not keep it".into(),
            )
        }
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "revocation_unavailable",
            "the revocation task did not finish".into(),
        ),
    }
}
