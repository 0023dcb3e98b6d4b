//! The node chunk cache: decompressed chunks on local disk, addressed by their BLAKE3 digest,
//! shared by every mount (every image and function) on the node, and the *backing files* of
//! FUSE passthrough: whole files assembled from their cached chunks.
//!
//! - Layout: `DIR/<first 2 hex digits>/<64 hex digits>`, one file per chunk, written to a
//!   temporary name and renamed into place, so a crash never leaves a half-written entry under
//!   a digest name (leftover temporaries are removed when the cache is opened). An entry is the
//!   chunk's bytes followed, for chunks longer than one segment
//!   ([`pronto_format::SEGMENT_SIZE`], 64 KiB), by the BLAKE3 chaining value of each segment
//!   (32 bytes each, [`pronto_format::segment_values`]): the segments are subtrees of the
//!   chunk's BLAKE3 tree, so those values combine into the chunk's digest.
//! - Backing files: `DIR/files/<first 2 hex>/<64 hex of the file key>` ([`file_key`]: a hash of
//!   the file's chunk digests, so every image holding the same file shares one). Built by
//!   [`ChunkCache::materialize`] from chunks read back through the checks below (every byte is
//!   verified while it is assembled), flushed (`fdatasync`) and only then renamed into place, so
//!   after a crash a backing file is whole or absent; its length is checked whenever it is
//!   opened. Its bytes are then read by the kernel (FUSE passthrough), which the daemon cannot
//!   check: from then on, across restarts too, a backing file is trusted as the unpacked trees of
//!   the full-pull path are.
//! - Bounded in bytes, chunks and backing files together: when an insert pushes the total over
//!   the capacity, the least recently used entries of either kind are deleted (a backing file
//!   open for passthrough keeps working: the kernel holds the file). No backing file is larger
//!   than a quarter of the capacity. Recency is kept in memory; at open it is seeded from the
//!   files' mtimes, so a restart keeps roughly the old order.
//! - Survives restarts: `open` scans the directory.
//! - Trusts no chunk it reads back, and checks only what it serves: when an entry is first used
//!   after open, its chaining values are combined and compared with the digest (a short chunk
//!   is hashed whole); each segment is hashed and compared with its value the first time a read
//!   touches it. So a random 4 KiB read of a cold entry costs one 64 KiB read, not the whole
//!   chunk. A corrupt entry is deleted and reported as such (the caller refetches it). Entries
//!   are kept open (up to a bound) with what was checked, and read with `pread`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use pronto_format::{
    digest_of_segments, segment_value, ChunkRef, SegmentValue, SEGMENT_SIZE as SEGMENT,
};
use serde::Serialize;
use tracing::{debug, warn};

/// The directory of backing files, under the cache's.
const FILES_DIR: &str = "files";

/// The key of the backing file of a regular file whose chunks are `chunks` (in file order):
/// BLAKE3 of a version tag and the chunks' digests. Equal files share it, whatever image holds
/// them; it is computed from the index alone, without reading any data.
pub fn file_key(chunks: &[ChunkRef]) -> [u8; 32] {
    const TAG: &[u8] = b"pronto backing file v1\0";
    let mut input = Vec::with_capacity(TAG.len() + 32 * chunks.len());
    input.extend_from_slice(TAG);
    for c in chunks {
        input.extend_from_slice(&c.digest);
    }
    pronto_format::chunk_digest(&input)
}

/// Bytes on disk of the entry of a chunk of `len` bytes.
fn entry_size(len: u64) -> u64 {
    if len <= SEGMENT as u64 {
        len
    } else {
        len + 32 * len.div_ceil(SEGMENT as u64)
    }
}

/// What a cache file holds. Chunk digests and file keys are both 32-byte hashes; they are kept
/// apart so that no chunk can pose as a backing file or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Chunk,
    File,
}

type Key = (Kind, [u8; 32]);

#[derive(Debug)]
struct Entry {
    /// Bytes of the file (chunk plus chaining values, or a backing file's content).
    size: u64,
    tick: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// tick → key, oldest first.
    lru: BTreeMap<u64, Key>,
    total: u64,
    /// Of `total`, the backing files' bytes, and their number.
    file_bytes: u64,
    files: u64,
    next_tick: u64,
}

