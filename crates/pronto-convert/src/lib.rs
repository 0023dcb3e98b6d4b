//! Image → accelerated artifact (see `docs/format.md`), and its verification.
//!
//! [`convert`]:
//! 1. the image is unpacked with the full-pull path (`pronto-image`: verified blobs, whiteouts,
//!    the tree `umoci` would make) into a scratch directory;
//! 2. the tree is walked in a fixed order ([`tree`]); regular files are cut into chunks, hashed
//!    (BLAKE3) and compressed on all cores; chunks already stored — earlier in this image, or in
//!    a pack of this repository recorded in the chunk memo ([`memo`]) — are referenced, not
//!    stored again; new ones are appended to pack files ([`packer`]);
//! 3. new packs, the index and the artifact manifest ([`artifact`]) are pushed to the source
//!    image's repository; the memo learns the new chunks.
//!
//! The output depends only on the tree, the options and the memo's packs, so converting an
//! image twice gives the same index digest.
//!
//! [`verify`] rebuilds every file from the artifact (each chunk fetched, decompressed and its
//! digest checked) and compares it with a plain unpack of the source image: ground truth.

pub mod artifact;
pub mod memo;
pub mod packer;
pub mod tree;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pronto_format::{ChunkRef, Compression, IndexBuilder};
use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::{Digest, RegistryClient, RegistryError};
use serde::Serialize;

pub use verify::{verify, VerifyError, VerifyReport};

/// Chunks hashed and compressed together (bounds memory: `BATCH_BYTES` of file data at once).
const BATCH_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub chunk_size: u32,
    pub compression: Compression,
    /// A pack is closed once it reaches this size.
    pub pack_target: u64,
    /// Scratch space: the unpacked tree and the packs before upload.
    pub work_dir: PathBuf,
    /// The chunk memo (SQLite file); `None` dedups within the image only.
    pub memo: Option<PathBuf>,
}

