//! Shared by the benchmarks: a no-op inner service and a way to drive a request through
//! a service to completion with as little harness cost as possible.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Empty;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis::core::{AuthMethod, Authentication, NetworkSet, PeerAddr, Principal};
use portcullis::role_router::{Policy, Requirement, Rule};
use tower::Service;

/// A socket peer inside the deny lists [`networks`] builds.
pub const DENIED_PEER: &str = "198.51.100.7:4000";

/// A socket peer outside them.
pub const ALLOWED_PEER: &str = "192.0.2.1:4000";

pub type NoopFn = fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>;

/// The floor: a service that answers 200 at once.
pub fn noop_service() -> tower::util::ServiceFn<NoopFn> {
    fn noop(_: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
        std::future::ready(Ok(Response::new(Empty::new())))
    }
    tower::service_fn(noop as NoopFn)
}

/// A request whose socket peer is `peer` (`"192.0.2.1:4000"`).
pub fn request(peer: &str) -> Request<()> {
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(peer.parse().unwrap()));
    request
}

/// Calls `service` and polls the future to completion with a no-op waker. Never
/// inlined, so that `valgrind --tool=callgrind --toggle-collect='*drive*'` can count
/// the instructions of exactly one request (see benches/README.md).
#[inline(never)]
pub fn drive<S, B>(service: &mut S, request: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = service.poll_ready(&mut cx);
    let mut future = pin!(service.call(request));
    loop {
        if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
            return result.unwrap();
        }
    }
}

/// `count` distinct networks, a realistic mix: mostly IPv4 /24 and /32, some IPv6 /48,
/// spread over the address space with a fixed seed so runs compare. One of them is
/// 198.51.100.0/24 (see [`DENIED_PEER`]); none covers 192.0.2.0/24, which the
/// allow-path benchmarks use.
pub fn networks(count: usize) -> NetworkSet {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = Vec::with_capacity(count);
    out.push("198.51.100.0/24".parse().unwrap());
    while out.len() < count {
        let r = next();
        let net = match r % 10 {
            0 => IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(u128::from(next()) << 64), 48)
                    .unwrap()
                    .trunc(),
            ),
            1..=5 => IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), 24)
                    .unwrap()
                    .trunc(),
            ),
            _ => IpNet::V4(Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), 32).unwrap()),
        };
        if !net.contains(&"192.0.2.1".parse::<std::net::IpAddr>().unwrap()) {
            out.push(net);
        }
    }
    NetworkSet::from_networks(out)
}

/// `count` rules the way real APIs grow: one group per service, each with a few routes
/// (literal, parameter, deep wildcard), and a catch-all at the end.
pub fn role_router_policy(count: usize) -> Policy {
    let mut builder = Policy::builder();
    for i in 0..count - 1 {
        let service = i / 4;
        let rule = match i % 4 {
            0 => Rule::new(
                format!("/v1/svc{service}/items"),
                Requirement::authenticated(),
            )
            .methods([Method::GET]),
            1 => Rule::new(
                format!("/v1/svc{service}/items/{{id}}"),
                Requirement::authenticated().any_role([format!("svc{service}-reader")]),
            ),
            2 => Rule::new(
                format!("/v1/svc{service}/items/**/attributes"),
                Requirement::authenticated().all_roles([format!("svc{service}-admin")]),
            ),
            _ => Rule::new(
                format!("/v1/svc{service}/filtered*Task"),
                Requirement::public(),
            ),
        };
        builder = builder.rule(rule);
    }
    builder
        .rule(Rule::new(
            "/**",
            Requirement::authenticated().any_role(["root"]),
        ))
        .build()
        .unwrap()
}

/// A GET of `path` by an API-key principal with `role`.
pub fn role_request(path: &str, role: &str) -> Request<()> {
    let mut request = Request::get(path).body(()).unwrap();
    let principal = Principal::builder("p", AuthMethod::ApiKey)
        .role(role)
        .build();
    Authentication::insert_into(request.extensions_mut(), principal).unwrap();
    request
}

/// `count` connectors (`connector-0` …), each registered with its own `DevPki` client
/// certificate, and those certificates.
pub fn connectors(
    pki: &portcullis::mtls_identity::DevPki,
    count: usize,
) -> (
    portcullis::mtls_identity::ConnectorRegistry,
    Vec<portcullis::mtls_identity::DevClient>,
) {
    use portcullis::mtls_identity::{Connector, ConnectorRegistry};
    let registry = ConnectorRegistry::new();
    let mut clients = Vec::with_capacity(count);
    for n in 0..count {
        let client = pki.client(&format!("connector-{n}")).unwrap();
        registry
            .insert(
                Connector::new(format!("connector-{n}"))
                    .role("connector")
                    .thumbprint(client.thumbprint()),
            )
            .unwrap();
        clients.push(client);
    }
    (registry, clients)
}

/// A PEM certificate's DER.
pub fn der(pem: &str) -> Bytes {
    use rustls_pki_types::pem::PemObject;
    Bytes::from(
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec(),
    )
}
