//! The instance pool: which instance serves a request, when to cold-start another, when to
//! reclaim one.
//!
//! Per function the pool keeps instances by *track*: `LATEST` and each published version
//! (aliases resolve to versions before they get here). Each track has a current *revision* (a
//! new configuration of `LATEST` makes a new one; a version's never changes); instances of an
//! older revision serve no new request and stop once their requests end ("draining").
//!
//! A request takes, among its track's instances with fewer than `instanceConcurrency` requests
//! in flight, a provisioned one first, then the least busy. If none has room it either waits
//! for an instance already starting (when the starts under way have room for every request
//! waiting: a burst of 100 requests at `instanceConcurrency` 10 starts 10 instances, not 100)
//! or starts one, if the function's `maxInstances` (all tracks, draining and starting
//! instances included: an update never doubles it), the bound on its concurrent starts and the
//! node's memory budget (the sum of `memorySize` of every live instance) allow. Waiting
//! requests are served first come, first served. To make room it
//! stops idle on-demand instances: of the function's other tracks for `maxInstances`, of any
//! function (least recently used first) for memory. Otherwise it waits until its deadline (the
//! function's timeout), then gets [`AcquireError::Busy`] (429).
//!
//! Provisioned instances ([`Pool::provision`], called by the server's provisioner every second
//! with the targets of the stored provision configs) are started without a request, never
//! stopped for idleness, replaced when they die, and taken before on-demand ones. Instances idle
//! longer than their function's idle timeout are stopped by [`Pool::reap`] (scale to zero);
//! dead ones (crashed, OOM-killed) are dropped and reported.
//!
//! Connections to an instance are HTTP/1.1 keep-alive connections made inside its network
//! namespace and reused across requests.
//!
//! Access traces: an accelerated cold start whose lazy mount is new records what the program
//! reads; once its first response has arrived, [`Pool::keep_access_trace`] stores that trace
//! with the function (per image). Later cold starts of the function on a node without the mount
//! prefetch it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use pronto_runtime::{AccessTrace, Instance, InstanceSpec, Node, StartError, StartTimings};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::metrics::{FunctionLabels, Metrics};
use crate::store::Store;

/// At shutdown, how long cold starts under way may still finish (and serve their requests)
/// before they are cancelled.
pub const SHUTDOWN_START_GRACE: Duration = Duration::from_secs(3);
/// How long cancelled starts get to tear down what they made. Cancellation stops the steps
/// that wait on the outside (the image phase, the readiness wait); what is left (`runc create`,
/// a teardown) takes well under this.
const SHUTDOWN_CANCEL_WAIT: Duration = Duration::from_secs(3);

pub type ProxyBody = axum::body::Body;

/// What the pool needs to know about a function to run it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Changes whenever anything that affects instances changes (image, command, env, limits).
    pub revision: String,
    /// The configuration's track: `LATEST` or a version number.
    pub track: String,
    /// What each instance runs; its `prefetch` is filled in by each cold start.
    pub instance: InstanceSpec,
    /// Bounds the wait for an instance, and then the wait for the response headers.
    pub timeout: Duration,
    /// Requests one instance serves at once.
    pub concurrency: usize,
    /// Instances of the function at once, every track together.
    pub max_instances: usize,
    /// An on-demand instance serving nothing for this long is stopped.
    pub idle_timeout: Duration,
}

impl RunSpec {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.instance.function
    }
}

/// Node-wide bounds of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// The sum of `memorySize` of live instances (starting, serving, draining, stopping) never
    /// exceeds this (MiB).
    pub memory_budget_mb: u64,
    /// Cold starts of one function under way at once.
    pub max_concurrent_starts: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            memory_budget_mb: u64::MAX,
            max_concurrent_starts: 8,
        }
    }
}

/// Why a request found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// Every instance allowed by `maxInstances` is busy (or starting).
    MaxInstances { max: usize },
    /// The node's memory budget has no room for another instance.
    Memory { budget_mb: u64, needed_mb: u64 },
}

impl std::fmt::Display for BusyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusyReason::MaxInstances { max } => write!(f, "its maxInstances ({max}) are all busy"),
            BusyReason::Memory {
                budget_mb,
                needed_mb,
            } => write!(
                f,
                "the node's memory budget ({budget_mb} MB) has no room for another instance of \
                 {needed_mb} MB"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("function {function}: starting an instance failed: {source}")]
    Start {
        function: String,
        #[source]
        source: StartError,
    },
    #[error(
        "function {function}: its last {failures} starts failed; the next is tried in \
         {retry_in:?} (last failure: {last})"
    )]
    BackingOff {
        function: String,
        failures: u32,
        retry_in: Duration,
        last: String,
    },
    #[error("function {function}: {reason}, and no instance had room within {waited:?}")]
    Busy {
        function: String,
        reason: BusyReason,
        waited: Duration,
    },
}

struct Slot {
    instance: Arc<Instance>,
    track: String,
    revision: String,
    /// The provision config (qualifier) this instance is kept warm for, if any.
    provisioned: Option<String>,
    memory_mb: u64,
    idle_timeout: Duration,
    in_flight: usize,
    last_used: Instant,
    /// Idle keep-alive connections.
    connections: Vec<SendRequest<ProxyBody>>,
}

/// A track's run of failed starts.
struct StartFailures {
    count: u32,
    last_at: Instant,
    last: String,
}

