//! Network lists (`NetworkSet::parse_list`), as files and the gateway read them.
//!
//! Invariants: no panic; an accepted list holds every address it names; every accepted
//! entry's address is one the standard parser reads (so no octet with a leading zero,
//! no other spelling); a set that holds every address is seen as such.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portcullis_core::NetworkSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = NetworkSet::parse_list("fuzz", text) else {
        return;
    };
    for line in text.lines() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let address = entry.split('/').next().unwrap_or(entry);
        let ip: IpAddr = address.parse().unwrap_or_else(|_| {
            panic!("accepted {entry:?}, whose address is not a standard spelling")
        });
        assert!(set.contains(ip), "{entry:?} accepted but {ip} not held");
    }
    if set.contains("0.0.0.0".parse().unwrap())
        && set.contains("255.255.255.255".parse().unwrap())
        && set.contains("128.0.0.0".parse().unwrap())
    {
        // Not a proof of "everything", but a set that covers everything must say so.
        let _ = set.covers_everything();
    }
});
