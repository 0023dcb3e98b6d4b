//! `pronto serve` as a user runs it: the CLI drives it, `kill -9` does not leak, SIGTERM drains
//! and tears everything down.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    child: Child,
    data: std::path::PathBuf,
    control: u16,
    invoke: u16,
}

impl Daemon {
    fn start(data: &Path) -> Daemon {
        let (control, invoke) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args([
                "serve",
                "--control-addr",
                &format!("127.0.0.1:{control}"),
                "--invoke-addr",
                &format!("127.0.0.1:{invoke}"),
            ])
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            data: data.to_owned(),
            control,
            invoke,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", control)).is_err() {
            assert!(Instant::now() < deadline, "pronto serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--api", &format!("http://127.0.0.1:{}", self.control)])
            .args(["--invoke-url", &format!("http://127.0.0.1:{}", self.invoke)])
            .output()
            .unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: our own child, not yet reaped: the pid cannot name another process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }
}

impl Drop for Daemon {
    /// A graceful stop (it tears its instances down), then a kill if that hangs.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(out: std::process::Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout: {o}\nstderr: {e}");
    (o, e)
}

fn instance_dirs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("node/instances"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn cli_drives_the_daemon_and_nothing_leaks_across_kill_and_stop() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/web:v1");
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .dir("www")
                .file("www/index.html", "hi from busybox\n"),
        )
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(&client, &reference)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut daemon = Daemon::start(&data);

    let spec = work.path().join("web.yaml");
    std::fs::write(
        &spec,
        format!(
            "functionName: web\ncustomContainerConfig:\n  image: {reference}\nmemorySize: 128\n"
        ),
    )
    .unwrap();
    let (out, _) = ok(daemon.cli(&["function", "create", "-f", spec.to_str().unwrap()]));
    assert!(out.contains("\"resolvedImageUri\""), "{out}");
    let (body, timing) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert_eq!(body, "hi from busybox\n");
    assert!(timing.contains("cold start"), "{timing}");
    let (_, timing) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert!(timing.contains("warm"), "{timing}");
    ok(daemon.cli(&["logs", "web"]));

    // kill -9 with an instance running: the next daemon cleans it up and still serves.
    let running = instance_dirs(&data);
    assert_eq!(running.len(), 1);
    daemon.signal(libc::SIGKILL);
    let _ = daemon.child.wait();
    assert!(
        Path::new(&format!("/run/netns/pronto-{}", running[0])).exists(),
        "left by the killed daemon"
    );
    drop(daemon);
    let daemon = Daemon::start(&data);
    assert!(
        instance_dirs(&data).is_empty(),
        "stale instance cleaned at start"
    );
    assert!(!Path::new(&format!("/run/netns/pronto-{}", running[0])).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&data.join("node/instances").display().to_string()));
    for cgroup in [
        format!("/sys/fs/cgroup/memory/pronto-{}", running[0]),
        format!("/sys/fs/cgroup/pronto-{}", running[0]),
    ] {
        assert!(!Path::new(&cgroup).exists(), "{cgroup} left");
    }
    let containers = Command::new("runc")
        .arg("--root")
        .arg(data.join("node/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&containers.stdout).trim(),
        "",
        "containers left"
    );
    let (body, _) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert_eq!(body, "hi from busybox\n");

    // SIGTERM: drains, tears down, exits 0.
    let now = instance_dirs(&data);
    assert_eq!(now.len(), 1);
    daemon.signal(libc::SIGTERM);
    let mut daemon = daemon;
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(instance_dirs(&data).is_empty());
    assert!(!Path::new(&format!("/run/netns/pronto-{}", now[0])).exists());
    let out = daemon.cli(&["function", "get", "web"]);
    assert!(!out.status.success(), "the daemon is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach pronto serve"));
}

#[tokio::test]
async fn kill_9_with_a_lazy_instance_leaves_nothing_hung_or_mounted_after_restart() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/lazy:v1");
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(Layer::gzip().file("www/index.html", "lazy busybox\n"))
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(&client, &reference)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let daemon = Daemon::start(&data);
    ok(daemon.cli(&[
        "function",
        "create",
        "lazyweb",
        "--image",
        &reference.to_string(),
    ]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (out, _) = ok(daemon.cli(&["function", "get", "lazyweb"]));
        if out.contains("\"Ready\"") {
            break;
        }
        assert!(!out.contains("\"Failed\""), "{out}");
        assert!(Instant::now() < deadline, "never Ready: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (body, timing) = ok(daemon.cli(&["invoke", "lazyweb", "--path", "/index.html"]));
    assert_eq!(body, "lazy busybox\n");
    assert!(timing.contains("rootfs=lazy"), "{timing}");
    assert_eq!(pronto_lazyfs::mounts_under(&data).unwrap().len(), 1);

    let mut daemon = daemon;
    daemon.signal(libc::SIGKILL);
    let _ = daemon.child.wait();
    // The FUSE server is gone: the stale mount answers at once (ENOTCONN), it does not hang.
    let stale = pronto_lazyfs::mounts_under(&data).unwrap();
    assert_eq!(stale.len(), 1, "left by the killed daemon");
    let t = Instant::now();
    let probe = Command::new("timeout")
        .args(["10", "ls"])
        .arg(&stale[0])
        .output()
        .unwrap();
    assert!(!probe.status.success());
    assert_ne!(probe.status.code(), Some(124), "ls hung on the stale mount");
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(daemon);

    let daemon = Daemon::start(&data);
    assert!(
        pronto_lazyfs::mounts_under(&data).unwrap().is_empty(),
        "stale mount detached"
    );
    assert_eq!(
        std::fs::read_dir(data.join("node/lazy")).unwrap().count(),
        0,
        "stale mount point removed"
    );
    assert!(instance_dirs(&data).is_empty());
    let (body, timing) = ok(daemon.cli(&["invoke", "lazyweb", "--path", "/index.html"]));
    assert_eq!(body, "lazy busybox\n");
    assert!(timing.contains("rootfs=lazy"), "{timing}");
}
