//! `GET /2023-03-30/functions?prefix=&limit=&nextToken=`: functions by name, ascending, a page
//! at a time.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::{parse_limit, query_params, ApiError, FunctionView, ListFunctionsOutput};
use crate::store::ListQuery;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    prefix: Option<String>,
    /// Text, so that a bad value gets our message rather than serde's.
    limit: Option<String>,
    next_token: Option<String>,
}

pub(super) async fn list_functions(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListFunctionsOutput>, ApiError> {
    let params = query_params(params)?;
    let limit = parse_limit(params.limit.as_deref())?;
    // One more than asked tells whether there is a next page.
    let mut functions = state
        .store
        .list_functions(ListQuery {
            prefix: params.prefix.filter(|p| !p.is_empty()),
            after: params.next_token.filter(|t| !t.is_empty()),
            limit: limit + 1,
        })
        .await?;
    let next_token = if functions.len() > limit {
        functions.truncate(limit);
        functions.last().map(|f| f.spec.function_name.clone())
    } else {
        None
    };
    Ok(Json(ListFunctionsOutput {
        functions: functions.iter().map(FunctionView::from).collect(),
        next_token,
    }))
}
