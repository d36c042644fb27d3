//! The whole stack from one TOML file (feature `config`).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8443"
//!
//! [[layer]]
//! kind = "ip-allowlist"
//! deny = ["198.51.100.0/24"]
//!
//! [[layer]]
//! kind = "rate-limit"
//! [[layer.quota]]
//! name = "per-ip"
//! rate = "100/s"
//! ```
//!
//! [`GatewayConfig::from_file`] reads and checks the file: unknown keys are errors, and
//! every error names the file, the line and the key. [`GatewayConfig::build`] reads the
//! files it names (certificates, key files, policies) and builds the layers, in the
//! order the file lists them: the first `[[layer]]` is the outermost, the first to see a
//! request. [`Gateway::apply`] puts them around an axum `Router`; a host can add layers
//! of its own around or inside that. The complete schema, commented, is
//! `examples/gateway.toml`.

mod admin;
mod body_limit;
mod build;
mod metrics;
mod reload;
mod routes;
mod schema;
mod serve;
mod stack;

use std::fmt;
use std::path::{Path, PathBuf};

use portcullis_core::toml_lines::TomlLines;

pub use build::{AdminSettings, Gateway, TokenRoutes};
pub use reload::ReloadReport;
pub use serve::{GatewayServer, ServeError, ServeSummary};
pub use stack::{BoxError, GatewayBody, GatewayLayer, GatewayService};

/// A configuration problem: where, which key, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or the name given to [`GatewayConfig::parse`]).
    pub source: String,
    /// The 1-based line, where known.
    pub line: Option<usize>,
    /// The key, as a path: `layer[2].quota[0].rate`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.source)?,
            None => write!(f, "{}: ", self.source)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A layer of the file, checked, not yet built.
#[derive(Debug)]
pub(crate) enum LayerConfig {
    IpAllowlist(schema::IpAllowlist),
    MtlsIdentity(schema::MtlsIdentity),
    ApiKey(schema::ApiKey),
    Jwt(schema::Jwt),
    RoleRouter(schema::RoleRouter),
    RateLimit(schema::RateLimit),
    Audit(schema::Audit),
    ExtAuthz(schema::ExtAuthz),
    IdentityHeaders(Box<schema::IdentityHeaders>),
}

/// The layer kinds a `[[layer]]` may name.
pub const LAYER_KINDS: [&str; 9] = [
    "ip-allowlist",
    "mtls-identity",
    "api-key",
    "jwt",
    "role-router",
    "rate-limit",
    "audit",
    "ext-authz",
    "identity-headers",
];

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) kind: &'static str,
    pub(crate) line: usize,
    pub(crate) key: String,
    pub(crate) layer: LayerConfig,
}

/// A configuration file, read and checked. Paths in it are relative to its folder.
#[derive(Debug)]
pub struct GatewayConfig {
    pub(crate) source: String,
    pub(crate) base: PathBuf,
    pub(crate) file: schema::File,
    pub(crate) entries: Vec<Entry>,
}

