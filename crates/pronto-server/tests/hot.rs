//! Hot-set jobs (`hot.rs`) end to end: the first accelerated cold start records a trace, the
//! job pushes a hot revision and GetFunction shows it, the next cold start mounts it (the FUSE
//! mount's source names its index), an image update never mounts the old one, and a registry
//! that refuses the push leaves the function on the base revision with the reason shown.

mod common;

use std::time::Duration;

use common::{Env, FUNCTIONS};
use pronto_artifact::{fetch_artifact, fetch_artifact_revision, Revision};
use pronto_image::pull;
use pronto_image::Digest;
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn get(env: &Env, name: &str) -> Value {
    let r = env
        .call(Method::GET, &format!("{FUNCTIONS}/{name}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

/// Polls GetFunction (bounded) until `pick` of it says yes; returns it.
async fn wait_for(env: &Env, name: &str, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let f = get(env, name).await;
        if pick(&f) {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name}: never {what}: {}", get(env, name).await);
}

fn hot_status(f: &Value) -> Option<&str> {
    f["customContainerConfig"]["accelerationInfo"]["hotPack"]["status"].as_str()
}

/// Pushes an httpd image whose page says `page`; returns its digest.
async fn push_app(env: &Env, tag: &str, page: &str) -> Digest {
    let data = pronto_testkit::fixtures::noise(3 << 20, page.len() as u64);
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .file("www/index.html", page.as_bytes())
                .file("www/data.bin", &data),
        )
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(&env.client, &env.registry.reference(tag))
        .await
        .unwrap()
        .digest
}

async fn invoke(env: &Env, name: &str) -> (String, String) {
    let url = format!(
        "http://{}/invoke/{name}/index.html",
        env.server().invoke_addr
    );
    let r = env.http.get(url).send().await.unwrap();
    if r.status() != StatusCode::OK {
        panic!("{name}: {} {}", r.status(), r.text().await.unwrap());
    }
    let timing = r
        .headers()
        .get("x-pronto-cold-start")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (timing, r.text().await.unwrap())
}

/// The index digests of the lazy mounts under the env's data dir (`pronto:<digest>` sources).
fn mounted_indexes(env: &Env) -> Vec<String> {
    let dir = env.data_dir().join("node/lazy");
    let dir = dir.canonicalize().unwrap_or(dir);
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| mp.starts_with(dir.to_str().unwrap()))
        })
        .filter_map(|l| {
            let after = l.split(" - ").nth(1)?;
            let source = after.split(' ').nth(1)?;
            source.strip_prefix("pronto:").map(str::to_string)
        })
        .collect()
}

async fn index_of(env: &Env, tag: &str, revision: Revision) -> String {
    let image = pull::resolve(&env.client, &env.registry.reference(tag))
        .await
        .unwrap();
    match revision {
        Revision::Base => fetch_artifact(&env.client, &image).await,
        r => fetch_artifact_revision(&env.client, &image, &image.pinned, &r).await,
    }
    .unwrap()
    .index_digest
    .to_string()
}

