//! The accelerated artifact in the registry: an OCI image manifest whose `subject` is the
//! source image manifest, with the index and the packs as its layers (`docs/format.md`).
//!
//! It lives in the source's repository under a tag derived from the source digest
//! (`sha256-<hex>.pronto`), so it can be found from the digest alone, on any OCI registry, even
//! one without the referrers API.
//!
//! This crate owns the artifact's manifest and nothing else, so that what reads artifacts (the
//! lazy filesystem, the node) does not depend on what writes them (the converter, with its
//! SQLite memo and its thread pool):
//! - the constants: [`ARTIFACT_TYPE`], the layer media types, the empty config;
//! - where an artifact is: [`artifact_tag`], [`artifact_reference`];
//! - writing one (the converter): [`build_manifest`], [`push_manifest`];
//! - reading one: [`fetch_artifact`] fetches the manifest and the index and checks everything
//!   they claim before returning an [`Artifact`]; [`ArtifactError`] says what was wrong.

use bytes::Bytes;
use pronto_format::Index;
use pronto_image::manifest::{Descriptor, ImageManifest, ManifestKind, OCI_MANIFEST};
use pronto_image::pull::ResolvedImage;
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

/// Why the artifact of an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no accelerated artifact for {image} ({reference}): {error}")]
    NoArtifact {
        image: Digest,
        reference: String,
        #[source]
        error: Box<RegistryError>,
    },
    #[error("{reference} is not a Pronto artifact of {image}: {reason}")]
    NotAnArtifact {
        reference: String,
        image: Digest,
        reason: String,
    },
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("index {digest}: {error}")]
    Index {
        digest: Digest,
        #[source]
        error: pronto_format::FormatError,
    },
}

impl From<RegistryError> for ArtifactError {
    fn from(e: RegistryError) -> Self {
        ArtifactError::Registry(Box::new(e))
    }
}

/// An artifact fetched and checked: its index (validated whole) and its packs.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `REGISTRY/REPO:sha256-<hex>.pronto`
    pub reference: Reference,
    /// Digest of the artifact manifest.
    pub digest: Digest,
    pub index_digest: Digest,
    pub index: Index,
    /// Pack digests and sizes, in index order (the manifest agrees).
    pub packs: Vec<(Digest, u64)>,
}

/// Fetches the artifact of `image` and checks everything it claims before anyone trusts it:
/// the manifest's subject, artifact type and layer media types; the index blob's digest (by
/// the registry client), header, checksum and whole tree (`Index::validate`); that the index
/// names `image` as its source and carries its config; and that the index and the manifest
/// list the same packs.
pub async fn fetch_artifact(
    client: &RegistryClient,
    image: &ResolvedImage,
) -> Result<Artifact, ArtifactError> {
    let source = image.manifest_digest.clone();
    let reference = artifact_reference(&image.pinned, &source);
    let fetched =
        client
            .fetch_manifest(&reference)
            .await
            .map_err(|error| ArtifactError::NoArtifact {
                image: source.clone(),
                reference: reference.to_string(),
                error: Box::new(error),
            })?;
    let not_artifact = |reason: &str| ArtifactError::NotAnArtifact {
        reference: reference.to_string(),
        image: source.clone(),
        reason: reason.to_string(),
    };
    let ManifestKind::Image(manifest) = fetched.kind else {
        return Err(not_artifact("it is an index"));
    };
    if manifest.subject.as_ref().map(|s| &s.digest) != Some(&source) {
        return Err(not_artifact("its subject is another image"));
    }
    let Some((index_desc, pack_descs)) = manifest.layers.split_first() else {
        return Err(not_artifact("it has no layers"));
    };
    if index_desc.media_type != INDEX_MEDIA_TYPE
        || pack_descs.iter().any(|p| p.media_type != PACK_MEDIA_TYPE)
    {
        return Err(not_artifact("unexpected layer media types"));
    }
    let index_bytes = client
        .fetch_blob(&image.pinned, &index_desc.digest, Some(index_desc.size))
        .await?;
    let index_err = |error| ArtifactError::Index {
        digest: index_desc.digest.clone(),
        error,
    };
    // `open` checks the header, sections and checksum; `validate` the whole tree.
    let index = Index::open(index_bytes).map_err(index_err)?;
    index.validate().map_err(index_err)?;
    if &index.source_manifest() != source.as_bytes() {
        return Err(not_artifact("the index names another source manifest"));
    }
    if index.config_json() != image.config_bytes.as_ref() {
        return Err(not_artifact("the index carries another image config"));
    }
    let packs: Vec<(Digest, u64)> = index
        .packs()
        .into_iter()
        .map(|(d, size)| (Digest::from_bytes(d), size))
        .collect();
    let listed: Vec<(Digest, u64)> = pack_descs
        .iter()
        .map(|p| (p.digest.clone(), p.size))
        .collect();
    if packs != listed {
        return Err(not_artifact(
            "the index and the manifest list different packs",
        ));
    }
    Ok(Artifact {
        reference,
        digest: fetched.digest,
        index_digest: index_desc.digest.clone(),
        index,
        packs,
    })
}