impl State {
    fn touch(&mut self, key: &Key) {
        let tick = self.next_tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
            self.next_tick += 1;
        }
    }

    fn add(&mut self, key: Key, size: u64) {
        if self.entries.contains_key(&key) {
            return;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(key, Entry { size, tick });
        self.lru.insert(tick, key);
        self.total += size;
        if key.0 == Kind::File {
            self.file_bytes += size;
            self.files += 1;
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.tick);
        self.uncount(key, &e);
        Some(e)
    }

    /// The least recently used entry, removed.
    fn pop_oldest(&mut self) -> Option<(Key, Entry)> {
        while let Some((_, key)) = self.lru.pop_first() {
            if let Some(e) = self.entries.remove(&key) {
                self.uncount(&key, &e);
                return Some((key, e));
            }
        }
        None
    }

    fn uncount(&mut self, key: &Key, e: &Entry) {
        self.total -= e.size;
        if key.0 == Kind::File {
            self.file_bytes -= e.size;
            self.files -= 1;
        }
    }
}

/// An entry kept open, with what of it has been checked this process.
#[derive(Debug)]
struct OpenEntry {
    file: File,
    /// The segments' chaining values, read from the entry and checked against its digest
    /// (empty for a chunk of one segment, which is checked whole when opened).
    values: Vec<SegmentValue>,
    /// Per segment: hashed and found equal to its value.
    checked: Vec<AtomicBool>,
}

impl OpenEntry {
    fn all_checked(file: File, len: u32) -> OpenEntry {
        let n = (len as usize).div_ceil(SEGMENT).max(1);
        OpenEntry {
            file,
            values: Vec::new(),
            checked: (0..n).map(|_| AtomicBool::new(true)).collect(),
        }
    }
}

/// Why an entry could not be read.
enum ReadError {
    /// Short, or its bytes do not hash to what they should.
    Corrupt,
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Corrupt
        } else {
            ReadError::Io(e)
        }
    }
}

/// The node's chunk cache. Shared (`Arc`) by every mount; all methods take `&self`.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    open: Mutex<HashMap<[u8; 32], Arc<OpenEntry>>>,
    /// Entries kept open at most: a read of one is then a `pread`, with no path lookup or
    /// open (which cost disk reads of the cache's directories and inodes once the kernel
    /// dropped them).
    max_open: usize,
    /// Backing files being built (by any mount): each is built once.
    building: Mutex<HashSet<[u8; 32]>>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    chunks_evicted: AtomicU64,
    files_materialized: AtomicU64,
    file_bytes_materialized: AtomicU64,
    files_evicted: AtomicU64,
    file_bytes_evicted: AtomicU64,
}

/// The node cache's contents and what happened to them since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// The bound, in bytes (chunks and backing files together).
    pub capacity: u64,
    /// Chunk entries stored, and their bytes (chunks and chaining values).
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Backing files stored (passthrough), and their bytes.
    pub files: u64,
    pub file_bytes: u64,
    /// Chunk entries deleted to stay within the bound.
    pub chunks_evicted: u64,
    /// Backing files built, and their bytes.
    pub files_materialized: u64,
    pub file_bytes_materialized: u64,
    /// Backing files deleted to stay within the bound, and their bytes.
    pub files_evicted: u64,
    pub file_bytes_evicted: u64,
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks ({} B) and {} backing files ({} B) of {} B; evicted {} chunks, {} files \
             ({} B); materialized {} files ({} B)",
            self.chunks,
            self.chunk_bytes,
            self.files,
            self.file_bytes,
            self.capacity,
            self.chunks_evicted,
            self.files_evicted,
            self.file_bytes_evicted,
            self.files_materialized,
            self.file_bytes_materialized,
        )
    }
}

/// What [`ChunkCache::materialize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Materialized {
    /// Built now: this many bytes written.
    Built(u64),
    /// There already.
    Present,
    /// Being built by another caller.
    InProgress,
}

/// Why a backing file was not built.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("file of {size} B is over the bound of {max} B for a backing file")]
    TooLarge { size: u64, max: u64 },
    #[error("chunk {chunk} is not in the cache (evicted, or corrupt)")]
    MissingChunk { chunk: String },
    #[error("chunks of {chunks} B do not make a file of {size} B")]
    SizeMismatch { chunks: u64, size: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error("writing the backing file: {0}")]
    Write(#[from] io::Error),
}

/// What a cache lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The bytes asked for.
    Hit(Vec<u8>),
    Miss,
    /// There was an entry but it was wrong (deleted now): a miss, worth a log line.
    Corrupt,
}

