//! The chunk fetcher: turns "bytes `r` of these chunks" into bytes, from the node cache or from
//! the registry.
//!
//! On a miss, the chunks a read needs are grouped into runs that are adjacent in one pack and
//! each run is one HTTP Range request (all runs of a read in flight at once). Every fetched chunk
//! is decompressed into exactly its size and its BLAKE3 checked before anyone sees a byte; it is
//! handed to its readers at once and stored in the cache once the reader that fetched it has
//! its answer ([`Unstored`]). A chunk already being fetched for another reader is waited for,
//! never fetched twice. [`ChunkFetcher::prefetch`] fetches an access trace ahead of demand
//! through the same in-flight map. A failing request is retried with exponential backoff a bounded number
//! of times, each attempt under a timeout; after that the read fails (EIO for the program) with
//! a log line naming the chunk and the pack. The whole is [`RetryPolicy::bound`] for the read
//! as the program sees it: a chunk whose fetch has just failed fails again at once for
//! [`FAILED_RECENTLY`], because the kernel asks again right after a failed readahead (a
//! synchronous read of the same page), which would otherwise pay the whole bound twice.
//!
//! The FUSE threads are plain threads: they drive the async registry client with
//! `Handle::block_on`, so a slow fetch blocks only the thread whose reader needs it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pronto_artifact::{WholeIndex, WholeIndexError};
use pronto_format::{ChunkRef, Index, SegmentValue};
use pronto_image::{Digest, Reference, RegistryClient};
use tracing::{error, warn};

use crate::cache::{ChunkCache, Lookup};
use crate::stats::{FetchKind, Stats};

/// A run is at most this many stored bytes (one Range request).
const MAX_RUN_BYTES: u64 = 16 << 20;
/// How long a reader (or the prefetch, or the stream) waits for the chunk digests of a mount
/// that started from its index's tree: they follow the tree in the same response, so this is
/// a bound for a registry that stalls mid-layer, not a wait anyone should see.
pub const WHOLE_INDEX_WAIT: Duration = Duration::from_secs(30);

/// A miss is widened to the chunks stored right after it in its pack, up to this many stored
/// bytes in all: the converter writes a directory's files next to each other, and a program
/// that opens one file of a package soon opens its neighbours, so one request serves several
/// misses (round trips, not bytes, decide a cold start). A chunk this size or larger is
/// fetched alone.
const WIDEN_BYTES: u64 = 256 << 10;

/// Range requests prefetch keeps in flight at once...
const PREFETCH_STREAMS: usize = 4;
/// ... or, for a trace whose chunks are mostly back to back (a hot pack in trace order), this
/// many: the requests then share the link two ways, not four, so what the program reads first
/// (the start of the first request) comes at half the link rate, not a quarter, and each
/// chunk is handed out as soon as it is in; two keep the link busy between requests.
const HOT_PREFETCH_STREAMS: usize = 2;
/// Stored bytes per prefetch request at most, unless its chunks are back to back in their pack
/// (then `HOT_RUN_BYTES`).
const PREFETCH_RUN_BYTES: u64 = 4 << 20;
/// Stored bytes per prefetch request of chunks back to back in their pack: a hot set in a few
/// requests at link speed (python-ml's 58 MB in 8), still close to trace order.
const HOT_RUN_BYTES: u64 = 8 << 20;
/// Chunks of the trace this close in a pack (stored bytes between them) share a request, the
/// chunks between them included: on a fast link a few hundred KiB cost less than a round trip.
const PREFETCH_GAP_BYTES: u64 = 256 << 10;
/// Stored bytes of the trace sorted together into pack order: large enough that a window
/// holds whole directories' worth of neighbours, small enough that the start of the trace
/// (what the program reads first) goes out first.
const PREFETCH_WINDOW_BYTES: u64 = 16 << 20;

/// Stored bytes per read-ahead request at most: a sequential reader's window is cut into
/// requests this size, several in flight.
const AHEAD_RUN_BYTES: u64 = 8 << 20;
/// A run at least this large is decompressed and verified on the blocking pool, not on the
/// fetch runtime's two workers (which carry every reader's requests).
const BLOCKING_DECODE_BYTES: u64 = 1 << 20;

/// Why a flight ended without its chunk when the request that claimed it was dropped (the
/// stream stopped, the runtime went): its waiters fetch the chunk themselves.
pub(crate) const ABANDONED: &str = "the request that claimed this chunk was dropped before it came";

/// A chunk whose fetch gave up this recently, after trying at least this long, fails again at
/// once, without a request (see the module docs); later reads try the registry again.
pub const FAILED_RECENTLY: Duration = Duration::from_millis(500);

/// How hard to try before a read fails.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per Range request (≥ 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub first_backoff: Duration,
    /// Bound on one attempt (connect, headers and body).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 100/200/400 ms apart, 10 s each: a registry that refuses connections fails a
    /// read in under a second; one that hangs, in 40.7 s at worst ([`RetryPolicy::bound`]).
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The longest a fetch takes before it gives up: every attempt timing out, with the
    /// backoffs between them.
    pub fn bound(&self) -> Duration {
        let attempts = self.attempts.max(1);
        let backoffs: Duration = (0..attempts - 1)
            .map(|i| self.first_backoff * 2u32.saturating_pow(i))
            .sum();
        self.attempt_timeout * attempts + backoffs
    }
}

