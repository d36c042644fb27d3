//! The revocation journal as `Revocations::open_journal` reads it back after a restart.
//!
//! Input: the journal file's bytes. The target writes them to a file, opens it, revokes
//! one more token and opens it again.
//!
//! Invariants: no panic, and opening never fails on content, not even bytes that are
//! not UTF-8 (only on I/O); a line
//! `<id> <exp>` with a well-formed id and a future `exp` is revoked after opening, and
//! nothing else is (the checker's own reading); skipped lines are exactly the
//! non-empty lines that are not of that form; a revocation made after opening is read
//! back by the next opening, whatever the file ended with (a torn last line included).

#![no_main]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portcullis_jwt::Revocations;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn valid_id(jti: &str) -> bool {
    !jti.is_empty() && !jti.chars().any(|c| c.is_whitespace() || c.is_control())
}

fuzz_target!(|data: &[u8]| {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("j{}", RUN.fetch_add(1, Ordering::Relaxed) % 4));
    std::fs::write(&path, data).unwrap();

    let revocations = Revocations::open_journal(&path).expect("a journal always opens");
    let horizon = now();
    let (mut expected, mut skipped) = (HashSet::new(), Vec::new());
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).ok();
        if text.is_some_and(|text| text.trim().is_empty()) {
            continue;
        }
        let parsed = text
            .and_then(|text| text.split_once(' '))
            .filter(|(jti, _)| valid_id(jti))
            .and_then(|(jti, exp)| Some((jti, exp.parse::<i64>().ok()?)));
        match parsed {
            // Entries expiring within the run's second may or may not be read back.
            Some((jti, exp)) if exp > horizon + 1 => {
                expected.insert(jti.to_owned());
            }
            Some(_) => {}
            None => skipped.push(index + 1),
        }
    }
    for jti in &expected {
        assert!(revocations.is_revoked(jti), "{jti:?} not read back");
    }
    assert_eq!(revocations.skipped_lines(), skipped);
    assert!(revocations.len() >= expected.len());
    let far = horizon + 3600;
    revocations.revoke("fuzz-after-open", far).unwrap();
    drop(revocations);
    let again = Revocations::open_journal(&path).expect("the journal it wrote opens");
    assert!(again.is_revoked("fuzz-after-open"));
    for jti in &expected {
        assert!(again.is_revoked(jti), "{jti:?} lost by a reopen");
    }
});
