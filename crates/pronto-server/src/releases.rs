//! Versions, aliases and provisioned instances at run time: which configuration a qualifier
//! names (`LATEST`, a version, an alias, weighted between two versions) and the provisioner
//! that keeps the provision configs' instances warm.
//!
//! `LATEST` is served by [`Function::live`]: while an update's acceleration prepares, the
//! configuration from before the update keeps serving, so a release never sends cold starts
//! down the slow path; it goes live when the acceleration ends (`Ready` or `Failed`).

use std::sync::Arc;
use std::time::Duration;

use pronto_runtime::bundle::ProcessOverrides;
use pronto_runtime::{InstanceSpec, ReadinessProbe};
use tokio_util::sync::CancellationToken;

use crate::access::AccessError;
use crate::api::ApiError;
use crate::model::{AccelerationStatus, Function, HealthCheckConfig, Qualifier, LATEST};
use crate::pool::{Provision, RunSpec};
use crate::AppState;

/// The configuration a qualifier resolved to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The configuration that serves (for `LATEST`, the live one).
    pub config: Function,
    /// `LATEST` or the version's number: what served the request.
    pub version: String,
}

/// A uniform sample in [0, 1) from the OS's generator (alias weights).
fn uniform() -> f64 {
    let mut b = [0u8; 8];
    // getrandom fails only without any OS source; then every request takes the main version.
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The configuration of `function` that `qualifier` (default `LATEST`) names now. An alias
/// with an additional version picks one of its two versions by weight, per call.
pub async fn resolve(
    state: &AppState,
    function: &str,
    qualifier: Option<&str>,
) -> Result<Target, ApiError> {
    let qualifier = match qualifier {
        None => Qualifier::Latest,
        Some(q) => Qualifier::parse(q)?,
    };
    let version = match qualifier {
        Qualifier::Latest => {
            let f = state.store.get_function(function).await?;
            return Ok(Target {
                config: f.live().clone(),
                version: LATEST.to_string(),
            });
        }
        Qualifier::Version(v) => v,
        Qualifier::Alias(a) => state.store.get_alias(function, &a).await?.pick(uniform()),
    };
    let v = state.store.get_version(function, version).await?;
    Ok(Target {
        config: v.function,
        version: version.to_string(),
    })
}

/// What the pool runs for `target`: the track is `LATEST` or the version; the revision
/// changes with any change of the configuration. Fails when the function names a registry
/// credential that is gone.
pub fn run_spec(
    target: &Target,
    image: Arc<pronto_image::pull::ResolvedImage>,
    state: &AppState,
) -> Result<RunSpec, AccessError> {
    let f = &target.config;
    let s = &f.spec;
    let c = &s.custom_container_config;
    let registry = state.access.client_for(c, &f.image.reference)?;
    let ready = f
        .acceleration
        .as_ref()
        .filter(|a| a.status == AccelerationStatus::Ready);
    // Where the conversion put the artifact (it records the reference).
    let artifact_repository = ready
        .and_then(|a| a.artifact.as_deref())
        .and_then(|a| a.parse::<pronto_image::Reference>().ok())
        .map(|r| pronto_image::Reference {
            tag: None,
            digest: None,
            ..r
        });
    // The hot revision, once made for this very image (a stale one is never mounted).
    let image_digest = f.image.manifest_digest.to_string();
    let artifact_revision = ready
        .and_then(|a| a.hot_pack.as_ref())
        .filter(|h| h.status == AccelerationStatus::Ready && h.image == image_digest)
        .and_then(|h| h.artifact_digest.as_deref())
        .and_then(|d| d.parse::<pronto_image::Digest>().ok());
    Ok(RunSpec {
        // A version never changes; any change of LATEST bumps its modified time.
        revision: format!(
            "{}@{}@{}",
            f.function_id,
            target.version,
            f.last_modified_time.unix_timestamp_nanos()
        ),
        track: target.version.clone(),
        instance: InstanceSpec {
            function: s.function_name.clone(),
            image,
            overrides: ProcessOverrides {
                command: (!c.entrypoint.is_empty()).then(|| c.entrypoint.clone()),
                args: (!c.cmd.is_empty()).then(|| c.cmd.clone()),
                env: s.environment_variables.clone().into_iter().collect(),
            },
            port: c.port,
            memory_mb: u64::from(s.memory_size),
            disk_mb: u64::from(s.disk_size),
            cpu: s.cpu,
            init_timeout: Duration::from_secs(u64::from(s.initialization_timeout)),
            accelerated: ready.is_some(),
            prefetch: None,
            readiness: c.health_check_config.as_ref().map(readiness_probe),
            internet_access: s.internet_access,
            registry,
            artifact_repository,
            artifact_revision,
        },
        timeout: Duration::from_secs(u64::from(s.timeout)),
        concurrency: s.instance_concurrency as usize,
        max_instances: s.max_instances.map_or(state.max_instances, |m| m as usize),
        idle_timeout: s
            .idle_timeout
            .map_or(state.idle_timeout, |t| Duration::from_secs(u64::from(t))),
    })
}

/// The runtime's readiness check for a function's `healthCheckConfig`.
fn readiness_probe(h: &HealthCheckConfig) -> ReadinessProbe {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    ReadinessProbe {
        path: h.http_get_url.clone(),
        initial_delay: secs(h.initial_delay_seconds),
        period: secs(h.period_seconds),
        timeout: secs(h.timeout_seconds),
        failure_threshold: h.failure_threshold,
        success_threshold: h.success_threshold,
    }
}

/// Every stored provision config resolved to what the pool should keep warm. A config whose
/// qualifier no longer resolves (or whose image cannot be rebuilt) is skipped and logged.
async fn wanted(state: &AppState) -> Vec<Provision> {
    let configs = match state.store.provision_configs(None).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reading provision configs");
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(configs.len());
    for p in configs {
        // Provisioned instances serve an alias's main version (its canary starts on demand).
        let target = match Qualifier::parse(&p.qualifier) {
            Ok(Qualifier::Alias(a)) => match state.store.get_alias(&p.function_name, &a).await {
                Ok(alias) => {
                    resolve(state, &p.function_name, Some(&alias.version_id.to_string())).await
                }
                Err(e) => Err(e.into()),
            },
            _ => resolve(state, &p.function_name, Some(&p.qualifier)).await,
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(function = %p.function_name, qualifier = %p.qualifier, error = %e, "provision config skipped");
                continue;
            }
        };
        let spec = match state.images.resolved(&target.config.image).await {
            Ok(image) => run_spec(&target, image, state).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match spec {
            Ok(spec) => out.push(Provision {
                qualifier: p.qualifier.clone(),
                spec,
                target: p.target as usize,
            }),
            Err(error) => {
                tracing::warn!(function = %p.function_name, qualifier = %p.qualifier, error, "provision config skipped")
            }
        }
    }
    out
}

/// The provisioner: every `period` (and at once when `kick` is notified, after a change of
/// provision configs, aliases or versions) brings the pool's provisioned instances to the
/// stored targets: starts missing ones, replaces dead ones, releases surplus ones.
pub async fn provisioner(
    state: AppState,
    period: Duration,
    kick: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    loop {
        let wanted = wanted(&state).await;
        state.pool.provision(&wanted);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
            _ = kick.notified() => {}
        }
    }
}
