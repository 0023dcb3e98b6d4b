//! `pronto serve` as a user runs it: the CLI drives it, `kill -9` does not leak, SIGTERM drains
//! and tears everything down.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, Daemon};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{httpd_image, Layer};
use pronto_testkit::registry::TestRegistry;

/// The host end of an instance's veth, from its recorded /30.
fn veth_of(data: &Path, id: &str) -> String {
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("node/instances").join(id).join("state.json")).unwrap(),
    )
    .unwrap();
    let network: std::net::Ipv4Addr = state["network"].as_str().unwrap().parse().unwrap();
    format!("pn{:08x}", u32::from(network))
}

/// The daemon's nftables table exists.
fn has_rules(data: &Path) -> bool {
    let run = pronto_runtime::layout::run_dir(&data.join("node").canonicalize().unwrap());
    let table = format!("pronto_{}", run.file_name().unwrap().to_string_lossy());
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&table)
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
    httpd_image(
        Layer::gzip()
            .dir("www")
            .file("www/index.html", "hi from busybox\n"),
    )
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
    let veth = veth_of(&data, &running[0]);
    assert!(Path::new("/sys/class/net").join(&veth).exists(), "{veth}");
    assert!(has_rules(&data), "the instances' network rules");
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
    assert!(
        !Path::new("/sys/class/net").join(&veth).exists(),
        "{veth} left"
    );
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
    assert!(!has_rules(&data), "the network rules go with the daemon");
    let out = daemon.cli(&["function", "get", "web"]);
    assert!(!out.status.success(), "the daemon is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach pronto serve"));
}

#[tokio::test]
async fn kill_9_with_a_lazy_instance_leaves_nothing_hung_or_mounted_after_restart() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/lazy:v1");
    httpd_image(Layer::gzip().file("www/index.html", "lazy busybox\n"))
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
    assert_eq!(
        pronto_lazyfs::mounts_under(&data.join("node/lazy"))
            .unwrap()
            .len(),
        1
    );

    let mut daemon = daemon;
    daemon.signal(libc::SIGKILL);
    let _ = daemon.child.wait();
    // The FUSE server is gone: the stale mount answers at once (ENOTCONN), it does not hang.
    let stale = pronto_lazyfs::mounts_under(&data.join("node/lazy")).unwrap();
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
        pronto_lazyfs::mounts_under(&data.join("node/lazy"))
            .unwrap()
            .is_empty(),
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

/// Prints `said QUERY` to stderr, answers `ok`.
const SAY: &str =
    "#!/bin/sh\necho \"said $QUERY_STRING\" >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n";