/// Why a chunk could not be had. Cloned to every reader waiting on the same fetch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("chunk {chunk} (pack {pack}, bytes {offset}+{len}): {reason}")]
pub struct FetchError {
    pub chunk: String,
    pub pack: String,
    pub offset: u64,
    pub len: u32,
    pub reason: String,
}

/// One chunk being fetched: the leader fills `result`, waiters block on `ready`.
#[derive(Default)]
pub(crate) struct Flight {
    result: Mutex<Option<Result<Bytes, FetchError>>>,
    ready: Condvar,
}

impl Flight {
    fn finish(&self, result: Result<Bytes, FetchError>) {
        *self.result.lock().expect("flight lock poisoned") = Some(result);
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<Bytes, FetchError> {
        let mut slot = self.result.lock().expect("flight lock poisoned");
        loop {
            if let Some(r) = slot.as_ref() {
                return r.clone();
            }
            slot = self.ready.wait(slot).expect("flight lock poisoned");
        }
    }
}

/// A chunk as a fetch gives it: its content and its segments' values (for the cache entry), or
/// why not.
type Fetched = Result<(Bytes, Vec<SegmentValue>), FetchError>;

/// Chunks fetched and handed out but not yet in the node cache; dropping this writes them there
/// (and takes them out of the in-flight map).
#[must_use = "dropping it writes the fetched chunks to the cache"]
pub struct Unstored<'a> {
    fetcher: &'a ChunkFetcher,
    chunks: Vec<(ChunkRef, Bytes, Vec<SegmentValue>)>,
}

impl Unstored<'_> {
    /// Whether nothing was fetched.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl Drop for Unstored<'_> {
    fn drop(&mut self) {
        for (c, data, values) in self.chunks.drain(..) {
            self.fetcher.cache.insert(&c.digest, &data, &values);
            self.fetcher
                .inflight
                .lock()
                .expect("inflight lock poisoned")
                .remove(&c.digest);
        }
    }
}

/// Fetches the chunks of one image's packs (one per mount).
pub struct ChunkFetcher {
    client: RegistryClient,
    /// The repository holding the packs.
    repo: Reference,
    /// Pack digests and sizes, in index order.
    packs: Vec<(Digest, u64)>,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    retry: RetryPolicy,
    inflight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    rt: tokio::runtime::Handle,
    /// Per pack, its chunks by offset (for widening); empty: no widening. Made from the whole
    /// index once it is here.
    layout: OnceLock<Vec<Vec<ChunkRef>>>,
    /// The index with its chunk digests (a mount from a split index layer gets them after it
    /// starts serving); `None` in unit tests, which give the layout themselves.
    whole: Option<WholeIndex>,
    /// Set when the mount is going away: failed requests are not retried, so that readers
    /// get their answer (EIO) before the FUSE connection ends.
    closing: AtomicBool,
    /// Chunks whose fetch gave up, when, and why: failed again at once for
    /// [`FAILED_RECENTLY`].
    failed: Mutex<HashMap<[u8; 32], (Instant, FetchError)>>,
    /// Range requests in flight that are not the background stream's (readers' misses,
    /// read-ahead, prefetch): the stream yields to them.
    foreground: AtomicUsize,
    /// When the last of those ended (or the fetcher was made).
    last_foreground: Mutex<Instant>,
    /// Prefetches running: `Auto` streaming waits for them.
    prefetching: AtomicUsize,
}

/// Releases its flights ([`ABANDONED`]) if dropped: `forget` it once the request is done.
struct Abandoned<'a>(&'a ChunkFetcher, &'a [(ChunkRef, Arc<Flight>)]);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        self.0.release(self.1, ABANDONED);
    }
}

/// Counts a foreground request in flight for as long as it lives (a cancelled future too).
struct Foreground<'a>(&'a ChunkFetcher);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        *self
            .0
            .last_foreground
            .lock()
            .expect("last_foreground lock poisoned") = Instant::now();
        self.0.foreground.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for ChunkFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkFetcher")
            .field("repo", &self.repo.to_string())
            .field("packs", &self.packs.len())
            .finish_non_exhaustive()
    }
}

impl ChunkFetcher {
    pub fn new(
        client: RegistryClient,
        repo: Reference,
        packs: Vec<(Digest, u64)>,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        retry: RetryPolicy,
        rt: tokio::runtime::Handle,
    ) -> ChunkFetcher {
        ChunkFetcher {
            client,
            repo,
            packs,
            cache,
            stats,
            retry,
            inflight: Mutex::default(),
            rt,
            layout: OnceLock::new(),
            whole: None,
            closing: AtomicBool::new(false),
            failed: Mutex::default(),
            foreground: AtomicUsize::new(0),
            last_foreground: Mutex::new(Instant::now()),
            prefetching: AtomicUsize::new(0),
        }
    }

    /// Lets misses widen to their neighbours in the packs: `chunks` are all the chunks of the
    /// index (any order, repeats allowed). A mount has it made from its whole index instead.
    #[cfg(test)]
    pub(crate) fn with_pack_layout(self, chunks: impl IntoIterator<Item = ChunkRef>) -> Self {
        self.set_layout(chunks);
        self
    }

