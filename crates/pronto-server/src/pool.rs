//! The instance pool: which instance serves a request, when to cold-start another, when to
//! reclaim one.
//!
//! Per function the pool keeps the instances of its current *revision* (a new image or setting
//! makes a new revision; older instances serve no new request and are stopped). A request takes
//! an instance with fewer than `instanceConcurrency` requests in flight; if none has room and
//! fewer than `max_instances` exist, it cold-starts one; otherwise it waits (bounded by the
//! function timeout). Instances idle longer than the idle timeout are stopped by [`Pool::reap`]
//! (scale to zero); dead ones (crashed, OOM-killed) are dropped and reported.
//!
//! Connections to an instance are HTTP/1.1 keep-alive connections made inside its network
//! namespace and reused across requests.
//!
//! Access traces: an accelerated cold start whose lazy mount is new records what the program
//! reads; once its first response has arrived, [`Pool::keep_access_trace`] stores that trace
//! with the function (per image). Later cold starts of the function on a node without the mount
//! prefetch it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use pronto_runtime::{AccessTrace, Instance, InstanceSpec, Node, StartError, StartTimings};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::metrics::{FunctionLabels, Metrics};
use crate::store::Store;

pub type ProxyBody = axum::body::Body;

/// What the pool needs to know about a function to run it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Changes whenever anything that affects instances changes (image, command, env, limits).
    pub revision: String,
    /// What each instance runs; its `prefetch` is filled in by each cold start.
    pub instance: InstanceSpec,
    /// Bounds a request: the wait for an instance plus the wait for response headers.
    pub timeout: Duration,
    /// Requests one instance serves at once.
    pub concurrency: usize,
    pub max_instances: usize,
}

impl RunSpec {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.instance.function
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
    #[error("function {function}: all {instances} instances are busy and none freed up within {waited:?}")]
    Busy {
        function: String,
        instances: usize,
        waited: Duration,
    },
}

struct Slot {
    instance: Arc<Instance>,
    in_flight: usize,
    last_used: Instant,
    /// Idle keep-alive connections.
    connections: Vec<SendRequest<ProxyBody>>,
}

#[derive(Default)]
struct FunctionInstances {
    revision: String,
    slots: Vec<Slot>,
    /// Instances of an older revision still finishing requests; stopped when the last ends.
    draining: Vec<Slot>,
    /// Cold starts under way (they count against `max_instances`).
    starting: usize,
    /// Requests waiting for room.
    queued: usize,
    /// Woken whenever a slot frees up or a start ends.
    changed: Arc<Notify>,
}

/// All functions' instances on this node.
pub struct Pool {
    node: Node,
    /// Where access traces are kept.
    store: Store,
    functions: Mutex<HashMap<String, FunctionInstances>>,
    /// Teardowns under way; shutdown waits for them (a teardown cut short leaks its mount).
    teardowns: tokio_util::task::TaskTracker,
    /// Cold starts under way, each in a task of its own: a request that goes away (client
    /// disconnect, timeout) must not cut a start short, which would leave its container,
    /// mounts and namespace behind. Shutdown waits for them before it stops the instances.
    starts: tokio_util::task::TaskTracker,
    metrics: Arc<Metrics>,
}

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