#[tokio::test]
async fn logs_carry_times_and_request_ids_and_follow_shows_a_line_within_a_second() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/talk:v1");
    httpd_image(
        Layer::gzip()
            .dir("www/cgi-bin")
            .file("www/cgi-bin/say", SAY)
            .mode(0o755),
    )
    .push(&client, &reference)
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let daemon = Daemon::start(&data);
    ok(daemon.cli(&[
        "function",
        "create",
        "talk",
        "--image",
        &reference.to_string(),
        "--acceleration-type",
        "None",
    ]));
    let (body, _) = ok(daemon.cli(&[
        "invoke",
        "talk",
        "--path",
        "/cgi-bin/say?first",
        "-H",
        "x-fc-request-id: cli-req-1",
    ]));
    assert_eq!(body, "ok");

    // The line the function printed while serving cli-req-1: time, instance, request id.
    let deadline = Instant::now() + Duration::from_secs(3);
    let line = loop {
        let (out, _) = ok(daemon.cli(&["logs", "talk", "--request-id", "cli-req-1"]));
        if let Some(l) = out.lines().find(|l| l.ends_with(" cli-req-1 said first")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no line for cli-req-1: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let stamp =
        time::OffsetDateTime::parse(fields[0], &time::format_description::well_known::Rfc3339)
            .unwrap();
    let age = time::OffsetDateTime::now_utc() - stamp;
    assert!(age < time::Duration::seconds(10), "{line}");
    let instance = fields[1].to_string();
    assert_eq!(instance_dirs(&data), std::slice::from_ref(&instance));
    // Filters: since, instance.
    let (out, _) = ok(daemon.cli(&["logs", "talk", "--since", "1m"]));
    assert!(out.contains("said first"), "{out}");
    let (out, _) = ok(daemon.cli(&["logs", "talk", "--since", "2099-01-01T00:00:00Z"]));
    assert_eq!(out, "");
    let (out, _) = ok(daemon.cli(&["logs", "talk", "--instance", "000000000000"]));
    assert_eq!(out, "");
    let (out, _) = ok(daemon.cli(&["logs", "talk", "--instance", &instance]));
    assert!(out.contains("said first"), "{out}");
    let bad = daemon.cli(&["logs", "talk", "--since", "yesterday"]);
    assert!(!bad.status.success());

    // --follow: each new line shows up within a second of the function printing it (it
    // printed before it answered, so the answer is the latest it could have printed).
    let mut follow = Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(["logs", "talk", "--follow", "--tail", "1"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--api", &format!("http://127.0.0.1:{}", daemon.control)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        first.ends_with("said first"),
        "the last line so far: {first}"
    );
    let http = reqwest::Client::new();
    let token = std::fs::read_to_string(data.join("api-token")).unwrap();
    for i in 0..3 {
        let r = http
            .get(format!(
                "http://127.0.0.1:{}/invoke/talk/cgi-bin/say?again-{i}",
                daemon.invoke
            ))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-fc-request-id"].to_str().unwrap().to_string();
        assert_eq!(r.text().await.unwrap(), "ok");
        let answered = Instant::now();
        let line = rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_else(|_| panic!("no line within a second of the answer to request {i}"));
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "{:?}",
            answered.elapsed()
        );
        assert!(line.ends_with(&format!(" {id} said again-{i}")), "{line}");
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    reader.join().unwrap();
}

#[tokio::test]
async fn daemon_logs_are_json_with_request_fields_or_text_without_colour_codes() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/logged:v1");
    httpd_image(Layer::gzip().file("www/index.html", "logged\n"))
        .push(&client, &reference)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let env = [("PRONTO_LOG", "info,pronto_server=debug,pronto=info")];

    // JSON: every line an object; the daemon's lines about a request carry its fields.
    let (data, log) = (work.path().join("json"), work.path().join("json.log"));
    let daemon = Daemon::start_with(
        &data,
        &["--log-format", "json"],
        &env,
        std::fs::File::create(&log).unwrap(),
    );
    ok(daemon.cli(&[
        "function",
        "create",
        "web",
        "--image",
        &reference.to_string(),
        "--acceleration-type",
        "None",
    ]));
    let (body, _) = ok(daemon.cli(&[
        "invoke",
        "web",
        "--path",
        "/index.html",
        "-H",
        "x-fc-request-id: json-req-1",
    ]));
    assert_eq!(body, "logged\n");
    drop(daemon); // SIGTERM, waited for: the log is complete
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["timestamp"].is_string() && l["level"].is_string()));
    let about = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["span"]["request_id"] == "json-req-1")
            .unwrap_or_else(|| panic!("no {message:?} line for json-req-1:\n{text}"))
    };
    let cold = about("cold start");
    let span = &cold["span"];
    assert_eq!(span["function"], "web");
    let instance = span["instance"].as_str().unwrap();
    assert_eq!(instance.len(), 12, "{cold}");
    assert!(
        span["image"].as_str().unwrap().starts_with("sha256:"),
        "{cold}"
    );
    assert!(
        cold["breakdown"].as_str().unwrap().starts_with("total="),
        "{cold}"
    );
    let started = about("instance started");
    assert_eq!(started["instance"], instance, "{started}");
    assert_eq!(started["function"], "web");
    assert_eq!(started["image"], span["image"]);
    assert_eq!(about("invoked")["status"], 200);
    assert!(lines
        .iter()
        .any(|l| l["message"] == "serving" && l["target"] == "pronto"));

    // Text to a file (not a terminal): no escape codes, the same fields as key=value.
    let (data, log) = (work.path().join("text"), work.path().join("text.log"));
    let daemon = Daemon::start_with(&data, &[], &env, std::fs::File::create(&log).unwrap());
    ok(daemon.cli(&[
        "function",
        "create",
        "web",
        "--image",
        &reference.to_string(),
        "--acceleration-type",
        "None",
    ]));
    ok(daemon.cli(&[
        "invoke",
        "web",
        "--path",
        "/index.html",
        "-H",
        "x-fc-request-id: text-req-1",
    ]));
    drop(daemon);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "escape codes in a file:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("request_id=text-req-1")
            && l.contains("function=web")
            && l.contains("cold start")),
        "{text}"
    );
}
