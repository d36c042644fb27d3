//! Revoked token ids (`jti`), kept until the tokens would have expired anyway; in
//! memory, or also in an append-only journal file that survives restarts.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// A shared list of revoked token ids. Give the same list to the [`JwtLayer`](crate::JwtLayer)
/// and the [`TokenIssuer`](crate::TokenIssuer): a revoked token is refused with
/// `revoked_token` on its next request and cannot be extended. Cheap to clone.
///
/// In memory by [`new`](Self::new); with [`open_journal`](Self::open_journal) every
/// revocation is also appended to a file and synced to disk before `revoke` returns, and
/// the file is read back at start, so a restart forgets nothing.
///
/// ```
/// use portcullis_jwt::Revocations;
///
/// let revoked = Revocations::new();
/// revoked.revoke("token-1", 1_900_000_000)?;
/// assert!(revoked.is_revoked("token-1"));
/// revoked.sweep(1_900_000_001);
/// assert!(!revoked.is_revoked("token-1"), "forgotten once the token has expired");
/// # Ok::<(), portcullis_jwt::RevocationError>(())
/// ```
#[derive(Clone, Default)]
pub struct Revocations {
    pub(crate) ids: Arc<DashMap<Box<str>, i64>>,
    journal: Option<Arc<Mutex<Journal>>>,
    #[cfg(feature = "redis")]
    shared: Option<Arc<crate::revocation_redis::Shared>>,
}

/// What the list knows about a token id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationStatus {
    /// Revoked.
    Revoked,
    /// Not revoked, as far as the list knows.
    NotRevoked,
    /// Not known to be revoked, but the shared list could not be read for a while and
    /// its failure policy refuses meanwhile.
    Unknown,
}

/// The file behind a journaled list: one `<jti> <exp>` line per revocation.
struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file, live or not.
    lines: usize,
    /// Lines right after the last compaction (or at open): the next one runs when the
    /// file has doubled since, so its cost is spread over the revocations in between.
    compacted: usize,
    /// Lines that could not be read when the file was opened (1-based).
    skipped: Vec<usize>,
}

/// Why a revocation could not be kept, or a journal not opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// A token id that is empty, or holds whitespace or a control character: it could
    /// not be written as one journal line.
    #[error("a revoked token id must be non-empty, without whitespace or control characters")]
    InvalidId,
    /// The journal file could not be read, written or synced.
    #[error("the revocation journal {path}: {error}", path = .0.display(), error = .1)]
    Journal(PathBuf, std::io::Error),
    /// The shared (Redis) list could not be set up: why.
    #[error("the shared revocations: {0}")]
    Shared(String),
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether the file is empty or ends with a newline.
fn ends_with_newline(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn valid_id(jti: &str) -> bool {
    !jti.is_empty() && !jti.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Revocations {
    /// An empty list, in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list kept in the journal file at `path` (created if missing): the revocations
    /// of tokens not yet expired are read back, and every new one is appended and
    /// synced before [`revoke`](Self::revoke) returns. A line that cannot be read is
    /// skipped and logged with its number ([`skipped_lines`](Self::skipped_lines)); the
    /// file is rewritten without expired entries when most of its lines are.
    pub fn open_journal(path: impl Into<PathBuf>) -> Result<Self, RevocationError> {
        let path = path.into();
        let failed = |error| RevocationError::Journal(path.clone(), error);
        let ids = DashMap::new();
        let (mut lines, mut skipped) = (0, Vec::new());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let now = now_secs();
                // Line by line as bytes: a line that is not UTF-8 (a flipped bit) is a
                // broken line like any other, not a journal that cannot be opened.
                for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let text = std::str::from_utf8(line).ok();
                    if text.is_some_and(|text| text.trim().is_empty()) {
                        continue;
                    }
                    lines += 1;
                    let entry = text
                        .and_then(|text| text.split_once(' '))
                        .filter(|(jti, _)| valid_id(jti))
                        .and_then(|(jti, exp)| Some((jti, exp.parse::<i64>().ok()?)));
                    match entry {
                        Some((jti, exp)) if exp >= now => {
                            ids.insert(jti.into(), exp);
                        }
                        Some(_) => {}
                        None => {
                            tracing::warn!(
                                journal = %path.display(),
                                line = index + 1,
                                "jwt: a revocation journal line cannot be read; skipped"
                            );
                            skipped.push(index + 1);
                        }
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(error)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(failed)?;
        // A line cut short by a crash must not run into the next revocation's.
        if !ends_with_newline(&mut file).map_err(failed)? {
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(failed)?;
        }
        Ok(Self {
            ids: Arc::new(ids),
            #[cfg(feature = "redis")]
            shared: None,
            journal: Some(Arc::new(Mutex::new(Journal {
                path,
                file,
                lines,
                compacted: lines,
                skipped,
            }))),
        })
    }

    /// Revokes the token with id `jti`, which expires at `expires_at` (seconds since
    /// the epoch); the entry is swept after that. The token is refused in this process
    /// from now on either way; an error means the journal could not keep it, so another
    /// process, or this one after a restart, would not know.
    pub fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), RevocationError> {
        if !valid_id(jti) {
            return Err(RevocationError::InvalidId);
        }
        self.ids.insert(jti.into(), expires_at);
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            shared.push(jti, expires_at);
        }
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut journal = journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let written =
            writeln!(journal.file, "{jti} {expires_at}").and_then(|()| journal.file.sync_data());
        if let Err(error) = written {
            return Err(RevocationError::Journal(journal.path.clone(), error));
        }
        journal.lines += 1;
        if journal.lines > 64 && journal.lines >= 2 * journal.compacted {
            let now = now_secs();
            self.ids.retain(|_, exp| *exp >= now);
            if let Err(error) = journal.compact(&self.ids) {
                // The journal still holds every live entry; compaction waits for the
                // next revocation.
                tracing::warn!(%error, "jwt: compacting the revocation journal failed");
            }
        }
        Ok(())
    }

    /// Whether `jti` is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.ids.contains_key(jti)
    }

    /// What the list knows about `jti`: [`RevocationStatus::Unknown`] only for a list
    /// shared through Redis whose copy is stale and whose policy refuses meanwhile.
    pub fn check(&self, jti: &str) -> RevocationStatus {
        if self.ids.contains_key(jti) {
            return RevocationStatus::Revoked;
        }
        #[cfg(feature = "redis")]
        if self.shared.as_ref().is_some_and(|s| s.refuses_unknown()) {
            return RevocationStatus::Unknown;
        }
        RevocationStatus::NotRevoked
    }

    #[cfg(feature = "redis")]
    pub(crate) fn with_shared(shared: Arc<crate::revocation_redis::Shared>) -> Self {
        Self {
            ids: Arc::default(),
            journal: None,
            shared: Some(shared),
        }
    }

    /// Forgets ids of tokens expired at `now` (seconds since the epoch). The journal
    /// drops them when it is next compacted.
    pub fn sweep(&self, now: i64) {
        self.ids.retain(|_, expires_at| *expires_at >= now);
    }

    /// How many ids are listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is listed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// For a list shared through Redis: how long ago its local copy was last in sync
    /// with Redis (`None` before the first sync). `None` for other lists.
    pub fn shared_sync_age(&self) -> Option<std::time::Duration> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            return shared.sync_age();
        }
        None
    }

    /// Whether the list can answer for every token: false only for a list shared
    /// through Redis whose copy is stale while its policy refuses (the requests get 503
    /// `revocation_unavailable`). For a readiness probe.
    pub fn is_available(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.shared.as_ref().is_some_and(|s| s.refuses_unknown()) {
            return false;
        }
        true
    }

    /// Whether the list is shared through Redis.
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.shared.is_some() {
            return true;
        }
        false
    }

    /// The journal's lines that could not be read when it was opened (1-based).
    pub fn skipped_lines(&self) -> Vec<usize> {
        match &self.journal {
            Some(journal) => journal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .skipped
                .clone(),
            None => Vec::new(),
        }
    }
}

