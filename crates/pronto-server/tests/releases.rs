//! Releases and scaling with real containers: instance concurrency and the maximum, a burst
//! from zero, provisioned instances, versions and weighted aliases, and the release flow
//! (update → acceleration Ready → publish → alias switch) under constant load. Function images
//! are busybox `httpd` with CGI handlers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Env;
use pronto_testkit::image::{httpd_image, Layer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sleeps the seconds given in the query string, then answers.
const SLOW: &str = "#!/bin/sh\nsleep \"${QUERY_STRING:-1}\"\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslept\\n'\n";

fn no_acceleration(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

/// A small function image whose `/index.html` says `index`.
async fn push_app(env: &Env, tag: &str, index: &str) {
    httpd_image(
        Layer::gzip()
            .dir("www/cgi-bin")
            .file("www/index.html", index)
            .file("www/cgi-bin/slow", SLOW)
            .mode(0o755),
    )
    .push(
        &env.client,
        &env.registry.reference(&format!("rel/app:{tag}")),
    )
    .await
    .unwrap();
}

fn url(env: &Env, target: &str, path: &str) -> String {
    format!("http://{}/invoke/{target}{path}", env.server().invoke_addr)
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    instance: Option<String>,
    cold: bool,
    version: Option<String>,
    body: String,
}

async fn invoke(env: &Env, target: &str, path: &str) -> Answer {
    let r = env
        .http
        .get(url(env, target, path))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    Answer {
        status: r.status(),
        instance: header("x-pronto-instance"),
        cold: header("x-pronto-cold-start").is_some(),
        version: header("x-pronto-version"),
        body: String::new(),
    }
    .with_body(r)
    .await
}

impl Answer {
    async fn with_body(mut self, r: reqwest::Response) -> Answer {
        self.body = r.text().await.unwrap();
        self
    }
}

/// Instances of this test's server that exist now (directories live from the first step of a
/// start to the end of the teardown, so this is at least the containers running).
fn instances(env: &Env) -> Vec<String> {
    match std::fs::read_dir(env.data_dir().join("node/instances")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn concurrency_shares_an_instance_and_the_maximum_makes_requests_wait_or_429() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "one\n").await;
    let image = env.image("rel/app:v1");
    env.create(
        "shared",
        &image,
        json!({"memorySize": 128, "instanceConcurrency": 4, "maxInstances": 2}),
    )
    .await;
    // Warm one instance, then 4 slow requests share it and a 5th starts a second.
    assert_eq!(
        invoke(&env, "shared", "/index.html").await.status,
        StatusCode::OK
    );
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let env = &env;
            async move { invoke(env, "shared", "/cgi-bin/slow?2").await }
        })
        .collect();
    let fifth = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        invoke(&env, "shared", "/cgi-bin/slow?1").await
    };
    let (four, fifth) = tokio::join!(futures_util::future::join_all(slow), fifth);
    let shared: BTreeSet<_> = four.iter().map(|a| a.instance.clone()).collect();
    assert!(
        four.iter().all(|a| a.status == StatusCode::OK && !a.cold),
        "{four:?}"
    );
    assert_eq!(
        shared.len(),
        1,
        "four requests at instanceConcurrency 4: one instance"
    );
    assert_eq!(fifth.status, StatusCode::OK);
    assert!(
        fifth.cold,
        "the fifth found the instance full and started another"
    );
    assert!(!shared.contains(&fifth.instance));

    // maxInstances 1: a fifth request waits for room and is served.
    env.create(
        "single",
        &image,
        json!({"memorySize": 128, "instanceConcurrency": 4, "maxInstances": 1}),
    )
    .await;
    assert_eq!(
        invoke(&env, "single", "/index.html").await.status,
        StatusCode::OK
    );
    let started = Instant::now();
    let all: Vec<_> = (0..5)
        .map(|_| {
            let env = &env;
            async move { invoke(env, "single", "/cgi-bin/slow?1").await }
        })
        .collect();
    let all = futures_util::future::join_all(all).await;
    assert!(
        all.iter().all(|a| a.status == StatusCode::OK && !a.cold),
        "{all:?}"
    );
    let one: BTreeSet<_> = all.iter().map(|a| a.instance.clone()).collect();
    assert_eq!(one.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the fifth waited for a place"
    );

    // ... or, if no room comes before its deadline (the function's timeout), gets 429.
    env.create(
        "tight",
        &image,
        json!({"memorySize": 128, "maxInstances": 1, "timeout": 3}),
    )
    .await;
    assert_eq!(
        invoke(&env, "tight", "/index.html").await.status,
        StatusCode::OK
    );
    let three: Vec<_> = (0..3)
        .map(|i| {
            let env = &env;
            async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                let r = env
                    .http
                    .get(url(env, "tight", "/cgi-bin/slow?2"))
                    .bearer_auth(env.token())
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.text().await.unwrap())
            }
        })
        .collect();
    let three = futures_util::future::join_all(three).await;
    let statuses: Vec<_> = three.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429], "{three:?}");
    let refused: Value = serde_json::from_str(&three[2].1).unwrap();
    assert_eq!(refused["code"], "ResourceThrottled");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("maxInstances (1) are all busy"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_burst_from_zero_never_exceeds_the_maximum_nor_starts_more_than_needed() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "one\n").await;
    env.create(
        "burst",
        &env.image("rel/app:v1"),
        json!({"memorySize": 128, "maxInstances": 5}),
    )
    .await;
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(Mutex::new(0usize));
    let sampler = {
        let (done, most, dir) = (done.clone(), most.clone(), env.data_dir());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(dir.join("node/instances"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                let mut m = most.lock().unwrap();
                *m = (*m).max(n);
                drop(m);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let env = &env;
            async move { invoke(env, "burst", "/cgi-bin/slow?0.3").await }
        })
        .collect();
    let answers = futures_util::future::join_all(burst).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let bad: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::OK || a.body != "slept\n")
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let cold = answers.iter().filter(|a| a.cold).count();
    let used: BTreeSet<_> = answers.iter().map(|a| a.instance.clone()).collect();
    assert_eq!(
        cold, 5,
        "50 requests at 1 per instance, maxInstances 5: 5 cold starts"
    );
    assert_eq!(used.len(), 5);
    let most = *most.lock().unwrap();
    assert!(most <= 5, "{most} instances at once, maxInstances 5");
}

