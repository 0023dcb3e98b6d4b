//! The accelerated artifact in the registry: an OCI image manifest whose `subject` is the
//! source image manifest, with the index and the packs as its layers (`docs/format.md`).
//!
//! It lives under a tag derived from the source digest (`sha256-<hex>.pronto`), so it can be
//! found from the digest alone, on any OCI registry, even one without the referrers API: in the
//! source's repository by default, or in an *artifact repository* (any repository, on any
//! registry: for images the converter cannot push beside, read-only or public ones), where the
//! tag and the `subject` still tie it to the source digest.
//!
//! This crate owns the artifact's manifest and nothing else, so that what reads artifacts (the
//! lazy filesystem, the node) does not depend on what writes them (the converter, with its
//! SQLite memo and its thread pool):
//! - the constants: [`ARTIFACT_TYPE`], the layer media types, the empty config;
//! - where an artifact is: [`artifact_tag`], [`artifact_reference`];
//! - writing one (the converter): [`IndexLayer::compress`], [`build_manifest`],
//!   [`push_manifest`];
//! - reading one: [`fetch_artifact`] ([`fetch_artifact_in`] for an artifact repository) fetches the manifest and the index and checks everything
//!   they claim before returning an [`Artifact`]; [`ArtifactError`] says what was wrong.
//! - *hot revisions* (the hot-set re-layout): the same tree, its hot chunks moved into packs
//!   written in access-trace order; same `subject`, tagged [`hot_artifact_tag`], annotated with
//!   the base revision and the trace ([`build_hot_manifest`], [`push_hot_manifest`]); read
//!   with [`fetch_artifact_revision`] and the same checks.

mod whole;

use std::collections::BTreeMap;
use std::fmt::Display;

use bytes::Bytes;
use pronto_format::{FormatError, Index};
use pronto_image::manifest::{Descriptor, ImageManifest, ManifestKind, OCI_MANIFEST};
use pronto_image::pull::ResolvedImage;
use pronto_image::{Digest, Reference, RegistryClient, RegistryError};
pub use whole::{WholeIndex, WholeIndexError};

/// The artifact version written: layer 0 is the index split ([`INDEX_SPLIT_MEDIA_TYPE`]).
pub const ARTIFACT_TYPE: &str = "application/vnd.pronto.image.v3";
/// Artifacts converted before the index was split: layer 0 is the index compressed
/// ([`INDEX_ZSTD_MEDIA_TYPE`]). Still read; no longer written.
pub const ARTIFACT_TYPE_V2: &str = "application/vnd.pronto.image.v2";
/// Artifacts converted before the index was compressed: layer 0 is the index as is
/// ([`INDEX_MEDIA_TYPE`]). Still read; no longer written.
pub const ARTIFACT_TYPE_V1: &str = "application/vnd.pronto.image.v1";
/// The index blob as is (artifact v1).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.pronto.index.v1";
/// The index blob as one zstd stream (artifact v2). The layer's digest and size are the
/// compressed bytes'; the uncompressed blob's are in the two annotations below.
pub const INDEX_ZSTD_MEDIA_TYPE: &str = "application/vnd.pronto.index.v1+zstd";
/// The index split for a mount that serves before its chunk digests arrive (artifact v3): the
/// *tree* (the index blob with every chunk record's digest zeroed) as one zstd stream, then the
/// digests, 32 bytes per chunk record in record order. The two index annotations below, plus
/// the tree's stored size and digest ([`TREE_SIZE_ANNOTATION`], [`TREE_DIGEST_ANNOTATION`]).
pub const INDEX_SPLIT_MEDIA_TYPE: &str = "application/vnd.pronto.index.v1+split";
/// Bytes of the compressed tree at the start of a split index layer (decimal).
pub const TREE_SIZE_ANNOTATION: &str = "vnd.pronto.index.tree-size";
/// The sha256 digest of those bytes: what a mount checks before it serves from the tree.
pub const TREE_DIGEST_ANNOTATION: &str = "vnd.pronto.index.tree-digest";
/// The sha256 digest of the uncompressed index (`sha256:<hex>`): the index's identity, as in v1.
pub const INDEX_DIGEST_ANNOTATION: &str = "vnd.pronto.index.uncompressed-digest";
/// The uncompressed index's size in bytes (decimal): the bound of its decompression.
pub const INDEX_SIZE_ANNOTATION: &str = "vnd.pronto.index.uncompressed-size";
pub const PACK_MEDIA_TYPE: &str = "application/vnd.pronto.pack.v1";
/// The OCI "empty" config (`{}`), as artifacts without a config use.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The tag of the artifact converted from `source`.
pub fn artifact_tag(source: &Digest) -> String {
    format!("sha256-{}.pronto", source.hex())
}

/// The tag of the latest hot revision of the artifact converted from `source`. Readers that
/// must not follow a moving tag (cold starts) pin the revision by its manifest digest.
pub fn hot_artifact_tag(source: &Digest) -> String {
    format!("sha256-{}.pronto-hot", source.hex())
}

/// Annotation of a hot revision: the digest of the base revision's manifest it was made from.
pub const ANNOTATION_HOT_BASE: &str = "dev.pronto.hot.base";
/// Annotation of a hot revision: the sha256 of the access trace (its stored bytes) it follows.
pub const ANNOTATION_HOT_TRACE: &str = "dev.pronto.hot.trace";
/// Annotation of a hot revision: how many of its packs (the last ones) are hot packs.
pub const ANNOTATION_HOT_PACKS: &str = "dev.pronto.hot.packs";

/// Which revision of an image's artifact to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// The conversion's, under [`artifact_tag`].
    Base,
    /// The latest hot revision, under [`hot_artifact_tag`].
    Hot,
    /// Exactly this manifest (either kind), fetched by digest: what a cold start uses, so a
    /// tag moved meanwhile changes nothing.
    Pinned(Digest),
}

/// Where the artifact of the image `source` (in `repo`'s repository) is.
pub fn artifact_reference(repo: &Reference, source: &Digest) -> Reference {
    Reference {
        tag: Some(artifact_tag(source)),
        digest: None,
        ..repo.clone()
    }
}

/// Why a string is not an artifact repository.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepositoryError {
    #[error("{given:?} is not a repository: {source}")]
    Parse {
        given: String,
        #[source]
        source: pronto_image::reference::ReferenceError,
    },
    #[error("{given:?} names a tag or digest; give the repository alone (REGISTRY/REPO)")]
    Qualified { given: String },
}

