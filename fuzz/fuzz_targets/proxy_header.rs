//! PROXY protocol headers (`ProxyHeader::parse`), as `ProxyListener` and the mTLS
//! `TlsListener` frame and read them off a balancer's connection.
//!
//! Invariants: no panic; a whole header's length is within the bytes, at most 107 for
//! v1 and the size limit for v2, and ends in CRLF (v1); the same bytes cut at the
//! header's end give the same header, and any shorter cut asks for more or names a
//! refusal, never another header; a relayed connection with a source names a
//! destination of the same family; a refused input stays refused with more bytes after.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy_protocol::{Command, ProxyHeader, Version};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size limit, so the limit's edge is explored too.
    let Some((&limit, bytes)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(limit) * 4;
    match ProxyHeader::parse(bytes, max) {
        Ok(Some((header, length))) => {
            assert!(length <= bytes.len());
            match header.version {
                Version::V1 => {
                    assert!(length <= 107);
                    assert!(bytes[..length].ends_with(b"\r\n"));
                }
                Version::V2 => assert!(length <= max.max(16)),
            }
            let again = ProxyHeader::parse(&bytes[..length], max);
            assert_eq!(again, Ok(Some((header.clone(), length))));
            for cut in [0, length / 2, length.saturating_sub(1)] {
                if cut < length {
                    assert!(
                        !matches!(ProxyHeader::parse(&bytes[..cut], max), Ok(Some(_))),
                        "a shorter cut read as a header"
                    );
                }
            }
            if let (Command::Proxy, Some(source)) = (header.command, header.source) {
                let destination = header.destination.expect("a destination with the source");
                assert_eq!(source.is_ipv4(), destination.is_ipv4());
                assert_eq!(header.client_or("10.0.0.1:1".parse().unwrap()), source);
            }
        }
        Ok(None) => {}
        Err(error) => {
            assert!(!error.to_string().is_empty());
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
            assert!(ProxyHeader::parse(&longer, max).is_err(), "{error}");
        }
    }
});