fn provision_path(name: &str, qualifier: &str) -> String {
    format!("/2023-03-30/functions/{name}/provision-config?qualifier={qualifier}")
}

#[tokio::test]
async fn provisioned_instances_exist_before_requests_come_back_after_kill_and_serve_first() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "one\n").await;
    env.create("warm", &env.image("rel/app:v1"), json!({"memorySize": 128}))
        .await;
    let r = env
        .call(
            Method::PUT,
            &provision_path("warm", "LATEST"),
            Some(json!({"target": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let current = async || {
        env.call(Method::GET, &provision_path("warm", "LATEST"), None)
            .await
            .body["current"]
            .as_u64()
            .unwrap()
    };
    until(
        "two provisioned instances",
        Duration::from_secs(30),
        async || current().await == 2,
    )
    .await;
    let before: BTreeSet<String> = instances(&env).into_iter().collect();
    assert_eq!(before.len(), 2, "started before any request");

    // They take the traffic: no cold start while they have room.
    let (a, b) = tokio::join!(
        invoke(&env, "warm", "/cgi-bin/slow?0.5"),
        invoke(&env, "warm", "/cgi-bin/slow?0.5")
    );
    for x in [&a, &b] {
        assert_eq!(x.status, StatusCode::OK);
        assert!(!x.cold);
        assert!(before.contains(x.instance.as_ref().unwrap()));
    }

    // kill -9 of one's container: within the provisioner's period it is replaced.
    let victim = before.iter().next().unwrap().clone();
    let pid: i32 =
        std::fs::read_to_string(env.data_dir().join(format!("node/instances/{victim}/pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    until("replaced", Duration::from_secs(30), async || {
        let now: BTreeSet<String> = instances(&env).into_iter().collect();
        !now.contains(&victim) && now.len() == 2 && current().await == 2
    })
    .await;
    let after = invoke(&env, "warm", "/index.html").await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!after.cold, "the replacement serves warm");
    assert_ne!(after.instance.as_deref(), Some(victim.as_str()));

    // Deleted: they become on-demand and go when idle (the server's idle timeout).
    let r = env
        .call(Method::DELETE, &provision_path("warm", "LATEST"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        env.call(Method::GET, &provision_path("warm", "LATEST"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn update_image(env: &Env, name: &str, image: &str) -> Value {
    let r = env
        .call(
            Method::PUT,
            &format!("/2023-03-30/functions/{name}"),
            Some(json!({"customContainerConfig": {"image": image}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn publish(env: &Env, name: &str) -> String {
    let r = env
        .call(
            Method::POST,
            &format!("/2023-03-30/functions/{name}/versions"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["versionId"].as_str().unwrap().to_string()
}

/// `n` invocations of `canary.prod` from 8 workers: how many each version served.
async fn split(env: &Env, n: usize) -> BTreeMap<String, usize> {
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let counts = counts.clone();
            async move {
                for _ in 0..n / 8 {
                    let a = invoke(env, "canary.prod", "/index.html").await;
                    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
                    let want = if a.version.as_deref() == Some("2") {
                        "two\n"
                    } else {
                        "one\n"
                    };
                    assert_eq!(a.body, want, "the version header names what served");
                    *counts
                        .lock()
                        .unwrap()
                        .entry(a.version.unwrap())
                        .or_default() += 1;
                }
            }
        })
        .collect();
    futures_util::future::join_all(workers).await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.values().sum::<usize>(), n);
    counts
}

#[tokio::test]
async fn alias_weights_split_the_traffic_and_versions_keep_their_image() {
    let env = Env::start_with(no_acceleration).await;
    for (tag, text) in [("v1", "one\n"), ("v2", "two\n"), ("v3", "three\n")] {
        push_app(&env, tag, text).await;
    }
    env.create(
        "canary",
        &env.image("rel/app:v1"),
        json!({"memorySize": 128, "instanceConcurrency": 8}),
    )
    .await;
    assert_eq!(publish(&env, "canary").await, "1");
    update_image(&env, "canary", &env.image("rel/app:v2")).await;
    assert_eq!(publish(&env, "canary").await, "2");
    update_image(&env, "canary", &env.image("rel/app:v3")).await;

    // LATEST moved on; each version keeps serving its own image.
    let latest = invoke(&env, "canary", "/index.html").await;
    assert_eq!(
        (latest.body.as_str(), latest.version.as_deref()),
        ("three\n", Some("LATEST"))
    );
    let v1 = invoke(&env, "canary.1", "/index.html").await;
    assert_eq!(
        (v1.body.as_str(), v1.version.as_deref()),
        ("one\n", Some("1"))
    );
    let v2 = env
        .http
        .get(url(&env, "canary", "/index.html"))
        .header("x-fc-qualifier", "2")
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap();
    assert_eq!(v2.headers()["x-pronto-version"], "2");
    assert_eq!(v2.text().await.unwrap(), "two\n");

    // 90/10 between versions 1 and 2.
    let r = env
        .call(
            Method::POST,
            "/2023-03-30/functions/canary/aliases",
            Some(json!({"aliasName": "prod", "versionId": "1", "additionalVersionWeight": {"2": 0.1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Binomial(1000, 0.1): mean 100, sd 9.49; the 99% two-sided bound is ±2.576 sd. A fair
    // split misses it one time in a hundred: a miss is measured once more (both missing: one
    // time in ten thousand).
    let mut total = BTreeMap::<String, usize>::new();
    let mut canary = 0;
    for attempt in 0..2 {
        let counts = split(&env, 1000).await;
        for (v, n) in &counts {
            *total.entry(v.clone()).or_default() += n;
        }
        canary = counts.get("2").copied().unwrap_or(0);
        if (76..=124).contains(&canary) {
            break;
        }
        assert_eq!(attempt, 0, "outside the 99% bound twice: {counts:?}");
    }
    let canary_total = total.get("2").copied().unwrap_or(0);
    assert!((76..=124).contains(&canary), "{total:?}");
    // The metrics count invocations by the version that served.
    let scrape = env.scrape().await;
    let served = |v: &str| {
        common::metric(
            &scrape,
            "pronto_invocations_total",
            &[("function", "canary"), ("qualifier", v), ("status", "200")],
        )
    };
    // (Each version was also invoked once on its own above.)
    let all: usize = total.values().sum();
    assert_eq!(served("2"), Some((canary_total + 1) as f64));
    assert_eq!(served("1"), Some((all - canary_total + 1) as f64));

    // A version an alias uses cannot be deleted; the error names the alias.
    let r = env
        .call(
            Method::DELETE,
            "/2023-03-30/functions/canary/versions/2",
            None,
        )
        .await;
    common::assert_error(
        &r,
        StatusCode::CONFLICT,
        "VersionInUse",
        "version 2 of function canary is used by alias prod; point the alias elsewhere first",
    );
}

#[tokio::test]
async fn the_release_flow_under_constant_load_fails_no_request() {
    let env = Env::start().await;
    push_app(&env, "v1", "one\n").await;
    push_app(&env, "v2", "two\n").await;
    env.create(
        "rel",
        &env.image("rel/app:v1"),
        json!({"memorySize": 128, "instanceConcurrency": 4}),
    )
    .await;
    let status = async |env: &Env| {
        env.call(Method::GET, "/2023-03-30/functions/rel", None)
            .await
            .body
    };
    until("v1 accelerated", Duration::from_secs(120), async || {
        status(&env).await["accelerationInfo"]["status"] == "Ready"
    })
    .await;
    assert_eq!(publish(&env, "rel").await, "1");
    let r = env
        .call(
            Method::POST,
            "/2023-03-30/functions/rel/aliases",
            Some(json!({"aliasName": "prod", "versionId": "1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Constant load on LATEST and on the alias, recording when each request was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(
        Instant,
        Instant,
        &'static str,
        StatusCode,
        String,
    )>::new()));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (env, stop, log) = (&env, stop.clone(), log.clone());
            let target = if i % 2 == 0 { "rel" } else { "rel.prod" };
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let a = invoke(env, target, "/index.html").await;
                    let done = Instant::now();
                    log.lock()
                        .unwrap()
                        .push((sent, done, target, a.status, a.body));
                }
            }
        })
        .collect();
    let release = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let updated = update_image(&env, "rel", &env.image("rel/app:v2")).await;
        assert_eq!(updated["lastUpdateStatus"], "InProgress", "{updated}");
        // While v2 prepares, LATEST keeps serving v1: record the last moment that was so.
        let mut last_in_progress = Instant::now();
        until(
            "v2 accelerated and live",
            Duration::from_secs(120),
            async || {
                let s = status(&env).await;
                if s["lastUpdateStatus"] == "InProgress" {
                    last_in_progress = Instant::now();
                }
                s["lastUpdateStatus"] == "Successful" && s["accelerationInfo"]["status"] == "Ready"
            },
        )
        .await;
        let version = publish(&env, "rel").await;
        let r = env
            .call(
                Method::PUT,
                "/2023-03-30/functions/rel/aliases/prod",
                Some(json!({"versionId": version})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let switched = Instant::now();
        // Until a few requests sent after the switch have their answers (the new version's
        // first instance starts meanwhile), within a bound.
        let deadline = switched + Duration::from_secs(30);
        while Instant::now() < deadline
            && log
                .lock()
                .unwrap()
                .iter()
                .filter(|(sent, _, target, _, _)| *target == "rel.prod" && *sent > switched)
                .count()
                < 4
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        (last_in_progress, switched)
    };
    let ((last_in_progress, switched), _) =
        tokio::join!(release, futures_util::future::join_all(load));
    let log = log.lock().unwrap();
    let failed: Vec<_> = log
        .iter()
        .filter(|(_, _, _, s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        log.len()
    );
    assert!(log.len() > 50, "constant load: {} requests", log.len());
    for (_, done, target, _, body) in log.iter() {
        if *target == "rel" && *done < last_in_progress {
            assert_eq!(
                body, "one\n",
                "LATEST served the update before it was Ready"
            );
        }
    }
    // Sent after the alias moved (its PUT had answered): the new version, every one.
    let late: Vec<_> = log
        .iter()
        .filter(|(sent, _, target, _, _)| *target == "rel.prod" && *sent > switched)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|(_, _, _, _, b)| b == "two\n"),
        "after the switch: {late:?}"
    );
}
