//! The node's store of unpacked images: `DATA/images/<manifest hex>/`, unpacked once per digest
//! (the full-pull path of `pronto-image`) and shared read-only by every instance of that image
//! as the lower dir of its overlay.
//!
//! Concurrent starts of one image from one repository share one pull (a `OnceCell` per digest
//! and source). The pull runs in the future of the start that began it: if that start gives up
//! (its `initializationTimeout`, a shutdown), the pull is dropped with it (its downloads
//! aborted, its temporary directories removed) and a start still waiting takes over with a
//! fresh pull. Starts of the same digest from another registry or repository do not wait for
//! it at all: they pull on their own, and whichever finishes first puts the tree in place (the
//! other finds it there). So one stalled registry holds up no start of another.
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

use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::{Digest, RegistryClient};
use tokio::sync::OnceCell;

/// A pull: the image's digest and where it comes from (`registry/repository`).
type PullKey = (Digest, String);

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    client: RegistryClient,
    /// Bound of an image's uncompressed layers (see [`pull::UnpackOptions`]).
    max_unpacked_bytes: u64,
    /// One cell per digest and source (`registry/repository`): concurrent cold starts of the
    /// same image from the same place wait for one unpack.
    in_flight: Mutex<HashMap<PullKey, Arc<OnceCell<PathBuf>>>>,
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
            in_flight: Mutex::default(),
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
        image: &ResolvedImage,
        own: Option<&RegistryClient>,
    ) -> Result<(PathBuf, bool), PullError> {
        let path = self.path_of(&image.manifest_digest);
        if is_complete(&path) {
            return Ok((path, false));
        }
        let client = own.unwrap_or(&self.client);
        let key = (
            image.manifest_digest.clone(),
            format!("{}/{}", image.pinned.registry, image.pinned.repository),
        );
        let cell = self
            .in_flight
            .lock()
            .expect("image store lock poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let mut pulled = false;
        let result = cell
            .get_or_try_init(|| async {
                if !is_complete(&path) {
                    if own.is_some() {
                        // Before the tree can exist: a crash cannot leave it unmarked.
                        let marker = self.private_marker(&image.manifest_digest);
                        std::fs::write(&marker, b"").map_err(|source| PullError::Io {
                            op: "marking a private pull",
                            path: marker,
                            source,
                        })?;
                    }
                    let options = pull::UnpackOptions {
                        max_unpacked_bytes: self.max_unpacked_bytes,
                        ..Default::default()
                    };
                    pull::unpack_image_with(client, image, &path, Arc::new(NoProgress), &options)
                        .await?;
                    pulled = true;
                }
                Ok::<_, PullError>(path.clone())
            })
            .await
            .cloned();
        if result.is_err() {
            // Let the next caller try again.
            let mut in_flight = self.in_flight.lock().expect("image store lock poisoned");
            if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                in_flight.remove(&key);
            }
            drop(in_flight);
            // A pull of the same digest from another source may have put the tree in place
            // meanwhile (then this one found the target taken): that tree serves as well.
            if is_complete(&path) {
                return Ok((path, false));
            }
        }
        result.map(|p| (p, pulled))
    }
}

/// `unpack_image` renames the tree into place only when complete, so existence is completeness.
fn is_complete(path: &Path) -> bool {
    path.is_dir()
}
