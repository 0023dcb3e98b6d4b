//! Hot-set re-layout: after a function's first cold start recorded which chunks it read (its
//! access trace), those chunks are written again into new *hot packs*, in trace order, so the
//! next cold start fetches its whole hot set in one or a few Range requests.
//!
//! [`relayout`]:
//! 1. the base revision is fetched and checked (`pronto-artifact`);
//! 2. the trace's chunks (first read first, each once, those the index holds) are laid out
//!    back to back in hot packs (cut at [`RelayoutOptions::hot_pack_target`]);
//! 3. their stored bytes are read from the base's packs with Range requests (chunks near each
//!    other in a pack share one), each chunk decompressed and its BLAKE3 checked, then copied
//!    as stored: nothing is recompressed;
//! 4. the hot packs are uploaded, then an index of the same tree whose chunk records for hot
//!    chunks point into them (every other record unchanged: the cold chunks stay in the base's
//!    packs, which the new manifest lists too, so nothing is stored twice), then the hot
//!    revision's manifest (same `subject`) under `sha256-<hex>.pronto-hot`;
//! 5. the pushed revision is fetched back by digest and checked like any artifact.
//!
//! Nothing of the base revision is changed or deleted: instances mounted on it keep working.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pronto_artifact::{fetch_artifact_revision, Artifact, ArtifactError, Revision};
use pronto_format::{ChunkRef, Index, IndexBuilder, NodeKind, NodeMeta};
use pronto_image::pull::ResolvedImage;
use pronto_image::{Digest, Reference, RegistryClient, RegistryError};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Range reads of the base's packs in flight at once.
const READS_IN_FLIGHT: usize = 8;
/// Stored bytes per Range read at most.
const READ_RUN_BYTES: u64 = 16 << 20;
/// Hot chunks this close in a base pack share a read (the bytes between are read and dropped).
const READ_GAP_BYTES: u64 = 256 << 10;

#[derive(Debug, Clone)]
pub struct RelayoutOptions {
    /// A hot pack is closed once the next chunk would take it past this size.
    pub hot_pack_target: u64,
    /// Scratch space for the hot packs while they are written.
    pub work_dir: PathBuf,
    /// Where the base revision is and the hot one goes (tag and digest ignored); `None`: the
    /// source image's repository.
    pub artifact_repository: Option<Reference>,
}

