//! Provisioned instances: `PUT|GET|DELETE /2023-03-30/functions/{functionName}/provision-config
//! ?qualifier=` (default `LATEST`; an alias or a version too) and `GET
//! /2023-03-30/provision-configs?functionName=`. The provisioner (`releases::provisioner`) keeps
//! `target` instances of what the qualifier names started and warm.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{
    function_name, query_params, ApiError, JsonBody, ListProvisionConfigsOutput,
    ProvisionConfigView,
};
use crate::model::{ProvisionConfig, Qualifier, ValidationError, MAX_INSTANCES_MAX};
use crate::store::StoreError;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct QualifierParam {
    qualifier: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ProvisionInput {
    target: Option<i64>,
}

fn qualifier(params: Result<Query<QualifierParam>, QueryRejection>) -> Result<String, ApiError> {
    let p = query_params(params)?;
    let q = p.qualifier.filter(|q| !q.is_empty());
    Ok(match q {
        None => Qualifier::Latest,
        Some(q) => Qualifier::parse(&q)?,
    }
    .to_string())
}

fn view(state: &AppState, p: &ProvisionConfig) -> ProvisionConfigView {
    ProvisionConfigView {
        function_name: p.function_name.clone(),
        qualifier: p.qualifier.clone(),
        target: p.target,
        current: state.pool.provisioned(&p.function_name, &p.qualifier) as u32,
    }
}

pub(super) async fn put_provision_config(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<QualifierParam>, QueryRejection>,
    JsonBody(input): JsonBody<ProvisionInput>,
) -> Result<Json<ProvisionConfigView>, ApiError> {
    let name = function_name(path)?;
    let qualifier = qualifier(params)?;
    let target = input
        .target
        .ok_or_else(|| ValidationError::new("target", "is required"))?;
    if !(0..=i64::from(MAX_INSTANCES_MAX)).contains(&target) {
        return Err(ValidationError::new(
            "target",
            format!("must be between 0 and {MAX_INSTANCES_MAX}, got {target}"),
        )
        .into());
    }
    // What it names must exist now (it is resolved again at every provisioner pass).
    let resolved = crate::releases::resolve(&state, &name, Some(&qualifier)).await?;
    let max = resolved
        .config
        .spec
        .max_instances
        .map_or(state.max_instances, |m| m as usize);
    if target as usize > max {
        return Err(ValidationError::new(
            "target",
            format!("must not exceed the function's maxInstances ({max}), got {target}"),
        )
        .into());
    }
    let config = ProvisionConfig {
        function_name: name.clone(),
        qualifier,
        target: target as u32,
    };
    state.store.put_provision_config(config.clone()).await?;
    state.provision_kick.notify_one();
    tracing::info!(function = %name, qualifier = %config.qualifier, target, "provision config set");
    Ok(Json(view(&state, &config)))
}

pub(super) async fn get_provision_config(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<QualifierParam>, QueryRejection>,
) -> Result<Json<ProvisionConfigView>, ApiError> {
    let name = function_name(path)?;
    let qualifier = qualifier(params)?;
    let config = state
        .store
        .provision_configs(Some(&name))
        .await?
        .into_iter()
        .find(|p| p.qualifier == qualifier)
        .ok_or(StoreError::ProvisionConfigNotFound {
            function: name,
            qualifier,
        })?;
    Ok(Json(view(&state, &config)))
}

pub(super) async fn delete_provision_config(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<QualifierParam>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let name = function_name(path)?;
    let qualifier = qualifier(params)?;
    let exists = state
        .store
        .provision_configs(Some(&name))
        .await?
        .iter()
        .any(|p| p.qualifier == qualifier);
    if !exists {
        return Err(StoreError::ProvisionConfigNotFound {
            function: name,
            qualifier,
        }
        .into());
    }
    state
        .store
        .put_provision_config(ProvisionConfig {
            function_name: name.clone(),
            qualifier: qualifier.clone(),
            target: 0,
        })
        .await?;
    state.provision_kick.notify_one();
    tracing::info!(function = %name, %qualifier, "provision config deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    function_name: Option<String>,
}

pub(super) async fn list_provision_configs(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListProvisionConfigsOutput>, ApiError> {
    let params = query_params(params)?;
    let configs = state
        .store
        .provision_configs(params.function_name.as_deref().filter(|n| !n.is_empty()))
        .await?;
    Ok(Json(ListProvisionConfigsOutput {
        provision_configs: configs.iter().map(|p| view(&state, p)).collect(),
    }))
}
