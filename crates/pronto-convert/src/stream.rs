//! Chunking straight from the layer streams. During the unpack, each regular file's bytes are
//! cut into chunks, hashed and — the first time a digest is seen, unless the memo has it —
//! compressed on all cores, the stored bytes appended to one staging file. The unpacked tree gets
//! every node with its metadata, but its files are sparse (length, no data): file data is never
//! written to disk nor read back. Packs are assembled afterwards, in walk order, from the staged
//! bytes, so they do not depend on the order in which workers finished.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use pronto_format::{ChunkCompressor, Compression};
use pronto_image::unpack::{ContentSink, FileOrigin};

use crate::memo::MemoChunk;

/// Raw chunk bytes handed to workers and not processed yet, at most (bounds memory).
const IN_FLIGHT_BYTES: usize = 64 << 20;

/// (layer index, entry path): a tar entry, as the unpacker's [`FileOrigin`] names it.
pub type EntryKey = (usize, Vec<u8>);

/// Where a compressed chunk waits in the staging file.
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    pub offset: u64,
    pub len: u32,
    pub compression: Compression,
}

/// A chunk of a streamed file: digest and uncompressed length.
pub type StreamedChunk = ([u8; 32], u32);

/// What the streams left: every streamed file's chunks, and the stored bytes of each new digest.
pub struct Streamed {
    pub files: HashMap<EntryKey, Vec<StreamedChunk>>,
    pub staged: HashMap<[u8; 32], Staged>,
    stage: std::fs::File,
    /// Bytes of file content hashed.
    pub hashed_bytes: u64,
}

impl Streamed {
    /// The stored bytes of a staged chunk.
    pub fn read(&self, s: &Staged) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; s.len as usize];
        self.stage.read_exact_at(&mut buf, s.offset)?;
        Ok(buf)
    }
}

/// The unpacker's [`ContentSink`]: reads each file's chunks and hands them to rayon workers.
pub struct ChunkSink {
    shared: Arc<Shared>,
}

struct Shared {
    chunk_size: usize,
    compression: Compression,
    /// Chunks the repository already stores: hashed, not compressed.
    known: Arc<HashMap<[u8; 32], MemoChunk>>,
    /// Files taken whole from the layer memo, by entry and size: not even hashed.
    skip: Arc<HashMap<EntryKey, u64>>,
    stage: std::fs::File,
    stage_end: AtomicU64,
    state: Mutex<State>,
    /// Signalled when a worker finishes (frees budget).
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Chunk slots in stream order, filled by the workers.
    slots: Vec<Option<StreamedChunk>>,
    /// Each streamed file's slots; a later entry of the same path replaces the earlier one, as
    /// it does in the tree.
    files: HashMap<EntryKey, std::ops::Range<usize>>,
    /// New digests a worker took on; present in `staged` once written.
    claimed: HashSet<[u8; 32]>,
    staged: HashMap<[u8; 32], Staged>,
    in_flight: usize,
    hashed_bytes: u64,
    /// A worker's failure, reported by the next `file` call and by `finish`.
    error: Option<io::Error>,
}

thread_local! {
    /// Each worker thread keeps its zstd context from chunk to chunk.
    static COMPRESSOR: RefCell<ChunkCompressor> = RefCell::default();
}

impl ChunkSink {
    /// A sink staging compressed chunks in `stage` (a new file).
    pub fn new(
        stage: std::fs::File,
        chunk_size: u32,
        compression: Compression,
        known: Arc<HashMap<[u8; 32], MemoChunk>>,
        skip: Arc<HashMap<EntryKey, u64>>,
    ) -> ChunkSink {
        ChunkSink {
            shared: Arc::new(Shared {
                chunk_size: chunk_size as usize,
                compression,
                known,
                skip,
                stage,
                stage_end: AtomicU64::new(0),
                state: Mutex::default(),
                done: Condvar::new(),
            }),
        }
    }

    /// A handle to collect the results with once the unpack is over.
    pub fn results(&self) -> SinkResults {
        SinkResults {
            shared: self.shared.clone(),
        }
    }
}

impl ContentSink for ChunkSink {
    fn file(&mut self, origin: &FileOrigin, size: u64, content: &mut dyn Read) -> io::Result<u64> {
        let key = (origin.layer, origin.path.clone());
        if self.shared.skip.get(&key) == Some(&size) {
            return io::copy(content, &mut io::sink());
        }
        let first = self.shared.lock().slots.len();
        let mut read = 0u64;
        while read < size {
            // Sized to what the file still holds: most files are far smaller than a chunk.
            let len = (size - read).min(self.shared.chunk_size as u64) as usize;
            let mut data = vec![0u8; len];
            content.read_exact(&mut data)?;
            read += len as u64;
            let slot = {
                let mut state = self.shared.lock();
                while state.in_flight > 0 && state.in_flight + len > IN_FLIGHT_BYTES {
                    state = self.shared.done.wait(state).expect("sink state poisoned");
                }
                if let Some(e) = state.error.take() {
                    return Err(e);
                }
                state.in_flight += len;
                state.hashed_bytes += len as u64;
                state.slots.push(None);
                state.slots.len() - 1
            };
            let shared = self.shared.clone();
            rayon::spawn(move || shared.process(slot, data));
        }
        let mut state = self.shared.lock();
        let end = state.slots.len();
        state.files.insert(key, first..end);
        Ok(read)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sink state poisoned")
    }

    /// Hashes a chunk; compresses and stages it if this is the first time its digest is seen.
    fn process(&self, slot: usize, data: Vec<u8>) {
        let digest = pronto_format::chunk_digest(&data);
        let claim = !self.known.contains_key(&digest) && self.lock().claimed.insert(digest);
        let staged = if claim {
            let (stored, compression) =
                COMPRESSOR.with(|c| c.borrow_mut().compress(&data, self.compression));
            let offset = self
                .stage_end
                .fetch_add(stored.len() as u64, Ordering::Relaxed);
            Some(self.stage.write_all_at(&stored, offset).map(|()| Staged {
                offset,
                len: stored.len() as u32,
                compression,
            }))
        } else {
            None
        };
        let mut state = self.lock();
        match staged {
            Some(Ok(s)) => {
                state.staged.insert(digest, s);
            }
            Some(Err(e)) => {
                state.error.get_or_insert(e);
            }
            None => {}
        }
        state.slots[slot] = Some((digest, data.len() as u32));
        state.in_flight -= data.len();
        self.done.notify_all();
    }
}

/// Collects what the sink streamed, once the unpack is over.
pub struct SinkResults {
    shared: Arc<Shared>,
}

impl SinkResults {
    /// Waits for the workers, then takes the results (the sink, in the finished unpacker, has
    /// nothing more to hand out).
    pub fn finish(self) -> io::Result<Streamed> {
        let mut state = self.shared.lock();
        while state.in_flight > 0 {
            state = self.shared.done.wait(state).expect("sink state poisoned");
        }
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        let state = std::mem::take(&mut *state);
        let slots: Vec<StreamedChunk> = state
            .slots
            .into_iter()
            .map(|s| s.expect("every chunk processed"))
            .collect();
        let files = state
            .files
            .into_iter()
            .map(|(key, range)| (key, slots[range].to_vec()))
            .collect();
        Ok(Streamed {
            files,
            staged: state.staged,
            stage: self.shared.stage.try_clone()?,
            hashed_bytes: state.hashed_bytes,
        })
    }
}
