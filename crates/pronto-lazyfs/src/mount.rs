//! Mounting an artifact: [`LazyMount::mount`] serves an [`Artifact`]'s index at a directory
//! until [`LazyMount::unmount`] (or drop); [`cleanup_stale_mounts`] removes what a killed
//! process left.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use pronto_artifact::Artifact;
use pronto_format::ChunkRef;
use pronto_image::RegistryClient;
use tracing::{debug, info, warn};

use crate::cache::{CacheStats, ChunkCache};
use crate::fetch::{ChunkFetcher, RetryPolicy};
use crate::fs::{LazyFs, LazyFsParts, PassthroughPolicy};
use crate::mountinfo;
use crate::passthrough::{Busy, Materializer, MaterializerContext};
use crate::stats::{Stats, StatsSnapshot, StreamState};
use crate::stream::StreamPolicy;
use crate::trace::{AccessRecorder, AccessTrace};

/// How a mount's source starts in `/proc/self/mountinfo` (then the index digest).
const SOURCE_PREFIX: &str = "pronto:";

/// How long an unmount waits for the FUSE workers to finish.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an unmount waits for the requests being answered (a reply sent after the
/// connection ended fails).
const QUIESCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an unmount waits for the `RELEASE` of files closed just before it (the kernel sends
/// them after the program's `close`, without waiting): a mount still in use waits this long.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long an unmount waits for the background stream to end: it drops its requests at
/// once (it looks every 20 ms), landing what it has takes a few ms.
const STREAM_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Threads answering the kernel: a read that waits for the registry blocks only its own.
    pub threads: usize,
    pub retry: RetryPolicy,
    /// The kernel's readahead on the mount, in KiB.
    pub readahead_kb: u32,
    /// Record the chunks read from the mount on, for [`LazyMount::take_access_trace`]. While
    /// it records, no file is opened with passthrough (the recorder must see every read).
    pub record_access: bool,
    /// Serve files whose chunks are all in the node cache through FUSE passthrough: a backing
    /// file is built from the chunks in the background, and later opens of the file hand it
    /// to the kernel, which reads it without the daemon. Used only if the kernel offers it.
    pub passthrough: bool,
    /// Files smaller than this are always served by the daemon (no backing file).
    pub passthrough_min_size: u64,
    /// Log the mount's and the node cache's counters (debug level) this often, when they
    /// changed.
    pub stats_log_interval: Option<std::time::Duration>,
    /// Stream the rest of the image into the node cache in the background (behind the
    /// programs' reads; see [`crate::stream`]). Off by default here; the runtime uses `Auto`.
    pub background_stream: StreamPolicy,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 8,
            retry: RetryPolicy::default(),
            readahead_kb: 1024,
            record_access: true,
            passthrough: true,
            passthrough_min_size: 64 << 10,
            stats_log_interval: Some(std::time::Duration::from_secs(60)),
            background_stream: StreamPolicy::Off,
        }
    }
}

/// A mounted artifact. Dropping it unmounts (as [`LazyMount::unmount`], errors logged).
#[derive(Debug)]
pub struct LazyMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    /// `st_dev` of the mount: names its FUSE connection in `/sys/fs/fuse/connections`.
    dev: u64,
    stats: Arc<Stats>,
    fetcher: Arc<ChunkFetcher>,
    cache: Arc<ChunkCache>,
    recorder: Arc<AccessRecorder>,
    prefetch: Option<Prefetch>,
    /// The background stream, if one was started.
    stream: Option<Prefetch>,
    /// Requests the FUSE workers are answering.
    busy: Arc<Busy>,
    /// Stops the building of backing files.
    materialize_cancel: Arc<AtomicBool>,
    /// Reports the end of the thread that builds them (it holds the cache).
    materialize_done: Option<std::sync::mpsc::Receiver<()>>,
}

/// A prefetch (or the stream) under way: its thread reports on `done` when it ends.
#[derive(Debug)]
struct Prefetch {
    cancel: Arc<AtomicBool>,
    done: std::sync::mpsc::Receiver<()>,
}