/// Parses an artifact repository, `[REGISTRY/]REPO` without tag or digest (the artifacts'
/// tags are derived from their sources' digests).
pub fn parse_repository(given: &str) -> Result<Reference, RepositoryError> {
    let reference: Reference = given.parse().map_err(|source| RepositoryError::Parse {
        given: given.to_string(),
        source,
    })?;
    let last = given.rsplit('/').next().unwrap_or(given);
    if given.contains('@') || last.contains(':') {
        return Err(RepositoryError::Qualified {
            given: given.to_string(),
        });
    }
    Ok(Reference {
        tag: None,
        digest: None,
        ..reference
    })
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

/// The index as the artifact stores it: split (v3) or compressed whole (v2), with both
/// identities.
#[derive(Debug, Clone)]
pub struct IndexLayer {
    /// What is pushed: the tree as one zstd stream then the digests (split), or the index as
    /// one zstd stream.
    pub bytes: Bytes,
    /// Digest of `bytes` (the layer's digest).
    pub digest: Digest,
    /// Digest of the uncompressed index (the index's identity).
    pub index_digest: Digest,
    /// Length of the uncompressed index.
    pub index_size: u64,
    /// Split: the compressed tree's length at the start of `bytes`, and its digest.
    pub tree: Option<(u64, Digest)>,
}

impl IndexLayer {
    /// The index split for the artifact (the layer written now): its tree compressed, then its
    /// chunk digests.
    pub fn split(index: &Index) -> Result<IndexLayer, FormatError> {
        let (tree, digests) = index.split_digests()?;
        let mut bytes = pronto_format::compress_index(&tree);
        let tree_part = (bytes.len() as u64, Digest::of(&bytes));
        bytes.extend_from_slice(&digests);
        let bytes = Bytes::from(bytes);
        Ok(IndexLayer {
            digest: Digest::of(&bytes),
            bytes,
            index_digest: Digest::of(index.as_bytes()),
            index_size: index.as_bytes().len() as u64,
            tree: Some(tree_part),
        })
    }

    /// An index blob compressed whole (artifact v2, no longer written by the converter).
    pub fn compress(index: &[u8]) -> IndexLayer {
        let bytes = Bytes::from(pronto_format::compress_index(index));
        IndexLayer {
            digest: Digest::of(&bytes),
            bytes,
            index_digest: Digest::of(index),
            index_size: index.len() as u64,
            tree: None,
        }
    }

    /// The artifact type of a manifest with this index layer.
    pub fn artifact_type(&self) -> &'static str {
        if self.tree.is_some() {
            ARTIFACT_TYPE
        } else {
            ARTIFACT_TYPE_V2
        }
    }

    /// The manifest's layer 0 for this index.
    pub fn descriptor(&self) -> Descriptor {
        let media_type = if self.tree.is_some() {
            INDEX_SPLIT_MEDIA_TYPE
        } else {
            INDEX_ZSTD_MEDIA_TYPE
        };
        let mut d = descriptor(media_type, self.digest.clone(), self.bytes.len() as u64);
        let mut annotations = BTreeMap::from([
            (
                INDEX_DIGEST_ANNOTATION.to_string(),
                self.index_digest.to_string(),
            ),
            (
                INDEX_SIZE_ANNOTATION.to_string(),
                self.index_size.to_string(),
            ),
        ]);
        if let Some((size, digest)) = &self.tree {
            annotations.insert(TREE_SIZE_ANNOTATION.to_string(), size.to_string());
            annotations.insert(TREE_DIGEST_ANNOTATION.to_string(), digest.to_string());
        }
        d.annotations = Some(annotations);
        d
    }
}

/// The artifact manifest (its version is the index layer's: [`IndexLayer::artifact_type`]):
/// layer 0 is the index, the rest are packs in index order.
pub fn build_manifest(
    source: &Descriptor,
    index: &IndexLayer,
    packs: &[(Digest, u64)],
) -> ImageManifest {
    let mut layers = vec![index.descriptor()];
    layers.extend(
        packs
            .iter()
            .map(|(d, s)| descriptor(PACK_MEDIA_TYPE, d.clone(), *s)),
    );
    ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        artifact_type: Some(index.artifact_type().to_string()),
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

/// A hot revision's manifest: like [`build_manifest`] (same subject, index first, the base's
/// packs, then the hot packs), annotated with where it comes from.
pub fn build_hot_manifest(
    source: &Descriptor,
    index: &IndexLayer,
    packs: &[(Digest, u64)],
    hot_packs: usize,
    base: &Digest,
    trace: &Digest,
) -> ImageManifest {
    let mut manifest = build_manifest(source, index, packs);
    manifest.annotations = Some(
        [
            (ANNOTATION_HOT_BASE, base.to_string()),
            (ANNOTATION_HOT_TRACE, trace.to_string()),
            (ANNOTATION_HOT_PACKS, hot_packs.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    );
    manifest
}

/// Pushes a hot revision's manifest under [`hot_artifact_tag`]; returns its digest.
pub async fn push_hot_manifest(
    client: &RegistryClient,
    repo: &Reference,
    source: &Digest,
    manifest: &ImageManifest,
) -> Result<Digest, RegistryError> {
    push_tagged(client, repo, &hot_artifact_tag(source), manifest).await
}

/// Pushes the manifest under the artifact tag; returns its digest.
pub async fn push_manifest(
    client: &RegistryClient,
    repo: &Reference,
    source: &Digest,
    manifest: &ImageManifest,
) -> Result<Digest, RegistryError> {
    push_tagged(client, repo, &artifact_tag(source), manifest).await
}

/// The empty config blob, then `manifest` under `tag`.
async fn push_tagged(
    client: &RegistryClient,
    repo: &Reference,
    tag: &str,
    manifest: &ImageManifest,
) -> Result<Digest, RegistryError> {
    client
        .push_blob(repo, Bytes::from_static(EMPTY_CONFIG))
        .await?;
    let body = Bytes::from(serde_json::to_vec(manifest).expect("manifest serializes"));
    client.push_manifest(repo, tag, OCI_MANIFEST, body).await
}

/// Why the artifact of an image cannot be used: not there, or not what it claims to be. Each
/// variant names the check that failed and the values that disagree.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// No manifest under the artifact tag (the image was never converted), or the registry
    /// failed to answer.
    #[error("no accelerated artifact for {image} ({reference}): {source}")]
    NoArtifact {
        image: Digest,
        reference: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{reference} is an image index, not a Pronto artifact manifest")]
    NotAManifest { reference: String },
    #[error(
        "{reference} has artifact type {}, expected {ARTIFACT_TYPE} (or {ARTIFACT_TYPE_V2}, \
         {ARTIFACT_TYPE_V1})",
        or_none(.found)
    )]
    ArtifactType {
        reference: String,
        found: Option<String>,
    },
    #[error("{reference} has subject {}, expected the image {image}", or_none(.found))]
    Subject {
        reference: String,
        image: Digest,
        found: Option<Digest>,
    },
    #[error("{reference} has no layers, expected the index and then the packs")]
    NoLayers { reference: String },
    #[error("{reference}: layer {layer} has media type {found:?}, expected {expected}")]
    LayerMediaType {
        reference: String,
        layer: usize,
        found: String,
        expected: &'static str,
    },
    /// The compressed index layer lacks an annotation, or its value does not parse.
    #[error(
        "{reference}: the index layer's annotation {name} is {}, expected {expected}",
        or_missing(.found)
    )]
    IndexAnnotation {
        reference: String,
        name: &'static str,
        found: Option<String>,
        expected: &'static str,
    },
    /// The compressed index layer does not decompress to the size it declares (a bomb is
    /// stopped at that size), or is not a zstd stream.
    #[error("index layer {layer}: {source}")]
    IndexDecompress {
        layer: Digest,
        #[source]
        source: FormatError,
    },
    /// A split index layer's tree is not the bytes its annotation names.
    #[error("index layer {layer}: its tree hashes to {found}, its annotation says {expected}")]
    TreeDigest {
        layer: Digest,
        expected: Digest,
        found: Digest,
    },
    /// A split index layer read in one request for a mount: its bytes are not its digest.
    #[error("index layer {layer}: its bytes hash to {found}")]
    LayerDigest { layer: Digest, found: Digest },
    /// A split index layer's digests do not complete its tree into the index it names.
    #[error("index layer {layer}: its chunk digests: {source}")]
    IndexDigests {
        layer: Digest,
        #[source]
        source: FormatError,
    },
    /// The compressed index layer decompresses to bytes other than the index it names.
    #[error("index layer {layer} decompresses to {found}, its annotation says {expected}")]
    IndexDigest {
        layer: Digest,
        expected: Digest,
        found: Digest,
    },
    /// The index blob could not be fetched, or its bytes do not match its digest (the registry
    /// client checks size and digest; its error names the blob).
    #[error("fetching the artifact's index: {source}")]
    FetchIndex {
        #[source]
        source: Box<RegistryError>,
    },
    /// The index blob is not a valid index: header, sections, checksum or tree.
    #[error("index {digest}: {source}")]
    Index {
        digest: Digest,
        #[source]
        source: FormatError,
    },
    #[error("index {digest} was converted from {found}, not from the image {image}")]
    IndexSource {
        digest: Digest,
        image: Digest,
        found: Digest,
    },
    /// The index carries a config other than the image's (digests of the config bytes).
    #[error("index {digest} carries the image config {found}, expected {expected}")]
    IndexConfig {
        digest: Digest,
        found: Digest,
        expected: Digest,
    },
    #[error("index {digest} lists {index} packs, the artifact manifest {manifest}")]
    PackCount {
        digest: Digest,
        index: usize,
        manifest: usize,
    },
    #[error("pack {position} is {index} in index {digest}, {manifest} in the artifact manifest")]
    PackDigest {
        digest: Digest,
        position: usize,
        index: Digest,
        manifest: Digest,
    },
    #[error(
        "pack {position} ({pack}) is {index} bytes in index {digest}, {manifest} in the artifact \
         manifest"
    )]
    PackSize {
        digest: Digest,
        position: usize,
        pack: Digest,
        index: u64,
        manifest: u64,
    },
}

