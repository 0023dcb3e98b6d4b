//! Response bodies (camelCase JSON, described in `openapi.yaml`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    format_time, AccelerationInfo, AccelerationType, Alias, AuthType, Function, HealthCheckConfig,
    RegistryConfig, Version, RUNTIME,
};

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
    /// MB the function may write (its writable layer); a full disk is `ENOSPC` inside.
    pub disk_size: u32,
    /// Pronto: instances at once on this node, all versions together (absent: the server's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Pronto: seconds an idle on-demand instance is kept (absent: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    /// Whether the function may reach the internet (Function Compute's field, default true).
    #[serde(default = "yes")]
    pub internet_access: bool,
    /// Pronto: the fields given that Pronto accepts but does not act on (`role`,
    /// `logConfig`, `customContainerConfig.acrInstanceId`, ...), sorted; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_fields: Vec<String>,
    /// The top-level ones among them, as given, under their own names.
    #[serde(flatten)]
    pub ignored: BTreeMap<String, serde_json::Value>,
    /// Always `Active` (Function Compute's field).
    pub state: String,
    /// `InProgress` while the last update waits for its acceleration (the configuration from
    /// before keeps serving `LATEST`), else `Successful`.
    pub last_update_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_status_reason: Option<String>,
    /// Where the conversion stands; absent for `accelerationType: None` (see `accel.rs`). The
    /// same as `customContainerConfig.accelerationInfo` (Function Compute 3.0's place), kept
    /// here for the clients that read it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration_info: Option<AccelerationInfo>,
    /// Pronto: the access trace recorded by the image's first accelerated cold start (what
    /// later cold starts prefetch); absent until one is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_trace: Option<AccessTraceView>,
    pub created_time: String,
    pub last_modified_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTraceView {
    /// Chunks the first cold start read.
    pub chunks: u64,
    pub recorded_time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfigView {
    /// As given (may be a tag).
    pub image: String,
    /// What runs: `registry/repo@sha256:...`, pinned at the last create/update that set `image`.
    pub resolved_image_uri: String,
    /// Replaces the image's ENTRYPOINT (and drops its CMD) when not empty.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The container's arguments: replace the image's CMD when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    pub port: u16,
    pub acceleration_type: AccelerationType,
    /// When a new instance is ready; absent: as soon as its port answers HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_config: Option<HealthCheckConfig>,
    /// Kept and shown, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_instance_id: Option<String>,
    /// Where the conversion stands; absent for `accelerationType: None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration_info: Option<AccelerationInfo>,
    /// The function's registry credentials, without the password; absent when it uses the
    /// server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_config: Option<RegistryConfigView>,
    /// Pronto: where the converted artifact is pushed (absent: the server's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_repository: Option<String>,
}

/// `registryConfig` as shown: which credentials, never their secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryConfigView {
    /// Function Compute 3.0's `authConfig`, its `userName` only (the password is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_config: Option<RegistryAuthConfigView>,
    /// Pronto: the stored credential it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuthConfigView {
    pub user_name: String,
}

impl From<&RegistryConfig> for RegistryConfigView {
    fn from(r: &RegistryConfig) -> RegistryConfigView {
        RegistryConfigView {
            auth_config: r.auth_config.as_ref().map(|a| RegistryAuthConfigView {
                user_name: a.user_name.clone(),
            }),
            credential_name: r.credential_name.clone(),
        }
    }
}

fn yes() -> bool {
    true
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
                entrypoint: cc.entrypoint.clone(),
                command: cc.cmd.clone(),
                port: cc.port,
                acceleration_type: cc.acceleration_type,
                health_check_config: cc.health_check_config.clone(),
                acr_instance_id: cc.acr_instance_id.clone(),
                acceleration_info: f.acceleration.clone(),
                registry_config: cc.registry_config.as_ref().map(RegistryConfigView::from),
                artifact_repository: cc.artifact_repository.clone(),
            },
            memory_size: s.memory_size,
            cpu: s.cpu,
            timeout: s.timeout,
            instance_concurrency: s.instance_concurrency,
            environment_variables: s.environment_variables.clone(),
            initialization_timeout: s.initialization_timeout,
            auth_type: s.auth_type,
            disk_size: s.disk_size,
            max_instances: s.max_instances,
            idle_timeout: s.idle_timeout,
            internet_access: s.internet_access,
            ignored_fields: {
                let mut names: Vec<String> = s.ignored.keys().cloned().collect();
                if cc.acr_instance_id.is_some() {
                    names.push("customContainerConfig.acrInstanceId".to_string());
                }
                names.sort();
                names
            },
            ignored: s.ignored.clone(),
            state: "Active".to_string(),
            last_update_status: if f.update_in_progress() {
                "InProgress"
            } else {
                "Successful"
            }
            .to_string(),
            last_update_status_reason: f.update_in_progress().then(|| {
                "the new configuration serves once its acceleration is Ready (or Failed); \
                 until then the previous one serves LATEST"
                    .to_string()
            }),
            acceleration_info: f.acceleration.clone(),
            access_trace: f.trace.map(|t| AccessTraceView {
                chunks: t.chunks,
                recorded_time: format_time(t.recorded_time),
            }),
            created_time: format_time(f.created_time),
            last_modified_time: format_time(f.last_modified_time),
        }
    }
}

/// A published version (Function Compute's `Version`, plus what it runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version_id: String,
    pub description: String,
    pub created_time: String,
    /// When `LATEST` last changed before it was published.
    pub last_modified_time: String,
    /// The pinned image the version runs.
    pub resolved_image_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration_info: Option<AccelerationInfo>,
}

impl From<&Version> for VersionView {
    fn from(v: &Version) -> VersionView {
        VersionView {
            version_id: v.version_id.to_string(),
            description: v.description.clone(),
            created_time: format_time(v.created_time),
            last_modified_time: format_time(v.function.last_modified_time),
            resolved_image_uri: v.function.image.reference.to_string(),
            acceleration_info: v.function.acceleration.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListVersionsOutput {
    pub versions: Vec<VersionView>,
    /// `BACKWARD` (newest first, the default) or `FORWARD`.
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AliasView {
    pub alias_name: String,
    pub version_id: String,
    /// At most one entry: the second version and the share of invocations it gets (0 to 1).
    pub additional_version_weight: BTreeMap<String, f64>,
    pub description: String,
    pub created_time: String,
    pub last_modified_time: String,
}

impl From<&Alias> for AliasView {
    fn from(a: &Alias) -> AliasView {
        AliasView {
            alias_name: a.alias_name.clone(),
            version_id: a.version_id.to_string(),
            additional_version_weight: a
                .additional_version
                .iter()
                .map(|(v, w)| (v.to_string(), *w))
                .collect(),
            description: a.description.clone(),
            created_time: format_time(a.created_time),
            last_modified_time: format_time(a.last_modified_time),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAliasesOutput {
    pub aliases: Vec<AliasView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionConfigView {
    pub function_name: String,
    pub qualifier: String,
    /// Instances to keep started.
    pub target: u32,
    /// Provisioned instances running now.
    pub current: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListProvisionConfigsOutput {
    pub provision_configs: Vec<ProvisionConfigView>,
}
