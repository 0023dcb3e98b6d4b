//! The node chunk cache: decompressed chunks on local disk, addressed by their BLAKE3 digest,
//! shared by every mount (every image and function) on the node.
//!
//! - Layout: `DIR/<first 2 hex digits>/<64 hex digits>`, one file per chunk, written to a
//!   temporary name and renamed into place, so a crash never leaves a half-written entry under
//!   a digest name (leftover temporaries are removed when the cache is opened).
//! - Bounded in bytes: when an insert pushes the total over the capacity, the least recently
//!   used entries are deleted. Recency is kept in memory; at open it is seeded from the files'
//!   mtimes, so a restart keeps roughly the old order.
//! - Survives restarts: `open` scans the directory.
//! - Trusts nothing it reads back: the first read of an entry after open checks its length and
//!   BLAKE3; a corrupt entry is deleted and reported as a miss (the caller refetches it).
//!   Entries this process wrote or checked are read with `pread` of just the range asked for.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use tracing::warn;

#[derive(Debug)]
struct Entry {
    size: u64,
    tick: u64,
    /// Checked (length and BLAKE3) since this process opened the cache.
    verified: bool,
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

    fn remove(&mut self, digest: &[u8; 32]) -> Option<Entry> {
        let e = self.entries.remove(digest)?;
        self.lru.remove(&e.tick);
        self.total -= e.size;
        Some(e)
    }
}

/// Open files of checked entries kept at most: a read of one is then a single `pread`, with
/// no path lookup or open (which cost disk reads of the cache's directories once the kernel
/// dropped their dentries).
const MAX_OPEN_ENTRIES: usize = 256;

