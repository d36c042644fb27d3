//! Reading the gateway's files again while it serves: key files, connector files, role
//! tables, allow/deny lists, CRLs and JWKS files.
//!
//! Every file is read and checked before anything is replaced, so a reload with one
//! broken file changes nothing, and the error names that file and line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_api_key::FileKeyStore;
use portcullis_core::NetworkSet;
use portcullis_ip_allowlist::{IpRules, IpRulesHandle};
use portcullis_jwt::JwtHandle;
use portcullis_mtls_identity::{ConnectorRegistry, Crls};
use portcullis_role_router::PolicyHandle;

use super::build::Gateway;
use super::ConfigError;

/// An allow-list layer's networks: inline ones and files.
pub(crate) struct IpLists {
    pub(crate) handle: IpRulesHandle,
    pub(crate) allow: NetworkSet,
    pub(crate) deny: NetworkSet,
    pub(crate) allow_file: Option<PathBuf>,
    pub(crate) deny_file: Option<PathBuf>,
}

/// What a built gateway read from files.
#[derive(Default)]
pub(crate) struct Reloadable {
    pub(crate) key_files: Vec<Arc<FileKeyStore>>,
    pub(crate) connectors: Vec<(PathBuf, ConnectorRegistry)>,
    pub(crate) crls: Vec<(Vec<PathBuf>, Crls)>,
    pub(crate) ip_lists: Vec<IpLists>,
    pub(crate) policies: Vec<(PathBuf, PolicyHandle)>,
    pub(crate) jwt: Vec<JwtHandle>,
    pub(crate) rate_limits: Vec<portcullis_rate_limit::RateLimitHandle>,
    /// The last reload's outcome, for the admin status.
    pub(crate) last: std::sync::Mutex<Option<LastReload>>,
}

/// When the last reload ran, and how it ended.
#[derive(Clone, Debug)]
pub(crate) struct LastReload {
    pub(crate) at: std::time::SystemTime,
    pub(crate) outcome: Result<ReloadReport, String>,
}

/// What a reload loaded: counts, never contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReloadReport {
    /// API keys in force, over every key file.
    pub api_keys: usize,
    /// Connectors registered, over every connector file.
    pub connectors: usize,
    /// Rules, over every role table read from a file.
    pub policy_rules: usize,
    /// Networks on allow and deny lists (inline and from files).
    pub networks: usize,
    /// CRL file sets read.
    pub crl_sets: usize,
}

fn failed(path: &Path, line: Option<usize>, what: &str, message: String) -> ConfigError {
    ConfigError {
        source: path.display().to_string(),
        line,
        key: format!("reload ({what})"),
        message,
    }
}

