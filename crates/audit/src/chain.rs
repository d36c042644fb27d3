//! Tamper evidence: every file record carries the SHA-256 of the record before it and
//! of itself.
//!
//! A sealed line ends `,"prev":"<64 hex>","hash":"<64 hex>"}`. `hash` covers the line
//! up to and including `prev`, closed with `}`; `prev` is the previous record's `hash`
//! (64 zeros for the first record ever written). Editing a record breaks its own hash;
//! deleting or moving one breaks the next record's `prev`.
//!
//! The hashes are not keyed: they catch edits made without recomputing the chain (a
//! mistaken clean-up, a naive attacker, a damaged disk), not an attacker who rewrites
//! every record after the one they changed. Ship the files, or the latest hash, to
//! another machine for that.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The `prev` of the first record of a new chain.
pub const GENESIS: [u8; 32] = [0; 32];

const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;
const PREV_SUFFIX_LEN: usize = r#","prev":""}"#.len() + 64;

/// Seals a JSON object (`{…}`, no newline) as the record after `prev`; returns the
/// record's hash.
pub(crate) fn seal(line: &mut Vec<u8>, prev: &[u8; 32]) -> [u8; 32] {
    if line.last() == Some(&b'}') {
        line.pop();
    }
    if line.len() > 1 {
        line.push(b',');
    }
    let mut hex_digits = [0u8; 64];
    line.extend_from_slice(b"\"prev\":\"");
    line.extend_from_slice(to_hex(prev, &mut hex_digits));
    line.extend_from_slice(b"\"}");
    let hash: [u8; 32] = Sha256::digest(&line[..]).into();
    line.pop();
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(to_hex(&hash, &mut hex_digits));
    line.extend_from_slice(b"\"}");
    hash
}

/// `bytes` in lower-case hex, into `out` (no allocation per record).
fn to_hex<'a>(bytes: &[u8; 32], out: &'a mut [u8; 64]) -> &'a [u8] {
    // The lengths match, so encoding cannot fail.
    let _ = hex::encode_to_slice(bytes, out);
    &out[..]
}

/// The hash a sealed line claims, if the line is sealed.
pub(crate) fn claimed_hash(line: &[u8]) -> Option<[u8; 32]> {
    let start = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let suffix = &line[start..];
    let hex_part = suffix.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"}")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).ok()?;
    Some(hash)
}

fn unseal(line: &[u8]) -> Option<(Vec<u8>, [u8; 32], [u8; 32])> {
    let claimed = claimed_hash(line)?;
    let mut body = line[..line.len() - HASH_SUFFIX_LEN].to_vec();
    body.push(b'}');
    let start = body.len().checked_sub(PREV_SUFFIX_LEN)?;
    let hex_part = body[start..]
        .strip_prefix(b",\"prev\":\"")
        .or_else(|| body[start + 1..].strip_prefix(b"\"prev\":\""))?
        .strip_suffix(b"\"}")?;
    let mut prev = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut prev).ok()?;
    Some((body, prev, claimed))
}

/// What [`verify_files`] found in an intact chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// Records checked.
    pub records: usize,
    /// The `prev` of the first record: [`GENESIS`] when the files start the chain,
    /// otherwise the last hash of a file that was not given.
    pub starts_from: [u8; 32],
    /// The hash of the last record: what the next record's `prev` will be.
    pub last_hash: [u8; 32],
}

/// Where and how a chain is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub problem: ChainProblem,
}

/// What is wrong with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainProblem {
    /// The record does not end with `prev` and `hash` fields.
    Unsealed,
    /// The record's content does not match its own hash: it was edited.
    Edited,
    /// The record's `prev` is not the hash of the record before it: a record was
    /// deleted, inserted or moved here.
    BrokenLink,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.problem {
            ChainProblem::Unsealed => "the record has no prev/hash seal",
            ChainProblem::Edited => "the record was edited: its content does not match its hash",
            ChainProblem::BrokenLink => {
                "the chain is broken here: a record before this one was deleted, inserted or moved"
            }
        };
        write!(f, "{}:{}: {what}", self.file.display(), self.line)
    }
}

impl std::error::Error for ChainBreak {}

/// Why files could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}", path = .0.display(), error = .1)]
    Read(PathBuf, std::io::Error),
    /// The chain is broken.
    #[error(transparent)]
    Broken(ChainBreak),
}

