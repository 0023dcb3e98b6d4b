//! `GET /2023-03-30/functions/{functionName}`

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;

use super::{function_name, ApiError, FunctionView};
use crate::AppState;

pub(super) async fn get_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<FunctionView>, ApiError> {
    let name = function_name(path)?;
    let function = state.store.get_function(&name).await?;
    Ok(Json(FunctionView::from(&function)))
}
