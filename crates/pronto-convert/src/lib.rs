//! Image → accelerated artifact (see `docs/format.md`), and its verification.
//!
//! [`convert`]:
//! 1. the image is unpacked with the full-pull path (`pronto-image`: verified blobs, whiteouts,
//!    the tree `umoci` would make) into a scratch directory, except that file contents do not go
//!    to disk: they are cut into chunks straight from the layer streams, hashed (BLAKE3) and
//!    compressed on all cores ([`stream`]), and the files are left sparse;
//! 2. the tree is walked in a fixed order ([`tree`]) and each file's chunks are placed in that
//!    order: chunks already stored — earlier in this image, or in a pack of this repository
//!    recorded in the chunk memo ([`memo`]) — are referenced, not stored again; new ones are
//!    appended to pack files ([`packer`]), each uploaded as soon as it is full;
//! 3. the index and then the artifact manifest ([`pronto_artifact`]) are pushed to the source image's
//!    repository; the memo learns the new chunks.
//!
//! The output depends only on the tree, the options and the memo's packs, so converting an
//! image twice gives the same index digest.
//!
//! [`relayout`] writes a recorded access trace's chunks into hot packs in trace order and pushes
//! a hot revision of the artifact beside the base ([`relayout`](mod@relayout)).
//!
//! [`verify`] rebuilds every file from the artifact (each chunk fetched, decompressed and its
//! digest checked) and compares it with a plain unpack of the source image: ground truth.

pub mod memo;
pub mod packer;
pub mod relayout;
pub mod stream;
pub mod tree;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_format::{ChunkRef, Compression, IndexBuilder};
use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::unpack::FileOrigin;
use pronto_image::{Digest, RegistryClient, RegistryError};
use serde::Serialize;

pub use relayout::{relayout, RelayoutError, RelayoutOptions, RelayoutReport};
pub use verify::{verify, VerifyError, VerifyReport};

/// Packs uploaded at once while packing goes on.
const UPLOADS_IN_FLIGHT: usize = 2;

/// Closed packs waiting for an upload (they wait on disk: the bound costs no memory).
const UPLOAD_QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub chunk_size: u32,
    pub compression: Compression,
    /// A pack is closed once it reaches this size.
    pub pack_target: u64,
    /// Scratch space: the unpacked tree (metadata only), the staged chunks and the packs.
    pub work_dir: PathBuf,
    /// The chunk memo (SQLite file); `None` dedups within the image only.
    pub memo: Option<PathBuf>,
    /// Bound of the source image's uncompressed layers
    /// ([`pull::UnpackOptions::max_unpacked_bytes`]). File contents are chunked, deduplicated
    /// and never written whole, so a bomb of zeros costs the converter little disk, but all of
    /// it is still inflated and hashed: without a bound, a 436 KB layer of 12 GiB of zeros is
    /// minutes of CPU.
    pub max_unpacked_bytes: u64,
    /// Where the artifact is pushed: this repository (tag and digest ignored), for images the
    /// converter cannot push beside (read-only or public); `None`: the source's repository.
    /// Either way it is tagged `sha256-<source hex>.pronto` with the source as its `subject`.
    pub artifact_repository: Option<pronto_image::Reference>,
}

/// The prefix of a conversion's scratch directory in [`ConvertOptions::work_dir`].
pub const SCRATCH_PREFIX: &str = "pronto-convert-";

