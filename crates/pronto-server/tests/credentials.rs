//! Per-function registry credentials and artifact repositories, against real registries
//! (htpasswd and token auth, a read-only one): create, invoke, accelerate, lazy cold start;
//! the secret is in no API response and no log line; a function without credentials cannot
//! start a private image another function put on the node; bad credentials are named.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Env, FUNCTIONS};
use pronto_image::auth::{CredentialStore, Credentials};
use pronto_image::{ClientOptions, Reference, RegistryClient};
use pronto_testkit::image::{httpd_image, Layer};
use pronto_testkit::registry::{RegistryAuth, TestRegistry};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CREDENTIALS: &str = "/2023-03-30/registry-credentials";
const PASSWORD: &str = "Pw-7d3f1c-never-shown";

/// The daemon's log output, captured for this test binary.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    common::captured_logs("debug")
}

fn logs() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap()).into_owned()
}

fn client_with(registry: &TestRegistry, password: &str) -> RegistryClient {
    let mut credentials = CredentialStore::default();
    credentials.insert(
        &registry.host(),
        Credentials {
            username: "alice".into(),
            password: password.into(),
        },
    );
    RegistryClient::new(ClientOptions {
        credentials,
        ..Default::default()
    })
    .unwrap()
}

/// Every body the test saw, to check for the secret at the end.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    async fn call(&self, env: &Env, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = env.call(method, path, body).await;
        self.0.lock().unwrap().push(r.body.to_string());
        json!({"status": r.status.as_u16(), "body": r.body})
    }

    async fn invoke(&self, env: &Env, name: &str) -> (StatusCode, String, String) {
        let url = format!(
            "http://{}/invoke/{name}/index.html",
            env.server().invoke_addr
        );
        let r = env
            .http
            .get(url)
            .bearer_auth(env.token())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let timing = r
            .headers()
            .get("x-pronto-cold-start")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        self.0.lock().unwrap().push(text.clone());
        (status, timing, text)
    }

    fn assert_no(&self, secret: &str) {
        for body in self.0.lock().unwrap().iter() {
            assert!(
                !body.contains(secret),
                "a response holds the secret: {body}"
            );
        }
    }
}

