//! `portcullis`: the command-line companion of the Portcullis layers.
//!
//! ```text
//! portcullis serve (--config FILE | --dev [--dir DIR] [--fresh]) [--log-format text|json] [--check [--deny-warnings]]
//! portcullis policy check FILE [--deny-warnings]
//! portcullis policy explain FILE METHOD PATH [--auth METHOD]... [--role ROLE]... [--scope SCOPE]...
//! portcullis key new --file KEYS --owner OWNER [--roles R,..] [--expires 90d] [--networks N,..] ...
//! portcullis key list --file KEYS
//! portcullis key revoke --file KEYS ID
//! portcullis audit verify FILE...
//! portcullis token secret --out FILE
//! portcullis token mint --issuer I --audience A --subject S (--secret-file F | --key-file PEM --alg ALG) [--role R]... [--scope S]... [--ttl 10h] [--kid K]
//! portcullis admin reload|status --url URL [--api-key K | --identity PEM] [--cacert CA]
//! portcullis admin lift-ban --url URL --quota Q KEY
//! portcullis admin revoke --url URL --expires-at SECONDS JTI
//! ```

mod admin;
mod audit;
mod gateway;
mod key;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use http::Method;
use portcullis_core::{AuthMethod, Authentication, Principal};
use portcullis_role_router::{normalize, read_policy, Policy};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis: check and explain API security policies, make and revoke API keys, mint development tokens, verify audit logs, drive a running gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: the example key service behind the layers a file describes.
    ///
    /// Stops gracefully on SIGTERM or SIGINT (a second one stops it at once); reloads
    /// its files when they change and on SIGHUP. Exit status: 0 after a clean
    /// shutdown, 1 when the configuration is wrong, 2 when it cannot run or could not
    /// finish (an address in use, audit files it cannot sync, a second signal).
    Serve(ServeArgs),
    /// Role-router policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// API keys in a key file.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Audit logs.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Development JWTs and HMAC secrets.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// A running gateway's admin routes: reload, status, lift a ban, revoke a token.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// The gateway's configuration (see examples/gateway.toml).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    config: Option<PathBuf>,
    /// A development setup (a CA, certificates, an API key, a token secret, a
    /// configuration), made in --dir where missing, with curl commands to try.
    #[arg(long)]
    dev: bool,
    /// Where --dev keeps its files.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "portcullis-dev",
        requires = "dev"
    )]
    dir: PathBuf,
    /// With --dev: make every file anew.
    #[arg(long, requires = "dev")]
    fresh: bool,
    /// The operational log on stderr: text for people, json for a collector.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Check instead of serving: read the configuration and every file it names, build
    /// the layers, lint the role tables, and exit (0 valid, 1 not) without listening.
    #[arg(long)]
    check: bool,
    /// With --check: a role-table warning (a rule that can never match) fails it.
    #[arg(long, requires = "check")]
    deny_warnings: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse a policy file and report rules that can never match.
    ///
    /// Exit status: 0 when the file is valid (warnings are printed), 1 when it is not, or
    /// when it has warnings and --deny-warnings is given.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// Treat lint warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show which rule decides a request, and the decision.
    ///
    /// Exit status: 0 when the request would be allowed, 2 when refused, 1 on errors.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// The policy file (TOML).
    file: PathBuf,
    /// The HTTP method (GET, POST, …).
    method: String,
    /// The request path, as sent (percent-encoded).
    path: String,
    /// An authentication method that succeeded: certificate, api_key or jwt. Repeat for
    /// several. Defaults to api_key when roles or scopes are given.
    #[arg(long = "auth", value_name = "METHOD")]
    auth: Vec<String>,
    /// A role the principals have. Repeat for several.
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// A scope the principals have. Repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let setup = match args.config {
                Some(config) => gateway::Setup::Config(config),
                None => gateway::Setup::Dev {
                    dir: args.dir,
                    fresh: args.fresh,
                },
            };
            if args.check {
                return check_gateway(setup, args.deny_warnings);
            }
            let log = match args.log_format.as_str() {
                "json" => gateway::LogFormat::Json,
                _ => gateway::LogFormat::Text,
            };
            return gateway::run(setup, log);
        }
        Command::Policy(PolicyCommand::Check {
            file,
            deny_warnings,
        }) => check(&file, deny_warnings),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&args),
        Command::Key(command) => key::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Token(command) => token::run(command),
        Command::Admin(command) => admin::run(command),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn load(file: &PathBuf) -> Result<Policy, String> {
    read_policy(file).map_err(|e| e.to_string())
}

