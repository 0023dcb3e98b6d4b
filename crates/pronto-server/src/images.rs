//! Pinning a function's image: a reference (tag or digest) resolved against its registry to
//! the platform manifest's digest (what instances run and acceleration jobs convert).

use std::time::Duration;

use pronto_image::pull::{self, PullError};
use pronto_image::{Reference, RegistryClient};

use crate::model::PinnedImage;

/// How long a create/update waits for the registry before giving up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Resolve(#[from] PullError),
    #[error("resolving {reference} timed out after {}s", .timeout.as_secs())]
    Timeout {
        reference: Reference,
        timeout: Duration,
    },
}

/// Resolves `reference` for the host platform and pins it (tag dropped: it is not what runs).
pub async fn pin(
    registry: &RegistryClient,
    reference: &Reference,
) -> Result<PinnedImage, ImageError> {
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, pull::resolve(registry, reference))
        .await
        .map_err(|_| ImageError::Timeout {
            reference: reference.clone(),
            timeout: RESOLVE_TIMEOUT,
        })??;
    tracing::debug!(%reference, pinned = %resolved.pinned, "resolved image");
    Ok(PinnedImage {
        reference: resolved.pinned,
        manifest_digest: resolved.manifest_digest,
    })
}
