//! Function specs as stored, the API's input patch, and its validation.
//!
//! Input arrives as a [`FunctionInput`] (every field optional, numbers wide so that a bad value
//! reaches validation and is reported with the field's name instead of as a serde type error).
//! [`FunctionInput::validate`] turns it into a typed [`FunctionPatch`]; a create builds a
//! [`FunctionSpec`] from it with defaults ([`FunctionPatch::into_new_spec`]), an update merges it
//! into the stored one ([`FunctionPatch::apply_to`]). Merging cannot fail: every check is done on
//! the patch alone, so an update can be validated before the store's transaction.

use std::collections::BTreeMap;
use std::fmt;

use pronto_image::{Digest, Reference};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The only runtime Pronto has (Function Compute's name for it).
pub const RUNTIME: &str = "custom-container";

pub const DEFAULT_PORT: u16 = 9000;
pub const DEFAULT_MEMORY_SIZE: u32 = 512;
pub const MEMORY_SIZE_MIN: u32 = 128;
pub const MEMORY_SIZE_MAX: u32 = 32768;
pub const MEMORY_SIZE_STEP: u32 = 64;
pub const DEFAULT_CPU: f64 = 0.35;
pub const CPU_MIN: f64 = 0.05;
pub const CPU_MAX: f64 = 16.0;
pub const DEFAULT_TIMEOUT: u32 = 60;
pub const TIMEOUT_MAX: u32 = 86400;
pub const DEFAULT_INSTANCE_CONCURRENCY: u32 = 1;
pub const INSTANCE_CONCURRENCY_MAX: u32 = 200;
pub const DEFAULT_INITIALIZATION_TIMEOUT: u32 = 30;
pub const INITIALIZATION_TIMEOUT_MAX: u32 = 600;
/// `diskSize` (MB): the instance's writable layer. Function Compute offers 512 (the default)
/// and 10240; Pronto takes any size between.
pub const DEFAULT_DISK_SIZE: u32 = 512;
pub const DISK_SIZE_MIN: u32 = 512;
pub const DISK_SIZE_MAX: u32 = 10240;
/// `customContainerConfig.healthCheckConfig` (Function Compute's bounds and defaults).
pub const HEALTH_CHECK_URL_MAX: usize = 2048;
pub const HEALTH_CHECK_DELAY_MAX: u32 = 120;
pub const HEALTH_CHECK_PERIOD_MAX: u32 = 120;
pub const DEFAULT_HEALTH_CHECK_PERIOD: u32 = 3;
pub const HEALTH_CHECK_TIMEOUT_MAX: u32 = 3;
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: u32 = 1;
pub const HEALTH_CHECK_THRESHOLD_MAX: u32 = 120;
pub const DEFAULT_HEALTH_CHECK_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_HEALTH_CHECK_SUCCESS_THRESHOLD: u32 = 1;
/// The JSON of the Function Compute fields a function keeps without acting on them
/// ([`FunctionSpec::ignored`]), all together.
pub const IGNORED_FIELDS_MAX_BYTES: usize = 16 << 10;
/// Bounds of `maxInstances` (a Pronto field: instances of one function on this node).
pub const MAX_INSTANCES_MAX: u32 = 1000;
/// Bounds of `idleTimeout` (a Pronto field: seconds an idle instance is kept).
pub const IDLE_TIMEOUT_MAX: u32 = 86400;
/// `LATEST`: the function's current configuration, as opposed to a published version.
pub const LATEST: &str = "LATEST";
/// Aliases and versions a function may have (Function Compute's limits are of this order).
pub const ALIAS_NAME_MAX: usize = 128;
pub const FUNCTION_NAME_MAX: usize = 64;
/// Function Compute's limit.
pub const DESCRIPTION_MAX: usize = 256;
/// The environment's bytes (`NAME=VALUE` each): well below what `execve` takes (one string at
/// most 128 KiB, all of them a quarter of the stack limit), so an accepted function can start.
pub const ENVIRONMENT_MAX_BYTES: usize = 64 << 10;

/// A request field that failed validation; shown as `FIELD: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field's path in the request body, e.g. `customContainerConfig.port`.
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccelerationType {
    /// Convert the image to the lazily loaded format after create/update.
    Default,
    /// Always cold-start from a full pull.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// Invocations need the API token.
    Function,
    /// Anyone who reaches the invoke port may invoke.
    Anonymous,
}

/// How the function's container is run.
///
/// The process is Docker's: `entrypoint` replaces the image ENTRYPOINT, and with it the image
/// CMD (as `docker run --entrypoint` does); `cmd` replaces the image CMD. In the API these are
/// Function Compute 3.0's `entrypoint` and `command`. Rows stored before the 3.0 names have
/// them as `command` and `args` (Pronto's names then, with the same meanings), read through
/// the aliases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    /// The image reference as the user gave it (a tag may move; see [`Function::image`]).
    pub image: String,
    /// Replaces the image's ENTRYPOINT (and drops its CMD) when not empty.
    #[serde(alias = "command")]
    pub entrypoint: Vec<String>,
    /// Replaces the image's CMD when not empty.
    #[serde(alias = "args")]
    pub cmd: Vec<String>,
    /// The port the program listens on inside the container.
    pub port: u16,
    pub acceleration_type: AccelerationType,
    /// When a new instance is ready; `None`: as soon as its port answers HTTP at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_config: Option<HealthCheckConfig>,
    /// Function Compute's Container Registry Enterprise Edition instance: kept and shown, not
    /// used (Pronto pulls from the registry the image names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_instance_id: Option<String>,
    /// Credentials for the image's registry (Function Compute 3.0's `registryConfig`):
    /// used for the pull, the conversion and the lazy reads. Holds a secret: never shown
    /// (see `RegistryConfigView`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_config: Option<RegistryConfig>,
    /// Pronto: the repository (`REGISTRY/REPO`) the converted artifact is pushed to instead of
    /// the image's own (or the server's `--artifact-repository`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_repository: Option<String>,
}

/// How a function authenticates to its image's registry: exactly one of its own username and
/// password (Function Compute 3.0's `authConfig`) or a credential stored by the server
/// (Pronto's `credentialName`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_config: Option<RegistryAuthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
}

/// Function Compute 3.0's `RegistryAuthConfig`. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuthConfig {
    pub user_name: String,
    pub password: String,
}

impl fmt::Debug for RegistryAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuthConfig")
            .field("user_name", &self.user_name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A registry credential stored by the server under a name (`/registry-credentials`), for
/// functions to refer to. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    pub name: String,
    /// `host[:port]`, as in image references.
    pub registry: String,
    pub username: String,
    pub password: String,
    pub created_time: OffsetDateTime,
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("name", &self.name)
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Function Compute's `healthCheckConfig`, every default applied: how a new instance shows it
/// is ready (see `pronto_runtime::ReadinessProbe` for the rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckConfig {
    /// The path `GET` is sent to; an answer from 200 to 399 passes.
    pub http_get_url: String,
    /// Seconds from the container's start to the first check.
    pub initial_delay_seconds: u32,
    /// Seconds between checks.
    pub period_seconds: u32,
    /// Seconds a check waits for its answer.
    pub timeout_seconds: u32,
    /// Failed checks in a row that fail the start.
    pub failure_threshold: u32,
    /// Passed checks in a row that make the instance ready.
    pub success_threshold: u32,
}

