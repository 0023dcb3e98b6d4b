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
//! - Trusts no chunk it reads back, and checks what it serves, every time: when an entry is
//!   opened, its chaining values are combined and compared with the digest and kept in memory;
//!   every read hashes each segment it touches and compares it with its value (a chunk of one
//!   segment is hashed whole against its digest). So a random 4 KiB read costs one 64 KiB read
//!   and hash, not the whole chunk's, and bytes changed on disk after their first use are never
//!   served (the kernel's page cache of the mounted files absorbs repeated reads, so the daemon
//!   hashes a range about once per page-cache lifetime; the cost is measured in ARCHITECTURE.md,
//!   the lazy rootfs). A corrupt entry is deleted and reported as such, once (the caller
//!   refetches it; [`CacheStats::chunks_corrupt`]). Entries are kept open (up to a bound) and
//!   read with `pread`.
//! - Only the daemon's: the directory and its shards are created 0700, entries 0600. `open`
//!   refuses a cache directory owned by another user and tightens one that others may read or
//!   write (with a warning when they could write: then the backing files, which no read
//!   verifies, are deleted; chunk entries are kept, every read checks them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
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

/// An entry kept open, with the values its segments are checked against.
#[derive(Debug)]
struct OpenEntry {
    file: File,
    /// The segments' chaining values, checked against the entry's digest (read from the entry
    /// when it was opened, or given with its bytes when it was stored); empty for a chunk of
    /// one segment, which is hashed whole.
    values: Vec<SegmentValue>,
    /// Per segment: hashed and found equal to its value at least once. Consulted only when
    /// every read is not verified ([`ChunkCache::set_verify_every_read`]).
    checked: Vec<AtomicBool>,
}

