//! Teardown: every step of a start undone, in reverse, each tried even when an earlier one
//! failed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::host::Host;
use crate::instance::Instance;
use crate::layout::InstanceLayout;
use crate::lazy::SharedMount;
use crate::oci::OciError;

/// One step of a teardown that failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownFailure {
    #[error(transparent)]
    Container(#[from] OciError),
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("deleting network namespace {name}: {source}")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("releasing the instance's network {network}/30: {source}")]
    Network {
        network: std::net::Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("removing {path}: {source}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What teardown could not undo.
#[derive(Debug, thiserror::Error)]
pub struct TeardownError {
    pub id: String,
    pub failures: Vec<TeardownFailure>,
}

impl fmt::Display for TeardownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tearing down instance {}: ", self.id)?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl Instance {
    /// Kills the container and removes its rootfs mount, namespace, cgroup and directories.
    pub async fn stop(&self) -> Result<(), TeardownError> {
        if self.stopped.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let result = teardown(self.node.host.as_ref(), &self.layout).await;
        if let Some(ids) = self.ids {
            if result.is_ok() {
                self.node.id_ranges.release(ids);
            }
        }
        let lazy = self.lazy.lock().expect("instance lock poisoned").take();
        release(lazy).await;
        // The container is gone, so is the pipe's last writer: its last lines reach the log.
        let pump = self.pump.lock().expect("instance lock poisoned").take();
        if let Some(mut pump) = pump {
            if !pump.finish(PUMP_FINISH).await {
                tracing::warn!(instance = %self.id, "the output pipe is still open after teardown");
            }
        }
        result
    }
}

/// How long a stop waits for the instance's last output lines.
const PUMP_FINISH: std::time::Duration = std::time::Duration::from_secs(2);

/// Undoes every step of a start, in reverse: the container (and its cgroup), the overlay, the
/// idmapped lower dir and the instance's disk below it, the network namespace, and — only if
/// all of those are gone — the directories.
pub(crate) async fn teardown(host: &dyn Host, l: &InstanceLayout) -> Result<(), TeardownError> {
    let mut failures = Vec::new();
    if let Err(e) = host.delete_container(&l.id).await {
        failures.push(e.into());
    }
    let rootfs = l.rootfs();
    if let Err(source) = host.unmount(&rootfs) {
        failures.push(TeardownFailure::Unmount {
            path: rootfs,
            source,
        });
    } else {
        // Only once the overlay above them is gone.
        let lower = l.idmapped_lower();
        if let Err(source) = host.unmount(&lower) {
            failures.push(TeardownFailure::Unmount {
                path: lower,
                source,
            });
        }
        if let Err(source) = host.unmount_disk(&l.disk_image(), &l.disk()) {
            failures.push(TeardownFailure::Unmount {
                path: l.disk(),
                source,
            });
        }
    }
    // The veth before the namespace: deleting its host end takes the pair at once, while a
    // namespace's own devices go asynchronously after it is freed (and the /30 could be
    // claimed again meanwhile).
    if let Some(link) = l.recorded_network() {
        if let Err(source) = crate::network::release(&link) {
            failures.push(TeardownFailure::Network {
                network: link.network,
                source,
            });
        }
    }
    if let Err(source) = host.delete_netns(&l.netns) {
        failures.push(TeardownFailure::Netns {
            name: l.netns.clone(),
            source,
        });
    }
    if failures.is_empty() {
        // The mount point's directory holds nothing but the (unmounted, empty) mount point.
        let removed = remove_empty_dir(&l.rootfs())
            .and_then(|()| remove_empty_dir(&l.mounts))
            .map_err(|source| (l.mounts.clone(), source))
            .and_then(|()| {
                std::fs::remove_dir_all(&l.dir)
                    .or_else(not_found_ok)
                    .map_err(|source| (l.dir.clone(), source))
            });
        if let Err((path, source)) = removed {
            failures.push(TeardownFailure::RemoveDir { path, source });
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(TeardownError {
            id: l.id.clone(),
            failures,
        })
    }
}

fn remove_empty_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::remove_dir(dir).or_else(not_found_ok)
}

fn not_found_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Drops an instance's hold on its lazy mount; the last one unmounts, which blocks briefly.
pub(crate) async fn release(lazy: Option<Arc<SharedMount>>) {
    if let Some(mount) = lazy {
        let _ = tokio::task::spawn_blocking(move || drop(mount)).await;
    }
}
