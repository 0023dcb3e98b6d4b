//! Start, teardown and crash cleanup on the recording fake host: every step made is undone,
//! in the right order, whatever fails. (The same paths on the real machine — runc, overlayfs,
//! namespaces — are covered by `tests/instances.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_image::{ClientOptions, RegistryClient};

use crate::fake::{FakeHost, HostEvent};
use crate::{InstanceSpec, Node, NodeConfig, ReadinessProbe, RootfsSource, StartError};

struct Env {
    _dir: tempfile::TempDir,
    config: NodeConfig,
    host: Arc<FakeHost>,
    node: Node,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::new());
    let config = NodeConfig {
        data_dir: dir.path().to_owned(),
        runtime_bin: "unused".into(),
        registry: RegistryClient::new(ClientOptions::default()).unwrap(),
        chunk_cache_bytes: 1 << 20,
        max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
        background_stream: crate::StreamPolicy::Auto,
        isolation: Default::default(),
        network: None,
    };
    let (node, cleaned) = Node::open_on(config.clone(), host.clone()).await.unwrap();
    assert_eq!(cleaned, 0);
    Env {
        _dir: dir,
        config,
        host,
        node,
    }
}

fn spec(env: &Env, function: &str) -> InstanceSpec {
    crate::fake::local_spec(&env.node, function)
}

