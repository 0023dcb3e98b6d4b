//! `GET /metrics`: the daemon's metrics in the OpenMetrics text format (see
//! [`crate::metrics`]). Behind the API token like every control route, unless `pronto serve
//! --metrics-public` opens it.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Where the control listener serves the metrics.
pub const METRICS_PATH: &str = "/metrics";

pub(super) async fn get_metrics(State(state): State<AppState>) -> Response {
    let body = state.exporter.encode();
    ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}