fn or_none<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".to_string(), ToString::to_string)
}

fn or_missing(value: &Option<String>) -> String {
    value
        .as_ref()
        .map_or_else(|| "missing".to_string(), |v| format!("{v:?}"))
}

/// An artifact fetched and checked: its index (validated whole) and its packs.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `REGISTRY/REPO:sha256-<hex>.pronto`
    pub reference: Reference,
    /// Digest of the artifact manifest.
    pub digest: Digest,
    /// Digest of the uncompressed index (whatever the artifact version).
    pub index_digest: Digest,
    /// The index, validated; from [`fetch_artifact_for_mount`] and a split layer, its tree
    /// ([`Index::is_tree_only`]): the chunks come with [`Artifact::whole_index`].
    pub index: Index,
    /// The index with its chunk digests: `index` itself, or (a tree) once they have arrived.
    pub whole_index: WholeIndex,
    /// Bytes fetched for the index: the stored layer (v2, v3), the index itself (v1).
    pub index_layer_size: u64,
    /// Pack digests and sizes, in index order (the manifest agrees).
    pub packs: Vec<(Digest, u64)>,
    /// A hot revision: the base revision's manifest digest (its annotation); `None`: a base.
    pub hot_base: Option<Digest>,
}

/// Fetches the artifact of `image` and checks everything it claims before anyone trusts it:
/// the manifest's artifact type (v2, or v1 from before the index was compressed), subject and
/// layer media types; the index layer's digest (by the registry client) and, compressed, its
/// bounded decompression to the size and digest its annotations declare; the index's header,
/// checksum and whole tree (`Index::validate`); that the index names `image` as its source and
/// carries its config; and that the index and the manifest list the same packs.
pub async fn fetch_artifact(
    client: &RegistryClient,
    image: &ResolvedImage,
) -> Result<Artifact, ArtifactError> {
    fetch_artifact_in(client, image, &image.pinned).await
}

/// [`fetch_artifact`] from the repository `repo` names (its tag or digest ignored): an
/// artifact repository, or the image's own.
pub async fn fetch_artifact_in(
    client: &RegistryClient,
    image: &ResolvedImage,
    repo: &Reference,
) -> Result<Artifact, ArtifactError> {
    fetch_artifact_revision(client, image, repo, &Revision::Base).await
}

/// [`fetch_artifact_in`] of one revision: every revision gets the same checks (its subject
/// and its index's source are `image`, so a hot revision of another image is refused).
pub async fn fetch_artifact_revision(
    client: &RegistryClient,
    image: &ResolvedImage,
    repo: &Reference,
    revision: &Revision,
) -> Result<Artifact, ArtifactError> {
    let listed = fetch_manifest(client, image, repo, revision).await?;
    fetch_whole(client, image, listed).await
}

/// An artifact manifest fetched and checked ([`check_manifest`]), its index not yet.
struct Listed {
    reference: Reference,
    digest: Digest,
    manifest: ImageManifest,
    layer: IndexLayerDesc,
    packs: PackList,
}

/// The artifact `listed` names with its index fetched whole and checked.
async fn fetch_whole(
    client: &RegistryClient,
    image: &ResolvedImage,
    listed: Listed,
) -> Result<Artifact, ArtifactError> {
    let Listed {
        reference,
        digest,
        manifest,
        layer,
        packs,
    } = listed;
    let stored = client
        .fetch_blob(&reference, &layer.stored.digest, Some(layer.stored.size))
        .await
        .map_err(|error| ArtifactError::FetchIndex {
            source: Box::new(error),
        })?;
    let index_bytes = layer.open(stored)?;
    let index = check_index(
        &layer.index_digest,
        index_bytes,
        &image.manifest_digest,
        &image.config_bytes,
        &packs,
    )?;
    Ok(Artifact {
        hot_base: hot_base(&manifest),
        reference,
        digest,
        index_digest: layer.index_digest,
        whole_index: WholeIndex::ready(index.clone()),
        index,
        index_layer_size: layer.stored.size,
        packs,
    })
}