async fn wait_status(env: &Env, name: &str, want: &str) -> Value {
    for _ in 0..300 {
        let r = env
            .call(Method::GET, &format!("{FUNCTIONS}/{name}"), None)
            .await;
        let a = r.body["accelerationInfo"].clone();
        if a["status"] == want {
            return a;
        }
        assert!(a["status"] == "Preparing", "{name}: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want}");
}

async fn private_registry_flow(auth: fn(String) -> RegistryAuth) {
    let logs_before = logs().len();
    let registry = TestRegistry::start_with(Some(auth(PASSWORD.into()))).unwrap();
    let host = registry.host();
    let reference = registry.reference("private/app:v1");
    let pusher = client_with(&registry, PASSWORD);
    httpd_image(
        Layer::gzip()
            .dir("www")
            .file("www/index.html", b"private hello\n"),
    )
    .push(&pusher, &reference)
    .await
    .unwrap();
    // The daemon has no credentials of its own for this registry.
    let mut env = Env::start_on(registry, ClientOptions::default(), |_| {}).await;
    let image = format!("{host}/private/app:v1");
    let seen = Seen::default();

    // A named credential: created, listed, shown, never with its password.
    let r = seen
        .call(
            &env,
            Method::POST,
            CREDENTIALS,
            Some(json!({"credentialName": "team-reg", "registry": host, "userName": "alice", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["body"]["userName"], "alice", "{r}");
    let r = seen.call(&env, Method::GET, CREDENTIALS, None).await;
    assert_eq!(r["body"]["credentials"][0]["credentialName"], "team-reg");
    let r = seen
        .call(&env, Method::GET, &format!("{CREDENTIALS}/team-reg"), None)
        .await;
    assert_eq!(r["body"]["registry"], host.as_str(), "{r}");

    // Inline credentials (Function Compute 3.0's authConfig): create, invoke (full pull).
    let r = seen
        .call(
            &env,
            Method::POST,
            FUNCTIONS,
            Some(json!({"functionName": "inline", "customContainerConfig": {
                "image": image, "accelerationType": "None",
                "registryConfig": {"authConfig": {"userName": "alice", "password": PASSWORD}}}})),
        )
        .await;
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(
        r["body"]["customContainerConfig"]["registryConfig"],
        json!({"authConfig": {"userName": "alice"}})
    );
    let (status, timing, text) = seen.invoke(&env, "inline").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "private hello\n"));
    assert!(timing.contains("rootfs=pulled"), "{timing}");

    // Accelerate it, and a function with the named credential: both Ready (one conversion).
    let r = seen
        .call(
            &env,
            Method::PUT,
            &format!("{FUNCTIONS}/inline"),
            Some(json!({"customContainerConfig": {"accelerationType": "Default"}})),
        )
        .await;
    assert_eq!(r["status"], 200, "{r}");
    let r = seen
        .call(
            &env,
            Method::POST,
            FUNCTIONS,
            Some(json!({"functionName": "named", "customContainerConfig": {
                "image": image, "registryConfig": {"credentialName": "team-reg"}}})),
        )
        .await;
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(
        r["body"]["customContainerConfig"]["registryConfig"],
        json!({"credentialName": "team-reg"})
    );
    wait_status(&env, "inline", "Ready").await;
    wait_status(&env, "named", "Ready").await;

    // Lazy cold starts (after a restart: fresh token caches), each with its own credentials.
    env.restart().await;
    for name in ["named", "inline"] {
        let (status, timing, text) = seen.invoke(&env, name).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::OK, "private hello\n"),
            "{name}"
        );
        assert!(timing.contains("rootfs=lazy"), "{name}: {timing}");
    }

    // Functions without credentials, on the same digest: made with credentials, then the
    // credentials removed (an update that does not re-pin). With `named`'s instance alive,
    // the lazy mount is on the node; the pulled tree too (marked private).
    for (name, accel) in [("anon-lazy", "Default"), ("anon-pull", "None")] {
        let r = seen
            .call(
                &env,
                Method::POST,
                FUNCTIONS,
                Some(json!({"functionName": name, "customContainerConfig": {
                    "image": image, "accelerationType": accel,
                    "registryConfig": {"credentialName": "team-reg"}}})),
            )
            .await;
        assert_eq!(r["status"], 201, "{r}");
        if accel == "Default" {
            wait_status(&env, name, "Ready").await;
        }
        let r = seen
            .call(
                &env,
                Method::PUT,
                &format!("{FUNCTIONS}/{name}"),
                Some(json!({"customContainerConfig": {"registryConfig": {}}})),
            )
            .await;
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            r["body"]["customContainerConfig"]
                .get("registryConfig")
                .is_none(),
            "{r}"
        );
        let (status, _, text) = seen.invoke(&env, name).await;
        eprintln!("{name} without credentials: {status} {text}");
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}: {text}");
        assert!(
            text.contains("authentication failed") && text.contains(&host),
            "{name}: {text}"
        );
    }
    // The one with credentials still serves.
    let (status, _, _) = seen.invoke(&env, "named").await;
    assert_eq!(status, StatusCode::OK);

    // Every view of every function, and the database's mode.
    let r = seen.call(&env, Method::GET, FUNCTIONS, None).await;
    assert_eq!(r["body"]["functions"].as_array().unwrap().len(), 4, "{r}");
    for name in ["inline", "named"] {
        seen.call(&env, Method::GET, &format!("{FUNCTIONS}/{name}"), None)
            .await;
        seen.call(&env, Method::GET, &format!("{FUNCTIONS}/{name}/logs"), None)
            .await;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.data_dir().join("pronto.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "pronto.db is {mode:o}");
    seen.assert_no(PASSWORD);
    let logged = logs();
    assert!(logged.len() > logs_before, "no log captured");
    assert!(
        !logged.contains(PASSWORD),
        "the password is in the daemon's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_with_per_function_credentials() {
    captured();
    private_registry_flow(|password| RegistryAuth::Basic {
        username: "alice".into(),
        password,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_registry_with_per_function_credentials() {
    captured();
    private_registry_flow(|password| RegistryAuth::Token {
        username: "alice".into(),
        password,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_credentials_and_wrong_passwords_are_named_never_shown() {
    captured();
    let registry = TestRegistry::start_with(Some(RegistryAuth::Basic {
        username: "alice".into(),
        password: PASSWORD.into(),
    }))
    .unwrap();
    let host = registry.host();
    httpd_image(Layer::gzip().dir("www").file("www/index.html", b"x\n"))
        .push(
            &client_with(&registry, PASSWORD),
            &registry.reference("private/bad:v1"),
        )
        .await
        .unwrap();
    let mut env = Env::start_on(registry, ClientOptions::default(), |_| {}).await;
    let image = format!("{host}/private/bad:v1");
    let seen = Seen::default();
    const WRONG: &str = "Wrong-9b1e-password";

    // An unknown credential name: 400 naming it.
    let r = seen
        .call(
            &env,
            Method::POST,
            FUNCTIONS,
            Some(json!({"functionName": "f", "customContainerConfig": {
                "image": image, "registryConfig": {"credentialName": "nope"}}})),
        )
        .await;
    assert_eq!(r["status"], 400, "{r}");
    let message = r["body"]["message"].as_str().unwrap();
    assert!(
        message.contains("credentialName") && message.contains("\"nope\""),
        "{message}"
    );
    // Both kinds at once, and half an authConfig: 400 naming the field.
    for (registry_config, field) in [
        (
            json!({"credentialName": "x", "authConfig": {"userName": "a", "password": "b"}}),
            "registryConfig",
        ),
        (
            json!({"authConfig": {"userName": "a"}}),
            "authConfig.password",
        ),
        (json!({"certConfig": {"insecure": true}}), "certConfig"),
    ] {
        let r = seen
            .call(
                &env,
                Method::POST,
                FUNCTIONS,
                Some(json!({"functionName": "f", "customContainerConfig": {
                    "image": image, "registryConfig": registry_config}})),
            )
            .await;
        assert_eq!(r["status"], 400, "{r}");
        assert!(
            r["body"]["message"].as_str().unwrap().contains(field),
            "{r}"
        );
    }
    // Credentials are checked when the image is pinned: a wrong password is a 400 that says
    // authentication failed at that registry.
    let r = seen
        .call(
            &env,
            Method::POST,
            FUNCTIONS,
            Some(json!({"functionName": "f", "customContainerConfig": {
                "image": image, "registryConfig": {"authConfig": {"userName": "alice", "password": WRONG}}}})),
        )
        .await;
    assert_eq!(r["status"], 400, "{r}");
    let message = r["body"]["message"].as_str().unwrap();
    assert!(
        message.contains("authentication failed") && message.contains(&host),
        "{message}"
    );
    // A credential whose password goes wrong after the function was made: its acceleration
    // fails, and so does its next cold start, each saying why and where.
    let cred = |password: &str| json!({"credentialName": "rotated", "registry": host, "userName": "alice", "password": password});
    let r = seen
        .call(&env, Method::POST, CREDENTIALS, Some(cred(PASSWORD)))
        .await;
    assert_eq!(r["status"], 201, "{r}");
    let r = seen
        .call(&env, Method::POST, CREDENTIALS, Some(cred(PASSWORD)))
        .await;
    assert_eq!(r["status"], 409, "{r}");
    assert_eq!(r["body"]["code"], "CredentialAlreadyExists", "{r}");
    let r = seen
        .call(
            &env,
            Method::POST,
            FUNCTIONS,
            Some(json!({"functionName": "rot", "customContainerConfig": {
                "image": image, "accelerationType": "None",
                "registryConfig": {"credentialName": "rotated"}}})),
        )
        .await;
    assert_eq!(r["status"], 201, "{r}");
    let r = seen
        .call(
            &env,
            Method::DELETE,
            &format!("{CREDENTIALS}/rotated"),
            None,
        )
        .await;
    assert_eq!(r["status"], 204, "{r}");
    let r = seen
        .call(&env, Method::GET, &format!("{CREDENTIALS}/rotated"), None)
        .await;
    assert_eq!(r["status"], 404, "{r}");
    let r = seen
        .call(&env, Method::POST, CREDENTIALS, Some(cred(WRONG)))
        .await;
    assert_eq!(r["status"], 201, "{r}");
    let r = seen
        .call(
            &env,
            Method::PUT,
            &format!("{FUNCTIONS}/rot"),
            Some(json!({"customContainerConfig": {"accelerationType": "Default"}})),
        )
        .await;
    assert_eq!(r["status"], 200, "{r}");
    let failed = wait_status(&env, "rot", "Failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("authentication failed") && reason.contains(&host),
        "{reason}"
    );
    env.restart().await;
    let (status, _, text) = seen.invoke(&env, "rot").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(
        text.contains("authentication failed") && text.contains(&host),
        "{text}"
    );
    seen.assert_no(PASSWORD);
    seen.assert_no(WRONG);
    let logged = logs();
    assert!(!logged.contains(PASSWORD) && !logged.contains(WRONG));
}

/// The artifact repository of the server (`--artifact-repository`), set by the test that
/// starts that server (a config tweak is a plain `fn`).
static ARTIFACTS: OnceLock<Reference> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_source_is_accelerated_through_the_artifact_repository() {
    captured();
    let mut source = TestRegistry::start();
    let artifacts = TestRegistry::start();
    let anonymous = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = source.reference("public/app:v1");
    httpd_image(
        Layer::gzip()
            .dir("www")
            .file("www/index.html", b"read only\n"),
    )
    .push(&anonymous, &reference)
    .await
    .unwrap();
    source.make_read_only().unwrap();
    let image = format!("{}/public/app:v1", source.host());
    ARTIFACTS
        .set(
            pronto_artifact::parse_repository(&format!("{}/pronto/artifacts", artifacts.host()))
                .unwrap(),
        )
        .unwrap();
    let env = Env::start_on(source, ClientOptions::default(), |c| {
        c.artifact_repository = ARTIFACTS.get().cloned();
    })
    .await;
    let seen = Seen::default();

    // The server's artifact repository, and a function's own: both Ready.
    env.create("ro", &image, json!({})).await;
    let own = format!("{}/team/accelerated", artifacts.host());
    env.create(
        "ro-own",
        &image,
        json!({"customContainerConfig": {"image": image, "artifactRepository": own}}),
    )
    .await;
    // Pushing beside the image, as before: refused by the read-only registry.
    env.create(
        "beside",
        &image,
        json!({"customContainerConfig": {"image": image,
            "artifactRepository": format!("{}/public/app", env.registry.host())}}),
    )
    .await;
    let ready = wait_status(&env, "ro", "Ready").await;
    let artifact = ready["artifact"].as_str().unwrap();
    assert!(
        artifact.starts_with(&format!("{}/pronto/artifacts:sha256-", artifacts.host())),
        "{artifact}"
    );
    let ready = wait_status(&env, "ro-own", "Ready").await;
    assert!(
        ready["artifact"].as_str().unwrap().starts_with(&own),
        "{ready}"
    );
    let failed = wait_status(&env, "beside", "Failed").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("405"),
        "{failed}"
    );
    let r = seen
        .call(&env, Method::GET, &format!("{FUNCTIONS}/ro-own"), None)
        .await;
    assert_eq!(
        r["body"]["customContainerConfig"]["artifactRepository"],
        own.as_str()
    );

    // Lazy cold starts read the artifact from its repository.
    for name in ["ro", "ro-own"] {
        let (status, timing, text) = seen.invoke(&env, name).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::OK, "read only\n"),
            "{name}"
        );
        assert!(timing.contains("rootfs=lazy"), "{name}: {timing}");
    }

    // The artifact names the source as its subject and verifies against it (what
    // `pronto image verify --artifact-repository` runs).
    let resolved =
        pronto_image::pull::resolve(&anonymous, &env.registry.reference("public/app:v1"))
            .await
            .unwrap();
    let repo = ARTIFACTS.get().unwrap();
    let fetched = pronto_artifact::fetch_artifact_in(&anonymous, &resolved, repo)
        .await
        .unwrap();
    assert_eq!(fetched.reference.registry, artifacts.host());
    let work = tempfile::tempdir().unwrap();
    let report = pronto_convert::verify(&anonymous, &resolved, Some(repo), work.path())
        .await
        .unwrap();
    assert!(report.files > 0);
    // Bad repositories are refused by name.
    let r = seen
        .call(
            &env,
            Method::PUT,
            &format!("{FUNCTIONS}/ro"),
            Some(json!({"customContainerConfig": {"artifactRepository": "x.io/repo:tag"}})),
        )
        .await;
    assert_eq!(r["status"], 400, "{r}");
    assert!(
        r["body"]["message"]
            .as_str()
            .unwrap()
            .contains("customContainerConfig.artifactRepository"),
        "{r}"
    );
    drop(artifacts);
}