impl GatewayConfig {
    /// Reads and checks `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read the configuration: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&path.display().to_string(), &text, &base)
    }

    /// Checks `text`; `source` names it in errors, `base` is the folder relative paths
    /// start from.
    pub fn parse(source: &str, text: &str, base: &Path) -> Result<Self, ConfigError> {
        let error_at = |line: Option<usize>, key: String, message: String| ConfigError {
            source: source.to_owned(),
            line,
            key,
            message,
        };
        let lines = TomlLines::new(text);
        let line_of = |span: Option<std::ops::Range<usize>>| span.map(|s| lines.line_at(s.start));
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| error_at(line_of(e.span()), String::new(), e.message().to_owned()))?;
        let file: schema::File = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            error_at(
                line_of(inner.span()),
                clean_path(&key),
                inner.message().to_owned(),
            )
        })?;
        let mut entries = Vec::new();
        for (index, table) in file.layers.iter().enumerate() {
            let line = lines.line_at(table.span().start);
            let key = format!("layer[{index}]");
            // The layer's values lost their spans in the table: the error's line is
            // found again from its key's path.
            let entry = entry(table.get_ref().clone(), &key).map_err(|(key, message)| {
                let at = lines.line_of_error(&key, &message).unwrap_or(line);
                error_at(Some(at), key, message)
            })?;
            entries.push(Entry {
                kind: entry.0,
                line,
                key,
                layer: entry.1,
            });
        }
        Ok(Self {
            source: source.to_owned(),
            base: base.to_owned(),
            file,
            entries,
        })
    }

    /// The layers' kinds, outermost first.
    pub fn layer_kinds(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.kind).collect()
    }

    /// The address to listen on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.file.server.listen
    }

    pub(crate) fn path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        }
    }

    pub(crate) fn error(
        &self,
        line: Option<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            source: self.source.clone(),
            line,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Reads one `[[layer]]` table by its `kind`.
fn entry(
    mut table: toml::Table,
    key: &str,
) -> Result<(&'static str, LayerConfig), (String, String)> {
    let kind = match table.remove("kind") {
        Some(toml::Value::String(kind)) => kind,
        Some(_) => return Err((format!("{key}.kind"), "must be a string".into())),
        None => {
            return Err((
                format!("{key}.kind"),
                format!("missing; one of {}", LAYER_KINDS.join(", ")),
            ))
        }
    };
    fn read<T: serde::de::DeserializeOwned>(
        table: toml::Table,
        key: &str,
    ) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let full = if path.is_empty() || path == "." {
                key.to_owned()
            } else {
                format!("{key}.{path}")
            };
            (full, e.into_inner().message().to_owned())
        })
    }
    let layer = match kind.as_str() {
        "ip-allowlist" => ("ip-allowlist", LayerConfig::IpAllowlist(read(table, key)?)),
        "mtls-identity" => (
            "mtls-identity",
            LayerConfig::MtlsIdentity(read(table, key)?),
        ),
        "api-key" => ("api-key", LayerConfig::ApiKey(read(table, key)?)),
        "jwt" => ("jwt", LayerConfig::Jwt(read(table, key)?)),
        "role-router" => (
            "role-router",
            LayerConfig::RoleRouter(role_router(table, key)?),
        ),
        "rate-limit" => ("rate-limit", LayerConfig::RateLimit(read(table, key)?)),
        "audit" => ("audit", LayerConfig::Audit(read(table, key)?)),
        "ext-authz" => ("ext-authz", LayerConfig::ExtAuthz(read(table, key)?)),
        "identity-headers" => (
            "identity-headers",
            LayerConfig::IdentityHeaders(Box::new(read(table, key)?)),
        ),
        other => {
            return Err((
                format!("{key}.kind"),
                format!("unknown layer {other:?}; one of {}", LAYER_KINDS.join(", ")),
            ))
        }
    };
    Ok(layer)
}

/// A role-router entry: `policy = FILE`, or the policy's own keys inline.
fn role_router(mut table: toml::Table, key: &str) -> Result<schema::RoleRouter, (String, String)> {
    let max_path_len = match table.remove("max_path_len") {
        None => None,
        Some(toml::Value::Integer(bytes)) => Some(
            usize::try_from(bytes)
                .ok()
                .and_then(std::num::NonZeroUsize::new)
                .ok_or_else(|| {
                    (
                        format!("{key}.max_path_len"),
                        format!(
                            "{bytes} is not a length: give a positive number of bytes, e.g. 8192"
                        ),
                    )
                })?,
        ),
        Some(_) => {
            return Err((
                format!("{key}.max_path_len"),
                "a number of bytes, e.g. 8192".into(),
            ))
        }
    };
    let shadow = match table.remove("shadow") {
        None => false,
        Some(toml::Value::Boolean(shadow)) => shadow,
        Some(_) => return Err((format!("{key}.shadow"), "true or false".into())),
    };
    let policy = policy_source(table, key)?;
    Ok(schema::RoleRouter {
        policy,
        max_path_len,
        shadow,
    })
}

fn policy_source(
    mut table: toml::Table,
    key: &str,
) -> Result<schema::PolicySource, (String, String)> {
    match table.remove("policy") {
        Some(toml::Value::String(path)) => match table.keys().next() {
            Some(extra) => Err((
                format!("{key}.{extra}"),
                "the rules are in the policy file; give them there or inline here, not both".into(),
            )),
            None => Ok(schema::PolicySource::File(PathBuf::from(path))),
        },
        Some(_) => Err((format!("{key}.policy"), "must be a file path".into())),
        None if !table.contains_key("rule") => Err((
            format!("{key}.policy"),
            "missing: a policy file, or the rules inline as [[layer.rule]] entries".into(),
        )),
        None => {
            let text = toml::to_string(&table).map_err(|e| (key.to_owned(), e.to_string()))?;
            match portcullis_role_router::parse_policy(key, &text) {
                Ok(_) => Ok(schema::PolicySource::Inline(text)),
                Err(e) => {
                    // Name the rule: count the `[[rule]]` headers before the error's line
                    // in the text the table was written back to.
                    let rule = e.line().map(|line| {
                        text.lines()
                            .take(line)
                            .filter(|l| l.trim() == "[[rule]]")
                            .count()
                    });
                    let path = match rule {
                        Some(n) if n > 0 => format!("{key}.rule[{}]", n - 1),
                        _ => key.to_owned(),
                    };
                    Err((path, e.message().to_owned()))
                }
            }
        }
    }
}

/// `serde_path_to_error` writes `layer[2].quota[0]`; its root is `.`.
fn clean_path(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests;
