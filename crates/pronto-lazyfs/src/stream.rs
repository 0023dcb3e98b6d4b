//! The background stream: the chunks of an image not yet in the node cache, fetched in pack
//! order in large Range requests, verified and decompressed (each chunk as soon as its bytes
//! are in) and stored in the cache (on the blocking pool), so that a start that reads much of its image, or a program
//! that later reads files its start did not, finds them local instead of paying round trips.
//!
//! It stays behind everything else: a chunk is claimed in the fetcher's in-flight map only when
//! its request leaves (readers' misses go out on their own, never queued behind it), and while
//! any other request (a miss, read-ahead, prefetch) is in flight at most one stream request is
//! (the others wait before claiming). Requests are sized from the measured link (about
//! `REQUEST_TIME` of transfer) so a reader that needs a chunk the stream already claimed waits
//! for at most one such request. A stop (unmount) drops the requests in flight at once; their
//! chunks' flights fail with `fetch::ABANDONED` and whoever waits on one fetches it itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pronto_format::ChunkRef;
use tracing::{debug, info};

use crate::fetch::ChunkFetcher;
use crate::stats::{FetchKind, StreamState};

/// When a mount streams the rest of its image (see `MountOptions::background_stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamPolicy {
    /// Never: only what programs read (and prefetch) is fetched.
    #[default]
    Off,
    /// When it pays, decided from the link measured on the mount's own requests and the
    /// bytes left (see [`auto_go`]).
    Auto,
    /// From the mount on.
    Always,
}

impl std::str::FromStr for StreamPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<StreamPolicy, String> {
        match s {
            "off" => Ok(StreamPolicy::Off),
            "auto" => Ok(StreamPolicy::Auto),
            "always" => Ok(StreamPolicy::Always),
            _ => Err(format!("{s:?}: expected off, auto or always")),
        }
    }
}

/// Requests in flight at most while nothing else is.
const STREAM_REQUESTS: usize = 3;
/// A stream request carries about this much transfer at the measured rate...
const REQUEST_TIME: Duration = Duration::from_millis(64);
/// ... within these bounds (stored bytes); before any measurement, `DEFAULT_REQUEST_BYTES`.
const MIN_REQUEST_BYTES: u64 = 1 << 20;
const MAX_REQUEST_BYTES: u64 = 8 << 20;
const DEFAULT_REQUEST_BYTES: u64 = 4 << 20;
/// `Auto` with nothing measured yet: the stream's first request, this size, measures the link
/// (at 1 Gbit/s about 17 ms of transfer, at 100 Mbit/s 170 ms).
const PROBE_BYTES: u64 = 2 << 20;
/// `Auto`: stream at once when the rest of the image takes at most this long at the measured
/// rate (a start can then lose at most this much link time to it, and a full pull would have
/// cost that and more)...
pub const EAGER_TIME: Duration = Duration::from_secs(5);
/// ... otherwise once no other request has been in flight for this long (the start's burst of
/// misses is over: it answers, or computes).
pub(crate) const QUIET_TIME: Duration = Duration::from_secs(1);
/// A stream started by the quiet rule (the rest of the image takes longer than `EAGER_TIME`)
/// sends a request only once no other request has been in flight for this long: on such a
/// link a stream request beside a program's misses halves their share of it, and the program
/// was found to resume its reads after pauses of a second or more (python-ml at 100 Mbit/s,
/// 20 ms: its first start 20-28 s with the stream taking every pause, against 17 s for a full
/// pull).
const GAP: Duration = Duration::from_millis(300);
/// How often a waiting stream looks again, and how soon a stop is seen.
const POLL: Duration = Duration::from_millis(20);

