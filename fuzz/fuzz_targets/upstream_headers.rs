//! A client's request head through the reverse proxy's preparation
//! (`portcullis_upstream::Upstream`): what it would send upstream.
//!
//! Input: the first byte chooses the peer (bit 0: a trusted proxy on loopback, else a
//! stranger; bit 1: IPv6); the rest is header lines `name: value`, one per `\n`.
//!
//! Invariants: no panic; a request with `Upgrade` is refused, every other one goes;
//! what goes carries no hop-by-hop field, none that a `Connection` line named (the ones
//! the proxy writes itself aside), `TE` only as `trailers`; exactly one line each of
//! `X-Forwarded-For`, `Forwarded` and `Via`, ending with this hop (the peer's address,
//! `for=` it, `portcullis`), and from a stranger nothing else; `Host` the upstream's.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{ClientIpResolver, NetworkSet};
use portcullis_upstream::Upstream;

const AUTHORITY: &str = "127.0.0.1:9";

/// The proxy trusting loopback peers as proxies.
fn upstream() -> &'static Upstream {
    static UPSTREAM: OnceLock<Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        let loopback = NetworkSet::from_networks([
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        Upstream::builder(format!("http://{AUTHORITY}"))
            .client_ip(ClientIpResolver::new().trust_proxies(loopback).unwrap())
            .build()
            .unwrap()
    })
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names the proxy writes itself, whatever the client's `Connection` said.
const WRITTEN: [&str; 6] = [
    "host",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let trusted = flags & 1 == 1;
    let ip: IpAddr = match (trusted, flags & 2 == 2) {
        (true, false) => "127.0.0.9".parse().unwrap(),
        (true, true) => "::1".parse().unwrap(),
        (false, false) => "203.0.113.5".parse().unwrap(),
        (false, true) => "2001:db8::5".parse().unwrap(),
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.contains_key("upgrade");
    let sent = portcullis_upstream::fuzzing::prepare(
        upstream(),
        headers,
        SocketAddr::new(ip, 4242),
    );
    let sent = match (sent, upgrade) {
        (Err(code), true) => {
            assert_eq!(code, "upgrade_not_supported");
            return;
        }
        (Ok(_), true) => panic!("an upgrade went upstream"),
        (Err(code), false) => panic!("refused with {code}"),
        (Ok(sent), false) => sent,
    };
    for name in HOP_BY_HOP {
        assert!(!sent.contains_key(name), "{name} went upstream");
    }
    for name in &named {
        if !WRITTEN.contains(&name.as_str()) {
            assert!(!sent.contains_key(name), "{name}, named by Connection, went upstream");
        }
    }
    for te in sent.get_all("te") {
        assert!(te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
    }
    let one = |name: &str| -> String {
        let lines: Vec<&HeaderValue> = sent.get_all(name).iter().collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        lines[0].to_str().unwrap().to_owned()
    };
    let address = ip.to_string();
    let forwarded_for = one("x-forwarded-for");
    assert!(forwarded_for.ends_with(&address), "{forwarded_for}");
    if !trusted {
        assert_eq!(forwarded_for, address);
    }
    let forwarded = one("forwarded");
    let node = match ip {
        IpAddr::V4(_) => address.clone(),
        IpAddr::V6(_) => format!("\"[{address}]\""),
    };
    let element = format!("for={node};proto=http");
    let last = forwarded.rsplit(", ").next().unwrap();
    assert!(last.starts_with(&element), "{forwarded}");
    if !trusted {
        assert!(forwarded.starts_with(&element), "{forwarded}");
    }
    let via = one("via");
    assert!(via.ends_with("1.1 portcullis"), "{via}");
    assert_eq!(one("host"), AUTHORITY);
    assert_eq!(one("x-forwarded-proto"), "http");
});
