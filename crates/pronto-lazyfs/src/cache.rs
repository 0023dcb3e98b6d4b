//! The node chunk cache: decompressed chunks on local disk, addressed by their BLAKE3 digest,
//! shared by every mount (every image and function) on the node.
//!
//! - Layout: `DIR/<first 2 hex digits>/<64 hex digits>`, one file per chunk, written to a
//!   temporary name and renamed into place, so a crash never leaves a half-written entry under
//!   a digest name (leftover temporaries are removed when the cache is opened). An entry is the
//!   chunk's bytes followed, for chunks longer than one segment
//!   ([`pronto_format::SEGMENT_SIZE`], 64 KiB), by the BLAKE3 chaining value of each segment
//!   (32 bytes each, [`pronto_format::segment_values`]): the segments are subtrees of the
//!   chunk's BLAKE3 tree, so those values combine into the chunk's digest.
//! - Bounded in bytes: when an insert pushes the total over the capacity, the least recently
//!   used entries are deleted. Recency is kept in memory; at open it is seeded from the files'
//!   mtimes, so a restart keeps roughly the old order.
//! - Survives restarts: `open` scans the directory.
//! - Trusts nothing it reads back, and checks only what it serves: when an entry is first used
//!   after open, its chaining values are combined and compared with the digest (a short chunk
//!   is hashed whole); each segment is hashed and compared with its value the first time a read
//!   touches it. So a random 4 KiB read of a cold entry costs one 64 KiB read, not the whole
//!   chunk. A corrupt entry is deleted and reported as such (the caller refetches it). Entries
//!   are kept open (up to a bound) with what was checked, and read with `pread`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use pronto_format::{digest_of_segments, segment_value, SegmentValue, SEGMENT_SIZE as SEGMENT};
use tracing::{debug, warn};

/// Bytes on disk of the entry of a chunk of `len` bytes.
fn entry_size(len: u64) -> u64 {
    if len <= SEGMENT as u64 {
        len
    } else {
        len + 32 * len.div_ceil(SEGMENT as u64)
    }
}

#[derive(Debug)]
struct Entry {
    /// Bytes of the file (chunk plus chaining values).
    size: u64,
    tick: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    /// tick → digest, oldest first.
    lru: BTreeMap<u64, [u8; 32]>,
    total: u64,
    next_tick: u64,
}

impl State {
    fn touch(&mut self, digest: &[u8; 32]) {
        let tick = self.next_tick;
        if let Some(e) = self.entries.get_mut(digest) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *digest);
            self.next_tick += 1;
        }
    }

    fn add(&mut self, digest: &[u8; 32], size: u64) {
        if self.entries.contains_key(digest) {
            return;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(*digest, Entry { size, tick });
        self.lru.insert(tick, *digest);
        self.total += size;
    }

    fn remove(&mut self, digest: &[u8; 32]) -> Option<Entry> {
        let e = self.entries.remove(digest)?;
        self.lru.remove(&e.tick);
        self.total -= e.size;
        Some(e)
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
    /// Entries deleted to stay within the bound, since open.
    evictions: AtomicU64,
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
        let mut found: Vec<(u128, [u8; 32], u64)> = Vec::new();
        for shard in std::fs::read_dir(dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
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
                found.push((mtime, digest, meta.len()));
            }
        }
        found.sort_unstable();
        let mut state = State::default();
        for (_, digest, size) in found {
            state.add(&digest, size);
        }
        let cache = ChunkCache {
            dir: dir.to_owned(),
            capacity,
            state: Mutex::new(state),
            open: Mutex::default(),
            max_open: open_files_bound(),
            evictions: AtomicU64::new(0),
        };
        cache.evict();
        Ok(cache)
    }

    fn path_of(&self, digest: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(digest);
        self.dir.join(&hex[..2]).join(hex)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("chunk cache lock poisoned")
    }

    fn open_files(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<OpenEntry>>> {
        self.open.lock().expect("open files lock poisoned")
    }

    /// Bytes `range` of the chunk `digest` (whose full length is `len`), if cached and sound.
    pub fn read(&self, digest: &[u8; 32], len: u32, range: std::ops::Range<u32>) -> Lookup {
        {
            let mut st = self.lock();
            match st.entries.get(digest) {
                None => return Lookup::Miss,
                Some(e) if e.size != entry_size(u64::from(len)) => {
                    drop(st);
                    self.discard(digest);
                    return Lookup::Corrupt;
                }
                Some(_) => st.touch(digest),
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
                self.lock().remove(digest);
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
        self.lock().entries.contains_key(digest)
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
        self.lock().add(digest, size);
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
                let Some((_, digest)) = st.lru.pop_first() else {
                    break;
                };
                if let Some(e) = st.entries.remove(&digest) {
                    st.total -= e.size;
                }
                victims.push(digest);
            }
        }
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        for digest in victims {
            self.close(&digest);
            let _ = std::fs::remove_file(self.path_of(&digest));
        }
    }

    fn discard(&self, digest: &[u8; 32]) {
        self.lock().remove(digest);
        self.close(digest);
        let _ = std::fs::remove_file(self.path_of(digest));
    }

    /// Bytes stored (chunks and their chaining values).
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Entries stored.
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

    /// Entries deleted to stay within the bound since the cache was opened (corrupt entries
    /// deleted on read are not counted).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
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