/// A function's desired state with every default applied: what the user asked for.
///
/// Stored as JSON (`functions.spec`); fields added later need `#[serde(default)]` so that older
/// rows still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    pub function_name: String,
    pub description: String,
    pub custom_container_config: ContainerConfig,
    /// MiB.
    pub memory_size: u32,
    /// vCPUs.
    pub cpu: f64,
    /// Seconds an invocation may take.
    pub timeout: u32,
    /// Requests one instance serves at once.
    pub instance_concurrency: u32,
    pub environment_variables: BTreeMap<String, String>,
    /// Seconds an instance has to answer on its port after start.
    pub initialization_timeout: u32,
    pub auth_type: AuthType,
    /// MB the function may write (its writable layer: `/tmp`, changed files).
    #[serde(default = "default_disk_size")]
    pub disk_size: u32,
    /// Instances of this function at once on this node (all its versions together, those
    /// still finishing requests of an older configuration included). `None` in rows stored
    /// before the field existed: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Seconds an instance serving no request is kept before it is stopped (scale to zero);
    /// provisioned instances are never stopped for idleness. `None`: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    /// Function Compute's `internetAccess` (default true): whether the function may reach the
    /// internet: without it an instance has only its loopback (no veth, no route).
    #[serde(default = "default_true")]
    pub internet_access: bool,
    /// Function Compute fields accepted without being acted on (`role`, `logConfig`, ...,
    /// see [`FunctionInput::validate`]), as given, by name: `GetFunction` shows them back and
    /// lists them in `ignoredFields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ignored: BTreeMap<String, serde_json::Value>,
}

fn default_disk_size() -> u32 {
    DEFAULT_DISK_SIZE
}

fn default_true() -> bool {
    true
}

/// The image a function runs, pinned at create/update time (tags move; this does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImage {
    /// `registry/repo@sha256:...` of the platform manifest.
    pub reference: Reference,
    pub manifest_digest: Digest,
    /// What the registry said when the image was pinned, so that it is never resolved again
    /// (conversion and cold starts rebuild it from these, checking the digests). `None` only
    /// for functions stored before Pronto kept it.
    pub kept: Option<KeptImage>,
}

/// The manifest and config of a pinned image, as the registry served them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptImage {
    pub manifest: bytes::Bytes,
    pub config: bytes::Bytes,
}

/// Where the conversion to the accelerated format stands (see `accel.rs`); `None` (omitted in
/// the API) for `accelerationType: None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccelerationInfo {
    pub status: AccelerationStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `Ready`: where the artifact is (`REGISTRY/REPO:sha256-<hex>.pronto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// `Ready`: the artifact manifest's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_digest: Option<String>,
    /// `Ready`: bytes of the index blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_size: Option<u64>,
    /// `Ready`: bytes of the packs the index references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// `Ready`: how long the conversion took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Pronto: the hot-set re-layout of this artifact (`hot.rs`), made after the image's first
    /// access trace; absent until then. It belongs to this conversion of this image: a new
    /// image or conversion replaces the whole `AccelerationInfo`, so a hot revision of an
    /// older image is never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_pack: Option<HotPackInfo>,
}

/// Where the hot-set re-layout stands. Cold starts mount `artifactDigest` only when `Ready` and
/// made for the function's current image (`image`); until then, and after `Failed`, the base
/// revision (nothing is retried until a new trace or image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HotPackInfo {
    pub status: AccelerationStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The image manifest digest it was made for.
    pub image: String,
    /// The base revision's manifest digest it was made from.
    pub base_digest: String,
    /// `Ready`: the hot revision's manifest digest (what cold starts mount, pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_digest: Option<String>,
    /// `Ready`: `REGISTRY/REPO:sha256-<hex>.pronto-hot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// `Ready`: hot packs written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<u64>,
    /// `Ready`: their stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `Ready`: chunks moved into them (the trace's, in its order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// `Ready`: how long the job took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// When the job ended (or, `Preparing`, began).
    pub created_time: String,
}

impl Default for AccelerationInfo {
    fn default() -> Self {
        AccelerationInfo {
            status: AccelerationStatus::Preparing,
            reason: None,
            artifact: None,
            artifact_digest: None,
            index_size: None,
            stored_bytes: None,
            duration_seconds: None,
            hot_pack: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccelerationStatus {
    Preparing,
    Ready,
    Failed,
}

/// A function as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// A UUID, fixed at create.
    pub function_id: String,
    pub spec: FunctionSpec,
    pub image: PinnedImage,
    pub acceleration: Option<AccelerationInfo>,
    /// UTC, millisecond precision (what the store keeps).
    pub created_time: OffsetDateTime,
    pub last_modified_time: OffsetDateTime,
    /// The access trace recorded for this configuration's image, if any (what the next cold
    /// starts on a node without the image prefetch).
    pub trace: Option<TraceSummary>,
    /// While an update's acceleration is `Preparing`: the configuration from before the update,
    /// which keeps serving `LATEST` until the new one is `Ready` (or `Failed`), so that no cold
    /// start takes the slow path because of a release. `None`: this configuration serves.
    pub serving: Option<Box<Function>>,
}

/// What is known of a stored access trace without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSummary {
    /// Chunks the first cold start read, in order.
    pub chunks: u64,
    pub recorded_time: OffsetDateTime,
}

impl Function {
    /// The configuration that serves `LATEST` now.
    pub fn live(&self) -> &Function {
        self.serving.as_deref().unwrap_or(self)
    }

    /// True while an update waits for its acceleration before it serves.
    pub fn update_in_progress(&self) -> bool {
        self.serving.is_some()
    }
}

/// A published version: an immutable snapshot of the function's configuration (spec, pinned
/// image, acceleration artifact; its access trace is kept per image with the function).
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub version_id: u32,
    pub description: String,
    /// When it was published.
    pub created_time: OffsetDateTime,
    /// The configuration, as `LATEST` had it (its `last_modified_time` is that of `LATEST`
    /// then); `serving` is always `None`.
    pub function: Function,
}

/// A name for a version, optionally sending a share of the traffic to a second one (a canary).
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub alias_name: String,
    pub version_id: u32,
    /// The second version and the share of invocations it gets (0 to 1).
    pub additional_version: Option<(u32, f64)>,
    pub description: String,
    pub created_time: OffsetDateTime,
    pub last_modified_time: OffsetDateTime,
}

impl Alias {
    /// The version an invocation goes to, given a uniform sample `u` in [0, 1).
    pub fn pick(&self, u: f64) -> u32 {
        match self.additional_version {
            Some((v, weight)) if u < weight => v,
            _ => self.version_id,
        }
    }
}

/// How many instances of a qualifier (`LATEST`, an alias or a version) are kept started and warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionConfig {
    pub function_name: String,
    pub qualifier: String,
    pub target: u32,
}