/// How long a track that failed `count` starts in a row waits before the next: 250 ms,
/// doubling, at most 30 s. A function that crashes at start costs a few containers, not one
/// per request.
fn start_backoff(count: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << count.saturating_sub(1).min(7));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

/// A cold start under way.
struct Starting {
    id: u64,
    track: String,
    revision: String,
    memory_mb: u64,
    /// Started for a request, which takes the first place in the new instance.
    for_request: bool,
}

#[derive(Default)]
struct FunctionInstances {
    /// The current revision of each track, as last seen.
    revisions: HashMap<String, String>,
    slots: Vec<Slot>,
    /// Instances of an older revision still finishing requests; stopped when the last ends.
    draining: Vec<Slot>,
    /// Cold starts under way (they count against `max_instances`).
    starting: Vec<Starting>,
    /// Consecutive failed starts per track (reset by a successful one): while the backoff after
    /// the last runs, requests that would start an instance fail at once instead.
    start_failures: HashMap<String, StartFailures>,
    /// Requests waiting for room, per track: their tickets, oldest first. Room goes to the
    /// oldest (first come, first served: the tail latency of a saturated function is its queue,
    /// not the luck of whichever waiter the runtime wakes first).
    queued: HashMap<String, std::collections::BTreeSet<u64>>,
    /// Instances being torn down, and their memory: alive until their teardown ends, so they
    /// still count against `maxInstances` and the memory budget.
    stopping: usize,
    stopping_mb: u64,
    /// Woken whenever a slot frees up, a start ends or memory is freed.
    changed: Arc<Notify>,
}

impl FunctionInstances {
    fn instances(&self) -> usize {
        self.slots.len() + self.draining.len() + self.starting.len() + self.stopping
    }

    fn memory_mb(&self) -> u64 {
        self.slots
            .iter()
            .chain(&self.draining)
            .map(|s| s.memory_mb)
            .chain(self.starting.iter().map(|s| s.memory_mb))
            .sum::<u64>()
            + self.stopping_mb
    }

    /// Hands `slot` to `retired` to be stopped; it counts as stopping until its teardown ends
    /// ([`Pool::stop_all`]).
    fn stop(&mut self, slot: Slot, retired: &mut Vec<Slot>) {
        self.stopping += 1;
        self.stopping_mb += slot.memory_mb;
        retired.push(slot);
    }

    /// Moves the slots of `track` not of `revision` (every slot of the track if `None`) out of
    /// service: idle ones into `retired` (to stop), busy ones to draining.
    fn retire_track(&mut self, track: &str, revision: Option<&str>, retired: &mut Vec<Slot>) {
        let (old, keep): (Vec<Slot>, Vec<Slot>) = self
            .slots
            .drain(..)
            .partition(|s| s.track == track && revision != Some(s.revision.as_str()));
        self.slots = keep;
        for s in old {
            if s.in_flight == 0 {
                self.stop(s, retired);
            } else {
                self.draining.push(s);
            }
        }
    }

    /// Stops the idle on-demand instance used longest ago, not of `except_track`; false if
    /// there is none.
    fn stop_idle(&mut self, except_track: &str, retired: &mut Vec<Slot>) -> bool {
        let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_flight == 0 && s.provisioned.is_none() && s.track != except_track)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let slot = self.slots.swap_remove(i);
        self.stop(slot, retired);
        true
    }
}

#[derive(Default)]
struct State {
    functions: HashMap<String, FunctionInstances>,
}

impl State {
    fn memory_used_mb(&self) -> u64 {
        self.functions
            .values()
            .map(FunctionInstances::memory_mb)
            .sum::<u64>()
    }

    /// True if `needed_mb` more fits in `budget_mb` now. If not, stops idle on-demand instances
    /// of any function, least recently used first, enough for it to fit once they are gone
    /// (the caller waits for that), or none if even that would not suffice.
    fn memory_room(&mut self, needed_mb: u64, budget_mb: u64, retired: &mut Vec<Slot>) -> bool {
        let used = self.memory_used_mb();
        if used.saturating_add(needed_mb) <= budget_mb {
            return true;
        }
        let mut idle: Vec<(Instant, String, String, u64)> = self
            .functions
            .iter()
            .flat_map(|(name, f)| {
                f.slots
                    .iter()
                    .filter(|s| s.in_flight == 0 && s.provisioned.is_none())
                    .map(|s| {
                        (
                            s.last_used,
                            name.clone(),
                            s.instance.id.clone(),
                            s.memory_mb,
                        )
                    })
            })
            .collect();
        idle.sort();
        let mut freed = 0u64;
        let mut victims = Vec::new();
        for (_, name, id, mb) in idle {
            if used.saturating_sub(freed).saturating_add(needed_mb) <= budget_mb {
                break;
            }
            freed += mb;
            victims.push((name, id));
        }
        if used.saturating_sub(freed).saturating_add(needed_mb) > budget_mb {
            return false;
        }
        for (name, id) in victims {
            if let Some(f) = self.functions.get_mut(&name) {
                if let Some(i) = f.slots.iter().position(|s| s.instance.id == id) {
                    let slot = f.slots.swap_remove(i);
                    f.stop(slot, retired);
                }
            }
        }
        false
    }
}

