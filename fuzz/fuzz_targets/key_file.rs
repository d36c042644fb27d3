//! API key files (`[[key]]` TOML, as `FileKeyStore` and `portcullis key` read them).
//!
//! Input: the file's text.
//!
//! Invariants: no panic; an error names a line of the text; a file that parses has
//! distinct ids, and its records rendered again (`render_key_record`, as `portcullis key
//! new` writes them) parse to the same records; revoking a key in the text
//! (`revoke_in_key_file`, as `portcullis key revoke` edits the file) gives a file whose
//! records are the same but that one, now revoked, and keeps every comment line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_api_key::{parse_key_file, render_key_record, revoke_in_key_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match parse_key_file("fuzz.toml", text) {
        Ok(records) => {
            let mut ids: Vec<&str> = records.iter().map(|r| r.id()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), records.len());
            let rendered: String = records
                .iter()
                .map(|record| render_key_record(record) + "\n")
                .collect();
            let again = parse_key_file("rendered.toml", &rendered)
                .unwrap_or_else(|e| panic!("a rendered file is refused: {e}\n{rendered}"));
            assert_eq!(again.len(), records.len());
            for (before, after) in records.iter().zip(&again) {
                assert_eq!(format!("{before:?}"), format!("{after:?}"));
            }
            for target in records.iter().take(3) {
                let edited = revoke_in_key_file("fuzz.toml", text, target.id())
                    .unwrap_or_else(|e| panic!("revoking {:?} failed: {e}\n{text}", target.id()));
                let after = parse_key_file("edited.toml", &edited)
                    .unwrap_or_else(|e| panic!("an edited file is refused: {e}\n{edited}"));
                assert_eq!(after.len(), records.len());
                for (before, after) in records.iter().zip(&after) {
                    let expected = if before.id() == target.id() {
                        before.clone().revoked(true)
                    } else {
                        before.clone()
                    };
                    assert_eq!(format!("{expected:?}"), format!("{after:?}"));
                }
                for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
                    assert!(edited.contains(line), "comment {line:?} lost:\n{edited}");
                }
            }
        }
        Err(error) => {
            if let Some(line) = error.line() {
                assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}: {error}");
            }
        }
    }
});