/// What a qualifier names: `LATEST`, a version number, or an alias (`[A-Za-z_][A-Za-z0-9_-]*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    Latest,
    Version(u32),
    Alias(String),
}

impl Qualifier {
    pub fn parse(s: &str) -> Result<Qualifier, ValidationError> {
        if s == LATEST {
            return Ok(Qualifier::Latest);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(v) if v > 0 => Ok(Qualifier::Version(v)),
                _ => Err(ValidationError::new(
                    "qualifier",
                    format!("version must be a number from 1, got {s:?}"),
                )),
            };
        }
        check_alias_name("qualifier", s)?;
        Ok(Qualifier::Alias(s.to_string()))
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Latest => f.write_str(LATEST),
            Qualifier::Version(v) => write!(f, "{v}"),
            Qualifier::Alias(a) => f.write_str(a),
        }
    }
}

/// Alias names: `[A-Za-z_][A-Za-z0-9_-]*`, at most 128 characters, not `LATEST` (a version's
/// digits would be taken for a version).
pub fn check_alias_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= ALIAS_NAME_MAX
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        && name != LATEST;
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "an alias must be 1 to {ALIAS_NAME_MAX} characters of [A-Za-z0-9_-] starting                  with a letter or underscore, and not LATEST; got {name:?}"
            ),
        ))
    }
}

/// Now, in UTC, truncated to milliseconds so that a stored and reloaded time compares equal.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    let ms = t.millisecond();
    t.replace_millisecond(ms).unwrap_or(t)
}

/// RFC 3339 in UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The body of a create or update, as sent. Unknown fields are refused (a typo must not be
/// silently ignored); `null` counts as absent.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionInput {
    pub function_name: Option<String>,
    pub description: Option<String>,
    pub runtime: Option<String>,
    pub custom_container_config: Option<ContainerConfigInput>,
    pub memory_size: Option<i64>,
    pub cpu: Option<f64>,
    pub timeout: Option<i64>,
    pub instance_concurrency: Option<i64>,
    pub environment_variables: Option<BTreeMap<String, String>>,
    pub initialization_timeout: Option<i64>,
    pub auth_type: Option<String>,
    pub max_instances: Option<i64>,
    pub idle_timeout: Option<i64>,
    pub disk_size: Option<i64>,
    pub internet_access: Option<bool>,
    // Function Compute fields Pronto does not act on: accepted where ignoring them is
    // harmless (or when they are empty), else refused by name.
    pub handler: Option<String>,
    pub role: Option<String>,
    pub log_config: Option<JsonObject>,
    pub tracing_config: Option<JsonObject>,
    pub tags: Option<Vec<serde_json::Value>>,
    pub vpc_config: Option<JsonObject>,
    pub nas_config: Option<JsonObject>,
    pub oss_mount_config: Option<JsonObject>,
    pub layers: Option<Vec<String>>,
    pub gpu_config: Option<JsonObject>,
    #[serde(rename = "customDNS")]
    pub custom_dns: Option<JsonObject>,
    pub instance_lifecycle_config: Option<JsonObject>,
    pub code: Option<JsonObject>,
    pub custom_runtime_config: Option<JsonObject>,
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerConfigInput {
    pub image: Option<String>,
    /// Replaces the image ENTRYPOINT (Function Compute 3.0).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image CMD (Function Compute 3.0: the container's arguments).
    pub command: Option<Vec<String>>,
    /// Pronto's name for `command` before the Function Compute 3.0 names; one or the other.
    pub args: Option<Vec<String>>,
    pub port: Option<i64>,
    pub acceleration_type: Option<String>,
    pub health_check_config: Option<HealthCheckConfigInput>,
    pub acr_instance_id: Option<String>,
    pub registry_config: Option<RegistryConfigInput>,
    /// Pronto: where the converted artifact is pushed; `""` removes it.
    pub artifact_repository: Option<String>,
}

/// Function Compute 3.0's `registryConfig` as sent, plus Pronto's `credentialName`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfigInput {
    pub auth_config: Option<RegistryAuthConfigInput>,
    /// Pronto: the name of a credential stored with `POST /2023-03-30/registry-credentials`.
    pub credential_name: Option<String>,
    /// Function Compute's certificate settings: accepted only when empty (registries on
    /// loopback speak plain HTTP, others HTTPS with the system's roots).
    pub cert_config: Option<JsonObject>,
    /// Function Compute's VPC settings for the pull: accepted only when empty.
    pub network_config: Option<JsonObject>,
}

#[derive(Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryAuthConfigInput {
    pub user_name: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RegistryAuthConfigInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuthConfigInput")
            .field("user_name", &self.user_name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryConfigInput {
    /// `None`: configures nothing (an update that gives it removes the stored one).
    fn validate(self) -> Result<Option<RegistryConfig>, ValidationError> {
        const FIELD: &str = "customContainerConfig.registryConfig";
        for (name, value, why) in [
            (
                "certConfig",
                &self.cert_config,
                "registries on loopback are spoken to over HTTP, others over HTTPS with the \
                 system's roots",
            ),
            (
                "networkConfig",
                &self.network_config,
                "images are pulled over the node's own network",
            ),
        ] {
            if let Some(v) = value {
                if !is_empty_value(&serde_json::Value::Object(v.clone())) {
                    return Err(ValidationError::new(
                        format!("{FIELD}.{name}"),
                        format!("not supported: {why}; leave it out (or empty)"),
                    ));
                }
            }
        }
        let auth = match self.auth_config {
            Some(RegistryAuthConfigInput {
                user_name,
                password,
            }) => {
                let (user_name, password) =
                    (user_name.unwrap_or_default(), password.unwrap_or_default());
                match (user_name.is_empty(), password.is_empty()) {
                    (true, true) => None,
                    (false, false) => Some(RegistryAuthConfig {
                        user_name,
                        password,
                    }),
                    (true, false) => {
                        return Err(ValidationError::new(
                            format!("{FIELD}.authConfig.userName"),
                            "is required with a password",
                        ))
                    }
                    (false, true) => {
                        return Err(ValidationError::new(
                            format!("{FIELD}.authConfig.password"),
                            "is required with a userName",
                        ))
                    }
                }
            }
            None => None,
        };
        let name = self.credential_name.filter(|n| !n.is_empty());
        if let Some(n) = &name {
            check_credential_name(&format!("{FIELD}.credentialName"), n)?;
        }
        match (auth, name) {
            (Some(_), Some(_)) => Err(ValidationError::new(
                FIELD,
                "give authConfig or credentialName, not both",
            )),
            (None, None) => Ok(None),
            (auth_config, credential_name) => Ok(Some(RegistryConfig {
                auth_config,
                credential_name,
            })),
        }
    }
}

/// A stored credential's name: `[A-Za-z_][A-Za-z0-9_-]*`, 1 to 64 characters (a function
/// name's rule).
pub fn check_credential_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if is_function_name(name) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "must be 1-64 letters, digits, '_' or '-', not starting with a digit or '-', \
                 got {name:?}"
            ),
        ))
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckConfigInput {
    pub http_get_url: Option<String>,
    pub initial_delay_seconds: Option<i64>,
    pub period_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub success_threshold: Option<i64>,
}