/// All functions' instances on this node.
pub struct Pool {
    node: Node,
    /// Where access traces are kept.
    store: Store,
    state: Arc<Mutex<State>>,
    limits: PoolLimits,
    next_start: AtomicU64,
    /// Tickets of waiting requests (their order in line).
    next_ticket: AtomicU64,
    /// Set by shutdown: the provisioner starts nothing more.
    stopping: AtomicBool,
    /// Teardowns under way; shutdown waits for them (a teardown cut short leaks its mount).
    teardowns: tokio_util::task::TaskTracker,
    /// Cold starts under way, each in a task of its own: a request that goes away (client
    /// disconnect, timeout) must not cut a start short, which would leave its container,
    /// mounts and namespace behind. Shutdown waits for them before it stops the instances.
    starts: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown, after [`SHUTDOWN_START_GRACE`]: the starts still under way give
    /// up and tear down what they made ([`Node::start_cancellable`]), so that a start stuck on
    /// a stalled registry cannot hold the shutdown.
    cancel_starts: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
    /// Told (function, image digest) once a new access trace is stored: the hot-set job.
    on_trace: std::sync::OnceLock<TraceListener>,
}

/// What [`Pool::on_trace_recorded`] calls.
pub type TraceListener = Box<dyn Fn(String, pronto_image::Digest) + Send + Sync>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// One function's instances by state, and its queue, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionLoad {
    pub function: String,
    pub starting: usize,
    /// Serving no request.
    pub idle: usize,
    /// Serving at least one.
    pub busy: usize,
    /// Of an older revision, finishing their requests.
    pub draining: usize,
    /// Requests waiting for room.
    pub queued: usize,
    /// Of `idle` and `busy`, those kept warm by a provision config.
    pub provisioned: usize,
}

/// One instance of a function, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    /// `LATEST`, or the version it runs.
    pub track: String,
    /// `idle`, `busy` or `draining` (an older revision finishing its requests).
    pub state: &'static str,
    /// Requests it is serving.
    pub in_flight: usize,
    /// The provision config keeping it warm, if any.
    pub provisioned: Option<String>,
    /// Since its last request ended (or it became ready).
    pub idle_for: Duration,
}

/// One request's claim on an instance; dropping it releases the claim.
pub struct Lease {
    pool: Arc<Pool>,
    pub function: String,
    pub instance: Arc<Instance>,
    /// The cold start this request caused, if it did.
    pub cold_start: Option<StartTimings>,
    /// When that cold start began (the instance's start was called).
    pub cold_start_began: Option<Instant>,
    /// How long the request waited for room (zero if it found some at once).
    pub queued: Duration,
    connection: Option<SendRequest<ProxyBody>>,
    /// Set when the exchange finished cleanly, so the connection may be reused.
    reusable: bool,
    /// The request the instance's output lines are tagged with while this lease lasts.
    output_tag: Option<String>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("function", &self.function)
            .field("instance", &self.instance.id)
            .finish()
    }
}

/// What a request does next, decided under the lock.
enum Step {
    Take(Lease),
    Start(u64),
    Wait(BusyReason),
    /// The track's starts keep failing: answered at once, no container started.
    Fail(AcquireError),
}

/// One provision config's wish, resolved: keep `target` instances of `spec` warm.
#[derive(Debug, Clone)]
pub struct Provision {
    /// The provision config's qualifier (`LATEST`, an alias or a version).
    pub qualifier: String,
    pub spec: RunSpec,
    pub target: usize,
}

impl Pool {
    pub fn new(node: Node, store: Store, metrics: Arc<Metrics>, limits: PoolLimits) -> Arc<Pool> {
        Arc::new(Pool {
            node,
            store,
            state: Arc::default(),
            limits,
            next_start: AtomicU64::new(1),
            next_ticket: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            teardowns: tokio_util::task::TaskTracker::new(),
            starts: tokio_util::task::TaskTracker::new(),
            cancel_starts: tokio_util::sync::CancellationToken::new(),
            metrics,
            on_trace: std::sync::OnceLock::new(),
        })
    }

    /// Sets what is told of each access trace stored (once; later calls are ignored).
    pub fn on_trace_recorded(&self, listener: TraceListener) {
        let _ = self.on_trace.set(listener);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("pool lock poisoned")
    }

