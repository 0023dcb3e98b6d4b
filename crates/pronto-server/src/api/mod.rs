//! The control API: Function Compute 3.0-style REST over JSON, every route behind the API token.
//!
//! One file per function handler (`function_*.rs`; `function_trace.rs` serves the access trace
//! chunk by chunk; `function_invoke.rs` hands the request to
//! the invocation path of [`crate::invoke`]), one per release resource (`versions.rs`,
//! `aliases.rs`, `provision.rs`), one for named registry credentials (`credentials.rs`);
//! [`route_table`] is the single list of routes, used to build
//! the router and by the test that checks every route against `openapi.yaml`.

mod aliases;
mod credentials;
mod error;
mod function_create;
mod function_delete;
mod function_explain;
mod function_get;
mod function_invoke;
mod function_list;
mod function_logs;
mod function_trace;
mod function_update;
mod metrics;
mod provision;
mod versions;
mod view;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request};
use axum::http::{Method, Uri};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{middleware, Router};
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

pub use credentials::ListCredentialsOutput;
pub use error::{ApiError, ErrorBody};
pub(crate) use function_explain::{explanation, parse_link};
pub use function_invoke::{EVENT_PATH, INVOCATION_TYPE_HEADER};
pub(crate) use function_logs::recent_lines;
pub use function_trace::AccessTraceOutput;
pub use metrics::METRICS_PATH;
pub use view::{
    AliasView, ContainerConfigView, FunctionView, ListAliasesOutput, ListFunctionsOutput,
    ListProvisionConfigsOutput, ListVersionsOutput, ProvisionConfigView, VersionView,
};

use crate::auth::{self, ApiToken};
use crate::model::ValidationError;
use crate::AppState;

/// Function Compute's API version, the first segment of every control path.
pub const API_VERSION: &str = "2023-03-30";

/// Every control route: path (axum and OpenAPI share the `{param}` syntax) and its handlers.
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        (
            "/2023-03-30/functions",
            post(function_create::create_function).get(function_list::list_functions),
        ),
        (
            "/2023-03-30/functions/{functionName}",
            get(function_get::get_function)
                .put(function_update::update_function)
                .delete(function_delete::delete_function),
        ),
        (
            "/2023-03-30/functions/{functionName}/logs",
            get(function_logs::function_logs),
        ),
        (
            "/2023-03-30/functions/{functionName}/access-trace",
            get(function_trace::get_access_trace),
        ),
        (
            "/2023-03-30/functions/{functionName}/explain",
            get(function_explain::explain_function),
        ),
        (
            "/2023-03-30/functions/{functionName}/invocations",
            post(function_invoke::invoke_function),
        ),
        (
            "/2023-03-30/functions/{functionName}/versions",
            post(versions::publish_version).get(versions::list_versions),
        ),
        (
            "/2023-03-30/functions/{functionName}/versions/{versionId}",
            delete(versions::delete_version),
        ),
        (
            "/2023-03-30/functions/{functionName}/aliases",
            post(aliases::create_alias).get(aliases::list_aliases),
        ),
        (
            "/2023-03-30/functions/{functionName}/aliases/{aliasName}",
            get(aliases::get_alias)
                .put(aliases::update_alias)
                .delete(aliases::delete_alias),
        ),
        (
            "/2023-03-30/functions/{functionName}/provision-config",
            get(provision::get_provision_config)
                .put(provision::put_provision_config)
                .delete(provision::delete_provision_config),
        ),
        (
            "/2023-03-30/provision-configs",
            get(provision::list_provision_configs),
        ),
        (
            "/2023-03-30/registry-credentials",
            post(credentials::create_credential).get(credentials::list_credentials),
        ),
        (
            "/2023-03-30/registry-credentials/{credentialName}",
            get(credentials::get_credential).delete(credentials::delete_credential),
        ),
        (METRICS_PATH, get(metrics::get_metrics)),
    ]
}

/// The paths [`route_table`] serves.
pub fn route_paths() -> Vec<&'static str> {
    route_table().into_iter().map(|(p, _)| p).collect()
}

/// The control router: every request, unknown paths included, needs the bearer token, but
/// `/metrics` when `metrics_public` (the operator's choice: Prometheus scrapes without it).
pub fn control_router(state: AppState, token: ApiToken, metrics_public: bool) -> Router {
    let (mut router, mut open) = (Router::new(), Router::new());
    for (path, methods) in route_table() {
        if metrics_public && path == METRICS_PATH {
            open = open.route(path, methods);
        } else {
            router = router.route(path, methods);
        }
    }
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(token, auth::require_token))
        .merge(open)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method,
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_string(),
    }
}

/// A JSON object body deserialized into `T`. Errors name the field (`memorySize: invalid
/// type: ...`) and are [`ApiError`]s; the `Content-Type` is not checked (so `curl -d` works).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::Body {
                status: r.status(),
                message: r.body_text().to_lowercase(),
            })?;
        parse_object(&bytes).map(JsonBody)
    }
}

/// A JSON object into `T`, errors naming the field.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Parsed to a Value first: syntax errors are told apart from wrong fields, and errors
    // from a Value carry no line/column, which mean little to an API client.
    let UniqueKeys(value) =
        serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ValidationError::new("request body", "must be a JSON object").into());
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ValidationError::new(field, e.into_inner().to_string()).into()
    })
}

/// The `{functionName}` path segment.
fn function_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name).map_err(|r| ApiError::Body {
        status: r.status(),
        message: r.body_text().to_lowercase(),
    })
}

/// Like [`JsonBody`], but an empty body counts as `{}` (bodies whose fields are all optional).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::Body {
                status: r.status(),
                message: r.body_text().to_lowercase(),
            })?;
        let bytes: &[u8] = if bytes.trim_ascii().is_empty() {
            b"{}"
        } else {
            &bytes
        };
        parse_object(bytes).map(OptionalJsonBody)
    }
}

/// The `{functionName}` and second path segment (a version or an alias).
fn path_params(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    path.map(|Path(p)| p).map_err(|r| ApiError::Body {
        status: r.status(),
        message: r.body_text().to_lowercase(),
    })
}

/// Page sizes of every list.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// The `limit` query parameter: 1 to 100, default 20.
fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::Query {
                name: "limit",
                message: format!("must be an integer between 1 and {MAX_LIMIT}, got {s:?}"),
            }),
    }
}

/// A JSON value whose objects repeat no key: `{"memorySize": 128, "memorySize": 4096}` is a
/// client bug (or an attempt to confuse a proxy in front), not "the last one wins".
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(out.into())
    }
}

/// The query parameters, or 400 with what was wrong with them.
fn query_params<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params.map(|Query(p)| p).map_err(|r| ApiError::Query {
        name: "query",
        message: r.body_text().to_lowercase(),
    })
}
