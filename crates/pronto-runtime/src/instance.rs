//! An instance: what to run ([`InstanceSpec`]), how its start went ([`StartTimings`],
//! [`StartError`]) and the running [`Instance`]. Starting is in [`crate::start`], stopping in
//! [`crate::teardown`].

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pronto_image::pull::{PullError, ResolvedImage};
use pronto_image::{Reference, RegistryClient};
use pronto_lazyfs::AccessTrace;
use serde::Serialize;

use crate::bundle::{BundleError, ProcessOverrides};
use crate::layout::InstanceLayout;
use crate::lazy::SharedMount;
use crate::node::NodeInner;
use crate::oci::OciError;
use crate::output::{LogPump, LogRecord, RequestTag};

/// How many bytes of an instance's log go into an error message.
const LOG_TAIL_BYTES: usize = 2048;

/// What to run.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The function's name, for logs and errors.
    pub function: String,
    pub image: Arc<ResolvedImage>,
    pub overrides: ProcessOverrides,
    pub port: u16,
    pub memory_mb: u64,
    /// Bound of the instance's writable layer (`diskSize`), MiB.
    pub disk_mb: u64,
    pub cpu: f64,
    pub init_timeout: Duration,
    /// The image has an accelerated artifact: mount it lazily instead of pulling (falls back
    /// to the full pull if the artifact cannot be used).
    pub accelerated: bool,
    /// What an earlier start of this function's image read (its access trace): a lazy mount
    /// made for this start prefetches it.
    pub prefetch: Option<Arc<AccessTrace>>,
    /// When the instance counts as ready: `None`, as soon as its port answers HTTP at all
    /// (`GET /`, any status); else the function's health check.
    pub readiness: Option<ReadinessProbe>,
    /// Function Compute's `internetAccess`: a veth, an address and NAT out of the node (when
    /// the node has an instance network); else only its loopback.
    pub internet_access: bool,
    /// The function's own registry client (its credentials, its own token cache); `None`:
    /// the node's. What another start put on the node is used only by a start that proves its
    /// own access first (see [`crate::images`]).
    pub registry: Option<RegistryClient>,
    /// The repository holding the accelerated artifact; `None`: the image's own.
    pub artifact_repository: Option<Reference>,
    /// The artifact revision to mount, pinned by its manifest digest (a hot revision, see
    /// `pronto_convert::relayout`); `None`: the base revision, by its tag.
    pub artifact_revision: Option<pronto_image::Digest>,
}

/// A health check that decides when a new instance is ready (Function Compute's
/// `healthCheckConfig`): `GET path` on the function's port; an answer from 200 to 399 passes
/// (Function Compute's rule), anything else, or no answer within `timeout`, fails. Until the
/// port accepts connections nothing is counted (the app is still starting) and the port is
/// polled as without a check. The instance is ready after `success_threshold` passes in a
/// row; `failure_threshold` failures in a row fail the start. The first check is made
/// `initial_delay` after the container started, the next ones every `period`; the whole wait
/// stays within the start's `initializationTimeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessProbe {
    /// Starts with `/`, visible ASCII only (it goes into the request line as is).
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
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

/// Where a cold start's time went, each measured from the start call; each mark is at or
/// after the one before.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTimings {
    /// The registry's credentials for the image's repository were at hand: answered now if
    /// this start needs the registry (a pull, a new lazy mount) and none was cached.
    pub auth_done: Duration,
    /// The image was on local disk (pulled and unpacked by this start if `image_pulled`).
    pub image_ready: Duration,
    pub image_pulled: bool,
    pub rootfs: RootfsSource,
    /// The lazy mount was made for this start and prefetches an access trace.
    pub prefetched: bool,
    /// Overlay, network namespace, bundle and output pipe made: the OCI runtime comes next.
    pub setup_done: Duration,
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
    /// The health check did not pass `success_threshold` times in a row before the deadline.
    #[error("the health check GET {path} on port {port} did not pass within the initialization timeout of {timeout:?} (last check: {last}); container output:\n{log_tail}")]
    HealthCheckTimeout {
        path: String,
        port: u16,
        timeout: Duration,
        last: String,
        log_tail: String,
    },
    /// The health check failed `failure_threshold` times in a row.
    #[error("the health check GET {path} on port {port} failed {failures} times in a row (failureThreshold; last check: {last}); container output:\n{log_tail}")]
    HealthCheckFailed {
        path: String,
        port: u16,
        failures: u32,
        last: String,
        log_tail: String,
    },
    /// The image phase (registry authentication, pull or lazy mount) took the whole
    /// initialization timeout: a stalled or very slow registry.
    #[error("image {image} was not ready within the initialization timeout of {timeout:?} (the registry is stalled or too slow)")]
    ImageTimeout { image: String, timeout: Duration },
    /// [`Node::start_cancellable`](crate::Node::start_cancellable) was cancelled.
    #[error("the start was cancelled: the node is shutting down")]
    Cancelled,
}

