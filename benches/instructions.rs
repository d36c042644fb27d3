//! Instruction counts per request, for machines where wall-clock timings are too noisy
//! to compare (shared CI machines, virtual machines with busy neighbours).
//!
//! `benches/instructions.sh` runs this binary under `valgrind --tool=callgrind`, which
//! counts the instructions executed inside `drive` for one scenario, and divides by the
//! number of requests. The counts are repeatable for the same binary and inputs,
//! whatever else the machine is doing.
//!
//! Run alone (`cargo bench --bench instructions`) it runs every scenario once, as a
//! smoke test.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::core::{ClientIp, ClientIpResolver, ForwardedHeader};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::role_router::RoleRouterLayer;
use tower::Layer;

use common::{
    drive, networks, noop_service, request, role_request, role_router_policy, ALLOWED_PEER,
    DENIED_PEER,
};

const SCENARIOS: &[&str] = &[
    "floor",
    "allow/10",
    "allow/100000",
    "allow_resolved/100000",
    "reject/100000",
    "allow_xff_5_hops/100000",
    "role_router_floor",
    "role_router_allow/10",
    "role_router_allow/1000",
    "role_router_deny/1000",
    "api_key_floor",
    "api_key_allow/1",
    "api_key_allow/10000",
    "api_key_reject_malformed/1",
    "api_key_reject_unknown/1",
    "audit_floor",
    "audit_disabled",
    "audit_memory",
    "rate_limit_floor",
    "rate_limit_allow/1",
    "rate_limit_allow/10000",
    "rate_limit_allow_resolved/1",
    "rate_limit_reject/1",
    "rate_limit_peer_floor/1",
    "rate_limit_peer_portcullis/1",
    "rate_limit_peer_tower_governor/1",
    "jwt_floor",
    "jwt_allow_cached",
    "jwt_allow_uncached",
    "jwt_reject_malformed",
    "mtls_floor",
    "mtls_allow_cached",
    "mtls_allow_uncached",
    "mtls_reject_unknown",
];

type AxumNoop = fn(
    http::Request<()>,
) -> std::future::Ready<
    Result<http::Response<axum::body::Body>, std::convert::Infallible>,
>;

/// The peer comparison: ours and `tower_governor` with the same quota, over the inner
/// service `tower_governor` needs (its refusals are axum bodies).
fn run_rate_limit_peer(kind: &str, iterations: u64) {
    use portcullis::rate_limit::{Quota, RateLimitLayer};
    fn noop(
        _: http::Request<()>,
    ) -> std::future::Ready<Result<http::Response<axum::body::Body>, std::convert::Infallible>>
    {
        std::future::ready(Ok(http::Response::new(axum::body::Body::empty())))
    }
    let inner = || tower::service_fn(noop as AxumNoop);
    let mut floor = inner();
    let mut ours = RateLimitLayer::builder()
        .quota(Quota::new("per-ip", "1000000 per 1ms".parse().unwrap()).burst(u32::MAX))
        .sweep_every(None)
        .build()
        .unwrap()
        .layer(inner());
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    let mut theirs = tower_governor::GovernorLayer::new(config).layer(inner());
    let make = || {
        let mut req = request("10.0.0.0:4000");
        let addr: std::net::SocketAddr = "10.0.0.0:4000".parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        req
    };
    for _ in 0..iterations {
        match kind {
            "rate_limit_peer_floor" => black_box(drive(&mut floor, make())),
            "rate_limit_peer_portcullis" => {
                black_box(drive(&mut ours, make()).map(|_| ())).map(|_| axum::body::Body::empty())
            }
            _ => black_box(drive(&mut theirs, make())),
        };
    }
}