/// Verifies the hash chain through `files`, in the order given (oldest first), and
/// reports the first broken link.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("verify-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("empty.jsonl");
/// # std::fs::write(&path, "")?;
/// let report = portcullis_audit::verify_files(&[&path])?;
/// assert_eq!(report.records, 0);
/// # Ok(())
/// # }
/// ```
pub fn verify_files<P: AsRef<Path>>(files: &[P]) -> Result<ChainReport, VerifyError> {
    let mut report = ChainReport {
        records: 0,
        starts_from: GENESIS,
        last_hash: GENESIS,
    };
    for file in files {
        let file = file.as_ref();
        let text =
            std::fs::read(file).map_err(|error| VerifyError::Read(file.to_owned(), error))?;
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let broken = |problem| {
                VerifyError::Broken(ChainBreak {
                    file: file.to_owned(),
                    line: index + 1,
                    problem,
                })
            };
            let (body, prev, claimed) =
                unseal(line).ok_or_else(|| broken(ChainProblem::Unsealed))?;
            let actual: [u8; 32] = Sha256::digest(&body).into();
            if actual != claimed {
                return Err(broken(ChainProblem::Edited));
            }
            if report.records == 0 {
                report.starts_from = prev;
            } else if prev != report.last_hash {
                return Err(broken(ChainProblem::BrokenLink));
            }
            report.last_hash = claimed;
            report.records += 1;
        }
    }
    Ok(report)
}