/// Streams the rest of the image until every chunk is cached (`Done`), `cancel` is set or a
/// request fails (`Stopped`). Blocking: run it on a thread of its own.
pub(crate) fn run(
    fetcher: &Arc<ChunkFetcher>,
    policy: StreamPolicy,
    cancel: &AtomicBool,
) -> StreamState {
    let stats = fetcher.stats();
    if policy == StreamPolicy::Off {
        return StreamState::Off;
    }
    stats.set_stream_state(StreamState::Waiting);
    let (stored, content) = remaining(fetcher);
    if stored == 0 {
        return StreamState::Done;
    }
    // An image that does not fit would evict itself (and other images' chunks) as it came.
    if content > fetcher.cache().capacity() / 2 {
        info!(
            content,
            capacity = fetcher.cache().capacity(),
            "not streaming the image: more than half the node cache"
        );
        return StreamState::Stopped;
    }
    let mut failed = false;
    // Streaming on a link too slow to bring the rest soon: only in the program's gaps.
    let mut gentle = false;
    if policy == StreamPolicy::Auto {
        // A prefetch fetches what the start will read first: after it.
        while fetcher.is_prefetching() {
            if cancel.load(Ordering::Relaxed) {
                return StreamState::Stopped;
            }
            std::thread::sleep(POLL);
        }
        if stats.link_rate() == 0 {
            // Nothing measured the link yet (a start's misses are small): one request of the
            // stream does, the first of the image.
            let first: Vec<_> = runs(fetcher, PROBE_BYTES).into_iter().take(1).collect();
            failed = stream_runs(fetcher, first, cancel, false);
        }
        let fetched_before = stats.snapshot().fetched_bytes;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return StreamState::Stopped;
            }
            let left = stored.saturating_sub(stats.snapshot().fetched_bytes - fetched_before);
            let (busy, idle) = fetcher.foreground();
            if auto_go(stats.link_rate(), left, busy, idle) {
                gentle = !eager(stats.link_rate(), left);
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    stats.set_stream_state(StreamState::Streaming);
    let rate = stats.link_rate();
    let request_bytes = if rate == 0 {
        DEFAULT_REQUEST_BYTES
    } else {
        ((rate as f64 * REQUEST_TIME.as_secs_f64()) as u64)
            .clamp(MIN_REQUEST_BYTES, MAX_REQUEST_BYTES)
    };
    let runs = runs(fetcher, request_bytes);
    let started = Instant::now();
    debug!(
        runs = runs.len(),
        request_bytes, rate, "streaming the rest of the image"
    );
    if !failed {
        failed = stream_runs(fetcher, runs, cancel, gentle);
    }
    let state = if cancel.load(Ordering::Relaxed) || failed {
        StreamState::Stopped
    } else {
        StreamState::Done
    };
    let s = stats.snapshot();
    info!(
        chunks = s.streamed_chunks,
        bytes = s.streamed_bytes,
        requests = s.stream_range_requests,
        state = StreamState::name(state as u64),
        "background stream ended after {:?}",
        started.elapsed()
    );
    state
}

/// Fetches `runs` into the node cache, `STREAM_REQUESTS` at a time (one while other requests
/// are in flight; `gentle`: none, and none until they have been quiet for `GAP`), until done
/// or `cancel`; whether a request failed (the rest not tried).
fn stream_runs(
    fetcher: &Arc<ChunkFetcher>,
    runs: Vec<Vec<ChunkRef>>,
    cancel: &AtomicBool,
    gentle: bool,
) -> bool {
    let active = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let one = |run: Vec<ChunkRef>| {
        let (active, failed) = (&active, &failed);
        async move {
            // Behind everything else: one stream request at most while others are in flight.
            loop {
                if cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    return;
                }
                let (busy, idle) = fetcher.foreground();
                if may_send(gentle, busy, idle, active.load(Ordering::SeqCst)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let lead = fetcher.claim(&run);
            for piece in crate::fetch::adjacent_pieces(&lead) {
                let (at, end) = (piece.start, piece.end);
                let refs: Vec<ChunkRef> = lead[piece].iter().map(|(c, _)| *c).collect();
                // Each chunk goes to its waiters as soon as it is in (see `fetch_run`).
                let results = tokio::select! {
                    r = fetcher.fetch_run(&refs, FetchKind::Stream, Some(&lead[at..end])) => r,
                    () = stopped(cancel) => {
                        fetcher.release(&lead[at..], crate::fetch::ABANDONED);
                        break;
                    }
                };
                let ok = results.iter().filter(|r| r.is_ok()).count();
                if ok < results.len() {
                    failed.store(true, Ordering::Relaxed);
                }
                let content: u64 = results
                    .iter()
                    .flatten()
                    .map(|(data, _)| data.len() as u64)
                    .sum();
                let (f, piece) = (fetcher.clone(), lead[at..end].to_vec());
                // Cache writes are file I/O: on the blocking pool, several at once, while the
                // stream's thread decodes the next request's chunks as they come.
                let _ = tokio::task::spawn_blocking(move || drop(f.land(&piece, results))).await;
                // Counted once cached.
                fetcher.stats().streamed(ok as u64, content);
            }
            active.fetch_sub(1, Ordering::SeqCst);
        }
    };
    fetcher.runtime().block_on(
        futures_util::stream::iter(runs)
            .map(one)
            .buffer_unordered(STREAM_REQUESTS)
            .collect::<Vec<()>>(),
    );
    failed.load(Ordering::Relaxed)
}

/// `Auto`'s rule: stream now if the measured link (`rate`, bytes/s; 0: not measured yet)
/// brings the `left` stored bytes within [`EAGER_TIME`], or else once the start's misses have
/// settled (no other request in flight, none for [`QUIET_TIME`]).
pub(crate) fn auto_go(rate: u64, left: u64, busy: usize, idle: Duration) -> bool {
    eager(rate, left) || (busy == 0 && idle >= QUIET_TIME)
}

/// Whether the measured link brings the `left` stored bytes within [`EAGER_TIME`].
fn eager(rate: u64, left: u64) -> bool {
    rate > 0 && (left as f64 / rate as f64) <= EAGER_TIME.as_secs_f64()
}

/// Whether a stream request may leave now, with `busy` other requests in flight (the last
/// one ended `idle` ago) and `active` stream requests: beside others, one at most; `gentle`
/// (a slow link), none, and only after `GAP` without any.
fn may_send(gentle: bool, busy: usize, idle: Duration, active: usize) -> bool {
    if gentle {
        busy == 0 && idle >= GAP
    } else {
        busy == 0 || active == 0
    }
}

/// Resolves once `cancel` is set (looked at every [`POLL`]).
async fn stopped(cancel: &AtomicBool) {
    while !cancel.load(Ordering::Relaxed) {
        tokio::time::sleep(POLL).await;
    }
}

/// Stored and content bytes of the image's chunks not in the node cache (repeats once).
fn remaining(fetcher: &ChunkFetcher) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut stored, mut content) = (0, 0);
    for c in fetcher.layout().iter().flatten() {
        if seen.insert(c.digest) && !fetcher.cache().contains(&c.digest) {
            stored += u64::from(c.compressed_size);
            content += u64::from(c.uncompressed_size);
        }
    }
    (stored, content)
}

