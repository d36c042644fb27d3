//! Claim paths (`ClaimPath::parse`), as `roles_claim`, `scopes_claim` and the gateway
//! file's claim keys read them.
//!
//! Invariants: no panic; an accepted path prints as a path that parses to the same
//! path, and printing that again changes nothing, and a path without quotes or
//! backslashes prints as written; without quotes in the input, a path is accepted
//! exactly when no dot-separated name is empty; a refusal's message names the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_jwt::ClaimPath;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClaimPath::parse(text) {
        Ok(path) => {
            let printed = path.to_string();
            let again = ClaimPath::parse(&printed)
                .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which is refused: {e}"));
            assert_eq!(again, path, "{text:?} -> {printed:?}");
            assert_eq!(again.to_string(), printed);
            // Names holding a backslash print quoted (and escaped); others as written.
            if !text.contains(['"', '\\']) {
                assert_eq!(printed, text, "an unquoted path prints as written");
            }
        }
        Err(error) => {
            if !text.contains('"') {
                assert!(
                    text.split('.').any(str::is_empty),
                    "{text:?} refused without an empty name: {error}"
                );
            }
            assert!(error.to_string().contains(&format!("{text:?}")));
        }
    }
});