    /// The mount's index with its chunk digests, now or later: the pack layout is made from
    /// it once it is here (see [`ChunkFetcher::whole_index`]).
    pub fn with_whole_index(mut self, whole: WholeIndex) -> Self {
        self.whole = Some(whole);
        self
    }

    /// The index with its chunk digests, waiting for them at most [`WHOLE_INDEX_WAIT`]
    /// (blocks: FUSE workers and background threads only). The first call that gets it makes
    /// the pack layout.
    pub fn whole_index(&self) -> Result<&Index, WholeIndexError> {
        let Some(whole) = &self.whole else {
            return Err(WholeIndexError::Failed(
                "no index given to the fetcher".into(),
            ));
        };
        let index = match whole.get() {
            Some(index) => index,
            None => whole.wait(WHOLE_INDEX_WAIT)?,
        };
        if self.layout.get().is_none() {
            self.set_layout(
                (0..index.inode_count())
                    .filter_map(|n| index.chunks(n).ok())
                    .flatten(),
            );
        }
        Ok(index)
    }

    /// The index with its chunk digests if they are here (never waits).
    pub fn whole_index_now(&self) -> Option<&Index> {
        self.whole.as_ref()?.get()?;
        self.whole_index().ok()
    }

    fn set_layout(&self, chunks: impl IntoIterator<Item = ChunkRef>) {
        let mut layout: Vec<Vec<ChunkRef>> = vec![Vec::new(); self.packs.len()];
        for c in chunks {
            if let Some(pack) = layout.get_mut(c.pack as usize) {
                pack.push(c);
            }
        }
        for pack in &mut layout {
            pack.sort_by_key(|c| c.offset);
            pack.dedup_by_key(|c| c.offset);
        }
        let _ = self.layout.set(layout);
    }

    /// The chunks stored right after `c` in its pack that fit in [`WIDEN_BYTES`] with it.
    fn neighbours(&self, c: &ChunkRef) -> &[ChunkRef] {
        let Some(pack) = self.layout().get(c.pack as usize) else {
            return &[];
        };
        let Ok(at) = pack.binary_search_by_key(&c.offset, |n| n.offset) else {
            return &[];
        };
        let mut end = c.pack_range().end;
        let mut last = at;
        for n in &pack[at + 1..] {
            if n.offset != end || n.pack_range().end - c.offset > WIDEN_BYTES {
                break;
            }
            end = n.pack_range().end;
            last += 1;
        }
        &pack[at + 1..=last]
    }

    /// The bytes `range` of each chunk, concatenated in order. Blocking: call it from a FUSE
    /// thread (or `spawn_blocking`), never from an async task.
    pub fn read(&self, pieces: &[(ChunkRef, Range<u32>)]) -> Result<Vec<u8>, FetchError> {
        self.read_ahead(pieces, &[])
            .map(|(data, _stored_on_drop)| data)
    }