impl LazyMount {
    /// Mounts `artifact` at `mountpoint` (an existing empty directory). Chunks are read from
    /// `cache` or fetched from `artifact`'s repository with `client`; `rt` drives those
    /// fetches (the FUSE threads block on it, so it must not be the caller's current-thread
    /// runtime).
    pub fn mount(
        artifact: &Artifact,
        client: RegistryClient,
        cache: Arc<ChunkCache>,
        mountpoint: &Path,
        options: &MountOptions,
        rt: tokio::runtime::Handle,
    ) -> io::Result<LazyMount> {
        let stats = Arc::new(Stats::default());
        let fetcher = Arc::new(
            ChunkFetcher::new(
                client,
                artifact.reference.clone(),
                artifact.packs.clone(),
                cache.clone(),
                stats.clone(),
                options.retry,
                rt,
            )
            .with_whole_index(artifact.whole_index.clone()),
        );
        // The pack layout now if the index is whole already (nobody waits for it).
        let _ = fetcher.whole_index_now();
        let recorder = Arc::new(AccessRecorder::new(options.record_access));
        let busy = Arc::new(Busy::default());
        let materializer = Materializer::start(MaterializerContext {
            index: artifact.whole_index.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            mountpoint: mountpoint.to_owned(),
            log_every: options.stats_log_interval,
        })?;
        let materialize_cancel = materializer.cancel_handle();
        let materialize_done = materializer.done();
        let fs = LazyFs::new(LazyFsParts {
            index: artifact.index.clone(),
            fetcher: fetcher.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            readahead: options.readahead_kb.saturating_mul(1024),
            recorder: recorder.clone(),
            busy: busy.clone(),
            materializer,
            passthrough: PassthroughPolicy {
                wanted: options.passthrough,
                min_size: options.passthrough_min_size,
            },
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("{SOURCE_PREFIX}{}", artifact.index_digest)),
            MountOption::RO,
            MountOption::DefaultPermissions,
            // An image's device nodes and setuid programs behave as they would unpacked.
            MountOption::Dev,
            MountOption::Suid,
            MountOption::Exec,
            MountOption::NoAtime,
        ];
        // Containers run as the image's users, not as the mounting root.
        config.acl = SessionACL::All;
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = true;
        ensure_fusectl();
        let session = match fuser::spawn_mount(fs, mountpoint, &config) {
            Ok(s) => s,
            Err(e) => {
                materialize_cancel.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        let dev = std::fs::metadata(mountpoint)?.dev();
        set_readahead(dev, options.readahead_kb);
        let stream = start_stream(&fetcher, options.background_stream);
        Ok(LazyMount {
            session: Some(session),
            mountpoint: mountpoint.to_owned(),
            dev,
            stats,
            fetcher,
            cache,
            recorder,
            prefetch: None,
            stream,
            busy,
            materialize_cancel,
            materialize_done,
        })
    }

    /// The chunks read from the mount since it was mounted, in first-read order; recording
    /// stops. `None` if the mount was not recording (see [`MountOptions::record_access`]) or
    /// the trace was taken before.
    pub fn take_access_trace(&self) -> Option<AccessTrace> {
        self.recorder.take()
    }

    /// Starts fetching the chunks of `trace` (a previous start's reads of this image) in the
    /// background, ahead of the program's reads; a mount that prefetches stops recording.
    /// Digests the index does not hold are skipped. Returns how many chunks will be fetched
    /// (those of the trace the index holds; while the index's chunk digests have not arrived,
    /// the trace's length: the thread maps it once they have). Unmounting cancels what is left.
    pub fn prefetch(&mut self, trace: &AccessTrace) -> usize {
        self.recorder.stop();
        // The chunks now, or (the digests not here yet) the trace, mapped by the thread.
        let planned = match self.fetcher.whole_index_now() {
            Some(index) => Ok(trace_chunks(index, trace)),
            None => Err(trace.clone()),
        };
        let count = planned.as_ref().map_or_else(|t| t.chunks.len(), Vec::len);
        if count == 0 {
            return 0;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = std::sync::mpsc::channel();
        let (fetcher, stop, stats) = (self.fetcher.clone(), cancel.clone(), self.stats.clone());
        // Before the thread starts: a stream started next sees it (`Auto` waits for it).
        self.fetcher.set_prefetching(true);
        let spawned = std::thread::Builder::new()
            .name("pronto-prefetch".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let chunks = planned
                    .or_else(|trace| {
                        fetcher
                            .whole_index()
                            .map(|index| trace_chunks(index, &trace))
                    })
                    .unwrap_or_else(|e| {
                        warn!(error = %e, "no prefetch");
                        Vec::new()
                    });
                fetcher.prefetch(&chunks, &stop);
                fetcher.set_prefetching(false);
                let s = stats.snapshot();
                info!(
                    chunks = count,
                    fetched = s.prefetched_chunks,
                    bytes = s.prefetched_content_bytes,
                    cancelled = stop.load(Ordering::Relaxed),
                    "prefetch done in {:?}",
                    started.elapsed()
                );
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                self.prefetch = Some(Prefetch { cancel, done });
                count
            }
            Err(e) => {
                warn!(error = %e, "starting the prefetch thread");
                self.fetcher.set_prefetching(false);
                0
            }
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mount's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The node cache's counters (shared by every mount over the same cache).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The mount's live counters, readable after it is gone (for node-wide totals).
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stops building backing files, lets the requests being answered finish (bounded; a fetch
    /// that fails is not retried any more), detaches the mount, ends its FUSE connection (any
    /// reader still inside gets ENOTCONN, never a hang) and joins the worker threads.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    /// Cancels a prefetch under way and waits (bounded) for its requests in flight to land.
    pub fn stop_prefetch(&mut self) {
        if let Some(p) = self.prefetch.take() {
            // Requests in flight finish (each bounded by the retry policy's timeout).
            p.cancel.store(true, Ordering::Relaxed);
            if p.done.recv_timeout(JOIN_TIMEOUT).is_err() {
                warn!(mountpoint = %self.mountpoint.display(), "prefetch still running {JOIN_TIMEOUT:?} after it was cancelled; leaving it");
            }
        }
    }

    /// Starts the background stream with `policy` if none was started (by the mount options
    /// or before); call it after [`LazyMount::prefetch`], which `Auto` then waits for.
    pub fn start_stream(&mut self, policy: StreamPolicy) {
        if self.stream.is_none() {
            self.stream = start_stream(&self.fetcher, policy);
        }
    }

    /// Stops the background stream (its requests in flight are dropped; bounded wait).
    pub fn stop_stream(&mut self) {
        if let Some(s) = self.stream.take() {
            s.cancel.store(true, Ordering::Relaxed);
            if s.done.recv_timeout(STREAM_STOP_WAIT).is_err() {
                warn!(mountpoint = %self.mountpoint.display(), "background stream still running {STREAM_STOP_WAIT:?} after it was stopped; leaving it");
            }
        }
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        self.stop_stream();
        self.stop_prefetch();
        self.materialize_cancel.store(true, Ordering::Relaxed);
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Every request read from the connection gets its answer before the connection ends
        // (a reply after that fails, and fuser logs an error): the RELEASE of files just closed
        // is let in, fetches stop retrying, and the workers finish what they have (requests
        // still queued in the kernel are dropped with the connection, unanswered and harmless).
        self.fetcher.close();
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while self.stats.handles_open() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if !self.busy.wait_idle(QUIESCE_TIMEOUT) {
            warn!(mountpoint = %self.mountpoint.display(), "requests still being answered {QUIESCE_TIMEOUT:?} into the unmount; ending the connection under them");
        }
        let detached = detach(&self.mountpoint);
        abort_connection(self.dev);
        // The workers end when the connection does; if it could not be aborted and a reader
        // still holds the detached mount, give up waiting rather than hang the caller.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(session.join());
        });
        let joined = match done_rx.recv_timeout(JOIN_TIMEOUT) {
            // The workers see the abort as ECONNABORTED: the end we asked for.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            Ok(r) => r,
            Err(_) => {
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    "FUSE workers still busy {JOIN_TIMEOUT:?} after unmount; leaving them"
                );
                return detached;
            }
        };
        // With the filesystem gone, the materializer ends (a write under way stops at its next
        // chunk): once unmounted, the mount holds nothing of the cache.
        if let Some(done) = self.materialize_done.take() {
            if done.recv_timeout(JOIN_TIMEOUT).is_err() {
                warn!(mountpoint = %self.mountpoint.display(), "backing file builder still running {JOIN_TIMEOUT:?} after unmount; leaving it");
            }
        }
        detached.and(joined)
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting lazy rootfs");
        }
    }
}

/// Starts the background stream's thread (none for `Off`).
fn start_stream(fetcher: &Arc<ChunkFetcher>, policy: StreamPolicy) -> Option<Prefetch> {
    if policy == StreamPolicy::Off {
        return None;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = std::sync::mpsc::channel();
    let (streamer, stop) = (fetcher.clone(), cancel.clone());
    let spawned = std::thread::Builder::new()
        .name("pronto-stream".into())
        .spawn(move || {
            // The stream walks the packs' layout, made once the chunk digests are in.
            if let Err(e) = streamer.whole_index() {
                warn!(error = %e, "no background stream");
                streamer.stats().set_stream_state(StreamState::Stopped);
                let _ = done_tx.send(());
                return;
            }
            let state = crate::stream::run(&streamer, policy, &stop);
            streamer.stats().set_stream_state(state);
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => Some(Prefetch { cancel, done }),
        Err(e) => {
            warn!(error = %e, "starting the background stream");
            fetcher.stats().set_stream_state(StreamState::Stopped);
            None
        }
    }
}

/// The chunks of `trace` that `index` holds, in trace order.
fn trace_chunks(index: &pronto_format::Index, trace: &AccessTrace) -> Vec<ChunkRef> {
    let mut by_digest: HashMap<[u8; 32], ChunkRef> = HashMap::new();
    for n in 0..index.inode_count() {
        for c in index.chunks(n).unwrap_or_default() {
            by_digest.entry(c.digest).or_insert(c);
        }
    }
    trace
        .chunks
        .iter()
        .filter_map(|d| by_digest.get(d).copied())
        .collect()
}

fn detach(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        // Not mounted (any more): nothing to undo.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Mounts the FUSE control filesystem if nothing has (systemd does at boot; minimal hosts and
/// containers may not): aborting a connection goes through it.
fn ensure_fusectl() {
    const DIR: &str = "/sys/fs/fuse/connections";
    let mounted = mountinfo::mounts()
        .map(|m| m.iter().any(|m| m.fstype == "fusectl"))
        .unwrap_or(false);
    if !mounted && Path::new(DIR).is_dir() {
        if let Err(e) = rustix::mount::mount(
            "fusectl",
            DIR,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        ) {
            debug!(error = %e, "mounting fusectl");
        }
    }
}

/// FUSE mounts are anonymous devices (major 0); the connection's directory is named by the
/// kernel's device number, which for major 0 is the minor.
fn abort_connection(dev: u64) {
    let path = format!(
        "/sys/fs/fuse/connections/{}/abort",
        libc::minor(dev as libc::dev_t)
    );
    if let Err(e) = std::fs::write(&path, "1") {
        if e.kind() != io::ErrorKind::NotFound {
            debug!(path, error = %e, "aborting FUSE connection");
        }
    }
}

fn set_readahead(dev: u64, kb: u32) {
    let (major, minor) = (
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t),
    );
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        debug!(path, error = %e, "setting readahead");
    }
}

/// Pronto's FUSE mounts at or below `dir`, deepest first (from `/proc/self/mountinfo`: type
/// `fuse`, source `pronto:...`).
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mountinfo::mounts()?
        .into_iter()
        .filter(|m| m.fstype == "fuse" && m.source.starts_with(SOURCE_PREFIX))
        .map(|m| m.mountpoint)
        .filter(|mp| mp.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// Detaches every Pronto FUSE mount at or below `dir`: what a killed process left. Its
/// connection died with the process, so the mount only answers ENOTCONN; detaching frees the
/// mountpoint. Returns how many were removed.
pub fn cleanup_stale_mounts(dir: &Path) -> io::Result<usize> {
    let stale = mounts_under(dir)?;
    for mp in &stale {
        detach(mp)?;
    }
    Ok(stale.len())
}
