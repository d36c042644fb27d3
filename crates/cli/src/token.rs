//! `portcullis token`: development tokens and HMAC secrets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::{Args, Subcommand};
use portcullis_core::{AuthMethod, Principal};
use portcullis_jwt::jsonwebtoken::Algorithm;
use portcullis_jwt::{SigningKey, TokenIssuer};

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Write a new random HMAC secret (64 bytes, base64url) to a file only the owner can
    /// read. Give the same file to `token mint --secret-file` and to the server.
    Secret {
        /// The file to create; an existing file is not overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a development token and print it on stdout.
    Mint(Box<MintArgs>),
}

#[derive(Args)]
pub(crate) struct MintArgs {
    /// The issuer (`iss`), as the server's issuer is configured.
    #[arg(long)]
    issuer: String,
    /// The audience (`aud`).
    #[arg(long)]
    audience: String,
    /// The subject (`sub`): the principal id the server will see.
    #[arg(long)]
    subject: String,
    /// A role. Repeat or separate with commas.
    #[arg(long = "role", value_delimiter = ',')]
    roles: Vec<String>,
    /// A scope. Repeat or separate with commas.
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// How long the token lasts (10h, 15m, 7d).
    #[arg(long, default_value = "10h")]
    ttl: String,
    /// Sign with the HMAC secret in this file (from `token secret`).
    #[arg(long, conflicts_with = "key_file")]
    secret_file: Option<PathBuf>,
    /// Sign with the private key in this PEM file (RSA, EC or Ed25519, PKCS#8).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The algorithm: HS256 (the default with --secret-file), RS256, PS256, ES256,
    /// ES384, EdDSA, …
    #[arg(long)]
    alg: Option<String>,
    /// The key id (`kid`) the server's key set names the key by.
    #[arg(long)]
    kid: Option<String>,
}

pub(crate) fn run(command: TokenCommand) -> Result<ExitCode, String> {
    match command {
        TokenCommand::Secret { out } => secret(&out),
        TokenCommand::Mint(args) => mint(&args),
    }
}

fn secret(out: &Path) -> Result<ExitCode, String> {
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).map_err(|e| format!("the system random source failed: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    writeln!(file, "{}", URL_SAFE_NO_PAD.encode(bytes))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote a 64-byte HMAC secret to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads a secret written by `token secret` (base64url), or standard base64.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    portcullis_jwt::read_secret_file(path)
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>().map_err(|_| {
        format!("{name:?} is not an algorithm: use HS256, RS256, PS256, ES256, ES384 or EdDSA")
    })
}

fn mint(args: &MintArgs) -> Result<ExitCode, String> {
    let ttl: Duration =
        humantime::parse_duration(&args.ttl).map_err(|e| format!("--ttl {:?}: {e}", args.ttl))?;
    let key = match (&args.secret_file, &args.key_file) {
        (Some(path), None) => {
            let alg = algorithm(args.alg.as_deref().unwrap_or("HS256"))?;
            SigningKey::hmac(alg, &read_secret(path)?).map_err(|e| e.to_string())?
        }
        (None, Some(path)) => {
            let Some(name) = &args.alg else {
                return Err("--key-file needs --alg (RS256, PS256, ES256, ES384 or EdDSA)".into());
            };
            let alg = algorithm(name)?;
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match name.as_str() {
                "EdDSA" => SigningKey::ed_pem(&pem),
                n if n.starts_with("ES") => SigningKey::ec_pem(alg, &pem),
                _ => SigningKey::rsa_pem(alg, &pem),
            }
            .map_err(|e| e.to_string())?
        }
        _ => return Err("give --secret-file or --key-file".into()),
    };
    let key = match &args.kid {
        Some(kid) => key.with_kid(kid.as_str()),
        None => key,
    };
    let issuer = TokenIssuer::new(key, args.issuer.clone(), args.audience.clone())
        .map_err(|e| e.to_string())?
        .lifetime(ttl);
    let principal = Principal::builder(args.subject.clone(), AuthMethod::Jwt)
        .roles(args.roles.iter().cloned())
        .scopes(args.scopes.iter().cloned())
        .build();
    let token = issuer.issue(&principal, None).map_err(|e| e.to_string())?;
    println!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}
