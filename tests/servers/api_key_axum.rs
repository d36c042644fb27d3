//! The endpoint-security API from DESIGN.md on a real axum server: keys in
//! `X-Auth-Token: <secret>/<id>`, access levels that open route groups through the role
//! router, a key limited to one source address, and keys rotated and revoked in the key
//! file while the server runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::Request;
use axum::routing::any;
use axum::Router;
use http::header::{HeaderName, WWW_AUTHENTICATE};
use http::StatusCode;
use portcullis::api_key::{
    render_key_record, ApiKeyLayer, FileKeyStore, GeneratedKey, KeyPrefix, KeyRecord, KeySource,
    Mode,
};
use portcullis::core::{AuthMethod, Authentication};
use portcullis::role_router::{read_policy, RoleRouterLayer};

use crate::client::{get_with, serve_axum, Reply};

struct Keys {
    file: PathBuf,
    read_only: GeneratedKey,
    standard: GeneratedKey,
    admin: GeneratedKey,
    expired: GeneratedKey,
    office: GeneratedKey,
    records: Vec<KeyRecord>,
}

impl Keys {
    /// Keys written to a file of the test's own.
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-api-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = KeyPrefix::new("edr").unwrap();
        let key = |id: &str| GeneratedKey::with_id(&prefix, id).unwrap();
        let (read_only, standard, admin, expired, office) = (
            key("ro-1"),
            key("std-1"),
            key("adm-1"),
            key("old-1"),
            key("office-1"),
        );
        let record = |key: &GeneratedKey, owner: &str, role: &str| {
            KeyRecord::new(key.id(), owner, key.digest())
                .unwrap()
                .roles([role])
        };
        let records = vec![
            record(&read_only, "org-1", "read-only"),
            record(&standard, "org-1", "standard"),
            record(&admin, "org-2", "admin"),
            record(&expired, "org-1", "standard")
                .expires(SystemTime::now() - Duration::from_secs(1)),
            record(&office, "org-3", "standard").networks("127.0.0.5/32".parse().unwrap()),
        ];
        let keys = Self {
            file: dir.join(format!("{test}.toml")),
            read_only,
            standard,
            admin,
            expired,
            office,
            records,
        };
        keys.write();
        keys
    }

    fn write(&self) {
        let text: Vec<String> = self.records.iter().map(render_key_record).collect();
        std::fs::write(&self.file, text.join("\n")).unwrap();
    }
}

async fn whoami(request: Request) -> String {
    let auth = Authentication::from_extensions(request.extensions());
    let principal = auth.get(AuthMethod::ApiKey).unwrap();
    // The handler never sees the credential.
    assert!(request.headers().get("x-auth-token").is_none());
    format!(
        "{} via {}",
        principal.id(),
        principal.credential_id().unwrap()
    )
}

async fn serve(store: Arc<FileKeyStore>) -> SocketAddr {
    let policy = read_policy(format!(
        "{}/tests/policies/endpoint.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let api_key = ApiKeyLayer::new(store)
        .prefix(KeyPrefix::new("edr").unwrap())
        .sources([KeySource::split_header(HeaderName::from_static(
            "x-auth-token",
        ))])
        // /health is public: the role router decides who needs a key.
        .mode(Mode::Optional);
    let app = Router::new()
        .route("/health", any(|| async { "ok" }))
        .route("/api/v1/{*rest}", any(whoami))
        .layer(RoleRouterLayer::new(policy))
        .layer(api_key);
    serve_axum(app).await
}

async fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    send_from(addr, "127.0.0.1", method, path, token).await
}

async fn send_from(
    addr: SocketAddr,
    from: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Reply {
    let headers: Vec<(&str, &str)> = token.map(|t| vec![("x-auth-token", t)]).unwrap_or_default();
    get_with(addr, method, from, path, &headers).await
}

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.code().as_deref(), Some(code), "{}", reply.body);
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    if status == 401 && code.ends_with("api_key") {
        let challenge = reply
            .headers
            .get(WWW_AUTHENTICATE)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{challenge}"
        );
    }
}

#[tokio::test]
async fn access_levels_open_route_groups() {
    let keys = Keys::new("levels");
    let addr = serve(Arc::new(FileKeyStore::open(&keys.file).unwrap())).await;
    let ro = keys.read_only.expose_split_secret();
    let std = keys.standard.expose_split_secret();
    let admin = keys.admin.expose_split_secret();

    assert_eq!(send(addr, "GET", "/health", None).await.body, "ok");
    let reply = send(addr, "GET", "/api/v1/endpoints", Some(ro)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "org-1 via ro-1")
    );
    assert_refused(
        &send(addr, "POST", "/api/v1/endpoints/e1/quarantine", Some(ro)).await,
        403,
        "forbidden",
    );
    assert_eq!(
        send(addr, "POST", "/api/v1/endpoints/e1/quarantine", Some(std))
            .await
            .body,
        "org-1 via std-1"
    );
    assert_refused(
        &send(addr, "PUT", "/api/v1/policies/p1", Some(std)).await,
        403,
        "forbidden",
    );
    assert_eq!(
        send(addr, "PUT", "/api/v1/policies/p1", Some(admin))
            .await
            .body,
        "org-2 via adm-1"
    );
    // No key on a protected route: the role router's 401.
    assert_refused(
        &send(addr, "GET", "/api/v1/endpoints", None).await,
        401,
        "unauthenticated",
    );
}

