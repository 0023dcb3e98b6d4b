//! A function's image: pinned once at create/update (a reference, tag or digest, resolved
//! against its registry to the platform manifest's digest), its manifest and config kept with
//! the function, and rebuilt from those — never resolved again — for conversion and cold starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pronto_image::pull::{self, KeptImageError, PullError, ResolvedImage};
use pronto_image::{Reference, RegistryClient};

use crate::model::{KeptImage, PinnedImage};

/// How long a create/update waits for the registry before giving up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Resolve(#[from] PullError),
    #[error(transparent)]
    Kept(#[from] KeptImageError),
    #[error("resolving {reference} timed out after {}s", .timeout.as_secs())]
    Timeout {
        reference: Reference,
        timeout: Duration,
    },
}

/// Resolved images by pinned reference (`registry/repo@digest`). A digest names one immutable
/// manifest, so an entry never goes stale; the key holds the repository too because a resolved
/// image says where to pull from: two functions that run the same digest from two registries
/// must each pull from their own (one that stalls must not take the other down with it).
#[derive(Debug)]
pub struct Images {
    registry: RegistryClient,
    resolved: Mutex<HashMap<String, Arc<ResolvedImage>>>,
}

impl Images {
    pub fn new(registry: RegistryClient) -> Images {
        Images {
            registry,
            resolved: Mutex::default(),
        }
    }

    /// Resolves `reference` for the host platform and pins it (tag dropped: it is not what
    /// runs), keeping what the registry said. With `own`, the function's own client (its
    /// credentials), else the node's.
    pub async fn pin(
        &self,
        reference: &Reference,
        own: Option<&RegistryClient>,
    ) -> Result<PinnedImage, ImageError> {
        let resolved = self
            .resolve_with(own.unwrap_or(&self.registry), reference)
            .await?;
        tracing::debug!(%reference, pinned = %resolved.pinned, "resolved image");
        let pinned = PinnedImage {
            reference: resolved.pinned.clone(),
            manifest_digest: resolved.manifest_digest.clone(),
            kept: Some(KeptImage {
                manifest: resolved.manifest_bytes.clone(),
                config: resolved.config_bytes.clone(),
            }),
        };
        self.remember(Arc::new(resolved));
        Ok(pinned)
    }

    /// The resolved form of a pinned image: from memory, else rebuilt from what was kept (the
    /// digests checked again), else — for a function stored before images were kept — resolved
    /// against the registry once.
    pub async fn resolved(&self, image: &PinnedImage) -> Result<Arc<ResolvedImage>, ImageError> {
        if let Some(i) = self.cached(&image.reference) {
            return Ok(i);
        }
        let resolved = match &image.kept {
            Some(k) => ResolvedImage::from_kept(
                image.reference.clone(),
                None,
                k.manifest.clone(),
                k.config.clone(),
            )?,
            None => self.resolve(&image.reference).await?,
        };
        Ok(self.remember(Arc::new(resolved)))
    }

    fn cached(&self, pinned: &Reference) -> Option<Arc<ResolvedImage>> {
        self.resolved
            .lock()
            .expect("image cache poisoned")
            .get(&pinned.to_string())
            .cloned()
    }

    fn remember(&self, image: Arc<ResolvedImage>) -> Arc<ResolvedImage> {
        self.resolved
            .lock()
            .expect("image cache poisoned")
            .entry(image.pinned.to_string())
            .or_insert(image)
            .clone()
    }

    async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, ImageError> {
        self.resolve_with(&self.registry, reference).await
    }

    async fn resolve_with(
        &self,
        client: &RegistryClient,
        reference: &Reference,
    ) -> Result<ResolvedImage, ImageError> {
        tokio::time::timeout(RESOLVE_TIMEOUT, pull::resolve(client, reference))
            .await
            .map_err(|_| ImageError::Timeout {
                reference: reference.clone(),
                timeout: RESOLVE_TIMEOUT,
            })?
            .map_err(ImageError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pronto_image::ClientOptions;

    fn images() -> Images {
        Images::new(RegistryClient::new(ClientOptions::default()).unwrap())
    }

    fn pinned_from(image: &ResolvedImage) -> PinnedImage {
        PinnedImage {
            reference: image.pinned.clone(),
            manifest_digest: image.manifest_digest.clone(),
            kept: Some(KeptImage {
                manifest: image.manifest_bytes.clone(),
                config: image.config_bytes.clone(),
            }),
        }
    }

    #[tokio::test]
    async fn a_kept_image_is_rebuilt_without_the_registry_and_once() {
        // The pinned reference names a registry that does not exist: any resolve would fail.
        let image = pronto_runtime::fake::kept_image(&["/app"]);
        let images = images();
        let pinned = pinned_from(&image);
        let a = images.resolved(&pinned).await.unwrap();
        let b = images.resolved(&pinned).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.config["config"]["Cmd"][0], "/app");
    }

    #[tokio::test]
    async fn a_kept_config_that_was_tampered_with_is_refused() {
        let image = pronto_runtime::fake::kept_image(&["/app"]);
        let mut pinned = pinned_from(&image);
        pinned.kept.as_mut().unwrap().config =
            bytes::Bytes::from_static(br#"{"config":{"Cmd":["/bin/sh"]}}"#);
        let e = images().resolved(&pinned).await.unwrap_err();
        assert!(e.to_string().contains("the config kept for it"), "{e}");
    }
}
