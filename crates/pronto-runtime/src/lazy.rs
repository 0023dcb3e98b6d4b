//! Lazily loaded root filesystems: one FUSE mount per accelerated image on the node, shared by
//! all its instances (the overlay lower dir), unmounted when the last one goes.
//!
//! Layout under the node's data dir:
//! - `lazy/<digest hex>-<n>/`: a mount point; each mount gets a fresh one, so a mount being
//!   torn down never races a new mount of the same image;
//! - `chunks/`: the node chunk cache ([`pronto_lazyfs::ChunkCache`]), shared by every mount
//!   and kept across restarts.
//!
//! A killed daemon leaves its mounts behind with a dead connection; [`LazyStore::open`] detaches
//! them and removes their directories (after the node has unmounted the overlays above them).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pronto_artifact::{fetch_artifact_for_mount, ArtifactError, Revision};
use pronto_image::pull::ResolvedImage;
use pronto_image::{Digest, Reference, RegistryClient};
use pronto_lazyfs::stats::Stats;
use pronto_lazyfs::{
    AccessTrace, ChunkCache, LazyMount, MountOptions, StatsSnapshot, StreamPolicy,
};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("mounting the lazy rootfs at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The counters of every mount the store has made: those still mounted, read live, plus the
/// final counts of those gone, so that node-wide totals only ever grow.
#[derive(Debug, Default)]
struct StatsBook {
    inner: Mutex<StatsBookInner>,
}

#[derive(Debug, Default)]
struct StatsBookInner {
    gone: StatsSnapshot,
    live: HashMap<u64, Arc<Stats>>,
}

impl StatsBook {
    fn add(&self, n: u64, stats: Arc<Stats>) {
        self.lock().live.insert(n, stats);
    }

    /// Mount `n` is gone: its last counts join the totals of the gone.
    fn retire(&self, n: u64) {
        let mut book = self.lock();
        if let Some(stats) = book.live.remove(&n) {
            book.gone.accumulate(&stats.snapshot());
        }
    }

    fn totals(&self) -> StatsSnapshot {
        let book = self.lock();
        let mut total = book.gone;
        for stats in book.live.values() {
            total.accumulate(&stats.snapshot());
        }
        total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsBookInner> {
        self.inner.lock().expect("stats book poisoned")
    }
}

/// A mounted image; the mount lives as long as any instance holds this.
#[derive(Debug)]
pub struct SharedMount {
    pub digest: Digest,
    path: PathBuf,
    mount: Mutex<Option<LazyMount>>,
    /// Its number in the store (`lazy/<digest>-<n>`) and the store's counters.
    n: u64,
    book: Arc<StatsBook>,
    /// The background stream's policy, for a mount that prefetched a trace: its stream waits
    /// for the start to be over (see [`SharedMount::start_deferred_stream`]).
    deferred_stream: Option<StreamPolicy>,
}

impl SharedMount {
    /// The root of the image's tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What programs read from the mount since it was mounted (see
    /// [`LazyMount::take_access_trace`]); once.
    pub fn take_access_trace(&self) -> Option<AccessTrace> {
        self.mount
            .lock()
            .expect("mount lock poisoned")
            .as_ref()
            .and_then(LazyMount::take_access_trace)
    }

    pub fn stats(&self) -> Option<StatsSnapshot> {
        self.mount
            .lock()
            .expect("mount lock poisoned")
            .as_ref()
            .map(LazyMount::stats)
    }

    /// Starts the background stream of a mount that prefetched a trace, once its start is
    /// over (its first response, or a while after it became ready); a no-op for other mounts
    /// and after the first call. Why it waits: the prefetch already brings what the start
    /// reads, and streaming the rest meanwhile only competes with the start for CPU (decoding,
    /// cache writes) and the registry (measured on python-ml at 1 Gbit/s, 2 ms: the program's
    /// `ready` phase 4.4 s with the stream running beside it, 2.2 s with none).
    pub fn start_deferred_stream(&self) {
        if let Some(policy) = self.deferred_stream {
            if let Some(m) = self.mount.lock().expect("mount lock poisoned").as_mut() {
                m.start_stream(policy);
            }
        }
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.lock().expect("mount lock poisoned").take() {
            let stats = mount.stats();
            match mount.unmount() {
                Ok(()) => info!(image = %self.digest, %stats, "lazy rootfs unmounted"),
                Err(e) => warn!(image = %self.digest, error = %e, "unmounting lazy rootfs"),
            }
        }
        self.book.retire(self.n);
        if let Err(e) = std::fs::remove_dir(&self.path) {
            warn!(path = %self.path.display(), error = %e, "removing lazy mount point");
        }
    }
}

/// One image's entry in the store.
#[derive(Debug, Default)]
struct MountSlot {
    mount: tokio::sync::Mutex<Weak<SharedMount>>,
}

impl MountSlot {
    /// Mounted (and held by an instance) or being mounted.
    fn is_live(&self) -> bool {
        self.mount.try_lock().map_or(true, |w| w.strong_count() > 0)
    }
}

/// An image's manifest digest and the artifact revision mounted (`None`: the base's tag).
type MountKey = (Digest, Option<Digest>);

/// How [`LazyStore::acquire`] got its mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Another instance's mount.
    Shared,
    /// Mounted now, recording an access trace.
    Recording,
    /// Mounted now, prefetching the trace it was given.
    Prefetching,
}

#[derive(Debug)]
pub struct LazyStore {
    root: PathBuf,
    client: RegistryClient,
    cache: Arc<ChunkCache>,
    options: MountOptions,
    /// What a new mount does with the rest of its image (after its prefetch, if any).
    stream: StreamPolicy,
    fetch_rt: FetchRuntime,
    /// Per image and artifact revision (`None`: the base), its mount if any instance holds it.
    /// The per-image lock is held while that image is mounted, so concurrent starts of one
    /// image share one mount and starts of other images are not held up. A start pinned to a
    /// hot revision does not share a mount of the base (its instances keep theirs).
    mounts: Mutex<HashMap<MountKey, Arc<MountSlot>>>,
    next: AtomicU64,
    book: Arc<StatsBook>,
}

impl LazyStore {
    /// Opens the store under `root` (mount points) with the chunk cache in `cache_dir`.
    pub fn open(
        root: PathBuf,
        cache_dir: &Path,
        cache_bytes: u64,
        client: RegistryClient,
    ) -> io::Result<LazyStore> {
        std::fs::create_dir_all(&root)?;
        Ok(LazyStore {
            root,
            client,
            cache: Arc::new(ChunkCache::open(cache_dir, cache_bytes)?),
            options: MountOptions::default(),
            stream: StreamPolicy::Auto,
            fetch_rt: FetchRuntime::new()?,
            mounts: Mutex::default(),
            next: AtomicU64::new(0),
            book: Arc::default(),
        })
    }

    /// The mounted tree of `image`'s artifact, mounting it if no instance has it yet. A new
    /// mount starts prefetching `trace` (a previous start's reads) before this returns, or, with
    /// none, records what is read from it. Also says whether the mount is new and prefetches.
    ///
    /// A new mount reads the artifact from `repo` (an artifact repository; `None`: beside the
    /// image) with `own` (a function's client; `None`: the node's), for as long as it lives.
    /// Mounts are shared per image digest (and revision) whoever made them: the caller has
    /// checked this start's own access to the image first (see [`crate::images`]).
    ///
    /// `revision` pins the artifact manifest (a hot revision); it gets the same checks as the
    /// base (its subject and index are `image`'s), so a revision of another image is refused.
    pub async fn acquire(
        &self,
        image: &ResolvedImage,
        revision: Option<&Digest>,
        trace: Option<&AccessTrace>,
        own: Option<&RegistryClient>,
        repo: Option<&Reference>,
    ) -> Result<(Arc<SharedMount>, Acquired), LazyError> {
        let slot = {
            let mut mounts = self.mounts.lock().expect("mounts lock poisoned");
            // Forget images nobody holds or is mounting.
            mounts.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.is_live());
            mounts
                .entry((image.manifest_digest.clone(), revision.cloned()))
                .or_default()
                .clone()
        };
        let mut held = slot.mount.lock().await;
        if let Some(m) = held.upgrade() {
            return Ok((m, Acquired::Shared));
        }
        let client = own.unwrap_or(&self.client);
        let revision = revision.map_or(Revision::Base, |d| Revision::Pinned(d.clone()));
        let artifact =
            fetch_artifact_for_mount(client, image, repo.unwrap_or(&image.pinned), &revision)
                .await?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(format!("{}-{n}", image.manifest_digest.hex()));
        let mount_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LazyError::Mount { path, source }
        };
        std::fs::create_dir_all(&path).map_err(mount_err(&path))?;
        let (client, cache, options, rt, at) = (
            client.clone(),
            self.cache.clone(),
            self.options.clone(),
            self.fetch_rt.handle(),
            path.clone(),
        );
        let mounted = tokio::task::spawn_blocking(move || {
            LazyMount::mount(&artifact, client, cache, &at, &options, rt)
        })
        .await
        .expect("mount task panicked");
        let mut mount = match mounted {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                return Err(mount_err(&path)(e));
            }
        };
        let acquired = match trace {
            Some(t) if mount.prefetch(t) > 0 => Acquired::Prefetching,
            _ => Acquired::Recording,
        };
        // The rest of the image, when it pays (see `pronto_lazyfs::stream`): with no trace,
        // beside the start, which it may help; after a prefetch, once the start is over.
        let deferred_stream = if acquired == Acquired::Prefetching {
            Some(self.stream)
        } else {
            mount.start_stream(self.stream);
            None
        };
        self.book.add(n, mount.stats_handle());
        let shared = Arc::new(SharedMount {
            digest: image.manifest_digest.clone(),
            path,
            mount: Mutex::new(Some(mount)),
            n,
            book: self.book.clone(),
            deferred_stream,
        });
        *held = Arc::downgrade(&shared);
        Ok((shared, acquired))
    }

    /// New mounts stream the rest of their image per `policy` (`Auto` unless set).
    pub fn with_background_stream(mut self, policy: StreamPolicy) -> LazyStore {
        self.stream = policy;
        self
    }

    /// Detaches the mounts a previous process left under the root (their connection died with
    /// it) and removes their mount points; live mounts of this store are kept. Returns how
    /// many were removed.
    pub async fn cleanup_stale(&self) -> usize {
        let mut live: Vec<PathBuf> = Vec::new();
        for slot in self.slots() {
            // Waits for a mount under way: its directory is not stale.
            if let Some(m) = slot.mount.lock().await.upgrade() {
                live.push(m.path.clone());
            }
        }
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if live.contains(&path) {
                continue;
            }
            match pronto_lazyfs::cleanup_stale_mounts(&path) {
                Ok(n) if n > 0 => {
                    warn!(path = %path.display(), "detached a lazy rootfs left by a previous daemon");
                    removed += n;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "detaching a stale lazy rootfs")
                }
            }
            if let Err(e) = std::fs::remove_dir(&path) {
                warn!(path = %path.display(), error = %e, "removing a stale mount point");
            }
        }
        removed
    }

    /// `digest` is mounted (or being mounted), any revision of it.
    pub fn has_mount(&self, digest: &Digest) -> bool {
        self.mounts
            .lock()
            .expect("mounts lock poisoned")
            .iter()
            .any(|((d, _), slot)| d == digest && slot.is_live())
    }

    /// Counters of every live mount.
    pub async fn stats(&self) -> Vec<(Digest, StatsSnapshot)> {
        let mut out = Vec::new();
        for slot in self.slots() {
            if let Some(m) = slot.mount.lock().await.upgrade() {
                if let Some(s) = m.stats() {
                    out.push((m.digest.clone(), s));
                }
            }
        }
        out
    }

    /// The counters of every mount this store has made, added up: those unmounted since
    /// included, so each total only grows (Prometheus counters).
    pub fn totals(&self) -> StatsSnapshot {
        self.book.totals()
    }

    fn slots(&self) -> Vec<Arc<MountSlot>> {
        let mounts = self.mounts.lock().expect("mounts lock poisoned");
        mounts.values().cloned().collect()
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }
}

/// The runtime the FUSE threads drive chunk fetches on: its own, so that fetches work whatever
/// runtime (or none) the caller has, and a busy daemon runtime never delays a program's read.
#[derive(Debug)]
struct FetchRuntime(Option<tokio::runtime::Runtime>);

impl FetchRuntime {
    fn new() -> io::Result<FetchRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pronto-fetch")
            .enable_all()
            .build()?;
        Ok(FetchRuntime(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
            .clone()
    }
}

impl Drop for FetchRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
