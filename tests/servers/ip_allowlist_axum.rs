//! The ip-allowlist layer in an axum app served with connect info.

use std::net::SocketAddr;

use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use portcullis::core::{
    grpc_response, ClientIp, ClientIpResolver, Denial, ForwardedHeader, NetworkSet, Rejection,
    RejectionContext,
};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};

use crate::client::{get as fetch, listener, serve_axum};

async fn whoami(Extension(client): Extension<ClientIp>) -> String {
    client.to_string()
}

/// Copies the `Denial` of a refused response into a header, as a host that wants to
/// know why a request was refused would.
async fn expose_denial(mut response: Response) -> Response {
    if let Some(denial) = response.extensions().get::<Denial>().copied() {
        let value = format!("{}/{}", denial.layer(), denial.code());
        response
            .headers_mut()
            .insert("x-denied-by", HeaderValue::from_str(&value).unwrap());
    }
    response
}

fn app(layer: IpAllowlistLayer) -> Router {
    Router::new()
        .route("/", get(whoami))
        .layer(layer)
        .layer(axum::middleware::map_response(expose_denial))
}

async fn serve(app: Router) -> SocketAddr {
    serve_axum(app).await
}

fn rules(allow: &str, deny: &str) -> IpRules {
    IpRules::new()
        .allow(NetworkSet::parse_list("allow", allow).unwrap())
        .deny(NetworkSet::parse_list("deny", deny).unwrap())
}

/// 127.0.0.10 and 127.0.0.11 are trusted proxies that write X-Forwarded-For.
fn behind_proxies(header: ForwardedHeader) -> ClientIpResolver {
    ClientIpResolver::new()
        .trust_proxies("127.0.0.10, 127.0.0.11".parse().unwrap())
        .unwrap()
        .forwarded_header(header)
}

#[tokio::test]
async fn allows_and_denies_by_socket_peer() {
    let addr = serve(app(IpAllowlistLayer::new(rules(
        "127.0.0.0/8",
        "127.0.0.66",
    ))))
    .await;

    let ok = fetch(addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "127.0.0.1");

    let denied = fetch(addr, "127.0.0.66", "/", &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.headers["content-type"], "application/problem+json");
    assert_eq!(denied.headers["x-denied-by"], "ip-allowlist/ip_denied");
    assert_eq!(denied.code().as_deref(), Some("ip_denied"));
    let problem: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(problem["status"], 403);
    assert_eq!(problem["type"], "urn:portcullis:problem:ip_denied");
}

#[tokio::test]
async fn allow_list_refuses_everything_else() {
    let addr = serve(app(IpAllowlistLayer::new(rules("127.0.0.1", "")))).await;
    assert_eq!(
        fetch(addr, "127.0.0.1", "/", &[]).await.status,
        StatusCode::OK
    );
    let other = fetch(addr, "127.0.0.2", "/", &[]).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.code().as_deref(), Some("ip_denied"));
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let layer = IpAllowlistLayer::new(rules("", "127.0.0.66"))
        .client_ip(behind_proxies(ForwardedHeader::XForwardedFor));
    let addr = serve(app(layer)).await;

    // A denied client claiming to be somebody else is still denied.
    let spoof = fetch(addr, "127.0.0.66", "/", &[("x-forwarded-for", "127.0.0.1")]).await;
    assert_eq!(spoof.status, StatusCode::FORBIDDEN);
    // An allowed client cannot be framed by a header it did not get from a proxy.
    let framed = fetch(addr, "127.0.0.5", "/", &[("x-forwarded-for", "127.0.0.66")]).await;
    assert_eq!(framed.status, StatusCode::OK);
    assert_eq!(framed.body, "127.0.0.5");
    // Garbage in the header of an untrusted peer is not read at all.
    let garbage = fetch(addr, "127.0.0.5", "/", &[("x-forwarded-for", ",,,")]).await;
    assert_eq!(garbage.status, StatusCode::OK);
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_rightmost_untrusted_wins() {
    let layer = IpAllowlistLayer::new(rules("", "127.0.0.66"))
        .client_ip(behind_proxies(ForwardedHeader::XForwardedFor));
    let addr = serve(app(layer)).await;

    let via = |xff: &'static str| async move {
        fetch(addr, "127.0.0.10", "/", &[("x-forwarded-for", xff)]).await
    };

    // The proxy names a denied client.
    assert_eq!(via("127.0.0.66").await.status, StatusCode::FORBIDDEN);
    // The client prepended an allowed address to hide: the rightmost untrusted hop wins.
    assert_eq!(
        via("127.0.0.7, 127.0.0.66").await.status,
        StatusCode::FORBIDDEN
    );
    // Trusted hops are skipped, wherever they are.
    assert_eq!(
        via("127.0.0.66, 127.0.0.11").await.status,
        StatusCode::FORBIDDEN
    );
    // An allowed client that prepended a denied address is itself.
    let allowed = via("127.0.0.66, 127.0.0.7, 127.0.0.11").await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.body, "127.0.0.7");
    // Several header lines are one chain.
    let lines = fetch(
        addr,
        "127.0.0.10",
        "/",
        &[
            ("x-forwarded-for", "127.0.0.66"),
            ("x-forwarded-for", "127.0.0.11"),
        ],
    )
    .await;
    assert_eq!(lines.status, StatusCode::FORBIDDEN);
    // The proxy itself, with no header, is the client.
    let direct = fetch(addr, "127.0.0.10", "/", &[]).await;
    assert_eq!(direct.body, "127.0.0.10");
}