/// A running, ready instance. Dropping it does not stop it: call [`Instance::stop`].
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub function: String,
    pub port: u16,
    pub timings: StartTimings,
    pub(crate) layout: InstanceLayout,
    pub(crate) netns_path: PathBuf,
    pub(crate) pid: i32,
    /// Its user namespace's host ids, released when it is torn down.
    pub(crate) ids: Option<crate::userns::IdRange>,
    pub(crate) node: Arc<NodeInner>,
    pub(crate) stopped: AtomicBool,
    /// The lazily loaded lower dir, held until the overlay above it is gone.
    pub(crate) lazy: Mutex<Option<Arc<SharedMount>>>,
    /// Pumps the container's output into its log; finished at stop.
    pub(crate) pump: Mutex<Option<LogPump>>,
    pub(crate) request_tag: RequestTag,
}

impl Instance {
    /// A new TCP connection to the instance's port, made inside its network namespace.
    pub async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        self.node.host.connect(&self.netns_path, self.port).await
    }

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

    /// Its start is over (its first response went out): a lazy mount that prefetched a trace
    /// may stream the rest of its image now (see [`SharedMount::start_deferred_stream`]).
    pub fn start_is_over(&self) {
        if let Some(m) = self.lazy.lock().expect("instance lock poisoned").as_ref() {
            m.start_deferred_stream();
        }
    }

    /// The counters of its lazy mount (shared with the image's other instances on this node),
    /// if its rootfs is lazy.
    pub fn lazy_stats(&self) -> Option<pronto_lazyfs::StatsSnapshot> {
        self.lazy
            .lock()
            .expect("instance lock poisoned")
            .as_ref()
            .and_then(|m| m.stats())
    }

    /// Its address on the node's instance network (its `eth0`), if it has one.
    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.layout
            .recorded_network()
            .map(|link| link.instance_addr())
    }

    /// The container's init process is still there.
    pub fn is_running(&self) -> bool {
        !self.stopped.load(std::sync::atomic::Ordering::Relaxed)
            && self.node.host.process_alive(self.pid)
    }

    /// The kernel OOM-killed a process of this instance.
    pub fn oom_killed(&self) -> bool {
        self.node.host.oom_killed(&self.layout.cgroups_path)
    }

    /// The container's init process id, as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log_path(&self) -> PathBuf {
        self.layout.log.clone()
    }

    /// The last part of the container's output.
    pub fn log_tail(&self) -> String {
        tail(&self.layout.log)
    }

    /// The tag of the lines the container prints: for instances that serve one request at a
    /// time, the request in flight ([`RequestTag::begin`], [`RequestTag::end`]).
    pub fn request_tag(&self) -> &RequestTag {
        &self.request_tag
    }
}

/// The last part of a container's output, for error messages: the messages of its last
/// lines, without their stamps.
pub(crate) fn tail(log: &std::path::Path) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return "(no output)".into();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = Vec::new();
    let mut len = 0;
    for line in text.lines().rev() {
        let message = LogRecord::parse(line).map_or(line, |r| r.message);
        len += message.len() + 1;
        if len > LOG_TAIL_BYTES && !lines.is_empty() {
            break;
        }
        lines.push(message);
    }
    lines.reverse();
    let text = lines.join("\n").trim().to_string();
    if text.is_empty() {
        "(no output)".into()
    } else {
        text
    }
}
