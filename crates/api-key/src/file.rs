//! Key records in a TOML file, reloadable while serving.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_core::toml_lines::TomlLines;
use portcullis_core::NetworkSet;
use serde::Deserialize;

use crate::key::KeyDigest;
use crate::record::{KeyRecord, StoredKey};
use crate::store::{KeyStore, Lookup, MemoryKeyStore};

/// Parses a key file: TOML with one `[[key]]` table per record, holding digests and
/// never secrets.
///
/// ```toml
/// [[key]]
/// id = "4fT9kQ2mZx1B"
/// owner = "partner-acme"
/// digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// roles = ["key-reader"]                # the key's access levels
/// scopes = ["keys:read"]
/// created = "2026-11-01T09:00:00Z"      # RFC 3339, UTC
/// not_before = "2026-11-01T09:00:00Z"
/// expires = "2027-02-01T09:00:00Z"
/// revoked = false
/// networks = ["203.0.113.0/24"]         # only usable from these networks
/// tier = "gold"                         # rate-limit tier
/// labels = { ticket = "OPS-1234" }
/// ```
///
/// Only `id`, `owner` and `digest` are required. Unknown keys are errors, so a typo
/// such as `expire` cannot silently make a key immortal. Errors name the line.
pub fn parse_key_file(source: &str, text: &str) -> Result<Vec<KeyRecord>, KeyFileError> {
    let lines = TomlLines::new(text);
    let file: KeyFile = toml::from_str(text).map_err(|error| KeyFileError {
        source: source.to_owned(),
        line: error.span().map(|span| lines.line_at(span.start)),
        message: error.message().to_owned(),
    })?;
    let mut records = Vec::with_capacity(file.key.len());
    let mut seen = std::collections::HashSet::new();
    for (index, spanned) in file.key.into_iter().enumerate() {
        let line = lines.line_at(spanned.span().start);
        // The line of the field at fault, when the file has it.
        let error = |(field, message): (&str, String)| KeyFileError {
            source: source.to_owned(),
            line: lines
                .line_of(&format!("key[{index}].{field}"))
                .or(Some(line)),
            message,
        };
        let entry = spanned.into_inner();
        if !seen.insert(entry.id.clone()) {
            return Err(error((
                "id",
                format!("two keys have the id {:?}", entry.id),
            )));
        }
        records.push(entry.into_record().map_err(error)?);
    }
    Ok(records)
}

/// Reads a key file (see [`parse_key_file`]).
pub fn read_key_file(path: impl AsRef<Path>) -> Result<Vec<KeyRecord>, KeyFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| KeyFileError {
        source: path.display().to_string(),
        line: None,
        message: format!("cannot read: {error}"),
    })?;
    parse_key_file(&path.display().to_string(), &text)
}

/// One record as a `[[key]]` table, the inverse of [`parse_key_file`]; for appending a
/// new key to a file.
pub fn render_key_record(record: &KeyRecord) -> String {
    use toml_edit::{value, Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table};
    let list = |items: &mut dyn Iterator<Item = String>| value(items.collect::<Array>());
    let mut key = Table::new();
    key.insert("id", value(record.id()));
    key.insert("owner", value(record.owner()));
    key.insert("digest", value(record.digest().to_string()));
    if !record.role_list().is_empty() {
        key.insert("roles", list(&mut record.role_list().iter().cloned()));
    }
    if !record.scope_list().is_empty() {
        key.insert("scopes", list(&mut record.scope_list().iter().cloned()));
    }
    let times = [
        ("created", record.created_at()),
        ("not_before", record.not_before_time()),
        ("expires", record.expires_at()),
    ];
    for (name, time) in times {
        if let Some(time) = time {
            key.insert(
                name,
                value(humantime::format_rfc3339_seconds(time).to_string()),
            );
        }
    }
    if record.is_revoked() {
        key.insert("revoked", value(true));
    }
    if let Some(networks) = record.network_set() {
        key.insert(
            "networks",
            list(&mut networks.networks().map(|n| n.to_string())),
        );
    }
    if let Some(tier) = record.tier_name() {
        key.insert("tier", value(tier));
    }
    if !record.labels().is_empty() {
        let labels: InlineTable = record
            .labels()
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str()))
            .collect();
        key.insert("labels", value(labels));
    }
    let mut keys = ArrayOfTables::new();
    keys.push(key);
    let mut document = DocumentMut::new();
    document.insert("key", Item::ArrayOfTables(keys));
    document.to_string()
}

