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

#[cfg(test)]
mod tests {
    use pronto_format::ChunkRef;

    use super::*;

    const CHUNK: u32 = 4096;

    /// Incompressible, reproducible bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        sink: ChunkSink,
        results: SinkResults,
    }

    fn sink_with(
        compression: Compression,
        known: HashMap<[u8; 32], MemoChunk>,
        skip: HashMap<EntryKey, u64>,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let stage = std::fs::File::create_new(dir.path().join("staged")).unwrap();
        let sink = ChunkSink::new(stage, CHUNK, compression, Arc::new(known), Arc::new(skip));
        let results = sink.results();
        Fixture {
            _dir: dir,
            sink,
            results,
        }
    }

    fn sink(compression: Compression) -> Fixture {
        sink_with(compression, HashMap::new(), HashMap::new())
    }

    fn origin(layer: usize, path: &str) -> FileOrigin {
        FileOrigin {
            layer,
            path: path.as_bytes().to_vec(),
        }
    }

    fn feed(sink: &mut ChunkSink, layer: usize, path: &str, content: &[u8]) {
        let read = sink
            .file(
                &origin(layer, path),
                content.len() as u64,
                &mut &content[..],
            )
            .unwrap();
        assert_eq!(read, content.len() as u64);
    }

    fn key(layer: usize, path: &str) -> EntryKey {
        (layer, path.as_bytes().to_vec())
    }

    /// The file's bytes, rebuilt from the staged chunks (each decompressed and its digest
    /// checked).
    fn rebuild(streamed: &Streamed, chunks: &[StreamedChunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(digest, len) in chunks {
            let s = streamed.staged[&digest];
            let stored = streamed.read(&s).unwrap();
            let chunk = ChunkRef {
                digest,
                pack: 0,
                compression: s.compression,
                offset: 0,
                compressed_size: s.len,
                uncompressed_size: len,
            };
            out.extend(pronto_format::decompress_chunk(&stored, &chunk).unwrap());
        }
        out
    }

    #[test]
    fn files_are_cut_into_chunks_of_the_chunk_size_with_their_blake3() {
        let mut f = sink(Compression::Zstd);
        let sizes = [
            0,
            1,
            CHUNK as usize - 1,
            CHUNK as usize,
            3 * CHUNK as usize + 100,
        ];
        let files: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| (format!("f{i}"), noise(len, i as u64 + 1)))
            .collect();
        for (path, content) in &files {
            feed(&mut f.sink, 0, path, content);
        }
        let streamed = f.results.finish().unwrap();
        assert_eq!(streamed.files.len(), files.len());
        assert_eq!(streamed.hashed_bytes, sizes.iter().sum::<usize>() as u64);
        for (path, content) in &files {
            let chunks = &streamed.files[&key(0, path)];
            let want: Vec<StreamedChunk> = content
                .chunks(CHUNK as usize)
                .map(|c| (*blake3::hash(c).as_bytes(), c.len() as u32))
                .collect();
            assert_eq!(chunks, &want, "{path}");
            assert_eq!(&rebuild(&streamed, chunks), content, "{path}");
        }
    }

    #[test]
    fn staged_bytes_decode_to_the_input_whatever_the_compression() {
        for compression in [Compression::Zstd, Compression::Lz4, Compression::None] {
            let mut f = sink(compression);
            let text: Vec<u8> = b"compressible text "
                .iter()
                .cycle()
                .take(5 * CHUNK as usize / 2)
                .copied()
                .collect();
            let random = noise(2 * CHUNK as usize + 7, 9);
            feed(&mut f.sink, 0, "text", &text);
            feed(&mut f.sink, 1, "random", &random);
            let streamed = f.results.finish().unwrap();
            let text_chunks = &streamed.files[&key(0, "text")];
            assert_eq!(rebuild(&streamed, text_chunks), text, "{compression:?}");
            assert_eq!(
                rebuild(&streamed, &streamed.files[&key(1, "random")]),
                random,
                "{compression:?}"
            );
            let first = streamed.staged[&text_chunks[0].0];
            if compression == Compression::None {
                assert_eq!(first.compression, Compression::None);
                assert_eq!(first.len, CHUNK);
            } else {
                assert_eq!(first.compression, compression);
                assert!(first.len < CHUNK / 4, "{compression:?}: {first:?}");
            }
        }
    }

    #[test]
    fn identical_chunks_are_staged_once() {
        let mut f = sink(Compression::None);
        let a = noise(CHUNK as usize, 1);
        let b = noise(CHUNK as usize, 2);
        // a, b, a inside one file; the same file twice more under other names and layers.
        let content = [a.clone(), b.clone(), a.clone()].concat();
        feed(&mut f.sink, 0, "x", &content);
        feed(&mut f.sink, 0, "y", &content);
        feed(&mut f.sink, 2, "x", &content);
        feed(&mut f.sink, 2, "just-b", &b);
        let streamed = f.results.finish().unwrap();
        assert_eq!(
            streamed.hashed_bytes,
            10 * u64::from(CHUNK),
            "each copy is hashed"
        );
        let (da, db) = (*blake3::hash(&a).as_bytes(), *blake3::hash(&b).as_bytes());
        assert_eq!(
            streamed.staged.keys().copied().collect::<HashSet<_>>(),
            HashSet::from([da, db])
        );
        // Stored once each: the staging file holds exactly two chunks, at distinct offsets.
        let mut offsets: Vec<u64> = streamed.staged.values().map(|s| s.offset).collect();
        offsets.sort();
        assert_eq!(offsets, [0, u64::from(CHUNK)]);
        assert_eq!(
            streamed.stage.metadata().unwrap().len(),
            2 * u64::from(CHUNK)
        );
        for k in [key(0, "x"), key(0, "y"), key(2, "x")] {
            assert_eq!(
                streamed.files[&k],
                [(da, CHUNK), (db, CHUNK), (da, CHUNK)],
                "{k:?}"
            );
            assert_eq!(rebuild(&streamed, &streamed.files[&k]), content);
        }
    }

    #[test]
    fn chunks_the_repository_has_are_hashed_but_not_staged() {
        let stored = noise(CHUNK as usize, 1);
        let new = noise(CHUNK as usize, 2);
        let known = HashMap::from([(
            *blake3::hash(&stored).as_bytes(),
            MemoChunk {
                pack: pronto_image::Digest::from_bytes([0xa; 32]),
                pack_size: 1 << 20,
                offset: 0,
                compressed_size: CHUNK,
                compression: Compression::None,
            },
        )]);
        let mut f = sink_with(Compression::Zstd, known, HashMap::new());
        feed(&mut f.sink, 0, "f", &[stored.clone(), new.clone()].concat());
        let streamed = f.results.finish().unwrap();
        let (ds, dn) = (
            *blake3::hash(&stored).as_bytes(),
            *blake3::hash(&new).as_bytes(),
        );
        assert_eq!(streamed.files[&key(0, "f")], [(ds, CHUNK), (dn, CHUNK)]);
        assert_eq!(streamed.staged.keys().collect::<Vec<_>>(), [&dn]);
        assert_eq!(streamed.hashed_bytes, 2 * u64::from(CHUNK));
    }

    #[test]
    fn files_of_converted_layers_are_read_past_not_chunked() {
        let content = noise(2 * CHUNK as usize, 3);
        let skip = HashMap::from([(key(1, "old"), content.len() as u64)]);
        let mut f = sink_with(Compression::Zstd, HashMap::new(), skip);
        let mut reader = std::io::Cursor::new(&content);
        let read = f
            .sink
            .file(&origin(1, "old"), content.len() as u64, &mut reader)
            .unwrap();
        assert_eq!(read, content.len() as u64);
        assert_eq!(reader.position(), read, "the stream is read past the file");
        // The same path in another layer, another path, the same entry with another size:
        // chunked.
        feed(&mut f.sink, 2, "old", &content);
        feed(&mut f.sink, 1, "other", &content[..10]);
        let grown = [content.clone(), vec![0]].concat();
        feed(&mut f.sink, 1, "old", &grown);
        let streamed = f.results.finish().unwrap();
        assert_eq!(streamed.files.len(), 3, "{:?}", streamed.files.keys());
        assert_eq!(streamed.files[&key(1, "old")].len(), 3, "the grown file");
        assert_eq!(
            streamed.hashed_bytes,
            2 * content.len() as u64 + 10 + 1,
            "the skipped file is not hashed"
        );
    }

    #[test]
    fn a_later_entry_of_the_same_path_replaces_the_earlier() {
        let mut f = sink(Compression::Zstd);
        feed(&mut f.sink, 0, "f", &noise(3 * CHUNK as usize, 1));
        feed(&mut f.sink, 0, "f", b"short");
        let streamed = f.results.finish().unwrap();
        assert_eq!(
            streamed.files[&key(0, "f")],
            [(*blake3::hash(b"short").as_bytes(), 5)]
        );
    }

    #[test]
    fn a_short_stream_and_a_failed_write_are_errors() {
        let mut f = sink(Compression::Zstd);
        let e = f
            .sink
            .file(&origin(0, "f"), 100, &mut &[0u8; 10][..])
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        // A staging file opened read-only: the worker's write fails, and finish says so.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        std::fs::write(&path, b"").unwrap();
        let stage = std::fs::File::open(&path).unwrap();
        let mut sink = ChunkSink::new(
            stage,
            CHUNK,
            Compression::Zstd,
            Arc::default(),
            Arc::default(),
        );
        let results = sink.results();
        sink.file(&origin(0, "f"), 3, &mut &b"abc"[..]).unwrap();
        assert!(results.finish().is_err());
    }
}