impl HealthCheckConfigInput {
    /// The config with defaults applied; `None` for an empty `httpGetUrl` (no health check:
    /// how an update removes one).
    fn validate(self) -> Result<Option<HealthCheckConfig>, ValidationError> {
        const AT: &str = "customContainerConfig.healthCheckConfig";
        let field = |name: &str| format!("{AT}.{name}");
        let number = |name: &str, v: Option<i64>, min: u32, max: u32, default: u32| {
            v.map_or(Ok(default), |v| {
                in_range(&field(name), v, min.into(), max.into())
            })
        };
        let config = HealthCheckConfig {
            http_get_url: String::new(),
            initial_delay_seconds: number(
                "initialDelaySeconds",
                self.initial_delay_seconds,
                0,
                HEALTH_CHECK_DELAY_MAX,
                0,
            )?,
            period_seconds: number(
                "periodSeconds",
                self.period_seconds,
                1,
                HEALTH_CHECK_PERIOD_MAX,
                DEFAULT_HEALTH_CHECK_PERIOD,
            )?,
            timeout_seconds: number(
                "timeoutSeconds",
                self.timeout_seconds,
                1,
                HEALTH_CHECK_TIMEOUT_MAX,
                DEFAULT_HEALTH_CHECK_TIMEOUT,
            )?,
            failure_threshold: number(
                "failureThreshold",
                self.failure_threshold,
                1,
                HEALTH_CHECK_THRESHOLD_MAX,
                DEFAULT_HEALTH_CHECK_FAILURE_THRESHOLD,
            )?,
            success_threshold: number(
                "successThreshold",
                self.success_threshold,
                1,
                HEALTH_CHECK_THRESHOLD_MAX,
                DEFAULT_HEALTH_CHECK_SUCCESS_THRESHOLD,
            )?,
        };
        let Some(url) = self.http_get_url else {
            return Err(ValidationError::new(field("httpGetUrl"), "is required"));
        };
        if url.is_empty() {
            return Ok(None);
        }
        // It goes into the probe's request line as is.
        let n = url.len();
        if !url.starts_with('/')
            || n > HEALTH_CHECK_URL_MAX
            || !url.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                field("httpGetUrl"),
                format!(
                    "must be a path starting with / of at most {HEALTH_CHECK_URL_MAX} visible \
                     ASCII characters (no spaces), got {url:?}"
                ),
            ));
        }
        Ok(Some(HealthCheckConfig {
            http_get_url: url,
            ..config
        }))
    }
}

/// An image as given, and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInput {
    pub given: String,
    pub reference: Reference,
}

/// A validated [`FunctionInput`]: `Some` fields replace the stored ones (lists and the
/// environment map are replaced whole, not merged).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FunctionPatch {
    pub function_name: Option<String>,
    pub description: Option<String>,
    pub image: Option<ImageInput>,
    /// Replaces the image ENTRYPOINT (and drops its CMD) when not empty.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image CMD when not empty (the API's `command`, or `args`).
    pub cmd: Option<Vec<String>>,
    pub port: Option<u16>,
    pub acceleration_type: Option<AccelerationType>,
    pub memory_size: Option<u32>,
    pub cpu: Option<f64>,
    pub timeout: Option<u32>,
    pub instance_concurrency: Option<u32>,
    pub environment_variables: Option<BTreeMap<String, String>>,
    pub initialization_timeout: Option<u32>,
    pub auth_type: Option<AuthType>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<u32>,
    pub disk_size: Option<u32>,
    /// `Some(None)`: remove the health check.
    pub health_check_config: Option<Option<HealthCheckConfig>>,
    pub acr_instance_id: Option<String>,
    /// `Some(None)`: remove the stored one.
    pub registry_config: Option<Option<RegistryConfig>>,
    /// `Some(None)`: remove the stored one; `Some(Some(_))` is `REGISTRY/REPO`, normalized.
    pub artifact_repository: Option<Option<String>>,
    pub internet_access: Option<bool>,
    /// Function Compute fields kept without being acted on; each replaces the stored one.
    pub ignored: BTreeMap<String, serde_json::Value>,
}

/// Why Pronto cannot honour a Function Compute field unless it is empty.
const REFUSED_UNLESS_EMPTY: [(&str, &str); 8] = [
    ("vpcConfig", "functions cannot be attached to a VPC"),
    ("nasConfig", "NAS file systems cannot be mounted"),
    ("ossMountConfig", "OSS buckets cannot be mounted"),
    ("layers", "layers cannot be added to a custom container"),
    ("gpuConfig", "functions get no GPU"),
    ("customDNS", "a custom DNS configuration cannot be applied"),
    (
        "code",
        "only custom containers (customContainerConfig) run here",
    ),
    (
        "customRuntimeConfig",
        "only custom containers (customContainerConfig) run here",
    ),
];

/// A value that configures nothing: null, false, 0, "", [], or an object of such values (what
/// Function Compute's tools send for a feature left off).
fn is_empty_value(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty_value),
    }
}

impl FunctionInput {
    /// The Function Compute fields that Pronto keeps without acting on, by name; an error
    /// naming the first that would matter if ignored.
    fn ignored_fields(&self) -> Result<BTreeMap<String, serde_json::Value>, ValidationError> {
        use serde_json::Value;
        let object = |o: &Option<JsonObject>| o.clone().map(Value::Object);
        let harmless = [
            ("handler", self.handler.clone().map(Value::from)),
            ("role", self.role.clone().map(Value::from)),
            ("logConfig", object(&self.log_config)),
            ("tracingConfig", object(&self.tracing_config)),
            ("tags", self.tags.clone().map(Value::from)),
        ];
        let unless_empty = [
            object(&self.vpc_config),
            object(&self.nas_config),
            object(&self.oss_mount_config),
            self.layers.clone().map(Value::from),
            object(&self.gpu_config),
            object(&self.custom_dns),
            object(&self.code),
            object(&self.custom_runtime_config),
        ];
        let mut kept = BTreeMap::new();
        for (name, value) in harmless {
            if let Some(v) = value {
                kept.insert(name.to_string(), v);
            }
        }
        for ((name, why), value) in REFUSED_UNLESS_EMPTY.iter().zip(unless_empty) {
            let Some(v) = value else { continue };
            if !is_empty_value(&v) {
                return Err(ValidationError::new(
                    *name,
                    format!("not supported: {why}; leave it out (or empty)"),
                ));
            }
            kept.insert(name.to_string(), v);
        }
        if let Some(hooks) = &self.instance_lifecycle_config {
            // Hooks (`initializer`, `preStop`) are configured by a handler; a timeout alone
            // (what GetFunction shows for no hook) configures nothing.
            for (hook, config) in hooks {
                if config.get("handler").is_some_and(|h| !is_empty_value(h)) {
                    return Err(ValidationError::new(
                        format!("instanceLifecycleConfig.{hook}.handler"),
                        "not supported: lifecycle hooks are not called; leave it out (or empty)",
                    ));
                }
            }
            kept.insert(
                "instanceLifecycleConfig".to_string(),
                Value::Object(hooks.clone()),
            );
        }
        let size: usize = kept
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        if size > IGNORED_FIELDS_MAX_BYTES {
            return Err(ValidationError::new(
                kept.keys().cloned().collect::<Vec<_>>().join(", "),
                format!(
                    "fields Pronto does not act on must total at most {IGNORED_FIELDS_MAX_BYTES} \
                     bytes of JSON, got {size}"
                ),
            ));
        }
        Ok(kept)
    }

