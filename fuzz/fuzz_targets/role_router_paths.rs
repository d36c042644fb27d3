//! Path patterns and request paths: the compiled matcher against a naive reference, and
//! arbitrary paths through `RoleRouterLayer`.
//!
//! Input: a pattern and a path separated by 0x00 (each cut to a handful of segments so
//! the exponential reference stays small).
//!
//! Invariants: no panic; `PathPattern::matches` equals the reference; a path the
//! normalizer refuses is never allowed by the layer; an allowed path matches the public
//! rule's pattern.

#![no_main]

use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use portcullis_role_router::{normalize, PathPattern, Policy, Requirement, RoleRouterLayer, Rule};
use tower::{Layer, ServiceExt};

/// The reference: a table over (pattern position, path position), filled from the ends,
/// as textbook wildcard matching does, once for `**` over segments and once for `*`
/// within a segment. Written apart from the layer's own matcher, and never exponential,
/// so that a pattern of many stars tests the layer, not the reference.
fn reference(pattern: &str, path: &str) -> bool {
    let split = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    fn wildcard(p: &[char], t: &[char]) -> bool {
        let mut table = vec![vec![false; t.len() + 1]; p.len() + 1];
        table[p.len()][t.len()] = true;
        for i in (0..p.len()).rev() {
            for j in (0..=t.len()).rev() {
                table[i][j] = if p[i] == '*' {
                    table[i + 1][j] || (j < t.len() && table[i][j + 1])
                } else {
                    j < t.len() && p[i] == t[j] && table[i + 1][j + 1]
                };
            }
        }
        table[0][0]
    }
    let (p, t) = (split(pattern), split(path));
    let segment = |seg: &str, text: &str| {
        if seg == "*" || (seg.starts_with('{') && seg.ends_with('}')) {
            !text.is_empty()
        } else {
            let pc: Vec<char> = seg.chars().collect();
            let tc: Vec<char> = text.chars().collect();
            wildcard(&pc, &tc)
        }
    };
    let mut table = vec![vec![false; t.len() + 1]; p.len() + 1];
    table[p.len()][t.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=t.len()).rev() {
            table[i][j] = if p[i] == "**" {
                table[i + 1][j] || (j < t.len() && table[i][j + 1])
            } else {
                j < t.len() && segment(&p[i], &t[j]) && table[i + 1][j + 1]
            };
        }
    }
    table[0][0]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((pattern, path)) = text.split_once('\0') else {
        return;
    };
    if pattern.len() > 40 || path.len() > 60 {
        return;
    }
    let Ok(compiled) = PathPattern::new(pattern) else {
        return;
    };
    if let Ok(normal) = normalize(path) {
        assert_eq!(
            compiled.matches(&normal),
            reference(pattern, &normal),
            "{pattern:?} against {normal:?}"
        );
    }
    let Ok(policy) = Policy::builder()
        .rule(Rule::new(pattern, Requirement::public()))
        .build()
    else {
        return;
    };
    let Ok(mut request) = Request::get("/").body(()) else {
        return;
    };
    let Ok(uri) = format!(
        "http://h{}",
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        }
    )
    .parse() else {
        return;
    };
    *request.uri_mut() = uri;
    let service = RoleRouterLayer::new(policy).layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(()))
    }));
    let request_path = request.uri().path().to_owned();
    let response = futures::executor::block_on(service.oneshot(request)).unwrap();
    if response.status() == StatusCode::OK {
        let normal = normalize(&request_path).expect("an allowed path normalizes");
        assert!(
            compiled.matches(&normal),
            "{request_path:?} allowed by {pattern:?}"
        );
    }
});
