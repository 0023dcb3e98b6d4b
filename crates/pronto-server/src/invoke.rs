//! The invoke listener: `ANY /invoke/{function}[.{qualifier}]/{path...}`, or any path with the
//! header form `x-fc-invocation-target: 2016-08-15/proxy/{service}[.{qualifier}]/{function}` of
//! Function Compute's curl examples. The function sees `/{path...}` (or the request path
//! unchanged, in the header form) with the query string. The qualifier (`LATEST`, a version, an
//! alias) comes from the path, else the `x-fc-qualifier` header, else is `LATEST`; the response
//! says which version served in `x-pronto-version` (`LATEST` or the number).
//!
//! Every invocation has a request id: the caller's `x-fc-request-id` if it sent a usable one,
//! else a new UUID (v4). The function gets it in `x-fc-request-id`, the response (errors
//! included) carries it back, and the daemon's log lines about the request carry it as the
//! `request_id` field of the `invoke` span (with `function`, the image's digest `image` and,
//! once chosen, `instance`).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;

use crate::api::ApiError;
use crate::model::{AuthType, LATEST};
use crate::releases::{self, Target};
use crate::{auth, proxy, recent, AppState};

pub const TARGET_HEADER: &str = "x-fc-invocation-target";
/// The request id header (Function Compute's name).
pub const REQUEST_ID_HEADER: &str = "x-fc-request-id";
/// The qualifier header (Function Compute's name).
pub const QUALIFIER_HEADER: &str = "x-fc-qualifier";
/// The response header naming the version that served (`LATEST` or its number).
pub const VERSION_HEADER: &str = "x-pronto-version";
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

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    pub function: String,
    /// From the path (`NAME.QUALIFIER`) or the `x-fc-qualifier` header; `None`: `LATEST`.
    pub qualifier: Option<String>,
    /// What the function sees.
    pub path_and_query: String,
}

/// Where `req` goes, or None if it names no function.
fn target(req: &Request) -> Option<Destination> {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let header_qualifier = req
        .headers()
        .get(QUALIFIER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|q| !q.is_empty())
        .map(str::to_string);
    let (function, qualifier, path_and_query) = if let Some(t) = req
        .headers()
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        // 2016-08-15/proxy/{service}[.{qualifier}]/{function}
        let mut parts = t.trim_end_matches('/').rsplit('/');
        let function = parts.next()?.to_string();
        let qualifier = parts
            .next()
            .and_then(|service| service.split_once('.'))
            .map(|(_, q)| q.to_string());
        (function, qualifier, format!("{}{query}", req.uri().path()))
    } else {
        let rest = req.uri().path().strip_prefix("/invoke/")?;
        let (named, path) = match rest.split_once('/') {
            Some((f, p)) => (f, format!("/{p}")),
            None => (rest, "/".to_string()),
        };
        // Function names have no '.', so the first one starts the qualifier.
        let (function, qualifier) = match named.split_once('.') {
            Some((f, q)) => (f, Some(q.to_string())),
            None => (named, None),
        };
        (function.to_string(), qualifier, format!("{path}{query}"))
    };
    (!function.is_empty()).then_some(Destination {
        function,
        qualifier: qualifier.or(header_qualifier),
        path_and_query,
    })
}

async fn invoke(State(state): State<AppState>, req: Request) -> Response {
    let arrived = Instant::now();
    let destination = target(&req).ok_or(ApiError::NoInvocationTarget);
    invoke_at(state, destination, req, arrived).await
}

/// Invokes `destination` with `req` (its method, headers and body; the path and query the
/// function sees are the destination's), or answers its error: the one invocation path of the
/// invoke listener and the control API's `InvokeFunction`. Every response carries the
/// request id.
pub(crate) async fn invoke_at(
    state: AppState,
    destination: Result<Destination, ApiError>,
    mut req: Request,
    arrived: Instant,
) -> Response {
    let id = request_id(req.headers());
    let value = HeaderValue::from_str(&id).expect("visible ASCII");
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let function = destination
        .as_ref()
        .map_or_else(|_| String::new(), |d| d.function.clone());
    let span = tracing::info_span!(
        "invoke",
        function = %function,
        request_id = %id,
        instance = tracing::field::Empty,
        image = tracing::field::Empty,
    );
    let mut response = invoke_named(state, destination, req, arrived)
        .instrument(span)
        .await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

async fn invoke_named(
    state: AppState,
    destination: Result<Destination, ApiError>,
    req: Request,
    arrived: Instant,
) -> Response {
    let destination = match destination {
        Ok(d) => d,
        Err(e) => {
            let r = e.into_response();
            state.metrics.invocation("", LATEST, r.status().as_u16());
            return r;
        }
    };
    let name = destination.function.clone();
    let target = match releases::resolve(&state, &name, destination.qualifier.as_deref()).await {
        Ok(t) => t,
        Err(e) => {
            // Without the token, "no such function" would tell names apart from those that
            // exist (which answer 401): it is 401 too.
            let e = match auth::check(&state.token, req.headers().get(header::AUTHORIZATION)) {
                Err(reason) if e.status() == axum::http::StatusCode::NOT_FOUND => {
                    ApiError::Unauthorized(reason)
                }
                _ => e,
            };
            let r = e.into_response();
            state.metrics.invocation("", LATEST, r.status().as_u16());
            return r;
        }
    };
    let version = target.version.clone();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut response =
        invoke_function(&state, target, req, destination.path_and_query, arrived).await;
    let status = response.status().as_u16();
    state.metrics.invocation(&name, &version, status);
    // Only here, where the function is known to exist: names made up by callers take no room.
    state.recent.record(
        &name,
        recent::Invocation {
            time: time::OffsetDateTime::now_utc() - arrived.elapsed(),
            request_id,
            version: version.clone(),
            status,
            duration: arrived.elapsed(),
            instance: response
                .headers()
                .get(proxy::INSTANCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            cold_start: response.extensions_mut().remove::<proxy::Breakdown>(),
        },
    );
    if let Ok(v) = HeaderValue::from_str(&version) {
        response.headers_mut().insert(VERSION_HEADER, v);
    }
    tracing::debug!(
        status,
        version,
        ms = arrived.elapsed().as_millis() as u64,
        "invoked"
    );
    response
}

/// Invokes the configuration `target`, which exists.
async fn invoke_function(
    state: &AppState,
    target: Target,
    req: Request,
    path_and_query: String,
    arrived: Instant,
) -> Response {
    let function = &target.config;
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
    let spec = match releases::run_spec(&target, image, state) {
        Ok(spec) => spec,
        Err(e) => return ApiError::from(e).into_response(),
    };
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
