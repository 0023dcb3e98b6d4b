//! Aliases: `POST /2023-03-30/functions/{functionName}/aliases` (CreateAlias), `GET .../aliases`
//! (ListAliases), `GET|PUT|DELETE .../aliases/{aliasName}`. An alias names a version and may
//! send a share of the invocations to a second one (`additionalVersionWeight`, a canary).

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::versions::{check_description, parse_version};
use super::{
    function_name, parse_limit, path_params, query_params, AliasView, ApiError, JsonBody,
    ListAliasesOutput,
};
use crate::model::{check_alias_name, now, Alias, ValidationError};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AliasInput {
    alias_name: Option<String>,
    version_id: Option<String>,
    description: Option<String>,
    additional_version_weight: Option<BTreeMap<String, f64>>,
}

/// The checked `additionalVersionWeight`: at most one version, weight 0 to 1, not the main one.
fn additional(
    weights: &BTreeMap<String, f64>,
    main: u32,
) -> Result<Option<(u32, f64)>, ValidationError> {
    const FIELD: &str = "additionalVersionWeight";
    if weights.len() > 1 {
        return Err(ValidationError::new(
            FIELD,
            format!("at most one additional version, got {}", weights.len()),
        ));
    }
    let Some((v, w)) = weights.iter().next() else {
        return Ok(None);
    };
    let v = parse_version(v).map_err(|e| ValidationError::new(FIELD, e.reason))?;
    if !(0.0..=1.0).contains(w) {
        return Err(ValidationError::new(
            format!("{FIELD}.{v}"),
            format!("must be between 0 and 1, got {w}"),
        ));
    }
    if v == main {
        return Err(ValidationError::new(
            FIELD,
            format!("the additional version must differ from versionId {main}"),
        ));
    }
    Ok(Some((v, *w)))
}

pub(super) async fn create_alias(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(input): JsonBody<AliasInput>,
) -> Result<(StatusCode, Json<AliasView>), ApiError> {
    let name = function_name(path)?;
    let alias_name = input
        .alias_name
        .ok_or_else(|| ValidationError::new("aliasName", "is required"))?;
    check_alias_name("aliasName", &alias_name)?;
    let version_id = parse_version(
        &input
            .version_id
            .ok_or_else(|| ValidationError::new("versionId", "is required"))?,
    )?;
    let description = input.description.unwrap_or_default();
    check_description(&description)?;
    let additional_version = additional(
        &input.additional_version_weight.unwrap_or_default(),
        version_id,
    )?;
    let t = now();
    let alias = Alias {
        alias_name,
        version_id,
        additional_version,
        description,
        created_time: t,
        last_modified_time: t,
    };
    let alias = state.store.put_alias(&name, alias, true).await?;
    state.provision_kick.notify_one();
    tracing::info!(function = %name, alias = %alias.alias_name, version = alias.version_id, "created alias");
    Ok((StatusCode::CREATED, Json(AliasView::from(&alias))))
}

/// A partial update: `versionId`, `description`, `additionalVersionWeight` (`{}` removes the
/// second version).
pub(super) async fn update_alias(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    JsonBody(input): JsonBody<AliasInput>,
) -> Result<Json<AliasView>, ApiError> {
    let (name, alias_name) = path_params(path)?;
    if let Some(given) = &input.alias_name {
        if *given != alias_name {
            return Err(ValidationError::new(
                "aliasName",
                format!("cannot be changed from {alias_name:?}, got {given:?}"),
            )
            .into());
        }
    }
    let mut alias = state.store.get_alias(&name, &alias_name).await?;
    if let Some(v) = &input.version_id {
        alias.version_id = parse_version(v)?;
    }
    if let Some(d) = input.description {
        check_description(&d)?;
        alias.description = d;
    }
    match &input.additional_version_weight {
        Some(w) => alias.additional_version = additional(w, alias.version_id)?,
        // The main version moved onto the canary: the split is over.
        None if alias
            .additional_version
            .is_some_and(|(v, _)| v == alias.version_id) =>
        {
            alias.additional_version = None
        }
        None => {}
    }
    alias.last_modified_time = now();
    let alias = state.store.put_alias(&name, alias, false).await?;
    state.provision_kick.notify_one();
    tracing::info!(function = %name, alias = %alias.alias_name, version = alias.version_id,
        additional = ?alias.additional_version, "updated alias");
    Ok(Json(AliasView::from(&alias)))
}

pub(super) async fn get_alias(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<AliasView>, ApiError> {
    let (name, alias) = path_params(path)?;
    let alias = state.store.get_alias(&name, &alias).await?;
    Ok(Json(AliasView::from(&alias)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    limit: Option<String>,
    next_token: Option<String>,
}

pub(super) async fn list_aliases(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListAliasesOutput>, ApiError> {
    let name = function_name(path)?;
    let params = query_params(params)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let mut aliases = state
        .store
        .list_aliases(
            &name,
            params.next_token.filter(|t| !t.is_empty()),
            limit + 1,
        )
        .await?;
    let next_token = if aliases.len() > limit {
        aliases.truncate(limit);
        aliases.last().map(|a| a.alias_name.clone())
    } else {
        None
    };
    Ok(Json(ListAliasesOutput {
        aliases: aliases.iter().map(AliasView::from).collect(),
        next_token,
    }))
}

pub(super) async fn delete_alias(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (name, alias) = path_params(path)?;
    state.store.delete_alias(&name, &alias).await?;
    state.provision_kick.notify_one();
    tracing::info!(function = %name, %alias, "deleted alias");
    Ok(StatusCode::NO_CONTENT)
}
