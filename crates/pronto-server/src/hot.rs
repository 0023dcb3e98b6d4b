//! Hot-set jobs: once a function's first accelerated cold start has stored its access trace,
//! the trace's chunks are written into hot packs in trace order and a hot revision of the
//! artifact is pushed beside the base (`pronto_convert::relayout`), in the background.
//!
//! - Started by the pool when it stores a trace ([`HotPacker::trace_recorded`]), for a
//!   function whose acceleration is `Ready` for that image and that has no hot pack yet (or
//!   one still `Preparing`: a restart resumes it, [`HotPacker::resume`]). A `Failed` one is
//!   not retried for the same trace: no retry storm against a registry that refuses.
//! - `accelerationInfo.hotPack` is `Preparing`, then `Ready` (digest, packs, bytes, chunks) or
//!   `Failed` (the reason). The switch is that one stored record: cold starts mount the hot
//!   revision (pinned by digest) only once it is `Ready`, i.e. after the push completed and
//!   the pushed revision checked; a crash before leaves them on the base revision.
//! - Recorded only if the function still runs the image and the base revision the job used:
//!   an update meanwhile replaces `accelerationInfo` whole, and the stale result is dropped.
//! - Nothing is deleted: instances on the base revision keep reading its packs.
//! - One job at a time (it reads and writes the registry at link speed); one per function.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pronto_convert::{RelayoutError, RelayoutOptions};
use pronto_image::{Digest, Reference};
use tokio::sync::Semaphore;