/// As [`fetch_artifact_revision`], for a mount: from a split index layer (v3) it returns as
/// soon as the tree has arrived and passed every check a tree can (its digest, bounded
/// decompression, header, sections, `validate`, source, config, packs), with `index` the tree
/// ([`Index::is_tree_only`]). The same request goes on reading the chunk digests in the
/// background; [`Artifact::whole_index`] gets the whole index once the layer's digest, the
/// index's checksum and its declared digest are checked, or the reason it failed. Other
/// versions are fetched whole, as by [`fetch_artifact_revision`].
///
/// One request, the tree first: the mount costs the round trip and the tree's transfer, not
/// the digests' (about 70% of a compressed index), which a mount needs only at its first chunk.
pub async fn fetch_artifact_for_mount(
    client: &RegistryClient,
    image: &ResolvedImage,
    repo: &Reference,
    revision: &Revision,
) -> Result<Artifact, ArtifactError> {
    let listed = fetch_manifest(client, image, repo, revision).await?;
    let (Some((tree_size, _)), Some(size)) =
        (listed.layer.tree.clone(), listed.layer.declared_size)
    else {
        return fetch_whole(client, image, listed).await;
    };
    let Listed {
        reference,
        digest,
        manifest,
        layer,
        packs,
    } = listed;
    let layer_digest = layer.stored.digest.clone();
    let layer_size = layer.stored.size;
    let (tree_tx, tree_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let read = {
        let (client, reference, layer_digest) =
            (client.clone(), reference.clone(), layer_digest.clone());
        tokio::spawn(async move {
            let mut tree_tx = Some(tree_tx);
            client
                .read_blob_range_progressive(&reference, &layer_digest, 0, layer_size, |so_far| {
                    if so_far.len() as u64 >= tree_size {
                        if let Some(tx) = tree_tx.take() {
                            let _ = tx.send(so_far[..tree_size as usize].to_vec());
                        }
                    }
                })
                .await
        })
    };
    let fetch_error = |error| ArtifactError::FetchIndex {
        source: Box::new(error),
    };
    let (stored_tree, read) = match tree_rx.await {
        Ok(tree) => (tree, read),
        // The read ended before the tree was in: its error.
        Err(_) => {
            let error = match read.await.expect("index layer read panicked") {
                Err(e) => e,
                Ok(_) => unreachable!("a whole layer holds its tree"),
            };
            return Err(fetch_error(error));
        }
    };
    // Decompression and `validate` are O(index): off the runtime's workers.
    let checked = {
        let layer = layer.clone();
        tokio::task::spawn_blocking(move || {
            let tree = layer.open_tree(&stored_tree, size)?;
            tree.validate().map_err(|source| ArtifactError::Index {
                digest: layer.index_digest.clone(),
                source,
            })?;
            Ok::<_, ArtifactError>(tree)
        })
        .await
        .expect("index tree check panicked")
    };
    let tree = match checked {
        Ok(tree) => tree,
        Err(e) => {
            read.abort();
            return Err(e);
        }
    };
    let claims = check_claims(
        &layer.index_digest,
        &tree,
        &image.manifest_digest,
        &image.config_bytes,
        &packs,
    );
    if let Err(e) = claims {
        read.abort();
        return Err(e);
    }
    let whole_index = WholeIndex::pending();
    {
        let (whole, tree) = (whole_index.clone(), tree.clone());
        let desc = layer.clone();
        tokio::spawn(async move {
            let done = match read.await {
                Err(e) => Err(format!("reading the index layer: {e}")),
                Ok(Err(e)) => Err(fetch_error(e).to_string()),
                Ok(Ok(stored)) => {
                    tokio::task::spawn_blocking(move || desc.complete_read(&tree, &stored))
                        .await
                        .map_err(|e| format!("completing the index: {e}"))
                        .and_then(|done| done.map_err(|e| e.to_string()))
                }
            };
            whole.set(done);
        });
    }
    Ok(Artifact {
        hot_base: hot_base(&manifest),
        reference,
        digest,
        index_digest: layer.index_digest,
        index: tree,
        whole_index,
        index_layer_size: layer.stored.size,
        packs,
    })
}

/// The artifact manifest of `revision`, fetched (the registry client checks a pinned digest)
/// and checked ([`check_manifest`]).
async fn fetch_manifest(
    client: &RegistryClient,
    image: &ResolvedImage,
    repo: &Reference,
    revision: &Revision,
) -> Result<Listed, ArtifactError> {
    let source = &image.manifest_digest;
    let reference = match revision {
        Revision::Base => artifact_reference(repo, source),
        Revision::Hot => Reference {
            tag: Some(hot_artifact_tag(source)),
            digest: None,
            ..repo.clone()
        },
        Revision::Pinned(digest) => Reference {
            tag: None,
            digest: Some(digest.clone()),
            ..repo.clone()
        },
    };
    let fetched =
        client
            .fetch_manifest(&reference)
            .await
            .map_err(|error| ArtifactError::NoArtifact {
                image: source.clone(),
                reference: reference.to_string(),
                source: Box::new(error),
            })?;
    let ManifestKind::Image(manifest) = fetched.kind else {
        return Err(ArtifactError::NotAManifest {
            reference: reference.to_string(),
        });
    };
    let (layer, packs) = check_manifest(&reference, source, &manifest)?;
    Ok(Listed {
        reference,
        digest: fetched.digest,
        manifest: *manifest,
        layer,
        packs,
    })
}

fn hot_base(manifest: &ImageManifest) -> Option<Digest> {
    manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HOT_BASE))
        .and_then(|d| d.parse().ok())
}

/// Layer 0 of an artifact manifest, checked: what to fetch, and what it must turn into.
#[derive(Debug, Clone)]
struct IndexLayerDesc {
    stored: Descriptor,
    /// The uncompressed index's digest.
    index_digest: Digest,
    /// When compressed: the uncompressed size its annotation declares (the decompression
    /// bound); `None` for an index stored as is (v1).
    declared_size: Option<u64>,
    /// When split (v3): the compressed tree's size at the start of the layer, and its digest.
    tree: Option<(u64, Digest)>,
}

impl IndexLayerDesc {
    /// The index blob from the layer's bytes (digest-checked by the registry client): as is
    /// (v1), or decompressed within the declared size (v2; v3: the tree, completed with the
    /// digests after it) and checked against the declared digest.
    fn open(&self, stored: Bytes) -> Result<Bytes, ArtifactError> {
        let Some(size) = self.declared_size else {
            return Ok(stored);
        };
        let bytes = match &self.tree {
            None => Bytes::from(self.decompress(&stored, size)?),
            Some((tree_size, _)) => {
                let (tree, digests) = stored.split_at(*tree_size as usize);
                let tree = self.open_tree(tree, size)?;
                self.complete(&tree, digests)?.as_bytes().clone()
            }
        };
        self.check_digest(&bytes)?;
        Ok(bytes)
    }

    fn decompress(&self, stored: &[u8], size: u64) -> Result<Vec<u8>, ArtifactError> {
        pronto_format::decompress_index(stored, size).map_err(|source| {
            ArtifactError::IndexDecompress {
                layer: self.stored.digest.clone(),
                source,
            }
        })
    }

