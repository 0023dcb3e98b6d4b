//! `openapi.yaml` and the server agree: every documented response is produced by the running
//! server and its body matches the documented schema; every route the router serves is
//! documented (and nothing more); and the request schemas accept and refuse what the server does.

mod common;

use std::collections::BTreeSet;

use common::{Env, FUNCTIONS};
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// For `nc -ll -e`: reads the request and answers 200 with a JSON body (InvokeFunction's
/// `/invoke`).
const INVOKE_HANDLER: &str = r#"#!/bin/sh
len=0
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$(printf '%s' "${line%%:*}" | tr 'A-Z' 'a-z')" in
    content-length) len=${line#*: } ;;
  esac
done
head -c "$len" > /dev/null
printf 'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
"#;

fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let doc: Value = serde_json::to_value(yaml).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "3.1 schemas are JSON Schema 2020-12, which is what this test validates with"
    );
    doc
}

/// Follows a local `$ref` (`#/components/...`) if `v` is one.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// A validator for `schema`, resolving its `$ref`s into the document's components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let wrapped = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&wrapped)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

fn errors(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    validator(doc, schema)
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// `(path, method, status)` of every documented response but `default`.
fn documented(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            for status in op["responses"].as_object().unwrap().keys() {
                if status != "default" {
                    out.insert((path.clone(), method.to_string(), status.clone()));
                }
            }
        }
    }
    out
}

/// The JSON request body's schema, if the operation takes JSON.
fn request_schema<'a>(doc: &'a Value, path: &str, method: &str) -> Option<&'a Value> {
    doc["paths"][path][method]
        .get("requestBody")
        .and_then(|b| b["content"].get("application/json"))
        .map(|m| &m["schema"])
}

struct Case {
    method: Method,
    template: &'static str,
    path: String,
    auth: bool,
    body: Option<Value>,
    status: StatusCode,
}

fn case(
    method: Method,
    template: &'static str,
    path: &str,
    auth: bool,
    body: Option<Value>,
    status: u16,
) -> Case {
    Case {
        method,
        template,
        path: path.to_string(),
        auth,
        body,
        status: StatusCode::from_u16(status).unwrap(),
    }
}