impl RelayoutOptions {
    pub fn new(work_dir: PathBuf) -> RelayoutOptions {
        RelayoutOptions {
            hot_pack_target: 256 << 20,
            work_dir,
            artifact_repository: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayoutError {
    #[error("the base revision: {0}")]
    Base(#[source] ArtifactError),
    #[error("the pushed hot revision does not check: {0}")]
    Check(#[source] ArtifactError),
    #[error("none of the trace's {0} chunks is in the artifact")]
    NothingHot(usize),
    #[error("reading the base's packs: {0}")]
    Read(#[source] Box<RegistryError>),
    #[error("chunk {chunk} at {offset} of pack {pack}: {source}")]
    Chunk {
        chunk: String,
        pack: Digest,
        offset: u64,
        #[source]
        source: Box<pronto_format::FormatError>,
    },
    #[error("pushing the hot revision: {0}")]
    Push(#[source] Box<RegistryError>),
    #[error("building the hot index: {0}")]
    Format(#[source] Box<pronto_format::FormatError>),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<pronto_format::FormatError> for RelayoutError {
    fn from(e: pronto_format::FormatError) -> Self {
        RelayoutError::Format(Box::new(e))
    }
}

/// What a re-layout made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayoutReport {
    /// `REGISTRY/REPO:sha256-<hex>.pronto-hot`
    pub artifact: String,
    pub artifact_digest: Digest,
    /// The base revision's manifest digest.
    pub base_digest: Digest,
    pub index_digest: Digest,
    pub index_size: u64,
    /// The hot packs (digest, size), in index order; they follow the base's packs.
    pub hot_packs: Vec<(Digest, u64)>,
    /// Stored bytes of the hot packs.
    pub hot_bytes: u64,
    /// Chunks moved (distinct, in trace order).
    pub hot_chunks: u64,
    /// Their uncompressed bytes.
    pub hot_content_bytes: u64,
    /// Trace entries the index does not hold (skipped).
    pub skipped: u64,
    /// Range requests made to the base's packs.
    pub range_reads: u64,
    /// sha256 of the trace (its chunk digests concatenated).
    pub trace_digest: Digest,
    /// Reading, checking and writing the hot chunks.
    #[serde(with = "crate::secs")]
    pub copy_time: Duration,
    /// Hashing and uploading the hot packs.
    #[serde(with = "crate::secs")]
    pub upload_time: Duration,
    #[serde(with = "crate::secs")]
    pub elapsed: Duration,
}

/// Where a hot chunk was and where it goes.
#[derive(Debug, Clone, Copy)]
struct Move {
    from: ChunkRef,
    /// Hot pack number (0 = the first hot pack) and offset in it.
    to_pack: usize,
    to_offset: u64,
}

/// Writes the chunks of `trace` (chunk digests, first read first) into hot packs in that order
/// and pushes the hot revision of `image`'s artifact beside its base revision. `client` reads
/// the base and pushes: it needs both rights on the artifact repository.
pub async fn relayout(
    client: &RegistryClient,
    image: &ResolvedImage,
    trace: &[[u8; 32]],
    opts: &RelayoutOptions,
) -> Result<RelayoutReport, RelayoutError> {
    let started = Instant::now();
    let repo = opts
        .artifact_repository
        .clone()
        .unwrap_or_else(|| image.pinned.clone());
    let base = fetch_artifact_revision(client, image, &repo, &Revision::Base)
        .await
        .map_err(RelayoutError::Base)?;
    let trace_digest = Digest::of(trace.concat().as_slice());
    let (moves, skipped) = plan(&base.index, trace, opts.hot_pack_target);
    if moves.is_empty() {
        return Err(RelayoutError::NothingHot(trace.len()));
    }
    let hot_count = moves.iter().map(|m| m.to_pack + 1).max().unwrap_or(0);
    let mut hot_sizes = vec![0u64; hot_count];
    for m in &moves {
        let end = m.to_offset + u64::from(m.from.compressed_size);
        hot_sizes[m.to_pack] = hot_sizes[m.to_pack].max(end);
    }

    let io = |op, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| RelayoutError::Io { op, path, source }
    };
    std::fs::create_dir_all(&opts.work_dir).map_err(io("creating", &opts.work_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix(crate::SCRATCH_PREFIX)
        .tempdir_in(&opts.work_dir)
        .map_err(io("creating scratch dir in", &opts.work_dir))?;
    let paths: Vec<PathBuf> = (0..hot_count)
        .map(|k| scratch.path().join(format!("hot-{k}")))
        .collect();
    let files = paths
        .iter()
        .map(|p| {
            let f = std::fs::File::create(p).map_err(io("creating", p))?;
            Ok(Arc::new(f))
        })
        .collect::<Result<Vec<_>, RelayoutError>>()?;

    // Read the stored bytes, check each chunk, write it at its place in its hot pack.
    let copy_started = Instant::now();
    let reads = read_runs(&moves);
    let range_reads = reads.len() as u64;
    let base = Arc::new(base);
    let files = Arc::new(files);
    let results: Vec<Result<(), RelayoutError>> = futures_util::stream::iter(reads)
        .map(|run| {
            let (base, files) = (base.clone(), files.clone());
            async move { copy_run(client, &base, &files, run).await }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    let copy_time = copy_started.elapsed();
    let upload_started = Instant::now();

    // Upload the hot packs (named by their sha256), then the index, then the manifest.
    let mut hot_packs = Vec::with_capacity(hot_count);
    for (path, size) in paths.iter().zip(&hot_sizes) {
        let hashed = path.clone();
        let digest = tokio::task::spawn_blocking(move || sha256_file(&hashed))
            .await
            .expect("hash task panicked")
            .map_err(io("hashing", path))?;
        client
            .push_blob_file(&repo, &digest, path)
            .await
            .map_err(|e| RelayoutError::Push(Box::new(e)))?;
        hot_packs.push((digest, *size));
    }
    let upload_time = upload_started.elapsed();
    let index_bytes = hot_index(&base.index, &base.packs, &hot_packs, &moves)?;
    let index_size = index_bytes.len() as u64;
    let index_layer = pronto_artifact::IndexLayer::split(&Index::open(index_bytes)?)?;
    client
        .push_blob(&repo, index_layer.bytes.clone())
        .await
        .map_err(|e| RelayoutError::Push(Box::new(e)))?;
    let mut packs = base.packs.clone();
    packs.extend(hot_packs.iter().cloned());
    let manifest = pronto_artifact::build_hot_manifest(
        &crate::source_descriptor(image),
        &index_layer,
        &packs,
        hot_count,
        &base.digest,
        &trace_digest,
    );
    let artifact_digest =
        pronto_artifact::push_hot_manifest(client, &repo, &image.manifest_digest, &manifest)
            .await
            .map_err(|e| RelayoutError::Push(Box::new(e)))?;
    // What a cold start will trust, checked now: a revision that fails here is never recorded.
    let pushed = fetch_artifact_revision(
        client,
        image,
        &repo,
        &Revision::Pinned(artifact_digest.clone()),
    )
    .await
    .map_err(RelayoutError::Check)?;
    let hot_content_bytes = moves
        .iter()
        .map(|m| u64::from(m.from.uncompressed_size))
        .sum();
    Ok(RelayoutReport {
        artifact: Reference {
            tag: Some(pronto_artifact::hot_artifact_tag(&image.manifest_digest)),
            digest: None,
            ..repo
        }
        .to_string(),
        artifact_digest,
        base_digest: base.digest.clone(),
        index_digest: pushed.index_digest,
        index_size,
        hot_bytes: hot_sizes.iter().sum(),
        hot_packs,
        hot_chunks: moves.len() as u64,
        hot_content_bytes,
        skipped,
        range_reads,
        trace_digest,
        copy_time,
        upload_time,
        elapsed: started.elapsed(),
    })
}

/// The hot chunks in trace order (each digest once, those `index` holds), each given its
/// place in the hot packs; and how many trace entries were skipped.
fn plan(index: &Index, trace: &[[u8; 32]], target: u64) -> (Vec<Move>, u64) {
    let mut by_digest: HashMap<[u8; 32], ChunkRef> = HashMap::new();
    for ino in 0..index.inode_count() {
        for c in index.chunks(ino).unwrap_or_default() {
            by_digest.entry(c.digest).or_insert(c);
        }
    }
    let mut seen = HashSet::new();
    let mut moves = Vec::new();
    let (mut pack, mut offset, mut skipped) = (0usize, 0u64, 0u64);
    for d in trace {
        let Some(c) = by_digest.get(d) else {
            skipped += 1;
            continue;
        };
        if !seen.insert(*d) {
            continue;
        }
        let size = u64::from(c.compressed_size);
        if offset > 0 && offset + size > target {
            (pack, offset) = (pack + 1, 0);
        }
        moves.push(Move {
            from: *c,
            to_pack: pack,
            to_offset: offset,
        });
        offset += size;
    }
    (moves, skipped)
}

/// The moves grouped into Range reads of the base's packs: sorted by place, chunks of one
/// pack at most `READ_GAP_BYTES` apart share a read of at most `READ_RUN_BYTES`.
fn read_runs(moves: &[Move]) -> Vec<Vec<Move>> {
    let mut sorted = moves.to_vec();
    sorted.sort_by_key(|m| (m.from.pack, m.from.offset));
    let mut runs: Vec<Vec<Move>> = Vec::new();
    for m in sorted {
        if let Some(run) = runs.last_mut() {
            let (first, last) = (run[0].from, run[run.len() - 1].from);
            let end = last.pack_range().end;
            if last.pack == m.from.pack
                && m.from.offset >= end
                && m.from.offset - end <= READ_GAP_BYTES
                && m.from.pack_range().end - first.offset <= READ_RUN_BYTES
            {
                run.push(m);
                continue;
            }
        }
        runs.push(vec![m]);
    }
    runs
}

/// One Range read; each chunk in it checked (decompressed, BLAKE3) and written as stored.
async fn copy_run(
    client: &RegistryClient,
    base: &Artifact,
    files: &[Arc<std::fs::File>],
    run: Vec<Move>,
) -> Result<(), RelayoutError> {
    let first = run[0].from;
    let end = run[run.len() - 1].from.pack_range().end;
    let pack = base.packs[first.pack as usize].0.clone();
    let bytes = client
        .read_blob_range(&base.reference, &pack, first.offset, end - first.offset)
        .await
        .map_err(|e| RelayoutError::Read(Box::new(e)))?;
    let files: Vec<Arc<std::fs::File>> = files.to_vec();
    tokio::task::spawn_blocking(move || {
        for m in &run {
            let at = (m.from.offset - first.offset) as usize;
            let stored = &bytes[at..at + m.from.compressed_size as usize];
            pronto_format::decompress_chunk(stored, &m.from).map_err(|source| {
                RelayoutError::Chunk {
                    chunk: hex::encode(m.from.digest),
                    pack: pack.clone(),
                    offset: m.from.offset,
                    source: Box::new(source),
                }
            })?;
            files[m.to_pack]
                .write_all_at(stored, m.to_offset)
                .map_err(|source| RelayoutError::Io {
                    op: "writing",
                    path: PathBuf::from(format!("hot pack {}", m.to_pack)),
                    source,
                })?;
        }
        Ok(())
    })
    .await
    .expect("copy task panicked")
}

fn sha256_file(path: &std::path::Path) -> std::io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_bytes(hasher.finalize().into()))
}

/// The same tree as `index`, its packs `base_packs` then `hot_packs`, each chunk record whose
/// digest was moved pointing at its hot copy (every record of that digest: the lazy fs and the
/// prefetch look chunks up by digest).
fn hot_index(
    index: &Index,
    base_packs: &[(Digest, u64)],
    hot_packs: &[(Digest, u64)],
    moves: &[Move],
) -> Result<Vec<u8>, RelayoutError> {
    let first_hot = base_packs.len() as u32;
    let moved: HashMap<[u8; 32], ChunkRef> = moves
        .iter()
        .map(|m| {
            let to = ChunkRef {
                pack: first_hot + m.to_pack as u32,
                offset: m.to_offset,
                ..m.from
            };
            (m.from.digest, to)
        })
        .collect();
    let mut b = IndexBuilder::new(index.chunk_size());
    b.set_source(index.source_manifest(), index.config_json().to_vec());
    for (d, size) in base_packs.iter().chain(hot_packs) {
        b.add_pack(*d.as_bytes(), *size);
    }
    let meta = |ino: u32| -> Result<NodeMeta, RelayoutError> {
        let n = index.inode(ino)?;
        Ok(NodeMeta {
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
            mtime_nsec: n.mtime_nsec,
            size: n.size,
            rdev: n.rdev,
            symlink_target: if n.kind == NodeKind::Symlink {
                index.symlink_target(ino)?.to_vec()
            } else {
                Vec::new()
            },
            xattrs: index
                .xattrs(ino)?
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        })
    };
    b.set_root(meta(index.root())?)?;
    // Paths of inodes already added: a second path to one is a hardlink.
    let mut first_path: HashMap<u32, Vec<u8>> = HashMap::new();
    for (path, ino) in index.walk()? {
        if path.is_empty() {
            continue;
        }
        if let Some(target) = first_path.get(&ino) {
            b.add_hardlink(&path, target)?;
            continue;
        }
        let meta = meta(ino)?;
        let chunks = if meta.kind == NodeKind::File {
            index
                .chunks(ino)?
                .into_iter()
                .map(|c| moved.get(&c.digest).copied().unwrap_or(c))
                .collect()
        } else {
            Vec::new()
        };
        b.add(&path, meta, chunks)?;
        first_path.insert(ino, path);
    }
    Ok(b.finish()?)
}

#[cfg(test)]
mod tests {
    use pronto_format::Compression;

    use super::*;

    fn chunk(n: u8, pack: u32, offset: u64, size: u32) -> ChunkRef {
        ChunkRef {
            digest: [n; 32],
            pack,
            compression: Compression::None,
            offset,
            compressed_size: size,
            uncompressed_size: size,
        }
    }

    fn mv(c: ChunkRef) -> Move {
        Move {
            from: c,
            to_pack: 0,
            to_offset: 0,
        }
    }

    #[test]
    fn reads_merge_nearby_chunks_of_one_pack_only() {
        let runs = read_runs(&[
            mv(chunk(3, 0, 10_000, 100)),
            mv(chunk(1, 0, 0, 100)),
            mv(chunk(2, 1, 0, 100)),
            mv(chunk(4, 0, 10_000 + READ_GAP_BYTES + 200, 100)),
        ]);
        let shape: Vec<Vec<u8>> = runs
            .iter()
            .map(|r| r.iter().map(|m| m.from.digest[0]).collect())
            .collect();
        assert_eq!(shape, vec![vec![1, 3], vec![4], vec![2]]);
    }
}