    /// Checks every field present; the first bad one is reported.
    pub fn validate(mut self) -> Result<FunctionPatch, ValidationError> {
        let ignored = self.ignored_fields()?;
        let cc = self.custom_container_config.take().unwrap_or_default();
        if let Some(name) = &self.function_name {
            check_function_name(name)?;
        }
        if let Some(d) = &self.description {
            let n = d.chars().count();
            if n > DESCRIPTION_MAX {
                return Err(ValidationError::new(
                    "description",
                    format!("must be at most {DESCRIPTION_MAX} characters, got {n}"),
                ));
            }
        }
        if let Some(r) = &self.runtime {
            if r != RUNTIME {
                return Err(ValidationError::new(
                    "runtime",
                    format!("must be {RUNTIME:?}, got {r:?}"),
                ));
            }
        }
        let image = match cc.image {
            None => None,
            Some(given) => {
                const FIELD: &str = "customContainerConfig.image";
                if given.trim() != given {
                    return Err(ValidationError::new(
                        FIELD,
                        format!("must not have surrounding whitespace, got {given:?}"),
                    ));
                }
                let reference = given
                    .parse::<Reference>()
                    .map_err(|e| ValidationError::new(FIELD, e.to_string()))?;
                Some(ImageInput { given, reference })
            }
        };
        if cc.command.is_some() && cc.args.is_some() {
            return Err(ValidationError::new(
                "customContainerConfig.args",
                "give command or args, not both: since the Function Compute 3.0 names, command \
                 is the container's arguments (what args was; it replaces the image CMD) and \
                 entrypoint replaces the image ENTRYPOINT (what command was)",
            ));
        }
        for (field, list) in [
            ("entrypoint", &cc.entrypoint),
            ("command", &cc.command),
            ("args", &cc.args),
        ] {
            for (i, s) in list.iter().flatten().enumerate() {
                // execve takes C strings.
                if s.contains('\0') {
                    return Err(ValidationError::new(
                        format!("customContainerConfig.{field}[{i}]"),
                        "must not contain NUL",
                    ));
                }
            }
        }
        let port = cc
            .port
            .map(|p| in_range("customContainerConfig.port", p, 1, 65535))
            .transpose()?
            .map(|p| p as u16);
        let acceleration_type = cc
            .acceleration_type
            .map(|a| match a.as_str() {
                "Default" => Ok(AccelerationType::Default),
                "None" => Ok(AccelerationType::None),
                _ => Err(ValidationError::new(
                    "customContainerConfig.accelerationType",
                    format!("must be \"Default\" or \"None\", got {a:?}"),
                )),
            })
            .transpose()?;
        let memory_size = self
            .memory_size
            .map(|m| {
                let m = in_range(
                    "memorySize",
                    m,
                    MEMORY_SIZE_MIN.into(),
                    MEMORY_SIZE_MAX.into(),
                )?;
                if m % MEMORY_SIZE_STEP != 0 {
                    return Err(ValidationError::new(
                        "memorySize",
                        format!("must be a multiple of {MEMORY_SIZE_STEP}, got {m}"),
                    ));
                }
                Ok(m)
            })
            .transpose()?;
        if let Some(c) = self.cpu {
            if !(CPU_MIN..=CPU_MAX).contains(&c) {
                return Err(ValidationError::new(
                    "cpu",
                    format!("must be between {CPU_MIN} and {CPU_MAX}, got {c}"),
                ));
            }
        }
        let timeout = self
            .timeout
            .map(|t| in_range("timeout", t, 1, TIMEOUT_MAX.into()))
            .transpose()?;
        let instance_concurrency = self
            .instance_concurrency
            .map(|c| in_range("instanceConcurrency", c, 1, INSTANCE_CONCURRENCY_MAX.into()))
            .transpose()?;
        if let Some(env) = &self.environment_variables {
            let total: usize = env.iter().map(|(k, v)| k.len() + 1 + v.len()).sum();
            if total > ENVIRONMENT_MAX_BYTES {
                return Err(ValidationError::new(
                    "environmentVariables",
                    format!(
                        "must total at most {ENVIRONMENT_MAX_BYTES} bytes (NAME=VALUE each), got \
                         {total}"
                    ),
                ));
            }
            for (k, v) in env {
                if !is_env_name(k) {
                    return Err(ValidationError::new(
                        "environmentVariables",
                        format!("invalid name {k:?}: must match [A-Za-z_][A-Za-z0-9_]*"),
                    ));
                }
                if v.contains('\0') {
                    return Err(ValidationError::new(
                        format!("environmentVariables.{k}"),
                        "must not contain NUL",
                    ));
                }
            }
        }
        let initialization_timeout = self
            .initialization_timeout
            .map(|t| {
                in_range(
                    "initializationTimeout",
                    t,
                    1,
                    INITIALIZATION_TIMEOUT_MAX.into(),
                )
            })
            .transpose()?;
        let auth_type = self
            .auth_type
            .map(|a| match a.as_str() {
                "function" => Ok(AuthType::Function),
                "anonymous" => Ok(AuthType::Anonymous),
                _ => Err(ValidationError::new(
                    "authType",
                    format!("must be \"function\" or \"anonymous\", got {a:?}"),
                )),
            })
            .transpose()?;
        let max_instances = self
            .max_instances
            .map(|m| in_range("maxInstances", m, 1, MAX_INSTANCES_MAX.into()))
            .transpose()?;
        let idle_timeout = self
            .idle_timeout
            .map(|t| in_range("idleTimeout", t, 1, IDLE_TIMEOUT_MAX.into()))
            .transpose()?;
        let disk_size = self
            .disk_size
            .map(|d| in_range("diskSize", d, DISK_SIZE_MIN.into(), DISK_SIZE_MAX.into()))
            .transpose()?;
        let health_check_config = cc
            .health_check_config
            .map(HealthCheckConfigInput::validate)
            .transpose()?;
        let registry_config = cc
            .registry_config
            .map(RegistryConfigInput::validate)
            .transpose()?;
        let artifact_repository = cc
            .artifact_repository
            .map(|r| {
                if r.is_empty() {
                    return Ok(None);
                }
                pronto_artifact::parse_repository(&r)
                    .map(|r| Some(r.to_string()))
                    .map_err(|e| {
                        ValidationError::new(
                            "customContainerConfig.artifactRepository",
                            e.to_string(),
                        )
                    })
            })
            .transpose()?;
        Ok(FunctionPatch {
            health_check_config,
            acr_instance_id: cc.acr_instance_id,
            registry_config,
            artifact_repository,
            internet_access: self.internet_access,
            ignored,
            entrypoint: cc.entrypoint,
            disk_size,
            max_instances,
            idle_timeout,
            function_name: self.function_name,
            description: self.description,
            image,
            cmd: cc.command.or(cc.args),
            port,
            acceleration_type,
            memory_size,
            cpu: self.cpu,
            timeout,
            instance_concurrency,
            environment_variables: self.environment_variables,
            initialization_timeout,
            auth_type,
        })
    }
}