    /// As [`ChunkFetcher::read`]; if that has to go to the registry, the chunks of `ahead`
    /// that are missing too (the next ones of a file read in order) come in the same requests,
    /// so a sequential reader does not pay a round trip per chunk. Failures of those are not
    /// this read's.
    ///
    /// What this call fetched is written to the node cache when the returned [`Unstored`] is
    /// dropped: answer the reader first, then drop it (the chunks are served from memory to
    /// anyone who asks in between).
    pub fn read_ahead(
        &self,
        pieces: &[(ChunkRef, Range<u32>)],
        ahead: &[ChunkRef],
    ) -> Result<(Vec<u8>, Unstored<'_>), FetchError> {
        if let Some((c, r)) = pieces
            .iter()
            .find(|(c, r)| r.start > r.end || r.end > c.uncompressed_size)
        {
            return Err(FetchError {
                chunk: hex::encode(c.digest),
                pack: format!("#{}", c.pack),
                offset: c.offset,
                len: c.compressed_size,
                reason: format!("range {r:?} is outside the chunk"),
            });
        }
        let total: usize = pieces.iter().map(|(_, r)| r.len()).sum();
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(pieces.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, (chunk, range)) in pieces.iter().enumerate() {
            match self
                .cache
                .read(&chunk.digest, chunk.uncompressed_size, range.clone())
            {
                Lookup::Hit(bytes) => {
                    self.stats.cache_hit();
                    out.push(Some(bytes));
                }
                Lookup::Corrupt => {
                    // Logged by the cache, once per entry.
                    self.stats.cache_corrupt();
                    self.stats.cache_miss();
                    out.push(None);
                    missing.push(i);
                }
                Lookup::Miss => {
                    self.stats.cache_miss();
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        let mut unstored = self.unstored(Vec::new());
        if !missing.is_empty() {
            let wanted: Vec<(ChunkRef, Range<u32>)> =
                missing.iter().map(|&i| pieces[i].clone()).collect();
            let (fetched, fetched_unstored) = self.get_chunks(&wanted, ahead);
            unstored = fetched_unstored;
            for (&i, data) in missing.iter().zip(fetched) {
                out[i] = Some(data?.to_vec());
            }
        }
        if out.len() == 1 {
            // The common case (a read inside one chunk): no second copy.
            return Ok((out.pop().flatten().expect("every piece filled"), unstored));
        }
        let mut buf = Vec::with_capacity(total);
        for piece in out {
            buf.extend_from_slice(&piece.expect("every piece filled"));
        }
        Ok((buf, unstored))
    }

    /// From now on a failed request is not retried (the mount is being unmounted).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether every one of `chunks` is in the node cache (not checked) or being fetched or
    /// stored (it lands in the cache soon, unless its fetch fails).
    pub fn all_cached_or_coming(&self, chunks: &[ChunkRef]) -> bool {
        // A flight is left after its chunk is cached: looking at the flights first, then at
        // the cache, misses no chunk that moves from one to the other in between.
        let not_in_flight: Vec<&[u8; 32]> = {
            let inflight = self.inflight.lock().expect("inflight lock poisoned");
            chunks
                .iter()
                .map(|c| &c.digest)
                .filter(|d| !inflight.contains_key(*d))
                .collect()
        };
        self.cache.contains_all(not_in_flight)
    }

    /// Whether the chunk is in the node cache (not checked) or being fetched or stored.
    pub fn is_cached_or_coming(&self, digest: &[u8; 32]) -> bool {
        self.cache.contains(digest)
            || self
                .inflight
                .lock()
                .expect("inflight lock poisoned")
                .contains_key(digest)
    }

    /// The bytes `range` of each chunk, verified: fetched by this call (whole chunks, grouped
    /// into runs) or by another reader that had them in flight, or read from the cache if they
    /// landed there since the caller looked (only the range: no more is checked than read).
    fn get_chunks(
        &self,
        pieces: &[(ChunkRef, Range<u32>)],
        ahead: &[ChunkRef],
    ) -> (Vec<Result<Bytes, FetchError>>, Unstored<'_>) {
        enum Source {
            Flight(Arc<Flight>),
            /// Fetched by another reader between our cache miss and taking the lock.
            Cached(ChunkRef),
            /// Its fetch gave up a moment ago.
            Failed(FetchError),
        }
        let mut sources: Vec<Source> = Vec::with_capacity(pieces.len());
        let mut lead: Vec<(ChunkRef, Arc<Flight>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock().expect("inflight lock poisoned");
            for (c, _) in pieces {
                if let Some(e) = self.failed_recently(&c.digest) {
                    sources.push(Source::Failed(e));
                } else if let Some(f) = inflight.get(&c.digest) {
                    if !lead.iter().any(|(l, _)| l.digest == c.digest) {
                        self.stats.inflight_wait();
                    }
                    sources.push(Source::Flight(f.clone()));
                } else if self.cache.contains(&c.digest) {
                    // A leader caches before it drops its flight, so under the lock "no
                    // flight" and "cached" cannot both be missed: no chunk is fetched twice.
                    sources.push(Source::Cached(*c));
                } else {
                    let f = Arc::new(Flight::default());
                    inflight.insert(c.digest, f.clone());
                    lead.push((*c, f.clone()));
                    sources.push(Source::Flight(f));
                }
            }
            let widened: Vec<ChunkRef> = lead
                .iter()
                .flat_map(|(c, _)| self.neighbours(c).iter().copied())
                .collect();
            // Read-ahead only with a request of our own: a reader whose chunks someone else
            // is fetching (with their own read-ahead) would otherwise send the next chunk alone.
            let ahead = if lead.is_empty() { &[] } else { ahead };
            for c in ahead.iter().chain(&widened) {
                let wanted = lead.iter().any(|(l, _)| l.digest == c.digest);
                if !wanted && !inflight.contains_key(&c.digest) && !self.cache.contains(&c.digest) {
                    let f = Arc::new(Flight::default());
                    inflight.insert(c.digest, f.clone());
                    lead.push((*c, f));
                }
            }
        }
        let mut unstored = self.unstored(Vec::new());
        if !lead.is_empty() {
            let refs: Vec<ChunkRef> = lead.iter().map(|(c, _)| *c).collect();
            let results = self.fetch_runs(&refs, FetchKind::Demand);
            unstored = self.land(&lead, results);
        }
        let results = sources
            .into_iter()
            .zip(pieces)
            .map(|(s, (c, r))| {
                let range = r.start as usize..r.end as usize;
                match s {
                    Source::Failed(e) => Err(e),
                    Source::Flight(f) => match self.wait_on(&f) {
                        // Claimed by a request that was dropped (the stream stopped).
                        Err(e) if e.reason == ABANDONED => self
                            .fetch_runs(&[*c], FetchKind::Demand)
                            .remove(0)
                            .map(|(data, _)| data.slice(range)),
                        r => r.map(|data| data.slice(range)),
                    },
                    Source::Cached(c) => {
                        match self.cache.read(&c.digest, c.uncompressed_size, r.clone()) {
                            Lookup::Hit(data) => Ok(Bytes::from(data)),
                            // Evicted or corrupt since: fetch it after all.
                            _ => self
                                .fetch_runs(&[c], FetchKind::Demand)
                                .remove(0)
                                .map(|(data, _)| data.slice(range)),
                        }
                    }
                }
            })
            .collect();
        (results, unstored)
    }

    /// The flight's result once it has one, the wait counted (`flight_wait_micros`).
    fn wait_on(&self, f: &Flight) -> Result<Bytes, FetchError> {
        let waiting = Instant::now();
        let got = f.wait();
        self.stats.flight_waited(waiting.elapsed());
        got
    }

    /// Hands what a leader fetched to everyone waiting on its flights at once. The chunks it
    /// got stay in the in-flight map (finished: later readers take them from there) until the
    /// returned [`Unstored`] has written them to the cache, so that "not in flight" and "not
    /// cached" are never both true of a chunk someone fetched: no chunk is fetched twice (see
    /// `get_chunks`). Failed ones leave the map now, for the next reader to try again.
    pub(crate) fn land(
        &self,
        lead: &[(ChunkRef, Arc<Flight>)],
        results: Vec<Fetched>,
    ) -> Unstored<'_> {
        let mut fetched = Vec::new();
        for ((c, flight), result) in lead.iter().zip(results) {
            match result {
                Ok((data, values)) => {
                    flight.finish(Ok(data.clone()));
                    fetched.push((*c, data, values));
                }
                Err(e) => {
                    self.inflight
                        .lock()
                        .expect("inflight lock poisoned")
                        .remove(&c.digest);
                    flight.finish(Err(e));
                }
            }
        }
        self.unstored(fetched)
    }

    /// Ends flights claimed for a request that will not be made (the stream stopped): out of
    /// the in-flight map, their waiters told `reason` (they fetch the chunks themselves).
    pub(crate) fn release(&self, lead: &[(ChunkRef, Arc<Flight>)], reason: &str) {
        let mut inflight = self.inflight.lock().expect("inflight lock poisoned");
        for (c, flight) in lead {
            inflight.remove(&c.digest);
            flight.finish(Err(FetchError {
                chunk: hex::encode(c.digest),
                pack: format!("#{}", c.pack),
                offset: c.offset,
                len: c.compressed_size,
                reason: reason.to_string(),
            }));
        }
    }

    /// Why `digest`'s fetch gave up, if it did less than [`FAILED_RECENTLY`] ago.
    fn failed_recently(&self, digest: &[u8; 32]) -> Option<FetchError> {
        let mut failed = self.failed.lock().expect("failed lock poisoned");
        if failed.is_empty() {
            return None;
        }
        failed.retain(|_, (at, _)| at.elapsed() < FAILED_RECENTLY);
        failed.get(digest).map(|(_, e)| e.clone())
    }

    /// An [`Unstored`] with nothing in it.
    pub(crate) fn nothing_fetched(&self) -> Unstored<'_> {
        self.unstored(Vec::new())
    }

    fn unstored(&self, chunks: Vec<(ChunkRef, Bytes, Vec<SegmentValue>)>) -> Unstored<'_> {
        Unstored {
            fetcher: self,
            chunks,
        }
    }

