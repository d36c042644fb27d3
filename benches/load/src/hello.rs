//! The handler every target of a run shares: hello world at `GET /` and at
//! `GET /v1/key/default` (the path the layers judge), served the way the gateway
//! example serves (`axum::serve`, a multi-threaded Tokio runtime, the peer address as
//! connect info), with nothing in front, with a stack built from a gateway file
//! (`Gateway::apply`, as the gateway does), or with one of the peer crates. A gateway
//! file with `[[route]]`s serves no handler of its own: it forwards every request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

/// Our stack, or a peer crate, in front of the handler.
#[derive(Clone, Debug)]
pub(crate) enum Front {
    /// Nothing: bare axum.
    Nothing,
    /// The layers of a gateway file.
    Gateway(PathBuf),
    /// `tower_governor` 0.8, a per-address GCRA quota that is never reached.
    TowerGovernor,
    /// tower-http 0.6's `ValidateRequestHeaderLayer::bearer` with this token.
    TowerHttpBearer(String),
    /// `jwt-authorizer` 0.15 with the RS256 key set in this file, issuer
    /// [`crate::setup::IDP`], audience `hsm`.
    JwtAuthorizer(PathBuf),
}

const HELLO: &str = "Hello, World!";
const ROUTE: &str = "/v1/key/default";

/// Serves hello world behind `front` on `listen` until killed, with `axum::serve` or,
/// with `serve_loop`, Portcullis's own serve loop (the one `portcullis serve` uses).
pub(crate) fn serve(listen: SocketAddr, front: Front, serve_loop: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting Tokio: {e}"))?;
    runtime.block_on(async move {
        let app = app(front).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("hello: listening on http://{addr}");
        if serve_loop {
            portcullis::mtls_identity::serve_hyper_with(
                listener,
                app,
                portcullis::mtls_identity::ServeLimits::default(),
            )
            .await;
            return Ok(());
        }
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .map_err(|e| format!("serving: {e}"))
    })
}

async fn app(front: Front) -> Result<Router, String> {
    let hello = || {
        Router::new()
            .route("/", get(|| async { HELLO }))
            .route(ROUTE, get(|| async { HELLO }))
    };
    Ok(match front {
        Front::Nothing => hello(),
        Front::Gateway(path) => {
            let gateway = portcullis::config::GatewayConfig::from_file(&path)
                .map_err(|e| e.to_string())?
                .build()
                .await
                .map_err(|e| e.to_string())?;
            // With `[[route]]`s it forwards every request, as `portcullis serve` does.
            let own = match gateway.has_routes() {
                true => Router::new(),
                false => hello(),
            };
            // The gateway is kept alive for its background tasks (key refresh, audit).
            let app = gateway.apply(own);
            std::mem::forget(gateway);
            app
        }
        Front::TowerGovernor => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(1_000_000)
                .finish()
                .ok_or("tower_governor: a bad quota")?;
            hello().layer(tower_governor::GovernorLayer::new(Arc::new(config)))
        }
        Front::TowerHttpBearer(token) => {
            #[allow(deprecated)]
            let layer = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&token);
            hello().layer(layer)
        }
        Front::JwtAuthorizer(jwks) => {
            use jwt_authorizer::{JwtAuthorizer, RegisteredClaims, Validation};
            let text = std::fs::read_to_string(&jwks)
                .map_err(|e| format!("reading {}: {e}", jwks.display()))?;
            let authorizer = JwtAuthorizer::<RegisteredClaims>::from_jwks_text(&text)
                .validation(
                    Validation::new()
                        .iss(&[crate::setup::IDP])
                        .aud(&[crate::setup::AUDIENCE]),
                )
                .build()
                .await
                .map_err(|e| format!("jwt-authorizer: {e}"))?;
            let layer = jwt_authorizer::layer::AuthorizationLayer::new(vec![Arc::new(authorizer)]);
            let hello07 = tower::service_fn(|_: http::Request<axum::body::Body>| async {
                Ok::<_, std::convert::Infallible>(axum07::response::IntoResponse::into_response(
                    HELLO,
                ))
            });
            Router::new()
                .route("/", get(|| async { HELLO }))
                .route_service(ROUTE, tower::Layer::layer(&layer, hello07))
        }
    })
}
