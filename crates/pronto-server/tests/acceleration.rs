//! Acceleration jobs: `Preparing` → `Ready` (the artifact verifies against the image) or
//! `Failed` with the reason; jobs survive a restart; an update supersedes a running job.

mod common;

use std::time::Duration;

use common::{metric, Env, FUNCTIONS};
use pronto_image::pull;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn accel(env: &Env, name: &str) -> Value {
    let r = env
        .call(Method::GET, &format!("{FUNCTIONS}/{name}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["accelerationInfo"].clone()
}

async fn wait_status(env: &Env, name: &str, want: &str) -> Value {
    for _ in 0..200 {
        let a = accel(env, name).await;
        if a["status"] == want {
            return a;
        }
        assert!(a["status"] == "Preparing", "{name}: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want}");
}

#[tokio::test]
async fn preparing_then_ready_and_the_artifact_verifies() {
    let env = Env::start().await;
    env.push("app:v1", &vec![7u8; 3 << 20]).await;
    let created = env.create("fast", &env.image("app:v1"), json!({})).await;
    assert_eq!(created["accelerationInfo"]["status"], "Preparing");
    let ready = wait_status(&env, "fast", "Ready").await;
    assert!(
        ready["artifactDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{ready}"
    );
    assert!(ready["indexSize"].as_u64().unwrap() > 0);

    // Ground truth: the artifact rebuilds the image exactly.
    let image = pull::resolve(&env.client, &env.registry.reference("app:v1"))
        .await
        .unwrap();
    assert!(ready["artifact"]
        .as_str()
        .unwrap()
        .ends_with(&format!("sha256-{}.pronto", image.manifest_digest.hex())));
    let work = tempfile::tempdir().unwrap();
    pronto_convert::verify(&env.client, &image, None, work.path())
        .await
        .unwrap();

    // accelerationType None: no job, no accelerationInfo.
    let plain = env
        .create("plain", &env.image("app:v1"), json!({"customContainerConfig": {"image": env.image("app:v1"), "accelerationType": "None"}}))
        .await;
    assert!(plain.get("accelerationInfo").is_none(), "{plain}");
}

#[tokio::test]
async fn a_failed_conversion_says_why_and_the_function_still_serves_metadata() {
    // Scratch space that cannot be created: every conversion fails.
    let env = Env::start_with(|c| {
        let blocker = c.data_dir.join("convert");
        std::fs::create_dir_all(&c.data_dir).unwrap();
        std::fs::write(&blocker, b"not a directory").unwrap();
    })
    .await;
    env.push("app:v1", b"x").await;
    env.create("broken", &env.image("app:v1"), json!({})).await;
    let failed = wait_status(&env, "broken", "Failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("/convert") && reason.to_lowercase().contains("file exists")
            || reason.contains("not a directory"),
        "{reason}"
    );
}

#[tokio::test]
async fn jobs_resume_after_a_restart_and_updates_supersede() {
    let mut env = Env::start_with(|c| c.accelerate = false).await;
    env.push("app:v1", b"one").await;
    env.create("later", &env.image("app:v1"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        accel(&env, "later").await["status"],
        "Preparing",
        "no jobs while accelerate is off"
    );
    env.restart_with(|_| {}).await;
    wait_status(&env, "later", "Ready").await;

    // Update right after create: only the new image's artifact may be recorded.
    env.push("app:v2", &vec![1u8; 2 << 20]).await;
    env.push("app:v3", &vec![2u8; 2 << 20]).await;
    env.create("moving", &env.image("app:v2"), json!({})).await;
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/moving"),
            Some(json!({"customContainerConfig": {"image": env.image("app:v3")}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    env.server().state().accel.idle().await;
    let ready = wait_status(&env, "moving", "Ready").await;
    let v3 = pull::resolve(&env.client, &env.registry.reference("app:v3"))
        .await
        .unwrap();
    assert!(
        ready["artifact"]
            .as_str()
            .unwrap()
            .ends_with(&format!("sha256-{}.pronto", v3.manifest_digest.hex())),
        "{ready}"
    );
}

#[tokio::test]
async fn invocations_use_the_full_pull_until_ready_then_the_lazy_rootfs() {
    use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
    let mut env = Env::start_with(|c| c.accelerate = false).await;
    let big = pronto_testkit::fixtures::noise(5 << 20, 3);
    let pushed = ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .file("www/index.html", b"served lazily\n")
                .file("www/big.bin", &big),
        )
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(&env.client, &env.registry.reference("fn/lazy:v1"))
        .await
        .unwrap();
    env.create(
        "lazy",
        &env.image("fn/lazy:v1"),
        json!({"authType": "anonymous"}),
    )
    .await;
    let invoke = |env: &Env, path: &str| {
        let url = format!("http://{}/invoke/lazy{path}", env.server().invoke_addr);
        let http = env.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let cold_path = |r: &reqwest::Response| {
        r.headers()["x-pronto-cold-start"]
            .to_str()
            .unwrap()
            .to_string()
    };

    // Preparing: the function works from the original image.
    let r = invoke(&env, "/index.html").await;
    assert!(cold_path(&r).contains("rootfs=pulled"), "{}", cold_path(&r));
    assert_eq!(r.text().await.unwrap(), "served lazily\n");

    // Ready: the next cold start (a new revision) mounts the artifact.
    env.restart_with(|_| {}).await;
    wait_status(&env, "lazy", "Ready").await;
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/lazy"),
            Some(json!({"environmentVariables": {"REV": "2"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = invoke(&env, "/index.html").await;
    let timing = cold_path(&r);
    assert!(
        timing.contains("rootfs=lazy")
            && timing.contains("imagePulled=false")
            && timing.contains("prefetch=false"),
        "{timing}"
    );
    assert_eq!(r.text().await.unwrap(), "served lazily\n");
    // That first start on a new mount recorded what it read, stored once it answered.
    let store = pronto_server::Store::open(&env.data_dir()).unwrap();
    let digest = pushed.digest.to_string();
    let mut trace = None;
    for _ in 0..100 {
        trace = store.access_trace("lazy", &digest).await.unwrap();
        if trace.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace =
        pronto_runtime::AccessTrace::from_bytes(&trace.expect("a trace is stored")).unwrap();
    // GetFunction says so (what `pronto release --wait-trace` waits for).
    let got = env
        .call(Method::GET, "/2023-03-30/functions/lazy", None)
        .await;
    assert_eq!(
        got.body["accessTrace"]["chunks"],
        json!(trace.len()),
        "{}",
        got.body
    );
    // At least busybox's chunks and index.html's; big.bin was not read before the answer.
    assert!(trace.len() >= 2, "{trace:?}");
    let big_first = pronto_format::chunk_digest(&big[..pronto_format::DEFAULT_CHUNK_SIZE as usize]);
    assert!(
        !trace.chunks.contains(&big_first),
        "big.bin is not in the trace"
    );
    // Explained from the trace and the index: what was read, what was not, the start's profile
    // and the predicted cold starts (the CLI's and the console's view of it).
    let e = env
        .call(
            Method::GET,
            &format!("{FUNCTIONS}/lazy/explain?link=1gbit,2ms"),
            None,
        )
        .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    let e = e.body;
    let read: Vec<&str> = e["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(read.contains(&"www/index.html"), "{read:?}");
    assert!(!read.contains(&"www/big.bin"), "{read:?}");
    assert_eq!(e["largestUntouched"][0]["path"], "www/big.bin", "{e}");
    assert_eq!(e["traceChunks"], json!(trace.len()));
    let profile = &e["startProfile"];
    let setup = profile["setupMs"].as_f64().expect("a start profile");
    let program = profile["programMs"].as_f64().unwrap();
    assert!(setup > 0.0 && program >= 0.0, "{profile}");
    // The prediction adds the recorded local time to each path's image part.
    let p = &e["prediction"];
    let cold = &p["coldStart"];
    let accelerated = cold["acceleratedMs"].as_f64().unwrap();
    let transfer = p["accelerated"]["seconds"].as_f64().unwrap() * 1e3;
    assert!(
        (accelerated - (transfer + setup + program)).abs() < 1e-6,
        "{p}"
    );
    assert!(cold["fullMs"].as_f64().unwrap() >= p["full"]["seconds"].as_f64().unwrap() * 1e3);
    let r = invoke(&env, "/big.bin").await;
    assert!(r.headers().get("x-pronto-cold-start").is_none(), "warm");
    assert!(
        r.bytes().await.unwrap() == big,
        "big.bin through the lazy rootfs"
    );
    let mounts = pronto_lazyfs::mounts_under(&env.data_dir().join("node/lazy")).unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    // The conversion, the lazy cold start and what the mount read are on /metrics.
    let m = env.scrape().await;
    let lazy = [("function", "lazy"), ("rootfs", "lazy")];
    assert_eq!(
        metric(&m, "pronto_conversions_total", &[("result", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "pronto_conversion_duration_seconds",
            &[("result", "ready")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "pronto_cold_starts_total", &lazy), Some(1.0));
    assert_eq!(
        metric(&m, "pronto_cold_start_duration_seconds", &lazy),
        Some(1.0)
    );
    let read = metric(&m, "pronto_lazyfs_read_bytes_total", &[]).unwrap();
    assert!(read >= big.len() as f64, "{read}");
    let fetched = metric(&m, "pronto_lazyfs_fetched_content_bytes_total", &[]).unwrap();
    assert!(fetched >= big.len() as f64, "{fetched}");
    assert!(metric(&m, "pronto_lazyfs_range_requests_total", &[]).unwrap() >= 1.0);
    // The reads missed, or the background stream had fetched the (small) image before them.
    let misses = metric(&m, "pronto_lazyfs_cache_misses_total", &[]).unwrap();
    let streamed = metric(&m, "pronto_lazyfs_streamed_chunks_total", &[]).unwrap();
    assert!(
        misses + streamed >= 1.0,
        "{misses} misses, {streamed} streamed"
    );
    assert_eq!(
        metric(&m, "pronto_lazyfs_fetch_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pronto_lazyfs_prefetched_chunks_total", &[]),
        Some(0.0)
    );
    let cached = metric(&m, "pronto_chunk_cache_bytes", &[]).unwrap();
    assert!(cached >= big.len() as f64, "{cached}");

    // The next cold start on a node without the mount or the chunks prefetches that trace.
    env.restart_clearing(&env.data_dir().join("node/chunks"))
        .await;
    let r = invoke(&env, "/index.html").await;
    let timing = cold_path(&r);
    assert!(
        timing.contains("rootfs=lazy") && timing.contains("prefetch=true"),
        "{timing}"
    );
    assert_eq!(r.text().await.unwrap(), "served lazily\n");
    let before = env.scrape().await;
    let prefetched = [("function", "lazy"), ("rootfs", "lazy+prefetch")];
    assert_eq!(
        metric(&before, "pronto_cold_starts_total", &prefetched),
        Some(1.0)
    );
    let chunks = metric(&before, "pronto_lazyfs_prefetched_chunks_total", &[]).unwrap();
    // Some of the trace, perhaps not all yet (the program's own reads may come first).
    assert!(chunks >= 1.0 && chunks <= trace.len() as f64, "{chunks}");

    // Deleting the function tears down its instance and, with it, the mount.
    let r = env
        .call(Method::DELETE, &format!("{FUNCTIONS}/lazy"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for _ in 0..100 {
        if pronto_lazyfs::mounts_under(&env.data_dir().join("node/lazy"))
            .unwrap()
            .is_empty()
        {
            // The mount is gone; its counts stay in the totals (counters never go down).
            let after = env.scrape().await;
            for name in [
                "pronto_lazyfs_read_requests_total",
                "pronto_lazyfs_fetched_chunks_total",
                "pronto_lazyfs_prefetched_chunks_total",
            ] {
                let (b, a) = (metric(&before, name, &[]), metric(&after, name, &[]));
                assert!(a >= b && b > Some(0.0), "{name}: {b:?} then {a:?}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lazy mount outlived the function's last instance");
}
