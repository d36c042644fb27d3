//! A gRPC service behind the Portcullis layers, served by tonic over mTLS, and a client
//! that makes one allowed call and meets each refusal as a `tonic::Status`.
//!
//! ```sh
//! cargo run --example grpc
//! ```
//!
//! It writes a development CA, a server certificate, client certificates, an API key
//! file and the stack's configuration (`examples/grpc/grpc.toml`, with its role table
//! `examples/grpc/policy.toml`) into `target/grpc-dev/`, builds the stack with
//! `portcullis::config`, serves it with tonic's own TLS on a free loopback port, runs
//! the calls, prints what each one got, and exits (non-zero if any answer was not the
//! expected one). Audit events go to stdout, the calls to stderr.

mod keys;

#[path = "../common/logging.rs"]
mod logging;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::config::GatewayConfig;
use portcullis::mtls_identity::{DevClient, DevPki};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Code, Request, Status};

use keys::{KeysClient, KeysServer, ListRequest, SignRequest};

const CONFIG: &str = include_str!("grpc.toml");
const POLICY: &str = include_str!("policy.toml");

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("grpc: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What the development setup made.
struct Dev {
    pki: DevPki,
    connector: DevClient,
    stranger: DevClient,
    api_key: String,
}

fn write_dev_setup(dir: &Path) -> Result<Dev, Error> {
    std::fs::create_dir_all(dir)?;
    let pki = DevPki::generate(&["localhost"])?;
    pki.write_to(dir)?;
    let connector = pki.client("connector-7")?;
    // Chained to the same CA, so the TLS handshake accepts it; no connector has it.
    let stranger = pki.client("stranger")?;
    std::fs::write(
        dir.join("connectors.toml"),
        format!(
            "[[connector]]\nid = \"connector-7\"\nroles = [\"signer\", \"key-reader\"]\nthumbprints = [\"{}\"]\n",
            connector.thumbprint()
        ),
    )?;
    // An API key for an approver: authenticated, but neither method is theirs.
    let key = GeneratedKey::generate(&KeyPrefix::default())?;
    let record = KeyRecord::new(key.id(), "approver-app", key.digest())?.roles(["approver"]);
    std::fs::write(dir.join("api-keys.toml"), render_key_record(&record))?;
    std::fs::write(dir.join("grpc.toml"), CONFIG)?;
    std::fs::write(dir.join("policy.toml"), POLICY)?;
    Ok(Dev {
        pki,
        connector,
        stranger,
        api_key: key.expose_secret().to_owned(),
    })
}

async fn run() -> Result<(), Error> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/grpc-dev");
    let dev = write_dev_setup(&dir)?;
    let gateway = GatewayConfig::from_file(dir.join("grpc.toml"))?
        .build()
        .await?;

    // tonic's own TLS: it verifies a client certificate against the CA when one is
    // sent; the mtls-identity layer then binds it to a registered connector.
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            dev.pki.server_cert_pem(),
            dev.pki.server_key_pem(),
        ))
        .client_ca_root(Certificate::from_pem(dev.pki.ca_pem()))
        .client_auth_optional(true);
    let (_health_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(gateway.listen).await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .tls_config(tls)?
        .layer(gateway.layer())
        .add_service(KeysServer::new()?)
        .add_service(health)
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    eprintln!(
        "grpc: serving {} on https://{addr} behind {:?}",
        keys::SERVICE,
        gateway.layer_kinds()
    );

    let connect = |client: Option<&DevClient>, from: &str| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(dev.pki.ca_pem()))
            .domain_name("localhost");
        if let Some(client) = client {
            tls = tls.identity(Identity::from_pem(client.cert_pem(), client.key_pem()));
        }
        let from = from.parse().ok();
        async move {
            let channel: Channel =
                Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?
                    .tls_config(tls)?
                    .local_address(from)
                    .connect()
                    .await?;
            Ok::<_, Error>(KeysClient::new(channel))
        }
    };
    let mut certificate = connect(Some(&dev.connector), "127.0.0.1").await?;
    let mut anonymous = connect(None, "127.0.0.1").await?;
    let mut stranger = connect(Some(&dev.stranger), "127.0.0.1").await?;
    let mut denied = connect(None, "127.0.0.66").await?;
    let sign = || SignRequest {
        key: "default".into(),
        data: b"hello".to_vec(),
    };
    let with_key = |key: &str| -> Result<Request<ListRequest>, Error> {
        let mut request = Request::new(ListRequest {});
        request.metadata_mut().insert("x-api-key", key.parse()?);
        Ok(request)
    };

    let mut report = Report::default();
    // Allowed: connector-7's certificate opens both methods (signer, key-reader).
    let listed = certificate.list(Request::new(ListRequest {})).await;
    report.expect_ok(
        "List with connector-7's certificate",
        listed.map(|r| format!("keys {:?}", r.into_inner().names)),
    );
    let signed = certificate.sign(Request::new(sign())).await;
    report.expect_ok(
        "Sign with connector-7's certificate",
        signed.map(|r| {
            format!(
                "a {}-byte Ed25519 signature",
                r.into_inner().signature.len()
            )
        }),
    );
    // Each refusal, as the Status a gRPC client sees.
    let no_credentials = anonymous.list(Request::new(ListRequest {})).await;
    report.expect_refused(
        "List without credentials",
        no_credentials,
        Code::Unauthenticated,
    );
    let wrong_role = anonymous.list(with_key(&dev.api_key)?).await;
    report.expect_refused(
        "List with an approver's API key",
        wrong_role,
        Code::PermissionDenied,
    );
    let malformed = anonymous.list(with_key("pck_not-a-key")?).await;
    report.expect_refused(
        "List with a malformed API key",
        malformed,
        Code::Unauthenticated,
    );
    let unknown = stranger.list(Request::new(ListRequest {})).await;
    report.expect_refused(
        "List with a certificate no connector registered",
        unknown,
        Code::Unauthenticated,
    );
    let from_denied = denied.list(Request::new(ListRequest {})).await;
    report.expect_refused(
        "List from a denied address",
        from_denied,
        Code::PermissionDenied,
    );
    // The per-caller quota: three a minute, two used above.
    let third = certificate.sign(Request::new(sign())).await;
    report.expect_ok(
        "Sign, the third call this minute",
        third.map(|_| "signed".into()),
    );
    let fourth = certificate.sign(Request::new(sign())).await;
    report.expect_refused(
        "Sign, the fourth call this minute",
        fourth,
        Code::ResourceExhausted,
    );
    report.finish()
}

