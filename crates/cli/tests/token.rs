//! `portcullis token secret | mint`, run as a user would; the minted tokens are checked by
//! the JWT layer itself.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

use http::{Request, StatusCode};
use portcullis_core::{AuthMethod, Authentication};
use portcullis_jwt::jsonwebtoken::Algorithm;
use portcullis_jwt::{Issuer, JwtLayer, VerifyingKey};
use tower::{service_fn, ServiceExt};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn a_minted_token_passes_the_layer_that_shares_its_secret() {
    let secret = dir().join("secret");
    let _ = std::fs::remove_file(&secret);
    let path = secret.to_str().unwrap();
    let out = portcullis(&["token", "secret", "--out", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the owner may read the secret");
    }
    let again = portcullis(&["token", "secret", "--out", path]);
    assert!(
        !again.status.success(),
        "an existing secret is never overwritten"
    );

    let out = portcullis(&[
        "token",
        "mint",
        "--issuer",
        "https://dev.local",
        "--audience",
        "api",
        "--subject",
        "alice",
        "--role",
        "admin,reader",
        "--scope",
        "keys:read",
        "--ttl",
        "15m",
        "--secret-file",
        path,
        "--kid",
        "dev",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3);

    let bytes = base64_secret(&std::fs::read_to_string(&secret).unwrap());
    let key = VerifyingKey::hmac(Algorithm::HS256, &bytes)
        .unwrap()
        .with_kid("dev");
    let layer = JwtLayer::builder()
        .issuer(Issuer::new("https://dev.local").audience("api").key(key))
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|request: Request<()>| async move {
            let auth = Authentication::from_extensions(request.extensions());
            let principal = auth.get(AuthMethod::Jwt).unwrap();
            assert_eq!(principal.id(), "alice");
            assert_eq!(principal.roles(), ["admin", "reader"]);
            assert_eq!(principal.scopes(), ["keys:read"]);
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    let request = Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let response = futures::executor::block_on(service.oneshot(request)).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn base64_secret(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .unwrap()
}

#[test]
fn bad_arguments_are_explained() {
    let out = portcullis(&[
        "token",
        "mint",
        "--issuer",
        "i",
        "--audience",
        "a",
        "--subject",
        "s",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--secret-file or --key-file"),
        "{}",
        text(&out.stderr)
    );

    let weak = dir().join("weak");
    std::fs::write(&weak, "c2hvcnQ\n").unwrap();
    let out = portcullis(&[
        "token",
        "mint",
        "--issuer",
        "i",
        "--audience",
        "a",
        "--subject",
        "s",
        "--secret-file",
        weak.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("at least 32"),
        "{}",
        text(&out.stderr)
    );

    let out = portcullis(&[
        "token",
        "mint",
        "--issuer",
        "i",
        "--audience",
        "a",
        "--subject",
        "s",
        "--secret-file",
        weak.to_str().unwrap(),
        "--ttl",
        "soon",
    ]);
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
}
