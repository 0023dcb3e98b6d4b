//! A registry that stalls must hang nothing (issue 17, item 1): a function whose image sits
//! behind a stalling registry (the testkit's `FaultyProxy`) answers within its
//! `initializationTimeout`; a function of the same image digest from a healthy registry is
//! served meanwhile; and the server's shutdown with a start stuck on the registry finishes
//! within 10 s and leaves no instance behind.

mod common;

use std::time::{Duration, Instant};

use common::Env;
use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
use pronto_testkit::image::{httpd_image, Layer};
use reqwest::StatusCode;
use serde_json::json;

fn no_acceleration(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

/// Waits until `proxy` has stalled `n` requests in all.
async fn until_faults(proxy: &FaultyProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.faults() < n {
        assert!(
            Instant::now() < deadline,
            "the registry was never asked for a blob: {:?}",
            proxy.seen()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn invoke(env: &Env, function: &str) -> reqwest::RequestBuilder {
    env.http
        .get(format!(
            "http://{}/invoke/{function}/",
            env.server().invoke_addr
        ))
        .bearer_auth(env.token())
        // Far past any bound under test: a hang fails the test instead of blocking it.
        .timeout(Duration::from_secs(40))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_hangs_no_start_and_no_shutdown() {
    let mut env = Env::start_with(no_acceleration).await;
    // Two images: `app` for the stalled and the healthy function, `other` for the start the
    // shutdown finds stuck (`app` is on the node by then).
    for (tag, index) in [("stall/app:v1", "hello\n"), ("stall/other:v1", "other\n")] {
        httpd_image(Layer::gzip().dir("www").file("www/index.html", index))
            .push(&env.client, &env.registry.reference(tag))
            .await
            .unwrap();
    }
    let proxy = FaultyProxy::start(env.registry.addr());
    let stalled_image = format!("{}/stall/app:v1", proxy.host());
    let config = |init: u32| {
        json!({
            "customContainerConfig": {"accelerationType": "None", "port": 9000},
            "initializationTimeout": init,
            "timeout": 30,
        })
    };
    // Pinned through the proxy while it still passes everything (manifest and config).
    env.create("stalled", &stalled_image, config(6)).await;
    env.create(
        "slow",
        &format!("{}/stall/other:v1", proxy.host()),
        config(120),
    )
    .await;
    env.create("healthy", &env.image("stall/app:v1"), config(30))
        .await;
    // From now on every blob download through the proxy gets its headers and then nothing.
    proxy.add(
        Rule::path("/blobs/")
            .method("GET")
            .fault(Fault::StallBodyAfter(0)),
    );

    // 1. The stalled function answers within its initializationTimeout (6 s), with a clear
    //    error; meanwhile the same image from the healthy registry starts and serves.
    let t = Instant::now();
    let stalled = tokio::spawn(invoke(&env, "stalled").send());
    until_faults(&proxy, 1).await;
    let healthy = invoke(&env, "healthy")
        .send()
        .await
        .expect("the healthy function answers while the other start is stalled");
    let status = healthy.status();
    let text = healthy.text().await.unwrap();
    assert_eq!((status, text.as_str()), (StatusCode::OK, "hello\n"));
    assert!(
        !stalled.is_finished(),
        "the healthy one answered before the stalled one's deadline ({:?})",
        t.elapsed()
    );
    let stalled = stalled
        .await
        .unwrap()
        .expect("the stalled function answers within its initializationTimeout");
    let took = t.elapsed();
    let status = stalled.status();
    let body: serde_json::Value = stalled.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "FunctionNotStarted", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("initialization timeout of 6s"),
        "names the bound: {message}"
    );
    assert!(
        took < Duration::from_secs(6 + 3),
        "answered after {took:?}: {message}"
    );
    eprintln!("stalled start answered after {took:?}: {message}");

    // 2. A start stuck on the registry (initializationTimeout 120 s) does not hold up the
    //    shutdown beyond 10 s, and nothing of it or of the healthy instance is left.
    let faults = proxy.faults();
    let slow = tokio::spawn(invoke(&env, "slow").send());
    until_faults(&proxy, faults + 1).await;
    let t = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(30),
        env.server.take().unwrap().shutdown(),
    )
    .await
    .expect("shutdown still running after 30 s")
    .unwrap();
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let instances = env.data_dir().join("node/instances");
    let left: Vec<_> = std::fs::read_dir(&instances)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "instances left under {instances:?}: {left:?}"
    );
    // The stuck request got an answer (or its connection closed) rather than hanging.
    let _ = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the request of the cancelled start still hangs");
}
