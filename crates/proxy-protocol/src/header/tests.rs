use super::*;
use proptest::prelude::*;

/// A hand-made v2 header: `version_command` (0x21 proxy, 0x20 local),
/// `family_protocol` (0x11 TCP over IPv4, 0x21 TCP over IPv6, …), the address block
/// and TLVs.
pub(crate) fn v2(
    version_command: u8,
    family_protocol: u8,
    addresses: &[u8],
    tlvs: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut body = addresses.to_vec();
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family_protocol);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// 203.0.113.7:51000 → 192.0.2.1:443.
pub(crate) const IPV4: [u8; 12] = [203, 0, 113, 7, 192, 0, 2, 1, 0xC7, 0x38, 0x01, 0xBB];

fn ipv6() -> Vec<u8> {
    let mut out = "2001:db8::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    out.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    out.extend_from_slice(&[0xC7, 0x38, 0x01, 0xBB]);
    out
}

fn parse(bytes: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    ProxyHeader::parse(bytes, DEFAULT_MAX_HEADER_BYTES)
}

fn whole(bytes: &[u8]) -> ProxyHeader {
    let (header, length) = parse(bytes).unwrap().expect("a whole header");
    assert_eq!(length, bytes.len());
    header
}

#[test]
fn v1_headers_name_the_client() {
    let header = whole(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n");
    assert_eq!(
        (header.version, header.command),
        (Version::V1, Command::Proxy)
    );
    assert_eq!(header.source, Some("203.0.113.7:51000".parse().unwrap()));
    assert_eq!(header.destination, Some("192.0.2.1:443".parse().unwrap()));
    let header = whole(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n");
    assert_eq!(header.source, Some("[2001:db8::7]:51000".parse().unwrap()));
    // UNKNOWN keeps the socket peer, whatever follows it on the line.
    for unknown in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    ] {
        let header = whole(unknown);
        assert_eq!((header.command, header.source), (Command::Local, None));
        let peer = "10.0.0.5:1234".parse().unwrap();
        assert_eq!(header.client_or(peer), peer);
    }
    // What follows the header is the application's.
    let (_, length) = parse(b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(length, 15);
}

#[test]
fn malformed_v1_headers_are_refused_by_name() {
    for bad in [
        &b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\n"[..], // LF alone
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\r\n",
        b"PROXY TCP4 203.0.113.7  192.0.2.1 51000 443\r\n", // two spaces
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000\r\n",      // a port missing
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443 9\r\n", // one too many
        b"PROXY TCP4 203.0.113.999 192.0.2.1 51000 443\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 51000 443\r\n", // family mismatch
        b"PROXY TCP6 203.0.113.7 192.0.2.1 51000 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 443\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 51000 443\r\n",
        b"PROXY tcp4 203.0.113.7 192.0.2.1 51000 443\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 4\xc3\xa93\r\n",
    ] {
        let outcome = parse(bad);
        assert!(
            matches!(outcome, Err(HeaderError::V1(_))),
            "{:?}: {outcome:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // No LF within 107 bytes.
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert_eq!(parse(&long), Err(HeaderError::TooLong { max: 107 }));
    // Not the protocol at all.
    for other in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PRI * HTTP/2.0\r\n",
        b"\x16\x03\x01\x02\x00",
        b"proxy TCP4",
    ] {
        assert_eq!(
            parse(other),
            Err(HeaderError::NotProxyProtocol),
            "{other:?}"
        );
    }
}

#[test]
fn v2_headers_name_the_client_and_carry_tlvs() {
    let header = whole(&v2(0x21, 0x11, &IPV4, &[]));
    assert_eq!(
        (header.version, header.command),
        (Version::V2, Command::Proxy)
    );
    assert_eq!(header.source, Some("203.0.113.7:51000".parse().unwrap()));
    assert_eq!(header.destination, Some("192.0.2.1:443".parse().unwrap()));
    let header = whole(&v2(0x21, 0x21, &ipv6(), &[]));
    assert_eq!(header.source, Some("[2001:db8::7]:51000".parse().unwrap()));

    let mut ssl = vec![0x07, 0, 0, 0, 0];
    for (kind, value) in [
        (0x21u8, &b"TLSv1.3"[..]),
        (0x22, b"client-7"),
        (0x23, b"TLS_AES_128_GCM_SHA256"),
        (0x24, b"SHA256"),
        (0x25, b"RSA2048"),
    ] {
        ssl.push(kind);
        ssl.extend_from_slice(&(value.len() as u16).to_be_bytes());
        ssl.extend_from_slice(value);
    }
    let bytes = v2(
        0x21,
        0x11,
        &IPV4,
        &[
            (0x01, b"h2"),
            (0x02, b"api.example.com"),
            (0x04, b"\0\0\0"),
            (0x05, b"conn-1234"),
            (0x20, &ssl),
            (0x30, b"blue"),
            (0xEA, b"\x01vpce-0123"),
        ],
    );
    let header = whole(&bytes);
    assert_eq!(header.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(header.authority.as_deref(), Some("api.example.com"));
    assert_eq!(header.unique_id.as_deref(), Some(&b"conn-1234"[..]));
    assert_eq!(header.netns.as_deref(), Some("blue"));
    let ssl = header.ssl.as_ref().unwrap();
    assert!(
        ssl.client_ssl && ssl.client_cert_connection && ssl.client_cert_session && ssl.verified
    );
    assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(ssl.common_name.as_deref(), Some("client-7"));
    assert_eq!(ssl.key_algorithm.as_deref(), Some("RSA2048"));
    // Every TLV but NOOP, in order, vendor types included.
    let kinds: Vec<u8> = header.tlvs.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [0x01, 0x02, 0x05, 0x20, 0x30, 0xEA]);
    // A certificate the balancer could not verify says so.
    let unverified = whole(&v2(0x21, 0x11, &IPV4, &[(0x20, &[0x03, 0, 0, 0, 1])]));
    assert!(!unverified.ssl.unwrap().verified);
}

#[test]
fn v2_local_unix_udp_and_unspecified_keep_the_socket_peer() {
    let peer = "10.0.0.5:1234".parse().unwrap();
    // LOCAL, with addresses or without: a balancer's health check.
    for bytes in [v2(0x20, 0x00, &[], &[]), v2(0x20, 0x11, &IPV4, &[])] {
        let header = whole(&bytes);
        assert_eq!(header.command, Command::Local);
        assert_eq!(header.client_or(peer), peer);
    }
    // UDP over IPv4, UNIX stream, unspecified.
    for bytes in [
        v2(0x21, 0x12, &IPV4, &[]),
        v2(0x21, 0x31, &[0; 216], &[]),
        v2(0x21, 0x00, &[], &[]),
    ] {
        let header = whole(&bytes);
        assert_eq!((header.command, header.source), (Command::Proxy, None));
        assert_eq!(header.client_or(peer), peer);
    }
}

#[test]
fn malformed_v2_headers_are_refused_by_name() {
    let v2_error = |bytes: &[u8]| matches!(parse(bytes), Err(HeaderError::V2(_)));
    assert!(
        v2_error(&v2(0x11, 0x11, &IPV4, &[])),
        "version 1 in a binary header"
    );
    assert!(v2_error(&v2(0x31, 0x11, &IPV4, &[])), "version 3");
    assert!(v2_error(&v2(0x22, 0x11, &IPV4, &[])), "command 2");
    assert!(v2_error(&v2(0x21, 0x41, &IPV4, &[])), "family 4");
    assert!(v2_error(&v2(0x21, 0x13, &IPV4, &[])), "protocol 3");
    assert!(
        v2_error(&v2(0x21, 0x11, &IPV4[..8], &[])),
        "addresses cut short"
    );
    assert!(
        v2_error(&v2(0x21, 0x21, &IPV4, &[])),
        "IPv6 family with IPv4 addresses"
    );
    let tlv_error = |bytes: &[u8]| matches!(parse(bytes), Err(HeaderError::Tlv(_)));
    // A TLV whose length runs past the header.
    let mut overrun = v2(0x21, 0x11, &IPV4, &[(0x01, b"h2")]);
    let at = overrun.len() - 4;
    overrun[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
    assert!(tlv_error(&overrun), "{:?}", parse(&overrun));
    // Two leftover bytes that cannot be a TLV.
    let mut leftovers = v2(0x21, 0x11, &IPV4, &[]);
    leftovers.extend_from_slice(&[1, 0]);
    leftovers[15] += 2;
    assert!(tlv_error(&leftovers), "{:?}", parse(&leftovers));
    // Known TLVs twice, malformed values.
    for tlvs in [
        &[(0x01u8, &b"h2"[..]), (0x01, b"http/1.1")][..],
        &[(0x02, b"a"), (0x02, b"b")],
        &[(0x02, b"bad\nhost")],
        &[(0x02, b"\xff\xfe")],
        &[(0x05, &[7u8; 129][..])],
        &[(0x20, &[1u8, 0, 0][..])],
        &[(0x20, &[1u8, 0, 0, 0, 0, 0x22, 0, 9, b'x'][..])],
        &[(0x03, &[0u8; 3][..])],
    ] {
        assert!(tlv_error(&v2(0x21, 0x11, &IPV4, tlvs)), "{tlvs:?}");
    }
}

#[test]
fn the_crc32c_tlv_is_checked() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let mut bytes = v2(0x21, 0x11, &IPV4, &[(0x03, &[0; 4]), (0x02, b"api")]);
    let sum = crc32c(&bytes);
    let at = V2_FIXED + 12 + 3;
    bytes[at..at + 4].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(whole(&bytes).authority.as_deref(), Some("api"));
    bytes[at] ^= 1;
    assert_eq!(parse(&bytes), Err(HeaderError::Checksum));
    // A changed address under a good checksum.
    bytes[at] ^= 1;
    bytes[V2_FIXED] ^= 1;
    assert_eq!(parse(&bytes), Err(HeaderError::Checksum));
}

#[test]
fn sizes_are_bounded() {
    // Refused at the length field, before the body is read.
    let fixed = v2(0x21, 0x11, &IPV4, &[(0xE0, &[0; 5000])]);
    assert_eq!(parse(&fixed[..16]), Err(HeaderError::TooLong { max: 4096 }));
    assert!(ProxyHeader::parse(&fixed, 8192).unwrap().is_some());
    // The smallest maximum still reads the fixed part.
    assert_eq!(
        ProxyHeader::parse(&v2(0x20, 0x00, &[], &[]), 0)
            .unwrap()
            .unwrap()
            .1,
        16
    );
}

/// Every hand-made header above, for the properties below.
fn samples() -> Vec<Vec<u8>> {
    vec![
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(
            0x21,
            0x11,
            &IPV4,
            &[(0x01, b"h2"), (0x02, b"api.example.com")],
        ),
        v2(0x21, 0x21, &ipv6(), &[(0x20, &[1, 0, 0, 0, 0])]),
        v2(0x20, 0x00, &[], &[]),
    ]
}

proptest! {
    /// A header split anywhere is "more needed" until it is whole: never an error,
    /// never a wrong length.
    #[test]
    fn every_prefix_asks_for_more(sample in 0usize..6, extra in proptest::collection::vec(any::<u8>(), 0..32)) {
        let bytes = &samples()[sample];
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {}", cut);
        }
        let mut followed = bytes.clone();
        followed.extend_from_slice(&extra);
        let (_, length) = parse(&followed).unwrap().unwrap();
        prop_assert_eq!(length, bytes.len());
    }

    /// Any bytes: an answer, never a panic; a header's length is within the bytes.
    #[test]
    fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..300), v1 in any::<bool>()) {
        let mut input = if v1 { b"PROXY ".to_vec() } else { V2_SIGNATURE.to_vec() };
        input.extend_from_slice(&bytes);
        if let Ok(Some((_, length))) = parse(&input) {
            prop_assert!(length <= input.len());
        }
        let _ = parse(&bytes);
    }
}
