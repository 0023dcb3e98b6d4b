//! The scheduler on the recording fake host: which instance a request gets, when another is
//! started, how long a request waits, what is reclaimed and what is torn down. No root, no
//! runc: each "container" is an in-process HTTP server (`pronto_runtime::fake`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_image::{ClientOptions, RegistryClient};
use pronto_runtime::fake::{FakeHost, HostEvent};
use pronto_runtime::{InstanceSpec, Node, NodeConfig};

use super::{AcquireError, FunctionLoad, Lease, Pool, RunSpec};
use crate::metrics::{Exporter, Metrics};
use crate::store::Store;

struct Env {
    _dir: tempfile::TempDir,
    host: Arc<FakeHost>,
    pool: Arc<Pool>,
    instance: InstanceSpec,
    metrics: Arc<Metrics>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::new());
    let (node, _) = Node::open_on(
        NodeConfig {
            data_dir: dir.path().join("node"),
            runtime_bin: "unused".into(),
            registry: RegistryClient::new(ClientOptions::default()).unwrap(),
            chunk_cache_bytes: 1 << 20,
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
        pool: Pool::new(node, store, metrics.clone()),
        instance,
        metrics,
    }
}

impl Env {
    fn spec(&self, concurrency: usize, max_instances: usize) -> RunSpec {
        RunSpec {
            revision: "r1".into(),
            instance: self.instance.clone(),
            timeout: Duration::from_secs(5),
            concurrency,
            max_instances,
        }
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
        AcquireError::Busy { instances, .. } => assert_eq!(instances, 1),
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

    env.pool.reap(Duration::from_secs(3600));
    env.pool.settle().await;
    assert_eq!(env.host.running().len(), 2, "not idle long enough");

    env.pool.reap(Duration::ZERO);
    env.pool.settle().await;
    let running = env.host.running();
    assert!(running.contains(&busy_id) && !running.contains(&idle_id));
    assert_eq!(env.host.leftovers().containers.len(), 1);

    // Scale to zero once the last request ends.
    drop(busy);
    env.pool.reap(Duration::ZERO);
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

    // The failed start no longer counts against maxInstances = 1.
    env.host.configure(|b| b.fail_create = None);
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
    env.pool.reap(Duration::from_secs(3600));
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
    let load = |env: &Env| env.pool.load().into_iter().next().unwrap_or_default();
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

    // A new revision: the old busy instances drain.
    let mut r2 = spec.clone();
    r2.revision = "r2".into();
    let new = env.pool.acquire(&r2).await.unwrap();
    let s = scrape(&env);
    assert_eq!(
        ["starting", "idle", "busy", "draining"].map(|st| state(&s, st)),
        [Some(0.0), Some(0.0), Some(1.0), Some(2.0)]
    );
    drop(served);
    drop(new);
    env.pool.settle().await;
    assert_eq!(state(&scrape(&env), "draining"), Some(0.0));
    env.finish().await;
}

#[tokio::test]
async fn a_failed_cold_start_is_counted() {
    let env = env().await;
    let spec = env.spec(1, 1);
    env.host.configure(|b| b.fail_create = Some("no".into()));
    for _ in 0..2 {
        env.pool.acquire(&spec).await.unwrap_err();
    }
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
