//! Acceleration jobs: after a create or update with `accelerationType: Default`, the function's
//! image is converted to the accelerated format (`pronto-convert`) in the background.
//!
//! - The function's `accelerationInfo.status` is `Preparing` from the moment the request is
//!   answered, then `Ready` (artifact, sizes, duration) or `Failed` (the reason). Invocations
//!   never wait for it: until `Ready` they use the full pull.
//! - `Preparing` is stored, so a daemon that stops mid-job restarts the job when it starts
//!   ([`Accelerator::resume`]).
//! - A result is recorded only if the function still runs the image it was made for: an update
//!   during a job supersedes it, and the old result can never mark the new image `Ready`.
//! - Functions with the same image and artifact repository share one job (by manifest digest
//!   and repository); at most `max_concurrent` conversions run at once.
//! - A job reads the source and pushes the artifact with the function's own registry client
//!   when it has credentials ([`RegistryAccess::client_for`]), else the node's; the artifact
//!   goes to the function's artifact repository ([`RegistryAccess::artifact_repository`]), so
//!   an image the server cannot push beside (read-only, public) still ends `Ready`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pronto_convert::{ConvertError, ConvertOptions};
use pronto_image::{Digest, Reference};
use tokio::sync::{OnceCell, Semaphore};

use crate::access::{AccessError, RegistryAccess};
use crate::images::{ImageError, Images};
use crate::metrics::Metrics;
use crate::model::{
    AccelerationInfo, AccelerationStatus, AccelerationType, ContainerConfig, PinnedImage,
};
use crate::store::{Store, StoreError};

/// What a finished conversion produced.
#[derive(Debug, Clone)]
struct Converted {
    artifact: String,
    artifact_digest: Digest,
    index_size: u64,
    stored_bytes: u64,
    duration_secs: f64,
}

/// Why a conversion failed (its message becomes `accelerationInfo.reason`).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("image {reference}: {source}")]
    Image {
        reference: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// Shared by every function waiting on one image's job, hence the `Arc`.
type JobResult = Result<Converted, Arc<JobError>>;

/// A job: the image's digest and the repository its artifact goes to (`None`: beside it).
type JobKey = (Digest, Option<String>);

pub struct Accelerator {
    access: Arc<RegistryAccess>,
    images: Arc<Images>,
    store: Store,
    options: ConvertOptions,
    limit: Semaphore,
    jobs: Mutex<HashMap<JobKey, Arc<OnceCell<JobResult>>>>,
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the daemon stops.
    stop: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accelerator").finish_non_exhaustive()
    }
}