    /// A split layer's tree from its stored bytes: checked against the tree digest, decompressed
    /// within the declared size, opened (not validated: the caller does).
    fn open_tree(&self, stored: &[u8], size: u64) -> Result<Index, ArtifactError> {
        let layer = || self.stored.digest.clone();
        if let Some((_, expected)) = &self.tree {
            let found = Digest::of(stored);
            if &found != expected {
                return Err(ArtifactError::TreeDigest {
                    layer: layer(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let bytes = self.decompress(stored, size)?;
        Index::open_tree(bytes).map_err(|source| ArtifactError::Index {
            digest: self.index_digest.clone(),
            source,
        })
    }

    /// The whole index from a split layer's tree and the digests after it.
    fn complete(&self, tree: &Index, digests: &[u8]) -> Result<Index, ArtifactError> {
        tree.with_digests(digests)
            .map_err(|source| ArtifactError::IndexDigests {
                layer: self.stored.digest.clone(),
                source,
            })
    }

    /// The whole index from a split layer read in one request (see
    /// [`fetch_artifact_for_mount`]), whose `tree` was checked and opened from its start: the
    /// layer's digest (a range read is not checked by the registry client), then the index
    /// completed with the digests after the tree, checked against the declared digest.
    fn complete_read(&self, tree: &Index, stored: &[u8]) -> Result<Index, ArtifactError> {
        let found = Digest::of(stored);
        if found != self.stored.digest {
            return Err(ArtifactError::LayerDigest {
                layer: self.stored.digest.clone(),
                found,
            });
        }
        let tree_size = self.tree.as_ref().map_or(0, |(size, _)| *size as usize);
        let whole = self.complete(tree, &stored[tree_size..])?;
        self.check_digest(whole.as_bytes())?;
        Ok(whole)
    }

    fn check_digest(&self, bytes: &[u8]) -> Result<(), ArtifactError> {
        let found = Digest::of(bytes);
        if found != self.index_digest {
            return Err(ArtifactError::IndexDigest {
                layer: self.stored.digest.clone(),
                expected: self.index_digest.clone(),
                found,
            });
        }
        Ok(())
    }
}

/// Pack digests and sizes, in index order.
type PackList = Vec<(Digest, u64)>;

/// What the artifact manifest at `reference` claims, checked: its artifact type (either
/// version), that its subject is `image`, its layers' media types (layer 0 as the version
/// wants) and the index layer's annotations. Returns the index layer and the packs the manifest
/// lists, in order.
fn check_manifest(
    reference: &Reference,
    image: &Digest,
    manifest: &ImageManifest,
) -> Result<(IndexLayerDesc, PackList), ArtifactError> {
    let reference = || reference.to_string();
    let index_type = match manifest.artifact_type.as_deref() {
        Some(ARTIFACT_TYPE) => INDEX_SPLIT_MEDIA_TYPE,
        Some(ARTIFACT_TYPE_V2) => INDEX_ZSTD_MEDIA_TYPE,
        Some(ARTIFACT_TYPE_V1) => INDEX_MEDIA_TYPE,
        _ => {
            return Err(ArtifactError::ArtifactType {
                reference: reference(),
                found: manifest.artifact_type.clone(),
            })
        }
    };
    let subject = manifest.subject.as_ref().map(|s| &s.digest);
    if subject != Some(image) {
        return Err(ArtifactError::Subject {
            reference: reference(),
            image: image.clone(),
            found: subject.cloned(),
        });
    }
    let Some((index, packs)) = manifest.layers.split_first() else {
        return Err(ArtifactError::NoLayers {
            reference: reference(),
        });
    };
    let expected = std::iter::once(index_type).chain(std::iter::repeat(PACK_MEDIA_TYPE));
    for (layer, (desc, expected)) in manifest.layers.iter().zip(expected).enumerate() {
        if desc.media_type != expected {
            return Err(ArtifactError::LayerMediaType {
                reference: reference(),
                layer,
                found: desc.media_type.clone(),
                expected,
            });
        }
    }
    let packs = packs.iter().map(|p| (p.digest.clone(), p.size)).collect();
    if index_type == INDEX_MEDIA_TYPE {
        let layer = IndexLayerDesc {
            stored: index.clone(),
            index_digest: index.digest.clone(),
            declared_size: None,
            tree: None,
        };
        return Ok((layer, packs));
    }
    // An annotation's value, parsed; refused by name when missing or malformed.
    fn annotation<T: std::str::FromStr>(
        reference: String,
        index: &Descriptor,
        name: &'static str,
        expected: &'static str,
    ) -> Result<T, ArtifactError> {
        let found = index.annotations.as_ref().and_then(|a| a.get(name));
        found
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ArtifactError::IndexAnnotation {
                reference,
                name,
                found: found.cloned(),
                expected,
            })
    }
    let index_digest: Digest = annotation(
        reference(),
        index,
        INDEX_DIGEST_ANNOTATION,
        "a digest sha256:<64 hex>",
    )?;
    let size: u64 = annotation(reference(), index, INDEX_SIZE_ANNOTATION, "a size in bytes")?;
    let tree = if index_type == INDEX_SPLIT_MEDIA_TYPE {
        const BELOW: &str = "a size in bytes, above 0 and below the layer's";
        let tree_size: u64 = annotation(reference(), index, TREE_SIZE_ANNOTATION, BELOW)?;
        if tree_size == 0 || tree_size >= index.size {
            return Err(ArtifactError::IndexAnnotation {
                reference: reference(),
                name: TREE_SIZE_ANNOTATION,
                found: Some(tree_size.to_string()),
                expected: BELOW,
            });
        }
        let tree_digest: Digest = annotation(
            reference(),
            index,
            TREE_DIGEST_ANNOTATION,
            "a digest sha256:<64 hex>",
        )?;
        Some((tree_size, tree_digest))
    } else {
        None
    };
    let layer = IndexLayerDesc {
        stored: index.clone(),
        index_digest,
        declared_size: Some(size),
        tree,
    };
    Ok((layer, packs))
}

/// Opens the index blob `bytes` (whose digest was checked) and checks it whole: header,
/// sections, checksum and tree, then what it claims ([`check_claims`]).
fn check_index(
    digest: &Digest,
    bytes: Bytes,
    image: &Digest,
    config: &[u8],
    listed: &[(Digest, u64)],
) -> Result<Index, ArtifactError> {
    let format_error = |source| ArtifactError::Index {
        digest: digest.clone(),
        source,
    };
    // `open` checks the header, sections and checksum; `validate` the whole tree.
    let index = Index::open(bytes).map_err(format_error)?;
    index.validate().map_err(format_error)?;
    check_claims(digest, &index, image, config, listed)?;
    Ok(index)
}

/// Checks an opened and validated index (whole, or a split layer's tree) against what it must
/// be: converted from `image` and carrying its `config`, listing the packs the manifest lists
/// (`listed`), in the same order.
fn check_claims(
    digest: &Digest,
    index: &Index,
    image: &Digest,
    config: &[u8],
    listed: &[(Digest, u64)],
) -> Result<(), ArtifactError> {
    if &index.source_manifest() != image.as_bytes() {
        return Err(ArtifactError::IndexSource {
            digest: digest.clone(),
            image: image.clone(),
            found: Digest::from_bytes(index.source_manifest()),
        });
    }
    if index.config_json() != config {
        return Err(ArtifactError::IndexConfig {
            digest: digest.clone(),
            found: Digest::of(index.config_json()),
            expected: Digest::of(config),
        });
    }
    let packs = index.packs();
    if packs.len() != listed.len() {
        return Err(ArtifactError::PackCount {
            digest: digest.clone(),
            index: packs.len(),
            manifest: listed.len(),
        });
    }
    for (position, ((pack, size), (listed, listed_size))) in packs.iter().zip(listed).enumerate() {
        if pack != listed.as_bytes() {
            return Err(ArtifactError::PackDigest {
                digest: digest.clone(),
                position,
                index: Digest::from_bytes(*pack),
                manifest: listed.clone(),
            });
        }
        if size != listed_size {
            return Err(ArtifactError::PackSize {
                digest: digest.clone(),
                position,
                pack: listed.clone(),
                index: *size,
                manifest: *listed_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pronto_format::{ChunkRef, Compression, IndexBuilder, NodeKind, NodeMeta};
    use pronto_image::manifest::parse_manifest;

    use super::*;

    const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;

    fn image() -> Digest {
        Digest::from_bytes([0x11; 32])
    }

    fn pack(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn source() -> Descriptor {
        descriptor(OCI_MANIFEST, image(), 1234)
    }

    fn reference() -> Reference {
        let pinned = Reference {
            registry: "127.0.0.1:5000".into(),
            repository: "fn/app".into(),
            tag: None,
            digest: Some(image()),
        };
        artifact_reference(&pinned, &image())
    }

    /// The manifest the converter pushes, through JSON and back, as a fetch would see it.
    fn pushed(packs: &[(Digest, u64)]) -> ImageManifest {
        through_json(&build_manifest(
            &source(),
            &IndexLayer::compress(b"index"),
            packs,
        ))
    }

    fn through_json(manifest: &ImageManifest) -> ImageManifest {
        let body = serde_json::to_vec(manifest).unwrap();
        match parse_manifest(Some(OCI_MANIFEST), &body).unwrap() {
            ManifestKind::Image(m) => *m,
            ManifestKind::Index(_) => panic!("an artifact manifest parses as an image manifest"),
        }
    }

    /// An index converted from `source` with `config`: one file of two chunks, one per pack.
    fn index_blob(source: &Digest, config: &[u8], packs: &[(Digest, u64)]) -> Bytes {
        let mut b = IndexBuilder::new(4096);
        b.set_source(*source.as_bytes(), config.to_vec());
        for (d, size) in packs {
            b.add_pack(*d.as_bytes(), *size);
        }
        b.set_root(NodeMeta::new(NodeKind::Dir, 0o755)).unwrap();
        let chunk = |n: u8, pack, size| ChunkRef {
            digest: [n; 32],
            pack,
            compression: Compression::None,
            offset: 0,
            compressed_size: size,
            uncompressed_size: size,
        };
        let mut file = NodeMeta::new(NodeKind::File, 0o644);
        file.size = 4096 + 10;
        b.add(b"f", file, vec![chunk(1, 0, 4096), chunk(2, 1, 10)])
            .unwrap();
        Bytes::from(b.finish().unwrap())
    }

    fn two_packs() -> Vec<(Digest, u64)> {
        vec![(pack(0xa0), 4096), (pack(0xb0), 10)]
    }

    #[test]
    fn the_tag_is_derived_from_the_source_digest() {
        let hex = "ab".repeat(32);
        let source = Digest::from_bytes([0xab; 32]);
        assert_eq!(artifact_tag(&source), format!("sha256-{hex}.pronto"));
        let repo = Reference {
            registry: "registry.example:5000".into(),
            repository: "team/fn".into(),
            tag: Some("v1".into()),
            digest: Some(source.clone()),
        };
        let r = artifact_reference(&repo, &source);
        assert_eq!(
            r.to_string(),
            format!("registry.example:5000/team/fn:sha256-{hex}.pronto")
        );
        assert_eq!(r.digest, None);
    }

    #[test]
    fn the_manifest_lists_the_index_then_the_packs_and_names_its_subject() {
        let packs = two_packs();
        let layer = IndexLayer::compress(b"index");
        let m = build_manifest(&source(), &layer, &packs);
        assert_eq!(m.artifact_type.as_deref(), Some(ARTIFACT_TYPE_V2));
        assert_eq!(m.media_type.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(m.subject.as_ref(), Some(&source()));
        assert_eq!(m.config.media_type, EMPTY_CONFIG_MEDIA_TYPE);
        // The OCI empty descriptor: the digest of `{}`.
        assert_eq!(
            m.config.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m.config.size, 2);
        let layers: Vec<_> = m
            .layers
            .iter()
            .map(|l| (l.media_type.as_str(), l.digest.clone(), l.size))
            .collect();
        // Layer 0 is the compressed bytes; the index's own digest and size are annotations.
        let stored = zstd::bulk::decompress(&layer.bytes, 5).unwrap();
        assert_eq!(stored, b"index");
        assert_eq!(
            layers,
            [
                (
                    INDEX_ZSTD_MEDIA_TYPE,
                    Digest::of(&layer.bytes),
                    layer.bytes.len() as u64
                ),
                (PACK_MEDIA_TYPE, pack(0xa0), 4096),
                (PACK_MEDIA_TYPE, pack(0xb0), 10),
            ]
        );
        let annotations = m.layers[0].annotations.as_ref().unwrap();
        assert_eq!(
            annotations[INDEX_DIGEST_ANNOTATION],
            Digest::of(b"index").to_string()
        );
        assert_eq!(annotations[INDEX_SIZE_ANNOTATION], "5");
        // What the converter pushes is what a fetch accepts.
        let pushed = pushed(&packs);
        let (index, listed) = check_manifest(&reference(), &image(), &pushed).unwrap();
        assert_eq!(index.stored.digest, layer.digest);
        assert_eq!(index.index_digest, Digest::of(b"index"));
        assert_eq!(index.declared_size, Some(5));
        assert_eq!(&index.open(layer.bytes.clone()).unwrap()[..], b"index");
        assert_eq!(listed, packs);
    }

    /// A manifest as converters wrote them before the index was compressed.
    fn v1_manifest(index: &[u8], packs: &[(Digest, u64)]) -> ImageManifest {
        let mut m = build_manifest(&source(), &IndexLayer::compress(index), packs);
        m.artifact_type = Some(ARTIFACT_TYPE_V1.into());
        m.layers[0] = descriptor(INDEX_MEDIA_TYPE, Digest::of(index), index.len() as u64);
        through_json(&m)
    }

    #[test]
    fn a_v1_artifact_with_an_uncompressed_index_is_still_read() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let m = v1_manifest(&blob, &packs);
        let (layer, listed) = check_manifest(&reference(), &image(), &m).unwrap();
        assert_eq!(layer.declared_size, None);
        assert_eq!(layer.index_digest, Digest::of(&blob));
        assert_eq!(listed, packs);
        let bytes = layer.open(blob.clone()).unwrap();
        assert_eq!(bytes, blob);
        check_index(&layer.index_digest, bytes, &image(), CONFIG, &packs).unwrap();

        // Each version with its own index layer, never the other's.
        let mut mixed = m.clone();
        mixed.layers[0].media_type = INDEX_ZSTD_MEDIA_TYPE.into();
        assert!(matches!(
            check_manifest(&reference(), &image(), &mixed),
            Err(ArtifactError::LayerMediaType {
                layer: 0,
                expected: INDEX_MEDIA_TYPE,
                ..
            })
        ));
        let mut mixed = pushed(&packs);
        mixed.layers[0].media_type = INDEX_MEDIA_TYPE.into();
        assert!(matches!(
            check_manifest(&reference(), &image(), &mixed),
            Err(ArtifactError::LayerMediaType {
                layer: 0,
                expected: INDEX_ZSTD_MEDIA_TYPE,
                ..
            })
        ));
    }

    #[test]
    fn a_manifest_built_twice_serializes_to_the_same_bytes() {
        // The index layer's annotations are a map: in key order, or the digest of the same
        // conversion would change from run to run (a HashMap's order is random per process).
        let body = || {
            let index = IndexLayer::compress(b"index");
            serde_json::to_vec(&build_manifest(&source(), &index, &two_packs())).unwrap()
        };
        let first = body();
        for _ in 0..32 {
            assert_eq!(body(), first);
        }
        let text = String::from_utf8(first).unwrap();
        let (digest, size) = (
            text.find(INDEX_DIGEST_ANNOTATION).unwrap(),
            text.find(INDEX_SIZE_ANNOTATION).unwrap(),
        );
        assert_eq!(
            digest < size,
            INDEX_DIGEST_ANNOTATION < INDEX_SIZE_ANNOTATION,
            "annotations in key order: {text}"
        );
    }

    #[test]
    fn a_compressed_index_round_trips_through_manifest_and_check() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let layer = IndexLayer::compress(&blob);
        assert!(layer.bytes.len() < blob.len());
        let m = through_json(&build_manifest(&source(), &layer, &packs));
        let (desc, _) = check_manifest(&reference(), &image(), &m).unwrap();
        let bytes = desc.open(layer.bytes.clone()).unwrap();
        assert_eq!(bytes, blob);
        let index = check_index(&desc.index_digest, bytes, &image(), CONFIG, &packs).unwrap();
        assert_eq!(index.as_bytes(), &blob);
    }

    #[test]
    fn a_split_index_round_trips_its_tree_first_and_refuses_what_does_not_fit() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let whole = Index::open(blob.clone()).unwrap();
        let layer = IndexLayer::split(&whole).unwrap();
        let (tree_size, tree_digest) = layer.tree.clone().unwrap();
        // The tree compressed, then 32 bytes per chunk record.
        let (_, digests) = whole.split_digests().unwrap();
        assert_eq!(&layer.bytes[tree_size as usize..], &digests[..]);
        assert_eq!(tree_digest, Digest::of(&layer.bytes[..tree_size as usize]));
        let m = through_json(&build_manifest(&source(), &layer, &packs));
        assert_eq!(m.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
        assert_eq!(m.layers[0].media_type, INDEX_SPLIT_MEDIA_TYPE);
        let (desc, _) = check_manifest(&reference(), &image(), &m).unwrap();
        // Fetched whole: the same index as the one split.
        assert_eq!(desc.open(layer.bytes.clone()).unwrap(), blob);
        // For a mount: the tree from the layer's start, then the whole index from all of it.
        let tree = desc
            .open_tree(&layer.bytes[..tree_size as usize], blob.len() as u64)
            .unwrap();
        assert!(tree.is_tree_only());
        tree.validate().unwrap();
        check_claims(&desc.index_digest, &tree, &image(), CONFIG, &packs).unwrap();
        let completed = desc.complete_read(&tree, &layer.bytes).unwrap();
        assert_eq!(completed.as_bytes(), &blob);

        // Lies: a tree that is not the annotated one, a layer that is not its digest, digests
        // that are not this index's.
        let mut bad_tree = layer.bytes.to_vec();
        bad_tree[0] ^= 1;
        let e = desc
            .open_tree(&bad_tree[..tree_size as usize], blob.len() as u64)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "index layer {}: its tree hashes to {}, its annotation says {tree_digest}",
                layer.digest,
                Digest::of(&bad_tree[..tree_size as usize])
            )
        );
        let mut bad_digests = layer.bytes.to_vec();
        *bad_digests.last_mut().unwrap() ^= 1;
        let e = desc.complete_read(&tree, &bad_digests).unwrap_err();
        assert!(matches!(e, ArtifactError::LayerDigest { .. }), "{e}");
        // Digests that hash right (a manifest made for them) but belong to no such index.
        let mut other = layer.clone();
        other.bytes = Bytes::from(bad_digests);
        other.digest = Digest::of(&other.bytes);
        let m = through_json(&build_manifest(&source(), &other, &packs));
        let (desc, _) = check_manifest(&reference(), &image(), &m).unwrap();
        let e = desc.complete_read(&tree, &other.bytes).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "index layer {}: its chunk digests: checksum mismatch",
                other.digest
            )),
            "{e}"
        );

        // The tree's size must be inside the layer; its annotations must be there.
        for (value, name) in [
            (Some("0"), TREE_SIZE_ANNOTATION),
            (Some(&*layer.bytes.len().to_string()), TREE_SIZE_ANNOTATION),
            (None, TREE_SIZE_ANNOTATION),
            (None, TREE_DIGEST_ANNOTATION),
        ] {
            let mut m = through_json(&build_manifest(&source(), &layer, &packs));
            let a = m.layers[0].annotations.as_mut().unwrap();
            match value {
                Some(v) => a.insert(name.to_string(), v.to_string()),
                None => a.remove(name),
            };
            let e = check_manifest(&reference(), &image(), &m).unwrap_err();
            assert!(
                matches!(&e, ArtifactError::IndexAnnotation { name: n, .. } if *n == name),
                "{e}"
            );
        }
    }

    #[test]
    fn a_compressed_index_that_is_not_what_it_claims_is_refused_by_name() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let layer = IndexLayer::compress(&blob);
        let r = reference();
        let shown = r.to_string();
        let good = through_json(&build_manifest(&source(), &layer, &packs));
        let with = |name: &str, value: Option<&str>| {
            let mut m = good.clone();
            let a = m.layers[0].annotations.as_mut().unwrap();
            match value {
                Some(v) => a.insert(name.to_string(), v.to_string()),
                None => a.remove(name),
            };
            m
        };
        let open = |m: &ImageManifest, bytes: &[u8]| {
            let (desc, _) = check_manifest(&r, &image(), m)?;
            desc.open(Bytes::copy_from_slice(bytes)).map(|_| ())
        };

        // Annotations missing or malformed: refused before anything is fetched.
        let e = check_manifest(&r, &image(), &with(INDEX_DIGEST_ANNOTATION, None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{shown}: the index layer's annotation vnd.pronto.index.uncompressed-digest is \
                 missing, expected a digest sha256:<64 hex>"
            )
        );
        let e = check_manifest(&r, &image(), &with(INDEX_SIZE_ANNOTATION, Some("-1"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{shown}: the index layer's annotation vnd.pronto.index.uncompressed-size is \
                 \"-1\", expected a size in bytes"
            )
        );
        let mut m = good.clone();
        m.layers[0].annotations = None;
        assert!(matches!(
            check_manifest(&r, &image(), &m),
            Err(ArtifactError::IndexAnnotation { found: None, .. })
        ));

        // Decompresses to another index than the annotation names.
        let other = Digest::of(b"another index");
        let e = open(
            &with(INDEX_DIGEST_ANNOTATION, Some(&other.to_string())),
            &layer.bytes,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "index layer {} decompresses to {}, its annotation says {other}",
                layer.digest,
                Digest::of(&blob)
            )
        );

        // A size other than the stream's: a bomb is stopped at the declared size.
        let n = blob.len();
        let e = open(&with(INDEX_SIZE_ANNOTATION, Some("100")), &layer.bytes).unwrap_err();
        assert!(
            matches!(
                &e,
                ArtifactError::IndexDecompress {
                    source: FormatError::IndexLargerThanDeclared { declared: 100 },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "index layer {}: compressed index: decompresses to more than its declared 100 \
                 bytes (refused: decompression is bounded by the declared size)",
                layer.digest
            )
        );
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        let e = open(&with(INDEX_SIZE_ANNOTATION, Some(&n.to_string())), &bomb).unwrap_err();
        assert!(
            matches!(
                e,
                ArtifactError::IndexDecompress {
                    source: FormatError::IndexLargerThanDeclared { .. },
                    ..
                }
            ),
            "{e}"
        );
        let e = open(
            &with(INDEX_SIZE_ANNOTATION, Some(&(n + 1).to_string())),
            &layer.bytes,
        )
        .unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "compressed index: decompresses to {n} bytes, declared {}",
                n + 1
            )),
            "{e}"
        );

        // Corrupt compressed bytes (consistent with their own digest): refused, by the
        // decoder or by the digest of what they decompress to.
        let mut bad = layer.bytes.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let e = open(&good, &bad).unwrap_err();
        assert!(
            matches!(
                e,
                ArtifactError::IndexDecompress { .. } | ArtifactError::IndexDigest { .. }
            ),
            "{e}"
        );
        // The good one still opens.
        open(&good, &layer.bytes).unwrap();
    }

