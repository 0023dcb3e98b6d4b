//! A registry that misbehaves mid-transfer (the testkit's `FaultyProxy` in front of a real
//! registry): every full pull ends, within the client's bounds, with an error that says what
//! happened, and leaves nothing at the target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

/// The bounds the tests give the client (the defaults are 30 s).
const BOUND: Duration = Duration::from_secs(2);
/// Past this the test stops waiting: the pull hangs.
const WATCHDOG: Duration = Duration::from_secs(30);

fn quick_client() -> RegistryClient {
    RegistryClient::new(ClientOptions {
        response_timeout: BOUND,
        idle_timeout: BOUND,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// An image with one 4 MiB layer of noise, pushed; resolved through `proxy`.
async fn image_behind(registry: &TestRegistry, proxy: &FaultyProxy) -> ResolvedImage {
    let direct = registry.reference("faults/app:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("big", noise(4 << 20, 7)))
        .push(&quick_client(), &direct)
        .await
        .unwrap();
    let via: pronto_image::Reference = format!("{}/faults/app:v1", proxy.host()).parse().unwrap();
    pull::resolve(&quick_client(), &via).await.unwrap()
}

/// Pulls `image` into a fresh target; the error and how long it took. Fails the test if the
/// pull is still running after [`WATCHDOG`].
async fn pull_fails(image: &ResolvedImage) -> (PullError, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("rootfs");
    let t = Instant::now();
    let client = quick_client();
    let pull = pull::unpack_image(&client, image, &target, Arc::new(NoProgress));
    let Ok(result) = tokio::time::timeout(WATCHDOG, pull).await else {
        panic!("unpack_image still running after {WATCHDOG:?}: a stalled registry hangs the pull")
    };
    let took = t.elapsed();
    let err = result.expect_err("the pull must fail");
    assert!(!target.exists(), "nothing left at the target");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no staging or download directory left"
    );
    (err, took)
}

#[tokio::test]
async fn a_blob_that_stalls_mid_body_fails_the_pull_within_the_idle_bound() {
    let registry = TestRegistry::start();
    let proxy = FaultyProxy::start(registry.addr());
    let image = image_behind(&registry, &proxy).await;
    let layer = image.manifest.layers[0].digest.to_string();
    proxy.add(
        Rule::path("/blobs/")
            .and_path(&layer)
            .method("GET")
            .fault(Fault::StallBodyAfter(64 << 10)),
    );
    let (err, took) = pull_fails(&image).await;
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("registry {} stalled", proxy.host()))
            && msg.contains(&layer)
            && msg.contains("2s"),
        "names the registry, the blob and the bound: {msg}"
    );
    assert!(took < BOUND + Duration::from_secs(2), "took {took:?}");
    assert_eq!(proxy.faults(), 1);
}

#[tokio::test]
async fn a_registry_that_never_answers_fails_the_pull_within_the_response_bound() {
    let registry = TestRegistry::start();
    let proxy = FaultyProxy::start(registry.addr());
    let image = image_behind(&registry, &proxy).await;
    let layer = image.manifest.layers[0].digest.to_string();
    proxy.add(Rule::path(&layer).method("GET"));
    let (err, took) = pull_fails(&image).await;
    let msg = err.to_string();
    assert!(
        msg.contains("sent no response to GET") && msg.contains(&layer) && msg.contains("2s"),
        "{msg}"
    );
    assert!(took < BOUND + Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_reset_or_truncated_blob_fails_the_pull_at_once() {
    let registry = TestRegistry::start();
    let proxy = FaultyProxy::start(registry.addr());
    let image = image_behind(&registry, &proxy).await;
    let layer = image.manifest.layers[0].digest.to_string();
    for fault in [
        Fault::ResetAfter(100 << 10),
        Fault::TruncateAfter(100 << 10),
    ] {
        proxy.clear();
        proxy.add(Rule::path(&layer).method("GET").fault(fault));
        let (err, took) = pull_fails(&image).await;
        let msg = err.to_string();
        assert!(msg.contains(&layer), "{fault:?}: {msg}");
        assert!(took < BOUND, "{fault:?}: took {took:?}");
    }
}

#[tokio::test]
async fn a_slow_but_steady_registry_is_not_cut_off() {
    let registry = TestRegistry::start();
    let proxy = FaultyProxy::start(registry.addr());
    let image = image_behind(&registry, &proxy).await;
    // Headers later than nothing, but within the bound.
    proxy.add(Rule::path("/blobs/").fault(Fault::Delay(BOUND / 2)));
    let dir = tempfile::tempdir().unwrap();
    pull::unpack_image(
        &quick_client(),
        &image,
        &dir.path().join("rootfs"),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("rootfs/big")).unwrap(),
        noise(4 << 20, 7)
    );
}