impl Gateway {
    /// Reads every file the gateway was built from again (key files, connector files,
    /// role tables, allow/deny lists, CRLs, JWKS files) and puts the new contents in
    /// force for the next request. Every file is read and checked first: when one is
    /// missing or broken, nothing changes and the error names the file and line.
    ///
    /// Sessions opened with a key or connector that the new files revoke, remove or
    /// block end too (within the JWT layer's credential cache time, 5 s by default).
    /// The TLS handshake's own CRLs are those read at start; the mTLS identity layer
    /// checks the reloaded ones.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        self.reload_for("api")
    }

    /// [`reload`](Self::reload), noting why in the audit event every audit layer of the
    /// gateway records (`sighup`, `file change`, `admin`, `api`).
    pub(crate) fn reload_for(&self, trigger: &str) -> Result<ReloadReport, ConfigError> {
        let outcome = self.reload_files();
        let event = match &outcome {
            Ok(report) => portcullis_audit::OperationEvent::new("reload", trigger, true)
                .detail("api_keys", report.api_keys)
                .detail("connectors", report.connectors)
                .detail("policy_rules", report.policy_rules)
                .detail("networks", report.networks)
                .detail("crl_sets", report.crl_sets),
            Err(error) => portcullis_audit::OperationEvent::new("reload", trigger, false)
                .detail("error", error.to_string()),
        };
        for (_, layer) in &self.layers {
            if let super::build::Built::Audit(audit) = layer {
                audit.record_operation(&event);
            }
        }
        *self
            .reloadable
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(LastReload {
            at: std::time::SystemTime::now(),
            outcome: outcome.clone().map_err(|e| e.to_string()),
        });
        outcome
    }

    fn reload_files(&self) -> Result<ReloadReport, ConfigError> {
        let files = &self.reloadable;
        // Read and check everything.
        for store in &files.key_files {
            portcullis_api_key::read_key_file(store.path())
                .map_err(|e| failed(store.path(), e.line(), "key file", e.to_string()))?;
        }
        for (path, _) in &files.connectors {
            ConnectorRegistry::open(path)
                .map_err(|e| failed(path, None, "connector file", e.to_string()))?;
        }
        let mut policies = Vec::new();
        for (path, handle) in &files.policies {
            let policy = portcullis_role_router::read_policy(path)
                .map_err(|e| failed(path, e.line(), "role table", e.message().to_owned()))?;
            policies.push((policy, handle));
        }
        let mut rules = Vec::new();
        for lists in &files.ip_lists {
            let read = |inline: &NetworkSet, file: &Option<PathBuf>| match file {
                None => Ok(inline.clone()),
                Some(path) => NetworkSet::from_file(path)
                    .map(|set| inline.networks().chain(set.networks()).collect())
                    .map_err(|e| failed(path, None, "network list", e.to_string())),
            };
            let (allow, deny) = (
                read(&lists.allow, &lists.allow_file)?,
                read(&lists.deny, &lists.deny_file)?,
            );
            rules.push((allow, deny, &lists.handle));
        }
        for (paths, _) in &files.crls {
            Crls::from_files(paths.iter()).map_err(|e| {
                let first = paths.first().map_or(Path::new("-"), PathBuf::as_path);
                failed(first, None, "CRL", e.to_string())
            })?;
        }

        // Put it all in force.
        let mut report = ReloadReport::default();
        for store in &files.key_files {
            report.api_keys += store
                .reload()
                .map_err(|e| failed(store.path(), e.line(), "key file", e.to_string()))?;
        }
        for (path, registry) in &files.connectors {
            registry
                .reload()
                .map_err(|e| failed(path, None, "connector file", e.to_string()))?;
            report.connectors += registry.connectors().len();
        }
        for (policy, handle) in policies {
            report.policy_rules += policy.len();
            handle.replace(policy);
        }
        for (allow, deny, handle) in rules {
            report.networks += allow.range_count() + deny.range_count();
            let mut new = IpRules::new();
            if !allow.is_empty() {
                new = new.allow(allow);
            }
            handle.replace(new.deny(deny));
        }
        for (paths, crls) in &files.crls {
            crls.reload().map_err(|e| {
                let first = paths.first().map_or(Path::new("-"), PathBuf::as_path);
                failed(first, None, "CRL", e.to_string())
            })?;
            report.crl_sets += 1;
        }
        for handle in &files.jwt {
            // JWKS files: on error the keys in use stay; reported, not fatal.
            if let Err(error) = handle.reload_key_files() {
                tracing::error!(%error, "gateway: reloading a JWKS file failed; the keys in use stay");
            }
            // Sessions are asked about their credential again at once.
            handle.clear_account_cache();
        }
        tracing::info!(
            api_keys = report.api_keys,
            connectors = report.connectors,
            policy_rules = report.policy_rules,
            networks = report.networks,
            crl_sets = report.crl_sets,
            "gateway: reloaded its files"
        );
        Ok(report)
    }

    /// Every file a [`reload`](Self::reload) reads, to watch for changes.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let files = &self.reloadable;
        let mut paths: Vec<PathBuf> = files
            .key_files
            .iter()
            .map(|store| store.path().to_owned())
            .chain(files.connectors.iter().map(|(path, _)| path.clone()))
            .chain(files.policies.iter().map(|(path, _)| path.clone()))
            .chain(files.ip_lists.iter().flat_map(|lists| {
                lists
                    .allow_file
                    .iter()
                    .chain(lists.deny_file.iter())
                    .cloned()
            }))
            .chain(
                files
                    .crls
                    .iter()
                    .flat_map(|(paths, _)| paths.iter().cloned()),
            )
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Reloads on every change of a watched file (after `quiet` without further
    /// changes, so an editor's several writes make one reload), and on `SIGHUP` on Unix,
    /// until the returned task is aborted. A failed reload is logged with its file and
    /// line, and the gateway keeps what it had.
    pub fn reload_on_change(
        &self,
        quiet: Duration,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use notify::Watcher as _;
        let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watched = self.watched_files();
        // Folders, not files: editors and `portcullis key` replace files by renaming,
        // which a watch on the file itself would lose.
        let mut directories: Vec<PathBuf> = watched
            .iter()
            .filter_map(|path| path.parent().map(Path::to_owned))
            .collect();
        directories.sort();
        directories.dedup();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| {
                    event
                        .paths
                        .iter()
                        .any(|path| watched.iter().any(|w| same_file(w, path)))
                }) {
                    let _ = changed.send(());
                }
            })
            .map_err(std::io::Error::other)?;
        for directory in &directories {
            let directory = if directory.as_os_str().is_empty() {
                Path::new(".")
            } else {
                directory
            };
            watcher
                .watch(directory, notify::RecursiveMode::NonRecursive)
                .map_err(std::io::Error::other)?;
        }
        #[cfg(unix)]
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let gateway = self.clone();
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                #[cfg(unix)]
                let reason = tokio::select! {
                    Some(()) = changes.recv() => "file change",
                    Some(()) = hangups.recv() => "sighup",
                    else => return,
                };
                #[cfg(not(unix))]
                let reason = match changes.recv().await {
                    Some(()) => "file change",
                    None => return,
                };
                // Let the writes settle: one reload for a burst of changes.
                loop {
                    match tokio::time::timeout(quiet, changes.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                tracing::info!(reason, "gateway: reloading its files");
                if let Err(error) = gateway.reload_for(reason) {
                    tracing::error!(%error, "gateway: the reload failed; everything stays as it was");
                }
            }
        }))
    }
}

/// Whether two paths name one file: compared as written, and canonicalized (a watch
/// event names the absolute path, the configuration may be relative).
fn same_file(watched: &Path, event: &Path) -> bool {
    if watched == event {
        return true;
    }
    let canonical = |path: &Path| {
        let parent = path.parent()?.canonicalize().ok()?;
        Some(parent.join(path.file_name()?))
    };
    canonical(watched).is_some_and(|w| canonical(event).is_some_and(|e| w == e))
}