    #[test]
    fn a_hot_revision_has_its_own_tag_the_same_subject_and_says_where_it_comes_from() {
        let digest = Digest::from_bytes([0xab; 32]);
        assert_eq!(
            hot_artifact_tag(&digest),
            format!("sha256-{}.pronto-hot", "ab".repeat(32))
        );
        let (base, trace) = (pack(0x01), pack(0x02));
        let index = IndexLayer::compress(b"index");
        let m = build_hot_manifest(&source(), &index, &two_packs(), 1, &base, &trace);
        let a = m.annotations.as_ref().unwrap();
        assert_eq!(a[ANNOTATION_HOT_BASE], base.to_string());
        assert_eq!(a[ANNOTATION_HOT_TRACE], trace.to_string());
        assert_eq!(a[ANNOTATION_HOT_PACKS], "1");
        // Otherwise the manifest a base would have, and a fetch checks it the same way.
        let mut plain = m.clone();
        plain.annotations = None;
        assert_eq!(plain, build_manifest(&source(), &index, &two_packs()));
        let body = serde_json::to_vec(&m).unwrap();
        let ManifestKind::Image(parsed) = parse_manifest(Some(OCI_MANIFEST), &body).unwrap() else {
            panic!("an image manifest")
        };
        let (_, listed) = check_manifest(&reference(), &image(), &parsed).unwrap();
        assert_eq!(listed, two_packs());
    }