impl ChunkCache {
    /// Opens (or creates) the cache in `dir`, bounded to `capacity` bytes.
    pub fn open(dir: &Path, capacity: u64) -> io::Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u128, Key, u64)> = Vec::new();
        scan_shards(dir, Kind::Chunk, &mut found)?;
        let files = dir.join(FILES_DIR);
        if files.is_dir() {
            scan_shards(&files, Kind::File, &mut found)?;
        }
        found.sort_unstable_by_key(|(mtime, _, _)| *mtime);
        let mut state = State::default();
        for (_, key, size) in found {
            state.add(key, size);
        }
        let cache = ChunkCache {
            dir: dir.to_owned(),
            capacity,
            state: Mutex::new(state),
            open: Mutex::default(),
            max_open: open_files_bound(),
            building: Mutex::default(),
            counters: Counters::default(),
        };
        cache.evict();
        Ok(cache)
    }

    fn path_of(&self, digest: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(digest);
        self.dir.join(&hex[..2]).join(hex)
    }

    fn file_path(&self, key: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(key);
        self.dir.join(FILES_DIR).join(&hex[..2]).join(hex)
    }

    fn key_path(&self, key: &Key) -> PathBuf {
        match key.0 {
            Kind::Chunk => self.path_of(&key.1),
            Kind::File => self.file_path(&key.1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("chunk cache lock poisoned")
    }

    fn open_files(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<OpenEntry>>> {
        self.open.lock().expect("open files lock poisoned")
    }

    /// Bytes `range` of the chunk `digest` (whose full length is `len`), if cached and sound.
    pub fn read(&self, digest: &[u8; 32], len: u32, range: std::ops::Range<u32>) -> Lookup {
        self.read_inner(digest, len, range, true)
    }

    /// As `read`; `touch`: count this as a use for the LRU order.
    fn read_inner(
        &self,
        digest: &[u8; 32],
        len: u32,
        range: std::ops::Range<u32>,
        touch: bool,
    ) -> Lookup {
        let key = (Kind::Chunk, *digest);
        {
            let mut st = self.lock();
            match st.entries.get(&key) {
                None => return Lookup::Miss,
                Some(e) if e.size != entry_size(u64::from(len)) => {
                    drop(st);
                    self.discard(digest);
                    return Lookup::Corrupt;
                }
                Some(_) if touch => st.touch(&key),
                Some(_) => {}
            }
        }
        match self.read_checked(digest, len, range) {
            Ok(bytes) => Lookup::Hit(bytes),
            Err(ReadError::Corrupt) => {
                self.discard(digest);
                Lookup::Corrupt
            }
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                // Evicted between the lookup and the read, or deleted behind our back.
                self.lock().remove(&key);
                self.close(digest);
                Lookup::Miss
            }
            Err(ReadError::Io(e)) => {
                warn!(chunk = %hex::encode(digest), error = %e, "chunk cache read failed");
                self.discard(digest);
                Lookup::Miss
            }
        }
    }

    fn read_checked(
        &self,
        digest: &[u8; 32],
        len: u32,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<u8>, ReadError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let entry = self.open_entry(digest, len)?;
        let (start, end) = (range.start as usize, range.end as usize);
        let segments = start / SEGMENT..=(end - 1) / SEGMENT;
        if segments
            .clone()
            .all(|s| entry.checked[s].load(Ordering::Acquire))
        {
            return Ok(read_exact_at(&entry.file, start..end)?);
        }
        // Read the segments the range touches whole, and check those not checked yet.
        let from = segments.start() * SEGMENT;
        let to = ((segments.end() + 1) * SEGMENT).min(len as usize);
        let buf = read_exact_at(&entry.file, from..to)?;
        for s in segments {
            if entry.checked[s].load(Ordering::Acquire) {
                continue;
            }
            let at = s * SEGMENT - from;
            let seg = &buf[at..(at + SEGMENT).min(buf.len())];
            if segment_value(seg, s) != entry.values[s] {
                return Err(ReadError::Corrupt);
            }
            entry.checked[s].store(true, Ordering::Release);
        }
        Ok(buf[start - from..end - from].to_vec())
    }

    /// The open entry, opening it (and checking its chaining values) if need be.
    fn open_entry(&self, digest: &[u8; 32], len: u32) -> Result<Arc<OpenEntry>, ReadError> {
        if let Some(e) = self.open_files().get(digest) {
            return Ok(e.clone());
        }
        let file = File::open(self.path_of(digest))?;
        let entry = if len as usize <= SEGMENT {
            let data = read_exact_at(&file, 0..len as usize)?;
            if &pronto_format::chunk_digest(&data) != digest {
                return Err(ReadError::Corrupt);
            }
            OpenEntry::all_checked(file, len)
        } else {
            let n = (len as usize).div_ceil(SEGMENT);
            let raw = read_exact_at(&file, len as usize..len as usize + 32 * n)?;
            let values: Vec<SegmentValue> = raw
                .chunks_exact(32)
                .map(|v| v.try_into().expect("32-byte chunks"))
                .collect();
            if &digest_of_segments(&values, u64::from(len)) != digest {
                return Err(ReadError::Corrupt);
            }
            OpenEntry {
                file,
                values,
                checked: (0..n).map(|_| AtomicBool::new(false)).collect(),
            }
        };
        Ok(self.keep_open(digest, entry))
    }

    fn keep_open(&self, digest: &[u8; 32], entry: OpenEntry) -> Arc<OpenEntry> {
        let entry = Arc::new(entry);
        let mut open = self.open_files();
        if open.len() >= self.max_open {
            // Any one: cheap, and a closed entry only costs an open (and a check of the
            // segments read again) next time.
            if let Some(k) = open.keys().next().copied() {
                open.remove(&k);
            }
        }
        open.insert(*digest, entry.clone());
        entry
    }

    fn close(&self, digest: &[u8; 32]) {
        self.open_files().remove(digest);
    }

    /// Whether the chunk is cached (not checked).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.lock().entries.contains_key(&(Kind::Chunk, *digest))
    }

    /// Whether all these chunks are cached (not checked), under one lock.
    pub fn contains_all<'a>(&self, digests: impl IntoIterator<Item = &'a [u8; 32]>) -> bool {
        let st = self.lock();
        digests
            .into_iter()
            .all(|d| st.entries.contains_key(&(Kind::Chunk, *d)))
    }

    /// The largest backing file the cache builds: a quarter of its capacity.
    pub fn max_file_size(&self) -> u64 {
        self.capacity / 4
    }

    /// Whether the backing file `key` is stored (not opened, not checked).
    pub fn has_file(&self, key: &[u8; 32]) -> bool {
        self.lock().entries.contains_key(&(Kind::File, *key))
    }

    /// The backing file `key`, opened read-only, if it is stored and `size` bytes long (a
    /// shorter one is what a crash before its flush can leave on some filesystems: deleted). Counts
    /// as a use for the LRU order. The file may be evicted (unlinked) while it is open: it keeps
    /// working.
    pub fn open_file(&self, key: &[u8; 32], size: u64) -> Option<File> {
        let entry = (Kind::File, *key);
        {
            let mut st = self.lock();
            match st.entries.get(&entry) {
                None => return None,
                Some(e) if e.size != size => {
                    drop(st);
                    warn!(file = %hex::encode(key), size, "backing file of the wrong length deleted");
                    self.discard_key(&entry);
                    return None;
                }
                Some(_) => st.touch(&entry),
            }
        }
        match File::open(self.file_path(key)) {
            Ok(f) if f.metadata().is_ok_and(|m| m.len() == size) => Some(f),
            Ok(_) => {
                warn!(file = %hex::encode(key), size, "backing file of the wrong length deleted");
                self.discard_key(&entry);
                None
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(file = %hex::encode(key), error = %e, "opening a backing file");
                }
                self.discard_key(&entry);
                None
            }
        }
    }

    /// Builds the backing file `key` of a file of `size` bytes made of `chunks` (in order), from
    /// the cache: each chunk is read back through the cache's checks, the file is written to a
    /// temporary name, flushed to disk, then renamed into place and counted in the bound (which
    /// may evict other entries, of either kind). Blocking, and as slow as writing `size` bytes:
    /// call it from a background thread. `cancel` is checked between chunks.
    pub fn materialize(
        &self,
        key: &[u8; 32],
        chunks: &[ChunkRef],
        size: u64,
        cancel: &AtomicBool,
    ) -> Result<Materialized, MaterializeError> {
        let max = self.max_file_size();
        if size > max {
            return Err(MaterializeError::TooLarge { size, max });
        }
        let total: u64 = chunks.iter().map(|c| u64::from(c.uncompressed_size)).sum();
        if total != size {
            return Err(MaterializeError::SizeMismatch {
                chunks: total,
                size,
            });
        }
        if self.has_file(key) {
            return Ok(Materialized::Present);
        }
        if !self.lock_building().insert(*key) {
            return Ok(Materialized::InProgress);
        }
        let built = self.build_file(key, chunks, cancel);
        self.lock_building().remove(key);
        let file = built?;
        self.counters
            .files_materialized
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .file_bytes_materialized
            .fetch_add(size, Ordering::Relaxed);
        drop(file);
        self.lock().add((Kind::File, *key), size);
        self.evict();
        Ok(Materialized::Built(size))
    }

    fn lock_building(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.building.lock().expect("building lock poisoned")
    }

    fn build_file(
        &self,
        key: &[u8; 32],
        chunks: &[ChunkRef],
        cancel: &AtomicBool,
    ) -> Result<File, MaterializeError> {
        let path = self.file_path(key);
        let shard = path.parent().expect("backing file has a shard dir");
        std::fs::create_dir_all(shard)?;
        let mut tmp = tempfile::NamedTempFile::new_in(shard)?;
        for c in chunks {
            if cancel.load(Ordering::Relaxed) {
                return Err(MaterializeError::Cancelled);
            }
            let len = c.uncompressed_size;
            match self.read_inner(&c.digest, len, 0..len, false) {
                Lookup::Hit(bytes) => tmp.write_all(&bytes)?,
                Lookup::Miss | Lookup::Corrupt => {
                    return Err(MaterializeError::MissingChunk {
                        chunk: hex::encode(c.digest),
                    })
                }
            }
        }
        // On disk before it has its name: after a crash the file is whole or absent.
        tmp.as_file().sync_data()?;
        Ok(tmp.persist(&path).map_err(|e| e.error)?)
    }

    /// The cache's contents and counters.
    pub fn stats(&self) -> CacheStats {
        let (total, files, file_bytes, entries) = {
            let st = self.lock();
            (st.total, st.files, st.file_bytes, st.entries.len() as u64)
        };
        let c = &self.counters;
        CacheStats {
            capacity: self.capacity,
            chunks: entries - files,
            chunk_bytes: total - file_bytes,
            files,
            file_bytes,
            chunks_evicted: c.chunks_evicted.load(Ordering::Relaxed),
            files_materialized: c.files_materialized.load(Ordering::Relaxed),
            file_bytes_materialized: c.file_bytes_materialized.load(Ordering::Relaxed),
            files_evicted: c.files_evicted.load(Ordering::Relaxed),
            file_bytes_evicted: c.file_bytes_evicted.load(Ordering::Relaxed),
        }
    }

    /// Stores a chunk the caller has verified, with its segments' values (as
    /// [`pronto_format::decompress_chunk_with_segments`] returns them). Failures are logged, not
    /// returned: the cache is an optimisation and the reader already has its bytes.
    pub fn insert(&self, digest: &[u8; 32], data: &[u8], values: &[SegmentValue]) {
        debug_assert_eq!(values.len(), pronto_format::segment_values(data).len());
        let size = entry_size(data.len() as u64);
        if self.contains(digest) || size > self.capacity {
            return;
        }
        match self.write_entry(digest, data, values) {
            Ok(file) => {
                self.keep_open(digest, OpenEntry::all_checked(file, data.len() as u32));
            }
            Err(e) => {
                warn!(chunk = %hex::encode(digest), error = %e, "chunk cache write failed");
                return;
            }
        }
        self.lock().add((Kind::Chunk, *digest), size);
        self.evict();
    }

    fn write_entry(
        &self,
        digest: &[u8; 32],
        data: &[u8],
        values: &[SegmentValue],
    ) -> io::Result<File> {
        let path = self.path_of(digest);
        let shard = path.parent().expect("entry has a shard dir");
        std::fs::create_dir_all(shard)?;
        let mut tmp = tempfile::NamedTempFile::new_in(shard)?;
        tmp.write_all(data)?;
        tmp.write_all(values.concat().as_slice())?;
        tmp.persist(&path).map_err(|e| e.error)
    }

    /// Deletes least recently used entries until the total fits.
    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut st = self.lock();
            while st.total > self.capacity {
                let Some((key, e)) = st.pop_oldest() else {
                    break;
                };
                victims.push((key, e.size));
            }
        }
        let c = &self.counters;
        for (key, size) in victims {
            match key.0 {
                Kind::Chunk => {
                    c.chunks_evicted.fetch_add(1, Ordering::Relaxed);
                    self.close(&key.1);
                }
                Kind::File => {
                    c.files_evicted.fetch_add(1, Ordering::Relaxed);
                    c.file_bytes_evicted.fetch_add(size, Ordering::Relaxed);
                }
            }
            let _ = std::fs::remove_file(self.key_path(&key));
        }
    }

    fn discard(&self, digest: &[u8; 32]) {
        self.discard_key(&(Kind::Chunk, *digest));
    }

    fn discard_key(&self, key: &Key) {
        self.lock().remove(key);
        if key.0 == Kind::Chunk {
            self.close(&key.1);
        }
        let _ = std::fs::remove_file(self.key_path(key));
    }

    /// Bytes stored (chunks with their chaining values, and backing files).
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Entries stored (chunks and backing files).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries (chunks and backing files) deleted to stay within the bound since the cache was
    /// opened (corrupt entries deleted on read are not counted).
    pub fn evictions(&self) -> u64 {
        let c = &self.counters;
        c.chunks_evicted.load(Ordering::Relaxed) + c.files_evicted.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Adds the entries of `dir`'s shards (subdirectories named by two hex digits) to `found`, as
/// (mtime, key, size); removes what is not an entry (temporaries left by a crash mid-write).
fn scan_shards(dir: &Path, kind: Kind, found: &mut Vec<(u128, Key, u64)>) -> io::Result<()> {
    for shard in std::fs::read_dir(dir)? {
        let shard = shard?;
        let name = shard.file_name();
        let is_shard = name.len() == 2 && name.as_bytes().iter().all(u8::is_ascii_hexdigit);
        if !is_shard || !shard.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path())? {
            let f = f?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            let mut digest = [0u8; 32];
            if name.len() != 64 || hex::decode_to_slice(name.as_bytes(), &mut digest).is_err() {
                // A temporary left by a crash mid-write, or a stranger: not an entry.
                let _ = std::fs::remove_file(f.path());
                continue;
            }
            let meta = f.metadata()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            found.push((mtime, (kind, digest), meta.len()));
        }
    }
    Ok(())
}