    /// Flights for those of `chunks` that are neither cached nor being fetched: the caller
    /// leads them.
    pub(crate) fn claim(&self, chunks: &[ChunkRef]) -> Vec<(ChunkRef, Arc<Flight>)> {
        let mut inflight = self.inflight.lock().expect("inflight lock poisoned");
        let mut lead = Vec::new();
        for c in chunks {
            if !inflight.contains_key(&c.digest) && !self.cache.contains(&c.digest) {
                let f = Arc::new(Flight::default());
                inflight.insert(c.digest, f.clone());
                lead.push((*c, f));
            }
        }
        lead
    }

    /// Fetches `trace` (chunks in the order a previous start read them) ahead of demand, until
    /// done or `cancel` is set. Blocking: run it on a thread of its own.
    ///
    /// The trace is taken in windows of `PREFETCH_WINDOW_BYTES`; each window is sorted into
    /// pack order and cut into runs of nearby chunks (one Range request each, at most
    /// `PREFETCH_RUN_BYTES`; see `prefetch_runs`). At most `PREFETCH_STREAMS` requests are in flight, so the
    /// program's own misses, which go out at once beside them, always get a share of the link.
    /// A chunk is claimed (in-flight dedup) only when its request leaves: a reader that needs
    /// a chunk prefetch has not reached fetches it itself instead of queueing behind the rest.
    pub fn prefetch(&self, trace: &[ChunkRef], cancel: &AtomicBool) {
        use futures_util::StreamExt;
        let runs = self.prefetch_runs(trace);
        let run_bytes = |r: &Vec<ChunkRef>| match (r.first(), r.last()) {
            (Some(a), Some(b)) => b.pack_range().end - a.offset,
            _ => 0,
        };
        let hot = runs
            .iter()
            .filter(|r| run_bytes(r) > PREFETCH_RUN_BYTES)
            .map(run_bytes)
            .sum::<u64>()
            * 2
            > runs.iter().map(run_bytes).sum::<u64>();
        let streams = if hot {
            HOT_PREFETCH_STREAMS
        } else {
            PREFETCH_STREAMS
        };
        let fetch_one = |run: Vec<ChunkRef>| async move {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            let lead = self.claim(&run);
            for piece in adjacent_pieces(&lead) {
                let (at, end) = (piece.start, piece.end);
                let refs: Vec<ChunkRef> = lead[piece].iter().map(|(c, _)| *c).collect();
                // Each chunk goes to its waiters as soon as it is in (see `fetch_run`).
                let results = self
                    .fetch_run(&refs, FetchKind::Prefetch, Some(&lead[at..end]))
                    .await;
                let content = results
                    .iter()
                    .flatten()
                    .map(|(data, _)| data.len() as u64)
                    .sum::<u64>();
                let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                drop(self.land(&lead[at..end], results));
                // Counted once cached: a reader who sees the count finds the chunks.
                self.stats.prefetched(ok, content);
            }
        };
        self.rt.block_on(
            futures_util::stream::iter(runs)
                .map(fetch_one)
                .buffer_unordered(streams)
                .collect::<Vec<()>>(),
        );
    }

