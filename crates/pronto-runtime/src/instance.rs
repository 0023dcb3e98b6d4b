//! Starting, probing and tearing down instances, and cleaning up after a crashed daemon.
//!
//! Layout under the data dir:
//! - `images/<digest hex>/`: unpacked images ([`ImageStore`]), the overlay lower dirs;
//! - `instances/<id>/`: one per live instance: `state.json` (written first, so a crash at any
//!   later step can be undone), `config.json` (the bundle), `upper/`, `work/`, `rootfs/` (the
//!   overlay mount point), the runtime's `pid` and `runtime.log`;
//! - `logs/<function>/<id>.log`: the container's stdout+stderr (kept after teardown for
//!   `pronto logs`);
//! - `runc/`: the OCI runtime's state (`--root`);
//! - `lazy/`, `chunks/`: lazily loaded rootfs mounts and the node chunk cache ([`LazyStore`]).
//!
//! Names on the machine: network namespace `pronto-<id>`, cgroup `/pronto-<id>`, container `<id>`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pronto_image::pull::{PullError, ResolvedImage};
use pronto_image::RegistryClient;
use pronto_lazyfs::AccessTrace;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bundle::{self, BundleError, BundleParams, ProcessOverrides};
use crate::images::ImageStore;
use crate::lazy::{Acquired, LazyStore, SharedMount};
use crate::netns;
use crate::oci::{OciError, OciRuntime};

/// How many bytes of an instance's log go into an error message.
const LOG_TAIL_BYTES: usize = 2048;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// `runc` (default) or `crun`, or a path to either.
    pub runtime_bin: String,
    pub registry: RegistryClient,
    /// Bound of the node chunk cache (lazily loaded rootfs contents), in bytes.
    pub chunk_cache_bytes: u64,
}

/// The default bound of the node chunk cache: 10 GiB.
pub const DEFAULT_CHUNK_CACHE_BYTES: u64 = 10 << 30;

/// What to run.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The function's name, for logs and errors.
    pub function: String,
    pub image: Arc<ResolvedImage>,
    pub overrides: ProcessOverrides,
    pub port: u16,
    pub memory_mb: u64,
    pub cpu: f64,
    pub init_timeout: Duration,
    /// The image has an accelerated artifact: mount it lazily instead of pulling (falls back
    /// to the full pull if the artifact cannot be used).
    pub accelerated: bool,
    /// What an earlier start of this function's image read (its access trace): a lazy mount
    /// made for this start prefetches it.
    pub prefetch: Option<Arc<AccessTrace>>,
}

/// Where an instance's root filesystem came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// The image was already unpacked on this node.
    #[default]
    Local,
    /// This start pulled and unpacked the image (the full-pull path).
    Pulled,
    /// The accelerated artifact, mounted lazily (FUSE lower dir).
    Lazy,
}

impl RootfsSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RootfsSource::Local => "local",
            RootfsSource::Pulled => "pulled",
            RootfsSource::Lazy => "lazy",
        }
    }
}

/// Where a cold start's time went, each measured from the start call.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTimings {
    /// The image was on local disk (pulled and unpacked by this start if `image_pulled`).
    pub image_ready: Duration,
    pub image_pulled: bool,
    pub rootfs: RootfsSource,
    /// The lazy mount was made for this start and prefetches an access trace.
    pub prefetched: bool,
    /// The container's process was started.
    pub container_started: Duration,
    /// Its port answered HTTP.
    pub app_ready: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("pulling image {image}: {source}")]
    Image {
        image: String,
        #[source]
        source: PullError,
    },
    #[error("{step}: {source}")]
    Setup {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{source}; container output:\n{log_tail}")]
    Runtime {
        #[source]
        source: OciError,
        log_tail: String,
    },
    #[error(
        "the container exited before its port {port} answered{oom}; container output:\n{log_tail}"
    )]
    Exited {
        port: u16,
        oom: &'static str,
        log_tail: String,
    },
    #[error("the container did not answer HTTP on port {port} within the initialization timeout of {timeout:?}; container output:\n{log_tail}")]
    InitTimeout {
        port: u16,
        timeout: Duration,
        log_tail: String,
    },
}

