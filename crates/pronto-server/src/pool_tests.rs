//! The scheduler on the recording fake host: which instance a request gets, when another is
//! started, how long a request waits, what is reclaimed and what is torn down. No root, no
//! runc: each "container" is an in-process HTTP server (`pronto_runtime::fake`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_image::{ClientOptions, RegistryClient};
use pronto_runtime::fake::{FakeHost, HostEvent};
use pronto_runtime::{InstanceSpec, Node, NodeConfig};

use super::{AcquireError, BusyReason, FunctionLoad, Lease, Pool, PoolLimits, RunSpec};
use crate::metrics::{Exporter, Metrics};
use crate::store::Store;

/// The test functions' idle timeout.
const IDLE: Duration = Duration::from_secs(60);

struct Env {
    _dir: tempfile::TempDir,
    host: Arc<FakeHost>,
    pool: Arc<Pool>,
    instance: InstanceSpec,
    metrics: Arc<Metrics>,
}

async fn env() -> Env {
    env_with(PoolLimits::default()).await
}

async fn env_with(limits: PoolLimits) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::new());
    let (node, _) = Node::open_on(
        NodeConfig {
            data_dir: dir.path().join("node"),
            runtime_bin: "unused".into(),
            registry: RegistryClient::new(ClientOptions::default()).unwrap(),
            chunk_cache_bytes: 1 << 20,
            max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
            background_stream: pronto_runtime::StreamPolicy::Auto,
            isolation: Default::default(),
            network: None,
        },
        host.clone(),
    )
    .await
    .unwrap();
    // The image is "already on the node": no registry is asked.
    let instance = pronto_runtime::fake::local_spec(&node, "f");
    let store = Store::open(dir.path()).unwrap();
    let metrics = Arc::new(Metrics::default());
    Env {
        _dir: dir,
        host,
        pool: Pool::new(node, store, metrics.clone(), limits),
        instance,
        metrics,
    }
}

impl Env {
    fn spec(&self, concurrency: usize, max_instances: usize) -> RunSpec {
        RunSpec {
            revision: "r1".into(),
            track: "LATEST".into(),
            idle_timeout: IDLE,
            instance: self.instance.clone(),
            timeout: Duration::from_secs(5),
            concurrency,
            max_instances,
        }
    }

    /// The spec of another function, `name`, with `memory_mb`.
    fn other(&self, name: &str, memory_mb: u64) -> RunSpec {
        let mut spec = self.spec(1, 10);
        spec.instance = pronto_runtime::fake::local_spec(self.pool.node(), name);
        spec.instance.memory_mb = memory_mb;
        spec
    }

    fn starts(&self) -> usize {
        self.host
            .events()
            .iter()
            .filter(|e| matches!(e, HostEvent::CreateContainer(_)))
            .count()
    }