/// The chunks not in the node cache, in pack order, cut into runs of adjacent chunks of at
/// most `max` stored bytes (a larger chunk alone).
fn runs(fetcher: &ChunkFetcher, max: u64) -> Vec<Vec<ChunkRef>> {
    let mut seen = std::collections::HashSet::new();
    let mut runs: Vec<Vec<ChunkRef>> = Vec::new();
    for pack in fetcher.layout() {
        let mut run: Vec<ChunkRef> = Vec::new();
        for c in pack {
            if !seen.insert(c.digest) || fetcher.cache().contains(&c.digest) {
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            if let Some(first) = run.first() {
                let last = run[run.len() - 1];
                if last.pack_range().end != c.offset || c.pack_range().end - first.offset > max {
                    runs.push(std::mem::take(&mut run));
                }
            }
            run.push(*c);
        }
        if !run.is_empty() {
            runs.push(run);
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn policies_parse_from_their_flag_values() {
        assert_eq!("off".parse(), Ok(StreamPolicy::Off));
        assert_eq!("auto".parse(), Ok(StreamPolicy::Auto));
        assert_eq!("always".parse(), Ok(StreamPolicy::Always));
        assert!("Auto"
            .parse::<StreamPolicy>()
            .unwrap_err()
            .contains("off, auto or always"));
    }

    #[test]
    fn a_gentle_stream_waits_for_a_pause_and_an_eager_one_stays_one_beside_others() {
        let ms = Duration::from_millis;
        // Eager: one request beside the program's, several when nothing else is in flight.
        assert!(may_send(false, 2, ms(0), 0));
        assert!(!may_send(false, 2, ms(0), 1));
        assert!(may_send(false, 0, ms(0), 2));
        // Gentle: never beside another request, and only after a pause.
        assert!(!may_send(true, 1, ms(5000), 0));
        assert!(!may_send(true, 0, ms(100), 0));
        assert!(may_send(true, 0, GAP, 0));
        assert!(may_send(true, 0, GAP, 2));
    }

    #[test]
    fn auto_streams_at_once_on_a_fast_link_else_after_the_burst() {
        let s = Duration::from_secs;
        // 1 Gbit/s, 400 MB left: 3.2 s, at once even while misses are in flight.
        assert!(auto_go(125_000_000, 400_000_000, 3, s(0)));
        // 100 Mbit/s, 400 MB left: 32 s: not while the start reads...
        assert!(!auto_go(12_500_000, 400_000_000, 1, s(5)));
        assert!(!auto_go(
            12_500_000,
            400_000_000,
            0,
            Duration::from_millis(300)
        ));
        // ... once it has been quiet for a second.
        assert!(auto_go(12_500_000, 400_000_000, 0, s(1)));
        // Not measured yet: only after the burst.
        assert!(!auto_go(0, 1, 1, s(0)));
    }
}
