//! SPIFFE IDs (`SpiffeId` parse), as `Identify::Spiffe` reads a certificate's URI SAN.
//!
//! Invariants: no panic; an accepted ID is exactly `spiffe://` + trust domain + path,
//! at most 2048 bytes; its trust domain is a valid `TrustDomain` of lowercase letters,
//! digits, '.', '-' and '_'; its path is empty or '/'-separated non-empty segments of
//! letters, digits, '.', '-' and '_', none '.' or '..'; the check agrees with this
//! independent reading in both directions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_mtls_identity::{SpiffeId, TrustDomain};

fn by_the_specification(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let domain_ok = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'));
    let path_ok = path.is_empty()
        || path[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
    id.len() <= 2048 && domain_ok && path_ok
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = text.parse::<SpiffeId>();
    assert_eq!(
        parsed.is_ok(),
        by_the_specification(text),
        "{text:?}: {parsed:?}"
    );
    if let Ok(id) = parsed {
        assert_eq!(id.as_str(), text);
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain(), id.path()),
            text
        );
        let domain: TrustDomain = id.trust_domain().parse().expect("its own trust domain");
        assert_eq!(domain.as_str(), id.trust_domain());
        assert_eq!(id.to_string().parse::<SpiffeId>().as_ref(), Ok(&id));
    }
    // A bare trust domain name is accepted exactly when it makes a path-less ID.
    let as_domain = text.parse::<TrustDomain>().is_ok();
    let as_id = format!("spiffe://{text}").parse::<SpiffeId>();
    assert_eq!(
        as_domain,
        as_id.as_ref().is_ok_and(|id| id.path().is_empty()),
        "{text:?}"
    );
});
