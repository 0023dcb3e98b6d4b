//! Versions: `POST /2023-03-30/functions/{functionName}/versions` (PublishFunctionVersion),
//! `GET .../versions` (ListFunctionVersions), `DELETE .../versions/{versionId}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{
    function_name, parse_limit, path_params, query_params, ApiError, ListVersionsOutput,
    OptionalJsonBody, VersionView,
};
use crate::model::{ValidationError, DESCRIPTION_MAX};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PublishInput {
    description: Option<String>,
}

pub(super) async fn publish_version(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    OptionalJsonBody(input): OptionalJsonBody<PublishInput>,
) -> Result<(StatusCode, Json<VersionView>), ApiError> {
    let name = function_name(path)?;
    let description = input.description.unwrap_or_default();
    check_description(&description)?;
    let version = state.store.publish_version(&name, description).await?;
    tracing::info!(function = %name, version = version.version_id, "published version");
    Ok((StatusCode::CREATED, Json(VersionView::from(&version))))
}

pub(super) fn check_description(d: &str) -> Result<(), ValidationError> {
    let n = d.chars().count();
    if n > DESCRIPTION_MAX {
        return Err(ValidationError::new(
            "description",
            format!("must be at most {DESCRIPTION_MAX} characters, got {n}"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    limit: Option<String>,
    next_token: Option<String>,
    direction: Option<String>,
}

pub(super) async fn list_versions(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListVersionsOutput>, ApiError> {
    let name = function_name(path)?;
    let params = query_params(params)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let backward = match params.direction.as_deref() {
        None | Some("BACKWARD") => true,
        Some("FORWARD") => false,
        Some(d) => {
            return Err(ApiError::Query {
                name: "direction",
                message: format!("must be BACKWARD or FORWARD, got {d:?}"),
            })
        }
    };
    let after = match params.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<u32>().map_err(|_| ApiError::Query {
            name: "nextToken",
            message: format!("not a token this server gave, got {t:?}"),
        })?),
    };
    let mut versions = state
        .store
        .list_versions(&name, backward, after, limit + 1)
        .await?;
    let next_token = if versions.len() > limit {
        versions.truncate(limit);
        versions.last().map(|v| v.version_id.to_string())
    } else {
        None
    };
    Ok(Json(ListVersionsOutput {
        versions: versions.iter().map(VersionView::from).collect(),
        direction: if backward { "BACKWARD" } else { "FORWARD" }.to_string(),
        next_token,
    }))
}

pub(super) async fn delete_version(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (name, version) = path_params(path)?;
    let version = parse_version(&version)?;
    state.store.delete_version(&name, version).await?;
    state.pool.retire_track(&name, &version.to_string());
    state.provision_kick.notify_one();
    tracing::info!(function = %name, version, "deleted version");
    Ok(StatusCode::NO_CONTENT)
}

/// A version id as the API spells it: a number from 1.
pub(super) fn parse_version(s: &str) -> Result<u32, ValidationError> {
    s.parse::<u32>()
        .ok()
        .filter(|v| *v > 0 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ValidationError::new("versionId", format!("must be a number from 1, got {s:?}"))
        })
}
