//! `DELETE /2023-03-30/functions/{functionName}`

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{function_name, ApiError};
use crate::AppState;

pub(super) async fn delete_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = function_name(path)?;
    state.store.delete_function(&name).await?;
    state.pool.retire(&name);
    state.recent.forget(&name);
    tracing::info!(function = %name, "deleted function");
    Ok(StatusCode::NO_CONTENT)
}
