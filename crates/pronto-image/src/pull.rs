//! The full-pull path: resolve a reference to a pinned manifest, download its layers
//! concurrently (each verified), and unpack them in order into a directory.
//!
//! The tree is built in a hidden sibling staging directory and renamed into place only when every
//! layer has been applied, so a failure leaves no partial root filesystem behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::manifest::{Compression, ImageManifest, ManifestError, ManifestKind, Platform};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::unpack::{decompressed_reader, ContentSink, LayerStats, UnpackError, Unpacker};

/// Layers downloaded at once.
const DOWNLOAD_CONCURRENCY: usize = 4;

/// The largest image config accepted, in bytes. Real configs are kilobytes (the biggest, with
/// long histories, some hundreds); the whole config is held in memory and parsed, so an
/// unbounded one is a memory bomb (a 400 MB config once cost the daemon ~800 MB). Checked on the
/// descriptor's size before the download; the download then stops at the declared size.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// The default bound of an image's uncompressed layers ([`UnpackOptions::max_unpacked_bytes`]):
/// 32 GiB. The largest images in real use are CUDA and ML images (NVIDIA's NGC PyTorch images
/// unpack to about 20 GB, `pytorch/pytorch` devel images to 15–20 GB); 32 GiB leaves them room
/// while a decompression bomb (a 436 KB zstd layer inflates to 12 GiB) is stopped. A node with
/// less disk should set it lower (`pronto serve --max-unpacked-size`).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 32 << 30;

/// Bounds and cancellation of one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Bound of the uncompressed bytes of all the image's layers together (each layer's tar
    /// stream as it is read, plus the holes of sparse files; a layer listed twice counts
    /// twice). There is no separate per-layer bound: one layer may legitimately be almost the
    /// whole image (a model copied in one step), so each layer is bounded by what the image has
    /// left, and the error names the layer that went over.
    pub max_unpacked_bytes: u64,
    /// Cancelling it stops the unpack ([`PullError::Cancelled`]); its temporary directories are
    /// removed before the call returns.
    pub cancel: CancellationToken,
    /// Create no device nodes ([`Unpacker::without_devices`]).
    pub skip_devices: bool,
}

impl Default for UnpackOptions {
    fn default() -> UnpackOptions {
        UnpackOptions {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            cancel: CancellationToken::new(),
            skip_devices: false,
        }
    }
}

/// Whether `name` (a file name in a target's parent directory) is one of the temporary
/// directories an unpack makes beside its target: `.<target>.partial-XXXXXX` (the tree being
/// built) or `.<target>.blobs-XXXXXX` (the downloaded layers). A process killed mid-unpack
/// leaves them; see [`remove_stale_temp_dirs`].
pub fn is_unpack_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    // tempfile's suffix: 6 alphanumerics.
    let suffix_ok = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    [".partial-", ".blobs-"].iter().any(|marker| {
        rest.rsplit_once(marker)
            .is_some_and(|(target, suffix)| !target.is_empty() && suffix_ok(suffix))
    })
}

