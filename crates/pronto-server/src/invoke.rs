//! The invoke listener: `ANY /invoke/{function}/{path...}`, or any path with the header form
//! `x-fc-invocation-target: 2016-08-15/proxy/{service}/{function}` of Function Compute's curl
//! examples. The function sees `/{path...}` (or the request path unchanged, in the header form)
//! with the query string.
//!
//! Every invocation has a request id: the caller's `x-fc-request-id` if it sent a usable one,
//! else a new UUID (v4). The function gets it in `x-fc-request-id`, the response (errors
//! included) carries it back, and the daemon's log lines about the request carry it as the
//! `request_id` field of the `invoke` span (with `function`, the image's digest `image` and,
//! once chosen, `instance`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use pronto_image::pull::ResolvedImage;
use pronto_runtime::bundle::ProcessOverrides;
use pronto_runtime::InstanceSpec;
use tracing::Instrument;

use crate::api::ApiError;
use crate::model::{AccelerationStatus, AuthType, Function};
use crate::pool::RunSpec;
use crate::{auth, proxy, AppState};

pub const TARGET_HEADER: &str = "x-fc-invocation-target";
/// The request id header (Function Compute's name).
pub const REQUEST_ID_HEADER: &str = "x-fc-request-id";
/// The longest caller-supplied request id kept; a longer (or otherwise unusable) one is
/// replaced by a generated id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's request id if usable (1 to 128 visible ASCII characters), else a new UUID v4.
pub fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The router served on the invoke address.
pub fn invoke_router(state: AppState) -> Router {
    Router::new().fallback(invoke).with_state(state)
}

/// (function, path and query the function sees) for a request, or None if it names none.
fn target(req: &Request) -> Option<(String, String)> {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Some(t) = req
        .headers()
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        // 2016-08-15/proxy/{service}/{function}
        let function = t.trim_end_matches('/').rsplit('/').next()?.to_string();
        return Some((function, format!("{}{query}", req.uri().path())));
    }
    let rest = req.uri().path().strip_prefix("/invoke/")?;
    let (function, path) = match rest.split_once('/') {
        Some((f, p)) => (f, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    (!function.is_empty()).then(|| (function.to_string(), format!("{path}{query}")))
}

async fn invoke(State(state): State<AppState>, mut req: Request) -> Response {
    let arrived = Instant::now();
    let id = request_id(req.headers());
    let value = HeaderValue::from_str(&id).expect("visible ASCII");
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let function = target(&req).map_or_else(String::new, |(f, _)| f);
    let span = tracing::info_span!(
        "invoke",
        function = %function,
        request_id = %id,
        instance = tracing::field::Empty,
        image = tracing::field::Empty,
    );
    let mut response = invoke_named(state, req, arrived).instrument(span).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

async fn invoke_named(state: AppState, req: Request, arrived: Instant) -> Response {
    let Some((name, path_and_query)) = target(&req) else {
        let r = ApiError::NoInvocationTarget.into_response();
        state.metrics.invocation("", r.status().as_u16());
        return r;
    };
    let function = match state.store.get_function(&name).await {
        Ok(f) => f,
        Err(e) => {
            let r = ApiError::from(e).into_response();
            state.metrics.invocation("", r.status().as_u16());
            return r;
        }
    };
    let response = invoke_function(&state, function, req, path_and_query, arrived).await;
    let status = response.status().as_u16();
    state.metrics.invocation(&name, status);
    tracing::debug!(status, ms = arrived.elapsed().as_millis() as u64, "invoked");
    response
}

/// Invokes `function`, which exists.
async fn invoke_function(
    state: &AppState,
    function: Function,
    req: Request,
    path_and_query: String,
    arrived: Instant,
) -> Response {
    let name = function.spec.function_name.clone();
    if function.spec.auth_type != AuthType::Anonymous {
        if let Err(reason) = auth::check(&state.token, req.headers().get(header::AUTHORIZATION)) {
            return ApiError::Unauthorized(reason).into_response();
        }
    }
    let looked_up = Instant::now();
    tracing::Span::current().record(
        "image",
        tracing::field::display(&function.image.manifest_digest),
    );
    let image = match state.images.resolved(&function.image).await {
        Ok(i) => i,
        Err(e) => {
            return ApiError::ImageUnavailable {
                function: name,
                image: function.image.reference.to_string(),
                source: Box::new(e),
            }
            .into_response()
        }
    };
    let marks = proxy::Arrival {
        arrived,
        looked_up,
        resolved: Instant::now(),
    };
    let spec = run_spec(&function, image, state.max_instances);
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Body::new(body));
    proxy::forward(
        &state.pool,
        &state.metrics,
        &spec,
        req,
        &path_and_query,
        marks,
    )
    .await
}

fn run_spec(f: &Function, image: Arc<ResolvedImage>, max_instances: usize) -> RunSpec {
    let s = &f.spec;
    let c = &s.custom_container_config;
    RunSpec {
        // Any change of the function (image, command, env, limits) bumps the modified time.
        revision: format!(
            "{}@{}",
            f.function_id,
            f.last_modified_time.unix_timestamp_nanos()
        ),
        instance: InstanceSpec {
            function: s.function_name.clone(),
            image,
            overrides: ProcessOverrides {
                command: (!c.command.is_empty()).then(|| c.command.clone()),
                args: (!c.args.is_empty()).then(|| c.args.clone()),
                env: s.environment_variables.clone().into_iter().collect(),
            },
            port: c.port,
            memory_mb: u64::from(s.memory_size),
            cpu: s.cpu,
            init_timeout: Duration::from_secs(u64::from(s.initialization_timeout)),
            accelerated: f
                .acceleration
                .as_ref()
                .is_some_and(|a| a.status == AccelerationStatus::Ready),
            prefetch: None,
        },
        timeout: Duration::from_secs(u64::from(s.timeout)),
        concurrency: s.instance_concurrency as usize,
        max_instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn with(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(id).unwrap());
        h
    }

    #[test]
    fn a_usable_caller_id_is_kept_anything_else_replaced_by_a_uuid_v4() {
        assert_eq!(request_id(&with("req-1:a/b")), "req-1:a/b");
        let longest = "x".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(request_id(&with(&longest)), longest);
        for bad in [
            "".to_string(),
            "has space".to_string(),
            "x".repeat(MAX_REQUEST_ID_LEN + 1),
        ] {
            let id = request_id(&with(&bad));
            assert_ne!(id, bad);
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{id}");
        }
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(a, b, "each generated id is new");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }
}