/// What teardown could not undo; every step is tried even when an earlier one failed.
#[derive(Debug, thiserror::Error)]
#[error("tearing down instance {id}: {}", failures.join("; "))]
pub struct TeardownError {
    pub id: String,
    pub failures: Vec<String>,
}

/// Persisted before anything is created, read back by crash cleanup.
#[derive(Debug, Serialize, Deserialize)]
struct InstanceState {
    id: String,
    function: String,
    netns: String,
    cgroups_path: String,
}

#[derive(Debug)]
struct NodeInner {
    data_dir: PathBuf,
    images: ImageStore,
    lazy: LazyStore,
    oci: OciRuntime,
}

/// The instances of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

/// A running, ready instance. Dropping it does not stop it: call [`Instance::stop`].
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub function: String,
    pub port: u16,
    pub timings: StartTimings,
    netns: String,
    cgroups_path: String,
    pid: i32,
    node: Arc<NodeInner>,
    stopped: AtomicBool,
    /// The lazily loaded lower dir, held until the overlay above it is gone.
    lazy: Mutex<Option<Arc<SharedMount>>>,
}

impl Node {
    /// Opens the node's data dir and cleans up whatever a previous daemon left running.
    pub async fn open(config: NodeConfig) -> io::Result<(Node, usize)> {
        for sub in ["instances", "logs", "runc"] {
            std::fs::create_dir_all(config.data_dir.join(sub))?;
        }
        let lazy = LazyStore::open(
            config.data_dir.join("lazy"),
            &config.data_dir.join("chunks"),
            config.chunk_cache_bytes,
            config.registry.clone(),
        )?;
        let images = ImageStore::new(config.data_dir.join("images"), config.registry)?;
        let oci = OciRuntime {
            bin: config.runtime_bin,
            root: config.data_dir.join("runc"),
        };
        let node = Node {
            inner: Arc::new(NodeInner {
                data_dir: config.data_dir,
                images,
                lazy,
                oci,
            }),
        };
        let cleaned = node.cleanup_stale().await;
        Ok((node, cleaned))
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
        self.inner.data_dir.join("logs").join(function)
    }

    /// Tears down every instance recorded under this data dir (a previous daemon's, after a
    /// crash) and any container the runtime still knows. Returns how many were cleaned.
    pub async fn cleanup_stale(&self) -> usize {
        let n = &self.inner;
        let mut cleaned = 0;
        let dirs: Vec<PathBuf> = std::fs::read_dir(n.data_dir.join("instances"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for dir in dirs {
            let id = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let state: Option<InstanceState> = std::fs::read(dir.join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let netns = state.map_or_else(|| format!("pronto-{id}"), |s| s.netns);
            tracing::warn!(instance = %id, "cleaning up an instance left by a previous daemon");
            if let Err(e) = teardown(n, &id, &netns).await {
                tracing::error!(error = %e, "stale instance cleanup incomplete");
            }
            cleaned += 1;
        }
        for id in n.oci.list().await.unwrap_or_default() {
            let _ = n.oci.delete(&id).await;
            cleaned += 1;
        }
        // Last: the overlays above them are gone now.
        cleaned += n.lazy.cleanup_stale().await;
        cleaned
    }

    /// Starts an instance and waits until it answers HTTP. On any failure everything made so
    /// far is torn down and the error carries the tail of the container's output.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Instance, StartError> {
        let started = Instant::now();
        let n = &self.inner;
        let id = new_id();
        let netns_name = format!("pronto-{id}");
        let cgroups_path = format!("/pronto-{id}");
        let dir = n.data_dir.join("instances").join(&id);
        let setup = |step| move |source| StartError::Setup { step, source };
        // The name becomes a directory name (logs).
        if spec.function.is_empty()
            || spec.function.starts_with('.')
            || spec.function.contains(['/', '\0'])
        {
            return Err(StartError::Setup {
                step: "checking the function name",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("function name {:?} cannot name a directory", spec.function),
                ),
            });
        }
        std::fs::create_dir(&dir).map_err(setup("creating the instance directory"))?;
        let state = InstanceState {
            id: id.clone(),
            function: spec.function.clone(),
            netns: netns_name.clone(),
            cgroups_path: cgroups_path.clone(),
        };
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec(&state).expect("state serializes"),
        )
        .map_err(setup("writing the instance state"))?;

        let mut lazy = None;
        let result = self
            .start_in(
                &spec,
                &id,
                &dir,
                &netns_name,
                &cgroups_path,
                started,
                &mut lazy,
            )
            .await;
        match result {
            Ok((pid, timings)) => Ok(Instance {
                id,
                function: spec.function,
                port: spec.port,
                timings,
                netns: netns_name,
                cgroups_path,
                pid,
                node: self.inner.clone(),
                stopped: AtomicBool::new(false),
                lazy: Mutex::new(lazy),
            }),
            Err(e) => {
                if let Err(te) = teardown(n, &id, &netns_name).await {
                    tracing::error!(error = %te, "teardown after a failed start");
                }
                release(lazy).await;
                Err(e)
            }
        }
    }