/// `text`, a key file, with the key `id` marked `revoked = true`, and everything else
/// as it was: comments, blank lines, the order and layout of keys (`toml_edit`). The
/// file is read with [`parse_key_file`] before and after the edit, so a file with an
/// error, or an edit that would make one, is refused rather than written.
///
/// ```
/// use portcullis_api_key::{parse_key_file, revoke_in_key_file};
///
/// let text = "# partner keys\n[[key]]\nid = \"acme-1\"  # rotated 2026-11\nowner = \"acme\"\n\
///             digest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n";
/// let revoked = revoke_in_key_file("keys.toml", text, "acme-1")?;
/// assert!(revoked.starts_with("# partner keys\n"));
/// assert!(revoked.contains("# rotated 2026-11"));
/// assert!(parse_key_file("keys.toml", &revoked)?[0].is_revoked());
/// # Ok::<(), portcullis_api_key::KeyFileError>(())
/// ```
pub fn revoke_in_key_file(source: &str, text: &str, id: &str) -> Result<String, KeyFileError> {
    parse_key_file(source, text)?;
    let error = |message: String| KeyFileError {
        source: source.to_owned(),
        line: None,
        message,
    };
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| error(e.message().to_owned()))?;
    // `parse_key_file` accepted the file, so `key` is an array of tables (or an array of
    // inline tables) and ids are unique.
    let marked = match document.get_mut("key") {
        Some(toml_edit::Item::ArrayOfTables(keys)) => keys
            .iter_mut()
            .find(|key| key.get("id").and_then(|v| v.as_str()) == Some(id))
            .map(|key| key.insert("revoked", toml_edit::value(true)))
            .is_some(),
        Some(toml_edit::Item::Value(toml_edit::Value::Array(keys))) => keys
            .iter_mut()
            .filter_map(toml_edit::Value::as_inline_table_mut)
            .find(|key| key.get("id").and_then(|v| v.as_str()) == Some(id))
            .map(|key| key.insert("revoked", true.into()))
            .is_some(),
        _ => false,
    };
    if !marked {
        return Err(error(format!("no key with the id {id:?}")));
    }
    let edited = document.to_string();
    let after = parse_key_file(source, &edited)?;
    if !after
        .iter()
        .any(|record| record.id() == id && record.is_revoked())
    {
        return Err(error(format!("the key {id:?} could not be marked revoked")));
    }
    Ok(edited)
}

/// An error in a key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileError {
    source: String,
    line: Option<usize>,
    message: String,
}

impl KeyFileError {
    /// The line the error is on, when it is known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// A [`MemoryKeyStore`] loaded from a key file, reloaded on demand.
///
/// [`reload`](Self::reload) re-reads the file and swaps the records in at once; a file
/// with an error leaves the records in force unchanged. Revoke a key by setting
/// `revoked = true` in the file (`portcullis key revoke`) and reloading: the next
/// request with it is refused.
///
/// ```no_run
/// use std::sync::Arc;
/// use portcullis_api_key::{ApiKeyLayer, FileKeyStore};
///
/// let store = Arc::new(FileKeyStore::open("keys.toml")?);
/// let layer = ApiKeyLayer::new(store.clone());
/// // Later, for example on SIGHUP:
/// store.reload()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileKeyStore {
    path: PathBuf,
    keys: MemoryKeyStore,
}