impl OpenEntry {
    fn new(file: File, len: u32, values: Vec<SegmentValue>, checked: bool) -> OpenEntry {
        let n = (len as usize).div_ceil(SEGMENT).max(1);
        OpenEntry {
            file,
            values,
            checked: (0..n).map(|_| AtomicBool::new(checked)).collect(),
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
    /// Hash every segment a read touches (the default), not only the first time.
    verify_every_read: AtomicBool,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    chunks_evicted: AtomicU64,
    chunks_corrupt: AtomicU64,
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
    /// Chunk entries found corrupt when read (wrong length, chaining values that do not make
    /// the digest, or a segment that does not hash to its value) and deleted; the reader
    /// refetches the chunk.
    pub chunks_corrupt: u64,
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
             ({} B); {} corrupt chunks deleted; materialized {} files ({} B)",
            self.chunks,
            self.chunk_bytes,
            self.files,
            self.file_bytes,
            self.capacity,
            self.chunks_evicted,
            self.files_evicted,
            self.file_bytes_evicted,
            self.chunks_corrupt,
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
    /// Opens (or creates, mode 0700) the cache in `dir`, bounded to `capacity` bytes.
    ///
    /// Refuses a directory owned by another user (`PermissionDenied`). Whatever in it others
    /// may read or write is made the daemon's alone (directories 0700, entries 0600, owned by
    /// this process's user); what others could write, and no read verifies (backing files), is
    /// deleted, with a warning.
    pub fn open(dir: &Path, capacity: u64) -> io::Result<ChunkCache> {
        let exposed = own_top_dir(dir)?;
        let mut found: Vec<(u128, Key, u64)> = Vec::new();
        scan_shards(dir, Kind::Chunk, exposed, &mut found)?;
        let files = dir.join(FILES_DIR);
        if files.is_dir() {
            let exposed = exposed | own_path(&files, &std::fs::metadata(&files)?, 0o700)?;
            scan_shards(&files, Kind::File, exposed, &mut found)?;
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
            verify_every_read: AtomicBool::new(true),
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

    /// Whether every read hashes the segments it touches (`true`, the default), or only the
    /// first read of each segment while its entry stays open (`false`: what the cache did before
    /// issue 17; bytes changed on disk after that first read would then be served). For
    /// measuring the cost of the checks (`pronto-lazyfs-tests`, `tests/cache_bench.rs`): not for
    /// production use.
    #[doc(hidden)]
    pub fn set_verify_every_read(&self, on: bool) {
        self.verify_every_read.store(on, Ordering::Relaxed);
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
                    return self.discard_corrupt(digest, "wrong length");
                }
                Some(_) if touch => st.touch(&key),
                Some(_) => {}
            }
        }
        match self.read_checked(digest, len, range) {
            Ok(bytes) => Lookup::Hit(bytes),
            Err(ReadError::Corrupt) => {
                self.discard_corrupt(digest, "bytes do not hash to the digest")
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
        let every_read = self.verify_every_read.load(Ordering::Relaxed);
        let to_check = |s: usize| every_read || !entry.checked[s].load(Ordering::Acquire);
        if !segments.clone().any(to_check) {
            return Ok(read_exact_at(&entry.file, start..end)?);
        }
        // Read the segments the range touches whole, and hash them: the bytes on disk may have
        // changed since they were last read (the kernel's cache of them dropped).
        let from = segments.start() * SEGMENT;
        let to = ((segments.end() + 1) * SEGMENT).min(len as usize);
        let mut buf = read_exact_at(&entry.file, from..to)?;
        for s in segments.filter(|&s| to_check(s)) {
            let at = s * SEGMENT - from;
            let seg = &buf[at..(at + SEGMENT).min(buf.len())];
            let sound = if entry.values.is_empty() {
                // A chunk of one segment: its digest is the hash of all of it.
                &pronto_format::chunk_digest(seg) == digest
            } else {
                segment_value(seg, s) == entry.values[s]
            };
            if !sound {
                return Err(ReadError::Corrupt);
            }
            entry.checked[s].store(true, Ordering::Release);
        }
        if start == from {
            buf.truncate(end - from);
            Ok(buf)
        } else {
            Ok(buf[start - from..end - from].to_vec())
        }
    }

    /// The open entry, opening it (and checking its chaining values) if need be.
    fn open_entry(&self, digest: &[u8; 32], len: u32) -> Result<Arc<OpenEntry>, ReadError> {
        if let Some(e) = self.open_files().get(digest) {
            return Ok(e.clone());
        }
        let file = File::open(self.path_of(digest))?;
        let entry = if len as usize <= SEGMENT {
            // Hashed whole by each read.
            OpenEntry::new(file, len, Vec::new(), false)
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
            OpenEntry::new(file, len, values, false)
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
        create_private_dirs(shard)?;
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
            chunks_corrupt: c.chunks_corrupt.load(Ordering::Relaxed),
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
                let entry = OpenEntry::new(file, data.len() as u32, values.to_vec(), true);
                self.keep_open(digest, entry);
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
        create_private_dirs(shard)?;
        // `tempfile` creates it 0600.
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

    /// Deletes the corrupt entry of `digest`: `Corrupt` for the caller that removed it (counted
    /// and logged once; the caller refetches the chunk), `Miss` for a reader that found it gone
    /// already.
    fn discard_corrupt(&self, digest: &[u8; 32], why: &str) -> Lookup {
        let key = (Kind::Chunk, *digest);
        let removed = self.lock().remove(&key).is_some();
        self.close(digest);
        let _ = std::fs::remove_file(self.key_path(&key));
        if !removed {
            return Lookup::Miss;
        }
        self.counters.chunks_corrupt.fetch_add(1, Ordering::Relaxed);
        warn!(chunk = %hex::encode(digest), why, "corrupt chunk cache entry deleted; refetching");
        Lookup::Corrupt
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
/// (mtime, key, size); removes what is not an entry (temporaries left by a crash mid-write,
/// anything but a regular file). Makes shards and entries the daemon's alone ([`own_path`]);
/// backing files that others could have written (`exposed`: `dir` was open to them) are
/// deleted, as no read verifies them.
fn scan_shards(
    dir: &Path,
    kind: Kind,
    exposed: bool,
    found: &mut Vec<(u128, Key, u64)>,
) -> io::Result<()> {
    // Paths others could write (made the daemon's), and backing files deleted for it.
    let (mut fixed, mut deleted) = (0u64, 0u64);
    for shard in std::fs::read_dir(dir)? {
        let shard = shard?;
        let name = shard.file_name();
        let is_shard = name.len() == 2 && name.as_bytes().iter().all(u8::is_ascii_hexdigit);
        if !is_shard || !shard.file_type()?.is_dir() {
            continue;
        }
        let shard_exposed = own_path(&shard.path(), &shard.metadata()?, 0o700)?;
        fixed += u64::from(shard_exposed);
        let exposed = exposed | shard_exposed;
        for f in std::fs::read_dir(shard.path())? {
            let f = f?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            let mut digest = [0u8; 32];
            let meta = f.metadata()?;
            if name.len() != 64
                || hex::decode_to_slice(name.as_bytes(), &mut digest).is_err()
                || !meta.is_file()
            {
                // A temporary left by a crash mid-write, or a stranger: not an entry.
                let _ = std::fs::remove_file(f.path());
                continue;
            }
            let entry_exposed = own_path(&f.path(), &meta, 0o600)?;
            fixed += u64::from(entry_exposed);
            if (exposed | entry_exposed) && kind == Kind::File {
                let _ = std::fs::remove_file(f.path());
                deleted += 1;
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            found.push((mtime, (kind, digest), meta.len()));
        }
    }
    if fixed + deleted > 0 {
        warn!(
            dir = %dir.display(),
            fixed,
            deleted,
            "chunk cache paths others could write made the daemon's alone; backing files among \
             them deleted (no read verifies them)"
        );
    }
    Ok(())
}

/// Creates `dir` and its missing parents, mode 0700 (before the umask).
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The cache's directory, created 0700 if missing (its parents as the umask says). Refused if
/// it is not a directory or is owned by another user; made the daemon's alone otherwise
/// ([`own_path`]). Whether others could write it until now.
fn own_top_dir(dir: &Path) -> io::Result<bool> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("chunk cache {} is not a directory", dir.display()),
        ));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "chunk cache directory {} is owned by uid {}, not by this process's uid {euid}: \
                 its owner could change what the daemon serves",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    let exposed = own_path(dir, &meta, 0o700)?;
    if exposed {
        warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.mode() & 0o7777),
            "chunk cache directory was writable by group or others: made 0700"
        );
    }
    Ok(exposed)
}

/// Makes `path` (whose metadata is `meta`, not following a link) owned by this process's user
/// with no permission for group or others: its mode becomes `mode & meta's mode` (0700 for a
/// directory, 0600 for a file). Returns whether others could write it until now (another
/// owner, or a group/other write bit); the caller logs it.
fn own_path(path: &Path, meta: &std::fs::Metadata, mode: u32) -> io::Result<bool> {
    let euid = rustix::process::geteuid().as_raw();
    let old = meta.mode() & 0o7777;
    let exposed = meta.uid() != euid || old & 0o022 != 0;
    if meta.uid() != euid {
        std::os::unix::fs::chown(path, Some(euid), None)?;
    }
    if old & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(old & mode))?;
    }
    Ok(exposed)
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

    /// Flips bits in the byte at `at` of `path` in place: the same inode, which the cache keeps
    /// open.
    fn flip(path: &Path, at: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x21], at).unwrap();
    }

    #[test]
    fn bytes_changed_after_their_first_read_are_refused_on_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let seg = SEGMENT as u32;
        // A chunk of three segments and one of a single segment, both read (and checked) once,
        // from the open entries the cache keeps.
        let (big, big_data) = chunk(13, 3 * SEGMENT);
        let (small, small_data) = chunk(17, 3000);
        insert(&cache, &big, &big_data);
        insert(&cache, &small, &small_data);
        let path = |d: &[u8; 32]| {
            let hex = hex::encode(d);
            dir.path().join(&hex[..2]).join(hex)
        };
        for _ in 0..2 {
            assert_eq!(
                cache.read(&big, 3 * seg, seg..seg + 10),
                Lookup::Hit(big_data[SEGMENT..SEGMENT + 10].to_vec())
            );
            assert_eq!(
                cache.read(&small, 3000, 0..3000),
                Lookup::Hit(small_data.clone())
            );
        }
        flip(&path(&big), u64::from(seg) + 5000);
        flip(&path(&small), 2999);
        // Other segments of the big chunk are still served; the changed one is not, even for a
        // range that does not include the changed byte.
        assert_eq!(
            cache.read(&big, 3 * seg, 0..10),
            Lookup::Hit(big_data[..10].to_vec())
        );
        assert_eq!(cache.read(&big, 3 * seg, seg..seg + 10), Lookup::Corrupt);
        assert_eq!(cache.read(&small, 3000, 0..10), Lookup::Corrupt);
        assert!(!path(&big).exists() && !path(&small).exists());
        // Reported once: the next reads are misses.
        assert_eq!(cache.read(&big, 3 * seg, 0..10), Lookup::Miss);
        assert_eq!(cache.read(&small, 3000, 0..10), Lookup::Miss);
        let s = cache.stats();
        assert_eq!((s.chunks_corrupt, s.chunks), (2, 0), "{s}");
        assert_eq!(
            s.to_string(),
            format!(
                "0 chunks (0 B) and 0 backing files (0 B) of {} B; evicted 0 chunks, 0 files \
                 (0 B); 2 corrupt chunks deleted; materialized 0 files (0 B)",
                1u64 << 30
            )
        );

        // With every read verified off (the measurement's baseline), a segment checked once is
        // trusted: the changed byte is served.
        cache.set_verify_every_read(false);
        insert(&cache, &big, &big_data);
        assert!(matches!(cache.read(&big, 3 * seg, 0..10), Lookup::Hit(_)));
        flip(&path(&big), 3);
        assert!(matches!(cache.read(&big, 3 * seg, 0..10), Lookup::Hit(b) if b != big_data[..10]));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_cache_is_created_for_the_daemon_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node/chunks");
        let cache = ChunkCache::open(&root, 1 << 30).unwrap();
        let (d, data) = chunk(3, 2 * SEGMENT);
        insert(&cache, &d, &data);
        let (refs, content) = cached_file(&cache, 40, &[1000]);
        let no = AtomicBool::new(false);
        let key = file_key(&refs);
        cache
            .materialize(&key, &refs, content.len() as u64, &no)
            .unwrap();
        let hex = hex::encode(d);
        let key_hex = hex::encode(key);
        let backing = root.join("files").join(&key_hex[..2]).join(&key_hex);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(&hex[..2])), 0o700);
        assert_eq!(mode(&root.join(&hex[..2]).join(&hex)), 0o600);
        assert_eq!(mode(&root.join("files")), 0o700);
        assert_eq!(mode(backing.parent().unwrap()), 0o700);
        assert_eq!(mode(&backing), 0o600);
    }

    #[test]
    fn a_cache_others_could_write_is_tightened_and_its_backing_files_dropped() {
        use std::fs::{set_permissions, Permissions};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("chunks");
        let no = AtomicBool::new(false);
        let (d, data) = chunk(3, 2 * SEGMENT);
        let key = {
            let cache = ChunkCache::open(&root, 1 << 30).unwrap();
            insert(&cache, &d, &data);
            let (refs, content) = cached_file(&cache, 40, &[1000]);
            let key = file_key(&refs);
            cache
                .materialize(&key, &refs, content.len() as u64, &no)
                .unwrap();
            key
        };
        let hex = hex::encode(d);
        let entry = root.join(&hex[..2]).join(&hex);

        // Only readable by others (as caches made before were, 0755/0644): tightened, kept.
        set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        set_permissions(&entry, Permissions::from_mode(0o644)).unwrap();
        let cache = ChunkCache::open(&root, 1 << 30).unwrap();
        assert_eq!((mode(&root), mode(&entry)), (0o700, 0o600));
        assert_eq!((cache.stats().chunks, cache.stats().files), (2, 1));
        drop(cache);

        // Writable by others: tightened; the chunks are kept (every read checks them), the
        // backing file, which no read checks, is deleted.
        set_permissions(&root, Permissions::from_mode(0o777)).unwrap();
        let cache = ChunkCache::open(&root, 1 << 30).unwrap();
        assert_eq!(mode(&root), 0o700);
        let s = cache.stats();
        assert_eq!((s.chunks, s.files), (2, 0), "{s}");
        assert!(cache.open_file(&key, 1000).is_none());
        assert_eq!(
            cache.read(&d, data.len() as u32, 0..10),
            Lookup::Hit(data[..10].to_vec())
        );
        drop(cache);

        // A backing file writable by others (its directory sound), or owned by another user:
        // deleted; a chunk entry owned by another user: made the daemon's.
        let rebuild = || {
            let cache = ChunkCache::open(&root, 1 << 30).unwrap();
            let (refs, content) = cached_file(&cache, 40, &[1000]);
            cache
                .materialize(&file_key(&refs), &refs, content.len() as u64, &no)
                .unwrap();
        };
        let key_hex = hex::encode(key);
        let backing = root.join("files").join(&key_hex[..2]).join(&key_hex);
        rebuild();
        set_permissions(&backing, Permissions::from_mode(0o622)).unwrap();
        assert_eq!(ChunkCache::open(&root, 1 << 30).unwrap().stats().files, 0);
        assert!(!backing.exists());
        rebuild();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&backing, Some(65534), None).unwrap();
            std::os::unix::fs::chown(&entry, Some(65534), None).unwrap();
            let cache = ChunkCache::open(&root, 1 << 30).unwrap();
            assert_eq!((cache.stats().chunks, cache.stats().files), (2, 0));
            assert!(!backing.exists());
            assert_eq!(std::fs::metadata(&entry).unwrap().uid(), 0);
        }
    }

    #[test]
    fn a_cache_directory_of_another_user_is_refused() {
        if !rustix::process::geteuid().is_root() {
            return; // chown needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("chunks");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), None).unwrap();
        let err = ChunkCache::open(&root, 1 << 30).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            format!(
                "chunk cache directory {} is owned by uid 65534, not by this process's uid 0: \
                 its owner could change what the daemon serves",
                root.display()
            )
        );
        // A file where the directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = ChunkCache::open(&file, 1 << 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("chunk cache {} is not a directory", file.display())
        );
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
