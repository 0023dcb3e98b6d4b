//! The `pronto image` commands, run as a user would run them.

use std::process::Command;

use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

fn pronto(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(args)
        .env("HOME", "/nonexistent") // no credentials file
        .output()
        .expect("running pronto")
}

#[tokio::test]
async fn inspect_and_unpack() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/app:v1");
    let pushed = ImageBuilder::new()
        .layer(Layer::gzip().file("hello.txt", b"hello\n").dir("var/empty"))
        .layer(Layer::zstd().whiteout("var/empty"))
        .entrypoint(&["/bin/app", "--port", "9000"])
        .env("A=1")
        .push(&client, &reference)
        .await
        .unwrap();
    let r = reference.to_string();

    let out = pronto(&["image", "inspect", &r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], pushed.digest.to_string());
    assert_eq!(
        v["pinned"],
        format!("{}/cli/app@{}", registry.host(), pushed.digest)
    );
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        v["config"]["config"]["Entrypoint"],
        serde_json::json!(["/bin/app", "--port", "9000"])
    );

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("root");
    let pinned = format!("{}/cli/app@{}", registry.host(), pushed.digest);
    let out = pronto(&["image", "unpack", &pinned, dir.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["layers"], 2);
    assert_eq!(summary["whiteouts"], 1);
    assert_eq!(summary["fileBytes"], 6);
    assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hello\n");
    assert!(!dir.join("var/empty").exists());
}

#[test]
fn errors_are_one_clear_line_and_a_failure_exit() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("root");
    let r = registry.reference("cli/missing:v1").to_string();
    let out = pronto(&["image", "unpack", &r, dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("error: resolving {r}: manifest not found: {r}")
    );
    assert!(!dir.exists());

    let out = pronto(&["image", "inspect", "Not A Ref"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("error: invalid image reference \"Not A Ref\": "));
}

#[tokio::test]
async fn convert_then_mount_reads_lazily_and_ctrl_c_unmounts() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/lazy:v1");
    let big = pronto_testkit::fixtures::noise(8 << 20, 5);
    ImageBuilder::new()
        .layer(
            Layer::gzip()
                .file("small.txt", b"small\n")
                .file("big.bin", &big),
        )
        .push(&client, &reference)
        .await
        .unwrap();
    let r = reference.to_string();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    let memo = format!("{w}/memo.db");
    let out = pronto(&["image", "convert", &r, "--work-dir", w, "--memo", &memo]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let trace = work.path().join("trace.bin");
    let spawn_mount = |cache: &str, extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args(["image", "mount", &r])
            .arg(&dir)
            .arg("--cache-dir")
            .arg(work.path().join(cache))
            .arg("--json")
            .args(extra)
            .env("HOME", "/nonexistent")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn_mount("cache", &["--save-trace".as_ref(), trace.as_os_str()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dir.join("small.txt").exists() {
        assert!(std::time::Instant::now() < deadline, "not mounted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let d = dir.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(d.join("small.txt")).unwrap())
        .await
        .unwrap();
    assert_eq!(read, b"small\n");

    // SAFETY: our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status}");
    let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // One small file read: one chunk fetched, not the 8 MiB file.
    assert_eq!(stats["fetchedChunks"], 1, "{stats}");
    assert!(stats["fetchedBytes"].as_u64().unwrap() < 1 << 20, "{stats}");
    assert!(
        pronto_lazyfs::mounts_under(&dir).unwrap().is_empty(),
        "unmounted"
    );
    assert!(!dir.join("small.txt").exists());
    // The trace names the one chunk read; a mount with an empty cache prefetches it.
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), 32);
    let mut child = spawn_mount("cache2", &["--prefetch".as_ref(), trace.as_os_str()]);
    let cached = |dir: &std::path::Path| -> usize {
        std::fs::read_dir(dir)
            .map(|shards| {
                shards
                    .flatten()
                    .filter_map(|s| std::fs::read_dir(s.path()).ok())
                    .map(|f| f.count())
                    .sum()
            })
            .unwrap_or(0)
    };
    while cached(&work.path().join("cache2")) == 0 {
        assert!(std::time::Instant::now() < deadline, "not prefetched");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    assert!(child.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stats["prefetchedChunks"], 1, "{stats}");
    assert_eq!(stats["fetchedChunks"], 1, "{stats}");
    let bad = work.path().join("bad.bin");
    std::fs::write(&bad, [0u8; 33]).unwrap();
    let out = pronto(&[
        "image",
        "mount",
        &r,
        "/nonexistent",
        "--prefetch",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a whole number of 32-byte chunk digests"),
        "{err}"
    );
}

/// SIGTERM or SIGINT in the middle of `pronto image unpack`: it stops, removes its staging and
/// download directories, and exits as the signal would have (143, 130).
#[tokio::test]
async fn unpack_cleans_up_on_sigterm_and_sigint() {
    use pronto_testkit::fixtures::noise;
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/big:v1");
    // Big enough that the unpack takes a good part of a second.
    let mut image = ImageBuilder::new();
    for seed in 0..3 {
        image = image.layer(Layer::plain().file(format!("blob{seed}"), noise(48 << 20, seed)));
    }
    image.push(&client, &reference).await.unwrap();
    for (signal, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("root");
        let child = Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args([
                "image",
                "unpack",
                &reference.to_string(),
                dir.to_str().unwrap(),
            ])
            .env("HOME", "/nonexistent")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Signal as soon as the unpack has begun.
        let started = std::time::Instant::now();
        loop {
            let begun = std::fs::read_dir(work.path()).unwrap().flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".root.partial-")
            });
            if begun {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the unpack never began"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "signal {signal}: {stderr}");
        let name = if signal == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        };
        assert!(
            stderr.contains(&format!(
                "pronto: {name}: unpack into {} stopped, temporary files removed",
                dir.display()
            )),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind after {name}: {left:?}");
    }
}

/// An image converted into another repository (as for a source you cannot push to): `verify`
/// with that repository rebuilds the image from it and matches a plain unpack; without it the
/// artifact is not found, and the message says where it looked.
#[tokio::test]
async fn convert_into_an_artifact_repository_then_verify_from_it() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/source:v1");
    ImageBuilder::new()
        .layer(
            Layer::gzip()
                .file("etc/app.conf", b"conf\n")
                .file("data.bin", pronto_testkit::fixtures::noise(300 << 10, 9)),
        )
        .push(&client, &reference)
        .await
        .unwrap();
    let (r, artifacts) = (
        reference.to_string(),
        format!("{}/cli/artifacts", registry.host()),
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(pronto(&[
        "image",
        "convert",
        &r,
        "--artifact-repository",
        &artifacts,
        "--work-dir",
        w,
    ]));
    let verified = ok(pronto(&[
        "image",
        "verify",
        &r,
        "--artifact-repository",
        &artifacts,
        "--work-dir",
        w,
    ]));
    assert!(verified.starts_with("ok: "), "{verified}");
    let beside = pronto(&["image", "verify", &r, "--work-dir", w]);
    assert!(!beside.status.success(), "no artifact beside the image");
    let err = String::from_utf8_lossy(&beside.stderr);
    assert!(err.contains("cli/source"), "{err}");
}
