//! The invoke listener: `ANY /invoke/{function}/{path...}`, or any path with the header form
//! `x-fc-invocation-target: 2016-08-15/proxy/{service}/{function}` of Function Compute's curl
//! examples. The function sees `/{path...}` (or the request path unchanged, in the header form)
//! with the query string.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use pronto_image::pull::{self, ResolvedImage};
use pronto_image::Digest;
use pronto_runtime::bundle::ProcessOverrides;

use crate::api::ApiError;
use crate::model::{AccelerationStatus, AuthType, Function};
use crate::pool::RunSpec;
use crate::{auth, proxy, AppState};

pub const TARGET_HEADER: &str = "x-fc-invocation-target";

/// Resolved images by manifest digest. A digest names one immutable manifest, so an entry never
/// goes stale.
#[derive(Clone, Default)]
pub struct ImageCache(Arc<Mutex<HashMap<Digest, Arc<ResolvedImage>>>>);

impl ImageCache {
    async fn get(
        &self,
        state: &AppState,
        f: &Function,
    ) -> Result<Arc<ResolvedImage>, pull::PullError> {
        let digest = &f.image.manifest_digest;
        if let Some(i) = self.0.lock().expect("image cache poisoned").get(digest) {
            return Ok(i.clone());
        }
        let image = Arc::new(pull::resolve(&state.registry, &f.image.reference).await?);
        self.0
            .lock()
            .expect("image cache poisoned")
            .insert(digest.clone(), image.clone());
        Ok(image)
    }
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

async fn invoke(State(state): State<AppState>, req: Request) -> Response {
    let Some((name, path_and_query)) = target(&req) else {
        return proxy::error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "invoke a function at /invoke/{functionName}/{path} or with the x-fc-invocation-target header",
        );
    };
    let function = match state.store.get_function(&name).await {
        Ok(f) => f,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if function.spec.auth_type != AuthType::Anonymous {
        if let Err(reason) = auth::check(&state.token, req.headers().get(header::AUTHORIZATION)) {
            return ApiError::Unauthorized(reason).into_response();
        }
    }
    let image = match state.images.get(&state, &function).await {
        Ok(i) => i,
        Err(e) => {
            return proxy::error(
                StatusCode::BAD_GATEWAY,
                "ImagePullFailed",
                &format!(
                    "function {name}: resolving image {}: {e}",
                    function.image.reference
                ),
            )
        }
    };
    let spec = run_spec(&function, image, state.max_instances);
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Body::new(body));
    proxy::forward(&state.pool, &spec, req, &path_and_query).await
}

fn run_spec(f: &Function, image: Arc<ResolvedImage>, max_instances: usize) -> RunSpec {
    let s = &f.spec;
    let c = &s.custom_container_config;
    RunSpec {
        name: s.function_name.clone(),
        // Any change of the function (image, command, env, limits) bumps the modified time.
        revision: format!(
            "{}@{}",
            f.function_id,
            f.last_modified_time.unix_timestamp_nanos()
        ),
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
        timeout: Duration::from_secs(u64::from(s.timeout)),
        concurrency: s.instance_concurrency as usize,
        max_instances,
        accelerated: f
            .acceleration
            .as_ref()
            .is_some_and(|a| a.status == AccelerationStatus::Ready),
    }
}
