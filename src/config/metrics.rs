//! `[metrics]`: the gateway's numbers as Prometheus text at `GET /metrics`.
//!
//! The layers emit through the `metrics` facade (refusals by layer and code, audit
//! records written and dropped and the audit queue, rate-limit bans, key fetch
//! failures); nothing is recorded unless a recorder is installed, which the gateway does
//! only with `[metrics]`. The gateway adds requests by status class, their latency, and
//! at each scrape the age of every fetched key set.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Gateway;

/// Latency buckets, in seconds: from a cached decision to a slow upstream.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The process's Prometheus recorder: installed by the first gateway that serves
/// metrics, shared by any other in the same process.
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("portcullis_request_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    portcullis_core::enable_decision_metrics();
                    Some(handle)
                }
                Err(error) => {
                    // Another recorder is the host's: its exporter has the numbers.
                    tracing::warn!(target: "portcullis::serve", %error, "metrics: a recorder is already installed; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

impl Gateway {
    /// `GET /metrics` (Prometheus text), with `[metrics]`; `None` without it. Outside
    /// the security layers, like the probes: serve it on a listener only the scraper
    /// reaches.
    pub fn metrics_router(&self) -> Option<Router> {
        self.metrics?;
        let handle = recorder()?;
        Some(
            Router::new()
                .route("/metrics", get(render))
                .with_state((self.clone(), handle)),
        )
    }

    /// `app` with each request counted by status class and timed, when the gateway
    /// serves metrics; `app` itself otherwise.
    pub(crate) fn with_request_metrics(&self, app: Router) -> Router {
        if self.metrics.is_some() && recorder().is_some() {
            app.layer(axum::middleware::from_fn(track))
        } else {
            app
        }
    }
}

async fn render(State((gateway, handle)): State<(Gateway, &'static PrometheusHandle)>) -> Response {
    let now = SystemTime::now();
    for handle in &gateway.reloadable.jwt {
        for keys in handle.key_sets() {
            if let Some(at) = keys.last_fetch.filter(|_| keys.fetched) {
                let age = now.duration_since(at).unwrap_or_default().as_secs_f64();
                metrics::gauge!("portcullis_jwt_key_set_age_seconds", "issuer" => keys.issuer.clone())
                    .set(age);
            }
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("portcullis_requests_total", "status" => class).increment(1);
    metrics::histogram!("portcullis_request_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    response
}
