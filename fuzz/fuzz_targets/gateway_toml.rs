//! Gateway files (`portcullis serve --config`, `GatewayConfig::parse`): the whole schema,
//! `[server]` with its limits and body limits, `[tls]`, `[client_ip]`, `[admin]`,
//! `[token_issuer]` and every `[[layer]]` kind.
//!
//! Input: the file's text.
//!
//! Invariants: no panic; an error names a line of the text (or none) and a key; a file
//! that parses names each layer by a kind (lowercase words with dashes) and parses again
//! to the same kinds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    let base = std::path::Path::new("/nonexistent-fuzz-base");
    match GatewayConfig::parse("fuzz.toml", text, base) {
        Ok(config) => {
            let kinds = config.layer_kinds();
            // Kinds are the file's own words for the layers: lowercase, with dashes.
            assert!(
                kinds.iter().all(|kind| !kind.is_empty()
                    && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')),
                "{kinds:?}"
            );
            let again = GatewayConfig::parse("fuzz.toml", text, base)
                .expect("the same text parses twice");
            assert_eq!(again.layer_kinds(), kinds);
        }
        Err(error) => {
            if let Some(line) = error.line {
                assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}: {error}");
            }
            assert!(!error.to_string().is_empty());
        }
    }
});