#[tokio::test]
async fn every_documented_response_is_served_as_documented() {
    let doc = load();
    let env = Env::start().await;
    env.push("app:v1", b"x").await;
    let image = env.image("app:v1");
    // A function that serves: InvokeFunction's `/invoke` answers 200 with the event.
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(Layer::gzip().file("invoke.sh", INVOKE_HANDLER).mode(0o755))
        .entrypoint(&["/bin/nc", "-ll", "-p", "9000", "-e", "/invoke.sh"])
        .push(&env.client, &env.registry.reference("served:v1"))
        .await
        .unwrap();
    env.create(
        "served",
        &env.image("served:v1"),
        json!({"customContainerConfig": {"accelerationType": "None"}}),
    )
    .await;
    // Accelerated, and its first (lazy) cold start recorded a trace: what explain needs.
    env.create("explained", &env.image("served:v1"), json!({}))
        .await;
    let explained = "/2023-03-30/functions/explained";
    let mut waited = 0;
    loop {
        let f = env.call(Method::GET, explained, None).await.body;
        match f["accelerationInfo"]["status"].as_str() {
            Some("Ready") => break,
            Some("Preparing") if waited < 300 => {}
            _ => panic!("acceleration never became Ready: {f}"),
        }
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = env
        .call(
            Method::POST,
            &format!("{explained}/invocations"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for tries in 0.. {
        let f = env.call(Method::GET, explained, None).await.body;
        if f["accessTrace"]["chunks"].is_u64() {
            break;
        }
        assert!(tries < 300, "no access trace recorded: {f}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let explain = "/2023-03-30/functions/{functionName}/explain";
    let invocations = "/2023-03-30/functions/{functionName}/invocations";
    let one = "/2023-03-30/functions/{functionName}";
    let logs = "/2023-03-30/functions/{functionName}/logs";
    let trace = "/2023-03-30/functions/{functionName}/access-trace";
    let versions = "/2023-03-30/functions/{functionName}/versions";
    let version = "/2023-03-30/functions/{functionName}/versions/{versionId}";
    let aliases = "/2023-03-30/functions/{functionName}/aliases";
    let alias = "/2023-03-30/functions/{functionName}/aliases/{aliasName}";
    let provision = "/2023-03-30/functions/{functionName}/provision-config";
    let provisions = "/2023-03-30/provision-configs";
    let vs = |f: &str| format!("/2023-03-30/functions/{f}/versions");
    let al = |f: &str| format!("/2023-03-30/functions/{f}/aliases");
    let pc = |f: &str, q: &str| format!("/2023-03-30/functions/{f}/provision-config?qualifier={q}");
    let all = FUNCTIONS;
    let creds = "/2023-03-30/registry-credentials";
    let cred_one = "/2023-03-30/registry-credentials/{credentialName}";
    let registry_host = env.registry.host();
    let cred = |name: &str| json!({"credentialName": name, "registry": registry_host, "userName": "u", "password": "p"});
    let new = |name: &str| json!({"functionName": name, "customContainerConfig": {"image": image}});
    let full = json!({
        "functionName": "full", "description": "d", "runtime": "custom-container",
        "customContainerConfig": {
            "image": image, "entrypoint": ["/app"], "command": ["a"], "port": 8080,
            "accelerationType": "None", "acrInstanceId": "cri-1",
            "healthCheckConfig": {"httpGetUrl": "/ready", "periodSeconds": 2},
        },
        "memorySize": 1024, "cpu": 2, "timeout": 10, "instanceConcurrency": 5,
        "environmentVariables": {"A": "b"}, "initializationTimeout": 5, "authType": "anonymous",
        "internetAccess": false, "handler": "index.handler", "role": "acs:ram::1:role/r",
        "logConfig": {"project": "p"}, "tracingConfig": {}, "tags": [],
        "vpcConfig": {"vpcId": "", "vSwitchIds": []}, "nasConfig": {"mountPoints": []},
        "ossMountConfig": {}, "layers": [], "gpuConfig": {"gpuMemorySize": 0},
        "customDNS": {}, "instanceLifecycleConfig": {"initializer": {"handler": "", "timeout": 3}},
    });
    use Method as M;
    let cases = [
        case(M::POST, all, all, true, Some(new("f")), 201),
        case(M::POST, all, all, true, Some(full), 201),
        case(M::POST, all, all, true, Some(new("9")), 400),
        case(
            M::POST,
            all,
            all,
            true,
            Some(
                json!({"functionName": "vpc", "customContainerConfig": {"image": image},
                "vpcConfig": {"vpcId": "vpc-1"}}),
            ),
            400,
        ),
        case(
            M::POST,
            invocations,
            "/2023-03-30/functions/served/invocations",
            true,
            Some(json!({"event": 1})),
            200,
        ),
        case(
            M::POST,
            invocations,
            "/2023-03-30/functions/served/invocations?qualifier=bad.name",
            true,
            Some(json!({})),
            400,
        ),
        case(
            M::POST,
            invocations,
            "/2023-03-30/functions/served/invocations",
            false,
            Some(json!({})),
            401,
        ),
        case(
            M::POST,
            invocations,
            "/2023-03-30/functions/nope/invocations",
            true,
            Some(json!({})),
            404,
        ),
        case(M::POST, all, all, false, Some(new("g")), 401),
        case(M::POST, all, all, true, Some(new("f")), 409),
        case(M::GET, all, all, true, None, 200),
        case(
            M::GET,
            all,
            &format!("{all}?limit=1&prefix=f"),
            true,
            None,
            200,
        ),
        case(M::GET, all, &format!("{all}?limit=1000"), true, None, 400),
        case(M::GET, all, all, false, None, 401),
        case(M::GET, one, "/2023-03-30/functions/f", true, None, 200),
        case(M::GET, one, "/2023-03-30/functions/f", false, None, 401),
        case(M::GET, one, "/2023-03-30/functions/nope", true, None, 404),
        case(
            M::GET,
            explain,
            &format!("{explained}/explain?link=1gbit,2ms"),
            true,
            None,
            200,
        ),
        case(
            M::GET,
            explain,
            &format!("{explained}/explain?link=fast"),
            true,
            None,
            400,
        ),
        case(
            M::GET,
            explain,
            &format!("{explained}/explain"),
            false,
            None,
            401,
        ),
        case(
            M::GET,
            explain,
            "/2023-03-30/functions/nope/explain",
            true,
            None,
            404,
        ),
        // Not accelerated: nothing to explain.
        case(
            M::GET,
            explain,
            "/2023-03-30/functions/served/explain",
            true,
            None,
            409,
        ),
        // No cold start yet: an empty trace (a recorded one: pronto-cli/tests/explain.rs).
        case(
            M::GET,
            trace,
            "/2023-03-30/functions/f/access-trace",
            true,
            None,
            200,
        ),
        case(
            M::GET,
            trace,
            "/2023-03-30/functions/f/access-trace",
            false,
            None,
            401,
        ),
        case(
            M::GET,
            trace,
            "/2023-03-30/functions/nope/access-trace",
            true,
            None,
            404,
        ),
        case(
            M::PUT,
            one,
            "/2023-03-30/functions/f",
            true,
            Some(json!({"memorySize": 256, "customContainerConfig": {"image": image}})),
            200,
        ),
        case(
            M::PUT,
            one,
            "/2023-03-30/functions/f",
            true,
            Some(json!({"memorySize": 100})),
            400,
        ),
        case(
            M::PUT,
            one,
            "/2023-03-30/functions/f",
            false,
            Some(json!({})),
            401,
        ),
        case(
            M::PUT,
            one,
            "/2023-03-30/functions/nope",
            true,
            Some(json!({})),
            404,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/f/logs?tail=5",
            true,
            None,
            200,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/f/logs?tail=0",
            true,
            None,
            400,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/f/logs?since=2024-05-01T12:00:00Z&requestId=r-1&instanceId=0a1b",
            true,
            None,
            200,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/f/logs?since=10m",
            true,
            None,
            400,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/f/logs",
            false,
            None,
            401,
        ),
        case(
            M::GET,
            logs,
            "/2023-03-30/functions/nope/logs",
            true,
            None,
            404,
        ),
        // Versions, aliases, provision configs.
        case(M::POST, versions, &vs("f"), true, None, 201),
        case(
            M::POST,
            versions,
            &vs("f"),
            true,
            Some(json!({"description": "second"})),
            201,
        ),
        case(
            M::POST,
            versions,
            &vs("f"),
            true,
            Some(json!({"description": "d".repeat(257)})),
            400,
        ),
        case(M::POST, versions, &vs("nope"), true, None, 404),
        case(M::POST, versions, &vs("f"), false, None, 401),
        case(M::GET, versions, &vs("f"), true, None, 200),
        case(
            M::GET,
            versions,
            &format!("{}?direction=FORWARD&limit=1", vs("f")),
            true,
            None,
            200,
        ),
        case(
            M::GET,
            versions,
            &format!("{}?direction=SIDEWAYS", vs("f")),
            true,
            None,
            400,
        ),
        case(M::GET, versions, &vs("nope"), true, None, 404),
        case(M::GET, versions, &vs("f"), false, None, 401),
        case(
            M::GET,
            one,
            "/2023-03-30/functions/f?qualifier=1",
            true,
            None,
            200,
        ),
        case(
            M::GET,
            one,
            "/2023-03-30/functions/f?qualifier=bad.name",
            true,
            None,
            400,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            true,
            Some(json!({"aliasName": "prod", "versionId": "1", "description": "p"})),
            201,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            true,
            Some(json!({"aliasName": "prod", "versionId": "1"})),
            409,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            true,
            Some(json!({"aliasName": "LATEST", "versionId": "1"})),
            400,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            true,
            Some(
                json!({"aliasName": "x", "versionId": "1", "additionalVersionWeight": {"2": 1.5}}),
            ),
            400,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            true,
            Some(json!({"aliasName": "x", "versionId": "9"})),
            404,
        ),
        case(
            M::POST,
            aliases,
            &al("f"),
            false,
            Some(json!({"aliasName": "x", "versionId": "1"})),
            401,
        ),
        case(M::GET, aliases, &al("f"), true, None, 200),
        case(
            M::GET,
            aliases,
            &format!("{}?limit=0", al("f")),
            true,
            None,
            400,
        ),
        case(M::GET, aliases, &al("nope"), true, None, 404),
        case(M::GET, aliases, &al("f"), false, None, 401),
        case(M::GET, alias, &format!("{}/prod", al("f")), true, None, 200),
        case(M::GET, alias, &format!("{}/none", al("f")), true, None, 404),
        case(
            M::GET,
            alias,
            &format!("{}/prod", al("f")),
            false,
            None,
            401,
        ),
        case(
            M::PUT,
            alias,
            &format!("{}/prod", al("f")),
            true,
            Some(json!({"additionalVersionWeight": {"2": 0.25}})),
            200,
        ),
        case(
            M::PUT,
            alias,
            &format!("{}/prod", al("f")),
            true,
            Some(json!({"additionalVersionWeight": {"2": -0.5}})),
            400,
        ),
        case(
            M::PUT,
            alias,
            &format!("{}/none", al("f")),
            true,
            Some(json!({})),
            404,
        ),
        case(
            M::PUT,
            alias,
            &format!("{}/prod", al("f")),
            false,
            Some(json!({})),
            401,
        ),
        case(
            M::PUT,
            provision,
            &pc("f", "prod"),
            true,
            Some(json!({"target": 1})),
            200,
        ),
        case(
            M::PUT,
            provision,
            &pc("f", "prod"),
            true,
            Some(json!({"target": -1})),
            400,
        ),
        case(
            M::PUT,
            provision,
            &pc("nope", "LATEST"),
            true,
            Some(json!({"target": 1})),
            404,
        ),
        case(
            M::PUT,
            provision,
            &pc("f", "prod"),
            false,
            Some(json!({"target": 1})),
            401,
        ),
        case(M::GET, provision, &pc("f", "prod"), true, None, 200),
        case(M::GET, provision, &pc("f", "bad.q"), true, None, 400),
        case(M::GET, provision, &pc("f", "LATEST"), true, None, 404),
        case(M::GET, provision, &pc("f", "prod"), false, None, 401),
        case(M::GET, provisions, provisions, true, None, 200),
        case(
            M::GET,
            provisions,
            &format!("{provisions}?functionName=nope"),
            true,
            None,
            404,
        ),
        case(M::GET, provisions, provisions, false, None, 401),
        case(M::DELETE, provision, &pc("f", "prod"), false, None, 401),
        case(M::DELETE, provision, &pc("f", "prod"), true, None, 204),
        case(M::DELETE, provision, &pc("f", "prod"), true, None, 404),
        case(
            M::DELETE,
            version,
            &format!("{}/1", vs("f")),
            true,
            None,
            409,
        ),
        case(
            M::DELETE,
            version,
            &format!("{}/one", vs("f")),
            true,
            None,
            400,
        ),
        case(
            M::DELETE,
            version,
            &format!("{}/99", vs("f")),
            true,
            None,
            404,
        ),
        case(
            M::DELETE,
            version,
            &format!("{}/1", vs("f")),
            false,
            None,
            401,
        ),
        case(
            M::DELETE,
            alias,
            &format!("{}/prod", al("f")),
            false,
            None,
            401,
        ),
        case(
            M::DELETE,
            alias,
            &format!("{}/prod", al("f")),
            true,
            None,
            204,
        ),
        case(
            M::DELETE,
            alias,
            &format!("{}/prod", al("f")),
            true,
            None,
            404,
        ),
        case(
            M::DELETE,
            version,
            &format!("{}/1", vs("f")),
            true,
            None,
            204,
        ),
        case(M::GET, "/metrics", "/metrics", true, None, 200),
        case(M::GET, "/metrics", "/metrics", false, None, 401),
        case(M::POST, creds, creds, true, Some(cred("c")), 201),
        case(M::POST, creds, creds, true, Some(cred("c")), 409),
        case(M::POST, creds, creds, false, Some(cred("c")), 401),
        case(
            M::POST,
            creds,
            creds,
            true,
            Some(json!({"credentialName": "c2", "registry": env.registry.host(), "userName": "u"})),
            400,
        ),
        case(M::GET, creds, creds, true, None, 200),
        case(M::GET, creds, creds, false, None, 401),
        case(M::GET, cred_one, &format!("{creds}/c"), true, None, 200),
        case(M::GET, cred_one, &format!("{creds}/c"), false, None, 401),
        case(M::GET, cred_one, &format!("{creds}/nope"), true, None, 404),
        case(
            M::POST,
            all,
            all,
            true,
            Some(json!({"functionName": "private", "customContainerConfig": {
                "image": image, "accelerationType": "None",
                "registryConfig": {"credentialName": "c", "certConfig": {"insecure": false}},
                "artifactRepository": format!("{}/team/artifacts", env.registry.host())}})),
            201,
        ),
        case(
            M::POST,
            all,
            all,
            true,
            Some(json!({"functionName": "both", "customContainerConfig": {
                "image": image, "registryConfig": {"credentialName": "c",
                    "authConfig": {"userName": "u", "password": "p"}}}})),
            400,
        ),
        case(
            M::POST,
            all,
            all,
            true,
            Some(json!({"functionName": "tagged", "customContainerConfig": {
                "image": image, "artifactRepository": "x.io/repo:tag"}})),
            400,
        ),
        case(M::DELETE, cred_one, &format!("{creds}/c"), false, None, 401),
        case(M::DELETE, cred_one, &format!("{creds}/c"), true, None, 204),
        case(M::DELETE, cred_one, &format!("{creds}/c"), true, None, 404),
        case(M::DELETE, one, "/2023-03-30/functions/f", false, None, 401),
        case(M::DELETE, one, "/2023-03-30/functions/f", true, None, 204),
        case(M::DELETE, one, "/2023-03-30/functions/f", true, None, 404),
    ];

    let want = documented(&doc);
    let mut covered = BTreeSet::new();
    for c in cases {
        let what = format!("{} {} -> {}", c.method, c.path, c.status);
        let method = c.method.as_str().to_lowercase();
        let body = c.body.as_ref().map(|b| serde_json::to_vec(b).unwrap());
        let auth = c.auth.then(|| format!("Bearer {}", env.token()));
        let r = env
            .call_raw(c.method.clone(), &c.path, auth.as_deref(), body)
            .await;
        assert_eq!(r.status, c.status, "{what}: {}", r.body);

        let key = (
            c.template.to_string(),
            method.clone(),
            r.status.as_str().to_string(),
        );
        assert!(want.contains(&key), "{what}: response not documented");
        covered.insert(key);
        let op = &doc["paths"][c.template][&method];
        let response = deref(&doc, &op["responses"][r.status.as_str()]);
        match response.get("content") {
            Some(content) => {
                // The media type served is the one documented, and the body matches its schema.
                let served = r.headers["content-type"].to_str().unwrap();
                let (media, spec) = content
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(m, _)| m.as_str() == "*/*" || served.starts_with(m.as_str()))
                    .unwrap_or_else(|| panic!("{what}: {served} is not documented"));
                let errs = errors(&doc, &spec["schema"], &r.body);
                assert!(errs.is_empty(), "{what} ({media}): {}\n{errs:#?}", r.body);
            }
            None => assert_eq!(r.body, Value::Null, "{what}: documented without a body"),
        }
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for name in headers.keys() {
                assert!(r.headers.contains_key(name.as_str()), "{what}: no {name}");
            }
        }
        // The request schema refuses exactly the bodies the server calls invalid.
        if let (Some(body), Some(schema)) = (&c.body, request_schema(&doc, c.template, &method)) {
            let errs = errors(&doc, schema, body);
            if c.status == StatusCode::BAD_REQUEST {
                assert!(!errs.is_empty(), "{what}: the schema accepts {body}");
            } else {
                assert!(errs.is_empty(), "{what}: {body}\n{errs:#?}");
            }
        }
    }
    let missing: Vec<_> = want.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "documented but never exercised: {missing:?}"
    );
}

#[tokio::test]
async fn every_served_route_is_documented_and_nothing_else() {
    let doc = load();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served: BTreeSet<&str> = pronto_server::api::route_paths().into_iter().collect();
    assert_eq!(served, paths);
    // The web console's routes answer HTML for people, not the API: deliberately left out of
    // the document, and all under /console, where no API route is.
    for path in pronto_server::console::route_paths() {
        assert!(path.starts_with("/console"), "{path}");
        assert!(
            !paths.contains(path),
            "{path} is a console page, not an API route"
        );
    }
    assert!(!served.iter().any(|p| p.starts_with("/console")));

    // Methods: a documented one is routed (not 405), any other is 405.
    let env = Env::start().await;
    for path in served {
        let concrete = path.replace("{functionName}", "probe");
        for method in METHODS {
            let documented = doc["paths"][path].get(method).is_some();
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = env.call(m, &concrete, Some(json!({}))).await;
            let routed = r.status != StatusCode::METHOD_NOT_ALLOWED;
            assert_eq!(
                routed, documented,
                "{method} {path}: {} {}",
                r.status, r.body
            );
        }
    }
}

#[test]
fn request_schemas_mirror_the_server_limits() {
    let doc = load();
    let create = request_schema(&doc, FUNCTIONS, "post").unwrap();
    let update = request_schema(&doc, "/2023-03-30/functions/{functionName}", "put").unwrap();
    let base = || json!({"functionName": "f", "customContainerConfig": {"image": "a"}});
    let at_limits = [
        json!({"functionName": format!("_{}", "a".repeat(63))}),
        json!({"memorySize": 128}),
        json!({"memorySize": 32768}),
        json!({"cpu": 0.05}),
        json!({"cpu": 16}),
        json!({"timeout": 1}),
        json!({"timeout": 86400}),
        json!({"instanceConcurrency": 200}),
        json!({"initializationTimeout": 600}),
        json!({"customContainerConfig": {"image": "a", "port": 65535}}),
        json!({"environmentVariables": {"_A1": ""}}),
        json!({"description": "d".repeat(256)}),
        json!({"maxInstances": 1000, "idleTimeout": 86400}),
        json!({"maxInstances": 1, "idleTimeout": 1}),
        json!({"diskSize": 512}),
        json!({"diskSize": 10240}),
        json!({"customContainerConfig": {"image": "a", "entrypoint": ["/a"], "command": ["b"]}}),
        json!({"customContainerConfig": {"image": "a", "args": ["b"]}}),
        json!({"customContainerConfig": {"image": "a", "healthCheckConfig": {
            "httpGetUrl": format!("/{}", "a".repeat(2047)), "initialDelaySeconds": 120,
            "periodSeconds": 120, "timeoutSeconds": 3, "failureThreshold": 120,
            "successThreshold": 120,
        }}}),
        json!({"customContainerConfig": {"image": "a", "healthCheckConfig": {
            "httpGetUrl": "/r", "initialDelaySeconds": 0, "periodSeconds": 1,
            "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1,
        }}}),
        json!({"customContainerConfig": {"image": "a", "healthCheckConfig": {"httpGetUrl": ""}}}),
        json!({"internetAccess": false}),
        json!({"handler": "x", "role": "r", "logConfig": {"project": "p"}, "tags": [{}]}),
        json!({"vpcConfig": {"vpcId": "", "vSwitchIds": [], "securityGroupId": ""}}),
        json!({"nasConfig": {"userId": 0, "mountPoints": []}, "layers": []}),
        json!({"gpuConfig": {"gpuMemorySize": 0, "gpuType": ""}, "customDNS": {}}),
        json!({"instanceLifecycleConfig": {"preStop": {"handler": "", "timeout": 3}}}),
    ];
    for extra in at_limits {
        let mut body = base();
        common::merge(&mut body, extra.clone());
        assert_eq!(errors(&doc, create, &body), Vec::<String>::new(), "{extra}");
    }
    // The same bodies the server refuses in tests/errors.rs.
    let refused = [
        json!({"functionName": "1st"}),
        json!({"functionName": "a".repeat(65)}),
        json!({"memorySize": -5}),
        json!({"memorySize": 200}),
        json!({"memorySize": 32832}),
        json!({"cpu": 0}),
        json!({"cpu": 16.5}),
        json!({"timeout": 0}),
        json!({"instanceConcurrency": 201}),
        json!({"initializationTimeout": 601}),
        json!({"customContainerConfig": {"port": 0}}),
        json!({"customContainerConfig": {"accelerationType": "Turbo"}}),
        json!({"customContainerConfig": {"cmd": []}}),
        json!({"environmentVariables": {"BAD-NAME": "v"}}),
        json!({"authType": "token"}),
        json!({"runtime": "python3.10"}),
        json!({"description": "d".repeat(257)}),
        json!({"hander": "x"}),
        json!({"customContainerConfig": {"command": ["b"], "args": ["c"]}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"periodSeconds": 3}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "ready"}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/a b"}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {
            "httpGetUrl": format!("/{}", "a".repeat(2048)),
        }}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "initialDelaySeconds": 121}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "periodSeconds": 0}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "timeoutSeconds": 4}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "failureThreshold": 0}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "successThreshold": 121}}}),
        json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "path": "/x"}}}),
        json!({"internetAccess": "yes"}),
        json!({"role": 7}),
        json!({"vpcConfig": {"vpcId": "vpc-1"}}),
        json!({"nasConfig": {"mountPoints": [{"serverAddr": "x"}]}}),
        json!({"ossMountConfig": {"mountPoints": [{"bucketName": "b"}]}}),
        json!({"layers": ["acs:fc:x"]}),
        json!({"gpuConfig": {"gpuType": "fc.gpu.tesla.1"}}),
        json!({"customDNS": {"nameServers": ["1.1.1.1"]}}),
        json!({"code": {"zipFile": "UEsDB"}}),
        json!({"customRuntimeConfig": {"command": ["/code/bootstrap"]}}),
        json!({"instanceLifecycleConfig": {"initializer": {"handler": "init"}}}),
        json!({"maxInstances": 0}),
        json!({"maxInstances": 1001}),
        json!({"idleTimeout": 0}),
        json!({"diskSize": 511}),
        json!({"diskSize": 10241}),
    ];
    for extra in refused {
        let mut body = base();
        common::merge(&mut body, extra.clone());
        assert!(
            !errors(&doc, create, &body).is_empty(),
            "create accepts {extra}"
        );
        assert!(
            !errors(&doc, update, &extra).is_empty(),
            "update accepts {extra}"
        );
    }
    assert!(!errors(&doc, create, &json!({"functionName": "f"})).is_empty());
    assert!(!errors(
        &doc,
        create,
        &json!({"functionName": "f", "customContainerConfig": {}})
    )
    .is_empty());
    assert!(errors(&doc, update, &json!({})).is_empty());
}

