//! Named registry credentials (Pronto's; Function Compute keeps registry secrets per function
//! only): `POST`/`GET /2023-03-30/registry-credentials`, `GET`/`DELETE
//! /2023-03-30/registry-credentials/{credentialName}`. Functions refer to one with
//! `customContainerConfig.registryConfig.credentialName`. No response ever holds a password.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{function_name, ApiError, JsonBody};
use crate::access::CredentialView;
use crate::model::{check_credential_name, now, RegistryCredential, ValidationError};
use crate::store::StoreError;
use crate::AppState;

/// The body of a create. `Debug` never prints the password.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CredentialInput {
    credential_name: Option<String>,
    /// `host[:port]`, as in image references (`docker.io` for Docker Hub).
    registry: Option<String>,
    user_name: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialInput")
            .field("credential_name", &self.credential_name)
            .field("registry", &self.registry)
            .field("user_name", &self.user_name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl CredentialInput {
    fn validate(self) -> Result<RegistryCredential, ValidationError> {
        let required = |field: &str, v: Option<String>| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| ValidationError::new(field, "is required"))
        };
        let name = required("credentialName", self.credential_name)?;
        check_credential_name("credentialName", &name)?;
        let given = required("registry", self.registry)?;
        // As image references name it: a host with a dot or a port, or `localhost`.
        let is_registry = !given.contains('/')
            && format!("{given}/x/y")
                .parse::<pronto_image::Reference>()
                .is_ok_and(|r| r.registry == given);
        if !is_registry {
            return Err(ValidationError::new(
                "registry",
                format!("must be a registry host[:port] (as in image references), got {given:?}"),
            ));
        }
        let registry = given;
        Ok(RegistryCredential {
            name,
            registry,
            username: required("userName", self.user_name)?,
            password: required("password", self.password)?,
            created_time: now(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListCredentialsOutput {
    pub credentials: Vec<CredentialView>,
}

pub(super) async fn create_credential(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<CredentialInput>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let cred = input.validate()?;
    let view = state.access.create(cred).await?;
    tracing::info!(credential = %view.credential_name, registry = %view.registry, "created registry credential");
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn list_credentials(State(state): State<AppState>) -> Json<ListCredentialsOutput> {
    Json(ListCredentialsOutput {
        credentials: state.access.list(),
    })
}

pub(super) async fn get_credential(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CredentialView>, ApiError> {
    let name = function_name(path)?;
    state
        .access
        .get(&name)
        .map(Json)
        .ok_or_else(|| StoreError::CredentialNotFound(name).into())
}

pub(super) async fn delete_credential(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = function_name(path)?;
    state.access.delete(&name).await?;
    tracing::info!(credential = %name, "deleted registry credential");
    Ok(StatusCode::NO_CONTENT)
}
