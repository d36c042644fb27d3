//! Policy files (`[[rule]]` TOML, as `portcullis policy check` and the gateway read
//! them), then requests through `RoleRouterLayer`.
//!
//! Input: the policy text, then 0x00 and request lines `METHOD path`; a line starting
//! with `+` is sent by a principal with role `admin` and scope `read`.
//!
//! Invariants: no panic; an error names a line of the text; `lint` ends (libFuzzer's
//! timeout catches a runaway) and names only rules that exist; through the layer, a
//! request is allowed exactly when its path normalizes and `Policy::decide` allows it,
//! and never a 5xx.

#![no_main]

use http::{Method, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{AuthMethod, Authentication, Principal};
use portcullis_role_router::{normalize, parse_policy, RoleRouterLayer};
use tower::{Layer, ServiceExt};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (policy_text, requests) = text.split_once('\0').unwrap_or((&text, ""));
    let lines = policy_text.lines().count().max(1);
    let policy = match parse_policy("fuzz.toml", policy_text) {
        Ok(policy) => policy,
        Err(error) => {
            if let Some(line) = error.line() {
                assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
            }
            return;
        }
    };
    for index in 0..policy.len() {
        assert!(policy.describe_rule(index).is_some());
        if let Some(line) = policy.rule_line(index) {
            assert!(line >= 1 && line <= lines, "rule line {line} of {lines}");
        }
    }
    for shadowed in policy.lint() {
        assert!(shadowed.by < shadowed.rule && shadowed.rule < policy.len());
    }
    // Parsed twice: `Policy` is not `Clone`, and the layer takes one.
    let layer = RoleRouterLayer::new(parse_policy("fuzz.toml", policy_text).unwrap());
    for line in requests.lines().take(8) {
        let (signed_in, line) = match line.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((method, path)) = line.split_once(' ') else {
            continue;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        let Ok(mut request) = Request::builder()
            .method(method.clone())
            .uri(format!("http://h{path}"))
            .body(())
        else {
            continue;
        };
        let mut auth = Authentication::default();
        if signed_in {
            auth.insert(
                Principal::builder("alice", AuthMethod::ApiKey)
                    .role("admin")
                    .scope("read")
                    .build(),
            )
            .unwrap();
            request.extensions_mut().insert(auth.clone());
        }
        let request_path = request.uri().path().to_owned();
        let service = layer.clone().layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let status = futures::executor::block_on(service.oneshot(request))
            .unwrap()
            .status();
        assert!(!status.is_server_error(), "{status}");
        let expected = normalize(&request_path)
            .ok()
            .is_some_and(|normal| policy.decide(&method, &normal, &auth).result.is_ok());
        assert_eq!(
            status == StatusCode::OK,
            expected,
            "{method} {request_path:?} (signed in: {signed_in}): {status}"
        );
    }
});