/// Guards the harness: `$ref`s resolve, formats are checked, extra fields are refused.
#[test]
fn the_schema_validation_is_not_vacuous() {
    let doc = load();
    let function = json!({"$ref": "#/components/schemas/Function"});
    assert!(!errors(&doc, &function, &json!({})).is_empty());
    let f = json!({
        "functionId": "7f1d2c3e-0000-4000-8000-000000000000", "functionName": "f",
        "description": "", "runtime": "custom-container",
        "customContainerConfig": {
            "image": "a", "entrypoint": [], "command": [], "port": 9000,
            "accelerationType": "Default",
            "resolvedImageUri": format!("docker.io/library/a@sha256:{}", "0".repeat(64)),
        },
        "memorySize": 512, "cpu": 0.35, "timeout": 60, "instanceConcurrency": 1,
        "environmentVariables": {}, "initializationTimeout": 30, "authType": "function",
        "state": "Active", "lastUpdateStatus": "Successful", "diskSize": 512,
        "internetAccess": true, "role": "r", "ignoredFields": ["role"],
        "createdTime": "2024-05-01T12:00:00.123Z", "lastModifiedTime": "2024-05-01T12:00:00.123Z",
    });
    assert_eq!(errors(&doc, &function, &f), Vec::<String>::new());
    for (pointer, bad) in [
        ("/createdTime", json!("yesterday")),
        ("/customContainerConfig/resolvedImageUri", json!("a:latest")),
        ("/customContainerConfig/args", json!([])),
        (
            "/customContainerConfig/healthCheckConfig",
            json!({"httpGetUrl": "/r"}),
        ),
        ("/vpcConfig", json!({"vpcId": "vpc-1"})),
        ("/extra", json!(1)),
    ] {
        let mut g = f.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        g.pointer_mut(parent).unwrap()[key] = bad;
        assert!(
            !errors(&doc, &function, &g).is_empty(),
            "{pointer} accepted"
        );
    }
}
