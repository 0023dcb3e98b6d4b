//! Response bodies (camelCase JSON, described in `openapi.yaml`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{format_time, AccelerationInfo, AccelerationType, AuthType, Function, RUNTIME};

/// A function as the API shows it: the spec with defaults, plus what the server decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionView {
    pub function_id: String,
    pub function_name: String,
    pub description: String,
    pub runtime: String,
    pub custom_container_config: ContainerConfigView,
    pub memory_size: u32,
    pub cpu: f64,
    pub timeout: u32,
    pub instance_concurrency: u32,
    pub environment_variables: BTreeMap<String, String>,
    pub initialization_timeout: u32,
    pub auth_type: AuthType,
    /// Where the conversion stands; absent for `accelerationType: None` (see `accel.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration_info: Option<AccelerationInfo>,
    pub created_time: String,
    pub last_modified_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfigView {
    /// As given (may be a tag).
    pub image: String,
    /// What runs: `registry/repo@sha256:...`, pinned at the last create/update that set `image`.
    pub resolved_image_uri: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub port: u16,
    pub acceleration_type: AccelerationType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListFunctionsOutput {
    pub functions: Vec<FunctionView>,
    /// Pass as `nextToken` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

impl From<&Function> for FunctionView {
    fn from(f: &Function) -> FunctionView {
        let s = &f.spec;
        let cc = &s.custom_container_config;
        FunctionView {
            function_id: f.function_id.clone(),
            function_name: s.function_name.clone(),
            description: s.description.clone(),
            runtime: RUNTIME.to_string(),
            custom_container_config: ContainerConfigView {
                image: cc.image.clone(),
                resolved_image_uri: f.image.reference.to_string(),
                command: cc.command.clone(),
                args: cc.args.clone(),
                port: cc.port,
                acceleration_type: cc.acceleration_type,
            },
            memory_size: s.memory_size,
            cpu: s.cpu,
            timeout: s.timeout,
            instance_concurrency: s.instance_concurrency,
            environment_variables: s.environment_variables.clone(),
            initialization_timeout: s.initialization_timeout,
            auth_type: s.auth_type,
            acceleration_info: f.acceleration.clone(),
            created_time: format_time(f.created_time),
            last_modified_time: format_time(f.last_modified_time),
        }
    }
}