/// Exactly the bytes `range` of `f` (`UnexpectedEof` if the file is shorter).
fn read_exact_at(f: &File, range: std::ops::Range<usize>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; range.len()];
    f.read_exact_at(&mut buf, range.start as u64)?;
    Ok(buf)
}

/// How many entries the cache keeps open: a quarter of the open-files limit, after raising
/// the soft limit to the hard one (the default soft limit, 1024, is below a node's working set
/// of chunks).
fn open_files_bound() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => debug!(error = %e, "raising the open-files limit"),
        }
    }
    let soft = limit.current.unwrap_or(u64::MAX);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, 8192)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, len: usize) -> ([u8; 32], Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        (pronto_format::chunk_digest(&data), data)
    }

    fn insert(cache: &ChunkCache, digest: &[u8; 32], data: &[u8]) {
        cache.insert(digest, data, &pronto_format::segment_values(data));
    }

    /// Stores `data` in a cache in `dir` (closed again) and returns the entry's path.
    fn stored(dir: &Path, digest: &[u8; 32], data: &[u8]) -> PathBuf {
        insert(&ChunkCache::open(dir, 1 << 30).unwrap(), digest, data);
        let hex = hex::encode(digest);
        dir.join(&hex[..2]).join(&hex)
    }

    #[test]
    fn stores_reads_ranges_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (d, data) = chunk(7, 10_000);
        {
            let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(cache.read(&d, 10_000, 0..10), Lookup::Miss);
            insert(&cache, &d, &data);
            assert_eq!(
                cache.read(&d, 10_000, 100..200),
                Lookup::Hit(data[100..200].to_vec())
            );
        }
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.read(&d, 10_000, 9_990..10_000),
            Lookup::Hit(data[9_990..].to_vec())
        );
    }

    #[test]
    fn a_corrupted_entry_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (d, data) = chunk(3, 5000);
        let path = stored(dir.path(), &d, &data);
        let mut bad = data.clone();
        bad[4000] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Corrupt);
        assert!(!path.exists());
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Miss);
        // A truncated entry too.
        insert(&cache, &d, &data);
        std::fs::write(&path, &data[..100]).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Corrupt);
    }

    #[test]
    fn a_corrupted_segment_is_refused_while_the_others_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let len = 5 * SEGMENT + 100;
        let (d, data) = chunk(9, len);
        let path = stored(dir.path(), &d, &data);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            entry_size(len as u64)
        );
        let mut bad = std::fs::read(&path).unwrap();
        bad[3 * SEGMENT + 7] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();

        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let n = len as u32;
        let seg = SEGMENT as u32;
        // Segments 0-2 and across 4/5 are sound: served (and hashed once).
        assert_eq!(
            cache.read(&d, n, 10..4096),
            Lookup::Hit(data[10..4096].to_vec())
        );
        assert_eq!(
            cache.read(&d, n, seg - 5..2 * seg + 5),
            Lookup::Hit(data[SEGMENT - 5..2 * SEGMENT + 5].to_vec())
        );
        assert_eq!(
            cache.read(&d, n, 5 * seg - 8..n),
            Lookup::Hit(data[5 * SEGMENT - 8..].to_vec())
        );
        // The damaged segment is not: the entry goes, the next read is a miss.
        assert_eq!(
            cache.read(&d, n, 3 * seg + 100..3 * seg + 200),
            Lookup::Corrupt
        );
        assert!(!path.exists());
        assert_eq!(cache.read(&d, n, 0..10), Lookup::Miss);
    }

    #[test]
    fn a_corrupted_chaining_value_is_refused_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * SEGMENT + 1;
        let (d, data) = chunk(5, len);
        let path = stored(dir.path(), &d, &data);
        let mut bad = std::fs::read(&path).unwrap();
        bad[len + 33] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(cache.read(&d, len as u32, 0..10), Lookup::Corrupt);
        assert!(!path.exists());
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 25_000).unwrap();
        let (a, da) = chunk(1, 10_000);
        let (b, db) = chunk(2, 10_000);
        let (c, dc) = chunk(5, 10_000);
        insert(&cache, &a, &da);
        insert(&cache, &b, &db);
        // Use `a`, so `b` is the oldest when `c` needs room.
        assert!(matches!(cache.read(&a, 10_000, 0..1), Lookup::Hit(_)));
        insert(&cache, &c, &dc);
        assert_eq!(cache.total_bytes(), 20_000);
        assert_eq!(cache.read(&b, 10_000, 0..1), Lookup::Miss);
        assert!(matches!(cache.read(&a, 10_000, 0..1), Lookup::Hit(_)));
        assert!(matches!(cache.read(&c, 10_000, 0..1), Lookup::Hit(_)));
        assert_eq!(cache.evictions(), 1);
        // A smaller bound at reopen evicts down to it.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), 10_000).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!((cache.evictions(), cache.capacity()), (1, 10_000));
        let on_disk: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(on_disk, 1);
    }

    fn chunk_ref(digest: [u8; 32], len: usize) -> ChunkRef {
        ChunkRef {
            digest,
            pack: 0,
            compression: pronto_format::Compression::None,
            offset: 0,
            compressed_size: len as u32,
            uncompressed_size: len as u32,
        }
    }

    /// A file of `parts` chunks, all inserted: its chunk refs and content.
    fn cached_file(cache: &ChunkCache, seed: u8, parts: &[usize]) -> (Vec<ChunkRef>, Vec<u8>) {
        let mut refs = Vec::new();
        let mut content = Vec::new();
        for (i, &len) in parts.iter().enumerate() {
            let (d, data) = chunk(seed.wrapping_add(i as u8), len);
            insert(cache, &d, &data);
            refs.push(chunk_ref(d, len));
            content.extend_from_slice(&data);
        }
        (refs, content)
    }

    fn read_all(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    }

    #[test]
    fn a_backing_file_is_built_from_cached_chunks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        let (refs, content) = {
            let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
            let (refs, content) = cached_file(&cache, 3, &[3 * SEGMENT, 3 * SEGMENT, 1000]);
            let key = file_key(&refs);
            let size = content.len() as u64;
            assert!(cache.open_file(&key, size).is_none());
            assert_eq!(
                cache.materialize(&key, &refs, size, &no).unwrap(),
                Materialized::Built(size)
            );
            assert_eq!(
                cache.materialize(&key, &refs, size, &no).unwrap(),
                Materialized::Present
            );
            assert!(read_all(cache.open_file(&key, size).unwrap()) == content);
            let s = cache.stats();
            assert_eq!((s.files, s.file_bytes, s.files_materialized), (1, size, 1));
            assert_eq!(s.chunks, 3);
            assert_eq!(cache.total_bytes(), s.chunk_bytes + size);
            (refs, content)
        };
        let key = file_key(&refs);
        let hex = hex::encode(key);
        let path = dir.path().join("files").join(&hex[..2]).join(&hex);
        assert!(path.exists());
        // A temporary left by a crash beside it is removed at open; the file is found.
        std::fs::write(path.with_file_name(".tmpXYZ"), b"half").unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        assert!(!path.with_file_name(".tmpXYZ").exists());
        assert_eq!(cache.stats().files, 1);
        let size = content.len() as u64;
        assert!(read_all(cache.open_file(&key, size).unwrap()) == content);
        // One of the wrong length (a crash before the flush, on a filesystem that keeps the
        // name but not the data) is deleted.
        std::fs::write(&path, &content[..100]).unwrap();
        assert!(cache.open_file(&key, size).is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats().files, 0);
    }

    #[test]
    fn a_backing_file_needs_every_chunk_sound_and_fits_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let (mut refs, content) = cached_file(&cache, 5, &[2 * SEGMENT, 1000]);
        let size = content.len() as u64;
        // A chunk missing.
        let (stranger, _) = chunk(99, 10);
        refs.push(chunk_ref(stranger, 10));
        let err = cache
            .materialize(&file_key(&refs), &refs, size + 10, &no)
            .unwrap_err();
        assert!(
            matches!(err, MaterializeError::MissingChunk { .. }),
            "{err}"
        );
        refs.pop();
        // Sizes that do not add up.
        let err = cache
            .materialize(&file_key(&refs), &refs, size + 1, &no)
            .unwrap_err();
        assert!(
            matches!(err, MaterializeError::SizeMismatch { .. }),
            "{err}"
        );
        // Over a quarter of the capacity.
        let (big, big_content) = cached_file(&cache, 7, &[5 * SEGMENT]);
        let err = cache
            .materialize(&file_key(&big), &big, big_content.len() as u64, &no)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "file of 327680 B is over the bound of 262144 B for a backing file"
        );
        // Cancelled.
        let yes = AtomicBool::new(true);
        let err = cache
            .materialize(&file_key(&refs), &refs, size, &yes)
            .unwrap_err();
        assert!(matches!(err, MaterializeError::Cancelled), "{err}");
        assert_eq!(cache.stats().files, 0);
        // A corrupted chunk is refused, not copied.
        let hex = hex::encode(refs[0].digest);
        let entry = dir.path().join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&entry, bytes).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let err = cache
            .materialize(&file_key(&refs), &refs, size, &no)
            .unwrap_err();
        assert!(
            matches!(err, MaterializeError::MissingChunk { .. }),
            "{err}"
        );
        assert_eq!(cache.stats().files, 0);
    }

    #[test]
    fn backing_files_and_chunks_share_the_bound_and_the_lru_order() {
        let dir = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        let seg = SEGMENT;
        let capacity = 300_000;
        let cache = ChunkCache::open(dir.path(), capacity).unwrap();
        // A file of one segment (entry 65,536 B) and its backing file (65,536 B).
        let (refs, content) = cached_file(&cache, 1, &[seg]);
        let key = file_key(&refs);
        let size = content.len() as u64;
        cache.materialize(&key, &refs, size, &no).unwrap();
        // A chunk of two segments (131,136 B with its values), then the file is used: the
        // order, oldest first, is the file's chunk, that chunk, the file.
        cached_file(&cache, 50, &[2 * seg]);
        assert!(cache.open_file(&key, size).is_some());
        cached_file(&cache, 60, &[2 * seg]);
        let s = cache.stats();
        assert_eq!(
            (s.chunks_evicted, s.files, s.files_evicted),
            (2, 1, 0),
            "{s}"
        );
        cached_file(&cache, 70, &[2 * seg]);
        let s = cache.stats();
        assert_eq!(
            (
                s.chunks_evicted,
                s.files,
                s.files_evicted,
                s.file_bytes_evicted
            ),
            (2, 0, 1, size),
            "{s}"
        );
        assert!(cache.open_file(&key, size).is_none());
        assert!(cache.total_bytes() <= capacity);
    }

    #[test]
    fn leftover_temporaries_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ab")).unwrap();
        std::fs::write(dir.path().join("ab").join(".tmpXYZ"), b"half").unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.is_empty());
        assert!(!dir.path().join("ab").join(".tmpXYZ").exists());
    }
}