impl FileKeyStore {
    /// Reads the key file at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, KeyFileError> {
        let path = path.into();
        let records = read_key_file(&path)?;
        let keys = MemoryKeyStore::new();
        keys.replace_all(records).map_err(|error| KeyFileError {
            source: path.display().to_string(),
            line: None,
            message: error.to_string(),
        })?;
        Ok(Self { path, keys })
    }

    /// Re-reads the file; the number of records now in force.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let records = read_key_file(&self.path)?;
        self.keys
            .replace_all(records)
            .map_err(|error| KeyFileError {
                source: self.path.display().to_string(),
                line: None,
                message: error.to_string(),
            })?;
        Ok(self.keys.len())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `id`.
    pub fn get(&self, id: &str) -> Option<Arc<StoredKey>> {
        self.keys.get(id)
    }

    /// How many records are in force.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no record is in force.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyStore for FileKeyStore {
    fn find(&self, id: &str) -> Lookup {
        self.keys.find(id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<toml::Spanned<KeyEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    owner: String,
    digest: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    created: Option<String>,
    not_before: Option<String>,
    expires: Option<String>,
    #[serde(default)]
    revoked: bool,
    networks: Option<Vec<String>>,
    tier: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl KeyEntry {
    /// The record, or the field at fault and why.
    fn into_record(self) -> Result<KeyRecord, (&'static str, String)> {
        let id = self.id;
        let digest = KeyDigest::parse(&self.digest)
            .map_err(|error| ("digest", format!("key {id:?}: {error}")))?;
        let mut record = KeyRecord::new(id.clone(), self.owner, digest)
            .map_err(|error| ("id", format!("key {id:?}: {error}")))?
            .roles(self.roles)
            .scopes(self.scopes)
            .revoked(self.revoked);
        let time = |field: &'static str,
                    text: &str|
         -> Result<SystemTime, (&'static str, String)> {
            humantime::parse_rfc3339(text).map_err(|error| {
                (field, format!("key {id:?}: {field} {text:?} is not an RFC 3339 UTC time such as 2027-01-31T12:00:00Z ({error})"))
            })
        };
        if let Some(text) = &self.created {
            record = record.created(time("created", text)?);
        }
        if let Some(text) = &self.not_before {
            record = record.not_before(time("not_before", text)?);
        }
        if let Some(text) = &self.expires {
            record = record.expires(time("expires", text)?);
        }
        if let Some(networks) = self.networks {
            let set = NetworkSet::parse_list(&format!("key {id:?} networks"), &networks.join("\n"))
                .map_err(|error| ("networks", error.to_string()))?;
            if set.is_empty() {
                return Err((
                    "networks",
                    format!("key {id:?}: networks is empty; leave it out to allow every network"),
                ));
            }
            record = record.networks(set);
        }
        if let Some(tier) = self.tier {
            record = record.tier(tier);
        }
        for (name, value) in self.labels {
            record = record.label(name, value);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{GeneratedKey, KeyPrefix};
    use std::time::Duration;

    fn record() -> (GeneratedKey, KeyRecord) {
        let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
        let at = humantime::parse_rfc3339("2026-11-01T09:00:00Z").unwrap();
        let record = KeyRecord::new(key.id(), "partner \"acme\"", key.digest())
            .unwrap()
            .roles(["key-reader", "ops"])
            .scopes(["keys:read"])
            .created(at)
            .not_before(at)
            .expires(at + Duration::from_secs(86_400))
            .revoked(true)
            .networks("203.0.113.0/24, 2001:db8::/32".parse().unwrap())
            .tier("gold")
            .label("ticket", "OPS-1");
        (key, record)
    }

    #[test]
    fn rendered_records_parse_back_to_themselves() {
        let (_, record) = record();
        let text = render_key_record(&record);
        let parsed = parse_key_file("keys.toml", &text).unwrap();
        assert_eq!(parsed, vec![record]);
    }

    #[test]
    fn the_file_never_holds_the_secret() {
        let (key, record) = record();
        let text = render_key_record(&record);
        let secret_part = &key.expose_secret()[key.expose_secret().len() - 38..];
        assert!(!text.contains(secret_part));
    }

    #[test]
    fn errors_name_the_line_and_the_fault() {
        let (_, record) = record();
        let good = render_key_record(&record);
        let cases = [
            (format!("# keys\n{}expire = \"2027-01-01T00:00:00Z\"\n", good), "expire"),
            (good.replace("digest = \"sha256:", "digest = \"md5:"), "sha256"),
            (good.replace("2026-11-02T09:00:00Z", "tomorrow"), "RFC 3339"),
            (good.replace("203.0.113.0/24", "203.0.113.1/24"), "host bits"),
            (format!("{good}\n{good}"), "two keys"),
            ("[[key]]\nid = \"a\"\n".to_owned(), "missing field"),
            ("[[key]]\nid = \"a b\"\nowner = \"o\"\ndigest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n".to_owned(), "key id"),
        ];
        for (text, expected) in cases {
            let error = parse_key_file("keys.toml", &text).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} should mention {expected}"
            );
            assert!(error.line().is_some(), "{error} should name a line");
        }
        let error =
            parse_key_file("keys.toml", &format!("# keys\n{}expire = 1\n", good)).unwrap_err();
        assert_eq!(error.line(), Some(2 + good.lines().count()));

        // A value the record refuses: the line of its own key, not of `[[key]]`.
        let line_of = |text: &str, key: &str| {
            1 + text.lines().position(|line| line.starts_with(key)).unwrap()
        };
        for (text, key) in [
            (
                good.replace("digest = \"sha256:", "digest = \"md5:"),
                "digest =",
            ),
            (
                good.replace("203.0.113.0/24", "203.0.113.1/24"),
                "networks =",
            ),
            (
                good.replace("2026-11-02T09:00:00Z", "tomorrow"),
                "expires =",
            ),
        ] {
            // The second key has an id of its own.
            let id = record.id();
            let other: String = id.chars().rev().collect();
            let text = format!(
                "# keys\n{good}\n{}",
                text.replace(&format!("id = \"{id}\""), &format!("id = \"{other}\""))
            );
            let error = parse_key_file("keys.toml", &text).unwrap_err();
            let in_second = line_of(&text[text.rfind("[[key]]").unwrap()..], key);
            let expected = text[..text.rfind("[[key]]").unwrap()].lines().count() + in_second;
            assert_eq!(error.line(), Some(expected), "{error}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_store() {
        assert!(parse_key_file("keys.toml", "").unwrap().is_empty());
    }
}