impl Pool {
    pub fn new(node: Node, store: Store, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            node,
            store,
            functions: Mutex::default(),
            teardowns: tokio_util::task::TaskTracker::new(),
            starts: tokio_util::task::TaskTracker::new(),
            metrics,
        })
    }

    /// Every function's instances by state and its queue (functions the pool has seen).
    pub fn load(&self) -> Vec<FunctionLoad> {
        let all = self.functions.lock().expect("pool lock poisoned");
        let mut out: Vec<FunctionLoad> = all
            .iter()
            .map(|(name, f)| {
                let busy = f.slots.iter().filter(|s| s.in_flight > 0).count();
                FunctionLoad {
                    function: name.clone(),
                    starting: f.starting,
                    idle: f.slots.len() - busy,
                    busy,
                    draining: f.draining.len(),
                    queued: f.queued,
                }
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
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
            // beside a free instance. (Made after the lock, as before, a release in between —
            // a short window, but one that included spawning teardowns — was lost.)
            let changed = self
                .functions
                .lock()
                .expect("pool lock poisoned")
                .entry(spec.name().to_string())
                .or_default()
                .changed
                .clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut retired = Vec::new();
            let wait;
            {
                let mut all = self.functions.lock().expect("pool lock poisoned");
                let f = all.entry(spec.name().to_string()).or_default();
                if f.revision != spec.revision {
                    f.retire_slots(&mut retired);
                    f.revision = spec.revision.clone();
                }
                // Drop instances that died since their last request.
                let (alive, dead): (Vec<Slot>, Vec<Slot>) =
                    f.slots.drain(..).partition(|s| s.instance.is_running());
                f.slots = alive;
                for s in dead {
                    report_death(&s.instance);
                    retired.push(s.instance);
                }
                if let Some(slot) = f
                    .slots
                    .iter_mut()
                    .filter(|s| s.in_flight < spec.concurrency)
                    .min_by_key(|s| s.in_flight)
                {
                    slot.in_flight += 1;
                    slot.last_used = Instant::now();
                    let lease = Lease {
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
                    };
                    drop(all);
                    drop(queued);
                    self.stop_all(retired);
                    return Ok(lease);
                }
                if f.slots.len() + f.starting < spec.max_instances {
                    f.starting += 1;
                    wait = false;
                } else {
                    if queued.is_none() {
                        f.queued += 1;
                        queued = Some(Queued {
                            pool: self.clone(),
                            function: spec.name().to_string(),
                            since: Instant::now(),
                        });
                    }
                    wait = true;
                }
            }
            self.stop_all(retired);
            if !wait {
                let waited = queued
                    .as_ref()
                    .map_or(Duration::ZERO, |q| q.since.elapsed());
                drop(queued);
                let mut lease = self.cold_start(spec).await?;
                lease.queued = waited;
                return Ok(lease);
            }
            let now = Instant::now();
            if now >= deadline
                || tokio::time::timeout(deadline - now, notified.as_mut())
                    .await
                    .is_err()
            {
                let instances = self.instances_of(spec.name());
                return Err(AcquireError::Busy {
                    function: spec.name().to_string(),
                    instances,
                    waited: spec.timeout,
                });
            }
        }
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
    pub fn keep_access_trace(&self, lease: &Lease, spec: &RunSpec) {
        let Some(trace) = lease.instance.take_access_trace() else {
            return;
        };
        if trace.is_empty() {
            return;
        }
        let (store, function) = (self.store.clone(), spec.name().to_string());
        let digest = spec.instance.image.manifest_digest.to_string();
        tokio::spawn(async move {
            let chunks = trace.len();
            match store
                .put_access_trace(&function, &digest, trace.to_bytes())
                .await
            {
                Ok(()) => {
                    tracing::info!(%function, image = %digest, chunks, "access trace recorded")
                }
                Err(e) => tracing::warn!(%function, error = %e, "storing the access trace"),
            }
        });
    }

    /// Starts an instance for `spec` in a task of its own and waits for it. If the caller goes
    /// away meanwhile, the start still completes: its lease is then dropped with the task's
    /// output, which releases the new instance as an idle one (used by the next request,
    /// reclaimed by the reaper, stopped at shutdown).
    async fn cold_start(self: &Arc<Self>, spec: &RunSpec) -> Result<Lease, AcquireError> {
        let (this, spec) = (self.clone(), spec.clone());
        // In the request's span: the start's log lines carry its function and request id.
        let task = self.starts.spawn(
            async move { this.start_instance(&spec).await }.instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn start_instance(self: &Arc<Self>, spec: &RunSpec) -> Result<Lease, AcquireError> {
        let began = Instant::now();
        let prefetch = self.access_trace(spec).await;
        let result = self
            .node
            .start(InstanceSpec {
                prefetch,
                ..spec.instance.clone()
            })
            .await;
        let mut all = self.functions.lock().expect("pool lock poisoned");
        let f = all.entry(spec.name().to_string()).or_default();
        f.starting = f.starting.saturating_sub(1);
        f.changed.notify_waiters();
        let instance = match result {
            Ok(i) => Arc::new(i),
            Err(source) => {
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
        let slot = Slot {
            instance: instance.clone(),
            in_flight: 1,
            last_used: Instant::now(),
            connections: Vec::new(),
        };
        if f.revision == spec.revision {
            f.slots.push(slot);
        } else {
            // The function changed while this instance started: it serves this one request.
            f.draining.push(slot);
        }
        let timings = instance.timings;
        Ok(Lease {
            pool: self.clone(),
            function: spec.name().to_string(),
            instance,
            cold_start: Some(timings),
            cold_start_began: Some(began),
            queued: Duration::ZERO,
            connection: None,
            reusable: false,
            output_tag: None,
        })
    }

    fn instances_of(&self, function: &str) -> usize {
        self.functions
            .lock()
            .expect("pool lock poisoned")
            .get(function)
            .map_or(0, |f| f.slots.len())
    }

    /// Takes `instance` out of service and stops it now, busy or not (it hung or broke).
    pub fn recycle(&self, function: &str, instance_id: &str) {
        let mut retired = Vec::new();
        if let Some(f) = self
            .functions
            .lock()
            .expect("pool lock poisoned")
            .get_mut(function)
        {
            for list in [&mut f.slots, &mut f.draining] {
                list.retain(|s| {
                    let keep = s.instance.id != instance_id;
                    if !keep {
                        retired.push(s.instance.clone());
                    }
                    keep
                });
            }
            f.changed.notify_waiters();
        }
        self.stop_all(retired);
    }

    /// Takes every instance of `function` out of service (it was deleted or updated): idle ones
    /// stop now, busy ones when their requests end.
    pub fn retire(&self, function: &str) {
        let mut retired = Vec::new();
        if let Some(f) = self
            .functions
            .lock()
            .expect("pool lock poisoned")
            .get_mut(function)
        {
            f.retire_slots(&mut retired);
            f.revision.clear();
        }
        self.stop_all(retired);
    }

    /// Stops idle instances older than `idle_timeout` and drops dead ones.
    pub fn reap(&self, idle_timeout: Duration) {
        let mut retired = Vec::new();
        let now = Instant::now();
        for f in self
            .functions
            .lock()
            .expect("pool lock poisoned")
            .values_mut()
        {
            f.draining.retain(|s| {
                let dead = !s.instance.is_running();
                if dead {
                    retired.push(s.instance.clone());
                }
                !dead
            });
            f.slots.retain(|s| {
                let dead = !s.instance.is_running();
                if dead {
                    report_death(&s.instance);
                }
                let idle = s.in_flight == 0 && now.duration_since(s.last_used) >= idle_timeout;
                if dead || idle {
                    retired.push(s.instance.clone());
                }
                !(dead || idle)
            });
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

    /// Waits for the cold starts under way, then stops every instance and waits for the
    /// teardowns (graceful shutdown). Starts are bounded by their initialization timeout.
    pub async fn shutdown(&self) {
        self.starts.close();
        self.starts.wait().await;
        let all: Vec<Arc<Instance>> = self
            .functions
            .lock()
            .expect("pool lock poisoned")
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
        let mut finished = None;
        {
            let mut all = self.functions.lock().expect("pool lock poisoned");
            let Some(f) = all.get_mut(&lease.function) else {
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
                    finished = Some(f.draining.swap_remove(i).instance);
                }
            }
        }
        if let Some(i) = finished {
            self.stop_all(vec![i]);
        }
    }
}

impl FunctionInstances {
    /// Moves every slot out of service: idle ones into `retired` (to stop), busy ones to draining.
    fn retire_slots(&mut self, retired: &mut Vec<Arc<Instance>>) {
        for s in self.slots.drain(..) {
            if s.in_flight == 0 {
                retired.push(s.instance);
            } else {
                self.draining.push(s);
            }
        }
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
    since: Instant,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(f) = self
            .pool
            .functions
            .lock()
            .expect("pool lock poisoned")
            .get_mut(&self.function)
        {
            f.queued = f.queued.saturating_sub(1);
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

impl Pool {
    /// Stops instances in the background; teardown errors are logged.
    fn stop_all(&self, instances: Vec<Arc<Instance>>) {
        for i in instances {
            self.teardowns.spawn(async move {
                match i.stop().await {
                    Ok(()) => {
                        tracing::debug!(function = %i.function, instance = %i.id, "instance stopped")
                    }
                    Err(e) => {
                        tracing::error!(function = %i.function, instance = %i.id, error = %e, "instance teardown")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
