//! The baseline: axum's hello world, with nothing in front of it, served the way the
//! gateway example serves (`axum::serve`, a multi-threaded Tokio runtime, the peer
//! address as connect info).

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;

/// Serves `GET /` → "Hello, World!" on `listen` until killed.
pub(crate) fn serve(listen: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting Tokio: {e}"))?;
    runtime.block_on(async move {
        let app = Router::new().route("/", get(|| async { "Hello, World!" }));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("hello: listening on http://{addr}");
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .map_err(|e| format!("serving: {e}"))
    })
}