impl Accelerator {
    pub fn new(
        access: Arc<RegistryAccess>,
        images: Arc<Images>,
        store: Store,
        options: ConvertOptions,
        max_concurrent: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Accelerator {
            access,
            images,
            store,
            options,
            limit: Semaphore::new(max_concurrent.max(1)),
            jobs: Mutex::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            metrics,
        })
    }

    /// What a function gets stored with when its image (or acceleration setting) is set.
    pub fn initial_status(t: AccelerationType) -> Option<AccelerationInfo> {
        (t == AccelerationType::Default).then(|| AccelerationInfo {
            status: AccelerationStatus::Preparing,
            ..AccelerationInfo::default()
        })
    }

    /// Converts `image` for `function` (whose container settings are `config`: registry
    /// credentials, artifact repository) in the background.
    pub fn submit(self: &Arc<Self>, function: String, image: PinnedImage, config: ContainerConfig) {
        let this = self.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            // A stopping daemon abandons its jobs (dropping a conversion removes its scratch):
            // they stay `Preparing` and resume at the next start.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = this.run(function, image, config) => {}
            }
        });
    }

    /// Stops the jobs under way and waits for them (the daemon is stopping): nothing is
    /// recorded for them, and their scratch directories are gone when this returns.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Restarts the jobs of every function stored as `Preparing` (after a restart).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut n = 0;
        for f in &self.store.all_functions().await? {
            if f.acceleration.as_ref().map(|a| a.status) == Some(AccelerationStatus::Preparing) {
                self.submit(
                    f.spec.function_name.clone(),
                    f.image.clone(),
                    f.spec.custom_container_config.clone(),
                );
                n += 1;
            }
        }
        Ok(n)
    }

    async fn run(&self, function: String, image: PinnedImage, config: ContainerConfig) {
        let digest = image.manifest_digest.clone();
        let repo = self.access.artifact_repository(&config);
        let key = (digest.clone(), repo.as_ref().map(ToString::to_string));
        let cell = self
            .jobs
            .lock()
            .expect("job table poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let result = self.convert(&image, &config, repo).await.map_err(Arc::new);
                self.metrics.conversion(result.is_ok(), started.elapsed());
                result
            })
            .await
            .clone();
        {
            // Done: a later submit of this image (say, after a failure) runs a new job.
            let mut jobs = self.jobs.lock().expect("job table poisoned");
            if jobs.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                jobs.remove(&key);
            }
        }
        match &result {
            Ok(c) => {
                tracing::info!(function, artifact = %c.artifact, secs = c.duration_secs, "acceleration ready")
            }
            Err(reason) => tracing::warn!(function, %reason, "acceleration failed"),
        }
        let info = match result {
            Ok(c) => AccelerationInfo {
                status: AccelerationStatus::Ready,
                artifact: Some(c.artifact),
                artifact_digest: Some(c.artifact_digest.to_string()),
                index_size: Some(c.index_size),
                stored_bytes: Some(c.stored_bytes),
                duration_seconds: Some(c.duration_secs),
                ..AccelerationInfo::default()
            },
            Err(e) => AccelerationInfo {
                status: AccelerationStatus::Failed,
                reason: Some(e.to_string()),
                ..AccelerationInfo::default()
            },
        };
        // Versions published while it prepared run the same image: they get the result too.
        let digest_text = digest.to_string();
        match self
            .store
            .record_version_acceleration(&function, &digest_text, &info)
            .await
        {
            Ok(0) => {}
            Ok(versions) => tracing::info!(function, versions, "acceleration recorded in versions"),
            Err(e) => {
                tracing::error!(function, error = %e, "recording the acceleration result in versions")
            }
        }
        let recorded = self
            .store
            .update_function(&function, move |f| {
                let current = f.image.manifest_digest == digest
                    && f.spec.custom_container_config.acceleration_type
                        == AccelerationType::Default;
                if current {
                    f.acceleration = Some(info);
                    // An update waiting for its acceleration goes live now, ready or not (a
                    // failed conversion must not hold a release back: it runs pulled).
                    f.serving = None;
                }
            })
            .await;
        match recorded {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::error!(function, error = %e, "recording the acceleration result"),
        }
    }

    /// One conversion, at most `max_concurrent` at a time.
    async fn convert(
        &self,
        image: &PinnedImage,
        config: &ContainerConfig,
        repo: Option<Reference>,
    ) -> Result<Converted, JobError> {
        let _permit = self.limit.acquire().await.expect("semaphore never closed");
        let own = self.access.client_for(config, &image.reference)?;
        let client = own.as_ref().unwrap_or(self.access.node());
        tracing::info!(
            image = %image.reference,
            artifact_repository = repo.as_ref().map(tracing::field::display),
            own_credentials = own.is_some(),
            "acceleration job started"
        );
        let started = Instant::now();
        let resolved = self
            .images
            .resolved(image)
            .await
            .map_err(|source| JobError::Image {
                reference: image.reference.to_string(),
                source,
            })?;
        let options = ConvertOptions {
            artifact_repository: repo,
            ..self.options.clone()
        };
        let report = pronto_convert::convert(client, &resolved, &options).await?;
        Ok(Converted {
            artifact: report.artifact,
            artifact_digest: report.artifact_digest,
            index_size: report.index_size,
            stored_bytes: report.stored_bytes,
            duration_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// Waits for the running jobs (tests; a stopping daemon abandons them: they stay
    /// `Preparing` and resume at the next start).
    pub async fn idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}
