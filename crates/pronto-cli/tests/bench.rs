//! `pronto bench coldstart` as an installed binary runs it: from a directory outside the source
//! tree, with the bench scripts it carries (`--dry-run`: no root, network or build needed); and
//! `pronto bench load` against a server in the test.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `pronto bench coldstart ARGS` in `cwd`, with TMPDIR (where it unpacks its scripts) and
/// the layer cache it reports on under `root`.
fn coldstart(root: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(["bench", "coldstart"])
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", root.join("tmp"))
        .env("PRONTO_BENCH_CACHE", root.join("cache"))
        .env_remove("PRONTO_SOURCE")
        .env_remove("PRONTO_BIN")
        .env_remove("PRONTO_MKIMAGE")
        .output()
        .expect("running pronto")
}

fn dirs() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    assert!(
        !root.path().starts_with(&source),
        "{} is inside the source tree",
        root.path().display()
    );
    let cwd = root.path().join("somewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    (root, cwd)
}

fn leftovers(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn coldstart_dry_run_outside_the_source_tree() {
    let (root, cwd) = dirs();
    let out = coldstart(
        root.path(),
        &cwd,
        &[
            "--dry-run",
            "--workloads",
            "python-small,python-ml",
            "--runs",
            "2",
            "--link",
            "100mbit,20ms",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // run.sh parsed the flags...
    assert!(
        stdout.contains("\nworkloads: python-small python-ml\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\nlink: 100mbit, 20ms RTT\n"), "{stdout}");
    assert!(stdout.contains("\nruns: 2\n"), "{stdout}");
    // ...found this binary, and puts the report beside the caller
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_pronto")).unwrap();
    assert!(
        stdout.contains(&format!("\npronto: {}\n", exe.display())),
        "{stdout}"
    );
    let report = format!("\nreport: {}/bench-results/", cwd.display());
    assert!(stdout.contains(&report), "{stdout}");

    // build.sh and the apps came along: the steps it lists, whose hashes cover the apps' files,
    // are the source tree's
    let layers = |s: &str| s[s.find("layers (").expect("a layers section")..].to_owned();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let in_tree = Command::new("bash")
        .arg(source.join("bench/coldstart/run.sh"))
        .args(["--dry-run", "--workloads", "python-small,python-ml"])
        .env("PRONTO_BENCH_CACHE", root.path().join("cache"))
        .output()
        .unwrap();
    assert!(in_tree.status.success());
    let in_tree = String::from_utf8_lossy(&in_tree.stdout);
    assert_eq!(layers(&stdout), layers(&in_tree));
    assert!(stdout.contains("  python-small: slimpy-"), "{stdout}");
    assert!(stdout.contains(" smallapp-"), "{stdout}");

    // the scripts were unpacked under TMPDIR, and removed
    let scripts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("scripts: "))
        .expect("a scripts line");
    assert!(
        Path::new(scripts).starts_with(root.path().join("tmp")),
        "{scripts}"
    );
    assert_eq!(leftovers(root.path()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn coldstart_usage_error_fails_and_cleans_up() {
    let (root, cwd) = dirs();
    let out = coldstart(root.path(), &cwd, &["--dry-run", "--modes", "accel,warm"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mode 'accel' needs 'accel-first'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bench/coldstart/run.sh failed (exit status: 2)"),
        "{stderr}"
    );
    assert_eq!(leftovers(root.path()), Vec::<std::path::PathBuf>::new());
}

/// Serves `GET /` on a free loopback port from a thread of its own (the test itself runs the
/// binary and blocks): every 5th request gets 503, the others 200 with `x-pronto-version: 7`,
/// the first also `x-pronto-cold-start`.
fn load_server() -> String {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::{AtomicU64, Ordering};
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut headers = HeaderMap::new();
                if n.is_multiple_of(5) {
                    return (StatusCode::SERVICE_UNAVAILABLE, headers);
                }
                headers.insert("x-pronto-version", "7".parse().unwrap());
                if n == 1 {
                    headers.insert("x-pronto-cold-start", "total=5".parse().unwrap());
                }
                (StatusCode::OK, headers)
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // the thread ends with the test process
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/")
}

fn bench_load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(["bench", "load"])
        .args(args)
        .output()
        .expect("running pronto")
}

#[test]
fn bench_load_json_report_and_exit_status() {
    let url = load_server();
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("samples.tsv");
    let argv = [
        url.as_str(),
        "--requests",
        "20",
        "--concurrency",
        "3",
        "--record-header",
        "x-pronto-version",
        "--json",
        "--out",
        tsv.to_str().unwrap(),
    ];
    let out = bench_load(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "failures alone do not fail it: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["url"], url);
    assert_eq!(v["concurrency"], 3);
    assert_eq!(v["requests"], 20);
    assert_eq!(v["ok"], 16);
    assert_eq!(v["failed"], 4);
    assert_eq!(v["statuses"], serde_json::json!({"200": 16, "503": 4}));
    assert_eq!(v["errors"], serde_json::json!({}));
    assert_eq!(v["coldStarts"], 1);
    assert!(v["durationSeconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["throughput"].as_f64().unwrap() > 0.0, "{v}");
    let latency = &v["latencyMs"];
    for p in ["min", "p50", "p90", "p99", "max"] {
        assert!(latency[p].as_f64().is_some(), "{p}: {v}");
    }
    assert!(latency["min"].as_f64() <= latency["max"].as_f64(), "{v}");
    assert_eq!(
        v["recordHeader"],
        serde_json::json!({"name": "x-pronto-version", "values": {"7": 16}, "missing": 4})
    );
    assert!(v.get("rate").is_none(), "closed loop: {v}");
    let samples = std::fs::read_to_string(&tsv).unwrap();
    assert_eq!(samples.lines().count(), 21, "{samples}");

    // the end-to-end tests' way: any failure fails the command, after the report
    let out = bench_load(&[&url, "-n", "10", "--fail-on-error"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("requests:    10 (ok 8, failed 2)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("error: 2 of 10 requests failed"),
        "{stderr}"
    );
}
