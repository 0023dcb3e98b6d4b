//! Starting an instance: state file → lower dir (lazy mount or unpacked image) → overlay →
//! network namespace → bundle → `create`/`start` → HTTP readiness. Any failure tears down
//! everything made so far.
//!
//! The whole start is bounded by the function's `initializationTimeout`, from the call: the
//! image phase (registry authentication, pull or lazy mount) ends at that deadline with
//! [`StartError::ImageTimeout`], the readiness wait with [`StartError::InitTimeout`]. A start
//! can also be cancelled ([`Node::start_cancellable`]; the pool does at shutdown): the steps
//! that wait on something outside (the image phase, the readiness wait) stop, and the start
//! fails with [`StartError::Cancelled`] through the same error path, which tears down what was
//! made. Dropping the future instead would leave it all behind.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pronto_image::pull::PullError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::bundle::{self, BundleParams};
use crate::host::{Host, Overlay};
use crate::instance::{tail, Instance, InstanceSpec, RootfsSource, StartError, StartTimings};
use crate::layout::InstanceLayout;
use crate::lazy::{Acquired, SharedMount};
use crate::node::Node;
use crate::output::{LogPump, RequestTag};
use crate::teardown::{release, teardown};
use crate::userns::{IdRange, UsernsMode};

/// How long one readiness probe may take (without a health check: a health check has its own).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time the last probe before the deadline gets.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a failed start waits for the container's last output lines.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);
/// A prefetched lazy mount's background stream starts this long after its instance became
/// ready if no response started it before (an instance started with no request waiting).
const DEFERRED_STREAM_FALLBACK: Duration = Duration::from_secs(10);

fn setup(step: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Setup { step, source }
}

/// What a start has made that its instance keeps.
struct Started {
    pid: i32,
    netns_path: PathBuf,
    timings: StartTimings,
}