    /// The trace cut into prefetch requests: windows in trace order, each sorted by pack and
    /// offset and split into runs of chunks adjacent in their pack or at most
    /// `PREFETCH_GAP_BYTES` apart (the chunks between join the run).
    fn prefetch_runs(&self, trace: &[ChunkRef]) -> Vec<Vec<ChunkRef>> {
        let mut runs: Vec<Vec<ChunkRef>> = Vec::new();
        let mut rest = trace;
        while !rest.is_empty() {
            let mut bytes = 0;
            let mut n = 0;
            while n < rest.len() && (n == 0 || bytes < PREFETCH_WINDOW_BYTES) {
                bytes += u64::from(rest[n].compressed_size);
                n += 1;
            }
            let mut window = rest[..n].to_vec();
            rest = &rest[n..];
            window.sort_by_key(|c| (c.pack, c.offset));
            window.dedup_by_key(|c| (c.pack, c.offset));
            let mut run: Vec<ChunkRef> = Vec::new();
            for c in window {
                if let (Some(first), Some(last)) = (run.first(), run.last()) {
                    let end = last.pack_range().end;
                    // Chunks stored back to back (a hot pack in trace order) may fill a
                    // request up to `HOT_RUN_BYTES`: a few large requests at link speed.
                    let limit = if c.offset == end {
                        HOT_RUN_BYTES
                    } else {
                        PREFETCH_RUN_BYTES
                    };
                    let close = last.pack == c.pack
                        && c.offset >= end
                        && c.pack_range().end - first.offset <= limit;
                    let between = if close {
                        self.between(c.pack, end, c.offset)
                    } else {
                        None
                    };
                    match between {
                        Some(gap) => run.extend_from_slice(gap),
                        None => runs.push(std::mem::take(&mut run)),
                    }
                }
                run.push(c);
            }
            if !run.is_empty() {
                runs.push(run);
            }
        }
        runs
    }

    /// The chunks stored exactly over `from..to` of `pack`, if that is at most
    /// `PREFETCH_GAP_BYTES` and the pack layout is known (empty for `from == to`).
    fn between(&self, pack: u32, from: u64, to: u64) -> Option<&[ChunkRef]> {
        if from == to {
            return Some(&[]);
        }
        if to - from > PREFETCH_GAP_BYTES {
            return None;
        }
        let chunks = self.layout().get(pack as usize)?;
        let at = chunks.partition_point(|c| c.offset < from);
        let mut end = at;
        let mut next = from;
        while end < chunks.len() && chunks[end].offset == next && next < to {
            next = chunks[end].pack_range().end;
            end += 1;
        }
        (next == to).then(|| &chunks[at..end])
    }