/// Removes the scratch directories that conversions killed mid-way (`kill -9`) left in
/// `work_dir`: directories named [`SCRATCH_PREFIX`] + tempfile's 6 alphanumerics, nothing else.
/// Call it only when no conversion can be running there (a server's start). Returns what was
/// removed.
pub fn remove_stale_scratch(work_dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(work_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .is_some_and(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ours && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

impl ConvertOptions {
    pub fn new(work_dir: PathBuf) -> ConvertOptions {
        ConvertOptions {
            chunk_size: pronto_format::DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd,
            pack_target: 32 << 20,
            work_dir,
            memo: None,
            max_unpacked_bytes: pull::DEFAULT_MAX_UNPACKED_BYTES,
            artifact_repository: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("unpacking the source image: {0}")]
    Unpack(#[source] Box<PullError>),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the index: {0}")]
    Format(#[from] pronto_format::FormatError),
    #[error("chunk memo: {0}")]
    Memo(#[from] memo::MemoError),
    #[error("pushing the artifact: {0}")]
    Push(#[source] Box<RegistryError>),
    #[error("invalid options: {0}")]
    Options(String),
    /// The build stopped because the pack uploader failed; the upload's error is reported.
    #[error("the pack upload stopped")]
    UploadStopped,
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConvertReport {
    pub source: Digest,
    /// `REGISTRY/REPO:sha256-<hex>.pronto`
    pub artifact: String,
    pub artifact_digest: Digest,
    /// Digest and size of the index blob (uncompressed).
    pub index_digest: Digest,
    pub index_size: u64,
    /// Size of the index as stored and fetched: compressed.
    pub index_layer_size: u64,
    pub chunk_size: u32,
    pub files: u64,
    /// Bytes of regular-file content in the image.
    pub file_bytes: u64,
    pub chunks: u64,
    /// Chunks referenced from earlier in the image or from existing packs.
    pub reused_chunks: u64,
    /// Files taken whole from the layer memo (their layer was converted before): not read,
    /// hashed or chunked again.
    pub layer_reused_files: u64,
    /// Bytes of file content hashed by this conversion (files a later layer replaces or removes
    /// included: they are hashed as they stream by).
    pub hashed_bytes: u64,
    pub packs: usize,
    pub new_packs: usize,
    /// Bytes uploaded for new packs.
    pub uploaded_bytes: u64,
    /// Total size of every pack the index references.
    pub stored_bytes: u64,
    /// Download and unpack, with file contents chunked, hashed and compressed as they stream.
    #[serde(with = "secs")]
    pub unpack_time: Duration,
    /// Walk and packing in walk order (uploads of full packs run meanwhile).
    #[serde(with = "secs")]
    pub chunk_time: Duration,
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

/// The artifact's `subject`: the source image's platform manifest.
fn source_descriptor(image: &ResolvedImage) -> pronto_image::manifest::Descriptor {
    pronto_image::manifest::Descriptor {
        media_type: image
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| pronto_image::manifest::OCI_MANIFEST.to_string()),
        digest: image.manifest_digest.clone(),
        size: image.manifest_bytes.len() as u64,
        platform: None,
        annotations: None,
        artifact_type: None,
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Converts `image` and pushes the artifact next to it, or to
/// [`ConvertOptions::artifact_repository`]. `client` reads the source and pushes the artifact:
/// it needs credentials for both.
pub async fn convert(
    client: &RegistryClient,
    image: &ResolvedImage,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let started = Instant::now();
    if opts.chunk_size < 4096 || !opts.chunk_size.is_power_of_two() || opts.chunk_size > 16 << 20 {
        return Err(ConvertError::Options(format!(
            "chunk size must be a power of two between 4 KiB and 16 MiB, got {}",
            opts.chunk_size
        )));
    }
    let io = |op, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ConvertError::Io { op, path, source }
    };
    std::fs::create_dir_all(&opts.work_dir).map_err(io("creating", &opts.work_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(&opts.work_dir)
        .map_err(io("creating scratch dir in", &opts.work_dir))?;
    let layers: Vec<Digest> = image
        .manifest
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();

    // The repository the artifact goes to.
    let target = opts
        .artifact_repository
        .clone()
        .unwrap_or_else(|| image.pinned.clone());
    // Chunks this repository already stores, and files of layers converted before, in packs
    // that are still there.
    let repo_key = format!("{}/{}", target.registry, target.repository);
    let mut known: HashMap<[u8; 32], memo::MemoChunk> = HashMap::new();
    let mut remembered: HashMap<stream::EntryKey, Remembered> = HashMap::new();
    if let Some(path) = &opts.memo {
        let mut recalled = memo::Memo::open(path)?.recall(&repo_key, &layers)?;
        let mut present = HashSet::new();
        for pack in recalled.packs() {
            let exists = client
                .blob_exists(&target, &pack)
                .await
                .map_err(|e| ConvertError::Push(Box::new(e)))?;
            if exists {
                present.insert(pack);
            }
        }
        recalled.retain_present(&present);
        known.extend(recalled.chunks);
        // By entry (layer index, path): one layer blob may sit at two places in an image.
        let mut by_layer: HashMap<&Digest, Vec<(Vec<u8>, Remembered)>> = HashMap::new();
        for ((layer, path), (size, chunks)) in &recalled.files {
            if let Some(r) = Remembered::parse(*size, chunks) {
                by_layer.entry(layer).or_default().push((path.clone(), r));
            }
        }
        for (index, layer) in layers.iter().enumerate() {
            for (path, r) in by_layer.get(layer).into_iter().flatten() {
                remembered.insert((index, path.clone()), r.clone());
            }
        }
    }
    let known = Arc::new(known);

    // Unpack: the tree's nodes and metadata on disk, file contents chunked from the streams.
    let rootfs = scratch.path().join("rootfs");
    let stage_path = scratch.path().join("staged");
    let stage = std::fs::File::create_new(&stage_path).map_err(io("creating", &stage_path))?;
    let skip = remembered
        .iter()
        .map(|(k, r)| (k.clone(), r.size))
        .collect();
    let sink = stream::ChunkSink::new(
        stage,
        opts.chunk_size,
        opts.compression,
        known.clone(),
        Arc::new(skip),
    );
    let results = sink.results();
    let unpack_options = pull::UnpackOptions {
        max_unpacked_bytes: opts.max_unpacked_bytes,
        ..Default::default()
    };
    let unpacked = pull::unpack_image_to_sink(
        client,
        image,
        &rootfs,
        Arc::new(NoProgress),
        Box::new(sink),
        &unpack_options,
    )
    .await
    .map_err(|e| ConvertError::Unpack(Box::new(e)))?;
    let streamed = tokio::task::spawn_blocking(move || results.finish())
        .await
        .expect("stream task panicked")
        .map_err(io("staging chunks in", &stage_path))?;
    let unpack_time = started.elapsed();
    let streamed_bytes = streamed.hashed_bytes;

    let chunk_started = Instant::now();
    // Packs upload as soon as the packer closes them, while packing goes on.
    let (ready_tx, ready_rx) = tokio::sync::mpsc::channel(UPLOAD_QUEUE);
    let uploads = tokio::spawn(upload_packs(client.clone(), target.clone(), ready_rx));
    let opts2 = opts.clone();
    let (root, packs_dir) = (rootfs.clone(), scratch.path().join("packs"));
    let source = image.manifest_digest.clone();
    let config = image.config_bytes.to_vec();
    let origins = unpacked.file_origins;
    let built = tokio::task::spawn_blocking(move || {
        let contents = Contents {
            known: &known,
            origins: &origins,
            layers: &layers,
            remembered: &remembered,
            streamed: &streamed,
        };
        build(
            &root,
            &packs_dir,
            &opts2,
            &contents,
            &source,
            config,
            &mut |pack| ready_tx.blocking_send(pack).is_ok(),
        )
    })
    .await
    .expect("conversion task panicked");
    let chunk_time = chunk_started.elapsed();
    if built.is_err() {
        uploads.abort();
    }
    // An upload error is reported first: the build stops because the uploader is gone.
    let uploaded = match uploads.await {
        Ok(result) => result.map_err(|e| ConvertError::Push(Box::new(e)))?,
        Err(e) if e.is_cancelled() => 0,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let built = built?;

    // Then the index (split and compressed: a lazy mount serves once its tree is in), then
    // the manifest that makes them reachable.
    let index_layer =
        pronto_artifact::IndexLayer::split(&pronto_format::Index::open(built.index)?)?;
    let (index_digest, index_size) = (index_layer.index_digest.clone(), index_layer.index_size);
    let index_layer_size = index_layer.bytes.len() as u64;
    client
        .push_blob(&target, index_layer.bytes.clone())
        .await
        .map_err(|e| ConvertError::Push(Box::new(e)))?;
    let source_desc = source_descriptor(image);
    let pack_list: Vec<(Digest, u64)> = built
        .packs
        .iter()
        .map(|p| (p.digest.clone(), p.size))
        .collect();
    let manifest = pronto_artifact::build_manifest(&source_desc, &index_layer, &pack_list);
    let artifact_digest =
        pronto_artifact::push_manifest(client, &target, &image.manifest_digest, &manifest)
            .await
            .map_err(|e| ConvertError::Push(Box::new(e)))?;
    if let Some(path) = &opts.memo {
        let mut memo = memo::Memo::open(path)?;
        memo.record(&repo_key, &built.new_chunks)?;
        memo.record_layer_files(&repo_key, &built.layer_files)?;
    }
    let artifact_ref = pronto_artifact::artifact_reference(&target, &image.manifest_digest);
    Ok(ConvertReport {
        source: image.manifest_digest.clone(),
        artifact: artifact_ref.to_string(),
        artifact_digest,
        index_digest,
        index_size,
        index_layer_size,
        chunk_size: opts.chunk_size,
        files: built.files,
        file_bytes: built.file_bytes,
        chunks: built.chunks,
        reused_chunks: built.reused_chunks,
        layer_reused_files: built.layer_reused_files,
        hashed_bytes: streamed_bytes,
        packs: built.packs.len(),
        new_packs: built.packs.iter().filter(|p| p.path.is_some()).count(),
        uploaded_bytes: uploaded,
        stored_bytes: built.packs.iter().map(|p| p.size).sum(),
        unpack_time,
        chunk_time,
        elapsed: started.elapsed(),
    })
}

/// Uploads packs as they come, `UPLOADS_IN_FLIGHT` at a time, until `ready` closes; returns the
/// bytes uploaded. Returns at the first failure: the other uploads are dropped, and so is
/// `ready`, which stops the build.
async fn upload_packs(
    client: RegistryClient,
    reference: pronto_image::Reference,
    mut ready: tokio::sync::mpsc::Receiver<packer::ClosedPack>,
) -> Result<u64, RegistryError> {
    let mut uploads = tokio::task::JoinSet::new();
    let (mut uploaded, mut open) = (0, true);
    while open || !uploads.is_empty() {
        tokio::select! {
            pack = ready.recv(), if open && uploads.len() < UPLOADS_IN_FLIGHT => match pack {
                Some(pack) => {
                    let (client, reference) = (client.clone(), reference.clone());
                    uploads.spawn(async move {
                        client
                            .push_blob_file(&reference, &pack.digest, &pack.path)
                            .await
                            .map(|()| pack.size)
                    });
                }
                None => open = false,
            },
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                uploaded += done.expect("upload task panicked")?;
            }
        }
    }
    Ok(uploaded)
}

/// A pack the index references: new (written to `path`) or already in the registry.
struct PackOut {
    digest: Digest,
    size: u64,
    path: Option<PathBuf>,
}

/// Where file contents come from: the layer streams, or earlier conversions.
struct Contents<'a> {
    known: &'a HashMap<[u8; 32], memo::MemoChunk>,
    /// inode → the layer entry that wrote the file.
    origins: &'a HashMap<u64, FileOrigin>,
    layers: &'a [Digest],
    remembered: &'a HashMap<stream::EntryKey, Remembered>,
    streamed: &'a stream::Streamed,
}

/// A file of a layer converted before: its size and chunks, all in packs still there.
#[derive(Clone)]
struct Remembered {
    size: u64,
    chunks: Vec<RememberedChunk>,
}

#[derive(Clone)]
struct RememberedChunk {
    pack: Digest,
    pack_size: u64,
    chunk: ChunkRef,
}

impl Remembered {
    /// `None` if a row is malformed: then the file is chunked again. (Files with a chunk in a
    /// pack that is gone were dropped by [`memo::Recalled::retain_present`].)
    fn parse(size: u64, chunks: &[memo::FileChunk]) -> Option<Remembered> {
        let chunks = chunks
            .iter()
            .map(|c| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&c.digest, &mut digest).ok()?;
                Some(RememberedChunk {
                    pack: c.pack.clone(),
                    pack_size: c.pack_size,
                    chunk: ChunkRef {
                        digest,
                        pack: 0, // the slot is given when packing
                        compression: Compression::from_u8(c.compression)?,
                        offset: c.offset,
                        compressed_size: c.compressed_size,
                        uncompressed_size: c.uncompressed_size,
                    },
                })
            })
            .collect::<Option<_>>()?;
        Some(Remembered { size, chunks })
    }
}

struct Built {
    index: Vec<u8>,
    layer_files: memo::LayerFiles,
    layer_reused_files: u64,
    packs: Vec<PackOut>,
    new_chunks: Vec<([u8; 32], memo::MemoChunk)>,
    files: u64,
    file_bytes: u64,
    chunks: u64,
    reused_chunks: u64,
}

/// Walks `root` and packs every file's chunks in walk order, then builds the index (blocking).
/// Each new pack is handed to `ready` as soon as it is closed; `ready` returning false (the
/// uploader is gone) stops the build.
fn build(
    root: &std::path::Path,
    packs_dir: &std::path::Path,
    opts: &ConvertOptions,
    contents: &Contents<'_>,
    source: &Digest,
    config: Vec<u8>,
    ready: &mut dyn FnMut(packer::ClosedPack) -> bool,
) -> Result<Built, ConvertError> {
    let known = contents.known;
    let entries = tree::walk(root).map_err(|(path, source)| ConvertError::Io {
        op: "reading",
        path,
        source,
    })?;
    let mut packer =
        packer::Packer::new(packs_dir.to_owned(), opts.pack_target).map_err(|source| {
            ConvertError::Io {
                op: "creating",
                path: packs_dir.to_owned(),
                source,
            }
        })?;
    let pack_err = |source| ConvertError::Io {
        op: "writing pack in",
        path: packs_dir.to_owned(),
        source,
    };
    let mut hand_over = |packer: &mut packer::Packer| {
        packer
            .take_closed()
            .into_iter()
            .try_for_each(|pack| ready(pack).then_some(()).ok_or(ConvertError::UploadStopped))
    };
    // digest → where this conversion stored (or found) it.
    let mut placed: HashMap<[u8; 32], ChunkRef> = HashMap::new();
    let mut new_chunks = Vec::new();
    let mut file_chunks: Vec<Vec<ChunkRef>> = vec![Vec::new(); entries.len()];
    let (mut chunks, mut reused, mut file_bytes, mut files) = (0u64, 0u64, 0u64, 0u64);
    let mut layer_reused_files = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let Some(path) = &e.content else { continue };
        files += 1;
        file_bytes += e.meta.size;
        let key = contents
            .origins
            .get(&e.ino)
            .map(|o| (o.layer, o.path.clone()));
        // A file its layer's earlier conversion already chunked: take its chunk list whole.
        let remembered = key
            .as_ref()
            .and_then(|k| contents.remembered.get(k))
            .filter(|r| r.size == e.meta.size);
        if let Some(r) = remembered {
            file_chunks[i] = r
                .chunks
                .iter()
                .map(|c| ChunkRef {
                    pack: packer.existing(&c.pack, c.pack_size),
                    ..c.chunk
                })
                .collect();
            chunks += r.chunks.len() as u64;
            reused += r.chunks.len() as u64;
            layer_reused_files += 1;
            continue;
        }
        let streamed = key
            .and_then(|k| contents.streamed.files.get(&k))
            .ok_or_else(|| ConvertError::Io {
                op: "chunking",
                path: path.clone(),
                source: std::io::Error::other("its content was not in the layer streams"),
            })?;
        for &(digest, len) in streamed {
            chunks += 1;
            let r = if let Some(r) = placed.get(&digest) {
                reused += 1;
                *r
            } else if let Some(m) = known.get(&digest) {
                reused += 1;
                let r = ChunkRef {
                    digest,
                    pack: packer.existing(&m.pack, m.pack_size),
                    compression: m.compression,
                    offset: m.offset,
                    compressed_size: m.compressed_size,
                    uncompressed_size: len,
                };
                placed.insert(digest, r);
                r
            } else {
                let staged = &contents.streamed.staged[&digest];
                let stored = contents
                    .streamed
                    .read(staged)
                    .map_err(|source| ConvertError::Io {
                        op: "reading staged chunk of",
                        path: path.clone(),
                        source,
                    })?;
                let (pack, offset) = packer.append(&stored).map_err(pack_err)?;
                let r = ChunkRef {
                    digest,
                    pack,
                    compression: staged.compression,
                    offset,
                    compressed_size: staged.len,
                    uncompressed_size: len,
                };
                placed.insert(digest, r);
                r
            };
            file_chunks[i].push(r);
        }
        hand_over(&mut packer)?;
    }
    packer.close_open().map_err(pack_err)?;
    hand_over(&mut packer)?;
    let packs = packer.finish();
    for r in placed.values() {
        let p = &packs[r.pack as usize];
        if p.path.is_some() {
            new_chunks.push((
                r.digest,
                memo::MemoChunk {
                    pack: p.digest.clone(),
                    pack_size: p.size,
                    offset: r.offset,
                    compressed_size: r.compressed_size,
                    compression: r.compression,
                },
            ));
        }
    }

    // What this conversion teaches the layer memo: every file with a known origin.
    let mut layer_files = memo::LayerFiles::new();
    for (i, e) in entries.iter().enumerate() {
        let (Some(_), Some(origin)) = (&e.content, contents.origins.get(&e.ino)) else {
            continue;
        };
        let Some(layer) = contents.layers.get(origin.layer) else {
            continue;
        };
        let chunks = file_chunks[i]
            .iter()
            .map(|c| {
                let p = &packs[c.pack as usize];
                memo::FileChunk {
                    digest: hex::encode(c.digest),
                    pack: p.digest.clone(),
                    pack_size: p.size,
                    offset: c.offset,
                    compressed_size: c.compressed_size,
                    uncompressed_size: c.uncompressed_size,
                    compression: c.compression as u8,
                }
            })
            .collect();
        layer_files.insert((layer.clone(), origin.path.clone()), (e.meta.size, chunks));
    }

    let mut builder = IndexBuilder::new(opts.chunk_size);
    builder.set_source(*source.as_bytes(), config);
    for p in &packs {
        builder.add_pack(*p.digest.as_bytes(), p.size);
    }
    for (i, e) in entries.into_iter().enumerate() {
        match e.hardlink_of {
            Some(target) => builder.add_hardlink(&e.path, &target)?,
            None if e.path.is_empty() => builder.set_root(e.meta)?,
            None => builder.add(&e.path, e.meta, std::mem::take(&mut file_chunks[i]))?,
        }
    }
    let index = builder.finish()?;
    Ok(Built {
        index,
        layer_files,
        layer_reused_files,
        packs: packs
            .into_iter()
            .map(|p| PackOut {
                digest: p.digest,
                size: p.size,
                path: p.path,
            })
            .collect(),
        new_chunks,
        files,
        file_bytes,
        chunks,
        reused_chunks: reused,
    })
}