/// Prints each call's outcome and counts the surprises.
#[derive(Default)]
struct Report {
    surprises: usize,
}

impl Report {
    fn expect_ok(&mut self, what: &str, result: Result<String, Status>) {
        match result {
            Ok(said) => eprintln!("grpc: {what}: OK, {said}"),
            Err(status) => {
                eprintln!(
                    "grpc: {what}: {:?} {} (expected OK)",
                    status.code(),
                    status.message()
                );
                self.surprises += 1;
            }
        }
    }

    fn expect_refused<T>(&mut self, what: &str, result: Result<T, Status>, expected: Code) {
        match result {
            Err(status) if status.code() == expected => {
                eprintln!("grpc: {what}: {:?} \"{}\"", status.code(), status.message());
            }
            Err(status) => {
                eprintln!(
                    "grpc: {what}: {:?} \"{}\" (expected {expected:?})",
                    status.code(),
                    status.message()
                );
                self.surprises += 1;
            }
            Ok(_) => {
                eprintln!("grpc: {what}: OK (expected {expected:?})");
                self.surprises += 1;
            }
        }
    }

    fn finish(self) -> Result<(), Error> {
        match self.surprises {
            0 => Ok(()),
            n => Err(format!("{n} calls were not answered as expected").into()),
        }
    }
}
