//! FUSE passthrough of materialized files: which inodes are open and how, and the background
//! thread that builds backing files.
//!
//! A regular file whose backing file is in the node cache (see [`crate::cache`]) is opened with
//! `FOPEN_PASSTHROUGH`: the kernel reads (and maps) the backing file itself and the daemon
//! never sees a read of it. The kernel holds an inode to one mode at a time: while any handle
//! of it is open without passthrough, a passthrough open fails (EIO for the program), and while
//! passthrough handles are open, every new open must be passthrough on the same backing id.
//! [`OpenFiles`] counts both kinds per inode so that every open is answered in the mode the
//! kernel will accept; the backing id lives as long as the inode's passthrough handles (the
//! kernel looks it up when it receives the open reply, after which it holds the file itself).
//!
//! Backing files are built by one background thread per mount ([`Materializer`]), from chunks
//! already in the node cache, never on a program's open: a file becomes a candidate when it is
//! opened or closed with all its chunks cached. The same thread logs the mount's counters at
//! debug level every `MountOptions::stats_log_interval`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::BackingId;
use pronto_artifact::WholeIndex;
use pronto_format::NodeKind;
use tracing::{debug, warn};

use crate::cache::{file_key, ChunkCache, MaterializeError, Materialized};
use crate::stats::Stats;

/// File handle of an open without passthrough.
pub(crate) const FH_NORMAL: u64 = 0;
/// File handle of an open with passthrough.
pub(crate) const FH_PASSTHROUGH: u64 = 1;

/// Backing files waiting to be built, at most; more candidates are dropped (they come back at
/// their next open or close).
const QUEUE: usize = 4096;

const SHARDS: usize = 16;

/// How long a build waits for the file's chunks that were still being fetched or stored when
/// it was asked for.
const LANDING_WAIT: Duration = Duration::from_secs(5);

/// One inode's open handles.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Handles open without passthrough (reads come to the daemon).
    pub(crate) normal: u32,
    /// Handles open with passthrough, all on `backing`.
    pub(crate) passthrough: u32,
    pub(crate) backing: Option<BackingId>,
}

/// The open regular files of a mount, by index inode (sharded locks: opens of different files
/// rarely wait for each other).
#[derive(Debug)]
pub(crate) struct OpenFiles {
    shards: [Mutex<HashMap<u32, Opened>>; SHARDS],
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl OpenFiles {
    pub(crate) fn lock(&self, ino: u32) -> MutexGuard<'_, HashMap<u32, Opened>> {
        self.shards[ino as usize % SHARDS]
            .lock()
            .expect("open files lock poisoned")
    }

    /// Gives up the backing ids without closing them: the connection is gone, and the kernel
    /// frees them with it (closing them now would only fail).
    pub(crate) fn forget_backing_ids(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().expect("open files lock poisoned");
            for opened in shard.values_mut() {
                if let Some(id) = opened.backing.take() {
                    let _ = id.into_raw();
                }
            }
        }
    }
}

/// Requests being answered, for an unmount to wait for (a reply sent after the connection
/// ended fails, and fuser logs it as an error).
#[derive(Debug, Default)]
pub(crate) struct Busy(AtomicUsize);

pub(crate) struct BusyGuard<'a>(&'a Busy);

impl Busy {
    pub(crate) fn enter(&self) -> BusyGuard<'_> {
        self.0.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self)
    }

    /// Waits until no request is being answered, or `timeout`; says whether it got there.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.0.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The mount's background thread: builds the backing files it is asked for, one at a time, at
/// a lower CPU priority, and logs the counters.
#[derive(Debug)]
pub(crate) struct Materializer {
    tx: SyncSender<u32>,
    /// Inodes queued or being built: each is asked for once.
    queued: Arc<Mutex<HashSet<u32>>>,
    cancel: Arc<AtomicBool>,
    /// Reports once when the thread has ended (taken by the mount, see [`Materializer::done`]).
    done: Mutex<Option<Receiver<()>>>,
}

/// What the background thread works with.
pub(crate) struct MaterializerContext {
    /// Files are asked for once their chunks are cached, so the index has its digests by then.
    pub(crate) index: WholeIndex,
    pub(crate) cache: Arc<ChunkCache>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mountpoint: PathBuf,
    /// Log the counters (debug) this often, when they changed.
    pub(crate) log_every: Option<Duration>,
}