/// The node's chunk cache. Shared (`Arc`) by every mount; all methods take `&self`.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    open: Mutex<HashMap<[u8; 32], Arc<File>>>,
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
            let tick = state.next_tick;
            state.next_tick += 1;
            state.entries.insert(
                digest,
                Entry {
                    size,
                    tick,
                    verified: false,
                },
            );
            state.lru.insert(tick, digest);
            state.total += size;
        }
        let cache = ChunkCache {
            dir: dir.to_owned(),
            capacity,
            state: Mutex::new(state),
            open: Mutex::default(),
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

    /// Bytes `range` of the chunk `digest` (whose full length is `len`), if cached and sound.
    pub fn read(&self, digest: &[u8; 32], len: u32, range: std::ops::Range<u32>) -> Lookup {
        let verified = {
            let mut st = self.lock();
            match st.entries.get(digest) {
                None => return Lookup::Miss,
                Some(e) if e.size != u64::from(len) => {
                    drop(st);
                    self.discard(digest);
                    return Lookup::Corrupt;
                }
                Some(e) => {
                    let v = e.verified;
                    st.touch(digest);
                    v
                }
            }
        };
        let path = self.path_of(digest);
        let result = if verified {
            self.open_entry(digest, &path)
                .and_then(|f| read_range(&f, range.clone()))
        } else {
            // First use since open: check the whole entry once.
            match std::fs::read(&path) {
                Ok(data)
                    if data.len() == len as usize && blake3::hash(&data).as_bytes() == digest =>
                {
                    if let Some(e) = self.lock().entries.get_mut(digest) {
                        e.verified = true;
                    }
                    Ok(data[range.start as usize..range.end as usize].to_vec())
                }
                Ok(_) => {
                    self.discard(digest);
                    return Lookup::Corrupt;
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(bytes) if bytes.len() == range.len() => Lookup::Hit(bytes),
            Ok(_) => {
                self.discard(digest);
                Lookup::Corrupt
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Evicted between the lookup and the read, or deleted behind our back.
                self.lock().remove(digest);
                self.close(digest);
                Lookup::Miss
            }
            Err(e) => {
                warn!(chunk = %hex::encode(digest), error = %e, "chunk cache read failed");
                self.discard(digest);
                Lookup::Miss
            }
        }
    }

    fn open_entry(&self, digest: &[u8; 32], path: &Path) -> io::Result<Arc<File>> {
        if let Some(f) = self
            .open
            .lock()
            .expect("open files lock poisoned")
            .get(digest)
        {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(path)?);
        let mut open = self.open.lock().expect("open files lock poisoned");
        if open.len() >= MAX_OPEN_ENTRIES {
            // Any one: cheap, and a closed entry only costs an open next time.
            if let Some(k) = open.keys().next().copied() {
                open.remove(&k);
            }
        }
        open.insert(*digest, f.clone());
        Ok(f)
    }

    fn close(&self, digest: &[u8; 32]) {
        self.open
            .lock()
            .expect("open files lock poisoned")
            .remove(digest);
    }

    /// Whether the chunk is cached (not checked).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// Stores a chunk the caller has verified. Failures are logged, not returned: the cache is
    /// an optimisation and the reader already has its bytes.
    pub fn insert(&self, digest: &[u8; 32], data: &[u8]) {
        if self.contains(digest) || data.len() as u64 > self.capacity {
            return;
        }
        if let Err(e) = self.write_entry(digest, data) {
            warn!(chunk = %hex::encode(digest), error = %e, "chunk cache write failed");
            return;
        }
        {
            let mut st = self.lock();
            if !st.entries.contains_key(digest) {
                let tick = st.next_tick;
                st.next_tick += 1;
                st.entries.insert(
                    *digest,
                    Entry {
                        size: data.len() as u64,
                        tick,
                        verified: true,
                    },
                );
                st.lru.insert(tick, *digest);
                st.total += data.len() as u64;
            }
        }
        self.evict();
    }

    fn write_entry(&self, digest: &[u8; 32], data: &[u8]) -> io::Result<()> {
        let path = self.path_of(digest);
        let shard = path.parent().expect("entry has a shard dir");
        std::fs::create_dir_all(shard)?;
        let mut tmp = tempfile::NamedTempFile::new_in(shard)?;
        tmp.write_all(data)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
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

    /// Bytes stored.
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

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_range(f: &File, range: std::ops::Range<u32>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; range.len()];
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], u64::from(range.start) + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, len: usize) -> ([u8; 32], Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        (*blake3::hash(&data).as_bytes(), data)
    }

    #[test]
    fn stores_reads_ranges_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (d, data) = chunk(7, 10_000);
        {
            let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(cache.read(&d, 10_000, 0..10), Lookup::Miss);
            cache.insert(&d, &data);
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
        ChunkCache::open(dir.path(), 1 << 20)
            .unwrap()
            .insert(&d, &data);
        let hex = hex::encode(d);
        let path = dir.path().join(&hex[..2]).join(&hex);
        let mut bad = data.clone();
        bad[4000] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Corrupt);
        assert!(!path.exists());
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Miss);
        // A truncated entry too.
        cache.insert(&d, &data);
        std::fs::write(&path, &data[..100]).unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.read(&d, 5000, 0..10), Lookup::Corrupt);
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 25_000).unwrap();
        let (a, da) = chunk(1, 10_000);
        let (b, db) = chunk(2, 10_000);
        let (c, dc) = chunk(5, 10_000);
        cache.insert(&a, &da);
        cache.insert(&b, &db);
        // Use `a`, so `b` is the oldest when `c` needs room.
        assert!(matches!(cache.read(&a, 10_000, 0..1), Lookup::Hit(_)));
        cache.insert(&c, &dc);
        assert_eq!(cache.total_bytes(), 20_000);
        assert_eq!(cache.read(&b, 10_000, 0..1), Lookup::Miss);
        assert!(matches!(cache.read(&a, 10_000, 0..1), Lookup::Hit(_)));
        assert!(matches!(cache.read(&c, 10_000, 0..1), Lookup::Hit(_)));
        // A smaller bound at reopen evicts down to it.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), 10_000).unwrap();
        assert_eq!(cache.len(), 1);
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