    /// Shuts the pool down and checks nothing is left on the "machine".
    async fn finish(self) {
        self.pool.shutdown().await;
        let left = self.host.leftovers();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn id(lease: &Lease) -> String {
    lease.instance.id.clone()
}

#[tokio::test]
async fn requests_share_an_instance_up_to_its_concurrency_then_another_starts() {
    let env = env().await;
    let spec = env.spec(2, 3);
    let a = env.pool.acquire(&spec).await.unwrap();
    assert!(a.cold_start.is_some());
    let b = env.pool.acquire(&spec).await.unwrap();
    assert_eq!(
        id(&a),
        id(&b),
        "the second request fits on the first instance"
    );
    assert!(b.cold_start.is_none());
    let c = env.pool.acquire(&spec).await.unwrap();
    assert_ne!(id(&a), id(&c), "the first instance is full");
    assert!(c.cold_start.is_some());
    assert_eq!(env.starts(), 2);

    // The least busy instance is chosen: `c`'s has one request, `a`'s two.
    let d = env.pool.acquire(&spec).await.unwrap();
    assert_eq!(id(&d), id(&c));
    drop((a, b, c, d));
    env.finish().await;
}

#[tokio::test]
async fn a_released_instance_is_reused_warm() {
    let env = env().await;
    let spec = env.spec(1, 3);
    let first = id(&env.pool.acquire(&spec).await.unwrap());
    for _ in 0..3 {
        let l = env.pool.acquire(&spec).await.unwrap();
        assert_eq!(id(&l), first);
        assert!(l.cold_start.is_none());
    }
    assert_eq!(env.starts(), 1);
    env.finish().await;
}

#[tokio::test]
async fn at_the_limit_a_request_waits_and_gets_the_instance_that_frees_up() {
    let env = env().await;
    let spec = env.spec(1, 1);
    let held = env.pool.acquire(&spec).await.unwrap();
    let held_id = id(&held);
    let pool = env.pool.clone();
    let spec2 = spec.clone();
    let waiter = tokio::spawn(async move { pool.acquire(&spec2).await.map(|l| id(&l)) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "no room: it must wait");
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
    assert_eq!(got, held_id);
    assert_eq!(env.starts(), 1, "no instance beyond maxInstances");
    env.finish().await;
}

#[tokio::test]
async fn a_request_that_never_gets_room_fails_busy_after_its_timeout() {
    let env = env().await;
    let mut spec = env.spec(1, 1);
    spec.timeout = Duration::from_millis(150);
    let _held = env.pool.acquire(&spec).await.unwrap();
    let started = Instant::now();
    let e = env.pool.acquire(&spec).await.unwrap_err();
    let waited = started.elapsed();
    match e {
        AcquireError::Busy { reason, .. } => {
            assert_eq!(reason, BusyReason::MaxInstances { max: 1 })
        }
        other => panic!("unexpected {other}"),
    }
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    drop(_held);
    env.finish().await;
}

#[tokio::test]
async fn starts_under_way_count_against_the_limit() {
    let env = env().await;
    env.host
        .configure(|b| b.start_delay = Duration::from_millis(100));
    let mut spec = env.spec(1, 2);
    spec.timeout = Duration::from_millis(400);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (pool, spec) = (env.pool.clone(), spec.clone());
            tokio::spawn(async move { pool.acquire(&spec).await })
        })
        .collect();
    let mut leases = Vec::new();
    let mut busy = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => leases.push(l),
            Err(AcquireError::Busy { .. }) => busy += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(leases.len(), 2);
    assert_eq!(busy, 3);
    assert_eq!(
        env.starts(),
        2,
        "five simultaneous requests, at most two starts"
    );
    drop(leases);
    env.finish().await;
}

#[tokio::test]
async fn idle_instances_are_reclaimed_and_busy_ones_are_not() {
    let env = env().await;
    let spec = env.spec(1, 2);
    let busy = env.pool.acquire(&spec).await.unwrap();
    let idle = env.pool.acquire(&spec).await.unwrap();
    let (busy_id, idle_id) = (id(&busy), id(&idle));
    drop(idle);

    env.pool.reap();
    env.pool.settle().await;
    assert_eq!(env.host.running().len(), 2, "not idle long enough");

    env.pool.reap_at(Instant::now() + IDLE);
    env.pool.settle().await;
    let running = env.host.running();
    assert!(running.contains(&busy_id) && !running.contains(&idle_id));
    assert_eq!(env.host.leftovers().containers.len(), 1);

    // Scale to zero once the last request ends.
    drop(busy);
    env.pool.reap_at(Instant::now() + IDLE);
    env.pool.settle().await;
    assert!(env.host.leftovers().is_empty());
    // The next request cold-starts again.
    let again = env.pool.acquire(&spec).await.unwrap();
    assert!(again.cold_start.is_some());
    drop(again);
    env.finish().await;
}

#[tokio::test]
async fn a_failed_start_is_reported_and_frees_its_place() {
    let env = env().await;
    let spec = env.spec(1, 1);
    env.host
        .configure(|b| b.fail_create = Some("exec format error".into()));
    let e = env.pool.acquire(&spec).await.unwrap_err();
    assert!(matches!(e, AcquireError::Start { .. }), "{e}");
    assert!(e.to_string().contains("exec format error"), "{e}");
    assert!(env.host.leftovers().is_empty());

    // Right after, requests fail at once, starting nothing (backoff: 250 ms after one failure).
    env.host.configure(|b| b.fail_create = None);
    let e = env.pool.acquire(&spec).await.unwrap_err();
    assert!(
        matches!(e, AcquireError::BackingOff { failures: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("exec format error"), "{e}");
    assert_eq!(env.starts(), 1);
    // The failed start no longer counts against maxInstances = 1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let l = env.pool.acquire(&spec).await.unwrap();
    assert!(l.cold_start.is_some());
    drop(l);
    env.finish().await;
}

#[tokio::test]
async fn a_dead_instance_is_dropped_torn_down_and_replaced() {
    let env = env().await;
    let spec = env.spec(1, 1);
    let dead = id(&env.pool.acquire(&spec).await.unwrap());
    env.host.kill(&dead, true);
    let l = env.pool.acquire(&spec).await.unwrap();
    assert_ne!(id(&l), dead);
    assert!(l.cold_start.is_some());
    env.pool.settle().await;
    assert!(!env.host.leftovers().containers.contains(&dead));

    // The reaper drops the dead too.
    let replacement = id(&l);
    drop(l);
    env.host.kill(&replacement, false);
    env.pool.reap();
    env.pool.settle().await;
    assert!(env.host.leftovers().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_new_revision_gets_new_instances_and_the_old_ones_drain() {
    let env = env().await;
    let old = env.spec(1, 2);
    let idle_lease = env.pool.acquire(&old).await.unwrap();
    let busy_old = env.pool.acquire(&old).await.unwrap();
    let (idle_old, busy_old_id) = (id(&idle_lease), id(&busy_old));
    assert_ne!(idle_old, busy_old_id);
    drop(idle_lease);

    let mut new = old.clone();
    new.revision = "r2".into();
    let l = env.pool.acquire(&new).await.unwrap();
    assert!(
        l.cold_start.is_some(),
        "the old revision's instances serve no new request"
    );
    env.pool.settle().await;
    let running = env.host.running();
    assert!(
        !running.contains(&idle_old),
        "an idle old instance stops at once"
    );
    assert!(
        running.contains(&busy_old_id),
        "a busy one finishes its request"
    );

    drop(busy_old);
    env.pool.settle().await;
    assert!(!env.host.running().contains(&busy_old_id), "then it stops");
    assert_eq!(env.host.running().len(), 1);
    drop(l);
    env.finish().await;
}

#[tokio::test]
async fn a_recycled_instance_stops_even_while_busy() {
    let env = env().await;
    let spec = env.spec(4, 1);
    let l = env.pool.acquire(&spec).await.unwrap();
    let stuck = id(&l);
    env.pool.recycle(spec.name(), &stuck);
    env.pool.settle().await;
    assert!(env.host.leftovers().is_empty());
    drop(l);
    let next = env.pool.acquire(&spec).await.unwrap();
    assert_ne!(id(&next), stuck);
    drop(next);
    env.finish().await;
}

#[tokio::test]
async fn a_deleted_function_retires_its_instances() {
    let env = env().await;
    let spec = env.spec(1, 2);
    let busy = env.pool.acquire(&spec).await.unwrap();
    drop(env.pool.acquire(&spec).await.unwrap());
    env.pool.retire(spec.name());
    env.pool.settle().await;
    assert_eq!(env.host.running().len(), 1, "only the busy one is left");
    drop(busy);
    env.pool.settle().await;
    assert!(env.host.leftovers().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_lease_carries_requests_to_its_instance_over_a_reused_connection() {
    let env = env().await;
    let spec = env.spec(1, 1);
    for round in 0..2 {
        let mut lease = env.pool.acquire(&spec).await.unwrap();
        let instance = id(&lease);
        let conn = lease.connection().await.unwrap();
        let req = axum::http::Request::get("/hello")
            .header("host", "fn")
            .body(super::ProxyBody::empty())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            body,
            format!("instance {instance}: GET /hello"),
            "round {round}"
        );
        lease.mark_reusable();
    }
    env.finish().await;
}

/// The value of the sample `name{labels}` in a scrape (counters, gauges, histogram counts).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    pronto_testkit::metrics::matching(scrape, name, labels)
        .next()
        .map(pronto_testkit::metrics::value)
}

fn scrape(env: &Env) -> prometheus_parse::Scrape {
    let text = Exporter::new(&env.metrics, env.pool.clone()).encode();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The load of the first function the pool knows.
fn load(env: &Env) -> FunctionLoad {
    env.pool.load().into_iter().next().unwrap_or_default()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn instances_by_state_and_the_queue_are_exported() {
    let env = env().await;
    let spec = env.spec(1, 2);
    let state = |s: &prometheus_parse::Scrape, state: &str| {
        sample(
            s,
            "pronto_instances",
            &[("function", "f"), ("state", state)],
        )
    };

    // Starting: counted while the container starts.
    env.host
        .configure(|b| b.start_delay = Duration::from_millis(300));
    let (pool, s2) = (env.pool.clone(), spec.clone());
    let first = tokio::spawn(async move { pool.acquire(&s2).await });
    until("a start under way", || load(&env).starting == 1).await;
    assert_eq!(state(&scrape(&env), "starting"), Some(1.0));
    let a = first.await.unwrap().unwrap();
    env.host.configure(|b| b.start_delay = Duration::ZERO);
    let b = env.pool.acquire(&spec).await.unwrap();
    drop(b);
    assert_eq!(
        load(&env),
        FunctionLoad {
            function: "f".into(),
            idle: 1,
            busy: 1,
            ..FunctionLoad::default()
        }
    );
    let s = scrape(&env);
    assert_eq!(
        ["starting", "idle", "busy", "draining"].map(|st| state(&s, st)),
        [Some(0.0), Some(1.0), Some(1.0), Some(0.0)]
    );

    // Both busy at maxInstances: the next two requests queue.
    let c = env.pool.acquire(&spec).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (pool, spec) = (env.pool.clone(), spec.clone());
            tokio::spawn(async move { pool.acquire(&spec).await })
        })
        .collect();
    until("two requests queued", || load(&env).queued == 2).await;
    let s = scrape(&env);
    assert_eq!(
        sample(&s, "pronto_queue_length", &[("function", "f")]),
        Some(2.0)
    );
    assert_eq!(state(&s, "busy"), Some(2.0));
    assert_eq!(
        sample(&s, "pronto_queue_wait_seconds", &[("function", "f")]),
        None,
        "no wait has ended yet"
    );
    // One release serves one waiter; the other stays queued.
    drop(a);
    until("one waiter served", || load(&env).queued == 1).await;
    drop(c);
    let mut served = Vec::new();
    for w in waiters {
        served.push(
            tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("served")
                .unwrap()
                .unwrap(),
        );
    }
    assert!(served
        .iter()
        .all(|l| l.queued > Duration::ZERO && l.cold_start.is_none()));
    let s = scrape(&env);
    assert_eq!(
        sample(&s, "pronto_queue_length", &[("function", "f")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&s, "pronto_queue_wait_seconds", &[("function", "f")]),
        Some(2.0),
        "both waits observed"
    );

    // A new revision: the old busy instances drain, and they still count against
    // maxInstances (2): the new revision's first request waits for them.
    let mut r2 = spec.clone();
    r2.revision = "r2".into();
    let new = tokio::spawn({
        let (pool, r2) = (env.pool.clone(), r2.clone());
        async move { pool.acquire(&r2).await }
    });
    until("the new revision waits", || load(&env).queued == 1).await;
    let s = scrape(&env);
    assert_eq!(
        ["starting", "idle", "busy", "draining"].map(|st| state(&s, st)),
        [Some(0.0), Some(0.0), Some(0.0), Some(2.0)]
    );
    drop(served);
    let new = tokio::time::timeout(Duration::from_secs(2), new)
        .await
        .expect("served once the old ones drained")
        .unwrap()
        .unwrap();
    assert!(new.cold_start.is_some());
    let s = scrape(&env);
    assert_eq!(
        ["busy", "draining"].map(|st| state(&s, st)),
        [Some(1.0), Some(0.0)]
    );
    drop(new);
    env.pool.settle().await;
    env.finish().await;
}

#[tokio::test]
async fn a_failed_cold_start_is_counted() {
    let env = env().await;
    let spec = env.spec(1, 1);
    env.host.configure(|b| b.fail_create = Some("no".into()));
    env.pool.acquire(&spec).await.unwrap_err();
    // After the first failure's backoff (250 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.pool.acquire(&spec).await.unwrap_err();
    assert_eq!(
        sample(
            &scrape(&env),
            "pronto_cold_start_failures_total",
            &[("function", "f")]
        ),
        Some(2.0)
    );
    env.finish().await;
}

/// A request that cold-starts an instance (taking 200 ms) and goes away 50 ms in, as a client
/// that disconnects does.
async fn abandon_a_cold_start(env: &Env, spec: &RunSpec) {
    env.host
        .configure(|b| b.start_delay = Duration::from_millis(200));
    let (pool, spec) = (env.pool.clone(), spec.clone());
    let request = tokio::spawn(async move { pool.acquire(&spec).await.map(|l| id(&l)) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn a_request_that_goes_away_during_its_cold_start_leaves_a_usable_instance_not_a_leak() {
    let env = env().await;
    let spec = env.spec(1, 1);
    abandon_a_cold_start(&env, &spec).await;

    // The start completes anyway, and its instance serves the next request warm.
    let deadline = Instant::now() + Duration::from_secs(3);
    while env.host.running().is_empty() {
        assert!(Instant::now() < deadline, "the start was cut short");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = env.pool.acquire(&spec).await.unwrap();
    assert!(next.cold_start.is_none(), "the started instance is reused");
    assert_eq!(env.starts(), 1);
    drop(next);
    env.finish().await;
}

#[tokio::test]
async fn shutdown_waits_for_a_start_under_way_and_stops_its_instance() {
    let env = env().await;
    abandon_a_cold_start(&env, &env.spec(1, 1)).await;
    // Shutdown right away: the start is still under way.
    env.finish().await;
}

/// A start that would take its whole (long) initialization timeout: the shutdown cancels it
/// after its grace period, the start tears down what it made, and its request gets an error.
#[tokio::test]
async fn shutdown_cancels_a_start_that_outlasts_its_grace_and_leaves_nothing() {
    let env = env().await;
    env.host.configure(|b| b.never_ready = true);
    let mut spec = env.spec(1, 1);
    spec.instance.init_timeout = Duration::from_secs(120);
    let (pool, s) = (env.pool.clone(), spec.clone());
    let request = tokio::spawn(async move { pool.acquire(&s).await.map(|l| id(&l)) });
    let deadline = Instant::now() + Duration::from_secs(3);
    while env.starts() == 0 {
        assert!(Instant::now() < deadline, "the start never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let pool = env.pool.clone();
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
        .await
        .expect("shutdown still waits for the start after 30 s");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3 + 2), // SHUTDOWN_START_GRACE + a margin
        "shutdown took {took:?}"
    );
    let e = request.await.unwrap().unwrap_err();
    assert!(
        e.to_string().contains("the start was cancelled"),
        "the request is told: {e}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_burst_starts_only_the_instances_it_needs() {
    let env = env().await;
    env.host
        .configure(|b| b.start_delay = Duration::from_millis(150));
    // 100 requests at once, 10 per instance, up to 50 instances: 10 starts suffice.
    let spec = env.spec(10, 50);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (pool, spec) = (env.pool.clone(), spec.clone());
            tokio::spawn(async move { pool.acquire(&spec).await })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().unwrap());
    }
    assert_eq!(env.starts(), 10, "a start per 10 requests, not per request");
    let mut per_instance = std::collections::HashMap::new();
    for l in &leases {
        *per_instance.entry(id(l)).or_insert(0) += 1;
    }
    assert!(per_instance.values().all(|&n| n == 10), "{per_instance:?}");
    drop(leases);
    env.finish().await;
}

#[tokio::test]
async fn concurrent_starts_of_one_function_are_bounded() {
    let env = env_with(PoolLimits {
        max_concurrent_starts: 2,
        ..PoolLimits::default()
    })
    .await;
    env.host
        .configure(|b| b.start_delay = Duration::from_millis(200));
    let spec = env.spec(1, 10);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (pool, spec) = (env.pool.clone(), spec.clone());
            tokio::spawn(async move { pool.acquire(&spec).await })
        })
        .collect();
    until("two starts under way", || load(&env).starting == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(load(&env).starting, 2, "never more than two at once");
    assert_eq!(load(&env).queued, 4);
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        env.starts(),
        6,
        "each request got its own instance in the end"
    );
    drop(leases);
    env.finish().await;
}

#[tokio::test]
async fn the_memory_budget_stops_idle_instances_of_other_functions_or_refuses() {
    // Room for two 512 MB instances on the node.
    let env = env_with(PoolLimits {
        memory_budget_mb: 1024,
        ..PoolLimits::default()
    })
    .await;
    let (f, g, h) = (
        env.other("f", 512),
        env.other("g", 512),
        env.other("h", 512),
    );
    let f_lease = env.pool.acquire(&f).await.unwrap();
    let f_id = id(&f_lease);
    drop(f_lease);
    let g_lease = env.pool.acquire(&g).await.unwrap();
    assert_eq!(env.pool.memory(), (1024, 1024));

    // h needs room: f's idle instance gives way (once torn down), g's busy one does not.
    let h_lease = env.pool.acquire(&h).await.unwrap();
    assert!(h_lease.cold_start.is_some());
    env.pool.settle().await;
    assert!(
        !env.host.running().contains(&f_id),
        "f's idle instance stopped"
    );
    assert_eq!(env.pool.memory(), (1024, 1024));

    // Everything busy: f waits until its deadline, then is refused for memory.
    let mut f_short = f.clone();
    f_short.timeout = Duration::from_millis(200);
    match env.pool.acquire(&f_short).await.unwrap_err() {
        AcquireError::Busy { reason, .. } => assert_eq!(
            reason,
            BusyReason::Memory {
                budget_mb: 1024,
                needed_mb: 512
            }
        ),
        e => panic!("unexpected {e}"),
    }
    drop((g_lease, h_lease));
    env.finish().await;
}

#[tokio::test]
async fn versions_have_their_own_instances_within_one_maximum() {
    let env = env().await;
    let latest = env.spec(1, 2);
    let mut v1 = latest.clone();
    (v1.track, v1.revision) = ("1".into(), "v1".into());
    let a = env.pool.acquire(&latest).await.unwrap();
    let b = env.pool.acquire(&v1).await.unwrap();
    assert_ne!(id(&a), id(&b), "each track runs its own configuration");
    let (a_id, b_id) = (id(&a), id(&b));
    drop(b);
    // At the maximum (2), LATEST needs another: v1's idle instance gives way.
    let c = env.pool.acquire(&latest).await.unwrap();
    assert!(c.cold_start.is_some());
    env.pool.settle().await;
    let running = env.host.running();
    assert!(running.contains(&a_id) && !running.contains(&b_id));
    assert_eq!(running.len(), 2, "never more than maxInstances");
    drop((a, c));
    env.finish().await;
}

fn provision(spec: &RunSpec, target: usize) -> super::Provision {
    super::Provision {
        qualifier: "LATEST".into(),
        spec: spec.clone(),
        target,
    }
}

#[tokio::test]
async fn provisioned_instances_start_unasked_serve_first_come_back_and_are_never_reaped() {
    let env = env().await;
    let spec = env.spec(1, 4);
    env.pool.provision(&[provision(&spec, 2)]);
    until("two provisioned instances", || {
        env.pool.provisioned("f", "LATEST") == 2
    })
    .await;
    assert_eq!(env.starts(), 2);
    // They take the traffic: no cold start while they have room.
    let a = env.pool.acquire(&spec).await.unwrap();
    let b = env.pool.acquire(&spec).await.unwrap();
    assert!(a.cold_start.is_none() && b.cold_start.is_none());
    // A third request goes on demand.
    let c = env.pool.acquire(&spec).await.unwrap();
    assert!(c.cold_start.is_some());
    let (a_id, c_id) = (id(&a), id(&c));
    drop((a, b, c));

    // Idle for ever: the on-demand one goes, the provisioned ones stay.
    env.pool.reap_at(Instant::now() + IDLE * 10);
    env.pool.settle().await;
    let running = env.host.running();
    assert!(!running.contains(&c_id));
    assert_eq!(running.len(), 2);

    // A provisioned instance dies: the next pass replaces it.
    env.host.kill(&a_id, false);
    env.pool.provision(&[provision(&spec, 2)]);
    until("replaced", || {
        env.pool.provisioned("f", "LATEST") == 2 && !env.host.running().contains(&a_id)
    })
    .await;
    assert_eq!(env.host.running().len(), 2);

    // Target lowered to 0: they become on-demand and are reaped when idle.
    env.pool.provision(&[]);
    assert_eq!(env.pool.provisioned("f", "LATEST"), 0);
    env.pool.reap_at(Instant::now() + IDLE * 10);
    env.pool.settle().await;
    assert!(env.host.running().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn waiting_requests_are_served_first_come_first_served() {
    let env = env().await;
    let spec = env.spec(1, 1);
    let held = env.pool.acquire(&spec).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (pool, spec, order) = (env.pool.clone(), spec.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let lease = pool.acquire(&spec).await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        }));
        until("queued in order", || load(&env).queued == i + 1).await;
    }
    // A newcomer does not jump the line either.
    let late = {
        let (pool, spec, order) = (env.pool.clone(), spec.clone(), order.clone());
        tokio::spawn(async move {
            let lease = pool.acquire(&spec).await.unwrap();
            order.lock().unwrap().push(99);
            drop(lease);
        })
    };
    until("the newcomer waits too", || load(&env).queued == 6).await;
    drop(held);
    // The place just freed belongs to the first in line, not to a request that arrives now
    // (before the woken waiter runs).
    use futures_util::FutureExt;
    assert!(
        env.pool.acquire(&spec).now_or_never().is_none(),
        "a newcomer took the place of a waiting request"
    );
    for w in waiters {
        w.await.unwrap();
    }
    late.await.unwrap();
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 99]);
    assert_eq!(env.starts(), 1);
    env.finish().await;
}

#[tokio::test]
async fn a_function_that_fails_to_start_backs_off_instead_of_starting_per_request() {
    let env = env().await;
    env.host
        .configure(|b| b.fail_create = Some("exec format error".into()));
    let spec = env.spec(1, 50);
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (pool, spec) = (env.pool.clone(), spec.clone());
            tokio::spawn(async move { pool.acquire(&spec).await })
        })
        .collect();
    let mut backed_off = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(AcquireError::BackingOff { .. }) => backed_off += 1,
            Err(AcquireError::Start { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let starts = env.starts();
    assert!(starts <= 8, "30 requests started {starts} containers");
    assert_eq!(backed_off, 30 - starts);
    // The backoff doubles with each failure in a row, up to 30 s.
    let backoff = |n| super::start_backoff(n).as_millis();
    assert_eq!(
        [1, 2, 3, 8, 9, 100].map(backoff),
        [250, 500, 1000, 30000, 30000, 30000]
    );
    env.finish().await;
}