#[tokio::test]
async fn the_first_trace_makes_a_hot_pack_the_next_start_mounts_it_and_an_update_drops_it() {
    let mut env = Env::start().await;
    push_app(&env, "fn/hot:v1", "one\n").await;
    env.create(
        "hot",
        &env.image("fn/hot:v1"),
        json!({"authType": "anonymous"}),
    )
    .await;
    wait_for(&env, "hot", "Ready", |f| {
        f["accelerationInfo"]["status"] == "Ready"
    })
    .await;
    let base_v1 = index_of(&env, "fn/hot:v1", Revision::Base).await;

    // The first cold start mounts the base and records a trace; the job follows.
    let (timing, body) = invoke(&env, "hot").await;
    assert!(
        timing.contains("rootfs=lazy") && timing.contains("prefetch=false"),
        "{timing}"
    );
    assert_eq!(body, "one\n");
    assert_eq!(mounted_indexes(&env), vec![base_v1.clone()]);
    let f = wait_for(&env, "hot", "a Ready hot pack", |f| {
        hot_status(f) == Some("Ready")
    })
    .await;
    let hot = &f["customContainerConfig"]["accelerationInfo"]["hotPack"];
    let chunks = f["accessTrace"]["chunks"].as_u64().unwrap();
    assert_eq!(hot["chunks"].as_u64(), Some(chunks), "{hot}");
    assert_eq!(hot["packs"], 1, "{hot}");
    assert!(hot["bytes"].as_u64().unwrap() > 0, "{hot}");
    assert_eq!(f["accelerationInfo"]["hotPack"], *hot, "both places");
    let v1 = pull::resolve(&env.client, &env.registry.reference("fn/hot:v1"))
        .await
        .unwrap();
    assert_eq!(hot["image"], v1.manifest_digest.to_string());
    assert!(hot["artifact"]
        .as_str()
        .unwrap()
        .ends_with(&format!("sha256-{}.pronto-hot", v1.manifest_digest.hex())));
    // Every field shown is documented (the OpenAPI schema), and the console shows it.
    let doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap(),
    )
    .unwrap();
    let documented = &doc["components"]["schemas"]["HotPack"]["properties"];
    for key in hot.as_object().unwrap().keys() {
        assert!(
            documented.get(key.as_str()).is_some(),
            "hotPack.{key} is not in openapi.yaml"
        );
    }
    let page = env
        .http
        .get(env.url("/console/functions/hot"))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = format!("Ready: {chunks} chunks, {} B in 1 pack(s)", hot["bytes"]);
    assert!(page.contains(&shown), "{shown} not in the console page");
    let hot_digest: Digest = hot["artifactDigest"].as_str().unwrap().parse().unwrap();
    let hot_v1 = index_of(&env, "fn/hot:v1", Revision::Pinned(hot_digest)).await;
    assert_ne!(hot_v1, base_v1);

    // The next cold start (another node: no mount, no chunks) mounts the hot revision and
    // prefetches the trace from it.
    env.restart_clearing(&env.data_dir().join("node/chunks"))
        .await;
    let (timing, body) = invoke(&env, "hot").await;
    assert!(
        timing.contains("rootfs=lazy") && timing.contains("prefetch=true"),
        "{timing}"
    );
    assert_eq!(body, "one\n");
    assert_eq!(mounted_indexes(&env), vec![hot_v1.clone()]);
    let m = env.scrape().await;
    let requests = common::metric(&m, "pronto_lazyfs_range_requests_total", &[]).unwrap();
    eprintln!("cold start on the hot revision: {requests} range requests ({chunks} chunks)");

    // An update: the new image's base is mounted, never v1's hot revision.
    push_app(&env, "fn/hot:v2", "two\n").await;
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/hot"),
            Some(json!({"customContainerConfig": {"image": env.image("fn/hot:v2")}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let f = wait_for(&env, "hot", "Ready for v2", |f| {
        f["accelerationInfo"]["status"] == "Ready" && f["lastUpdateStatus"] == "Successful"
    })
    .await;
    assert!(
        f["accelerationInfo"].get("hotPack").is_none(),
        "no hot pack for v2 yet: {f}"
    );
    let base_v2 = index_of(&env, "fn/hot:v2", Revision::Base).await;
    let (timing, body) = invoke(&env, "hot").await;
    assert!(timing.contains("rootfs=lazy"), "{timing}");
    assert_eq!(body, "two\n");
    let mounted = mounted_indexes(&env);
    assert!(mounted.contains(&base_v2), "{mounted:?}");
    assert!(
        !mounted.contains(&hot_v1) || mounted.len() == 2,
        "{mounted:?}"
    );
    // v2's own trace makes v2's own hot pack.
    let f = wait_for(&env, "hot", "a hot pack for v2", |f| {
        hot_status(f) == Some("Ready")
    })
    .await;
    let v2 = pull::resolve(&env.client, &env.registry.reference("fn/hot:v2"))
        .await
        .unwrap();
    assert_eq!(
        f["accelerationInfo"]["hotPack"]["image"],
        v2.manifest_digest.to_string()
    );
}

#[tokio::test]
async fn a_refused_push_leaves_the_base_in_use_and_says_why_once() {
    let mut env = Env::start().await;
    push_app(&env, "fn/ro:v1", "ro\n").await;
    env.create(
        "ro",
        &env.image("fn/ro:v1"),
        json!({"authType": "anonymous"}),
    )
    .await;
    wait_for(&env, "ro", "Ready", |f| {
        f["accelerationInfo"]["status"] == "Ready"
    })
    .await;
    let base = index_of(&env, "fn/ro:v1", Revision::Base).await;
    // From now on the registry serves reads and refuses every push (a new daemon: no
    // connection to the registry's previous process is reused).
    env.registry.make_read_only().unwrap();
    env.restart().await;

    let (timing, _) = invoke(&env, "ro").await;
    assert!(timing.contains("rootfs=lazy"), "{timing}");
    let f = wait_for(&env, "ro", "a Failed hot pack", |f| {
        hot_status(f) == Some("Failed")
    })
    .await;
    let hot = f["accelerationInfo"]["hotPack"].clone();
    let reason = hot["reason"].as_str().unwrap();
    assert!(reason.contains("pushing the hot revision"), "{reason}");
    assert!(hot.get("artifactDigest").is_none(), "{hot}");
    assert_eq!(
        f["accelerationInfo"]["status"], "Ready",
        "the base still serves"
    );

    // The next cold start mounts the base (and prefetches the trace from it); the failure is
    // not retried, after a restart either.
    env.restart_clearing(&env.data_dir().join("node/chunks"))
        .await;
    let (timing, body) = invoke(&env, "ro").await;
    assert!(
        timing.contains("rootfs=lazy") && timing.contains("prefetch=true"),
        "{timing}"
    );
    assert_eq!(body, "ro\n");
    assert_eq!(mounted_indexes(&env), vec![base]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.server().state().hot.idle().await;
    let again = get(&env, "ro").await;
    assert_eq!(again["accelerationInfo"]["hotPack"], hot, "no retry");
}

/// A daemon stopped mid-job (here: the record says `Preparing`, nothing was recorded) leaves
/// cold starts on the base revision, and the next daemon resumes the job to `Ready`.
#[tokio::test]
async fn a_job_cut_short_by_a_stop_keeps_the_base_and_resumes() {
    let mut env = Env::start().await;
    push_app(&env, "fn/cut:v1", "cut\n").await;
    env.create(
        "cut",
        &env.image("fn/cut:v1"),
        json!({"authType": "anonymous"}),
    )
    .await;
    wait_for(&env, "cut", "Ready", |f| {
        f["accelerationInfo"]["status"] == "Ready"
    })
    .await;
    let base = index_of(&env, "fn/cut:v1", Revision::Base).await;
    invoke(&env, "cut").await;
    let done = wait_for(&env, "cut", "a Ready hot pack", |f| {
        hot_status(f) == Some("Ready")
    })
    .await;
    // As if the daemon had died after claiming the job, before recording it; the registry
    // refuses pushes meanwhile, so the cold start below cannot race a resumed job to `Ready`.
    env.registry.make_read_only().unwrap();
    env.restart_after(async |store| {
        store
            .update_function("cut", |f| {
                let h = f
                    .acceleration
                    .as_mut()
                    .and_then(|a| a.hot_pack.as_mut())
                    .unwrap();
                h.status = pronto_server::model::AccelerationStatus::Preparing;
                h.artifact_digest = None;
                h.artifact = None;
            })
            .await
            .unwrap();
    })
    .await;
    let (timing, body) = invoke(&env, "cut").await;
    assert!(timing.contains("rootfs=lazy"), "{timing}");
    assert_eq!(body, "cut\n");
    assert_eq!(mounted_indexes(&env), vec![base], "Preparing never mounts");
    // Resumed at the start: it failed against the read-only registry, once.
    let failed = wait_for(&env, "cut", "the resumed job's end", |f| {
        hot_status(f) == Some("Failed")
    })
    .await;
    let reason = failed["accelerationInfo"]["hotPack"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("pushing the hot revision"), "{reason}");
    assert_ne!(
        done["accelerationInfo"]["hotPack"],
        failed["accelerationInfo"]["hotPack"]
    );
}
