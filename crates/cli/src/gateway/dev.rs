//! The development setup of `portcullis serve --dev` (and `cargo run --example
//! gateway`): a CA, server and client certificates, an API key, a token secret, the key
//! that signs identity assertions, the example configuration and its role table, made
//! where missing and kept otherwise; and the example upstream's route.

use std::path::{Path, PathBuf};

use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::core::{AuthMethod, Principal};
use portcullis::mtls_identity::DevPki;

// Symbolic links to examples/gateway.toml and examples/gateway-policy.toml: one copy in
// the repository, and `cargo package` copies their contents into the published crate.
const CONFIG: &str = include_str!("gateway.toml");
const POLICY: &str = include_str!("gateway-policy.toml");

/// The file that holds the key signing identity assertions for the example upstream.
const ASSERTION_KEY_FILE: &str = "assertion-ed25519.pem";
/// That key's id, in the assertions' headers.
const ASSERTION_KEY_ID: &str = "development-gateway";

/// What the development setup made, for the printed commands.
pub(crate) struct DevSetup {
    dir: PathBuf,
    /// The API key's secret, when it was made now (only its digest is kept).
    api_key: Option<String>,
    token: String,
    /// Verifies the identity assertions the gateway signs, for the example upstream.
    pub(crate) assertion_key: portcullis::jwt::VerifyingKey,
    /// Where the example upstream listens, once it does.
    pub(crate) example_upstream: Option<std::net::SocketAddr>,
}

impl DevSetup {
    pub(crate) fn print_commands(&self, port: u16) {
        let dir = self.dir.display();
        let base = format!("https://localhost:{port}");
        let ca = format!("--cacert {dir}/ca.pem");
        println!("\nTry (each succeeds):");
        println!("  curl {ca} --cert {dir}/connector-7.pem {base}/v1/key");
        match &self.api_key {
            Some(key) => println!("  curl {ca} -H 'x-api-key: {key}' -X POST -H 'content-type: application/json' -d '{{\"name\":\"k2\"}}' {base}/v1/key"),
            None => println!("  (the API key was printed when it was made; another: portcullis key new --file {dir}/api-keys.toml --owner you --roles key-admin)"),
        }
        println!("  curl {ca} -H 'authorization: Bearer {}' -X POST -H 'content-type: application/json' -d '{{\"key\":\"default\",\"data\":\"aGVsbG8=\"}}' {base}/v1/sign", self.token);
        println!("  curl {ca} --cert {dir}/connector-7.pem -X POST {base}/v1/token");
        println!("Refused (401, no credentials):");
        println!("  curl {ca} {base}/v1/key");
        if let Some(upstream) = self.example_upstream {
            println!("Through the gateway to the example upstream (http://{upstream}), which answers what it was told about the caller (the client's own x-caller-id is removed, and so are the credentials the gateway checked):");
            println!("  curl {ca} --cert {dir}/connector-7.pem -H 'x-caller-id: root' '{base}/echo/orders?page=2'");
            println!(
                "  curl {ca} -H 'authorization: Bearer {}' -X POST -d 'hello' {base}/echo/orders",
                self.token
            );
            if let Some(key) = &self.api_key {
                println!("  curl {ca} -H 'x-api-key: {key}' {base}/echo/orders/7");
            }
            println!("Refused (401) by the example upstream itself, around the gateway (no signed assertion):");
            println!("  curl -H 'x-caller-id: connector-7' http://{upstream}/orders");
        }
        println!();
    }