impl ConvertOptions {
    pub fn new(work_dir: PathBuf) -> ConvertOptions {
        ConvertOptions {
            chunk_size: pronto_format::DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd,
            pack_target: 32 << 20,
            work_dir,
            memo: None,
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
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConvertReport {
    pub source: Digest,
    /// `REGISTRY/REPO:sha256-<hex>.pronto`
    pub artifact: String,
    pub artifact_digest: Digest,
    pub index_digest: Digest,
    pub index_size: u64,
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
    /// Bytes of file content read and hashed by this conversion.
    pub hashed_bytes: u64,
    pub packs: usize,
    pub new_packs: usize,
    /// Bytes uploaded for new packs.
    pub uploaded_bytes: u64,
    /// Total size of every pack the index references.
    pub stored_bytes: u64,
    #[serde(with = "secs")]
    pub unpack_time: Duration,
    #[serde(with = "secs")]
    pub chunk_time: Duration,
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Converts `image` and pushes the artifact next to it.
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
        .prefix("pronto-convert-")
        .tempdir_in(&opts.work_dir)
        .map_err(io("creating scratch dir in", &opts.work_dir))?;
    let rootfs = scratch.path().join("rootfs");
    let unpacked = pull::unpack_image(client, image, &rootfs, Arc::new(NoProgress))
        .await
        .map_err(|e| ConvertError::Unpack(Box::new(e)))?;
    let unpack_time = started.elapsed();
    // inode → (layer digest, entry path): which layer entry wrote each file.
    let origins: HashMap<u64, (Digest, Vec<u8>)> = unpacked
        .file_origins
        .into_iter()
        .filter_map(|(ino, o)| {
            let layer = image.manifest.layers.get(o.layer)?.digest.clone();
            Some((ino, (layer, o.path)))
        })
        .collect();

    // Chunks this repository already stores, in packs that are still there.
    let repo_key = format!("{}/{}", image.pinned.registry, image.pinned.repository);
    let mut known: HashMap<[u8; 32], memo::MemoChunk> = HashMap::new();
    let mut layer_memo = memo::LayerFiles::new();
    if let Some(path) = &opts.memo {
        let memo = memo::Memo::open(path)?;
        let entries = memo.chunks_of(&repo_key)?;
        let layers: Vec<Digest> = image
            .manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        let files = memo.layer_files(&repo_key, &layers)?;
        let mut present: HashMap<Digest, bool> = HashMap::new();
        let mut packs: Vec<Digest> = entries.iter().map(|(_, c)| c.pack.clone()).collect();
        for (_, chunks) in files.values() {
            packs.extend(chunks.iter().filter_map(|c| c.pack.parse().ok()));
        }
        for pack in packs {
            if let std::collections::hash_map::Entry::Vacant(slot) = present.entry(pack) {
                let e = client
                    .blob_exists(&image.pinned, slot.key())
                    .await
                    .map_err(|e| ConvertError::Push(Box::new(e)))?;
                slot.insert(e);
            }
        }
        let here = |p: &str| {
            p.parse::<Digest>()
                .ok()
                .and_then(|d| present.get(&d).copied())
                == Some(true)
        };
        for (digest, chunk) in entries {
            if present.get(&chunk.pack) == Some(&true) {
                known.insert(digest, chunk);
            }
        }
        layer_memo = files
            .into_iter()
            .filter(|(_, (_, chunks))| chunks.iter().all(|c| here(&c.pack)))
            .collect();
    }

    let chunk_started = Instant::now();
    let opts2 = opts.clone();
    let (root, packs_dir) = (rootfs.clone(), scratch.path().join("packs"));
    let source = image.manifest_digest.clone();
    let config = image.config_bytes.to_vec();
    let built = tokio::task::spawn_blocking(move || {
        let memo = Memos {
            chunks: &known,
            origins: &origins,
            layer_files: &layer_memo,
        };
        build(&root, &packs_dir, &opts2, &memo, &source, config)
    })
    .await
    .expect("conversion task panicked")?;
    let chunk_time = chunk_started.elapsed();

    // Upload: new packs, then the index, then the manifest that makes them reachable.
    let mut uploaded = 0;
    for pack in built.packs.iter().filter(|p| p.path.is_some()) {
        client
            .push_blob_file(
                &image.pinned,
                &pack.digest,
                pack.path.as_ref().expect("filtered"),
            )
            .await
            .map_err(|e| ConvertError::Push(Box::new(e)))?;
        uploaded += pack.size;
    }
    let index_size = built.index.len() as u64;
    let index_digest = client
        .push_blob(&image.pinned, Bytes::from(built.index))
        .await
        .map_err(|e| ConvertError::Push(Box::new(e)))?;
    let source_desc = pronto_image::manifest::Descriptor {
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
    };
    let pack_list: Vec<(Digest, u64)> = built
        .packs
        .iter()
        .map(|p| (p.digest.clone(), p.size))
        .collect();
    let manifest =
        artifact::build_manifest(&source_desc, (index_digest.clone(), index_size), &pack_list);
    let artifact_digest =
        artifact::push_manifest(client, &image.pinned, &image.manifest_digest, &manifest)
            .await
            .map_err(|e| ConvertError::Push(Box::new(e)))?;
    if let Some(path) = &opts.memo {
        let mut memo = memo::Memo::open(path)?;
        memo.record(&repo_key, &built.new_chunks)?;
        memo.record_layer_files(&repo_key, &built.layer_files)?;
    }
    let artifact_ref = artifact::artifact_reference(&image.pinned, &image.manifest_digest);
    Ok(ConvertReport {
        source: image.manifest_digest.clone(),
        artifact: artifact_ref.to_string(),
        artifact_digest,
        index_digest,
        index_size,
        chunk_size: opts.chunk_size,
        files: built.files,
        file_bytes: built.file_bytes,
        chunks: built.chunks,
        reused_chunks: built.reused_chunks,
        layer_reused_files: built.layer_reused_files,
        hashed_bytes: built.hashed_bytes,
        packs: built.packs.len(),
        new_packs: built.packs.iter().filter(|p| p.path.is_some()).count(),
        uploaded_bytes: uploaded,
        stored_bytes: built.packs.iter().map(|p| p.size).sum(),
        unpack_time,
        chunk_time,
        elapsed: started.elapsed(),
    })
}

/// A pack the index references: new (written to `path`) or already in the registry.
struct PackOut {
    digest: Digest,
    size: u64,
    path: Option<PathBuf>,
}

/// What earlier conversions left to reuse.
struct Memos<'a> {
    chunks: &'a HashMap<[u8; 32], memo::MemoChunk>,
    origins: &'a HashMap<u64, (Digest, Vec<u8>)>,
    layer_files: &'a memo::LayerFiles,
}

struct Built {
    index: Vec<u8>,
    layer_files: memo::LayerFiles,
    layer_reused_files: u64,
    hashed_bytes: u64,
    packs: Vec<PackOut>,
    new_chunks: Vec<([u8; 32], memo::MemoChunk)>,
    files: u64,
    file_bytes: u64,
    chunks: u64,
    reused_chunks: u64,
}

/// Walks `root`, chunks and packs every file, and builds the index (blocking, CPU-bound).
fn build(
    root: &std::path::Path,
    packs_dir: &std::path::Path,
    opts: &ConvertOptions,
    memos: &Memos<'_>,
    source: &Digest,
    config: Vec<u8>,
) -> Result<Built, ConvertError> {
    let known = memos.chunks;
    use rayon::prelude::*;

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
    // digest → where this conversion stored (or found) it.
    let mut placed: HashMap<[u8; 32], ChunkRef> = HashMap::new();
    let mut new_chunks = Vec::new();
    let mut file_chunks: Vec<Vec<ChunkRef>> = vec![Vec::new(); entries.len()];
    let (mut chunks, mut reused, mut file_bytes, mut files) = (0u64, 0u64, 0u64, 0u64);

    // Jobs: (entry index, chunk bytes), in walk order; processed in bounded batches.
    let chunk_size = opts.chunk_size as usize;
    let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut flush = |batch: &mut Vec<(usize, Vec<u8>)>,
                     packer: &mut packer::Packer,
                     placed: &mut HashMap<[u8; 32], ChunkRef>|
     -> Result<(), ConvertError> {
        let digests: Vec<[u8; 32]> = batch
            .par_iter()
            .map(|(_, d)| pronto_format::chunk_digest(d))
            .collect();
        // Compress only what is not stored yet (first occurrence within the batch wins).
        let mut first_new: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, d) in digests.iter().enumerate() {
            if !placed.contains_key(d) && !known.contains_key(d) {
                first_new.entry(*d).or_insert(i);
            }
        }
        let to_compress: Vec<usize> = {
            let mut v: Vec<usize> = first_new.values().copied().collect();
            v.sort_unstable();
            v
        };
        let compressed: Vec<(usize, Vec<u8>, Compression)> = to_compress
            .par_iter()
            .map(|&i| {
                let (data, c) = pronto_format::compress_chunk(&batch[i].1, opts.compression);
                (i, data, c)
            })
            .collect();
        let mut compressed: HashMap<usize, (Vec<u8>, Compression)> = compressed
            .into_iter()
            .map(|(i, d, c)| (i, (d, c)))
            .collect();
        for (i, (entry, data)) in batch.iter().enumerate() {
            let digest = digests[i];
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
                    uncompressed_size: data.len() as u32,
                };
                placed.insert(digest, r);
                r
            } else {
                let (stored, c) = compressed.remove(&i).expect("compressed first occurrence");
                let (pack, offset) = packer.append(&stored).map_err(|source| ConvertError::Io {
                    op: "writing pack in",
                    path: packs_dir.to_owned(),
                    source,
                })?;
                let r = ChunkRef {
                    digest,
                    pack,
                    compression: c,
                    offset,
                    compressed_size: stored.len() as u32,
                    uncompressed_size: data.len() as u32,
                };
                placed.insert(digest, r);
                r
            };
            file_chunks[*entry].push(r);
        }
        batch.clear();
        Ok(())
    };
    let (mut layer_reused_files, mut layer_chunks, mut hashed_bytes) = (0u64, 0u64, 0u64);
    let mut remembered_refs: Vec<(usize, Vec<ChunkRef>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(path) = &e.content else { continue };
        files += 1;
        file_bytes += e.meta.size;
        // A file its layer's earlier conversion already chunked: take its chunk list whole.
        let remembered = memos
            .origins
            .get(&e.ino)
            .and_then(|origin| memos.layer_files.get(origin))
            .filter(|(size, _)| *size == e.meta.size);
        if let Some((_, remembered)) = remembered {
            let refs: Option<Vec<ChunkRef>> = remembered
                .iter()
                .map(|c| {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(&c.digest, &mut digest).ok()?;
                    let pack: Digest = c.pack.parse().ok()?;
                    Some(ChunkRef {
                        digest,
                        pack: packer.existing(&pack, c.pack_size),
                        compression: Compression::from_u8(c.compression)?,
                        offset: c.offset,
                        compressed_size: c.compressed_size,
                        uncompressed_size: c.uncompressed_size,
                    })
                })
                .collect();
            if let Some(refs) = refs {
                layer_chunks += refs.len() as u64;
                layer_reused_files += 1;
                remembered_refs.push((i, refs));
                continue;
            }
        }
        hashed_bytes += e.meta.size;
        let mut f = std::fs::File::open(path).map_err(|source| ConvertError::Io {
            op: "opening",
            path: path.clone(),
            source,
        })?;
        let mut remaining = e.meta.size;
        loop {
            // Only what the file still holds: most files are far smaller than a chunk, and a
            // batch holds thousands of them.
            let want = (chunk_size as u64).min(remaining) as usize;
            if want == 0 {
                break;
            }
            let mut buf = vec![0u8; want];
            let n = read_full(&mut f, &mut buf).map_err(|source| ConvertError::Io {
                op: "reading",
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            remaining -= n as u64;
            batch_bytes += n;
            batch.push((i, buf));
            if batch_bytes >= BATCH_BYTES {
                flush(&mut batch, &mut packer, &mut placed)?;
                batch_bytes = 0;
            }
            if n < chunk_size {
                break;
            }
        }
    }
    flush(&mut batch, &mut packer, &mut placed)?;
    for (i, refs) in remembered_refs {
        file_chunks[i] = refs;
    }
    chunks += layer_chunks;
    reused += layer_chunks;

    let packs = packer.finish().map_err(|source| ConvertError::Io {
        op: "finishing packs in",
        path: packs_dir.to_owned(),
        source,
    })?;
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
        let (Some(_), Some(origin)) = (&e.content, memos.origins.get(&e.ino)) else {
            continue;
        };
        let chunks = file_chunks[i]
            .iter()
            .map(|c| {
                let p = &packs[c.pack as usize];
                memo::FileChunk {
                    digest: hex::encode(c.digest),
                    pack: p.digest.to_string(),
                    pack_size: p.size,
                    offset: c.offset,
                    compressed_size: c.compressed_size,
                    uncompressed_size: c.uncompressed_size,
                    compression: c.compression as u8,
                }
            })
            .collect();
        layer_files.insert(origin.clone(), (e.meta.size, chunks));
    }

    let mut builder = IndexBuilder::new(opts.chunk_size);
    let mut source_bytes = [0u8; 32];
    hex::decode_to_slice(source.hex(), &mut source_bytes).expect("digest is 64 hex digits");
    builder.set_source(source_bytes, config);
    for p in &packs {
        let mut d = [0u8; 32];
        hex::decode_to_slice(p.digest.hex(), &mut d).expect("digest is 64 hex digits");
        builder.add_pack(d, p.size);
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
        hashed_bytes,
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

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