#[tokio::test]
async fn malformed_or_undisclosed_forwarding_from_a_trusted_proxy() {
    let layer = IpAllowlistLayer::new(rules("", "127.0.0.66"))
        .client_ip(behind_proxies(ForwardedHeader::Forwarded));
    let addr = serve(app(layer)).await;

    let ok = fetch(
        addr,
        "127.0.0.10",
        "/",
        &[("forwarded", "for=127.0.0.8;proto=http")],
    )
    .await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "127.0.0.8"));
    let denied = fetch(
        addr,
        "127.0.0.10",
        "/",
        &[("forwarded", r#"for="127.0.0.66:5000""#)],
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    let malformed = fetch(addr, "127.0.0.10", "/", &[("forwarded", "for=[::1]")]).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.code().as_deref(),
        Some("malformed_forwarded_header")
    );
    assert_eq!(
        malformed.headers["x-denied-by"],
        "ip-allowlist/malformed_forwarded_header"
    );

    let hidden = fetch(addr, "127.0.0.10", "/", &[("forwarded", "for=_hidden")]).await;
    assert_eq!(hidden.status, StatusCode::FORBIDDEN);
    assert_eq!(hidden.code().as_deref(), Some("client_ip_undisclosed"));
}

#[tokio::test]
async fn without_connect_info_requests_are_refused_not_passed() {
    let (listener, addr) = listener().await;
    let app = app(IpAllowlistLayer::new(IpRules::new()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let reply = fetch(addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.code().as_deref(), Some("client_ip_unavailable"));
}

#[tokio::test]
async fn rules_swap_on_a_running_server() {
    let layer = IpAllowlistLayer::new(IpRules::new());
    let handle = layer.handle();
    let addr = serve(app(layer)).await;
    assert_eq!(
        fetch(addr, "127.0.0.9", "/", &[]).await.status,
        StatusCode::OK
    );
    handle.replace(rules("", "127.0.0.9"));
    assert_eq!(
        fetch(addr, "127.0.0.9", "/", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        fetch(addr, "127.0.0.1", "/", &[]).await.status,
        StatusCode::OK
    );
    handle.replace(IpRules::new());
    assert_eq!(
        fetch(addr, "127.0.0.9", "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn custom_renderer_shapes_the_error_body() {
    let layer = IpAllowlistLayer::new(rules("", "127.0.0.66")).renderer(
        |rejection: &Rejection, request: &RejectionContext<'_>| {
            if request.is_grpc() {
                return grpc_response(rejection, request);
            }
            let body = serde_json::json!({ "success": false, "message": rejection.detail() });
            let mut response = http::Response::new(Bytes::from(body.to_string()));
            *response.status_mut() = rejection.status();
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        },
    );
    let addr = serve(app(layer)).await;
    let reply = fetch(addr, "127.0.0.66", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-denied-by"], "ip-allowlist/ip_denied");
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "success": false, "message": "requests from this address are not allowed" })
    );
}

#[tokio::test]
async fn blocklist_of_real_size_from_a_file() {
    // 100,000 /32s spread over 10.0.0.0/8, plus the one the test connects from.
    let dir = std::env::temp_dir().join(format!("portcullis-blocklist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blocklist.txt");
    let mut text = String::from("# generated\n127.0.0.66\n");
    for i in 0..100_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8);
        text.push_str(&format!("{ip}\n"));
    }
    std::fs::write(&path, text).unwrap();
    let deny = NetworkSet::from_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let addr = serve(app(IpAllowlistLayer::new(IpRules::new().deny(deny)))).await;
    assert_eq!(
        fetch(addr, "127.0.0.66", "/", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        fetch(addr, "127.0.0.65", "/", &[]).await.status,
        StatusCode::OK
    );
}

/// A layer placed on a single route through `route_layer` works the same.
#[tokio::test]
async fn route_layer_guards_one_route() {
    let app = Router::new()
        .route("/admin", get(|| async { "admin" }))
        .route_layer(IpAllowlistLayer::new(rules("127.0.0.1", "")))
        .route("/public", get(|| async { "public" }));
    let addr = serve(app).await;
    assert_eq!(
        fetch(addr, "127.0.0.2", "/admin", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        fetch(addr, "127.0.0.1", "/admin", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        fetch(addr, "127.0.0.2", "/public", &[]).await.status,
        StatusCode::OK
    );
}

/// The README's order (audit outermost with its default resolver, then an allow-list
/// whose resolver trusts the load balancer), and every other order of audit, allow-list
/// and a per-address rate limit with the default resolver: a denied client behind the
/// trusted proxy is refused in all six, an allowed one passes, and the audit event names
/// the address the allow-list judged. An address resolved under one trust configuration
/// is never acted on by a layer configured with another.
#[tokio::test]
async fn a_denied_client_behind_a_trusted_proxy_is_refused_in_every_order() {
    use portcullis::audit::{AuditLayer, MemorySink};
    use portcullis::rate_limit::{Quota, RateLimitLayer};

    let orders = [
        ["audit", "allow", "limit"],
        ["audit", "limit", "allow"],
        ["allow", "audit", "limit"],
        ["allow", "limit", "audit"],
        ["limit", "audit", "allow"],
        ["limit", "allow", "audit"],
    ];
    for order in orders {
        let sink = MemorySink::new();
        let audit = AuditLayer::new().tracing_event(false).sink(sink.clone());
        let allow = IpAllowlistLayer::new(rules("0.0.0.0/0\n::/0", "203.0.113.0/24"))
            .client_ip(behind_proxies(ForwardedHeader::XForwardedFor));
        let limit = RateLimitLayer::builder()
            .quota(Quota::new("per-ip", "1000 per 1h".parse().unwrap()))
            .build()
            .unwrap();
        // `Router::layer` wraps: the last one added is the outermost.
        let mut router = Router::new().route("/", get(whoami));
        for layer in order.iter().rev() {
            router = match *layer {
                "audit" => router.layer(audit.clone()),
                "allow" => router.layer(allow.clone()),
                _ => router.layer(limit.clone()),
            };
        }
        let server = serve(router.layer(axum::middleware::map_response(expose_denial))).await;

        let denied = fetch(
            server,
            "127.0.0.10",
            "/",
            &[("x-forwarded-for", "203.0.113.9")],
        )
        .await;
        assert_eq!(
            denied.status,
            StatusCode::FORBIDDEN,
            "{order:?}: {}",
            denied.body
        );
        assert_eq!(denied.code().as_deref(), Some("ip_denied"), "{order:?}");

        let allowed = fetch(
            server,
            "127.0.0.10",
            "/",
            &[("x-forwarded-for", "198.51.100.7")],
        )
        .await;
        assert_eq!(allowed.status, StatusCode::OK, "{order:?}");

        // The audit event names the address of the last layer, from the audit layer
        // inward, that resolved one; a layer with the audit's own configuration reuses.
        let position = |name: &str| order.iter().position(|l| *l == name).unwrap();
        let trusting = |layer: &str| layer == "allow";
        let mut state: Option<bool> = None;
        let mut recorded = None;
        for layer in &order[..] {
            if state != Some(trusting(layer)) {
                // The rate limit (no trusted proxies) resolves without storing.
                if *layer != "limit" {
                    state = Some(trusting(layer));
                }
                if position(layer) >= position("audit") {
                    recorded = Some(if trusting(layer) {
                        "198.51.100.7"
                    } else {
                        "127.0.0.10"
                    });
                }
            }
            if *layer == "audit" && recorded.is_none() {
                recorded = Some(if state == Some(true) {
                    "198.51.100.7"
                } else {
                    "127.0.0.10"
                });
            }
        }
        let events = sink.events();
        let audit_sees_refusal = position("audit") < position("allow");
        assert_eq!(
            events.len(),
            if audit_sees_refusal { 2 } else { 1 },
            "{order:?}"
        );
        if audit_sees_refusal {
            assert_eq!(
                events[0]["client_ip"], "203.0.113.9",
                "{order:?}: the address judged"
            );
            assert_eq!(events[0]["refused_by"], "ip-allowlist", "{order:?}");
        }
        let allowed_event = events.last().unwrap();
        assert_eq!(allowed_event["client_ip"], recorded.unwrap(), "{order:?}");
    }
}

/// Equal trust configurations built separately are one configuration: the address is
/// resolved once and reused.
#[test]
fn equal_resolver_configurations_are_the_same_trust() {
    let a = behind_proxies(ForwardedHeader::XForwardedFor);
    let b = ClientIpResolver::new()
        .forwarded_header(ForwardedHeader::XForwardedFor)
        .trust_proxies("127.0.0.11/32, 127.0.0.10/32".parse().unwrap())
        .unwrap();
    assert!(a.same_trust_as(&b));
    assert!(!a.same_trust_as(&ClientIpResolver::new()));
    assert!(!a.same_trust_as(&behind_proxies(ForwardedHeader::Forwarded)));
}

/// Forwarding chains are read up to a limit (64 hops over all lines by default), and a
/// longer one is a 400 whatever follows the limit; addresses that cannot be a client
/// (unspecified, broadcast, multicast) named by a trusted proxy are undisclosed (403),
/// never matched against the lists.
#[tokio::test]
async fn long_chains_and_impossible_client_addresses_are_refused() {
    let allow_all = || rules("0.0.0.0/0\n::/0", "203.0.113.0/24");
    let serve_with = |resolver: ClientIpResolver| {
        serve(app(IpAllowlistLayer::new(allow_all()).client_ip(resolver)))
    };
    let xff = serve_with(behind_proxies(ForwardedHeader::XForwardedFor)).await;
    let hops = |n: usize| -> String {
        (0..n)
            .map(|i| format!("198.51.100.{}", i % 250 + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let at_limit = fetch(xff, "127.0.0.10", "/", &[("x-forwarded-for", &hops(64))]).await;
    assert_eq!(at_limit.status, StatusCode::OK, "{}", at_limit.body);
    for lines in [
        vec![hops(65)],
        vec![hops(40), hops(25)],
        vec![hops(64), "garbage!!".to_owned()],
    ] {
        let headers: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| ("x-forwarded-for", l.as_str()))
            .collect();
        let reply = fetch(xff, "127.0.0.10", "/", &headers).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert_eq!(reply.code().as_deref(), Some("malformed_forwarded_header"));
    }
    let short = serve_with(
        behind_proxies(ForwardedHeader::XForwardedFor)
            .max_forwarded_elements(std::num::NonZeroUsize::new(2).unwrap()),
    )
    .await;
    let reply = fetch(short, "127.0.0.10", "/", &[("x-forwarded-for", &hops(3))]).await;
    assert_eq!(reply.code().as_deref(), Some("malformed_forwarded_header"));
    let forwarded = serve_with(behind_proxies(ForwardedHeader::Forwarded)).await;
    let elements: Vec<String> = (0..65)
        .map(|i| format!("for=198.51.100.{}", i % 250 + 1))
        .collect();
    let reply = fetch(
        forwarded,
        "127.0.0.10",
        "/",
        &[("forwarded", &elements.join(", "))],
    )
    .await;
    assert_eq!(reply.code().as_deref(), Some("malformed_forwarded_header"));

    for impossible in [
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "::",
        "ff02::1",
        "::ffff:0.0.0.0",
        "::ffff:224.0.0.1",
    ] {
        let chain = format!("{impossible}, 127.0.0.11");
        let reply = fetch(xff, "127.0.0.10", "/", &[("x-forwarded-for", &chain)]).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{impossible}");
        assert_eq!(
            reply.code().as_deref(),
            Some("client_ip_undisclosed"),
            "{impossible}"
        );
    }
    let reply = fetch(
        forwarded,
        "127.0.0.10",
        "/",
        &[("forwarded", "for=\"[ff02::1]\"")],
    )
    .await;
    assert_eq!(reply.code().as_deref(), Some("client_ip_undisclosed"));
    let real_ip = serve_with(behind_proxies(ForwardedHeader::XRealIp)).await;
    for impossible in ["0.0.0.0", "255.255.255.255", "ff02::1"] {
        let reply = fetch(real_ip, "127.0.0.10", "/", &[("x-real-ip", impossible)]).await;
        assert_eq!(
            reply.code().as_deref(),
            Some("client_ip_undisclosed"),
            "{impossible}"
        );
    }
}