/// Rate-limit scenarios: a per-IP quota no request exhausts (or, to reject, one that is
/// spent), with `size` client addresses tracked.
fn run_rate_limit(kind: &str, size: usize, iterations: u64) {
    use portcullis::rate_limit::{Quota, RateLimitLayer};
    let quota = match kind {
        "rate_limit_reject" => Quota::new("per-ip", "1 per 1h".parse().unwrap()),
        _ => Quota::new("per-ip", "1000000 per 1ms".parse().unwrap()).burst(u32::MAX),
    };
    let layer = RateLimitLayer::builder()
        .quota(quota)
        .sweep_every(None)
        .build()
        .unwrap();
    let mut floor = noop_service();
    let mut service = layer.layer(noop_service());
    // Not through `drive`: the script counts only what `drive` runs.
    for i in 0..size.max(1) {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
        futures::executor::block_on(tower::ServiceExt::oneshot(
            &mut service,
            request(&format!("{ip}:4000")),
        ))
        .unwrap();
    }
    for _ in 0..iterations {
        let mut req = request("10.0.0.0:4000");
        if kind == "rate_limit_allow_resolved" {
            req.extensions_mut()
                .insert(ClientIp::new("10.0.0.0".parse().unwrap()));
        }
        if kind == "rate_limit_floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

/// Audit scenarios: the request of `benches/audit.rs`, no subscriber installed.
fn run_audit(kind: &str, iterations: u64) {
    let memory = portcullis::audit::MemorySink::new();
    let mut floor = noop_service();
    let mut disabled = portcullis::audit::AuditLayer::new().layer(noop_service());
    let mut to_memory = portcullis::audit::AuditLayer::new()
        .sink(memory.clone())
        .layer(noop_service());
    for i in 0..iterations {
        let mut req = request(ALLOWED_PEER);
        *req.uri_mut() = "/v1/key/k1/attributes?page=2".parse().unwrap();
        req.headers_mut()
            .insert("user-agent", "client-sdk/1.4 (linux)".parse().unwrap());
        req.headers_mut()
            .insert("x-request-id", "4bf92f3577b34da6".parse().unwrap());
        match kind {
            "audit_floor" => black_box(drive(&mut floor, req)),
            "audit_disabled" => black_box(drive(&mut disabled, req)),
            _ => black_box(drive(&mut to_memory, req)),
        };
        if i % 1024 == 0 {
            memory.clear();
        }
    }
}

/// Api-key scenarios: a store of `size` keys, the request carrying the middle one.
fn run_api_key(kind: &str, size: usize, iterations: u64) {
    let prefix = KeyPrefix::default();
    let keys: Vec<GeneratedKey> = (0..size.max(1))
        .map(|i| GeneratedKey::with_id(&prefix, &format!("key-{i}")).unwrap())
        .collect();
    let store = MemoryKeyStore::from_records(keys.iter().map(|key| {
        KeyRecord::new(key.id(), "owner", key.digest())
            .unwrap()
            .roles(["reader"])
    }))
    .unwrap();
    let unknown = GeneratedKey::generate(&prefix).unwrap();
    let secret = match kind {
        "api_key_reject_malformed" => keys[0].expose_secret().replace("pck_", "pck_x"),
        "api_key_reject_unknown" => unknown.expose_secret().to_owned(),
        _ => keys[keys.len() / 2].expose_secret().to_owned(),
    };
    let mut floor = noop_service();
    let mut service = ApiKeyLayer::new(std::sync::Arc::new(store)).layer(noop_service());
    for _ in 0..iterations {
        let mut req = request(ALLOWED_PEER);
        req.headers_mut()
            .insert("x-api-key", secret.parse().unwrap());
        if kind == "api_key_floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

/// JWT scenarios: an HS256 token of `benches/jwt.rs`, cached or not.
fn run_jwt(kind: &str, iterations: u64) {
    use portcullis::core::{AuthMethod, Principal};
    use portcullis::jwt::jsonwebtoken::Algorithm;
    use portcullis::jwt::{JwtLayer, SigningKey, TokenIssuer};
    let key = SigningKey::generate(Algorithm::HS256)
        .unwrap()
        .with_kid("k1");
    let issuer = TokenIssuer::new(key, "https://auth.example", "key-service").unwrap();
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["operator", "auditor"])
        .scopes(["keys:read", "keys:sign"])
        .build();
    let token = issuer.issue(&principal, None).unwrap().expose().to_owned();
    let token = match kind {
        "jwt_reject_malformed" => "not-a-token".to_owned(),
        _ => token,
    };
    let layer = JwtLayer::builder()
        .issuer(issuer.validating_issuer())
        .token_cache(if kind == "jwt_allow_uncached" {
            0
        } else {
            10_000
        })
        .build()
        .unwrap();
    let mut floor = noop_service();
    let mut service = layer.layer(noop_service());
    let make = || {
        let mut req = request(ALLOWED_PEER);
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    // The first request fills the cache, outside the counted loop's steady state.
    black_box(drive(&mut service, make()));
    for _ in 0..iterations {
        let req = make();
        if kind == "jwt_floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

/// Client-certificate scenarios: a `DevPki` client certificate on the request's
/// `TlsPeer`, registered (or not) among 1,000 connectors.
fn run_mtls(kind: &str, iterations: u64) {
    use portcullis::core::TlsPeer;
    use portcullis::mtls_identity::{DevPki, MtlsIdentityLayer};
    let pki = DevPki::generate(&["localhost"]).unwrap();
    let (registry, clients) = common::connectors(&pki, 1_000);
    let client = match kind {
        "mtls_reject_unknown" => pki.client("stranger").unwrap(),
        _ => clients[7].clone(),
    };
    let chain: std::sync::Arc<[bytes::Bytes]> =
        std::sync::Arc::from(vec![common::der(client.cert_pem())]);
    let layer = MtlsIdentityLayer::new(registry).parse_cache(if kind == "mtls_allow_uncached" {
        0
    } else {
        10_000
    });
    let mut floor = noop_service();
    let mut service = layer.layer(noop_service());
    let make = || {
        let mut req = request(ALLOWED_PEER);
        req.extensions_mut().insert(TlsPeer {
            addr: ALLOWED_PEER.parse().unwrap(),
            chain: Some(chain.clone()),
        });
        req
    };
    black_box(drive(&mut service, make()));
    for _ in 0..iterations {
        let req = make();
        if kind == "mtls_floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

/// Role-router scenarios: the policies of `benches/role_router.rs`.
fn run_role_router(kind: &str, size: usize, iterations: u64) {
    let mut floor = noop_service();
    let mut service = RoleRouterLayer::new(role_router_policy(size.max(2))).layer(noop_service());
    let middle = size / 8;
    let path = format!("/v1/svc{middle}/items/k1");
    let reader = format!("svc{middle}-reader");
    for _ in 0..iterations {
        let role = if kind == "role_router_deny" {
            "nobody"
        } else {
            reader.as_str()
        };
        let req = role_request(&path, role);
        if kind == "role_router_floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

fn run(scenario: &str, iterations: u64) {
    let (kind, size) = match scenario.split_once('/') {
        Some((kind, size)) => (kind, size.parse::<usize>().unwrap()),
        None => (scenario, 0),
    };
    if kind.starts_with("role_router") {
        return run_role_router(kind, size, iterations);
    }
    if kind.starts_with("jwt") {
        return run_jwt(kind, iterations);
    }
    if kind.starts_with("mtls") {
        return run_mtls(kind, iterations);
    }
    if kind.starts_with("audit") {
        return run_audit(kind, iterations);
    }
    if kind.starts_with("api_key") {
        return run_api_key(kind, size, iterations);
    }
    if kind.starts_with("rate_limit_peer") {
        return run_rate_limit_peer(kind, iterations);
    }
    if kind.starts_with("rate_limit") {
        return run_rate_limit(kind, size, iterations);
    }
    let deny = networks(size.max(1));
    let layer = IpAllowlistLayer::new(IpRules::new().deny(deny)).client_ip(
        ClientIpResolver::new()
            .trust_proxies("10.0.0.0/8".parse().unwrap())
            .unwrap()
            .forwarded_header(ForwardedHeader::XForwardedFor),
    );
    let mut floor = noop_service();
    let mut service = layer.layer(noop_service());
    // Requests are built outside `drive`, so only the layer's work is counted.
    let make = || match kind {
        "floor" | "allow" => request(ALLOWED_PEER),
        "allow_resolved" => {
            let mut req = request(ALLOWED_PEER);
            req.extensions_mut()
                .insert(ClientIp::new("192.0.2.1".parse().unwrap()));
            req
        }
        "reject" => request(DENIED_PEER),
        "allow_xff_5_hops" => {
            let mut req = request("10.0.0.1:4000");
            req.headers_mut().insert(
                "x-forwarded-for",
                "192.0.2.1, 10.0.0.5, 10.0.0.4, 10.0.0.3, 10.0.0.2"
                    .parse()
                    .unwrap(),
            );
            req
        }
        other => panic!("unknown scenario {other}; known: {SCENARIOS:?}"),
    };
    for _ in 0..iterations {
        let req = make();
        if kind == "floor" {
            black_box(drive(&mut floor, req));
        } else {
            black_box(drive(&mut service, req));
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the script passes a scenario and a count.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [scenario, iterations] => run(scenario, iterations.parse().unwrap()),
        _ => {
            for scenario in SCENARIOS {
                run(scenario, 1);
            }
            println!(
                "instructions: ran {} scenarios once; see benches/instructions.sh",
                SCENARIOS.len()
            );
        }
    }
}