    #[test]
    fn a_manifest_that_claims_something_else_is_refused_by_name() {
        let r = reference();
        let shown = r.to_string();
        let check = |m: &ImageManifest| {
            check_manifest(&r, &image(), m)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };

        let mut m = pushed(&two_packs());
        m.artifact_type = Some("application/vnd.other".into());
        assert_eq!(
            check(&m),
            format!(
                "{shown} has artifact type application/vnd.other, expected \
                 application/vnd.pronto.image.v3 (or application/vnd.pronto.image.v2, \
                 application/vnd.pronto.image.v1)"
            )
        );
        m.artifact_type = None;
        assert!(matches!(
            check_manifest(&r, &image(), &m),
            Err(ArtifactError::ArtifactType { found: None, .. })
        ));
        assert_eq!(
            check(&m),
            format!(
                "{shown} has artifact type none, expected application/vnd.pronto.image.v3 (or \
                 application/vnd.pronto.image.v2, application/vnd.pronto.image.v1)"
            )
        );

        let mut m = pushed(&two_packs());
        m.subject.as_mut().unwrap().digest = pack(0x22);
        assert_eq!(
            check(&m),
            format!(
                "{shown} has subject {}, expected the image {}",
                pack(0x22),
                image()
            )
        );
        m.subject = None;
        assert_eq!(
            check(&m),
            format!("{shown} has subject none, expected the image {}", image())
        );

        let mut m = pushed(&two_packs());
        m.layers.clear();
        assert!(matches!(
            check_manifest(&r, &image(), &m),
            Err(ArtifactError::NoLayers { .. })
        ));
        assert_eq!(
            check(&m),
            format!("{shown} has no layers, expected the index and then the packs")
        );

        let mut m = pushed(&two_packs());
        m.layers[0].media_type = PACK_MEDIA_TYPE.into();
        assert_eq!(
            check(&m),
            format!(
                "{shown}: layer 0 has media type \"application/vnd.pronto.pack.v1\", expected \
                 application/vnd.pronto.index.v1+zstd"
            )
        );
        let mut m = pushed(&two_packs());
        m.layers[2].media_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        assert!(matches!(
            check_manifest(&r, &image(), &m),
            Err(ArtifactError::LayerMediaType {
                layer: 2,
                expected: PACK_MEDIA_TYPE,
                ..
            })
        ));
    }