    /// The instance's lower dir: the lazily mounted artifact when the image is accelerated
    /// (kept in `lazy`), else the unpacked image, pulled if this node does not have it.
    async fn lower_dir(
        &self,
        spec: &InstanceSpec,
        lazy: &mut Option<Arc<SharedMount>>,
    ) -> Result<(PathBuf, RootfsSource, bool), StartError> {
        let n = &self.inner;
        if spec.accelerated {
            match n.lazy.acquire(&spec.image, spec.prefetch.as_deref()).await {
                Ok((mount, acquired)) => {
                    let path = mount.path().to_owned();
                    *lazy = Some(mount);
                    let prefetched = acquired == Acquired::Prefetching;
                    return Ok((path, RootfsSource::Lazy, prefetched));
                }
                Err(e) => tracing::warn!(
                    function = %spec.function,
                    error = %e,
                    "accelerated rootfs unavailable; falling back to the full pull"
                ),
            }
        }
        let (path, pulled) =
            n.images
                .ensure(&spec.image)
                .await
                .map_err(|source| StartError::Image {
                    image: spec.image.pinned.to_string(),
                    source,
                })?;
        let source = if pulled {
            RootfsSource::Pulled
        } else {
            RootfsSource::Local
        };
        Ok((path, source, false))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_in(
        &self,
        spec: &InstanceSpec,
        id: &str,
        dir: &Path,
        netns_name: &str,
        cgroups_path: &str,
        started: Instant,
        lazy: &mut Option<Arc<SharedMount>>,
    ) -> Result<(i32, StartTimings), StartError> {
        let n = &self.inner;
        let setup = |step| move |source| StartError::Setup { step, source };
        let mut timings = StartTimings::default();
        let (lower, rootfs_source, prefetched) = self.lower_dir(spec, lazy).await?;
        timings.image_ready = started.elapsed();
        timings.prefetched = prefetched;
        timings.image_pulled = rootfs_source == RootfsSource::Pulled;
        timings.rootfs = rootfs_source;

        let rootfs = dir.join("rootfs");
        for sub in ["upper", "work", "rootfs"] {
            std::fs::create_dir(dir.join(sub)).map_err(setup("creating overlay directories"))?;
        }
        mount_overlay(&lower, &dir.join("upper"), &dir.join("work"), &rootfs)
            .map_err(setup("mounting the overlay rootfs"))?;
        let netns_path =
            netns::create(netns_name).map_err(setup("creating the network namespace"))?;

        let spec_json = bundle::build_spec(&BundleParams {
            hostname: id,
            rootfs: &rootfs,
            image_config: &spec.image.config,
            overrides: &spec.overrides,
            port: spec.port,
            netns: &netns_path,
            cgroups_path,
            memory_bytes: (spec.memory_mb as i64) << 20,
            cpu: spec.cpu,
        })?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec_json).expect("spec serializes"),
        )
        .map_err(setup("writing config.json"))?;