fn rule_label(policy: &Policy, index: usize) -> String {
    let line = policy
        .rule_line(index)
        .map(|l| format!(" (line {l})"))
        .unwrap_or_default();
    format!("\"{}\"{line}", policy.rule_name(index).unwrap_or("?"))
}

fn check(file: &PathBuf, deny_warnings: bool) -> Result<ExitCode, String> {
    let policy = load(file)?;
    let findings = policy.lint();
    for finding in &findings {
        println!(
            "warning: rule {} can never match: rule {} before it covers every request it would match",
            rule_label(&policy, finding.rule),
            rule_label(&policy, finding.by),
        );
    }
    println!(
        "{}: {} rules, {} warning(s)",
        file.display(),
        policy.len(),
        findings.len()
    );
    if deny_warnings && !findings.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `portcullis serve --check`: the gateway built as it would serve, its role tables
/// linted; nothing listens.
fn check_gateway(setup: gateway::Setup, deny_warnings: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let (path, _, built) = match runtime.block_on(gateway::load(setup, false)) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    println!(
        "{}: valid: layers {:?}, listening on {}{}",
        path.display(),
        built.layer_kinds(),
        built.listen,
        if built.tls.is_some() { " with TLS" } else { "" }
    );
    let mut warnings = 0;
    for (source, policy) in built.policies() {
        let findings = policy.lint();
        for finding in &findings {
            println!(
                "warning: {source}: rule {} can never match: rule {} before it covers every request it would match",
                rule_label(&policy, finding.rule),
                rule_label(&policy, finding.by),
            );
        }
        println!(
            "{source}: {} rules, {} warning(s)",
            policy.len(),
            findings.len()
        );
        warnings += findings.len();
    }
    if deny_warnings && warnings > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn explain(args: &ExplainArgs) -> Result<ExitCode, String> {
    let policy = load(&args.file)?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", args.method))?;
    let mut methods = Vec::new();
    for name in &args.auth {
        methods.push(name.parse::<AuthMethod>().map_err(|e| e.to_string())?);
    }
    if methods.is_empty() && (!args.roles.is_empty() || !args.scopes.is_empty()) {
        methods.push(AuthMethod::ApiKey);
    }
    let mut auth = Authentication::new();
    for method in &methods {
        let principal = Principal::builder("explain", *method)
            .roles(args.roles.iter().cloned())
            .scopes(args.scopes.iter().cloned())
            .build();
        auth.insert(principal)
            .map_err(|_| format!("--auth {} is given twice", method.as_str()))?;
    }

    let path = match normalize(&args.path) {
        Ok(path) => path,
        Err(why) => {
            println!("decision: deny 400 ambiguous_path: {why}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("request:  {method} {path}");
    let who: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    println!(
        "as:       {}",
        if who.is_empty() {
            "anonymous".to_owned()
        } else {
            format!(
                "{} with roles [{}] and scopes [{}]",
                who.join(" + "),
                args.roles.join(", "),
                args.scopes.join(", ")
            )
        }
    );
    let verdict = policy.decide(&method, &path, &auth);
    match verdict.rule {
        Some(index) => println!(
            "rule:     {}: {}",
            rule_label(&policy, index),
            policy.describe_rule(index).unwrap_or_default()
        ),
        None => println!("rule:     none matches; the policy's default applies"),
    }
    match verdict.result {
        Ok(()) => {
            println!("decision: allow");
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) if refusal.is_unauthenticated() => {
            println!("decision: deny 401 unauthenticated: {refusal}");
            Ok(ExitCode::from(2))
        }
        Err(refusal) => {
            println!("decision: deny 403 forbidden: {refusal}");
            Ok(ExitCode::from(2))
        }
    }
}
