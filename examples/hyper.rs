//! The smallest stack on plain hyper: nothing here needs axum.
//!
//! ```sh
//! cargo run --example hyper            # serve on 127.0.0.1:3000, print curl commands
//! cargo run --example hyper -- --demo  # serve on a free port, send each request, exit
//! ```
//!
//! Five layers composed in code with `tower::ServiceBuilder` (one concrete type, no
//! boxing) around a `service_fn`, served by hyper-util with the socket peer in every
//! request (`PeerAddr`): audit events to stdout, an address deny list, API keys, the
//! role each route needs, and a per-key quota.

#[path = "common/logging.rs"]
mod logging;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis::api_key::{ApiKeyLayer, GeneratedKey, KeyPrefix, KeyRecord, MemoryKeyStore};
use portcullis::audit::{AuditLayer, FileSink};
use portcullis::core::{AuthMethod, Authentication, PeerAddr};
use portcullis::ip_allowlist::{IpAllowlistLayer, IpRules};
use portcullis::rate_limit::{KeyPart, MissingKey, Quota, RateLimitLayer};
use portcullis::role_router::{Policy, Requirement, RoleRouterLayer, Rule};
use tower::{service_fn, ServiceBuilder, ServiceExt as _};

/// The application: says hello to whoever the layers let in.
async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = Authentication::from_extensions(request.extensions());
    let who = auth
        .get(AuthMethod::ApiKey)
        .map_or("world", |principal| principal.id());
    Ok(Response::new(Full::from(format!("hello, {who}\n"))))
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    let demo = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--demo") => true,
        Some(_) => {
            eprintln!("usage: hyper [--demo]");
            return ExitCode::FAILURE;
        }
    };
    match run(demo).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hyper: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(demo: bool) -> Result<(), Error> {
    // Two keys: a reader and an admin. Only their digests are stored.
    let store = Arc::new(MemoryKeyStore::new());
    let reader = GeneratedKey::generate(&KeyPrefix::default())?;
    store.insert(KeyRecord::new(reader.id(), "reader-app", reader.digest())?.roles(["reader"]))?;
    let admin = GeneratedKey::generate(&KeyPrefix::default())?;
    store.insert(KeyRecord::new(admin.id(), "admin-app", admin.digest())?.roles(["admin"]))?;

    let policy = Policy::builder()
        .rule(Rule::new("/health", Requirement::public()).methods([Method::GET]))
        .rule(
            Rule::new(
                "/reports/**",
                Requirement::authenticated().any_role(["reader", "admin"]),
            )
            .methods([Method::GET]),
        )
        .rule(Rule::new(
            "/admin/**",
            Requirement::authenticated().any_role(["admin"]),
        ))
        .build()?;

    let stack = ServiceBuilder::new()
        .layer(AuditLayer::new().sink(FileSink::to_writer(std::io::stdout()).build()?))
        .layer(IpAllowlistLayer::new(
            IpRules::new().deny("198.51.100.0/24".parse()?),
        ))
        .layer(ApiKeyLayer::new(store).mode(portcullis::api_key::Mode::Optional))
        .layer(RoleRouterLayer::new(policy))
        .layer(
            RateLimitLayer::builder()
                .quota(
                    Quota::new("per-key", "5 per 1m".parse()?)
                        .key([KeyPart::Credential])
                        // The public route has no key to count: let it through
                        // (the default refuses, the safe choice for a private one).
                        .when_key_missing(MissingKey::Skip),
                )
                .build()?,
        )
        .service(service_fn(hello));

    let port = if demo { 0 } else { 3000 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let stack = stack.clone();
            tokio::spawn(async move {
                // The layers find the client's address in the request, as axum's
                // ConnectInfo or tonic's connect info would give it.
                let per_connection = service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    stack.clone().oneshot(request)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(per_connection),
                    )
                    .await;
            });
        }
    });
    eprintln!("hyper: listening on http://{addr}");

    if demo {
        return run_demo(addr, reader.expose_secret(), admin.expose_secret()).await;
    }
    let base = format!("http://{addr}");
    println!("\nTry:");
    println!("  curl {base}/health                                         # 200, public");
    println!(
        "  curl -H 'x-api-key: {}' {base}/reports/q3    # 200, reader",
        reader.expose_secret()
    );
    println!(
        "  curl -H 'x-api-key: {}' {base}/admin/users   # 403, not an admin",
        reader.expose_secret()
    );
    println!(
        "  curl -H 'x-api-key: {}' {base}/admin/users   # 200, admin",
        admin.expose_secret()
    );
    println!("  curl {base}/reports/q3                                     # 401, no key\n");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Sends each request once and checks the answer; any surprise fails the run.
async fn run_demo(addr: SocketAddr, reader: &str, admin: &str) -> Result<(), Error> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let cases: [(&str, &str, Option<&str>, u16); 6] = [
        ("/health", "without a key", None, 200),
        ("/reports/q3", "as the reader", Some(reader), 200),
        ("/admin/users", "as the reader", Some(reader), 403),
        ("/admin/users", "as the admin", Some(admin), 200),
        ("/reports/q3", "without a key", None, 401),
        (
            "/reports/q3",
            "with a malformed key",
            Some("pck_not-a-real-key"),
            401,
        ),
    ];
    let mut surprises = 0;
    for (path, who, key, expected) in cases {
        let mut request = Request::get(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = client.request(request.body(Empty::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        eprintln!("hyper: GET {path} {who}: {status} {}", body.trim());
        if status != StatusCode::from_u16(expected)? {
            eprintln!("hyper: expected {expected}");
            surprises += 1;
        }
    }
    // The reader's quota: 5 a minute, one used above.
    let mut last = StatusCode::OK;
    for _ in 0..5 {
        let request = Request::get(format!("http://{addr}/reports/q3")).header("x-api-key", reader);
        last = client.request(request.body(Empty::new())?).await?.status();
    }
    eprintln!("hyper: the reader's sixth report this minute: {last}");
    if last != StatusCode::TOO_MANY_REQUESTS {
        surprises += 1;
    }
    if surprises > 0 {
        return Err(format!("{surprises} answers were not as expected").into());
    }
    Ok(())
}