    /// The gateway file's entries for the example upstream, as the development setup
    /// adds them to what it reads (never to the file): the caller's identity in plain
    /// headers and in a signed assertion, and `/echo` forwarded to `upstream`.
    pub(crate) fn example_upstream_config(upstream: std::net::SocketAddr) -> String {
        use super::echo::{ASSERTION_AUDIENCE, ASSERTION_HEADER, ASSERTION_ISSUER, ASSERTION_TYPE};
        format!(
            r#"

# Added by the development setup for its example upstream (not written to the file).
[[layer]]
kind = "identity-headers"
principal_header = "x-caller-id"
method_header = "x-caller-method"
credential_header = "x-caller-credential"
roles_header = "x-caller-roles"
scopes_header = "x-caller-scopes"
client_ip_header = "x-caller-ip"
[layer.assertion]
header = "{ASSERTION_HEADER}"
issuer = "{ASSERTION_ISSUER}"
audience = "{ASSERTION_AUDIENCE}"
token_type = "{ASSERTION_TYPE}"
private_key_file = "{ASSERTION_KEY_FILE}"
algorithm = "EdDSA"
key_id = "{ASSERTION_KEY_ID}"

[[route]]
path = "/echo"
upstream = "http://{upstream}"
strip_prefix = true
"#
        )
    }
}

/// Makes what is missing of the development setup in `dir` (everything with `fresh`),
/// and keeps the rest: the CA and certificates together, the key file, the token
/// secret, the configuration and the role table each on their own.
pub(crate) fn write_dev_setup(
    dir: &Path,
    fresh: bool,
) -> Result<DevSetup, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let missing = |names: &[&str]| fresh || names.iter().any(|name| !dir.join(name).exists());
    let pki_files = [
        "ca.pem",
        "server.pem",
        "server.key",
        "connector-7.pem",
        "connectors.toml",
    ];
    if missing(&pki_files) {
        let pki = DevPki::generate(&["localhost", "127.0.0.1"])?;
        pki.write_to(dir)?;
        let connector = pki.client("connector-7")?;
        connector.write_to(dir, "connector-7")?;
        std::fs::write(
            dir.join("connectors.toml"),
            format!(
                "# Registered connectors and their certificates' thumbprints.\n[[connector]]\nid = \"connector-7\"\nroles = [\"signer\", \"key-reader\"]\nthumbprints = [\"{}\"]\n",
                connector.thumbprint()
            ),
        )?;
    }

    let api_key = if missing(&["api-keys.toml"]) {
        let key = GeneratedKey::generate(&KeyPrefix::default())?;
        let record = KeyRecord::new(key.id(), "partner-acme", key.digest())?.roles(["key-admin"]);
        std::fs::write(dir.join("api-keys.toml"), render_key_record(&record))?;
        Some(key.expose_secret().to_owned())
    } else {
        None
    };

    let secret = if missing(&["token.secret"]) {
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret)?;
        let secret_text = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        };
        write_private(&dir.join("token.secret"), &secret_text)?;
        secret.to_vec()
    } else {
        portcullis::jwt::read_secret_file(&dir.join("token.secret"))?
    };
    if missing(&[ASSERTION_KEY_FILE]) {
        write_private(&dir.join(ASSERTION_KEY_FILE), &ed25519_pem()?)?;
    }
    let assertion_key =
        portcullis::jwt::SigningKey::ed_pem(&std::fs::read(dir.join(ASSERTION_KEY_FILE))?)?
            .with_kid(ASSERTION_KEY_ID)
            .verifying_key();
    if missing(&["policy.toml"]) {
        std::fs::write(dir.join("policy.toml"), POLICY)?;
    }
    if missing(&["gateway.toml"]) {
        std::fs::write(dir.join("gateway.toml"), CONFIG)?;
    }

    // A token as the issue route would give connector-7, to paste.
    let signing = portcullis::jwt::SigningKey::hmac(
        portcullis::jwt::jsonwebtoken::Algorithm::HS256,
        &secret,
    )?;
    let issuer = portcullis::jwt::TokenIssuer::new(signing, "https://gateway.local", "hsm")?;
    let principal = Principal::builder("connector-7", AuthMethod::Certificate)
        .roles(["signer", "key-reader"])
        .build();
    let token = issuer.issue(&principal, None)?.expose().to_owned();
    Ok(DevSetup {
        dir: dir.to_owned(),
        api_key,
        token,
        assertion_key,
        example_upstream: None,
    })
}

/// A new Ed25519 private key, PKCS #8 in PEM.
fn ed25519_pem() -> Result<String, Box<dyn std::error::Error>> {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let document = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| "cannot make an Ed25519 key")?;
    Ok(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        document.as_ref(),
    )))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
