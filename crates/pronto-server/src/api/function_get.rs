//! `GET /2023-03-30/functions/{functionName}?qualifier=`: `LATEST` (the default) as its user set
//! it, or the configuration of a version or an alias's main version.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::{function_name, query_params, ApiError, FunctionView};
use crate::model::Qualifier;
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    qualifier: Option<String>,
}

pub(super) async fn get_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<FunctionView>, ApiError> {
    let name = function_name(path)?;
    let params = query_params(params)?;
    let qualifier = match params.qualifier.as_deref().filter(|q| !q.is_empty()) {
        None => Qualifier::Latest,
        Some(q) => Qualifier::parse(q)?,
    };
    let version = match qualifier {
        Qualifier::Latest => {
            let function = state.store.get_function(&name).await?;
            let function = state.store.with_trace(function).await?;
            return Ok(Json(FunctionView::from(&function)));
        }
        Qualifier::Version(v) => v,
        Qualifier::Alias(a) => state.store.get_alias(&name, &a).await?.version_id,
    };
    let version = state.store.get_version(&name, version).await?;
    let function = state.store.with_trace(version.function).await?;
    Ok(Json(FunctionView::from(&function)))
}
