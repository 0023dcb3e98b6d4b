//! The node's store of unpacked images: `DATA/images/<manifest hex>/`, unpacked once per digest
//! (the full-pull path of `pronto-image`) and shared read-only by every instance of that image
//! as the lower dir of its overlay.
//!
//! Concurrent starts of one image from one repository share one pull (a job per digest and
//! source). The pull runs as a task of its own: a start that gives up waiting (its
//! `initializationTimeout`, a shutdown) leaves it running, so an image whose pull takes longer
//! than a start may wait still arrives, and the next start finds it (or joins the pull still
//! under way) instead of beginning again from nothing. The pull itself is bounded by the
//! registry client's timeouts and the unpacked-size bound; a failed one is forgotten, so the
//! next start tries again; what a daemon killed mid-pull left is removed when the store opens.
//! Starts of the same digest from another registry or repository do not wait for it at all:
//! they pull on their own, and whichever finishes first puts the tree in place (the other
//! finds it there). So one stalled registry holds up no start of another.
//!
//! **Sharing and credentials.** A tree is shared per digest, whoever pulled it, but a start may
//! use a tree it did not prove it could read only under one rule: a tree the node's own
//! credentials pulled (the daemon-wide ones) serves every start that uses them without asking
//! the registry. Any other start — a function with credentials of its own, or a tree that a
//! function's own credentials pulled (marked by a `<digest hex>.private` file, written before
//! the pull) — first proves its access with its own client ([`ImageStore::trusts`], then
//! [`RegistryClient::authorize_pull`], once per client and repository while the daemon runs),
//! and a refusal fails the start. So a function without credentials never starts a private
//! image another function pulled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::{Digest, RegistryClient};

/// A pull: the image's digest and where it comes from (`registry/repository`).
type PullKey = (Digest, String);
/// A pull under way, awaited by every start that needs it.
type PullJob = Shared<BoxFuture<'static, Result<PathBuf, Arc<PullError>>>>;
/// The pulls under way, each with a number so a finished one removes only itself.
type InFlight = Arc<Mutex<HashMap<PullKey, (u64, PullJob)>>>;

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    client: RegistryClient,
    /// Bound of an image's uncompressed layers (see [`pull::UnpackOptions`]).
    max_unpacked_bytes: u64,
    /// One pull per digest and source (`registry/repository`): concurrent cold starts of the
    /// same image from the same place wait for one unpack.
    in_flight: InFlight,
    next_job: std::sync::atomic::AtomicU64,
}

impl ImageStore {
    /// The store in `root`. What unpacks killed mid-way (the daemon's `kill -9`) left there,
    /// their staging and download directories, is removed: call it only when no other process
    /// unpacks into `root`.
    pub fn new(
        root: PathBuf,
        client: RegistryClient,
        max_unpacked_bytes: u64,
    ) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(&root)?;
        for path in pull::remove_stale_temp_dirs(&root)? {
            tracing::warn!(path = %path.display(), "removed what an interrupted image pull left");
        }
        Ok(ImageStore {
            root,
            client,
            max_unpacked_bytes,
            in_flight: InFlight::default(),
            next_job: Default::default(),
        })
    }

    /// Where `digest` is (or will be) unpacked.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    /// The node has `digest` unpacked.
    pub fn has(&self, digest: &Digest) -> bool {
        is_complete(&self.path_of(digest))
    }

    /// The node's own client (the daemon-wide credentials).
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// A start with `own` credentials (else the node's) may use the tree of `digest` without
    /// proving its access to the registry: the node's credentials pulled it and the start uses
    /// them.
    pub fn trusts(&self, digest: &Digest, own: bool) -> bool {
        !own && self.has(digest) && !self.private_marker(digest).exists()
    }

    fn private_marker(&self, digest: &Digest) -> PathBuf {
        self.root.join(format!("{}.private", digest.hex()))
    }

    /// The unpacked tree of `image`, pulling it first (with `own`, a function's client, else
    /// the node's) if this node does not have it. Returns the path and whether this call
    /// pulled it. The caller has checked the start's access ([`ImageStore::trusts`]).
    pub async fn ensure(
        &self,
        image: &Arc<ResolvedImage>,
        own: Option<&RegistryClient>,
    ) -> Result<(PathBuf, bool), PullError> {
        let path = self.path_of(&image.manifest_digest);
        if is_complete(&path) {
            return Ok((path, false));
        }
        let key = (
            image.manifest_digest.clone(),
            format!("{}/{}", image.pinned.registry, image.pinned.repository),
        );
        let job = self
            .in_flight
            .lock()
            .expect("image store lock poisoned")
            .entry(key.clone())
            .or_insert_with(|| self.start_pull(key, image, own))
            .1
            .clone();
        match job.await {
            Ok(path) => Ok((path, true)),
            // A pull of the same digest from another source may have put the tree in place
            // meanwhile (then this one found the target taken): that tree serves as well.
            Err(_) if is_complete(&path) => Ok((path, false)),
            Err(e) => Err(PullError::Shared(e)),
        }
    }

    /// Spawns the pull of `image` into its place; when it ends it leaves `in_flight`.
    fn start_pull(
        &self,
        key: PullKey,
        image: &Arc<ResolvedImage>,
        own: Option<&RegistryClient>,
    ) -> (u64, PullJob) {
        let id = self
            .next_job
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (image, client) = (image.clone(), own.unwrap_or(&self.client).clone());
        let path = self.path_of(&image.manifest_digest);
        let marker = own.map(|_| self.private_marker(&image.manifest_digest));
        let options = pull::UnpackOptions {
            max_unpacked_bytes: self.max_unpacked_bytes,
            ..Default::default()
        };
        let in_flight = self.in_flight.clone();
        let task = tokio::spawn(async move {
            let result = async {
                if let Some(marker) = marker {
                    // Before the tree can exist: a crash cannot leave it unmarked.
                    std::fs::write(&marker, b"").map_err(|source| PullError::Io {
                        op: "marking a private pull",
                        path: marker,
                        source,
                    })?;
                }
                if !is_complete(&path) {
                    pull::unpack_image_with(&client, &image, &path, Arc::new(NoProgress), &options)
                        .await?;
                }
                Ok::<_, PullError>(path)
            }
            .await;
            let mut in_flight = in_flight.lock().expect("image store lock poisoned");
            if in_flight.get(&key).is_some_and(|(job, _)| *job == id) {
                in_flight.remove(&key);
            }
            result
        });
        let job = async move {
            match task.await {
                Ok(result) => result.map_err(Arc::new),
                Err(e) => Err(Arc::new(PullError::Io {
                    op: "pulling the image",
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })),
            }
        }
        .boxed()
        .shared();
        (id, job)
    }
}

/// `unpack_image` renames the tree into place only when complete, so existence is completeness.
fn is_complete(path: &Path) -> bool {
    path.is_dir()
}
