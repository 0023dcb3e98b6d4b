//! The node: its data dir, image stores, host and the instances started on it.
//!
//! Layout under the data dir:
//! - `images/<digest hex>/`: unpacked images ([`ImageStore`]), the overlay lower dirs;
//! - `instances/<id>/`, `logs/<function>/<id>.log`: see [`crate::layout`];
//! - `runc/`: the OCI runtime's state (`--root`);
//! - `lazy/`, `chunks/`: lazily loaded rootfs mounts and the node chunk cache ([`LazyStore`]).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use pronto_image::RegistryClient;

use crate::host::{Host, LinuxHost};
use crate::images::ImageStore;
use crate::layout;
use crate::lazy::LazyStore;
use crate::network::{InstanceNetwork, Subnet, DEFAULT_SUBNET};
use crate::oci::OciRuntime;
use crate::seccomp::SeccompMode;
use crate::userns::{IdRanges, UsernsMode};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// `runc` (default) or `crun`, or a path to either.
    pub runtime_bin: String,
    pub registry: RegistryClient,
    /// Bound of the node chunk cache (lazily loaded rootfs contents), in bytes.
    pub chunk_cache_bytes: u64,
    /// Bound of an image's uncompressed layers on the full-pull path, in bytes
    /// ([`pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES`] by default).
    pub max_unpacked_bytes: u64,
    /// How the node's containers are confined beyond namespaces and cgroups.
    pub isolation: Isolation,
    /// Instances' outbound network; `None`: they have only their loopback.
    pub network: Option<NetworkConfig>,
    /// Whether a new lazy mount streams the rest of its image into the chunk cache (see
    /// `pronto_lazyfs::stream`): `Auto` decides from the measured link and the bytes left.
    pub background_stream: pronto_lazyfs::StreamPolicy,
}

/// Where instances' addresses come from and what they resolve names with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub subnet: Subnet,
    /// The node's `resolv.conf`, the source of the instances' (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            subnet: DEFAULT_SUBNET.parse().expect("a valid subnet"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// How a node's containers are confined beyond namespaces, cgroups and the runtime's default
/// capabilities. The default is the confined one; each part has a switch per node
/// (`pronto serve --seccomp`, `--userns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Isolation {
    /// The seccomp filter: Docker's default profile, or none.
    pub seccomp: SeccompMode,
    /// A user namespace per instance (its root an unprivileged id range), or the node's.
    pub userns: UsernsMode,
}

/// The default bound of the node chunk cache: 10 GiB.
pub const DEFAULT_CHUNK_CACHE_BYTES: u64 = 10 << 30;

#[derive(Debug)]
pub(crate) struct NodeInner {
    pub(crate) data_dir: PathBuf,
    pub(crate) images: ImageStore,
    pub(crate) lazy: LazyStore,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) isolation: Isolation,
    /// The user namespace id ranges of live instances.
    pub(crate) id_ranges: IdRanges,
    pub(crate) network: Option<InstanceNetwork>,
}

impl Drop for NodeInner {
    /// The last handle is gone: the network's rules and files go, then the run dir if nothing
    /// of an instance is left in it (a crashed daemon's instances keep theirs for the next).
    fn drop(&mut self) {
        drop(self.network.take());
        let _ = std::fs::remove_dir(layout::run_dir(&self.data_dir));
    }
}

/// The instances of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl Node {
    /// Opens the node's data dir on this machine (runc, overlayfs, `ip netns`) and cleans up
    /// whatever a previous daemon left running. Returns how many leftovers were cleaned.
    pub async fn open(config: NodeConfig) -> io::Result<(Node, usize)> {
        let host = LinuxHost {
            oci: OciRuntime {
                bin: config.runtime_bin.clone(),
                root: config.data_dir.join("runc"),
            },
        };
        Node::open_on(config, Arc::new(host)).await
    }

    /// [`Node::open`] on another host (`config.runtime_bin` is then unused).
    pub async fn open_on(config: NodeConfig, host: Arc<dyn Host>) -> io::Result<(Node, usize)> {
        for sub in ["instances", "logs", "runc"] {
            std::fs::create_dir_all(config.data_dir.join(sub))?;
        }
        // One name for the data dir, whatever the caller's spelling: the run dir derives from it.
        let data_dir = config.data_dir.canonicalize()?;
        let run_dir = layout::run_dir(&data_dir);
        create_run_dir(&run_dir)?;
        let network = match &config.network {
            Some(c) => Some(InstanceNetwork::open(c.subnet, &run_dir, &c.resolv_conf)?),
            None => None,
        };
        let lazy = LazyStore::open(
            data_dir.join("lazy"),
            &data_dir.join("chunks"),
            config.chunk_cache_bytes,
            config.registry.clone(),
        )?
        .with_background_stream(config.background_stream);
        // Also removes what pulls of a killed daemon left.
        let images = ImageStore::new(
            data_dir.join("images"),
            config.registry,
            config.max_unpacked_bytes,
        )?;
        let node = Node {
            inner: Arc::new(NodeInner {
                data_dir,
                images,
                lazy,
                host,
                isolation: config.isolation,
                id_ranges: IdRanges::default(),
                network,
            }),
        };
        let cleaned = node.cleanup_stale().await;
        Ok((node, cleaned))
    }

    /// Removes what the node set up on the machine for all its instances (the network's
    /// rules); call it when the daemon stops, after its instances are gone.
    pub fn close(&self) {
        if let Some(net) = &self.inner.network {
            net.close();
        }
    }

    /// The node's data dir (canonical).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    pub fn lazy(&self) -> &LazyStore {
        &self.inner.lazy
    }

    /// Where instance `instance_id` of `function` writes its stdout and stderr.
    pub fn log_path(&self, function: &str, instance_id: &str) -> PathBuf {
        self.function_log_dir(function)
            .join(format!("{instance_id}.log"))
    }

    /// All instance logs of `function`, kept after the instances are gone.
    pub fn function_log_dir(&self, function: &str) -> PathBuf {
        layout::log_dir(&self.inner.data_dir, function)
    }
}

/// `/run/pronto/<node>/`, `0711` like its parent: a container's root in a user namespace
/// crosses both to reach its rootfs; the per-instance directories below are closed.
fn create_run_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for d in [dir, std::path::Path::new(layout::RUN_ROOT)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}
