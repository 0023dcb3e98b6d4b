//! Start, teardown and crash cleanup on the recording fake host: every step made is undone,
//! in the right order, whatever fails. (The same paths on the real machine — runc, overlayfs,
//! namespaces — are covered by `tests/instances.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_image::{ClientOptions, RegistryClient};

use crate::fake::{FakeHost, HostEvent};
use crate::{InstanceSpec, Node, NodeConfig, RootfsSource, StartError};

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
        isolation: Default::default(),
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
