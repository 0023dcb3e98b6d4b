//! Function CRUD against a real server and a real registry.

mod common;

use std::time::Duration;

use common::{assert_error, Env, FUNCTIONS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn crud_round_trip() {
    let env = Env::start().await;
    let digest = env.push("team/app:v1", b"v1").await;
    let image = env.image("team/app:v1");
    let created = env
        .create(
            "hello",
            &image,
            json!({
                "description": "says hello",
                "runtime": "custom-container",
                "customContainerConfig": {
                    "entrypoint": ["/app"], "command": ["--port", "8080"], "port": 8080,
                    "accelerationType": "None",
                },
                "memorySize": 1024, "cpu": 1.5, "timeout": 300, "instanceConcurrency": 10,
                "environmentVariables": {"GREETING": "hi", "_X1": ""},
                "initializationTimeout": 45, "authType": "anonymous",
                "maxInstances": 3, "idleTimeout": 120,
            }),
        )
        .await;
    let id = created["functionId"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let t = created["createdTime"].as_str().unwrap().to_string();
    assert_eq!(created["lastModifiedTime"], t.as_str());
    assert_eq!(
        created,
        json!({
            "functionId": id, "functionName": "hello", "description": "says hello",
            "runtime": "custom-container",
            "customContainerConfig": {
                "image": image,
                "resolvedImageUri": format!("{}/team/app@{digest}", env.registry.host()),
                "entrypoint": ["/app"], "command": ["--port", "8080"], "port": 8080,
                "accelerationType": "None",
            },
            "memorySize": 1024, "cpu": 1.5, "timeout": 300, "instanceConcurrency": 10,
            "environmentVariables": {"GREETING": "hi", "_X1": ""},
            "initializationTimeout": 45, "authType": "anonymous",
            "maxInstances": 3, "idleTimeout": 120, "internetAccess": true,
            "state": "Active", "lastUpdateStatus": "Successful", "diskSize": 512,
            "createdTime": t, "lastModifiedTime": t,
        })
    );

    let got = env
        .call(Method::GET, "/2023-03-30/functions/hello", None)
        .await;
    assert_eq!((got.status, &got.body), (StatusCode::OK, &created));
    let list = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(
        (list.status, &list.body),
        (StatusCode::OK, &json!({"functions": [created.clone()]}))
    );

    // Partial update: only the given fields change; lists and the env map are replaced whole
    // (`args`, Pronto's older name of `command`, still sets it).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let updated = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/hello",
            Some(json!({
                "functionName": "hello",
                "memorySize": 2048,
                "customContainerConfig": {"args": []},
                "environmentVariables": {"ONLY": "this"},
            })),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let mut want = created.clone();
    want["memorySize"] = json!(2048);
    want["customContainerConfig"]["command"] = json!([]);
    want["environmentVariables"] = json!({"ONLY": "this"});
    want["lastModifiedTime"] = updated.body["lastModifiedTime"].clone();
    assert_eq!(updated.body, want);
    assert!(updated.body["lastModifiedTime"].as_str().unwrap() > t.as_str());
    let got = env
        .call(Method::GET, "/2023-03-30/functions/hello", None)
        .await;
    assert_eq!(got.body, updated.body);

    // An empty patch changes nothing but the modification time.
    let same = env
        .call(Method::PUT, "/2023-03-30/functions/hello", Some(json!({})))
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body["memorySize"], 2048);

    let deleted = env
        .call(Method::DELETE, "/2023-03-30/functions/hello", None)
        .await;
    assert_eq!(
        (deleted.status, deleted.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    let gone = env
        .call(Method::GET, "/2023-03-30/functions/hello", None)
        .await;
    assert_error(
        &gone,
        StatusCode::NOT_FOUND,
        "FunctionNotFound",
        "function hello not found",
    );
    let list = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(list.body, json!({"functions": []}));
}

#[tokio::test]
async fn defaults_are_applied_and_shown() {
    let env = Env::start().await;
    env.push("app:latest", b"x").await;
    // No tag means :latest, as with docker.
    let f = env.create("minimal", &env.image("app"), json!({})).await;
    assert_eq!(f["description"], "");
    assert_eq!(f["runtime"], "custom-container");
    assert_eq!(f["customContainerConfig"]["port"], 9000);
    assert_eq!(f["customContainerConfig"]["accelerationType"], "Default");
    assert_eq!(f["customContainerConfig"]["entrypoint"], json!([]));
    assert_eq!(f["customContainerConfig"]["command"], json!([]));
    assert!(f["customContainerConfig"].get("args").is_none(), "{f}");
    assert!(f["customContainerConfig"]
        .get("healthCheckConfig")
        .is_none());
    assert_eq!(f["internetAccess"], true);
    assert!(f.get("ignoredFields").is_none(), "{f}");
    assert_eq!(f["memorySize"], 512);
    assert_eq!(f["cpu"], 0.35);
    assert_eq!(f["timeout"], 60);
    assert_eq!(f["instanceConcurrency"], 1);
    assert_eq!(f["environmentVariables"], json!({}));
    assert_eq!(f["initializationTimeout"], 30);
    assert_eq!(f["authType"], "function");
    // accelerationType Default: a conversion job starts with the function; its state is
    // inside customContainerConfig (Function Compute 3.0) and at the top level (older
    // clients).
    assert_eq!(f["accelerationInfo"]["status"], "Preparing", "{f}");
    assert_eq!(
        f["customContainerConfig"]["accelerationInfo"],
        f["accelerationInfo"]
    );
}

#[tokio::test]
async fn tag_is_pinned_at_create_and_re_resolved_when_the_image_is_given_again() {
    let env = Env::start().await;
    let host = env.registry.host();
    let first = env.push("app:v1", b"first").await;
    let image = env.image("app:v1");
    let f = env.create("pinned", &image, json!({})).await;
    assert_eq!(
        f["customContainerConfig"]["resolvedImageUri"],
        format!("{host}/app@{first}")
    );

    // The tag moves.
    let second = env.push("app:v1", b"second").await;
    assert_ne!(first, second);
    let got = env
        .call(Method::GET, "/2023-03-30/functions/pinned", None)
        .await;
    assert_eq!(
        got.body["customContainerConfig"]["resolvedImageUri"],
        format!("{host}/app@{first}")
    );
    // An update that does not name the image keeps the pin.
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/pinned",
            Some(json!({"description": "still first"})),
        )
        .await;
    assert_eq!(
        r.body["customContainerConfig"]["resolvedImageUri"],
        format!("{host}/app@{first}")
    );
    // Naming the same image resolves the tag again.
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/pinned",
            Some(json!({"customContainerConfig": {"image": image}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["customContainerConfig"]["image"], image.as_str());
    assert_eq!(
        r.body["customContainerConfig"]["resolvedImageUri"],
        format!("{host}/app@{second}")
    );
    assert_eq!(r.body["description"], "still first");

    // A digest reference pins to itself.
    let by_digest = format!("{host}/app@{first}");
    let f = env.create("by-digest", &by_digest, json!({})).await;
    assert_eq!(f["customContainerConfig"]["resolvedImageUri"], by_digest);
}

#[tokio::test]
async fn list_filters_by_prefix_and_pages() {
    let env = Env::start().await;
    env.push("app:v1", b"x").await;
    let image = env.image("app:v1");
    for name in ["svc-b", "svc-a", "svc_c", "other", "SVC-d"] {
        env.create(name, &image, json!({})).await;
    }
    let names = |v: &Value| -> Vec<String> {
        v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["functionName"].as_str().unwrap().to_string())
            .collect()
    };
    let all = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(
        names(&all.body),
        ["SVC-d", "other", "svc-a", "svc-b", "svc_c"]
    );
    assert!(all.body.get("nextToken").is_none());

    let svc = env
        .call(Method::GET, &format!("{FUNCTIONS}?prefix=svc"), None)
        .await;
    assert_eq!(names(&svc.body), ["svc-a", "svc-b", "svc_c"]);
    // `_` is literal, not a wildcard.
    let underscore = env
        .call(Method::GET, &format!("{FUNCTIONS}?prefix=svc_"), None)
        .await;
    assert_eq!(names(&underscore.body), ["svc_c"]);

    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("{FUNCTIONS}?prefix=svc&limit=2");
        if let Some(t) = &next {
            path.push_str(&format!("&nextToken={t}"));
        }
        let page = env.call(Method::GET, &path, None).await;
        assert_eq!(page.status, StatusCode::OK);
        let n = names(&page.body);
        assert!(n.len() <= 2);
        seen.extend(n);
        match page.body.get("nextToken") {
            Some(t) => next = Some(t.as_str().unwrap().to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["svc-a", "svc-b", "svc_c"]);

    for bad in ["0", "101", "x", "-1"] {
        let r = env
            .call(Method::GET, &format!("{FUNCTIONS}?limit={bad}"), None)
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            &format!("limit: must be an integer between 1 and 100, got \"{bad}\""),
        );
    }
}

/// Create, get, list and update with Function Compute 3.0 bodies, fields and nesting as its
/// API reference documents them (CreateFunctionInput, CustomContainerConfig,
/// CustomHealthCheckConfig): what Pronto acts on is applied, what it does not is kept, shown
/// back and listed in `ignoredFields`.
#[tokio::test]
async fn a_function_compute_3_body_is_taken_and_shown_back() {
    let env = Env::start().await;
    let digest = env.push("fc/app:v1", b"fc3").await;
    let image = env.image("fc/app:v1");
    let log_config = json!({
        "project": "test-project", "logstore": "test-logstore", "logBeginRule": "DefaultRegex",
        "enableInstanceMetrics": true, "enableRequestMetrics": true,
    });
    let body = json!({
        "functionName": "fc3",
        "description": "my function",
        "runtime": "custom-container",
        "handler": "index.handler",
        "role": "acs:ram::188077086902****:role/fc-test",
        "cpu": 1,
        "memorySize": 2048,
        "diskSize": 10240,
        "timeout": 60,
        "instanceConcurrency": 10,
        "internetAccess": true,
        "environmentVariables": {"key": "value1"},
        "customContainerConfig": {
            "image": image,
            "entrypoint": ["/code/bootstrap"],
            "command": ["arg1"],
            "port": 9000,
            "acrInstanceId": "cri-xxxxxxxxxx",
            "healthCheckConfig": {
                "httpGetUrl": "/ready", "initialDelaySeconds": 1, "periodSeconds": 1,
                "timeoutSeconds": 2, "failureThreshold": 1, "successThreshold": 2,
            },
        },
        "logConfig": log_config,
        "tracingConfig": {"type": "Jaeger", "params": {"endpoint": "http://tracing"}},
        "vpcConfig": {"vpcId": "", "vSwitchIds": [], "securityGroupId": ""},
        "nasConfig": {"userId": 0, "groupId": 0, "mountPoints": []},
        "ossMountConfig": {"mountPoints": []},
        "layers": [],
        "gpuConfig": {"gpuMemorySize": 0, "gpuType": ""},
        "instanceLifecycleConfig": {
            "initializer": {"handler": "", "timeout": 3},
            "preStop": {"handler": "", "timeout": 3},
        },
    });
    let r = env.call(Method::POST, FUNCTIONS, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let f = r.body;
    let cc = &f["customContainerConfig"];
    assert_eq!(cc["entrypoint"], json!(["/code/bootstrap"]));
    assert_eq!(cc["command"], json!(["arg1"]));
    assert_eq!(
        cc["healthCheckConfig"],
        body["customContainerConfig"]["healthCheckConfig"]
    );
    assert_eq!(cc["acrInstanceId"], "cri-xxxxxxxxxx");
    assert_eq!(
        cc["resolvedImageUri"],
        format!("{}/fc/app@{digest}", env.registry.host())
    );
    assert_eq!(cc["accelerationInfo"]["status"], "Preparing", "{f}");
    assert_eq!(f["diskSize"], 10240);
    assert_eq!(f["memorySize"], 2048);
    assert_eq!(f["internetAccess"], true);
    assert_eq!(
        f["ignoredFields"],
        json!([
            "customContainerConfig.acrInstanceId",
            "gpuConfig",
            "handler",
            "instanceLifecycleConfig",
            "layers",
            "logConfig",
            "nasConfig",
            "ossMountConfig",
            "role",
            "tracingConfig",
            "vpcConfig",
        ])
    );
    for name in [
        "role",
        "handler",
        "logConfig",
        "tracingConfig",
        "vpcConfig",
        "layers",
    ] {
        assert_eq!(f[name], body[name], "{name} is shown back as given");
    }

    // The conversion may end meanwhile: compared without its state, which is the same in
    // both places.
    let settled = |mut v: Value| {
        assert_eq!(
            v["customContainerConfig"]["accelerationInfo"], v["accelerationInfo"],
            "{v}"
        );
        v["customContainerConfig"]["accelerationInfo"].take();
        v["accelerationInfo"].take();
        v
    };
    let got = env
        .call(Method::GET, "/2023-03-30/functions/fc3", None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(settled(got.body), settled(f.clone()));
    let list = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(
        settled(list.body["functions"][0].clone()),
        settled(f.clone())
    );

    // UpdateFunction with 3.0 fields: a new health check (defaults for what is left out), no
    // internet, another role; the rest stays.
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/fc3",
            Some(json!({
                "internetAccess": false,
                "role": "acs:ram::1:role/other",
                "customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/healthz"}},
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let u = r.body;
    assert_eq!(u["internetAccess"], false);
    assert_eq!(u["role"], "acs:ram::1:role/other");
    assert_eq!(u["logConfig"], log_config);
    assert_eq!(
        u["customContainerConfig"]["healthCheckConfig"],
        json!({
            "httpGetUrl": "/healthz", "initialDelaySeconds": 0, "periodSeconds": 3,
            "timeoutSeconds": 1, "failureThreshold": 3, "successThreshold": 1,
        })
    );
    assert_eq!(
        u["customContainerConfig"]["entrypoint"],
        json!(["/code/bootstrap"])
    );
    assert!(
        u["customContainerConfig"]["accelerationInfo"].is_object(),
        "{u}"
    );
    // An empty httpGetUrl removes the health check.
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/fc3",
            Some(json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": ""}}})),
        )
        .await;
    assert!(
        r.body["customContainerConfig"]
            .get("healthCheckConfig")
            .is_none(),
        "{}",
        r.body
    );
    // Persisted as shown.
    let got = env
        .call(Method::GET, "/2023-03-30/functions/fc3", None)
        .await;
    assert_eq!(got.body["internetAccess"], false);
    assert!(got.body["customContainerConfig"]
        .get("healthCheckConfig")
        .is_none());
}
