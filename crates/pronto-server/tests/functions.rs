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
                    "command": ["/app"], "args": ["--port", "8080"], "port": 8080,
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
                "command": ["/app"], "args": ["--port", "8080"], "port": 8080,
                "accelerationType": "None",
            },
            "memorySize": 1024, "cpu": 1.5, "timeout": 300, "instanceConcurrency": 10,
            "environmentVariables": {"GREETING": "hi", "_X1": ""},
            "initializationTimeout": 45, "authType": "anonymous",
            "maxInstances": 3, "idleTimeout": 120,
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

    // Partial update: only the given fields change; lists and the env map are replaced whole.
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
    want["customContainerConfig"]["args"] = json!([]);
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
    assert_eq!(f["customContainerConfig"]["command"], json!([]));
    assert_eq!(f["customContainerConfig"]["args"], json!([]));
    assert_eq!(f["memorySize"], 512);
    assert_eq!(f["cpu"], 0.35);
    assert_eq!(f["timeout"], 60);
    assert_eq!(f["instanceConcurrency"], 1);
    assert_eq!(f["environmentVariables"], json!({}));
    assert_eq!(f["initializationTimeout"], 30);
    assert_eq!(f["authType"], "function");
    // accelerationType Default: a conversion job starts with the function.
    assert_eq!(f["accelerationInfo"]["status"], "Preparing", "{f}");
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
