//! `portcullis key`: make, list and revoke API keys in a key file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use portcullis_api_key::{
    read_key_file, render_key_record, revoke_in_key_file, GeneratedKey, KeyPrefix, KeyRecord,
};
use portcullis_core::NetworkSet;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a key: print its secret once on stdout, append its record (a digest, never
    /// the secret) to the key file.
    New(Box<NewArgs>),
    /// List the keys in a key file, without digests.
    List {
        /// The key file (TOML).
        #[arg(long)]
        file: PathBuf,
    },
    /// Mark a key revoked in the key file. The file is rewritten (its comments are not
    /// kept); a server reloading the file refuses the key from its next request on.
    Revoke {
        /// The key file (TOML).
        #[arg(long)]
        file: PathBuf,
        /// The key's id.
        id: String,
    },
}

#[derive(Args)]
pub(crate) struct NewArgs {
    /// The key file to append to; created if missing.
    #[arg(long)]
    file: PathBuf,
    /// Who the key belongs to: the principal id its requests get.
    #[arg(long)]
    owner: String,
    /// The key id (default: 12 random characters).
    #[arg(long)]
    id: Option<String>,
    /// The deployment's key prefix.
    #[arg(long, default_value = "pck")]
    prefix: String,
    /// Roles (access levels), comma-separated.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Scopes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// When the key stops working: a duration from now (90d, 12h) or an RFC 3339 time.
    #[arg(long)]
    expires: Option<String>,
    /// When the key starts working: a duration from now or an RFC 3339 time.
    #[arg(long)]
    not_before: Option<String>,
    /// Networks the key may be used from, comma-separated (default: any).
    #[arg(long)]
    networks: Option<String>,
    /// Rate-limit tier.
    #[arg(long)]
    tier: Option<String>,
    /// A label, NAME=VALUE. Repeat for several.
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
}

pub(crate) fn run(command: KeyCommand) -> Result<ExitCode, String> {
    match command {
        KeyCommand::New(args) => new(*args),
        KeyCommand::List { file } => list(&file),
        KeyCommand::Revoke { file, id } => revoke(&file, &id),
    }
}

fn when(flag: &str, text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339(text) {
        return Ok(time);
    }
    let duration: Duration = humantime::parse_duration(text).map_err(|_| {
        format!("--{flag} {text:?} is neither a duration (90d, 12h) nor an RFC 3339 time")
    })?;
    now.checked_add(duration)
        .ok_or_else(|| format!("--{flag} {text:?} is further away than any time can be written"))
}

fn new(args: NewArgs) -> Result<ExitCode, String> {
    let prefix = KeyPrefix::new(&args.prefix).map_err(|e| format!("--prefix: {e}"))?;
    let existing = if args.file.exists() {
        read_key_file(&args.file).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let key = match &args.id {
        Some(id) => GeneratedKey::with_id(&prefix, id),
        None => GeneratedKey::generate(&prefix),
    }
    .map_err(|e| e.to_string())?;
    if existing.iter().any(|record| record.id() == key.id()) {
        return Err(format!(
            "{} already has a key with the id {:?}",
            args.file.display(),
            key.id()
        ));
    }
    let now = SystemTime::now();
    let mut record = KeyRecord::new(key.id(), &args.owner, key.digest())
        .map_err(|e| format!("--owner: {e}"))?
        .roles(args.roles.iter().filter(|r| !r.is_empty()).cloned())
        .scopes(args.scopes.iter().filter(|s| !s.is_empty()).cloned())
        .created(now);
    if let Some(text) = &args.expires {
        record = record.expires(when("expires", text, now)?);
    }
    if let Some(text) = &args.not_before {
        record = record.not_before(when("not-before", text, now)?);
    }
    if let Some(text) = &args.networks {
        let networks: NetworkSet = text.parse().map_err(|e| format!("--networks: {e}"))?;
        record = record.networks(networks);
    }
    if let Some(tier) = &args.tier {
        record = record.tier(tier);
    }
    for label in &args.labels {
        let (name, value) = label
            .split_once('=')
            .ok_or_else(|| format!("--label {label:?} is not NAME=VALUE"))?;
        record = record.label(name, value);
    }

    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.file)
        .map_err(|e| format!("cannot open {}: {e}", args.file.display()))?;
    let separator = if existing.is_empty() { "" } else { "\n" };
    file.write_all(format!("{separator}{}", render_key_record(&record)).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", args.file.display()))?;

    // The secret alone on stdout, so `KEY=$(portcullis key new …)` works; the rest on
    // stderr for the person at the terminal.
    println!("{}", key.expose_secret());
    eprintln!(
        "key {} for {} appended to {}",
        key.id(),
        args.owner,
        args.file.display()
    );
    eprintln!("split form (<secret>/<id>): {}", key.expose_split_secret());
    eprintln!("This is the only time the secret is shown; the file keeps only its digest.");
    Ok(ExitCode::SUCCESS)
}

fn list(file: &PathBuf) -> Result<ExitCode, String> {
    let records = read_key_file(file).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    for record in &records {
        let state = if record.is_revoked() {
            "revoked".to_owned()
        } else if record.expires_at().is_some_and(|end| end <= now) {
            "expired".to_owned()
        } else if record.not_before_time().is_some_and(|start| now < start) {
            "not yet valid".to_owned()
        } else {
            match record.expires_at() {
                Some(end) => format!("active until {}", humantime::format_rfc3339_seconds(end)),
                None => "active".to_owned(),
            }
        };
        println!(
            "{}\towner={}\troles=[{}]\t{state}",
            record.id(),
            record.owner(),
            record.role_list().join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(file: &PathBuf, id: &str) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let source = file.display().to_string();
    let edited = revoke_in_key_file(&source, &text, id).map_err(|e| e.to_string())?;
    // Write a sibling and rename it over the file, so a server reloading at that moment
    // reads either the old file or the new one, never half of one.
    let temporary = file.with_extension("toml.tmp");
    std::fs::write(&temporary, edited)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, file)
        .map_err(|e| format!("cannot replace {}: {e}", file.display()))?;
    eprintln!("key {id} revoked in {}", file.display());
    Ok(ExitCode::SUCCESS)
}
