//! `pronto deploy -f`, the CLI's output as a person sees it (on a terminal, through a pty, and
//! piped), its error messages, and `pronto function explain` on a real accelerated cold start:
//! a real registry, images built in-process, a real `pronto serve`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, Daemon};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{httpd_image, Layer};
use pronto_testkit::registry::TestRegistry;
use serde_json::Value;

fn json_of(out: std::process::Output) -> Value {
    let (stdout, _) = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The command failed; its stderr.
fn refused(out: std::process::Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stderr.into_owned()
}

/// `pronto ARGS` pointed at `daemon`, run on a terminal (a pty made by `script`): what the
/// terminal showed, `\r\n` made `\n`.
fn on_terminal(daemon: &Daemon, args: &[&str], env: &[(&str, &str)]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = vec![quote(env!("CARGO_BIN_EXE_pronto"))];
    line.extend(args.iter().map(|a| quote(a)));
    line.extend(
        [
            "--data-dir",
            daemon.data.to_str().unwrap(),
            "--api",
            &format!("http://127.0.0.1:{}", daemon.control),
            "--invoke-url",
            &format!("http://127.0.0.1:{}", daemon.invoke),
        ]
        .iter()
        .map(|a| quote(a)),
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &line.join(" "), "/dev/null"])
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .expect("running script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(out.status.success(), "{shown}");
    shown
}

async fn push_web(client: &RegistryClient, registry: &TestRegistry, tag: &str) -> String {
    let reference = registry.reference(tag);
    httpd_image(Layer::gzip().file("www/index.html", format!("{tag}\n")))
        .push(client, &reference)
        .await
        .unwrap();
    reference.to_string()
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn modified(daemon: &Daemon, name: &str) -> Value {
    json_of(daemon.cli(&["function", "get", name, "-o", "json"]))["lastModifiedTime"].clone()
}

#[tokio::test]
async fn deploy_twice_changes_nothing_and_an_edit_changes_only_what_changed() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let v1 = push_web(&client, &registry, "deploy/web:v1").await;
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&work.path().join("data"));

    let spec = format!(
        "functions:\n  - functionName: web\n    customContainerConfig:\n      image: {v1}\n    memorySize: 128\n    environmentVariables:\n      GREETING: hi\n  - functionName: api\n    customContainerConfig:\n      image: {v1}\n      accelerationType: None\n    memorySize: 256\n"
    );
    let file = write(&work.path().join("fns.yaml"), &spec);

    // First run: both created; --wait follows the conversion to Ready (plain lines: no tty).
    let (out, err) = ok(daemon.cli(&["deploy", "-f", &file, "--wait", "-o", "table"]));
    assert_eq!(out, "web: created\napi: created\n");
    assert!(err.contains("web: converting the image"), "{err}");
    assert!(err.contains("web: Ready: "), "{err}");
    assert!(err.contains("api: serving (no acceleration"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "no escape codes when not on a terminal: {err:?}"
    );
    let before = (modified(&daemon, "web"), modified(&daemon, "api"));

    // Second run on the same file: nothing sent, and it says so.
    let (out, _) = ok(daemon.cli(&["deploy", "-f", &file, "-o", "table"]));
    assert_eq!(
        out,
        "web: unchanged (nothing to do)\napi: unchanged (nothing to do)\n"
    );
    assert_eq!((modified(&daemon, "web"), modified(&daemon, "api")), before);
    // `function create -f` of the same function is refused (409); deploy is the idempotent way.
    let single = write(
        &work.path().join("web.yaml"),
        &format!("functionName: web\ncustomContainerConfig:\n  image: {v1}\nmemorySize: 128\nenvironmentVariables:\n  GREETING: hi\n"),
    );
    assert!(refused(daemon.cli(&["function", "create", "-f", &single])).contains("409"));
    let (out, _) = ok(daemon.cli(&["deploy", "-f", &single, "-o", "table"]));
    assert_eq!(out, "web: unchanged (nothing to do)\n");

    // An edit: only web's memory and environment change; api is not touched.
    let edited = spec
        .replacen("memorySize: 128", "memorySize: 192", 1)
        .replace("GREETING: hi", "GREETING: hello");
    let edited_file = write(&work.path().join("fns.yaml"), &edited);
    let (out, _) = ok(daemon.cli(&["deploy", "-f", &edited_file, "-o", "table"]));
    assert_eq!(
        out,
        "web: updated\n  environmentVariables: {\"GREETING\":\"hi\"} -> {\"GREETING\":\"hello\"}\n  memorySize: 128 -> 192\napi: unchanged (nothing to do)\n"
    );
    let web = json_of(daemon.cli(&["function", "get", "web", "-o", "json"]));
    assert_eq!(web["memorySize"], 192);
    assert_eq!(web["environmentVariables"]["GREETING"], "hello");
    assert_eq!(
        web["accelerationInfo"]["status"], "Ready",
        "the image did not change"
    );
    assert_eq!(modified(&daemon, "api"), before.1);

    // JSON for programs: the same answer, structured.
    let report = json_of(daemon.cli(&["deploy", "-f", &edited_file, "-o", "json"]));
    assert_eq!(report["functions"][0]["functionName"], "web");
    assert_eq!(report["functions"][0]["action"], "unchanged");
    assert_eq!(report["functions"][1]["action"], "unchanged");

    // A Serverless Devs s.yaml (fc3) for the same function: its fields compared the same way.
    let s_yaml = format!(
        "edition: 3.0.0\nname: app\naccess: default\nvars:\n  region: cn-hangzhou\nresources:\n  web:\n    component: fc3\n    props:\n      region: ${{vars.region}}\n      functionName: web\n      runtime: custom-container\n      customContainerConfig:\n        image: {v1}\n      memorySize: 192\n      environmentVariables:\n        GREETING: hello\n      timeout: 30\n      triggers:\n        - triggerName: httpTrigger\n          triggerType: http\n          triggerConfig:\n            authType: anonymous\n            methods: [GET]\n"
    );
    let s_file = write(&work.path().join("s.yaml"), &s_yaml);
    let (out, err) = ok(daemon.cli(&["deploy", "-f", &s_file, "-o", "table"]));
    assert_eq!(out, "web: updated\n  timeout: 60 -> 30\n");
    assert!(err.contains("note: web: region ignored"), "{err}");
    assert!(err.contains("note: web: http triggers ignored"), "{err}");

    // --dry-run tells and changes nothing.
    let (out, _) = ok(daemon.cli(&["deploy", "-f", &edited_file, "--dry-run", "-o", "table"]));
    assert_eq!(
        out,
        "web: would be updated\n  timeout: 30 -> 60\napi: unchanged (nothing to do)\n"
    );
    assert_eq!(
        json_of(daemon.cli(&["function", "get", "web", "-o", "json"]))["timeout"],
        30
    );
}

#[tokio::test]
async fn errors_point_at_the_file_and_name_what_is_wrong() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let v1 = push_web(&client, &registry, "deploy/err:v1").await;
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&work.path().join("data"));
    let file = |text: &str| write(&work.path().join("fn.yaml"), text);

    // Invalid YAML: where the parser stopped.
    let f = file("functionName: web\ncustomContainerConfig:\n  image: [a, b\nmemorySize: 128\n");
    let err = refused(daemon.cli(&["deploy", "-f", &f]));
    assert!(err.starts_with(&format!("error: {f}:4:")), "{err}");
    assert!(err.contains("while parsing a flow sequence"), "{err}");

    // An unknown field: named, at its key.
    let f = file(&format!(
        "functionName: web\ncustomContainerConfig:\n  image: {v1}\nmemSize: 128\n"
    ));
    let err = refused(daemon.cli(&["deploy", "-f", &f]));
    assert!(
        err.starts_with(&format!(
            "error: {f}:4:1: memSize: unknown field `memSize`, expected one of"
        )),
        "{err}"
    );

    // A value out of range: at the value.
    let f = file(&format!(
        "functionName: web\ncustomContainerConfig:\n  image: {v1}\n  port: 70000\n"
    ));
    let err = refused(daemon.cli(&["deploy", "-f", &f]));
    assert_eq!(
        err,
        format!(
            "error: {f}:4:9: customContainerConfig.port: must be between 1 and 65535, got 70000\n"
        )
    );

    // An image that does not exist: the server's refusal, placed at the image.
    let missing = registry.reference("deploy/nothing:v9").to_string();
    let f = file(&format!(
        "functionName: web\ncustomContainerConfig:\n  image: {missing}\n"
    ));
    let err = refused(daemon.cli(&["deploy", "-f", &f]));
    assert!(
        err.starts_with(&format!(
            "error: deploying web: {f}:3:10: customContainerConfig.image: "
        )),
        "{err}"
    );
    assert!(err.contains("deploy/nothing"), "{err}");
    assert!(
        refused(daemon.cli(&["function", "get", "web"])).contains("FunctionNotFound")
            || refused(daemon.cli(&["function", "get", "web"])).contains("not found")
    );

    // A missing file.
    let err = refused(daemon.cli(&["deploy", "-f", "/nonexistent/fn.yaml"]));
    assert!(
        err.contains("/nonexistent/fn.yaml: cannot read it"),
        "{err}"
    );

    // A daemon that is not there.
    let f = file(&format!(
        "functionName: web\ncustomContainerConfig:\n  image: {v1}\n"
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args([
            "deploy",
            "-f",
            &f,
            "--token",
            "t",
            "--api",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = refused(out);
    assert!(
        err.contains("cannot reach pronto serve at http://127.0.0.1:1"),
        "{err}"
    );

    // A token the daemon does not know.
    let out = Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(["function", "list", "--token", "not-the-token"])
        .args(["--api", &format!("http://127.0.0.1:{}", daemon.control)])
        .output()
        .unwrap();
    let err = refused(out);
    assert!(err.contains("401 Unauthorized"), "{err}");
    assert!(err.contains("the API token was refused"), "{err}");
}

#[tokio::test]
async fn output_for_people_on_a_terminal_and_for_programs_in_a_pipe() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let v1 = push_web(&client, &registry, "deploy/tty:v1").await;
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&work.path().join("data"));
    let f = write(
        &work.path().join("fn.yaml"),
        &format!("functionName: web\ncustomContainerConfig:\n  image: {v1}\nmemorySize: 128\n"),
    );
    ok(daemon.cli(&["deploy", "-f", &f, "--wait"]));

    // On a terminal: a table, the status in colour.
    let shown = on_terminal(&daemon, &["function", "list"], &[]);
    let mut lines = shown.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("IMAGE") && header.contains("ACCELERATION"),
        "{shown}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("web ") && row.contains(&v1), "{shown}");
    assert!(row.contains("\x1b[32mReady\x1b[0m"), "{shown:?}");
    // NO_COLOR: the same table, no escape codes.
    let plain = on_terminal(&daemon, &["function", "list"], &[("NO_COLOR", "1")]);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(plain.contains("Ready"), "{plain}");
    // One function: its fields, most useful first.
    let shown = on_terminal(&daemon, &["function", "get", "web"], &[("NO_COLOR", "1")]);
    assert!(shown.starts_with("functionName "), "{shown}");
    assert!(shown.contains("\nmemorySize "), "{shown}");
    // Deploy on a terminal: the same words.
    let shown = on_terminal(&daemon, &["deploy", "-f", &f], &[("NO_COLOR", "1")]);
    assert_eq!(shown, "web: unchanged (nothing to do)\n");

    // Piped: JSON as the API returns it (and YAML on request).
    let list = json_of(daemon.cli(&["function", "list"]));
    assert_eq!(list["functions"][0]["functionName"], "web");
    let (yaml, _) = ok(daemon.cli(&["function", "get", "web", "-o", "yaml"]));
    let yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(yaml["memorySize"], 128);

    // Versions and aliases as tables.
    ok(daemon.cli(&["version", "publish", "web", "--description", "first"]));
    ok(daemon.cli(&["alias", "create", "web", "prod", "--version", "1"]));
    let shown = on_terminal(&daemon, &["version", "list", "web"], &[("NO_COLOR", "1")]);
    assert!(shown.starts_with("VERSION  IMAGE"), "{shown}");
    assert!(shown.lines().nth(1).unwrap().starts_with("1 "), "{shown}");
    let shown = on_terminal(&daemon, &["alias", "list", "web"], &[("NO_COLOR", "1")]);
    assert!(shown.starts_with("ALIAS"), "{shown}");
    assert!(shown.contains("prod "), "{shown}");

    // invoke: cold, warm, and Pronto's own errors called errors, not "warm".
    let (_, label) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert!(
        label.starts_with("[200 OK] version LATEST, cold start in "),
        "{label}"
    );
    let (_, label) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert!(
        label.starts_with("[200 OK] version LATEST, warm, "),
        "{label}"
    );
    let label = refused(daemon.cli(&["invoke", "nope"]));
    assert!(
        label.starts_with("[404 Not Found] error from pronto, "),
        "{label}"
    );
    assert!(label.contains("FunctionNotFound"), "{label}");
    let (_, label) = {
        let out = daemon.cli(&["invoke", "web", "--path", "/missing.html"]);
        (String::new(), refused(out))
    };
    assert!(
        label.starts_with("[404 Not Found] version LATEST, warm, "),
        "the function's own 404: {label}"
    );

    // JSON keys are camelCase everywhere, the image summaries included.
    let dir = work.path().join("root");
    let (out, _) = ok(daemon.cli(&["image", "unpack", &v1, dir.to_str().unwrap(), "--json"]));
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert!(summary.get("fileBytes").is_some(), "{summary}");
    assert!(summary.get("file_bytes").is_none(), "{summary}");
}

/// Bytes that do not compress (so the blob's chunks are as large stored as read).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn explain_accounts_for_what_a_real_cold_start_read() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("deploy/explain:v1");
    let page = "explained\n";
    // busybox + the page the start reads + a layer of data it never reads.
    let blob = noise(3 << 20, 7);
    let small = noise(5000, 9);
    let pushed = httpd_image(Layer::gzip().file("www/index.html", page))
        .layer(
            Layer::gzip()
                .dir("data")
                .file("data/blob.bin", &blob)
                .file("data/small.bin", &small),
        )
        .push(&client, &reference)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&work.path().join("data"));
    let f = write(
        &work.path().join("fn.yaml"),
        &format!(
            "functionName: web\ncustomContainerConfig:\n  image: {reference}\nmemorySize: 128\n"
        ),
    );
    ok(daemon.cli(&["deploy", "-f", &f, "--wait"]));
    let err = refused(daemon.cli(&["function", "explain", "web"]));
    assert!(err.contains("no access trace yet"), "{err}");
    let (body, _) = ok(daemon.cli(&["invoke", "web", "--path", "/index.html"]));
    assert_eq!(body, page);
    let deadline = Instant::now() + Duration::from_secs(30);
    let chunks = loop {
        let f = json_of(daemon.cli(&["function", "get", "web", "-o", "json"]));
        if let Some(n) = f["accessTrace"]["chunks"].as_u64() {
            break n;
        }
        assert!(Instant::now() < deadline, "no trace recorded: {f}");
        std::thread::sleep(Duration::from_millis(100));
    };

    let e = json_of(daemon.cli(&[
        "function",
        "explain",
        "web",
        "--link",
        "1gbit,2ms",
        "-o",
        "json",
    ]));
    assert_eq!(e["traceChunks"], chunks);
    assert_eq!(e["unknownChunks"], 0);

    // The image's files, counted independently: a plain unpack of the same image.
    let root = work.path().join("root");
    pronto_image::pull::unpack_image(
        &client,
        &pronto_image::pull::resolve(&client, &reference)
            .await
            .unwrap(),
        &root,
        std::sync::Arc::new(pronto_image::pull::NoProgress),
    )
    .await
    .unwrap();
    let mut sizes = BTreeMap::new();
    let mut inodes = std::collections::HashSet::new();
    for entry in walk(&root) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        use std::os::unix::fs::MetadataExt;
        if meta.is_file() && inodes.insert(meta.ino()) {
            let rel = entry
                .strip_prefix(&root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            sizes.insert(rel, meta.len());
        }
    }
    assert_eq!(e["imageFiles"], sizes.len() as u64);
    assert_eq!(e["imageFileBytes"], sizes.values().sum::<u64>());

    // What was read: busybox (the server) and the page, in that order; never the data.
    let read: Vec<&str> = e["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let pos = |p: &str| read.iter().position(|r| *r == p);
    assert!(pos("bin/busybox").is_some(), "{read:?}");
    assert!(pos("www/index.html").is_some(), "{read:?}");
    assert!(pos("bin/busybox") < pos("www/index.html"), "{read:?}");
    assert!(pos("data/blob.bin").is_none() && pos("data/small.bin").is_none());
    let index = &e["read"][pos("www/index.html").unwrap()];
    assert_eq!(index["bytesRead"], page.len() as u64);
    assert_eq!(index["size"], page.len() as u64);
    // Bytes read: the sum over the files read, each at most its size; the rest untouched.
    let read_bytes: u64 = e["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["bytesRead"].as_u64().unwrap())
        .sum();
    assert_eq!(e["bytesRead"], read_bytes);
    let total = sizes.values().sum::<u64>() as f64;
    let share = e["untouchedShare"].as_f64().unwrap();
    assert!(
        (share - (1.0 - read_bytes as f64 / total)).abs() < 1e-9,
        "{share}"
    );
    assert!(
        share >= (blob.len() + small.len()) as f64 / total,
        "{share}"
    );
    // The largest untouched file is the blob, at its size.
    assert_eq!(e["largestUntouched"][0]["path"], "data/blob.bin");
    assert_eq!(e["largestUntouched"][0]["size"], blob.len() as u64);
    assert_eq!(e["largestUntouched"][1]["path"], "data/small.bin");

    // Layers: the data layer is wholly untouched, and sized as the registry has it.
    let layers = e["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    let data_layer = &pushed.manifest.layers[2];
    assert_eq!(layers[0]["digest"], data_layer.digest.to_string());
    assert_eq!(layers[0]["compressedSize"], data_layer.size);
    assert_eq!(layers[0]["files"], 2);
    assert_eq!(layers[0]["fileBytes"], (blob.len() + small.len()) as u64);
    assert_eq!(layers[0]["bytesRead"], 0);

    // The model: a full pull moves every layer; the accelerated path what was read.
    let p = &e["prediction"];
    let layer_bytes: u64 = pushed.manifest.layers.iter().map(|l| l.size).sum();
    let full_bytes = p["full"]["bytes"].as_u64().unwrap();
    assert!(full_bytes > layer_bytes && full_bytes < layer_bytes + 10_000);
    let full_trips = p["full"]["roundTrips"].as_u64().unwrap();
    assert_eq!(full_trips, 4);
    let want = full_bytes as f64 * 8.0 / 1e9 + full_trips as f64 * 0.002;
    assert!((p["full"]["seconds"].as_f64().unwrap() - want).abs() < 1e-9);
    let accelerated = p["accelerated"]["bytes"].as_u64().unwrap();
    let fetched = e["bytesFetched"].as_u64().unwrap();
    assert!(accelerated > fetched && accelerated < full_bytes, "{p}");
    assert!(p["model"]
        .as_str()
        .unwrap()
        .contains("bytes / bandwidth + round trips x RTT"));

    // For people: the same facts in words.
    let (text, _) = ok(daemon.cli(&["function", "explain", "web", "-o", "table"]));
    assert!(text.contains("largest untouched files:\nFILE"), "{text}");
    assert!(text.contains("data/blob.bin"), "{text}");
    assert!(text.contains("full pull"), "{text}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