#[tokio::test]
async fn every_refusal_code_over_http() {
    let keys = Keys::new("refusals");
    let addr = serve(Arc::new(FileKeyStore::open(&keys.file).unwrap())).await;
    let path = "/api/v1/endpoints";
    let std = keys.standard.expose_split_secret();

    let mut typo = std.to_owned();
    typo.replace_range(5..6, if &typo[5..6] == "x" { "y" } else { "x" });
    let malformed = send(addr, "GET", path, Some(&typo)).await;
    assert_refused(&malformed, 401, "malformed_api_key");
    assert!(!malformed.body.contains(&typo[4..20]), "never echo the key");

    let stranger = GeneratedKey::generate(&KeyPrefix::new("edr").unwrap()).unwrap();
    assert_refused(
        &send(addr, "GET", path, Some(stranger.expose_split_secret())).await,
        401,
        "invalid_api_key",
    );
    let forged = GeneratedKey::with_id(&KeyPrefix::new("edr").unwrap(), "std-1").unwrap();
    assert_refused(
        &send(addr, "GET", path, Some(forged.expose_split_secret())).await,
        401,
        "invalid_api_key",
    );
    assert_refused(
        &send(addr, "GET", path, Some(keys.expired.expose_split_secret())).await,
        401,
        "expired_api_key",
    );
    let compact = send(addr, "GET", path, Some(keys.standard.expose_secret())).await;
    assert_refused(&compact, 401, "malformed_api_key");

    let office = keys.office.expose_split_secret();
    assert_eq!(
        send_from(addr, "127.0.0.5", "GET", path, Some(office))
            .await
            .body,
        "org-3 via office-1"
    );
    assert_refused(
        &send_from(addr, "127.0.0.6", "GET", path, Some(office)).await,
        403,
        "ip_not_allowed_for_key",
    );

    let both = get_with(
        addr,
        "GET",
        "127.0.0.1",
        path,
        &[
            ("x-auth-token", std),
            ("x-auth-token", keys.admin.expose_split_secret()),
        ],
    )
    .await;
    assert_refused(&both, 400, "conflicting_api_keys");
}

#[tokio::test]
async fn rotate_and_revoke_in_the_key_file_while_serving() {
    let mut keys = Keys::new("rotation");
    let store = Arc::new(FileKeyStore::open(&keys.file).unwrap());
    let addr = serve(store.clone()).await;
    let path = "/api/v1/endpoints";
    let old = keys.standard.expose_split_secret().to_owned();

    // Rotation: a second key for org-1, then both work.
    let new = GeneratedKey::with_id(&KeyPrefix::new("edr").unwrap(), "std-2").unwrap();
    keys.records.push(
        KeyRecord::new(new.id(), "org-1", new.digest())
            .unwrap()
            .roles(["standard"]),
    );
    keys.write();
    assert_refused(
        &send(addr, "GET", path, Some(new.expose_split_secret())).await,
        401,
        "invalid_api_key",
    );
    store.reload().unwrap();
    assert_eq!(
        send(addr, "GET", path, Some(&old)).await.body,
        "org-1 via std-1"
    );
    assert_eq!(
        send(addr, "GET", path, Some(new.expose_split_secret()))
            .await
            .body,
        "org-1 via std-2"
    );

    // Revocation: the next request with the old key is refused, the new one goes on.
    let old_record = keys.records.iter_mut().find(|r| r.id() == "std-1").unwrap();
    *old_record = old_record.clone().revoked(true);
    keys.write();
    store.reload().unwrap();
    assert_refused(
        &send(addr, "GET", path, Some(&old)).await,
        401,
        "revoked_api_key",
    );
    assert_eq!(
        send(addr, "GET", path, Some(new.expose_split_secret()))
            .await
            .body,
        "org-1 via std-2"
    );

    // A broken file leaves the keys in force.
    std::fs::write(&keys.file, "[[key]]\nid = \"x\"\n").unwrap();
    assert!(store.reload().is_err());
    assert_eq!(
        send(addr, "GET", path, Some(new.expose_split_secret()))
            .await
            .body,
        "org-1 via std-2"
    );
}
