//! `GET /2023-03-30/functions/{functionName}/explain?link=100mbit,20ms&layers=false`: why the
//! function's cold start took what it took (see [`crate::explain`]), from the access trace of
//! the image `LATEST` runs and its artifact's index, read with the function's own registry
//! access. `layers=true` also downloads the image's layers to attribute each file to one.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::{function_name, ApiError};
use crate::explain::{explain, layer_owners, Explanation, ImageFacts, Link, StartProfile};
use crate::model::AccelerationStatus;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    /// Default `100mbit,20ms`.
    link: Option<String>,
    #[serde(default)]
    layers: bool,
}

pub(super) async fn explain_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<Explanation>, ApiError> {
    let name = function_name(path)?;
    let Query(query) = query.map_err(|r| ApiError::Query {
        name: "query",
        message: r.body_text(),
    })?;
    let link = parse_link(query.link.as_deref())?;
    explanation(&state, &name, link, query.layers)
        .await
        .map(Json)
}

/// `link` as given (`100mbit,20ms` when absent), or a 400 naming it.
pub(crate) fn parse_link(link: Option<&str>) -> Result<Link, ApiError> {
    link.unwrap_or("100mbit,20ms")
        .parse()
        .map_err(|message| ApiError::Query {
            name: "link",
            message,
        })
}

/// The explanation of `name`'s cold start on `link` (the API's and the console's).
pub(crate) async fn explanation(
    state: &AppState,
    name: &str,
    link: Link,
    layers: bool,
) -> Result<Explanation, ApiError> {
    let name = name.to_string();
    let function = state.store.get_function(&name).await?;
    let live = function.live().clone();
    let status = live.acceleration.as_ref().map(|a| a.status);
    if status != Some(AccelerationStatus::Ready) {
        return Err(ApiError::NothingToExplain(format!(
            "{name} has no accelerated image to explain (acceleration {}): explain needs \
             accelerationType Default and a Ready conversion",
            status.map_or("off".to_string(), |s| format!("{s:?}"))
        )));
    }
    let digest = live.image.manifest_digest.to_string();
    let Some((chunks, profile)) = state.store.access_trace_and_profile(&name, &digest).await?
    else {
        return Err(ApiError::NothingToExplain(format!(
            "{name} has no access trace yet: invoke it once (its first accelerated cold start \
             records what it reads), then explain it"
        )));
    };
    let trace: Vec<[u8; 32]> = chunks
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    let start_profile: Option<StartProfile> = profile.and_then(|p| serde_json::from_str(&p).ok());

    let failed = |message: String| ApiError::ExplainFailed {
        function: name.clone(),
        message,
    };
    let config = &live.spec.custom_container_config;
    let image = state.images.resolved(&live.image).await?;
    let own = state.access.client_for(config, &image.pinned)?;
    let client = own.as_ref().unwrap_or(state.access.node());
    let repo = state.access.artifact_repository(config);
    let artifact =
        pronto_artifact::fetch_artifact_in(client, &image, repo.as_ref().unwrap_or(&image.pinned))
            .await
            .map_err(|e| failed(format!("fetching the accelerated artifact: {e}")))?;
    let owners = if layers {
        Some(
            layer_owners(client, &image)
                .await
                .map_err(|e| failed(e.to_string()))?,
        )
    } else {
        None
    };
    let facts = ImageFacts {
        layers: image
            .manifest
            .layers
            .iter()
            .map(|l| (l.digest.to_string(), l.size))
            .collect(),
        config_size: image.config_bytes.len() as u64,
        // what a mount fetches: the index layer as stored (compressed)
        index_size: artifact.index_layer_size,
        owners,
        start_profile,
    };
    let image_uri = live.image.reference.to_string();
    let index = artifact.index;
    let e = tokio::task::spawn_blocking(move || {
        explain(&name, &image_uri, &index, &trace, &facts, link)
    })
    .await
    .expect("explain task panicked");
    e.map_err(|e| ApiError::ExplainFailed {
        function: function.spec.function_name.clone(),
        message: e.to_string(),
    })
}
