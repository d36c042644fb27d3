//! A stand-in for the authentication layers (mTLS identity, API key, JWT) that are not
//! built yet: it turns an `x-test-principals` header such as
//! `certificate:signer;jwt:signer,keys:read` into the request's `Authentication`, as
//! those layers will. Only the role router's tests use it.

use http::Request;
use portcullis::core::{AuthMethod, Authentication, Principal};

pub fn authenticate<B>(mut request: Request<B>) -> Request<B> {
    let Some(value) = request.headers().get("x-test-principals").cloned() else {
        return request;
    };
    for entry in value.to_str().unwrap().split(';').filter(|e| !e.is_empty()) {
        let (method, roles) = entry.split_once(':').unwrap_or((entry, ""));
        let method: AuthMethod = method.parse().unwrap();
        let principal = Principal::builder(format!("{method}-principal"), method)
            .roles(roles.split(',').filter(|r| !r.is_empty()))
            .build();
        Authentication::insert_into(request.extensions_mut(), principal).unwrap();
    }
    request
}