    /// Every function's instances by state and its queue (functions the pool has seen).
    pub fn load(&self) -> Vec<FunctionLoad> {
        let st = self.lock();
        let mut out: Vec<FunctionLoad> = st
            .functions
            .iter()
            .map(|(name, f)| {
                let busy = f.slots.iter().filter(|s| s.in_flight > 0).count();
                FunctionLoad {
                    function: name.clone(),
                    starting: f.starting.len(),
                    idle: f.slots.len() - busy,
                    busy,
                    draining: f.draining.len(),
                    queued: f.queued.values().map(|q| q.len()).sum(),
                    provisioned: f.slots.iter().filter(|s| s.provisioned.is_some()).count(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
    }

    /// `function`'s live instances (serving and draining; not those still starting), and how
    /// many are starting.
    pub fn instances(&self, function: &str) -> (Vec<InstanceInfo>, usize) {
        let st = self.lock();
        let Some(f) = st.functions.get(function) else {
            return (Vec::new(), 0);
        };
        let info = |s: &Slot, draining: bool| InstanceInfo {
            id: s.instance.id.clone(),
            track: s.track.clone(),
            state: match (draining, s.in_flight) {
                (true, _) => "draining",
                (false, 0) => "idle",
                _ => "busy",
            },
            in_flight: s.in_flight,
            provisioned: s.provisioned.clone(),
            idle_for: s.last_used.elapsed(),
        };
        let mut out: Vec<InstanceInfo> = f.slots.iter().map(|s| info(s, false)).collect();
        out.extend(f.draining.iter().map(|s| info(s, true)));
        (out, f.starting.len())
    }

    /// MiB of `memorySize` the live instances hold, and the budget.
    pub fn memory(&self) -> (u64, u64) {
        (self.lock().memory_used_mb(), self.limits.memory_budget_mb)
    }

    /// Running instances kept warm for `function`'s provision config `qualifier`.
    pub fn provisioned(&self, function: &str, qualifier: &str) -> usize {
        self.lock().functions.get(function).map_or(0, |f| {
            f.slots
                .iter()
                .filter(|s| s.provisioned.as_deref() == Some(qualifier) && s.instance.is_running())
                .count()
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// An instance of `spec`'s revision with room for one more request.
    pub async fn acquire(self: &Arc<Self>, spec: &RunSpec) -> Result<Lease, AcquireError> {
        let arrived = Instant::now();
        let deadline = arrived + spec.timeout;
        // Set while this request waits in the queue; counts it out (and its wait) when it
        // leaves, whichever way (served, refused, or its caller gone).
        let mut queued: Option<Queued> = None;
        loop {
            // Made before room is looked for: a `Notified` sees the `notify_waiters` calls made
            // after its creation, so a release between the look (under the lock) and the wait
            // cannot be missed, which would leave the request waiting out its whole timeout
            // beside a free instance.
            let changed = self
                .lock()
                .functions
                .entry(spec.name().to_string())
                .or_default()
                .changed
                .clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut retired = Vec::new();
            let step = self.step(spec, &mut queued, &mut retired);
            self.stop_all(retired);
            let reason = match step {
                Step::Take(lease) => return Ok(lease),
                Step::Start(start) => {
                    let waited = queued
                        .as_ref()
                        .map_or(Duration::ZERO, |q| q.since.elapsed());
                    drop(queued);
                    let mut lease = self.cold_start(spec, start).await?;
                    lease.queued = waited;
                    return Ok(lease);
                }
                Step::Wait(reason) => reason,
                Step::Fail(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline
                || tokio::time::timeout(deadline - now, notified.as_mut())
                    .await
                    .is_err()
            {
                return Err(AcquireError::Busy {
                    function: spec.name().to_string(),
                    reason,
                    waited: spec.timeout,
                });
            }
        }
    }

    /// Under the lock: take room, start an instance, or wait (queued).
    fn step(
        self: &Arc<Self>,
        spec: &RunSpec,
        queued: &mut Option<Queued>,
        retired: &mut Vec<Slot>,
    ) -> Step {
        let mut st = self.lock();
        let f = st.functions.entry(spec.name().to_string()).or_default();
        if f.revisions.get(&spec.track) != Some(&spec.revision) {
            f.retire_track(&spec.track, Some(&spec.revision), retired);
            f.revisions
                .insert(spec.track.clone(), spec.revision.clone());
        }
        drop_dead(f, retired);
        let line = f.queued.get(&spec.track);
        let mine = queued.as_ref().map(|q| q.ticket);
        // Requests that came before this one and are still waiting.
        let waiting_before_me = line.map_or(0, |l| match mine {
            Some(t) => l.range(..t).count(),
            None => l.len(),
        });
        let free_places: usize = f
            .slots
            .iter()
            .filter(|s| s.track == spec.track && s.revision == spec.revision)
            .map(|s| spec.concurrency.saturating_sub(s.in_flight))
            .sum();
        let slot = f
            .slots
            .iter_mut()
            .filter(|s| {
                s.track == spec.track
                    && s.revision == spec.revision
                    && s.in_flight < spec.concurrency
            })
            .min_by_key(|s| (s.provisioned.is_none(), s.in_flight));
        if let Some(slot) = slot.filter(|_| waiting_before_me == 0) {
            slot.in_flight += 1;
            slot.last_used = Instant::now();
            return Step::Take(Lease {
                pool: self.clone(),
                function: spec.name().to_string(),
                instance: slot.instance.clone(),
                cold_start: None,
                cold_start_began: None,
                queued: queued
                    .as_ref()
                    .map_or(Duration::ZERO, |q| q.since.elapsed()),
                connection: slot.connections.pop(),
                reusable: false,
                output_tag: None,
            });
        }
        // Room that is free now (for those ahead in line) or that the starts under way will
        // bring beyond their own requests, against the requests ahead of this one: while it
        // suffices, wait for it instead of starting more.
        let coming: usize = free_places
            + f.starting
                .iter()
                .filter(|s| s.track == spec.track && s.revision == spec.revision)
                .map(|s| spec.concurrency - usize::from(s.for_request))
                .sum::<usize>();
        let backing_off = f.start_failures.get(&spec.track).and_then(|fail| {
            let retry_in = start_backoff(fail.count).checked_sub(fail.last_at.elapsed())?;
            Some(AcquireError::BackingOff {
                function: spec.name().to_string(),
                failures: fail.count,
                retry_in,
                last: fail.last.clone(),
            })
        });
        let reason = if coming > waiting_before_me {
            BusyReason::MaxInstances {
                max: spec.max_instances,
            }
        } else if let Some(e) = backing_off {
            return Step::Fail(e);
        } else {
            match self.room_for_start(&mut st, spec, retired) {
                Ok(()) => return Step::Start(self.register_start(&mut st, spec, true)),
                Err(reason) => reason,
            }
        };
        if queued.is_none() {
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            let f = st.functions.get_mut(spec.name()).expect("entry made above");
            f.queued
                .entry(spec.track.clone())
                .or_default()
                .insert(ticket);
            *queued = Some(Queued {
                pool: self.clone(),
                function: spec.name().to_string(),
                track: spec.track.clone(),
                ticket,
                since: Instant::now(),
            });
        }
        Step::Wait(reason)
    }

    /// Counts a start of `spec` as under way (for a request, or to keep warm); its id.
    fn register_start(&self, st: &mut State, spec: &RunSpec, for_request: bool) -> u64 {
        let id = self.next_start.fetch_add(1, Ordering::Relaxed);
        let f = st.functions.get_mut(spec.name()).expect("entry made");
        f.starting.push(Starting {
            id,
            track: spec.track.clone(),
            revision: spec.revision.clone(),
            memory_mb: spec.instance.memory_mb,
            for_request,
        });
        id
    }

    /// Whether one more instance of `spec` may start now. If stopping idle instances would
    /// make room, they are stopped, and the caller waits for their teardowns to end.
    fn room_for_start(
        &self,
        st: &mut State,
        spec: &RunSpec,
        retired: &mut Vec<Slot>,
    ) -> Result<(), BusyReason> {
        let max = BusyReason::MaxInstances {
            max: spec.max_instances,
        };
        let f = st.functions.get_mut(spec.name()).expect("entry made");
        if f.starting.len() >= self.limits.max_concurrent_starts {
            return Err(max);
        }
        if f.instances() >= spec.max_instances {
            // An idle instance of another version gives way (once its teardown ends).
            f.stop_idle(&spec.track, retired);
            return Err(max);
        }
        let (needed, budget) = (spec.instance.memory_mb, self.limits.memory_budget_mb);
        if !st.memory_room(needed, budget, retired) {
            return Err(BusyReason::Memory {
                budget_mb: budget,
                needed_mb: needed,
            });
        }
        Ok(())
    }

    /// The access trace stored for `spec`'s function and image, if it runs accelerated.
    async fn access_trace(&self, spec: &RunSpec) -> Option<Arc<AccessTrace>> {
        if !spec.instance.accelerated {
            return None;
        }
        let digest = spec.instance.image.manifest_digest.to_string();
        match self.store.access_trace(spec.name(), &digest).await {
            Ok(Some(bytes)) => match AccessTrace::from_bytes(&bytes) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::warn!(function = %spec.name(), error = %e, "ignoring a stored access trace");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(function = %spec.name(), error = %e, "reading the access trace");
                None
            }
        }
    }

    /// After the first response of a cold start: stores the access trace its new lazy mount
    /// recorded (in the background), so that the next cold starts prefetch it.
    pub fn keep_access_trace(
        self: &Arc<Self>,
        lease: &Lease,
        spec: &RunSpec,
        profile: crate::explain::StartProfile,
    ) {
        let Some(trace) = lease.instance.take_access_trace() else {
            return;
        };
        if trace.is_empty() {
            return;
        }
        let (store, function) = (self.store.clone(), spec.name().to_string());
        let image = spec.instance.image.manifest_digest.clone();
        let digest = image.to_string();
        let pool = self.clone();
        tokio::spawn(async move {
            let chunks = trace.len();
            match store
                .put_access_trace(&function, &digest, trace.to_bytes())
                .await
            {
                Ok(()) => {
                    tracing::info!(%function, image = %digest, chunks, "access trace recorded")
                }
                Err(e) => {
                    tracing::warn!(%function, error = %e, "storing the access trace");
                    return;
                }
            }
            let profile = serde_json::to_string(&profile).expect("plain numbers");
            if let Err(e) = store.set_start_profile(&function, &digest, profile).await {
                tracing::warn!(%function, error = %e, "storing the start's profile");
            }
            if let Some(listener) = pool.on_trace.get() {
                listener(function, image);
            }
        });
    }

    /// Starts an instance for `spec` in a task of its own and waits for it. If the caller goes
    /// away meanwhile, the start still completes: its lease is then dropped with the task's
    /// output, which releases the new instance as an idle one (used by the next request,
    /// reclaimed by the reaper, stopped at shutdown).
    async fn cold_start(
        self: &Arc<Self>,
        spec: &RunSpec,
        start: u64,
    ) -> Result<Lease, AcquireError> {
        let (this, spec) = (self.clone(), spec.clone());
        // In the request's span: the start's log lines carry its function and request id.
        let task = self.starts.spawn(
            async move { this.start_instance(&spec, start, None).await }
                .instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(result) => result.map(|l| l.expect("a request's start returns its lease")),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Runs start `start` (registered in the function's `starting`): for a request (returns
    /// its lease on the new instance) or, with `provisioned`, to keep warm (returns `None`).
    async fn start_instance(
        self: &Arc<Self>,
        spec: &RunSpec,
        start: u64,
        provisioned: Option<String>,
    ) -> Result<Option<Lease>, AcquireError> {
        let began = Instant::now();
        let prefetch = self.access_trace(spec).await;
        let result = self
            .node
            .start_cancellable(
                InstanceSpec {
                    prefetch,
                    ..spec.instance.clone()
                },
                &self.cancel_starts,
            )
            .await;
        let mut st = self.lock();
        let f = st.functions.entry(spec.name().to_string()).or_default();
        f.starting.retain(|s| s.id != start);
        f.changed.notify_waiters();
        let instance = match result {
            Ok(i) => Arc::new(i),
            Err(source) => {
                let fail = f
                    .start_failures
                    .entry(spec.track.clone())
                    .or_insert(StartFailures {
                        count: 0,
                        last_at: Instant::now(),
                        last: String::new(),
                    });
                fail.count += 1;
                fail.last_at = Instant::now();
                fail.last = source.to_string();
                drop(st);
                // Memory was freed: other functions' waiters may start now.
                self.notify_all();
                self.metrics
                    .cold_start_failures
                    .get_or_create(&FunctionLabels {
                        function: spec.name().to_string(),
                    })
                    .inc();
                return Err(AcquireError::Start {
                    function: spec.name().to_string(),
                    source,
                });
            }
        };
        f.start_failures.remove(&spec.track);
        let for_request = provisioned.is_none();
        let slot = Slot {
            instance: instance.clone(),
            track: spec.track.clone(),
            revision: spec.revision.clone(),
            provisioned,
            memory_mb: spec.instance.memory_mb,
            idle_timeout: spec.idle_timeout,
            in_flight: usize::from(for_request),
            last_used: Instant::now(),
            connections: Vec::new(),
        };
        let current = f.revisions.get(&spec.track) == Some(&spec.revision);
        if current {
            f.slots.push(slot);
        } else if for_request {
            // The function changed while this instance started: it serves this one request.
            f.draining.push(slot);
        } else {
            let mut retired = Vec::new();
            f.stop(slot, &mut retired);
            drop(st);
            self.stop_all(retired);
            return Ok(None);
        }
        if !for_request {
            return Ok(None);
        }
        let timings = instance.timings;
        Ok(Some(Lease {
            pool: self.clone(),
            function: spec.name().to_string(),
            instance,
            cold_start: Some(timings),
            cold_start_began: Some(began),
            queued: Duration::ZERO,
            connection: None,
            reusable: false,
            output_tag: None,
        }))
    }

    /// Keeps the provisioned instances as `wanted` says (every provision config of every
    /// function, resolved): dead ones are replaced, missing ones started (as far as
    /// `maxInstances` and memory allow; the next call tries again), surplus ones and those of
    /// configs no longer wanted become on-demand (reclaimed when idle).
    pub fn provision(self: &Arc<Self>, wanted: &[Provision]) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let mut retired = Vec::new();
        let mut starts = Vec::new();
        {
            let mut st = self.lock();
            let keys: std::collections::HashSet<(&str, &str)> = wanted
                .iter()
                .map(|p| (p.spec.name(), p.qualifier.as_str()))
                .collect();
            for (name, f) in st.functions.iter_mut() {
                drop_dead(f, &mut retired);
                for s in &mut f.slots {
                    let keep = s.provisioned.as_deref().is_some_and(|q| {
                        keys.contains(&(name.as_str(), q))
                            && f.revisions.get(&s.track) == Some(&s.revision)
                    });
                    if !keep && s.provisioned.take().is_some() {
                        s.last_used = Instant::now();
                    }
                }
            }
            for p in wanted {
                let spec = &p.spec;
                let f = st.functions.entry(spec.name().to_string()).or_default();
                if f.revisions.get(&spec.track) != Some(&spec.revision) {
                    f.retire_track(&spec.track, Some(&spec.revision), &mut retired);
                    f.revisions
                        .insert(spec.track.clone(), spec.revision.clone());
                }
                let mine = |s: &Slot| {
                    s.provisioned.as_deref() == Some(p.qualifier.as_str())
                        && s.track == spec.track
                        && s.revision == spec.revision
                };
                let mut have = f.slots.iter().filter(|s| mine(s)).count();
                // Surplus: back to on-demand.
                for s in f.slots.iter_mut().filter(|s| mine(s)).skip(p.target) {
                    s.provisioned = None;
                    s.last_used = Instant::now();
                }
                // Idle on-demand instances of the same revision are adopted first.
                for s in f.slots.iter_mut().filter(|s| {
                    s.provisioned.is_none() && s.track == spec.track && s.revision == spec.revision
                }) {
                    if have >= p.target {
                        break;
                    }
                    s.provisioned = Some(p.qualifier.clone());
                    have += 1;
                }
                let already_starting = starts
                    .iter()
                    .filter(|(_, q, _): &&(RunSpec, String, u64)| {
                        q == &p.qualifier && p.spec.name() == spec.name()
                    })
                    .count();
                let pending = f
                    .starting
                    .iter()
                    .filter(|s| {
                        !s.for_request && s.track == spec.track && s.revision == spec.revision
                    })
                    .count();
                let backing_off = f
                    .start_failures
                    .get(&spec.track)
                    .is_some_and(|x| x.last_at.elapsed() < start_backoff(x.count));
                let missing = if backing_off {
                    0
                } else {
                    p.target.saturating_sub(have + pending + already_starting)
                };
                for _ in 0..missing {
                    if self.room_for_start(&mut st, spec, &mut retired).is_err() {
                        break;
                    }
                    let id = self.register_start(&mut st, spec, false);
                    starts.push((spec.clone(), p.qualifier.clone(), id));
                }
            }
        }
        self.stop_all(retired);
        for (spec, qualifier, id) in starts {
            let this = self.clone();
            self.starts.spawn(async move {
                if let Err(e) = this.start_instance(&spec, id, Some(qualifier.clone())).await {
                    tracing::warn!(function = %spec.name(), %qualifier, error = %e, "starting a provisioned instance");
                }
            });
        }
    }

    /// Takes `instance` out of service and stops it now, busy or not (it hung or broke).
    pub fn recycle(&self, function: &str, instance_id: &str) {
        let mut retired = Vec::new();
        if let Some(f) = self.lock().functions.get_mut(function) {
            let mut gone = Vec::new();
            for list in [&mut f.slots, &mut f.draining] {
                let (out, keep): (Vec<Slot>, Vec<Slot>) =
                    list.drain(..).partition(|s| s.instance.id == instance_id);
                *list = keep;
                gone.extend(out);
            }
            for s in gone {
                f.stop(s, &mut retired);
            }
            f.changed.notify_waiters();
        }
        self.stop_all(retired);
    }

    /// Takes every instance of `function` out of service (it was deleted): idle ones stop now,
    /// busy ones when their requests end.
    pub fn retire(&self, function: &str) {
        let mut retired = Vec::new();
        if let Some(f) = self.lock().functions.get_mut(function) {
            let tracks: Vec<String> = f.slots.iter().map(|s| s.track.clone()).collect();
            for t in tracks {
                f.retire_track(&t, None, &mut retired);
            }
            f.revisions.clear();
        }
        self.stop_all(retired);
    }

    /// Takes the instances of one track of `function` out of service (`LATEST` changed, or a
    /// version was deleted).
    pub fn retire_track(&self, function: &str, track: &str) {
        let mut retired = Vec::new();
        if let Some(f) = self.lock().functions.get_mut(function) {
            f.retire_track(track, None, &mut retired);
            f.revisions.remove(track);
        }
        self.stop_all(retired);
    }

    /// Stops on-demand instances idle longer than their idle timeout and drops dead ones.
    pub fn reap(&self) {
        self.reap_at(Instant::now());
    }

    /// [`Pool::reap`] as if it were `now`.
    fn reap_at(&self, now: Instant) {
        let mut retired = Vec::new();
        for f in self.lock().functions.values_mut() {
            let (dead, alive): (Vec<Slot>, Vec<Slot>) =
                f.draining.drain(..).partition(|s| !s.instance.is_running());
            f.draining = alive;
            for s in dead {
                f.stop(s, &mut retired);
            }
            drop_dead(f, &mut retired);
            let (idle, keep): (Vec<Slot>, Vec<Slot>) = f.slots.drain(..).partition(|s| {
                s.provisioned.is_none()
                    && s.in_flight == 0
                    && now.saturating_duration_since(s.last_used) >= s.idle_timeout
            });
            f.slots = keep;
            for s in idle {
                f.stop(s, &mut retired);
            }
        }
        self.stop_all(retired);
    }

    /// Waits until the teardowns started so far have finished.
    #[cfg(test)]
    async fn settle(&self) {
        self.teardowns.close();
        self.teardowns.wait().await;
        self.teardowns.reopen();
    }

    /// The first step of a shutdown; the server calls it as soon as a shutdown is asked for
    /// (the requests waiting for a start are in flight: the listeners' drain waits for them),
    /// and [`Pool::shutdown`] again (it is idempotent). The provisioner starts nothing more;
    /// the cold starts under way get [`SHUTDOWN_START_GRACE`] to finish, then are cancelled
    /// and get [`SHUTDOWN_CANCEL_WAIT`] to tear down what they made. Their requests then get
    /// their error (502). Bounded whatever the registry does.
    pub async fn drain_starts(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.starts.close();
        if tokio::time::timeout(SHUTDOWN_START_GRACE, self.starts.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            starts = self.starts.len(),
            "cancelling the cold starts still under way at shutdown"
        );
        self.cancel_starts.cancel();
        if tokio::time::timeout(SHUTDOWN_CANCEL_WAIT, self.starts.wait())
            .await
            .is_err()
        {
            // Whatever they made is recorded under the data dir: the next daemon's crash
            // cleanup removes it.
            tracing::error!(
                starts = self.starts.len(),
                "cold starts still running after being cancelled; shutting down without them"
            );
        }
    }

    /// Lets the cold starts under way finish or cancels them ([`Pool::drain_starts`]), then
    /// stops every instance and waits for the teardowns (graceful shutdown).
    pub async fn shutdown(&self) {
        self.drain_starts().await;
        let all: Vec<Arc<Instance>> = self
            .lock()
            .functions
            .drain()
            .flat_map(|(_, f)| f.slots.into_iter().chain(f.draining).map(|s| s.instance))
            .collect();
        for i in all {
            if let Err(e) = i.stop().await {
                tracing::error!(function = %i.function, instance = %i.id, error = %e, "teardown at shutdown");
            }
        }
        self.teardowns.close();
        self.teardowns.wait().await;
    }

    fn release(&self, lease: &mut Lease) {
        let mut finished = Vec::new();
        {
            let mut st = self.lock();
            let Some(f) = st.functions.get_mut(&lease.function) else {
                return;
            };
            f.changed.notify_waiters();
            let is_this = |s: &Slot| Arc::ptr_eq(&s.instance, &lease.instance);
            if let Some(slot) = f.slots.iter_mut().find(|s| is_this(s)) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                slot.last_used = Instant::now();
                if let Some(c) = lease.connection.take() {
                    if lease.reusable && !c.is_closed() {
                        slot.connections.push(c);
                    }
                }
            } else if let Some(i) = f.draining.iter().position(is_this) {
                let slot = &mut f.draining[i];
                slot.in_flight = slot.in_flight.saturating_sub(1);
                if slot.in_flight == 0 {
                    let slot = f.draining.swap_remove(i);
                    f.stop(slot, &mut finished);
                }
            }
        }
        self.stop_all(finished);
    }

    /// Wakes every waiting request (memory was freed: any function may start now).
    fn notify_all(&self) {
        for f in self.lock().functions.values() {
            f.changed.notify_waiters();
        }
    }

    /// Stops instances handed over by [`FunctionInstances::stop`] in the background; each
    /// counts as stopping (instances, memory) until its teardown ends, then waiting requests
    /// of every function are woken (memory is node-wide).
    fn stop_all(&self, slots: Vec<Slot>) {
        for s in slots {
            let (i, mb, state) = (s.instance, s.memory_mb, self.state.clone());
            self.teardowns.spawn(async move {
                match i.stop().await {
                    Ok(()) => {
                        tracing::debug!(function = %i.function, instance = %i.id, "instance stopped")
                    }
                    Err(e) => {
                        tracing::error!(function = %i.function, instance = %i.id, error = %e, "instance teardown")
                    }
                }
                let mut st = state.lock().expect("pool lock poisoned");
                if let Some(f) = st.functions.get_mut(&i.function) {
                    f.stopping = f.stopping.saturating_sub(1);
                    f.stopping_mb = f.stopping_mb.saturating_sub(mb);
                }
                for f in st.functions.values() {
                    f.changed.notify_waiters();
                }
            });
        }
    }
}

/// Moves `f`'s dead instances (crashed, OOM-killed) into `retired`, reporting each.
fn drop_dead(f: &mut FunctionInstances, retired: &mut Vec<Slot>) {
    let (dead, alive): (Vec<Slot>, Vec<Slot>) =
        f.slots.drain(..).partition(|s| !s.instance.is_running());
    f.slots = alive;
    for s in dead {
        report_death(&s.instance);
        f.stop(s, retired);
    }
}

impl Lease {
    /// The connection to send this request on: an idle keep-alive one or a new one.
    pub async fn connection(&mut self) -> std::io::Result<&mut SendRequest<ProxyBody>> {
        if let Some(c) = &mut self.connection {
            if c.ready().await.is_ok() {
                return Ok(self.connection.as_mut().expect("just checked"));
            }
            self.connection = None;
        }
        let stream = self.instance.connect().await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "instance connection ended");
            }
        });
        Ok(self.connection.insert(sender))
    }

    /// The exchange completed: the connection may carry the next request.
    pub fn mark_reusable(&mut self) {
        self.reusable = true;
    }

    /// Ends the lease and takes its instance out of service (it overran its timeout).
    pub fn recycle(self) {
        let (pool, function, id) = (
            self.pool.clone(),
            self.function.clone(),
            self.instance.id.clone(),
        );
        drop(self);
        pool.recycle(&function, &id);
    }

    /// Tags what the instance prints with `request_id` until the lease ends: only for an
    /// instance serving this one request (`instanceConcurrency` 1).
    pub async fn tag_output(&mut self, request_id: &str) {
        self.instance.request_tag().begin(request_id).await;
        self.output_tag = Some(request_id.to_string());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(id) = self.output_tag.take() {
            // Once the lines the request printed are read (a short, bounded wait).
            let tag = self.instance.request_tag().clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { tag.end(&id).await });
            }
        }
        let pool = self.pool.clone();
        pool.release(self);
    }
}

/// A request in a function's queue; leaving it (drop) counts it out and records its wait.
struct Queued {
    pool: Arc<Pool>,
    function: String,
    track: String,
    /// Its place in line.
    ticket: u64,
    since: Instant,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(f) = self.pool.lock().functions.get_mut(&self.function) {
            if let Some(line) = f.queued.get_mut(&self.track) {
                line.remove(&self.ticket);
                // The next in line may take room that was left for this one.
                if !line.is_empty() {
                    f.changed.notify_waiters();
                }
            }
        }
        self.pool
            .metrics
            .queue_wait(&self.function, self.since.elapsed());
    }
}

fn report_death(instance: &Instance) {
    if instance.oom_killed() {
        tracing::warn!(function = %instance.function, instance = %instance.id, "instance was OOM-killed (memory limit)");
    } else {
        tracing::warn!(function = %instance.function, instance = %instance.id, log = %instance.log_tail(), "instance exited");
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