impl Materializer {
    pub(crate) fn start(ctx: MaterializerContext) -> std::io::Result<Materializer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let queued: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let cancel = Arc::new(AtomicBool::new(false));
        let (q, c) = (queued.clone(), cancel.clone());
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pronto-materialize".into())
            .spawn(move || {
                run(ctx, rx, q, c);
                let _ = done_tx.send(());
            })?;
        Ok(Materializer {
            tx,
            queued,
            cancel,
            done: Mutex::new(Some(done)),
        })
    }

    /// What reports the thread's end: it ends once cancelled and the filesystem (which holds
    /// the sending side of its queue) is gone.
    pub(crate) fn done(&self) -> Option<Receiver<()>> {
        self.done.lock().expect("done lock poisoned").take()
    }

    /// Asks for the backing file of index inode `ino` (a regular file whose chunks are all
    /// cached). Never blocks.
    pub(crate) fn request(&self, ino: u32) {
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        if !self.queued.lock().expect("queue lock poisoned").insert(ino) {
            return;
        }
        match self.tx.try_send(ino) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued
                    .lock()
                    .expect("queue lock poisoned")
                    .remove(&ino);
            }
        }
    }

    /// Setting it stops building: the file being built is abandoned (its temporary removed),
    /// the queue dropped. The thread ends when the filesystem does.
    pub(crate) fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

fn run(
    ctx: MaterializerContext,
    rx: Receiver<u32>,
    queued: Arc<Mutex<HashSet<u32>>>,
    cancel: Arc<AtomicBool>,
) {
    // Background work nobody waits for: leave the CPU to the programs reading the mount.
    // Nice values are per thread on Linux. (Not the prefetch or the stream: a program may be
    // waiting on a chunk they claimed; see ARCHITECTURE.md, "Threads".)
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        debug!(error = %e, "lowering the materializer's priority");
    }
    let mut logged = None;
    let mut last_log = Instant::now();
    loop {
        let got = match ctx.log_every {
            Some(every) => rx.recv_timeout(every.saturating_sub(last_log.elapsed())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(ino) => {
                if !cancel.load(Ordering::Relaxed) {
                    build(&ctx, ino, &cancel);
                }
                queued.lock().expect("queue lock poisoned").remove(&ino);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(every) = ctx.log_every {
            if last_log.elapsed() >= every {
                last_log = Instant::now();
                let now = (ctx.stats.snapshot(), ctx.cache.stats());
                if logged != Some(now) {
                    debug!(
                        mountpoint = %ctx.mountpoint.display(),
                        "lazy rootfs: {}; node cache: {}",
                        now.0,
                        now.1
                    );
                    logged = Some(now);
                }
            }
        }
    }
}

fn build(ctx: &MaterializerContext, ino: u32, cancel: &AtomicBool) {
    let Some(index) = ctx.index.get() else {
        return;
    };
    let Ok(inode) = index.inode(ino) else {
        return;
    };
    if inode.kind != NodeKind::File {
        return;
    }
    let Ok(chunks) = index.chunks(ino) else {
        return;
    };
    // Chunks still being stored land within milliseconds; a fetch that fails never does.
    let deadline = Instant::now() + LANDING_WAIT;
    while !ctx.cache.contains_all(chunks.iter().map(|c| &c.digest)) {
        if Instant::now() >= deadline || cancel.load(Ordering::Relaxed) {
            debug!(inode = ino, "no backing file: chunks not all cached");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let key = file_key(&chunks);
    let started = Instant::now();
    match ctx.cache.materialize(&key, &chunks, inode.size, cancel) {
        Ok(Materialized::Built(bytes)) => {
            ctx.stats.materialized(bytes);
            debug!(
                inode = ino,
                file = %hex::encode(key),
                bytes,
                "backing file built in {:?}",
                started.elapsed()
            );
        }
        Ok(Materialized::Present | Materialized::InProgress) => {}
        Err(MaterializeError::Cancelled) => {}
        Err(e @ (MaterializeError::MissingChunk { .. } | MaterializeError::TooLarge { .. })) => {
            debug!(inode = ino, "no backing file: {e}");
        }
        Err(e) => warn!(inode = ino, file = %hex::encode(key), "building a backing file: {e}"),
    }
}