impl Journal {
    /// Rewrites the file with the live entries only: written beside it, synced, then
    /// renamed over it, so a crash leaves the old file or the new one, never half.
    fn compact(&mut self, ids: &DashMap<Box<str>, i64>) -> std::io::Result<()> {
        let temporary = self.path.with_extension("compacting");
        let mut text = String::new();
        for entry in ids {
            text.push_str(&format!("{} {}\n", entry.key(), entry.value()));
        }
        let mut file = File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = ids.len();
        self.compacted = self.lines.max(32);
        Ok(())
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let journal = self
            .journal
            .as_ref()
            .map(|journal| journal.lock().map(|j| j.path.clone()).unwrap_or_default());
        f.debug_struct("Revocations")
            .field("len", &self.len())
            .field("journal", &journal)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_journal_survives_a_restart_and_skips_what_it_cannot_read() {
        let path = journal("restart");
        let far = now_secs() + 3600;
        let revocations = Revocations::open_journal(&path).unwrap();
        revocations.revoke("t-1", far).unwrap();
        revocations.revoke("t-old", 1).unwrap();
        assert!(matches!(
            revocations.revoke("two words", far),
            Err(RevocationError::InvalidId)
        ));
        assert!(matches!(
            revocations.revoke("", far),
            Err(RevocationError::InvalidId)
        ));
        drop(revocations);
        // A line damaged by hand, and one written half by a crash.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"garbage\n\xff\xfe 4000000000\nt-crlf 4000000000\r\nt-2 ")
            .unwrap();
        drop(file);
        let again = Revocations::open_journal(&path).unwrap();
        assert!(again.is_revoked("t-1"));
        assert!(
            !again.is_revoked("t-old"),
            "expired entries are not read back"
        );
        // The damaged line, the one that is not UTF-8 and the torn one; a CRLF line is
        // read.
        assert_eq!(again.skipped_lines(), [3, 4, 6]);
        assert!(again.is_revoked("t-crlf"));
        again.revoke("t-3", far).unwrap();
        drop(again);
        let third = Revocations::open_journal(&path).unwrap();
        assert!(third.is_revoked("t-1") && third.is_revoked("t-3"));
    }

    #[test]
    fn a_journal_of_mostly_expired_lines_is_compacted() {
        let path = journal("compact");
        let revocations = Revocations::open_journal(&path).unwrap();
        for n in 0..100 {
            revocations.revoke(&format!("old-{n}"), 1).unwrap();
        }
        let far = now_secs() + 3600;
        revocations.revoke("live", far).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() < 40, "{} lines", text.lines().count());
        assert!(text.contains(&format!("live {far}")));
        drop(revocations);
        assert!(Revocations::open_journal(&path).unwrap().is_revoked("live"));
    }
}