/// Removes the temporary directories (see [`is_unpack_temp_name`]) that unpacks killed
/// mid-way left in `dir`; only directories with those names, nothing else. Call it only when
/// no unpack into `dir` can be running. Returns what was removed.
pub fn remove_stale_temp_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        let name = entry.file_name();
        if is_dir && name.to_str().is_some_and(is_unpack_temp_name) {
            let path = entry.path();
            std::fs::remove_dir_all(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A pull shared by several waiters failed: each gets its error.
    #[error(transparent)]
    Shared(std::sync::Arc<PullError>),
    #[error("image {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("image {reference}: index entry {digest} is not an image manifest")]
    NestedIndex { reference: String, digest: Digest },
    #[error("image config {digest} declares {size} bytes, more than the limit of {MAX_CONFIG_BYTES} bytes")]
    ConfigTooLarge { digest: Digest, size: u64 },
    #[error("unpack cancelled")]
    Cancelled,
    #[error("image config {digest} is not valid JSON: {source}")]
    Config {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {index} ({digest}): {source}")]
    Unpack {
        index: usize,
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("target {path}: {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why what was kept of a resolved image cannot be used (see [`ResolvedImage::from_kept`]).
#[derive(Debug, thiserror::Error)]
pub enum KeptImageError {
    #[error("image {reference}: the kept reference is not pinned to a digest")]
    NotPinned { reference: String },
    #[error("image {reference}: the {what} kept for it has digest {actual}, not {expected}")]
    Digest {
        reference: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("image {reference}: the kept manifest is an index, not an image manifest")]
    Index { reference: String },
    #[error("image {reference}: the kept config is not valid JSON: {source}")]
    Config {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An image reference resolved to one platform manifest, with its config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as given.
    pub reference: Reference,
    /// The repository pinned to the platform manifest's digest (tags move; this does not).
    pub pinned: Reference,
    pub manifest_digest: Digest,
    /// The index the manifest was picked from, if the reference named one.
    pub index_digest: Option<Digest>,
    pub manifest: ImageManifest,
    pub manifest_bytes: Bytes,
    pub compressions: Vec<Compression>,
    /// The raw image config (verified against `manifest.config.digest`).
    pub config_bytes: Bytes,
    pub config: serde_json::Value,
}

impl ResolvedImage {
    /// An image resolved earlier, from what was kept of it: the pinned reference, the manifest
    /// and the config, each checked against its digest again (so a digest is resolved against
    /// the registry once, and what is kept cannot drift from what it names).
    pub fn from_kept(
        pinned: Reference,
        index_digest: Option<Digest>,
        manifest_bytes: Bytes,
        config_bytes: Bytes,
    ) -> Result<ResolvedImage, KeptImageError> {
        let reference = pinned.to_string();
        let Some(manifest_digest) = pinned.digest.clone() else {
            return Err(KeptImageError::NotPinned { reference });
        };
        let check = |what, expected: &Digest, bytes: &[u8]| {
            let actual = Digest::of(bytes);
            if &actual == expected {
                return Ok(());
            }
            Err(KeptImageError::Digest {
                reference: reference.clone(),
                what,
                expected: expected.clone(),
                actual,
            })
        };
        check("manifest", &manifest_digest, &manifest_bytes)?;
        let manifest_err = |source| KeptImageError::Manifest {
            reference: reference.clone(),
            source,
        };
        let manifest =
            match crate::manifest::parse_manifest(None, &manifest_bytes).map_err(manifest_err)? {
                ManifestKind::Image(m) => *m,
                ManifestKind::Index(_) => {
                    return Err(KeptImageError::Index {
                        reference: reference.clone(),
                    })
                }
            };
        let compressions = manifest.layer_compressions().map_err(manifest_err)?;
        check("config", &manifest.config.digest, &config_bytes)?;
        let config =
            serde_json::from_slice(&config_bytes).map_err(|source| KeptImageError::Config {
                reference: reference.clone(),
                source,
            })?;
        Ok(ResolvedImage {
            reference: pinned.clone(),
            pinned,
            manifest_digest,
            index_digest,
            manifest,
            manifest_bytes,
            compressions,
            config_bytes,
            config,
        })
    }

    /// Sum of the (compressed) layer sizes.
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }
}

/// Resolves `reference` for the host platform.
pub async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<ResolvedImage, PullError> {
    resolve_for(client, reference, &Platform::host()).await
}

/// Resolves `reference`; an index is narrowed to the manifest for `platform`.
pub async fn resolve_for(
    client: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
) -> Result<ResolvedImage, PullError> {
    let manifest_err = |source| PullError::Manifest {
        reference: reference.to_string(),
        source,
    };
    let mut fetched = client.fetch_manifest(reference).await?;
    let mut index_digest = None;
    if let ManifestKind::Index(index) = &fetched.kind {
        let entry = index.select(platform).map_err(manifest_err)?;
        index_digest = Some(fetched.digest.clone());
        fetched = client
            .fetch_manifest(&reference.with_digest(entry.digest.clone()))
            .await?;
    }
    let manifest = match fetched.kind {
        ManifestKind::Image(m) => *m,
        ManifestKind::Index(_) => {
            return Err(PullError::NestedIndex {
                reference: reference.to_string(),
                digest: fetched.digest,
            })
        }
    };
    let compressions = manifest.layer_compressions().map_err(manifest_err)?;
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(PullError::ConfigTooLarge {
            digest: manifest.config.digest.clone(),
            size: manifest.config.size,
        });
    }
    // The download stops at the declared size (a longer body is a size mismatch).
    let config_bytes = client
        .fetch_blob(
            reference,
            &manifest.config.digest,
            Some(manifest.config.size),
        )
        .await?;
    let config = serde_json::from_slice(&config_bytes).map_err(|source| PullError::Config {
        digest: manifest.config.digest.clone(),
        source,
    })?;
    Ok(ResolvedImage {
        reference: reference.clone(),
        pinned: Reference {
            tag: None,
            ..reference.with_digest(fetched.digest.clone())
        },
        manifest_digest: fetched.digest,
        index_digest,
        manifest,
        manifest_bytes: fetched.bytes,
        compressions,
        config_bytes,
        config,
    })
}

/// Told how a pull goes; all methods default to nothing.
pub trait PullProgress: Send + Sync {
    /// `n` more compressed bytes arrived.
    fn downloaded(&self, _n: u64) {}
    /// Layer `index` is in the tree.
    fn layer_unpacked(&self, _index: usize, _stats: &LayerStats) {}
}

/// A [`PullProgress`] that ignores everything.
#[derive(Debug)]
pub struct NoProgress;
impl PullProgress for NoProgress {}

/// What a finished unpack did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnpackSummary {
    pub layers: usize,
    /// Bytes downloaded: the compressed layers, each distinct blob once.
    pub compressed_bytes: u64,
    pub file_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    #[serde(with = "duration_secs")]
    pub elapsed: Duration,
    /// Which layer entry wrote each regular file, by inode number (for the converter).
    #[serde(skip)]
    pub file_origins: std::collections::HashMap<u64, crate::unpack::FileOrigin>,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Downloads and unpacks `image` into `target`, which must not exist or be an empty directory.
/// On any error nothing is left at `target` (and no staging or download files beside it).
/// Bounded by [`DEFAULT_MAX_UNPACKED_BYTES`]; see [`unpack_image_with`].
pub async fn unpack_image(
    client: &RegistryClient,
    image: &ResolvedImage,
    target: &Path,
    progress: Arc<dyn PullProgress>,
) -> Result<UnpackSummary, PullError> {
    unpack(
        client,
        image,
        target,
        progress,
        None,
        &UnpackOptions::default(),
    )
    .await
}

/// [`unpack_image`] with other bounds, or cancellable.
pub async fn unpack_image_with(
    client: &RegistryClient,
    image: &ResolvedImage,
    target: &Path,
    progress: Arc<dyn PullProgress>,
    options: &UnpackOptions,
) -> Result<UnpackSummary, PullError> {
    unpack(client, image, target, progress, None, options).await
}

/// [`unpack_image_with`], with regular-file contents handed to `sink` instead of written: the
/// tree gets every node and its metadata, and files their length but no data (see
/// [`ContentSink`]).
pub async fn unpack_image_to_sink(
    client: &RegistryClient,
    image: &ResolvedImage,
    target: &Path,
    progress: Arc<dyn PullProgress>,
    sink: Box<dyn ContentSink>,
    options: &UnpackOptions,
) -> Result<UnpackSummary, PullError> {
    unpack(client, image, target, progress, Some(sink), options).await
}

type Download = tokio::task::JoinHandle<Result<PathBuf, RegistryError>>;

async fn unpack(
    client: &RegistryClient,
    image: &ResolvedImage,
    target: &Path,
    progress: Arc<dyn PullProgress>,
    sink: Option<Box<dyn ContentSink>>,
    options: &UnpackOptions,
) -> Result<UnpackSummary, PullError> {
    let started = Instant::now();
    let target_err = |reason: String| PullError::Target {
        path: target.to_owned(),
        reason,
    };
    let target_was_empty_dir = match std::fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => true,
            Some(_) => return Err(target_err("directory is not empty".into())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(target_err("exists and is not a directory".into()))
        }
        Err(e) => return Err(target_err(e.to_string())),
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| target_err("has no file name".into()))?
        .to_string_lossy()
        .into_owned();
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| PullError::Io { op, path, source }
    };
    // Both live beside the target, on the same filesystem, so the final rename is atomic.
    // (Their names are what `is_unpack_temp_name` recognizes.)
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(&parent)
        .map_err(io_err("creating staging directory in", &parent))?;
    let blobs = tempfile::Builder::new()
        .prefix(&format!(".{name}.blobs-"))
        .tempdir_in(&parent)
        .map_err(io_err("creating download directory in", &parent))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting mode of", staging.path()))?;

    // One download per distinct blob: an image may list the same layer twice (an identical
    // build step), and both places would share one file in `blobs`.
    let layers = &image.manifest.layers;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(DOWNLOAD_CONCURRENCY));
    let mut downloads: Vec<Option<Download>> = Vec::new();
    let mut slot_of: HashMap<&Digest, usize> = HashMap::new();
    // Per layer, its download; per download, the last layer that uses it (which removes it).
    let mut layer_slot = Vec::with_capacity(layers.len());
    let mut last_use: Vec<usize> = Vec::new();
    let mut download_bytes = 0;
    for (index, layer) in layers.iter().enumerate() {
        if let Some(&slot) = slot_of.get(&layer.digest) {
            layer_slot.push(slot);
            last_use[slot] = index;
            continue;
        }
        let (client, reference, layer, progress) = (
            client.clone(),
            image.pinned.clone(),
            layer.clone(),
            progress.clone(),
        );
        let path = blobs.path().join(layer.digest.hex());
        let semaphore = semaphore.clone();
        download_bytes += layer.size;
        slot_of.insert(&layers[index].digest, downloads.len());
        layer_slot.push(downloads.len());
        last_use.push(index);
        downloads.push(Some(tokio::spawn(async move {
            let _permit = semaphore
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            client
                .download_blob(&reference, &layer.digest, Some(layer.size), &path, &|n| {
                    progress.downloaded(n)
                })
                .await
                .map(|()| path)
        })));
    }
    let mut paths: Vec<Option<PathBuf>> = vec![None; downloads.len()];
    // Abort the remaining downloads however this function ends.
    let abort = AbortOnDrop(
        downloads
            .iter()
            .flatten()
            .map(|d| d.abort_handle())
            .collect(),
    );

    let mut unpacker = Unpacker::new(staging.path())
        .map_err(|source| PullError::Unpack {
            index: 0,
            digest: image.manifest_digest.clone(),
            source,
        })?
        .with_size_limit(options.max_unpacked_bytes)
        .with_cancel(options.cancel.clone());
    if options.skip_devices {
        unpacker = unpacker.without_devices();
    }
    if let Some(sink) = sink {
        unpacker = unpacker.with_content_sink(sink);
    }
    let mut summary = UnpackSummary {
        layers: layers.len(),
        compressed_bytes: download_bytes,
        ..Default::default()
    };
    for (index, &slot) in layer_slot.iter().enumerate() {
        let path = match &paths[slot] {
            Some(path) => path.clone(),
            None => {
                let download = downloads[slot].take().expect("each download awaited once");
                let path = tokio::select! {
                    biased;
                    () = options.cancel.cancelled() => {
                        stop_downloads(&mut downloads).await;
                        return Err(PullError::Cancelled);
                    }
                    r = download => r.expect("download task panicked")?,
                };
                paths[slot] = Some(path.clone());
                path
            }
        };
        let last = last_use[slot] == index;
        let compression = image.compressions[index];
        let digest = layers[index].digest.clone();
        // Not raced with the cancellation: the unpacker sees it at its next read and stops,
        // and the staging directory is removed only once nothing writes into it.
        let (returned, stats) = tokio::task::spawn_blocking(move || {
            let stats = std::fs::File::open(&path)
                .map_err(UnpackError::ReadTar)
                .and_then(|f| unpacker.apply_layer(decompressed_reader(f, compression)));
            if last {
                let _ = std::fs::remove_file(&path);
            }
            (unpacker, stats)
        })
        .await
        .expect("unpack task panicked");
        unpacker = returned;
        let stats = match stats {
            Ok(stats) => stats,
            Err(UnpackError::Cancelled) => {
                stop_downloads(&mut downloads).await;
                return Err(PullError::Cancelled);
            }
            Err(source) => {
                return Err(PullError::Unpack {
                    index,
                    digest,
                    source,
                })
            }
        };
        summary.file_bytes += stats.file_bytes;
        summary.entries += stats.entries;
        summary.whiteouts += stats.whiteouts;
        progress.layer_unpacked(index, &stats);
    }
    drop(abort);
    summary.file_origins = unpacker.take_origins();
    tokio::task::spawn_blocking(move || unpacker.finish())
        .await
        .expect("finish task panicked")
        .map_err(|source| PullError::Unpack {
            index: layers.len().saturating_sub(1),
            digest: image.manifest_digest.clone(),
            source,
        })?;
    if target_was_empty_dir {
        std::fs::remove_dir(target).map_err(io_err("replacing empty directory", target))?;
    }
    std::fs::rename(staging.path(), target)
        .map_err(io_err("moving the unpacked tree to", target))?;
    // Renamed away: nothing left for the guard to delete.
    let _ = staging.keep();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Aborts the downloads not yet awaited and waits until each has stopped, so that none writes
/// into the download directory while it is removed.
async fn stop_downloads(downloads: &mut [Option<Download>]) {
    for d in downloads.iter().flatten() {
        d.abort();
    }
    for d in downloads.iter_mut() {
        if let Some(d) = d.take() {
            let _ = d.await;
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> (Bytes, Bytes) {
        let config = Bytes::from_static(br#"{"config":{"Cmd":["/app"]}}"#);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::manifest::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": [],
        }))
        .unwrap();
        (manifest.into(), config)
    }

    fn pinned(manifest: &[u8]) -> Reference {
        format!("127.0.0.1:5000/a/b@{}", Digest::of(manifest))
            .parse()
            .unwrap()
    }

    #[test]
    fn temp_names_are_those_an_unpack_makes() {
        let hex = "ab".repeat(32);
        for yes in [
            format!(".{hex}.partial-Ab3dE9"),
            format!(".{hex}.blobs-x7YzQ2"),
            ".rootfs.partial-000000".to_string(),
            ".a.b.blobs-ZZZZZZ".to_string(),
        ] {
            assert!(is_unpack_temp_name(&yes), "{yes}");
        }
        for no in [
            hex.clone(),
            format!("{hex}.partial-Ab3dE9"), // no leading dot
            ".partial-Ab3dE9".to_string(),   // no target name
            ".x.partial-Ab3dE".to_string(),  // suffix too short
            ".x.partial-Ab3dE9x".to_string(),
            ".x.partial-Ab3d.9".to_string(),
            ".x.blobs".to_string(),
            ".cache".to_string(),
        ] {
            assert!(!is_unpack_temp_name(&no), "{no}");
        }
    }

    #[test]
    fn a_kept_image_is_rebuilt_and_checked() {
        let (manifest, config) = parts();
        let image =
            ResolvedImage::from_kept(pinned(&manifest), None, manifest.clone(), config).unwrap();
        assert_eq!(image.manifest_digest, Digest::of(&manifest));
        assert_eq!(image.config["config"]["Cmd"][0], "/app");
        assert_eq!(image.pinned.to_string(), image.reference.to_string());
    }

    #[test]
    fn kept_bytes_that_do_not_match_their_digests_are_refused() {
        let (manifest, config) = parts();
        let other_config = Bytes::from_static(br#"{"config":{"Cmd":["/evil"]}}"#);
        let e = ResolvedImage::from_kept(pinned(&manifest), None, manifest.clone(), other_config)
            .unwrap_err();
        assert!(
            matches!(e, KeptImageError::Digest { what: "config", .. }),
            "{e}"
        );
        let mut tampered = manifest.to_vec();
        tampered.push(b' ');
        let e = ResolvedImage::from_kept(pinned(&manifest), None, tampered.into(), config.clone())
            .unwrap_err();
        assert!(
            matches!(
                e,
                KeptImageError::Digest {
                    what: "manifest",
                    ..
                }
            ),
            "{e}"
        );
        let tag: Reference = "127.0.0.1:5000/a/b:v1".parse().unwrap();
        let e = ResolvedImage::from_kept(tag, None, manifest, config).unwrap_err();
        assert!(matches!(e, KeptImageError::NotPinned { .. }), "{e}");
    }
}
