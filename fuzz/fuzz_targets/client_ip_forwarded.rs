//! Forwarding headers through `ClientIpResolver` from a trusted proxy.
//!
//! First byte: which header (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`); the rest is
//! the header's lines, separated by `\n`.
//!
//! Invariants: no panic; a resolved address is the peer or an address the header named
//! (found by an independent tokenizer); never unspecified, broadcast or multicast; a
//! chain of more than 64 hops is never resolved.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use portcullis_core::{ClientIpResolver, ForwardedHeader, PeerAddr};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let header = match which % 3 {
        0 => ForwardedHeader::Forwarded,
        1 => ForwardedHeader::XForwardedFor,
        _ => ForwardedHeader::XRealIp,
    };
    let resolver = ClientIpResolver::new()
        .trust_proxies("10.0.0.0/8, fd00::/8".parse().unwrap())
        .unwrap()
        .forwarded_header(header);
    let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let mut request = Request::new(());
    request.extensions_mut().insert(PeerAddr(peer));
    let mut named: Vec<IpAddr> = Vec::new();
    let mut separators = 0usize;
    for line in rest.split(|b| *b == b'\n') {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            return;
        };
        // Every token that reads as an address, with or without a port or brackets.
        let text = String::from_utf8_lossy(line);
        separators += text.matches(',').count() + 1;
        for token in text.split(|c: char| ",;= \"\t[]".contains(c)) {
            let token = token.trim();
            let candidates = [Some(token), token.rsplit_once(':').map(|(host, _)| host)];
            for candidate in candidates.into_iter().flatten() {
                if let Ok(ip) = candidate.parse::<IpAddr>() {
                    named.push(ip.to_canonical());
                }
            }
        }
        request.headers_mut().append(header.header_name(), value);
    }
    let Ok(client) = resolver.resolve(request.extensions(), request.headers()) else {
        return;
    };
    let ip = client.ip();
    assert!(
        ip == peer.ip() || named.contains(&ip),
        "resolved {ip}, which the header did not name"
    );
    if ip != peer.ip() {
        match ip {
            IpAddr::V4(v4) => {
                assert!(!v4.is_unspecified() && !v4.is_broadcast() && !v4.is_multicast())
            }
            IpAddr::V6(v6) => assert!(!v6.is_unspecified() && !v6.is_multicast()),
        }
        // More hops than the default limit is never resolved (commas count an upper
        // bound of hops for X-Forwarded-For; a Forwarded quoted value may hold commas).
        if header == ForwardedHeader::XForwardedFor {
            assert!(separators <= 64, "{separators} hops resolved");
        }
    }
});