fn instance_dirs(env: &Env) -> usize {
    std::fs::read_dir(env.config.data_dir.join("instances"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn a_start_makes_each_thing_once_and_a_stop_undoes_them_in_reverse() {
    let env = env().await;
    let instance = env.node.start(spec(&env, "hello")).await.unwrap();
    assert!(instance.is_running());
    assert_eq!(instance.timings.rootfs, RootfsSource::Local);
    let t = instance.timings;
    assert!(
        t.auth_done <= t.image_ready
            && t.image_ready <= t.setup_done
            && t.setup_done <= t.container_started
            && t.container_started <= t.app_ready,
        "{t:?}"
    );
    let (id, netns) = (instance.id.clone(), format!("pronto-{}", instance.id));
    let dir = env.config.data_dir.join("instances").join(&id);
    let rootfs = crate::layout::run_dir(&env.config.data_dir)
        .join(&id)
        .join("rootfs");
    let (disk, lower) = (dir.join("disk"), dir.join("lower"));
    // In a user namespace (the default): the image idmapped below the overlay, the network
    // namespace made by the runtime and named before the start.
    assert_eq!(
        env.host.events(),
        vec![
            HostEvent::MountDisk(disk.clone()),
            HostEvent::MountIdmapped(lower.clone()),
            HostEvent::MountOverlay(rootfs.clone()),
            HostEvent::CreateContainer(id.clone()),
            HostEvent::AttachNetns(netns.clone()),
            HostEvent::StartContainer(id.clone()),
        ]
    );
    // The bundle joins the namespace that was made, under the instance's cgroup.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.config
                .data_dir
                .join("instances")
                .join(&id)
                .join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["linux"]["cgroupsPath"], format!("/pronto-{id}"));

    // The fake app answers through the instance's own connection.
    let mut s = instance.connect().await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.ends_with(&format!("instance {id}: GET /x")),
        "{answer}"
    );

    instance.stop().await.unwrap();
    assert!(!instance.is_running());
    assert_eq!(
        env.host.events()[6..],
        [
            HostEvent::DeleteContainer(id.clone()),
            HostEvent::Unmount(rootfs.clone()),
            HostEvent::Unmount(lower),
            HostEvent::UnmountDisk(disk),
            HostEvent::DeleteNetns(netns),
        ]
    );
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
    assert_eq!(instance_dirs(&env), 0);
    assert!(
        !rootfs.parent().unwrap().exists(),
        "the mount point's dir is removed"
    );
    // Stopping twice does nothing more.
    instance.stop().await.unwrap();
    assert_eq!(env.host.events().len(), 11);
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_and_reports_the_container_output() {
    let env = env().await;
    env.host
        .configure(|b| b.fail_create = Some("exec: no such file /app".into()));
    let e = env.node.start(spec(&env, "f")).await.unwrap_err();
    match &e {
        StartError::Runtime { log_tail, .. } => assert!(log_tail.contains("no such file")),
        other => panic!("unexpected {other}"),
    }
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
    assert_eq!(instance_dirs(&env), 0);
}

#[tokio::test]
async fn an_app_that_never_answers_fails_at_its_init_timeout_and_is_torn_down() {
    let env = env().await;
    env.host.configure(|b| b.never_ready = true);
    let mut s = spec(&env, "slow");
    s.init_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let e = env.node.start(s).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, StartError::InitTimeout { .. }), "{e}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
    assert_eq!(instance_dirs(&env), 0);
}

fn probe(path: &str, period_ms: u64, failures: u32, successes: u32) -> ReadinessProbe {
    ReadinessProbe {
        path: path.into(),
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(period_ms),
        timeout: Duration::from_secs(1),
        failure_threshold: failures,
        success_threshold: successes,
    }
}

/// The `GET`s the fake app logged for `path`, once at least `want` are in its log.
async fn probes_logged(log: &std::path::Path, path: &str, want: usize) -> usize {
    let needle = format!(": GET {path}");
    for _ in 0..100 {
        let n = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(&needle)
            .count();
        if n >= want {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    0
}

#[tokio::test]
async fn a_health_check_is_ready_after_its_success_threshold_of_passes() {
    let env = env().await;
    let mut s = spec(&env, "healthy");
    s.readiness = Some(ReadinessProbe {
        initial_delay: Duration::from_millis(300),
        ..probe("/status/204", 100, 1, 3)
    });
    let instance = env.node.start(s).await.unwrap();
    // 300 ms of delay, then three passes 100 ms apart.
    assert!(
        instance.timings.app_ready - instance.timings.container_started
            >= Duration::from_millis(500),
        "{:?}",
        instance.timings
    );
    assert_eq!(
        probes_logged(&instance.log_path(), "/status/204", 3).await,
        3
    );
    assert_eq!(
        probes_logged(&instance.log_path(), "", 3).await,
        3,
        "only the checks"
    );
    instance.stop().await.unwrap();
}

#[tokio::test]
async fn a_health_check_that_answers_500_fails_the_start_at_its_failure_threshold() {
    let env = env().await;
    let mut s = spec(&env, "sick");
    s.readiness = Some(probe("/status/500", 20, 3, 1));
    let e = env.node.start(s).await.unwrap_err();
    assert!(
        matches!(e, StartError::HealthCheckFailed { failures: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(
            "the health check GET /status/500 on port 9000 failed 3 times in a row \
             (failureThreshold; last check: answered 500)"
        ),
        "{e}"
    );
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
    assert_eq!(instance_dirs(&env), 0);
}

#[tokio::test]
async fn a_health_check_that_never_passes_fails_at_the_init_timeout() {
    let env = env().await;
    let mut s = spec(&env, "sick");
    s.init_timeout = Duration::from_millis(400);
    s.readiness = Some(probe("/status/503", 50, 120, 1));
    let started = Instant::now();
    let e = env.node.start(s).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, StartError::HealthCheckTimeout { .. }), "{e}");
    assert!(
        e.to_string().starts_with(
            "the health check GET /status/503 on port 9000 did not pass within the \
             initialization timeout of 400ms (last check: answered 503)"
        ),
        "{e}"
    );
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
}

#[tokio::test]
async fn a_health_check_waits_for_the_port_and_its_initial_delay_within_the_deadline() {
    let env = env().await;
    env.host.configure(|b| b.never_ready = true);
    let mut s = spec(&env, "deaf");
    s.init_timeout = Duration::from_millis(300);
    // A delay past the deadline is cut to it; a port that never listens is no failure to
    // count, so the start ends at the deadline, naming what the last check saw.
    s.readiness = Some(ReadinessProbe {
        initial_delay: Duration::from_secs(60),
        ..probe("/ready", 10, 1, 1)
    });
    let started = Instant::now();
    let e = env.node.start(s).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        e.to_string()
            .contains("(last check: the port accepted no connection)"),
        "{e}"
    );
}

#[tokio::test]
async fn an_app_that_exits_before_answering_fails_at_once() {
    let env = env().await;
    env.host.configure(|b| b.exit_on_start = true);
    let mut s = spec(&env, "crash");
    s.init_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let e = env.node.start(s).await.unwrap_err();
    assert!(matches!(e, StartError::Exited { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(env.host.leftovers().is_empty());
}

#[tokio::test]
async fn a_death_and_an_oom_kill_are_seen() {
    let env = env().await;
    let a = env.node.start(spec(&env, "a")).await.unwrap();
    let b = env.node.start(spec(&env, "a")).await.unwrap();
    env.host.kill(&a.id, false);
    env.host.kill(&b.id, true);
    assert!(!a.is_running() && !b.is_running());
    assert!(!a.oom_killed());
    assert!(b.oom_killed());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(env.host.leftovers().is_empty());
}

#[tokio::test]
async fn a_function_name_that_cannot_name_a_directory_is_refused_before_anything_is_made() {
    let env = env().await;
    let e = env.node.start(spec(&env, "../x")).await.unwrap_err();
    assert!(e.to_string().contains("cannot name a directory"), "{e}");
    assert!(env.host.events().is_empty());
    assert_eq!(instance_dirs(&env), 0);
}

#[tokio::test]
async fn opening_the_node_again_cleans_up_what_a_crashed_daemon_left() {
    let env = env().await;
    let kept = env.node.start(spec(&env, "left")).await.unwrap();
    // The daemon "dies": its instance is never stopped. The runtime also knows a container
    // that no instance directory records.
    std::mem::forget(kept);
    env.host.plant_container("orphan");
    assert_eq!(env.host.leftovers().containers.len(), 2);

    let (_node, cleaned) = Node::open_on(env.config.clone(), env.host.clone())
        .await
        .unwrap();
    assert_eq!(cleaned, 2);
    assert!(
        env.host.leftovers().is_empty(),
        "{:?}",
        env.host.leftovers()
    );
    assert_eq!(instance_dirs(&env), 0);
}

/// A pull killed mid-way (`kill -9`) leaves its staging and download directories beside the
/// image it was making; the next open removes them, and nothing else.
#[tokio::test]
async fn opening_the_node_removes_the_temporary_directories_of_a_killed_pull() {
    let env = env().await;
    let images = env.config.data_dir.join("images");
    let hex = "ab".repeat(32);
    let plant = |rel: &str| {
        let p = images.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    };
    // What a killed pull leaves (tempfile's suffixes: 6 random alphanumerics).
    plant(&format!(".{hex}.partial-Ab3dE9/usr/bin/tool"));
    plant(&format!(".{hex}.blobs-x7YzQ2/{hex}"));
    // Everything else stays: a complete image, and names Pronto does not make this way.
    plant(&format!("{hex}/etc/os-release"));
    plant(".cache/keep");
    plant("notes.partial-Ab3dE9/keep");
    plant(".x.partial-file-not-dir");
    let (_node, cleaned) = Node::open_on(env.config.clone(), env.host.clone())
        .await
        .unwrap();
    assert_eq!(cleaned, 0, "no instance was left");
    let mut left: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".cache",
            ".x.partial-file-not-dir",
            hex.as_str(),
            "notes.partial-Ab3dE9"
        ]
    );
    assert!(images.join(&hex).join("etc/os-release").is_file());
}

/// One request to `instance` through its "network namespace".
async fn get(instance: &crate::Instance, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = instance.connect().await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn output_lines_are_stamped_with_the_instance_and_the_request_it_serves() {
    use crate::output::LogRecord;
    let env = env().await;
    let instance = env.node.start(spec(&env, "talk")).await.unwrap();
    instance.request_tag().begin("req-1").await;
    get(&instance, "/one").await;
    instance.request_tag().end("req-1").await;
    get(&instance, "/two").await;
    let log = instance.log_path();
    let id = instance.id.clone();
    // Stopping waits for the pipe's last lines.
    instance.stop().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(String, Option<String>, String)> = text
        .lines()
        .filter_map(LogRecord::parse)
        .filter(|r| !r.message.ends_with(": GET /")) // readiness probes
        .map(|r| {
            (
                r.instance.to_string(),
                r.request_id.map(str::to_string),
                r.message.to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                id.clone(),
                Some("req-1".into()),
                format!("instance {id}: GET /one")
            ),
            (id.clone(), None, format!("instance {id}: GET /two")),
        ],
        "{text}"
    );
}

#[tokio::test]
async fn a_dropped_node_leaves_no_run_dir() {
    let env = env().await;
    let run = crate::layout::run_dir(&env.config.data_dir);
    let instance = env.node.start(spec(&env, "hello")).await.unwrap();
    instance.stop().await.unwrap();
    drop(instance);
    assert!(run.is_dir());
    drop(env);
    assert!(!run.exists(), "{} left", run.display());
}