    /// Fetches `chunks` (distinct digests) in as few Range requests as adjacency allows, all at
    /// once; one result per chunk, in order.
    fn fetch_runs(&self, chunks: &[ChunkRef], kind: FetchKind) -> Vec<Fetched> {
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.sort_by_key(|&i| (chunks[i].pack, chunks[i].offset));
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for i in order {
            let c = &chunks[i];
            if let Some(run) = runs.last_mut() {
                let first = &chunks[run[0]];
                let last = &chunks[*run.last().expect("runs are not empty")];
                if last.pack == c.pack
                    && last.pack_range().end == c.offset
                    && c.pack_range().end - first.offset <= MAX_RUN_BYTES
                {
                    run.push(i);
                    continue;
                }
            }
            runs.push(vec![i]);
        }
        let run_results = self
            .rt
            .block_on(futures_util::future::join_all(runs.iter().map(|run| {
                let refs: Vec<ChunkRef> = run.iter().map(|&i| chunks[i]).collect();
                async move { self.fetch_run(&refs, kind, None).await }
            })));
        let mut results: Vec<Option<Fetched>> = vec![None; chunks.len()];
        for (run, run_result) in runs.iter().zip(run_results) {
            for (&i, r) in run.iter().zip(run_result) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every chunk is in one run"))
            .collect()
    }

    /// Starts fetching those of `chunks` (the next ones of a file read in order) that are
    /// neither cached nor in flight, in requests of at most `AHEAD_RUN_BYTES` stored bytes, in
    /// the background: the read that asked does not wait for them (its own chunks are its
    /// own request), readers that reach them wait on their flights. Landed in the node cache
    /// as they arrive.
    pub(crate) fn fetch_ahead(self: &Arc<Self>, chunks: &[ChunkRef]) {
        let lead = self.claim(chunks);
        let mut runs: Vec<Vec<(ChunkRef, Arc<Flight>)>> = Vec::new();
        for (c, f) in lead {
            if let Some(run) = runs.last_mut() {
                let (first, last) = (&run[0].0, &run[run.len() - 1].0);
                if last.pack == c.pack
                    && last.pack_range().end == c.offset
                    && c.pack_range().end - first.offset <= AHEAD_RUN_BYTES
                {
                    run.push((c, f));
                    continue;
                }
            }
            runs.push(vec![(c, f)]);
        }
        for run in runs {
            let fetcher = self.clone();
            self.rt.spawn(async move {
                let refs: Vec<ChunkRef> = run.iter().map(|(c, _)| *c).collect();
                // A task dropped before it lands (the runtime shutting down) must not leave
                // readers waiting on its flights forever.
                let guard = Abandoned(&fetcher, &run);
                let results = fetcher.fetch_run(&refs, FetchKind::ReadAhead, None).await;
                std::mem::forget(guard);
                // Cache writes are file I/O: off the runtime's workers.
                let landed = tokio::task::spawn_blocking(move || {
                    drop(fetcher.land(&run, results));
                })
                .await;
                if let Err(e) = landed {
                    warn!(error = %e, "landing read-ahead chunks");
                }
            });
        }
    }

    /// Whether any foreground request (not the stream's) is in flight, and how long ago the
    /// last one ended.
    pub(crate) fn foreground(&self) -> (usize, Duration) {
        let idle = self
            .last_foreground
            .lock()
            .expect("last_foreground lock poisoned")
            .elapsed();
        (self.foreground.load(Ordering::SeqCst), idle)
    }

    /// A prefetch starts (`true`) or ends.
    pub(crate) fn set_prefetching(&self, running: bool) {
        if running {
            self.prefetching.fetch_add(1, Ordering::SeqCst);
        } else {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn is_prefetching(&self) -> bool {
        self.prefetching.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn layout(&self) -> &[Vec<ChunkRef>] {
        self.layout.get().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// One Range request for a run of adjacent chunks, retried; each chunk verified.
    ///
    /// With `flights` (the run's claimed flights, in order), each chunk is decoded as soon as
    /// its bytes are in and its flight finished then: readers waiting on it go on while the
    /// rest of a long request arrives, instead of waiting for its last byte and the decoding
    /// of the whole run. The decoding then happens where this future is polled:
    /// use it from a thread of its own (prefetch, stream), never a runtime worker.
    pub(crate) async fn fetch_run(
        &self,
        run: &[ChunkRef],
        kind: FetchKind,
        flights: Option<&[(ChunkRef, Arc<Flight>)]>,
    ) -> Vec<Fetched> {
        let first = run[0];
        let start = first.offset;
        let end = run.last().expect("runs are not empty").pack_range().end;
        let fail = |c: &ChunkRef, reason: String| FetchError {
            chunk: hex::encode(c.digest),
            pack: self
                .packs
                .get(c.pack as usize)
                .map_or_else(|| format!("#{}", c.pack), |(d, _)| d.to_string()),
            offset: c.offset,
            len: c.compressed_size,
            reason,
        };
        let Some((pack, _)) = self.packs.get(first.pack as usize) else {
            // The index was validated, so this is a bug, not bad input; still no panic.
            return run
                .iter()
                .map(|c| Err(fail(c, "no such pack in the index".into())))
                .collect();
        };
        let mut backoff = self.retry.first_backoff;
        let mut last: Vec<Fetched> = Vec::new();
        let began = Instant::now();
        // Chunks decoded and delivered as their bytes came (by any attempt): final.
        let mut early: Vec<Option<(Bytes, Vec<SegmentValue>)>> = vec![None; run.len()];
        for attempt in 1..=self.retry.attempts.max(1) {
            let started = Instant::now();
            let _foreground = (kind != FetchKind::Stream).then(|| {
                self.foreground.fetch_add(1, Ordering::SeqCst);
                Foreground(self)
            });
            let got = {
                let (early, mut next) = (&mut early, 0);
                let progress = |received: &[u8]| {
                    let Some(flights) = flights else {
                        return;
                    };
                    while let Some(c) = run.get(next) {
                        let at = (c.offset - start) as usize;
                        let Some(stored) = received.get(at..at + c.compressed_size as usize) else {
                            break;
                        };
                        if early[next].is_none() {
                            // A chunk that fails its check is left to the final pass, which
                            // reports it.
                            if let Ok((data, values)) =
                                pronto_format::decompress_chunk_with_segments(stored, c)
                            {
                                let data = Bytes::from(data);
                                flights[next].1.finish(Ok(data.clone()));
                                early[next] = Some((data, values));
                            }
                        }
                        next += 1;
                    }
                };
                tokio::time::timeout(
                    self.retry.attempt_timeout,
                    self.client.read_blob_range_progressive(
                        &self.repo,
                        pack,
                        start,
                        end - start,
                        progress,
                    ),
                )
                .await
            };
            drop(_foreground);
            last = match got {
                Ok(Ok(bytes)) => {
                    let content = run.iter().map(|c| u64::from(c.uncompressed_size)).sum();
                    self.stats.range_request(
                        kind,
                        bytes.len() as u64,
                        run.len() as u64,
                        content,
                        started.elapsed(),
                    );
                    let (chunks, known) = (run.to_vec(), early.clone());
                    let decode = move || -> Vec<Result<(Bytes, Vec<SegmentValue>), String>> {
                        chunks
                            .iter()
                            .zip(known)
                            .map(|(c, known)| {
                                if let Some(done) = known {
                                    return Ok(done);
                                }
                                let at = (c.offset - start) as usize;
                                let stored = bytes
                                    .get(at..at + c.compressed_size as usize)
                                    .ok_or_else(|| "short body".to_string())?;
                                pronto_format::decompress_chunk_with_segments(stored, c)
                                    .map(|(data, values)| (Bytes::from(data), values))
                                    .map_err(|e| e.to_string())
                            })
                            .collect()
                    };
                    // Prefetch and stream requests run on threads of their own, which decode
                    // them too (as they come, see `flights`); a reader's large run goes to the
                    // blocking pool so the runtime's workers stay free for other requests.
                    let own_thread = matches!(kind, FetchKind::Prefetch | FetchKind::Stream);
                    let decoded = if !own_thread && end - start >= BLOCKING_DECODE_BYTES {
                        tokio::task::spawn_blocking(decode)
                            .await
                            .unwrap_or_else(|e| vec![Err(format!("decoding: {e}")); run.len()])
                    } else {
                        decode()
                    };
                    run.iter()
                        .zip(decoded)
                        .map(|(c, r)| r.map_err(|e| fail(c, e)))
                        .collect()
                }
                Ok(Err(e)) => run.iter().map(|c| Err(fail(c, e.to_string()))).collect(),
                Err(_) => run
                    .iter()
                    .map(|c| {
                        Err(fail(
                            c,
                            format!("no answer within {:?}", self.retry.attempt_timeout),
                        ))
                    })
                    .collect(),
            };
            // What an attempt delivered stays delivered, whatever became of the rest.
            for (result, known) in last.iter_mut().zip(&early) {
                if let (Err(_), Some(done)) = (&*result, known) {
                    *result = Ok(done.clone());
                }
            }
            let Some(Err(e)) = last.iter().find(|r| r.is_err()) else {
                return last;
            };
            if self.closing.load(Ordering::Relaxed) {
                break;
            }
            if attempt < self.retry.attempts {
                warn!(attempt, error = %e, "chunk fetch failed; retrying in {backoff:?}");
                self.stats.retry();
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        // Remembered only when giving up took a while: a quick failure (a refused connection)
        // costs little to repeat, and the next read may find the registry back.
        if began.elapsed() >= FAILED_RECENTLY {
            let now = Instant::now();
            let mut failed = self.failed.lock().expect("failed lock poisoned");
            for (c, e) in run
                .iter()
                .zip(&last)
                .filter_map(|(c, r)| Some((c, r.as_ref().err()?)))
            {
                failed.insert(c.digest, (now, e.clone()));
            }
        }
        for e in last.iter().filter_map(|r| r.as_ref().err()) {
            self.stats.error();
            if self.closing.load(Ordering::Relaxed) {
                warn!("giving up on {e}: the mount is closing; the read fails with EIO");
            } else {
                error!(
                    "giving up on {e} after {} attempts; the read fails with EIO",
                    self.retry.attempts
                );
            }
        }
        last
    }
}

/// The pieces of `lead` (chunks claimed in pack order) stored back to back, one Range request
/// each: what was claimed may have holes (chunks read meanwhile).
pub(crate) fn adjacent_pieces<T>(lead: &[(ChunkRef, T)]) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < lead.len() {
        let mut end = at + 1;
        while end < lead.len() && lead[end - 1].0.pack_range().end == lead[end].0.offset {
            end += 1;
        }
        pieces.push(at..end);
        at = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u8, pack: u32, offset: u64, len: u32) -> ChunkRef {
        ChunkRef {
            digest: [n; 32],
            pack,
            compression: pronto_format::Compression::None,
            offset,
            compressed_size: len,
            uncompressed_size: len,
        }
    }

    #[test]
    fn the_retry_bound_adds_every_attempt_and_backoff() {
        assert_eq!(
            RetryPolicy::default().bound(),
            Duration::from_millis(40_700)
        );
        let one = RetryPolicy {
            attempts: 1,
            first_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
        };
        assert_eq!(one.bound(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn prefetch_runs_bridge_small_gaps_with_the_chunks_between() {
        let dir = tempfile::tempdir().unwrap();
        let gap = PREFETCH_GAP_BYTES as u32;
        let (a, b, c) = (at(1, 0, 0, 100), at(2, 0, 100, 100), at(3, 0, 200, 100));
        let d = at(4, 0, 300, gap + 1);
        let e = at(5, 0, 300 + u64::from(gap) + 1, 100);
        let f = at(6, 1, 0, 100);
        let digest = |n: u8| Digest::from_bytes([n; 32]);
        let fetcher = ChunkFetcher::new(
            RegistryClient::new(pronto_image::ClientOptions::default()).unwrap(),
            "127.0.0.1:1/x/y:z".parse().unwrap(),
            vec![(digest(1), 1 << 20), (digest(2), 1 << 20)],
            Arc::new(ChunkCache::open(dir.path(), 1 << 20).unwrap()),
            Arc::new(Stats::default()),
            RetryPolicy::default(),
            tokio::runtime::Handle::current(),
        )
        .with_pack_layout([a, b, c, d, e, f]);
        // Trace order C, A, E, F: sorted per window; B fills the gap A..C; D is too big a gap;
        // F is in another pack.
        let runs = fetcher.prefetch_runs(&[c, f, a, e]);
        assert_eq!(runs, vec![vec![a, b, c], vec![e], vec![f]]);
        assert_eq!(fetcher.between(0, 100, 200), Some(&[b][..]));
        assert_eq!(
            fetcher.between(0, 150, 200),
            None,
            "not on chunk boundaries"
        );
        assert_eq!(
            fetcher.between(0, 300, 300 + u64::from(gap) + 1),
            None,
            "too far"
        );
    }
}