use crate::access::{AccessError, RegistryAccess};
use crate::images::{ImageError, Images};
use crate::model::{format_time, now, AccelerationStatus, AccelerationType, Function, HotPackInfo};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("image {reference}: {source}")]
    Image {
        reference: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Relayout(#[from] RelayoutError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("the access trace is gone")]
    NoTrace,
    #[error("the access trace: {0}")]
    Trace(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new job waits this long (already `Preparing`) before it reads anything.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct HotPacker {
    access: Arc<RegistryAccess>,
    images: Arc<Images>,
    store: Store,
    options: RelayoutOptions,
    limit: Semaphore,
    /// Functions with a job under way.
    running: Mutex<HashSet<String>>,
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the daemon stops.
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for HotPacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotPacker").finish_non_exhaustive()
    }
}

/// The base revision a hot pack can be made for: the function's acceleration is `Ready` for
/// its current image `image`. Returns the base's manifest digest and where it is.
fn base_of(f: &Function, image: &Digest) -> Option<(String, Option<String>)> {
    if f.image.manifest_digest != *image
        || f.spec.custom_container_config.acceleration_type != AccelerationType::Default
    {
        return None;
    }
    let a = f.acceleration.as_ref()?;
    if a.status != AccelerationStatus::Ready {
        return None;
    }
    Some((a.artifact_digest.clone()?, a.artifact.clone()))
}

impl HotPacker {
    pub fn new(
        access: Arc<RegistryAccess>,
        images: Arc<Images>,
        store: Store,
        options: RelayoutOptions,
    ) -> Arc<Self> {
        Arc::new(HotPacker {
            access,
            images,
            store,
            options,
            limit: Semaphore::new(1),
            running: Mutex::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// A trace of `function` running `image` was stored: makes its hot pack if it has none.
    pub fn trace_recorded(self: &Arc<Self>, function: String, image: Digest) {
        self.submit(function, image, false);
    }

    /// `resume`: only a job a stopped daemon left `Preparing`.
    fn submit(self: &Arc<Self>, function: String, image: Digest, resume: bool) {
        if !self
            .running
            .lock()
            .expect("running poisoned")
            .insert(function.clone())
        {
            return;
        }
        let this = self.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            // A stopping daemon abandons the job: it stays `Preparing` and resumes at the next
            // start; the base revision serves meanwhile.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = this.run(&function, &image, resume) => {}
            }
            this.running
                .lock()
                .expect("running poisoned")
                .remove(&function);
        });
    }

    /// Restarts the jobs stored as `Preparing` (after a restart).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut n = 0;
        for f in &self.store.all_functions().await? {
            let preparing = f
                .acceleration
                .as_ref()
                .and_then(|a| a.hot_pack.as_ref())
                .is_some_and(|h| h.status == AccelerationStatus::Preparing);
            if preparing {
                self.submit(
                    f.spec.function_name.clone(),
                    f.image.manifest_digest.clone(),
                    true,
                );
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stops the jobs under way and waits for them (the daemon is stopping).
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Waits for the running jobs (tests).
    pub async fn idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    async fn run(&self, function: &str, image: &Digest, resume: bool) {
        // Claim it: `Preparing`, unless it has (or had) one for this image already.
        let claim_image = image.clone();
        let claimed = self
            .store
            .update_function(function, move |f| {
                let Some((base, _)) = base_of(f, &claim_image) else {
                    return;
                };
                let a = f.acceleration.as_mut().expect("base_of checked it");
                let wanted = match &a.hot_pack {
                    None => !resume,
                    Some(h) => resume && h.status == AccelerationStatus::Preparing,
                };
                if wanted {
                    a.hot_pack = Some(HotPackInfo {
                        status: AccelerationStatus::Preparing,
                        reason: None,
                        image: claim_image.to_string(),
                        base_digest: base,
                        artifact_digest: None,
                        artifact: None,
                        packs: None,
                        bytes: None,
                        chunks: None,
                        duration_seconds: None,
                        created_time: format_time(now()),
                    });
                }
            })
            .await;
        let f = match claimed {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(function, error = %e, "hot pack: reading the function");
                return;
            }
        };
        let Some(base) = f
            .acceleration
            .as_ref()
            .and_then(|a| a.hot_pack.as_ref())
            .filter(|h| h.status == AccelerationStatus::Preparing && h.image == image.to_string())
            .map(|h| h.base_digest.clone())
        else {
            return;
        };
        if !resume {
            // The start that recorded the trace is answering its first request now: the job
            // (reading the hot set, hashing, uploading) would take CPU and link from it.
            tokio::time::sleep(SETTLE).await;
        }
        let _permit = self.limit.acquire().await.expect("semaphore never closed");
        let started = Instant::now();
        let result = self.relayout(&f, image).await;
        let secs = started.elapsed().as_secs_f64();
        let info = match &result {
            Ok(r) => {
                tracing::info!(
                    function,
                    image = %image,
                    artifact = %r.artifact_digest,
                    chunks = r.hot_chunks,
                    hot_bytes = r.hot_bytes,
                    content_bytes = r.hot_content_bytes,
                    packs = r.hot_packs.len(),
                    range_reads = r.range_reads,
                    copy_secs = r.copy_time.as_secs_f64(),
                    upload_secs = r.upload_time.as_secs_f64(),
                    secs,
                    "hot pack ready"
                );
                HotPackInfo {
                    status: AccelerationStatus::Ready,
                    reason: None,
                    image: image.to_string(),
                    base_digest: r.base_digest.to_string(),
                    artifact_digest: Some(r.artifact_digest.to_string()),
                    artifact: Some(r.artifact.clone()),
                    packs: Some(r.hot_packs.len() as u64),
                    bytes: Some(r.hot_bytes),
                    chunks: Some(r.hot_chunks),
                    duration_seconds: Some(secs),
                    created_time: format_time(now()),
                }
            }
            Err(e) => {
                tracing::warn!(function, image = %image, secs, reason = %e, "hot pack failed");
                HotPackInfo {
                    status: AccelerationStatus::Failed,
                    reason: Some(e.to_string()),
                    image: image.to_string(),
                    base_digest: base.clone(),
                    artifact_digest: None,
                    artifact: None,
                    packs: None,
                    bytes: None,
                    chunks: None,
                    duration_seconds: Some(secs),
                    created_time: format_time(now()),
                }
            }
        };
        let image = image.clone();
        let recorded = self
            .store
            .update_function(function, move |f| {
                // Only for the image and base revision it was made from.
                if base_of(f, &image).is_some_and(|(b, _)| b == info.base_digest) {
                    if let Some(a) = f.acceleration.as_mut() {
                        a.hot_pack = Some(info);
                    }
                }
            })
            .await;
        match recorded {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::error!(function, error = %e, "recording the hot pack"),
        }
    }

    async fn relayout(
        &self,
        f: &Function,
        image: &Digest,
    ) -> Result<pronto_convert::RelayoutReport, JobError> {
        let config = &f.spec.custom_container_config;
        let own = self.access.client_for(config, &f.image.reference)?;
        let client = own.as_ref().unwrap_or(self.access.node());
        let resolved = self
            .images
            .resolved(&f.image)
            .await
            .map_err(|source| JobError::Image {
                reference: f.image.reference.to_string(),
                source,
            })?;
        let bytes = self
            .store
            .access_trace(&f.spec.function_name, &image.to_string())
            .await?
            .ok_or(JobError::NoTrace)?;
        let trace = pronto_runtime::AccessTrace::from_bytes(&bytes)
            .map_err(|e| JobError::Trace(e.to_string()))?;
        // The base is where the conversion recorded it; the hot revision goes beside it.
        let repo = f
            .acceleration
            .as_ref()
            .and_then(|a| a.artifact.as_deref())
            .and_then(|a| a.parse::<Reference>().ok())
            .map(|r| Reference {
                tag: None,
                digest: None,
                ..r
            });
        let options = RelayoutOptions {
            artifact_repository: repo,
            ..self.options.clone()
        };
        Ok(pronto_convert::relayout(client, &resolved, &trace.chunks, &options).await?)
    }
}
