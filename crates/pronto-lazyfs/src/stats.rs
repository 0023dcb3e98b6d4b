//! Per-mount counters: what the mount fetched from the registry, what the cache answered, what
//! programs read through the daemon, and which files they read through FUSE passthrough
//! instead (the kernel reads those itself: no read request reaches the daemon). Lock-free
//! (atomics), read as a [`StatsSnapshot`]. The node cache's own counters (sizes, evictions,
//! backing files built) are [`crate::cache::CacheStats`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Who a Range request is for: the counters keep the programs' own misses apart from what is
/// fetched ahead of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchKind {
    /// A reader waits for it.
    Demand,
    /// Ahead of a sequential reader, not waited for by the read that asked.
    ReadAhead,
    /// From an access trace.
    Prefetch,
    /// The background stream of the rest of the image.
    Stream,
}

/// The background stream's state, as [`StatsSnapshot::stream_state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum StreamState {
    /// Not asked for (or not started).
    Off = 0,
    /// Waiting until streaming pays (see `MountOptions::background_stream`).
    Waiting = 1,
    Streaming = 2,
    /// Every chunk of the image is in the node cache.
    Done = 3,
    /// Stopped before the end (unmount, or the image does not fit the cache).
    Stopped = 4,
}

impl StreamState {
    /// The name of a [`StatsSnapshot::stream_state`] value.
    pub fn name(value: u64) -> &'static str {
        match value {
            0 => "off",
            1 => "waiting",
            2 => "streaming",
            3 => "done",
            4 => "stopped",
            _ => "unknown",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    read_requests: AtomicU64,
    read_bytes: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_corrupt: AtomicU64,
    inflight_waits: AtomicU64,
    range_requests: AtomicU64,
    fetched_bytes: AtomicU64,
    fetched_chunks: AtomicU64,
    fetched_content_bytes: AtomicU64,
    fetch_retries: AtomicU64,
    fetch_errors: AtomicU64,
    fetch_micros_total: AtomicU64,
    fetch_micros_max: AtomicU64,
    flight_wait_micros: AtomicU64,
    demand_range_requests: AtomicU64,
    prefetched_chunks: AtomicU64,
    prefetched_content_bytes: AtomicU64,
    prefetched_bytes: AtomicU64,
    readahead_chunks: AtomicU64,
    readahead_bytes: AtomicU64,
    readahead_content_bytes: AtomicU64,
    streamed_chunks: AtomicU64,
    streamed_bytes: AtomicU64,
    streamed_content_bytes: AtomicU64,
    stream_range_requests: AtomicU64,
    stream_state: AtomicU64,
    link_bytes_per_sec: AtomicU64,
    file_opens: AtomicU64,
    passthrough_opens: AtomicU64,
    passthrough_refused: AtomicU64,
    materialized_files: AtomicU64,
    materialized_bytes: AtomicU64,
    handles_open: AtomicU64,
    passthrough_handles_open: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// FUSE read requests answered, and their bytes (what the kernel asked for: the programs'
    /// reads plus kernel readahead, minus what the page cache already held).
    pub read_requests: u64,
    pub read_bytes: u64,
    /// Chunk lookups answered by the node cache, and not.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Cache entries found corrupt (deleted and refetched).
    pub cache_corrupt: u64,
    /// Misses that waited for a fetch another reader had in flight instead of fetching again.
    pub inflight_waits: u64,
    /// HTTP Range requests sent to the registry (one per run of adjacent chunks), and the
    /// bytes they returned (compressed, as stored in the packs).
    pub range_requests: u64,
    pub fetched_bytes: u64,
    /// Chunks fetched, verified and decompressed, and their content bytes (what the fetches
    /// made available to read: compare with what programs needed).
    pub fetched_chunks: u64,
    pub fetched_content_bytes: u64,
    /// Range requests repeated after a failure, and fetches given up (EIO to the reader).
    pub fetch_retries: u64,
    pub fetch_errors: u64,
    /// The programs' own misses (what a reader waits for; not read-ahead, prefetch or the
    /// stream): successful Range requests, and their time (sum and slowest), microseconds.
    pub demand_range_requests: u64,
    pub fetch_micros_total: u64,
    pub fetch_micros_max: u64,
    /// Time readers waited, microseconds, for chunks another request had in flight (a
    /// prefetch, the stream, read-ahead or another reader's miss): with `fetch_micros_total`,
    /// what the programs' reads waited on the registry.
    pub flight_wait_micros: u64,
    /// Of the chunks fetched, those the prefetcher fetched (ahead of demand, from an access
    /// trace), their content bytes and their bytes on the wire (compressed).
    pub prefetched_chunks: u64,
    pub prefetched_content_bytes: u64,
    pub prefetched_bytes: u64,
    /// Of the chunks fetched, those fetched ahead of a sequential reader (adaptive
    /// read-ahead, not waited for by the read that asked), compressed and content bytes.
    pub readahead_chunks: u64,
    pub readahead_bytes: u64,
    pub readahead_content_bytes: u64,
    /// Of the chunks fetched, those the background stream fetched (the rest of the image, in
    /// pack order), their bytes on the wire and content bytes, and its Range requests.
    pub streamed_chunks: u64,
    pub streamed_bytes: u64,
    pub streamed_content_bytes: u64,
    pub stream_range_requests: u64,
    /// Gauge: the background stream's state (see [`StreamState`]; the highest of several
    /// mounts when accumulated).
    pub stream_state: u64,
    /// Gauge: the link's rate as measured from the Range requests of at least 512 KiB
    /// (the fastest one, bytes per second, latency included); 0 before one.
    pub link_bytes_per_sec: u64,
    /// Regular files opened, and of those, opened with FUSE passthrough (their reads go from
    /// the kernel to the backing file, not through the daemon).
    pub file_opens: u64,
    pub passthrough_opens: u64,
    /// Opens that would have used passthrough but the kernel refused the backing file (served
    /// through the daemon instead).
    pub passthrough_refused: u64,
    /// Backing files this mount built from the node cache (for passthrough), and their bytes.
    pub materialized_files: u64,
    pub materialized_bytes: u64,
    /// Gauges: regular-file handles open now (released ones are counted when the kernel's
    /// `RELEASE` arrives, which is after the program's `close`), and of those, with
    /// passthrough.
    pub handles_open: u64,
    pub passthrough_handles_open: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            read_requests: self.read_requests.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            cache_misses: self.cache_misses.load(Relaxed),
            cache_corrupt: self.cache_corrupt.load(Relaxed),
            inflight_waits: self.inflight_waits.load(Relaxed),
            range_requests: self.range_requests.load(Relaxed),
            fetched_bytes: self.fetched_bytes.load(Relaxed),
            fetched_chunks: self.fetched_chunks.load(Relaxed),
            fetched_content_bytes: self.fetched_content_bytes.load(Relaxed),
            fetch_retries: self.fetch_retries.load(Relaxed),
            fetch_errors: self.fetch_errors.load(Relaxed),
            demand_range_requests: self.demand_range_requests.load(Relaxed),
            fetch_micros_total: self.fetch_micros_total.load(Relaxed),
            fetch_micros_max: self.fetch_micros_max.load(Relaxed),
            flight_wait_micros: self.flight_wait_micros.load(Relaxed),
            prefetched_chunks: self.prefetched_chunks.load(Relaxed),
            prefetched_content_bytes: self.prefetched_content_bytes.load(Relaxed),
            prefetched_bytes: self.prefetched_bytes.load(Relaxed),
            readahead_chunks: self.readahead_chunks.load(Relaxed),
            readahead_bytes: self.readahead_bytes.load(Relaxed),
            readahead_content_bytes: self.readahead_content_bytes.load(Relaxed),
            streamed_chunks: self.streamed_chunks.load(Relaxed),
            streamed_bytes: self.streamed_bytes.load(Relaxed),
            streamed_content_bytes: self.streamed_content_bytes.load(Relaxed),
            stream_range_requests: self.stream_range_requests.load(Relaxed),
            stream_state: self.stream_state.load(Relaxed),
            link_bytes_per_sec: self.link_bytes_per_sec.load(Relaxed),
            file_opens: self.file_opens.load(Relaxed),
            passthrough_opens: self.passthrough_opens.load(Relaxed),
            passthrough_refused: self.passthrough_refused.load(Relaxed),
            materialized_files: self.materialized_files.load(Relaxed),
            materialized_bytes: self.materialized_bytes.load(Relaxed),
            handles_open: self.handles_open.load(Relaxed),
            passthrough_handles_open: self.passthrough_handles_open.load(Relaxed),
        }
    }

    pub(crate) fn file_open(&self, passthrough: bool) {
        self.file_opens.fetch_add(1, Relaxed);
        self.handles_open.fetch_add(1, Relaxed);
        if passthrough {
            self.passthrough_opens.fetch_add(1, Relaxed);
            self.passthrough_handles_open.fetch_add(1, Relaxed);
        }
    }

    /// Regular-file handles open now (see [`StatsSnapshot::handles_open`]).
    pub(crate) fn handles_open(&self) -> u64 {
        self.handles_open.load(Relaxed)
    }

    pub(crate) fn file_released(&self, passthrough: bool) {
        self.handles_open.fetch_sub(1, Relaxed);
        if passthrough {
            self.passthrough_handles_open.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) fn passthrough_refused(&self) {
        self.passthrough_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn materialized(&self, bytes: u64) {
        self.materialized_files.fetch_add(1, Relaxed);
        self.materialized_bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn read(&self, bytes: usize) {
        self.read_requests.fetch_add(1, Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_corrupt(&self) {
        self.cache_corrupt.fetch_add(1, Relaxed);
    }

    pub(crate) fn inflight_wait(&self) {
        self.inflight_waits.fetch_add(1, Relaxed);
    }

    pub(crate) fn flight_waited(&self, waited: std::time::Duration) {
        self.flight_wait_micros
            .fetch_add(waited.as_micros() as u64, Relaxed);
    }

    pub(crate) fn range_request(
        &self,
        kind: FetchKind,
        bytes: u64,
        chunks: u64,
        content: u64,
        took: Duration,
    ) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.range_requests.fetch_add(1, Relaxed);
        self.fetched_bytes.fetch_add(bytes, Relaxed);
        self.fetched_chunks.fetch_add(chunks, Relaxed);
        self.fetched_content_bytes.fetch_add(content, Relaxed);
        if bytes >= 512 << 10 && micros > 0 {
            let rate = bytes.saturating_mul(1_000_000) / micros;
            self.link_bytes_per_sec.fetch_max(rate, Relaxed);
        }
        match kind {
            FetchKind::Demand => {
                self.demand_range_requests.fetch_add(1, Relaxed);
                self.fetch_micros_total.fetch_add(micros, Relaxed);
                self.fetch_micros_max.fetch_max(micros, Relaxed);
            }
            FetchKind::ReadAhead => {
                self.readahead_chunks.fetch_add(chunks, Relaxed);
                self.readahead_bytes.fetch_add(bytes, Relaxed);
                self.readahead_content_bytes.fetch_add(content, Relaxed);
            }
            FetchKind::Prefetch => {
                self.prefetched_bytes.fetch_add(bytes, Relaxed);
            }
            FetchKind::Stream => {
                self.stream_range_requests.fetch_add(1, Relaxed);
                self.streamed_bytes.fetch_add(bytes, Relaxed);
            }
        }
    }

    pub(crate) fn prefetched(&self, chunks: u64, content: u64) {
        self.prefetched_chunks.fetch_add(chunks, Relaxed);
        self.prefetched_content_bytes.fetch_add(content, Relaxed);
    }

    /// Counted once the chunks are in the cache (a reader who sees the count finds them).
    pub(crate) fn streamed(&self, chunks: u64, content: u64) {
        self.streamed_chunks.fetch_add(chunks, Relaxed);
        self.streamed_content_bytes.fetch_add(content, Relaxed);
    }

    pub(crate) fn set_stream_state(&self, state: StreamState) {
        self.stream_state.store(state as u64, Relaxed);
    }

    /// The link's measured rate (see [`StatsSnapshot::link_bytes_per_sec`]); 0: unknown.
    pub(crate) fn link_rate(&self) -> u64 {
        self.link_bytes_per_sec.load(Relaxed)
    }

    pub(crate) fn retry(&self) {
        self.fetch_retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self) {
        self.fetch_errors.fetch_add(1, Relaxed);
    }
}

impl StatsSnapshot {
    /// Adds `other`'s counters to these (the slowest fetch is the slower of the two): the
    /// totals of several mounts.
    pub fn accumulate(&mut self, other: &StatsSnapshot) {
        self.read_requests += other.read_requests;
        self.read_bytes += other.read_bytes;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.cache_corrupt += other.cache_corrupt;
        self.inflight_waits += other.inflight_waits;
        self.range_requests += other.range_requests;
        self.fetched_bytes += other.fetched_bytes;
        self.fetched_chunks += other.fetched_chunks;
        self.fetched_content_bytes += other.fetched_content_bytes;
        self.fetch_retries += other.fetch_retries;
        self.fetch_errors += other.fetch_errors;
        self.demand_range_requests += other.demand_range_requests;
        self.fetch_micros_total += other.fetch_micros_total;
        self.fetch_micros_max = self.fetch_micros_max.max(other.fetch_micros_max);
        self.flight_wait_micros += other.flight_wait_micros;
        self.prefetched_chunks += other.prefetched_chunks;
        self.prefetched_content_bytes += other.prefetched_content_bytes;
        self.prefetched_bytes += other.prefetched_bytes;
        self.readahead_chunks += other.readahead_chunks;
        self.readahead_bytes += other.readahead_bytes;
        self.readahead_content_bytes += other.readahead_content_bytes;
        self.streamed_chunks += other.streamed_chunks;
        self.streamed_bytes += other.streamed_bytes;
        self.streamed_content_bytes += other.streamed_content_bytes;
        self.stream_range_requests += other.stream_range_requests;
        self.stream_state = self.stream_state.max(other.stream_state);
        self.link_bytes_per_sec = self.link_bytes_per_sec.max(other.link_bytes_per_sec);
        self.file_opens += other.file_opens;
        self.passthrough_opens += other.passthrough_opens;
        self.passthrough_refused += other.passthrough_refused;
        self.materialized_files += other.materialized_files;
        self.materialized_bytes += other.materialized_bytes;
        self.handles_open += other.handles_open;
        self.passthrough_handles_open += other.passthrough_handles_open;
    }
}

impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let avg_ms = if self.demand_range_requests > 0 {
            self.fetch_micros_total as f64 / self.demand_range_requests as f64 / 1000.0
        } else {
            0.0
        };
        write!(
            f,
            "read {} B in {} requests; fetched {} B ({} chunks, {} B of content) in {} range requests \
             ({} for misses: avg {avg_ms:.1} ms, max {:.1} ms); cache {} hits, {} misses, {} corrupt; \
             {} waits on in-flight fetches; {} retries, {} errors; prefetched {} chunks ({} B, {} B \
             on the wire); read ahead {} chunks ({} B, {} B on the wire); streamed {} chunks ({} B, \
             {} B on the wire, {} requests, state {}); link {} B/s; \
             {} files opened, {} with passthrough ({} refused), {} open now ({} with passthrough); \
             built {} backing files ({} B)",
            self.read_bytes,
            self.read_requests,
            self.fetched_bytes,
            self.fetched_chunks,
            self.fetched_content_bytes,
            self.range_requests,
            self.demand_range_requests,
            self.fetch_micros_max as f64 / 1000.0,
            self.cache_hits,
            self.cache_misses,
            self.cache_corrupt,
            self.inflight_waits,
            self.fetch_retries,
            self.fetch_errors,
            self.prefetched_chunks,
            self.prefetched_content_bytes,
            self.prefetched_bytes,
            self.readahead_chunks,
            self.readahead_content_bytes,
            self.readahead_bytes,
            self.streamed_chunks,
            self.streamed_content_bytes,
            self.streamed_bytes,
            self.stream_range_requests,
            StreamState::name(self.stream_state),
            self.link_bytes_per_sec,
            self.file_opens,
            self.passthrough_opens,
            self.passthrough_refused,
            self.handles_open,
            self.passthrough_handles_open,
            self.materialized_files,
            self.materialized_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulating_adds_counters_and_keeps_the_slowest_fetch() {
        let a = Stats::default();
        a.read(10);
        a.range_request(FetchKind::Demand, 100, 2, 300, Duration::from_micros(7));
        let b = Stats::default();
        b.read(5);
        b.cache_hit();
        b.range_request(FetchKind::Demand, 50, 1, 60, Duration::from_micros(3));
        b.range_request(
            FetchKind::Stream,
            2 << 20,
            4,
            4 << 20,
            Duration::from_secs(1),
        );
        b.streamed(4, 4 << 20);
        b.prefetched(1, 60);
        let mut total = a.snapshot();
        total.accumulate(&b.snapshot());
        assert_eq!(
            (total.read_requests, total.read_bytes, total.cache_hits),
            (2, 15, 1)
        );
        assert_eq!(
            (
                total.range_requests,
                total.fetched_bytes,
                total.fetched_chunks
            ),
            (3, 150 + (2 << 20), 7)
        );
        // The stream's request is not a miss a reader waited for.
        assert_eq!(
            (
                total.demand_range_requests,
                total.fetch_micros_total,
                total.fetch_micros_max
            ),
            (2, 10, 7)
        );
        assert_eq!(
            (
                total.streamed_chunks,
                total.streamed_bytes,
                total.stream_range_requests
            ),
            (4, 2 << 20, 1)
        );
        assert_eq!(total.link_bytes_per_sec, 2 << 20);
        assert_eq!(
            (total.prefetched_chunks, total.prefetched_content_bytes),
            (1, 60)
        );
    }
}