/// The hash of the last sealed record of `path`, to continue its chain.
pub(crate) fn last_hash_of(path: &Path) -> Option<[u8; 32]> {
    use std::io::{Read, Seek, SeekFrom};
    // Only the file's end is read: a day's audit file may be gigabytes, and reading it
    // whole would hold up every start. The window doubles until it holds the whole
    // last line (a newline before it, or the file's start).
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = size.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        file.by_ref()
            .take(size - start)
            .read_to_end(&mut tail)
            .ok()?;
        let content_end = tail.iter().rposition(|&b| b != b'\n').map(|at| at + 1);
        let Some(content_end) = content_end else {
            // Only newlines here: look further back, unless this is the whole file.
            if start == 0 {
                return None;
            }
            window = window.saturating_mul(2);
            continue;
        };
        match tail[..content_end].iter().rposition(|&b| b == b'\n') {
            Some(newline) => return claimed_hash(&tail[newline + 1..content_end]),
            None if start == 0 => return claimed_hash(&tail[..content_end]),
            None => window = window.saturating_mul(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hash_is_read_from_the_end_of_any_file() {
        let dir = std::env::temp_dir().join(format!("portcullis-last-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chain.jsonl");
        let mut prev = GENESIS;
        let mut sealed = |text: String| {
            let mut line = text.into_bytes();
            prev = seal(&mut line, &prev);
            (line, prev)
        };
        // Lines shorter than, as long as and longer than the first 64 KiB window, and
        // trailing newlines, which are not a line.
        for (lines, trailing) in [
            (vec![10], "\n"),
            (vec![10, 70_000], "\n"),
            (vec![200_000], "\n\n\n"),
            (vec![5; 20_000], "\n"),
            (vec![65_000, 40], ""),
        ] {
            let mut file = Vec::new();
            let mut last = GENESIS;
            for (index, length) in lines.iter().enumerate() {
                let (line, hash) = sealed(format!(
                    "{{\"n\":{index},\"pad\":\"{}\"}}",
                    "x".repeat(*length)
                ));
                file.extend_from_slice(&line);
                file.push(b'\n');
                last = hash;
            }
            file.pop();
            file.extend_from_slice(trailing.as_bytes());
            std::fs::write(&path, &file).unwrap();
            assert_eq!(last_hash_of(&path), Some(last), "{lines:?}");
        }
        std::fs::write(&path, "\n\n").unwrap();
        assert_eq!(last_hash_of(&path), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_hash_of(&path), None);
        assert_eq!(last_hash_of(&dir.join("missing.jsonl")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Reading the tail finds what reading the whole file would: the claimed hash of
        /// the last non-empty line, whatever the lines' lengths and the newlines.
        #[test]
        fn the_tail_agrees_with_the_whole_file(
            parts in proptest::collection::vec((0usize..150_000, 0usize..3, proptest::bool::ANY), 0..6),
        ) {
            let dir = std::env::temp_dir().join(format!("portcullis-tail-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("tail.jsonl");
            let mut file = Vec::new();
            let mut prev = GENESIS;
            for (length, newlines, is_sealed) in parts {
                let mut line = format!("{{\"pad\":\"{}\"}}", "y".repeat(length)).into_bytes();
                if is_sealed {
                    prev = seal(&mut line, &prev);
                }
                file.extend_from_slice(&line);
                file.extend(std::iter::repeat_n(b'\n', newlines));
            }
            std::fs::write(&path, &file).unwrap();
            let whole = file
                .split(|&b| b == b'\n')
                .rev()
                .find(|line| !line.is_empty())
                .and_then(claimed_hash);
            proptest::prop_assert_eq!(last_hash_of(&path), whole);
        }
    }

    fn write_chain(path: &Path, count: usize) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        let mut lines = Vec::new();
        for i in 0..count {
            let mut line = format!("{{\"n\":{i},\"text\":\"record {i}\"}}").into_bytes();
            prev = seal(&mut line, &prev);
            lines.push(line);
        }
        std::fs::write(
            path,
            lines
                .join(&b'\n')
                .iter()
                .chain(b"\n")
                .copied()
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        lines
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn rewrite(path: &Path, lines: &[Vec<u8>]) {
        let mut text = lines.join(&b'\n');
        text.push(b'\n');
        std::fs::write(path, text).unwrap();
    }

    fn problem(path: &Path) -> (usize, ChainProblem) {
        match verify_files(&[path]).unwrap_err() {
            VerifyError::Broken(b) => (b.line, b.problem),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sealed_records_stay_valid_json_and_verify() {
        let path = temp("intact.jsonl");
        let lines = write_chain(&path, 5);
        for line in &lines {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert!(value["prev"].is_string() && value["hash"].is_string());
        }
        let report = verify_files(&[&path]).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.starts_from, GENESIS);
        assert_eq!(Some(report.last_hash), last_hash_of(&path));
    }

    #[test]
    fn an_edited_line_is_found() {
        let path = temp("edited.jsonl");
        let mut lines = write_chain(&path, 5);
        let edited = String::from_utf8(lines[2].clone())
            .unwrap()
            .replace("record 2", "record X");
        lines[2] = edited.into_bytes();
        rewrite(&path, &lines);
        assert_eq!(problem(&path), (3, ChainProblem::Edited));
        // The last line too: its own hash gives it away.
        let mut lines = write_chain(&path, 3);
        lines[2] = String::from_utf8(lines[2].clone())
            .unwrap()
            .replace("\"n\":2", "\"n\":7")
            .into_bytes();
        rewrite(&path, &lines);
        assert_eq!(problem(&path), (3, ChainProblem::Edited));
    }

    #[test]
    fn a_deleted_line_is_found() {
        let path = temp("deleted.jsonl");
        let mut lines = write_chain(&path, 5);
        lines.remove(1);
        rewrite(&path, &lines);
        assert_eq!(problem(&path), (2, ChainProblem::BrokenLink));
    }

    #[test]
    fn reordered_lines_are_found() {
        let path = temp("reordered.jsonl");
        let mut lines = write_chain(&path, 5);
        lines.swap(2, 3);
        rewrite(&path, &lines);
        assert_eq!(problem(&path), (3, ChainProblem::BrokenLink));
    }

    #[test]
    fn unsealed_lines_are_found() {
        let path = temp("unsealed.jsonl");
        let mut lines = write_chain(&path, 2);
        lines.push(b"{\"n\":9}".to_vec());
        rewrite(&path, &lines);
        assert_eq!(problem(&path), (3, ChainProblem::Unsealed));
    }

    #[test]
    fn a_chain_continues_across_files() {
        let first = temp("part1.jsonl");
        let lines = write_chain(&first, 2);
        let mut prev = claimed_hash(lines.last().unwrap()).unwrap();
        let second = temp("part2.jsonl");
        let mut more = Vec::new();
        for i in 0..2 {
            let mut line = format!("{{\"n\":{}}}", 10 + i).into_bytes();
            prev = seal(&mut line, &prev);
            more.push(line);
        }
        rewrite(&second, &more);
        assert_eq!(verify_files(&[&first, &second]).unwrap().records, 4);
        let alone = verify_files(&[&second]).unwrap();
        assert_ne!(
            alone.starts_from, GENESIS,
            "the second file says it continues a chain"
        );
        assert!(matches!(
            verify_files(&[&second, &first]),
            Err(VerifyError::Broken(_))
        ));
    }
}