impl FunctionPatch {
    /// The spec of a new function: `functionName` and `customContainerConfig.image` are
    /// required, everything else defaults. Returns the image reference to resolve too.
    pub fn into_new_spec(self) -> Result<(FunctionSpec, Reference), ValidationError> {
        let Some(function_name) = self.function_name.clone() else {
            return Err(ValidationError::new("functionName", "is required"));
        };
        let Some(image) = self.image.clone() else {
            return Err(ValidationError::new(
                "customContainerConfig.image",
                "is required",
            ));
        };
        let mut spec = FunctionSpec {
            function_name,
            description: String::new(),
            custom_container_config: ContainerConfig {
                image: image.given,
                entrypoint: Vec::new(),
                cmd: Vec::new(),
                port: DEFAULT_PORT,
                acceleration_type: AccelerationType::Default,
                health_check_config: None,
                acr_instance_id: None,
                registry_config: None,
                artifact_repository: None,
            },
            memory_size: DEFAULT_MEMORY_SIZE,
            cpu: DEFAULT_CPU,
            timeout: DEFAULT_TIMEOUT,
            instance_concurrency: DEFAULT_INSTANCE_CONCURRENCY,
            environment_variables: BTreeMap::new(),
            initialization_timeout: DEFAULT_INITIALIZATION_TIMEOUT,
            auth_type: AuthType::Function,
            max_instances: None,
            idle_timeout: None,
            disk_size: DEFAULT_DISK_SIZE,
            internet_access: true,
            ignored: BTreeMap::new(),
        };
        self.apply_to(&mut spec);
        Ok((spec, image.reference))
    }