    #[test]
    fn an_index_that_agrees_with_the_image_and_the_manifest_is_accepted() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let index = check_index(&Digest::of(&blob), blob, &image(), CONFIG, &packs).unwrap();
        assert_eq!(index.source_manifest(), *image().as_bytes());
        assert_eq!(index.config_json(), CONFIG);
    }

    #[test]
    fn an_index_that_disagrees_is_refused_with_both_values() {
        let packs = two_packs();
        let blob = index_blob(&image(), CONFIG, &packs);
        let digest = Digest::of(&blob);
        let check = |bytes: &Bytes, config: &[u8], listed: &[(Digest, u64)]| {
            check_index(&digest, bytes.clone(), &image(), config, listed).unwrap_err()
        };

        // Bytes that are not an index.
        let mut bad = blob.to_vec();
        bad[40] ^= 1;
        let e = check(&Bytes::from(bad), CONFIG, &packs);
        assert!(matches!(e, ArtifactError::Index { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!("index {digest}: ")),
            "{e}"
        );

        // Converted from another image.
        let other = index_blob(&pack(0x33), CONFIG, &packs);
        assert_eq!(
            check(&other, CONFIG, &packs).to_string(),
            format!(
                "index {digest} was converted from {}, not from the image {}",
                pack(0x33),
                image()
            )
        );

        // Another config.
        assert_eq!(
            check(&blob, b"{}", &packs).to_string(),
            format!(
                "index {digest} carries the image config {}, expected {}",
                Digest::of(CONFIG),
                Digest::of(b"{}")
            )
        );

        // The manifest lists other packs.
        assert_eq!(
            check(&blob, CONFIG, &packs[..1]).to_string(),
            format!("index {digest} lists 2 packs, the artifact manifest 1")
        );
        let mut listed = packs.clone();
        listed[1].0 = pack(0xcc);
        assert_eq!(
            check(&blob, CONFIG, &listed).to_string(),
            format!(
                "pack 1 is {} in index {digest}, {} in the artifact manifest",
                pack(0xb0),
                pack(0xcc)
            )
        );
        let mut listed = packs.clone();
        listed[0].1 = 4097;
        assert_eq!(
            check(&blob, CONFIG, &listed).to_string(),
            format!(
                "pack 0 ({}) is 4096 bytes in index {digest}, 4097 in the artifact manifest",
                pack(0xa0)
            )
        );
    }
}
