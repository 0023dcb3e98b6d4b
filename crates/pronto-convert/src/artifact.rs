//! The accelerated artifact in the registry: an OCI image manifest whose `subject` is the
//! source image manifest, with the index and the packs as its layers.
//!
//! It lives in the source's repository under a tag derived from the source digest
//! (`sha256-<hex>.pronto`), so it can be found from the digest alone, on any OCI registry, even
//! one without the referrers API.

use bytes::Bytes;
use pronto_image::manifest::{Descriptor, ImageManifest, OCI_MANIFEST};
use pronto_image::{Digest, Reference, RegistryClient, RegistryError};

pub const ARTIFACT_TYPE: &str = "application/vnd.pronto.image.v1";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.pronto.index.v1";
pub const PACK_MEDIA_TYPE: &str = "application/vnd.pronto.pack.v1";
/// The OCI "empty" config (`{}`), as artifacts without a config use.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The tag of the artifact converted from `source`.
pub fn artifact_tag(source: &Digest) -> String {
    format!("sha256-{}.pronto", source.hex())
}

/// Where the artifact of the image `source` (in `repo`'s repository) is.
pub fn artifact_reference(repo: &Reference, source: &Digest) -> Reference {
    Reference {
        tag: Some(artifact_tag(source)),
        digest: None,
        ..repo.clone()
    }
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: None,
        artifact_type: None,
    }
}

/// The artifact manifest: layer 0 is the index, the rest are packs in index order.
pub fn build_manifest(
    source: &Descriptor,
    index: (Digest, u64),
    packs: &[(Digest, u64)],
) -> ImageManifest {
    let mut layers = vec![descriptor(INDEX_MEDIA_TYPE, index.0, index.1)];
    layers.extend(
        packs
            .iter()
            .map(|(d, s)| descriptor(PACK_MEDIA_TYPE, d.clone(), *s)),
    );
    ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        config: descriptor(
            EMPTY_CONFIG_MEDIA_TYPE,
            Digest::of(EMPTY_CONFIG),
            EMPTY_CONFIG.len() as u64,
        ),
        layers,
        subject: Some(source.clone()),
        annotations: None,
    }
}

/// Pushes the manifest under the artifact tag; returns its digest.
pub async fn push_manifest(
    client: &RegistryClient,
    repo: &Reference,
    source: &Digest,
    manifest: &ImageManifest,
) -> Result<Digest, RegistryError> {
    client
        .push_blob(repo, Bytes::from_static(EMPTY_CONFIG))
        .await?;
    let body = Bytes::from(serde_json::to_vec(manifest).expect("manifest serializes"));
    client
        .push_manifest(repo, &artifact_tag(source), OCI_MANIFEST, body)
        .await
}