    /// Replaces the fields this patch has. `functionName` is left alone: it is the key, and the
    /// caller checks that a patch does not try to change it.
    pub fn apply_to(self, spec: &mut FunctionSpec) {
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        let cc = &mut spec.custom_container_config;
        set(&mut cc.image, self.image.map(|i| i.given));
        set(&mut cc.entrypoint, self.entrypoint);
        set(&mut cc.cmd, self.cmd);
        set(&mut cc.health_check_config, self.health_check_config);
        if self.acr_instance_id.is_some() {
            cc.acr_instance_id = self.acr_instance_id;
        }
        set(&mut cc.registry_config, self.registry_config);
        set(&mut cc.artifact_repository, self.artifact_repository);
        set(&mut cc.port, self.port);
        set(&mut cc.acceleration_type, self.acceleration_type);
        set(&mut spec.description, self.description);
        set(&mut spec.memory_size, self.memory_size);
        set(&mut spec.cpu, self.cpu);
        set(&mut spec.timeout, self.timeout);
        set(&mut spec.instance_concurrency, self.instance_concurrency);
        set(&mut spec.environment_variables, self.environment_variables);
        set(
            &mut spec.initialization_timeout,
            self.initialization_timeout,
        );
        set(&mut spec.auth_type, self.auth_type);
        set(&mut spec.disk_size, self.disk_size);
        set(&mut spec.internet_access, self.internet_access);
        spec.ignored.extend(self.ignored);
        if self.max_instances.is_some() {
            spec.max_instances = self.max_instances;
        }
        if self.idle_timeout.is_some() {
            spec.idle_timeout = self.idle_timeout;
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_-]*`, 1 to 64 characters.
pub fn is_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= FUNCTION_NAME_MAX
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn check_function_name(name: &str) -> Result<(), ValidationError> {
    if is_function_name(name) {
        return Ok(());
    }
    Err(ValidationError::new(
        "functionName",
        format!(
            "must be 1 to {FUNCTION_NAME_MAX} characters of [A-Za-z0-9_-] starting with a letter \
             or underscore, got {name:?}"
        ),
    ))
}

/// `[A-Za-z_][A-Za-z0-9_]*` (what a POSIX shell accepts as a variable name).
fn is_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

fn in_range(field: &str, v: i64, min: i64, max: i64) -> Result<u32, ValidationError> {
    if (min..=max).contains(&v) {
        // min..=max is within u32 for every caller.
        u32::try_from(v).map_err(|_| ValidationError::new(field, format!("out of range, got {v}")))
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max}, got {v}"),
        ))
    }
}

impl fmt::Display for AccelerationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelerationType::Default => "Default",
            AccelerationType::None => "None",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: serde_json::Value) -> FunctionInput {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: serde_json::Value) -> String {
        input(v).validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply_to_a_minimal_create() {
        let (spec, reference) = input(json!({
            "functionName": "hello",
            "customContainerConfig": {"image": "127.0.0.1:5000/app:v1"}
        }))
        .validate()
        .unwrap()
        .into_new_spec()
        .unwrap();
        assert_eq!(reference.to_string(), "127.0.0.1:5000/app:v1");
        assert_eq!(spec.custom_container_config.port, 9000);
        assert_eq!(
            spec.custom_container_config.acceleration_type,
            AccelerationType::Default
        );
        assert_eq!(spec.memory_size, 512);
        assert_eq!(spec.cpu, 0.35);
        assert_eq!(spec.timeout, 60);
        assert_eq!(spec.instance_concurrency, 1);
        assert_eq!(spec.initialization_timeout, 30);
        assert_eq!(spec.auth_type, AuthType::Function);
        assert_eq!(spec.description, "");
    }

    #[test]
    fn required_fields_on_create() {
        let e = FunctionPatch::default().into_new_spec().unwrap_err();
        assert_eq!(e.to_string(), "functionName: is required");
        let e = input(json!({"functionName": "f"}))
            .validate()
            .unwrap()
            .into_new_spec()
            .unwrap_err();
        assert_eq!(e.to_string(), "customContainerConfig.image: is required");
    }

    #[test]
    fn limits_are_inclusive() {
        let p = input(json!({
            "functionName": "_".repeat(64),
            "customContainerConfig": {"image": "a", "port": 65535},
            "memorySize": 32768, "cpu": 16, "timeout": 86400, "instanceConcurrency": 200,
            "initializationTimeout": 600,
        }))
        .validate()
        .unwrap();
        assert_eq!(p.port, Some(65535));
        assert_eq!(p.memory_size, Some(32768));
        let p = input(json!({
            "customContainerConfig": {"port": 1},
            "memorySize": 128, "cpu": 0.05, "timeout": 1, "instanceConcurrency": 1,
            "initializationTimeout": 1,
        }))
        .validate()
        .unwrap();
        assert_eq!(p.timeout, Some(1));
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        let cases = [
            (
                json!({"functionName": "9lives"}),
                "functionName: must be 1 to 64 characters of [A-Za-z0-9_-] starting with a \
                 letter or underscore, got \"9lives\"",
            ),
            (
                json!({"functionName": ""}),
                "functionName: must be 1 to 64 characters of [A-Za-z0-9_-] starting with a \
                 letter or underscore, got \"\"",
            ),
            (
                json!({"description": "x".repeat(257)}),
                "description: must be at most 256 characters, got 257",
            ),
            (
                json!({"runtime": "python3"}),
                "runtime: must be \"custom-container\", got \"python3\"",
            ),
            (
                json!({"customContainerConfig": {"image": "Bad/Repo"}}),
                "customContainerConfig.image: invalid repository name \"Bad/Repo\": only \
                 lowercase letters, digits and . _ - / are allowed",
            ),
            (
                json!({"customContainerConfig": {"image": ""}}),
                "customContainerConfig.image: empty image reference",
            ),
            (
                json!({"customContainerConfig": {"port": 0}}),
                "customContainerConfig.port: must be between 1 and 65535, got 0",
            ),
            (
                json!({"customContainerConfig": {"port": 65536}}),
                "customContainerConfig.port: must be between 1 and 65535, got 65536",
            ),
            (
                json!({"customContainerConfig": {"accelerationType": "Fast"}}),
                "customContainerConfig.accelerationType: must be \"Default\" or \"None\", got \
                 \"Fast\"",
            ),
            (
                json!({"customContainerConfig": {"args": ["a", "b\u{0}"]}}),
                "customContainerConfig.args[1]: must not contain NUL",
            ),
            (
                json!({"memorySize": -5}),
                "memorySize: must be between 128 and 32768, got -5",
            ),
            (
                json!({"memorySize": 130}),
                "memorySize: must be a multiple of 64, got 130",
            ),
            (
                json!({"cpu": 0.01}),
                "cpu: must be between 0.05 and 16, got 0.01",
            ),
            (
                json!({"cpu": 20}),
                "cpu: must be between 0.05 and 16, got 20",
            ),
            (
                json!({"timeout": 0}),
                "timeout: must be between 1 and 86400, got 0",
            ),
            (
                json!({"instanceConcurrency": 201}),
                "instanceConcurrency: must be between 1 and 200, got 201",
            ),
            (
                json!({"environmentVariables": {"1X": "v"}}),
                "environmentVariables: invalid name \"1X\": must match [A-Za-z_][A-Za-z0-9_]*",
            ),
            (
                json!({"environmentVariables": {"X": "a\u{0}"}}),
                "environmentVariables.X: must not contain NUL",
            ),
            (
                json!({"environmentVariables": {"BIG": "x".repeat(64 << 10)}}),
                "environmentVariables: must total at most 65536 bytes (NAME=VALUE each), got 65540",
            ),
            (
                json!({"diskSize": 256}),
                "diskSize: must be between 512 and 10240, got 256",
            ),
            (
                json!({"initializationTimeout": 601}),
                "initializationTimeout: must be between 1 and 600, got 601",
            ),
            (
                json!({"authType": "none"}),
                "authType: must be \"function\" or \"anonymous\", got \"none\"",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(body.clone()), want, "{body}");
        }
    }

    #[test]
    fn patch_replaces_only_given_fields() {
        let (mut spec, _) = input(json!({
            "functionName": "f",
            "description": "d",
            "customContainerConfig": {"image": "a:1", "entrypoint": ["/app"], "port": 8080},
            "environmentVariables": {"A": "1", "B": "2"},
        }))
        .validate()
        .unwrap()
        .into_new_spec()
        .unwrap();
        let before = spec.clone();
        input(json!({
            "customContainerConfig": {"args": ["-v"]},
            "environmentVariables": {"C": "3"},
            "memorySize": 1024,
        }))
        .validate()
        .unwrap()
        .apply_to(&mut spec);
        assert_eq!(spec.custom_container_config.cmd, ["-v"]);
        assert_eq!(spec.custom_container_config.entrypoint, ["/app"]);
        assert_eq!(spec.custom_container_config.port, 8080);
        assert_eq!(spec.custom_container_config.image, "a:1");
        assert_eq!(spec.description, "d");
        assert_eq!(spec.memory_size, 1024);
        assert_eq!(
            spec.environment_variables,
            BTreeMap::from([("C".to_string(), "3".to_string())])
        );
        assert_eq!(spec.function_name, before.function_name);
    }

    #[test]
    fn entrypoint_and_command_have_function_compute_3_meanings_and_args_is_command() {
        let spec = |cc: serde_json::Value| {
            let mut cc = cc;
            cc["image"] = json!("a:1");
            input(json!({"functionName": "f", "customContainerConfig": cc}))
                .validate()
                .unwrap()
                .into_new_spec()
                .unwrap()
                .0
                .custom_container_config
        };
        let c = spec(json!({"entrypoint": ["/bin/app"], "command": ["-v"]}));
        assert_eq!(
            (c.entrypoint, c.cmd),
            (vec!["/bin/app".into()], vec!["-v".into()])
        );
        let c = spec(json!({"args": ["-v"]}));
        assert_eq!((c.entrypoint, c.cmd), (vec![], vec!["-v".into()]));
        assert_eq!(
            err(json!({"customContainerConfig": {"command": ["a"], "args": ["b"]}})),
            "customContainerConfig.args: give command or args, not both: since the Function \
             Compute 3.0 names, command is the container's arguments (what args was; it \
             replaces the image CMD) and entrypoint replaces the image ENTRYPOINT (what \
             command was)"
        );
        assert_eq!(
            err(json!({"customContainerConfig": {"entrypoint": ["/a", "\u{0}"]}})),
            "customContainerConfig.entrypoint[1]: must not contain NUL"
        );
    }

    #[test]
    fn rows_stored_with_the_older_names_keep_their_meaning() {
        let old = json!({
            "image": "a:1", "command": ["/bin/app"], "args": ["-v"], "port": 9000,
            "accelerationType": "None",
        });
        let c: ContainerConfig = serde_json::from_value(old).unwrap();
        assert_eq!(c.entrypoint, ["/bin/app"]);
        assert_eq!(c.cmd, ["-v"]);
        assert_eq!(c.health_check_config, None);
        // Written back with the new names only.
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["entrypoint"], json!(["/bin/app"]));
        assert_eq!(back["cmd"], json!(["-v"]));
        assert!(
            back.get("command").is_none() && back.get("args").is_none(),
            "{back}"
        );
        let spec: FunctionSpec = serde_json::from_value(json!({
            "functionName": "f", "description": "", "customContainerConfig": back,
            "memorySize": 512, "cpu": 1.0, "timeout": 60, "instanceConcurrency": 1,
            "environmentVariables": {}, "initializationTimeout": 30, "authType": "function",
        }))
        .unwrap();
        assert!(spec.internet_access, "true for rows from before the field");
        assert!(spec.ignored.is_empty());
    }

    #[test]
    fn health_check_defaults_and_limits_are_function_compute_s() {
        let hc = |v: serde_json::Value| {
            input(json!({"customContainerConfig": {"healthCheckConfig": v}}))
                .validate()
                .map(|p| p.health_check_config.unwrap())
        };
        assert_eq!(
            hc(json!({"httpGetUrl": "/ready"})).unwrap(),
            Some(HealthCheckConfig {
                http_get_url: "/ready".into(),
                initial_delay_seconds: 0,
                period_seconds: 3,
                timeout_seconds: 1,
                failure_threshold: 3,
                success_threshold: 1,
            })
        );
        let at_limits = json!({
            "httpGetUrl": format!("/{}", "a".repeat(2047)), "initialDelaySeconds": 120,
            "periodSeconds": 120, "timeoutSeconds": 3, "failureThreshold": 120,
            "successThreshold": 120,
        });
        assert!(hc(at_limits).unwrap().is_some());
        assert_eq!(
            hc(json!({"httpGetUrl": ""})).unwrap(),
            None,
            "empty removes it"
        );
        let at = "customContainerConfig.healthCheckConfig";
        let cases = [
            (json!({}), format!("{at}.httpGetUrl: is required")),
            (
                json!({"httpGetUrl": "ready"}),
                format!(
                    "{at}.httpGetUrl: must be a path starting with / of at most 2048 visible \
                     ASCII characters (no spaces), got \"ready\""
                ),
            ),
            (
                json!({"httpGetUrl": "/a b"}),
                format!(
                    "{at}.httpGetUrl: must be a path starting with / of at most 2048 visible \
                     ASCII characters (no spaces), got \"/a b\""
                ),
            ),
            (
                json!({"httpGetUrl": "/x\r\nHost: evil"}),
                format!(
                    "{at}.httpGetUrl: must be a path starting with / of at most 2048 visible \
                     ASCII characters (no spaces), got \"/x\\r\\nHost: evil\""
                ),
            ),
            (
                json!({"httpGetUrl": "/r", "initialDelaySeconds": 121}),
                format!("{at}.initialDelaySeconds: must be between 0 and 120, got 121"),
            ),
            (
                json!({"httpGetUrl": "/r", "periodSeconds": 0}),
                format!("{at}.periodSeconds: must be between 1 and 120, got 0"),
            ),
            (
                json!({"httpGetUrl": "/r", "timeoutSeconds": 4}),
                format!("{at}.timeoutSeconds: must be between 1 and 3, got 4"),
            ),
            (
                json!({"httpGetUrl": "/r", "failureThreshold": 0}),
                format!("{at}.failureThreshold: must be between 1 and 120, got 0"),
            ),
            (
                json!({"httpGetUrl": "/r", "successThreshold": 121}),
                format!("{at}.successThreshold: must be between 1 and 120, got 121"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(hc(body.clone()).unwrap_err().to_string(), want, "{body}");
        }
        let long = format!("/{}", "a".repeat(2048));
        assert!(hc(json!({ "httpGetUrl": long })).is_err());
    }

    #[test]
    fn fields_pronto_does_not_act_on_are_kept_when_harmless_and_refused_otherwise() {
        let p = input(json!({
            "handler": "index.handler", "role": "acs:ram::1:role/fc",
            "logConfig": {"project": "p", "logstore": "l"}, "tracingConfig": {},
            "vpcConfig": {"vpcId": "", "vSwitchIds": [], "securityGroupId": ""},
            "gpuConfig": {"gpuMemorySize": 0, "gpuType": ""}, "layers": [],
            "instanceLifecycleConfig": {
                "initializer": {"handler": "", "timeout": 3}, "preStop": {"timeout": 3},
            },
            "internetAccess": false,
        }))
        .validate()
        .unwrap();
        assert_eq!(
            p.ignored.keys().collect::<Vec<_>>(),
            [
                "gpuConfig",
                "handler",
                "instanceLifecycleConfig",
                "layers",
                "logConfig",
                "role",
                "tracingConfig",
                "vpcConfig"
            ]
        );
        assert_eq!(p.ignored["role"], json!("acs:ram::1:role/fc"));
        assert_eq!(p.internet_access, Some(false));
        let cases = [
            (
                json!({"vpcConfig": {"vpcId": "vpc-1"}}),
                "vpcConfig: not supported: functions cannot be attached to a VPC; leave it out \
                 (or empty)",
            ),
            (
                json!({"nasConfig": {"mountPoints": [{"serverAddr": "x"}]}}),
                "nasConfig: not supported: NAS file systems cannot be mounted; leave it out (or \
                 empty)",
            ),
            (
                json!({"ossMountConfig": {"mountPoints": [{"bucketName": "b"}]}}),
                "ossMountConfig: not supported: OSS buckets cannot be mounted; leave it out (or \
                 empty)",
            ),
            (
                json!({"layers": ["acs:fc:x"]}),
                "layers: not supported: layers cannot be added to a custom container; leave it \
                 out (or empty)",
            ),
            (
                json!({"gpuConfig": {"gpuType": "fc.gpu.tesla.1"}}),
                "gpuConfig: not supported: functions get no GPU; leave it out (or empty)",
            ),
            (
                json!({"customDNS": {"nameServers": ["1.1.1.1"]}}),
                "customDNS: not supported: a custom DNS configuration cannot be applied; leave \
                 it out (or empty)",
            ),
            (
                json!({"code": {"zipFile": "UEsDB"}}),
                "code: not supported: only custom containers (customContainerConfig) run here; \
                 leave it out (or empty)",
            ),
            (
                json!({"instanceLifecycleConfig": {"initializer": {"handler": "init"}}}),
                "instanceLifecycleConfig.initializer.handler: not supported: lifecycle hooks are \
                 not called; leave it out (or empty)",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(body.clone()), want, "{body}");
        }
        let big = json!({"logConfig": {"x": "y".repeat(IGNORED_FIELDS_MAX_BYTES)}});
        assert!(err(big).starts_with("logConfig: fields Pronto does not act on must total"));
    }

    #[test]
    fn an_update_merges_ignored_fields_and_can_remove_the_health_check() {
        let (mut spec, _) = input(json!({
            "functionName": "f", "role": "r1", "handler": "h",
            "customContainerConfig": {"image": "a:1", "healthCheckConfig": {"httpGetUrl": "/r"}},
        }))
        .validate()
        .unwrap()
        .into_new_spec()
        .unwrap();
        assert!(spec.custom_container_config.health_check_config.is_some());
        input(json!({"role": "r2", "customContainerConfig": {"port": 8080}}))
            .validate()
            .unwrap()
            .apply_to(&mut spec);
        assert!(spec.custom_container_config.health_check_config.is_some());
        assert_eq!(spec.ignored["role"], json!("r2"));
        assert_eq!(spec.ignored["handler"], json!("h"));
        input(json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": ""}}}))
            .validate()
            .unwrap()
            .apply_to(&mut spec);
        assert_eq!(spec.custom_container_config.health_check_config, None);
    }

    #[test]
    fn times_have_milliseconds_and_round_trip() {
        let t = now();
        let s = format_time(t);
        assert_eq!(s.len(), "2024-05-01T12:00:00.123Z".len(), "{s}");
        let back =
            OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(back, t);
    }
}