        let log = self.log_path(&spec.function, id);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(setup("creating the log directory"))?;
        }
        let runtime_err = |source| StartError::Runtime {
            source,
            log_tail: tail(&log),
        };
        n.oci.create(id, dir, &log).await.map_err(runtime_err)?;
        n.oci
            .start(id)
            .await
            .map_err(|source| StartError::Runtime {
                source,
                log_tail: tail(&log),
            })?;
        timings.container_started = started.elapsed();
        let pid: i32 = std::fs::read_to_string(dir.join("pid"))
            .map_err(setup("reading the container pid"))?
            .trim()
            .parse()
            .map_err(|e| StartError::Setup {
                step: "reading the container pid",
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?;

        let deadline = started + spec.init_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if !process_alive(pid) {
                let oom = if oom_killed(cgroups_path) {
                    " (killed: out of memory)"
                } else {
                    ""
                };
                return Err(StartError::Exited {
                    port: spec.port,
                    oom,
                    log_tail: tail(&log),
                });
            }
            if probe_http(&netns_path, spec.port).await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StartError::InitTimeout {
                    port: spec.port,
                    timeout: spec.init_timeout,
                    log_tail: tail(&log),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        timings.app_ready = started.elapsed();
        Ok((pid, timings))
    }
}

impl Instance {
    /// A new TCP connection to the instance's port, made inside its network namespace.
    pub async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        netns::connect(netns::path_of(&self.netns), self.port).await
    }

    /// The container's init process is still there.
    /// The access trace of this instance's lazy mount, if the mount was made for this start
    /// without one to prefetch and nobody took it yet: what the program read from its start
    /// until now (take it once the instance has answered its first request).
    pub fn take_access_trace(&self) -> Option<AccessTrace> {
        self.lazy
            .lock()
            .expect("instance lock poisoned")
            .as_ref()
            .and_then(|m| m.take_access_trace())
    }

    pub fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed) && process_alive(self.pid)
    }

    /// The kernel OOM-killed a process of this instance.
    pub fn oom_killed(&self) -> bool {
        oom_killed(&self.cgroups_path)
    }

    /// The container's init process id, as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log_path(&self) -> PathBuf {
        self.node
            .data_dir
            .join("logs")
            .join(&self.function)
            .join(format!("{}.log", self.id))
    }

    /// The last part of the container's output.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path())
    }

    /// Kills the container and removes its rootfs mount, namespace, cgroup and directories.
    pub async fn stop(&self) -> Result<(), TeardownError> {
        if self.stopped.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let result = teardown(&self.node, &self.id, &self.netns).await;
        let lazy = self.lazy.lock().expect("instance lock poisoned").take();
        release(lazy).await;
        result
    }
}

/// Drops an instance's hold on its lazy mount; the last one unmounts, which blocks briefly.
async fn release(lazy: Option<Arc<SharedMount>>) {
    if let Some(mount) = lazy {
        let _ = tokio::task::spawn_blocking(move || drop(mount)).await;
    }
}

/// Undoes every step of a start, in reverse; tries them all and reports what failed.
async fn teardown(n: &NodeInner, id: &str, netns_name: &str) -> Result<(), TeardownError> {
    let mut failures = Vec::new();
    if let Err(e) = n.oci.delete(id).await {
        failures.push(e.to_string());
    }
    let dir = n.data_dir.join("instances").join(id);
    let rootfs = dir.join("rootfs");
    if is_mount_point(&rootfs) {
        if let Err(e) = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH) {
            failures.push(format!("unmounting {}: {e}", rootfs.display()));
        }
    }
    if let Err(e) = netns::delete(netns_name) {
        failures.push(format!("deleting network namespace {netns_name}: {e}"));
    }
    if failures.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                failures.push(format!("removing {}: {e}", dir.display()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(TeardownError {
            id: id.to_string(),
            failures,
        })
    }
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(io::Error::from)
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == wanted)
}

/// Alive and not a zombie (an exited init may wait to be reaped by whoever adopted it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Reads the cgroup's OOM-kill counter (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_killed(cgroups_path: &str) -> bool {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let file = if v2 {
        format!("/sys/fs/cgroup{cgroups_path}/memory.events")
    } else {
        format!("/sys/fs/cgroup/memory{cgroups_path}/memory.oom_control")
    };
    std::fs::read_to_string(file).ok().is_some_and(|text| {
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

/// One HTTP request; any HTTP response means the app is serving.
async fn probe_http(netns: &Path, port: u16) -> bool {
    let attempt = async {
        let mut s = netns::connect(netns.to_owned(), port).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: pronto-probe\r\n\r\n")
            .await?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        Ok::<_, io::Error>(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

fn tail(log: &Path) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return "(no output)".into();
    };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
    if text.is_empty() {
        "(no output)".into()
    } else {
        text
    }
}

/// 12 hex digits from the kernel's random pool.
fn new_id() -> String {
    let mut b = [0u8; 6];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    hex::encode(b)
}
