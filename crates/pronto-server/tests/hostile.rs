//! Functions that misbehave on purpose, against a real `pronto serve`, registry and runc: each
//! case is built in the test itself and must leave the node as bounded as promised.

mod common;

use std::time::Duration;

use common::Env;
use pronto_testkit::image::{httpd_image, Layer};
use reqwest::StatusCode;
use serde_json::json;

/// Writes 600 MB to /tmp, then says how dd ended and what df sees.
const FILL: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ndd if=/dev/zero of=/tmp/fill bs=1M count=600 2>/tmp/dd.err; echo \"rc=$?\"\ncat /tmp/dd.err\ndf -k / | tail -1\n";
/// Prints 40 MiB to stdout (the container's, not the response), then answers.
const SHOUT: &str = "#!/bin/sh\nyes 'a line the function prints over and over, to fill its log' | head -c 41943040 >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'\n";

fn quiet(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

async fn push(env: &Env) -> String {
    httpd_image(
        Layer::gzip()
            .dir("www/cgi-bin")
            .dir("tmp")
            .file("www/index.html", "ok\n")
            .file("www/cgi-bin/fill", FILL)
            .mode(0o755)
            .file("www/cgi-bin/shout", SHOUT)
            .mode(0o755),
    )
    .push(&env.client, &env.registry.reference("hostile/app:v1"))
    .await
    .unwrap();
    env.image("hostile/app:v1")
}

async fn get(env: &Env, function: &str, path: &str) -> (StatusCode, String) {
    let r = env
        .http
        .get(format!(
            "http://{}/invoke/{function}{path}",
            env.server().invoke_addr
        ))
        .bearer_auth(env.token())
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Bytes the files under `dir` take on the node's disk (allocated blocks, not lengths),
/// mounts below it (an instance's own disk, its rootfs) not counted.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).map_or(0, |m| m.dev());
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[tokio::test]
async fn a_function_that_fills_its_disk_gets_enospc_at_its_disk_size() {
    let env = Env::start_with(quiet).await;
    let image = push(&env).await;
    env.create("filler", &image, json!({"memorySize": 128}))
        .await;
    let (status, body) = get(&env, "filler", "/cgi-bin/fill").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !body.contains("rc=0"),
        "600 MB fit in a 512 MB disk: {body}"
    );
    assert!(body.contains("No space left on device"), "{body}");
    // df inside sees the function's disk, not the node's.
    let df_kb: u64 = body
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no df line: {body}"));
    assert!(
        (400 << 10..=512 << 10).contains(&df_kb),
        "df says {df_kb} KiB, diskSize 512 MB"
    );
    // The node holds at most the disk's size for it.
    let instances = env.data_dir().join("node/instances");
    let used = allocated(&instances);
    assert!(used <= 540 << 20, "{} MB on the node's disk", used >> 20);

    // A larger diskSize takes the 600 MB.
    env.create(
        "roomy",
        &image,
        json!({"memorySize": 128, "diskSize": 1024}),
    )
    .await;
    let (status, body) = get(&env, "roomy", "/cgi-bin/fill").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("rc=0"), "{body}");

    // Stopped: no loop device is left backed by a file of this server's.
    let data = env.data_dir();
    let mut env = env;
    env.server.take().unwrap().shutdown().await.unwrap();
    let backing: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| b.starts_with(data.to_str().unwrap()))
        .collect();
    assert!(backing.is_empty(), "loop devices left: {backing:?}");
}

#[tokio::test]
async fn a_function_that_floods_its_output_keeps_its_log_bounded() {
    let env = Env::start_with(quiet).await;
    let image = push(&env).await;
    env.create("shouter", &image, json!({"memorySize": 128}))
        .await;
    let (status, body) = get(&env, "shouter", "/cgi-bin/shout").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done\n"));
    // The pump may still be writing the last lines: wait for the file to stop growing.
    let logs = env.data_dir().join("node/logs/shouter");
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = allocated(&logs);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    // 40 MiB printed (plus stamps); an instance keeps at most 2 × 8 MiB.
    assert!(last > 8 << 20, "the log was rotated, not dropped: {last}");
    assert!(last <= 17 << 20, "{} MiB of logs", last >> 20);
    let names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".log.1")), "{names:?}");
}
