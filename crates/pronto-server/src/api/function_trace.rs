//! `GET /2023-03-30/functions/{functionName}/access-trace`: the access trace recorded for the
//! image `LATEST` runs, chunk by chunk (what `pronto function explain` reads beside the
//! artifact's index). `GetFunction` only summarises it (`accessTrace.chunks`).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{function_name, ApiError};
use crate::model::format_time;
use crate::AppState;

/// The trace of the image `LATEST` runs; `chunks` is empty until a cold start recorded one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTraceOutput {
    pub function_name: String,
    /// The pinned image the trace belongs to (`registry/repo@sha256:...`).
    pub resolved_image_uri: String,
    /// When the trace was recorded; absent when there is none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_time: Option<String>,
    /// The BLAKE3 digests (64 lowercase hex) of the chunks the first accelerated cold start
    /// read, first read first (see `docs/format.md`).
    pub chunks: Vec<String>,
}

pub(super) async fn get_access_trace(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AccessTraceOutput>, ApiError> {
    let name = function_name(path)?;
    let function = state.store.get_function(&name).await?;
    let function = state.store.with_trace(function).await?;
    let digest = function.image.manifest_digest.to_string();
    let bytes = state.store.access_trace(&name, &digest).await?;
    let chunks = bytes
        .unwrap_or_default()
        .chunks_exact(32)
        .map(hex::encode)
        .collect();
    Ok(Json(AccessTraceOutput {
        function_name: name,
        resolved_image_uri: function.image.reference.to_string(),
        recorded_time: function.trace.map(|t| format_time(t.recorded_time)),
        chunks,
    }))
}