impl Node {
    /// Starts an instance and waits until it answers HTTP. On any failure everything made so
    /// far is torn down and the error carries the tail of the container's output.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Instance, StartError> {
        self.start_cancellable(spec, &CancellationToken::new())
            .await
    }

    /// [`Node::start`], which gives up with [`StartError::Cancelled`] once `cancel` is
    /// cancelled (tearing down what it made, as on any failure).
    pub async fn start_cancellable(
        &self,
        spec: InstanceSpec,
        cancel: &CancellationToken,
    ) -> Result<Instance, StartError> {
        let started = Instant::now();
        let n = &self.inner;
        let layout = InstanceLayout::new(&n.data_dir, &new_id(), &spec.function)
            .map_err(setup("checking the function name"))?;
        let ids = match n.isolation.userns {
            UsernsMode::Private => Some(
                n.id_ranges
                    .allocate()
                    .map_err(setup("choosing the user namespace's ids"))?,
            ),
            UsernsMode::Host => None,
        };
        if let Err(e) = layout.create() {
            if let Some(ids) = ids {
                n.id_ranges.release(ids);
            }
            return Err(setup("creating the instance directory")(e));
        }

        let mut lazy = None;
        let mut pump = None;
        let mut tag = RequestTag::default();
        match self
            .start_in(
                &spec,
                (&layout, ids),
                (started, cancel),
                &mut lazy,
                (&mut pump, &mut tag),
            )
            .await
        {
            Ok(s) => {
                tracing::info!(
                    function = %spec.function,
                    instance = %layout.id,
                    image = %spec.image.manifest_digest,
                    rootfs = s.timings.rootfs.as_str(),
                    ms = s.timings.app_ready.as_millis() as u64,
                    "instance started"
                );
                if let Some(m) = &lazy {
                    // Its first response normally starts a deferred stream (the server calls
                    // `Instance::start_is_over`); an instance nobody calls (provisioned) starts
                    // it a while after it became ready.
                    let m = Arc::downgrade(m);
                    tokio::spawn(async move {
                        tokio::time::sleep(DEFERRED_STREAM_FALLBACK).await;
                        if let Some(m) = m.upgrade() {
                            m.start_deferred_stream();
                        }
                    });
                }
                Ok(Instance {
                    id: layout.id.clone(),
                    function: spec.function,
                    port: spec.port,
                    timings: s.timings,
                    layout,
                    netns_path: s.netns_path,
                    pid: s.pid,
                    ids,
                    node: n.clone(),
                    stopped: AtomicBool::new(false),
                    lazy: Mutex::new(lazy),
                    pump: Mutex::new(pump),
                    request_tag: tag,
                })
            }
            Err(e) => {
                tracing::warn!(
                    function = %spec.function,
                    instance = %layout.id,
                    image = %spec.image.manifest_digest,
                    error = %e,
                    "instance failed to start"
                );
                if let Err(te) = teardown(n.host.as_ref(), &layout).await {
                    tracing::error!(instance = %layout.id, error = %te, "teardown after a failed start");
                }
                release(lazy).await;
                if let Some(ids) = ids {
                    n.id_ranges.release(ids);
                }
                if let Some(mut pump) = pump {
                    pump.finish(OUTPUT_DRAIN).await;
                }
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
        timings: &mut StartTimings,
        started: Instant,
    ) -> Result<(PathBuf, RootfsSource, bool), StartError> {
        let n = &self.inner;
        // Registry authentication, timed apart from the transfers: every start proves its own
        // access to the image (a refusal ends it, whatever is on the node), except one using
        // the node's credentials on a tree they pulled (see `images`).
        let own = spec.registry.as_ref();
        if !n.images.trusts(&spec.image.manifest_digest, own.is_some()) {
            own.unwrap_or(n.images.client())
                .authorize_pull(&spec.image.pinned)
                .await
                .map_err(|e| StartError::Image {
                    image: spec.image.pinned.to_string(),
                    source: PullError::Registry(e),
                })?;
        }
        timings.auth_done = started.elapsed();
        if spec.accelerated {
            let repo = spec.artifact_repository.as_ref();
            match n
                .lazy
                .acquire(
                    &spec.image,
                    spec.artifact_revision.as_ref(),
                    spec.prefetch.as_deref(),
                    own,
                    repo,
                )
                .await
            {
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
                .ensure(&spec.image, own)
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

    async fn start_in(
        &self,
        spec: &InstanceSpec,
        (l, ids): (&InstanceLayout, Option<IdRange>),
        (started, cancel): (Instant, &CancellationToken),
        lazy: &mut Option<Arc<SharedMount>>,
        (pump, tag): (&mut Option<LogPump>, &mut RequestTag),
    ) -> Result<Started, StartError> {
        let host = self.inner.host.as_ref();
        let mut timings = StartTimings::default();
        let deadline = started + spec.init_timeout;
        // A registry that stalls must not hold the start past its deadline (a stalled pull is
        // dropped here: its downloads are aborted, its temporary directories removed).
        let image_phase = tokio::time::timeout_at(
            deadline.into(),
            self.lower_dir(spec, lazy, &mut timings, started),
        );
        let (lower, rootfs_source, prefetched) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(StartError::Cancelled),
            done = image_phase => done.map_err(|_| StartError::ImageTimeout {
                image: spec.image.pinned.to_string(),
                timeout: spec.init_timeout,
            })??,
        };
        timings.image_ready = started.elapsed();
        timings.prefetched = prefetched;
        timings.image_pulled = rootfs_source == RootfsSource::Pulled;
        timings.rootfs = rootfs_source;

        host.mount_disk(&l.disk_image(), spec.disk_mb << 20, &l.disk())
            .map_err(setup("making the instance's disk"))?;
        let (rootfs, upper, work) = (l.rootfs(), l.upper(), l.work());
        for dir in [&upper, &work] {
            std::fs::create_dir(dir).map_err(setup("creating overlay directories"))?;
        }
        create_mount_point(l, ids).map_err(setup("creating the rootfs mount point"))?;
        let lower = match ids {
            // The image's files owned by the range, the writable layer's root by its root.
            Some(ids) => {
                std::os::unix::fs::chown(&upper, Some(ids.host_base), Some(ids.host_base))
                    .map_err(setup("giving the upper dir to the container's root"))?;
                let mapped = l.idmapped_lower();
                std::fs::create_dir(&mapped).map_err(setup("creating the idmapped lower dir"))?;
                host.mount_idmapped(&lower, &mapped, ids)
                    .map_err(setup("mounting the image idmapped"))?;
                mapped
            }
            None => lower,
        };
        host.mount_overlay(Overlay {
            lower: &lower,
            upper: &upper,
            work: &work,
            target: &rootfs,
        })
        .map_err(setup("mounting the overlay rootfs"))?;
        // In a user namespace the runtime creates the network namespace (see `userns`); it is
        // named once the container exists.
        let own_netns = match ids {
            None => Some(
                host.create_netns(&l.netns)
                    .map_err(setup("creating the network namespace"))?,
            ),
            Some(_) => None,
        };

        let spec_json = bundle::build_spec(&BundleParams {
            hostname: &l.id,
            rootfs: &rootfs,
            image_config: &spec.image.config,
            overrides: &spec.overrides,
            port: spec.port,
            netns: own_netns.as_deref(),
            ids,
            resolv_conf: self.inner.network.as_ref().map(|n| n.resolv_conf()),
            cgroups_path: &l.cgroups_path,
            memory_bytes: (spec.memory_mb as i64) << 20,
            cpu: spec.cpu,
            seccomp: self.inner.isolation.seccomp,
        })?;
        std::fs::write(
            l.config_json(),
            serde_json::to_vec_pretty(&spec_json).expect("spec serializes"),
        )
        .map_err(setup("writing config.json"))?;

        if let Some(dir) = l.log.parent() {
            std::fs::create_dir_all(dir).map_err(setup("creating the log directory"))?;
        }
        let (p, t, output) =
            LogPump::start(&l.log, &l.id).map_err(setup("opening the output pipe"))?;
        *tag = t;
        let pump = pump.insert(p);
        timings.setup_done = started.elapsed();
        let mut netns_path = own_netns;
        let created = match host.create_container(&l.id, &l.dir, output).await {
            Ok(pid) => {
                if netns_path.is_none() {
                    netns_path = Some(
                        host.attach_netns(&l.netns, pid)
                            .map_err(setup("naming the container's network namespace"))?,
                    );
                }
                let netns_name = &l.netns;
                if let (true, Some(net)) = (spec.internet_access, &self.inner.network) {
                    let link = net
                        .connect(netns_name)
                        .map_err(setup("connecting the instance's network"))?;
                    l.record_network(&link)
                        .map_err(setup("recording the instance's network"))?;
                }
                host.start_container(&l.id).await.map(|()| pid)
            }
            Err(e) => Err(e),
        };
        let pid = match created {
            Ok(pid) => pid,
            Err(source) => {
                // The runtime has exited: what it and the container printed is in the pipe.
                pump.finish(OUTPUT_DRAIN).await;
                return Err(StartError::Runtime {
                    source,
                    log_tail: tail(&l.log),
                });
            }
        };
        let netns_path = netns_path.expect("created or named above");
        timings.container_started = started.elapsed();

        if let Err(mut e) = wait_ready(host, spec, l, (pid, &netns_path), deadline, cancel).await {
            if let StartError::Exited { log_tail, .. } = &mut e {
                // It died: its last lines are on their way through the pipe.
                pump.finish(OUTPUT_DRAIN).await;
                *log_tail = tail(&l.log);
            }
            return Err(e);
        }
        timings.app_ready = started.elapsed();
        Ok(Started {
            pid,
            netns_path,
            timings,
        })
    }
}

/// Polls the port until the instance is ready: it answers HTTP at all, or, with a health
/// check ([`crate::instance::ReadinessProbe`]), passes it. Fails at once if the init process dies first, when
/// the health check fails `failure_threshold` times in a row, at `deadline`, or when `cancel`
/// is cancelled.
async fn wait_ready(
    host: &dyn Host,
    spec: &InstanceSpec,
    l: &InstanceLayout,
    (pid, netns_path): (i32, &Path),
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<(), StartError> {
    let check = spec.readiness.as_ref();
    let path = check.map_or("/", |c| c.path.as_str());
    if let Some(delay) = check.map(|c| c.initial_delay).filter(|d| !d.is_zero()) {
        let until = (Instant::now() + delay).min(deadline);
        tokio::select! {
            () = cancel.cancelled() => return Err(StartError::Cancelled),
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut pause = Duration::from_millis(2);
    loop {
        if !host.process_alive(pid) {
            let oom = if host.oom_killed(&l.cgroups_path) {
                " (killed: out of memory)"
            } else {
                ""
            };
            return Err(StartError::Exited {
                port: spec.port,
                oom,
                log_tail: tail(&l.log),
            });
        }
        let timeout = check.map_or(PROBE_TIMEOUT, |c| c.timeout).min(
            deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_PROBE_TIMEOUT),
        );
        let last = probe_http(host, netns_path, spec.port, path, timeout).await;
        // Until the port accepts connections, poll it soon again; once it does, a health check
        // is repeated every period.
        let mut next = pause;
        match (check, &last) {
            (_, Probe::Refused) => pause = (pause * 2).min(Duration::from_millis(50)),
            (None, Probe::Answered(_)) => return Ok(()),
            (None, Probe::NoAnswer) => {}
            (Some(c), answer) => {
                next = c.period;
                if answer.passes() {
                    (passes, failures) = (passes + 1, 0);
                    if passes >= c.success_threshold {
                        return Ok(());
                    }
                } else {
                    (passes, failures) = (0, failures + 1);
                    if failures >= c.failure_threshold {
                        return Err(StartError::HealthCheckFailed {
                            path: c.path.clone(),
                            port: spec.port,
                            failures,
                            last: last.to_string(),
                            log_tail: tail(&l.log),
                        });
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(match check {
                None => StartError::InitTimeout {
                    port: spec.port,
                    timeout: spec.init_timeout,
                    log_tail: tail(&l.log),
                },
                Some(c) => StartError::HealthCheckTimeout {
                    path: c.path.clone(),
                    port: spec.port,
                    timeout: spec.init_timeout,
                    last: last.to_string(),
                    log_tail: tail(&l.log),
                },
            });
        }
        let pause_for = next.min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = cancel.cancelled() => return Err(StartError::Cancelled),
            () = tokio::time::sleep(pause_for) => {}
        }
    }
}

/// What one readiness request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No connection: nothing listens on the port yet.
    Refused,
    /// Connected, but no HTTP status line came back in time.
    NoAnswer,
    /// An HTTP answer, with its status code if the status line had a valid one.
    Answered(Option<u16>),
}

impl Probe {
    /// Function Compute's rule for a health check: an answer from 200 to 399.
    fn passes(self) -> bool {
        matches!(self, Probe::Answered(Some(200..=399)))
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Refused => f.write_str("the port accepted no connection"),
            Probe::NoAnswer => f.write_str("no HTTP answer within the check's timeout"),
            Probe::Answered(Some(status)) => write!(f, "answered {status}"),
            Probe::Answered(None) => f.write_str("answered without a valid status line"),
        }
    }
}

/// One `GET path` to the port inside the instance's namespace, bounded by `timeout`.
async fn probe_http(
    host: &dyn Host,
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Probe {
    let attempt = async {
        let Ok(mut s) = host.connect(netns, port).await else {
            return Probe::Refused;
        };
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: pronto-probe\r\n\r\n");
        if s.write_all(request.as_bytes()).await.is_err() {
            return Probe::NoAnswer;
        }
        // `HTTP/1.1 200`: the status line up to its code.
        let mut head = [0u8; 12];
        let mut n = 0;
        while n < head.len() {
            match s.read(&mut head[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        if !head[..n].starts_with(b"HTTP/") {
            return Probe::NoAnswer;
        }
        let status = std::str::from_utf8(&head[n.min(9)..n])
            .ok()
            .and_then(|code| code.trim().parse::<u16>().ok())
            .filter(|code| (100..=999).contains(code));
        Probe::Answered(status)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Probe::NoAnswer)
}

/// `/run/pronto/<node>/<id>/rootfs`: the instance's directory there is closed to everyone but
/// root and, with a user namespace, the container's root (group, search only), which must
/// reach the rootfs from inside its namespace.
fn create_mount_point(l: &InstanceLayout, ids: Option<IdRange>) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(&l.mounts)?;
    if let Some(ids) = ids {
        std::os::unix::fs::chown(&l.mounts, None, Some(ids.host_base))?;
        std::fs::set_permissions(&l.mounts, std::fs::Permissions::from_mode(0o710))?;
    }
    std::fs::create_dir(l.rootfs())
}

/// 12 hex digits from the kernel's random pool.
fn new_id() -> String {
    let mut b = [0u8; 6];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    hex::encode(b)
}
