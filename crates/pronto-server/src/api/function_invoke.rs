//! `POST /2023-03-30/functions/{functionName}/invocations` (Function Compute 3.0's
//! InvokeFunction): the request body is POSTed to the function's `/invoke` path, as Function
//! Compute does for a custom container's events, and the function's response (status,
//! headers, body) is the answer, with `x-fc-request-id`. Only synchronous invocations:
//! `x-fc-invocation-type` absent or `Sync`. The qualifier comes from `?qualifier=`, else the
//! `x-fc-qualifier` header, else is `LATEST`. Behind the API token like every control route
//! (an `anonymous` function too); the invocation itself is the invoke listener's
//! ([`crate::invoke`]): same instances, limits, metrics and errors.

use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use serde::Deserialize;

use super::{function_name, query_params, ApiError};
use crate::invoke::{self, Destination, QUALIFIER_HEADER};
use crate::AppState;

/// Function Compute's header for the invocation type.
pub const INVOCATION_TYPE_HEADER: &str = "x-fc-invocation-type";
/// The path of the function's HTTP server that receives the events.
pub const EVENT_PATH: &str = "/invoke";

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    qualifier: Option<String>,
}

pub(super) async fn invoke_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    req: Request,
) -> Response {
    let arrived = Instant::now();
    let destination = destination(path, params, &req);
    invoke::invoke_at(state, destination, req, arrived).await
}

fn destination(
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    req: &Request,
) -> Result<Destination, ApiError> {
    let function = function_name(path)?;
    let params = query_params(params)?;
    let header = |name: &'static str| -> Result<Option<&str>, ApiError> {
        req.headers()
            .get(name)
            .map(|v| {
                v.to_str().map_err(|_| ApiError::Header {
                    name,
                    message: "must be visible ASCII".into(),
                })
            })
            .transpose()
    };
    match header(INVOCATION_TYPE_HEADER)? {
        None => {}
        Some(t) if t.eq_ignore_ascii_case("Sync") => {}
        Some(t) => {
            return Err(ApiError::Header {
                name: INVOCATION_TYPE_HEADER,
                message: format!(
                    "only Sync is supported (Pronto has no asynchronous invocations), got {t:?}"
                ),
            })
        }
    }
    let qualifier = match params.qualifier.filter(|q| !q.is_empty()) {
        Some(q) => Some(q),
        None => header(QUALIFIER_HEADER)?
            .filter(|q| !q.is_empty())
            .map(str::to_string),
    };
    Ok(Destination {
        function,
        qualifier,
        path_and_query: EVENT_PATH.to_string(),
    })
}
