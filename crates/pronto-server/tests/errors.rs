//! Every error the control API promises: status, code and exact message.

mod common;

use common::{assert_error, Env, FUNCTIONS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn create_body(env: &Env, extra: Value) -> Value {
    let mut body = json!({
        "functionName": "f",
        "customContainerConfig": {"image": env.image("app:v1")},
    });
    common::merge(&mut body, extra);
    body
}

#[tokio::test]
async fn validation_errors_name_the_field_and_the_value() {
    let env = Env::start().await;
    env.push("app:v1", b"x").await;
    let cases = [
        (json!({"functionName": "1st"}), "functionName: must be 1 to 64 characters of [A-Za-z0-9_-] starting with a letter or underscore, got \"1st\""),
        (json!({"functionName": "a".repeat(65)}), &*format!("functionName: must be 1 to 64 characters of [A-Za-z0-9_-] starting with a letter or underscore, got \"{}\"", "a".repeat(65))),
        (json!({"functionName": "has space"}), "functionName: must be 1 to 64 characters of [A-Za-z0-9_-] starting with a letter or underscore, got \"has space\""),
        (json!({"functionName": null}), "functionName: is required"),
        (json!({"customContainerConfig": {"image": null}}), "customContainerConfig.image: is required"),
        (json!({"customContainerConfig": {"image": "UPPER/case"}}), "customContainerConfig.image: invalid repository name \"UPPER/case\": only lowercase letters, digits and . _ - / are allowed"),
        (json!({"customContainerConfig": {"port": 0}}), "customContainerConfig.port: must be between 1 and 65535, got 0"),
        (json!({"customContainerConfig": {"port": 70000}}), "customContainerConfig.port: must be between 1 and 65535, got 70000"),
        (json!({"customContainerConfig": {"accelerationType": "Turbo"}}), "customContainerConfig.accelerationType: must be \"Default\" or \"None\", got \"Turbo\""),
        (json!({"customContainerConfig": {"command": "/app"}}), "customContainerConfig.command: invalid type: string \"/app\", expected a sequence"),
        (json!({"customContainerConfig": {"cmd": ["/app"]}}), "customContainerConfig.cmd: unknown field `cmd`, expected one of `image`, `entrypoint`, `command`, `args`, `port`, `accelerationType`, `healthCheckConfig`, `acrInstanceId`, `registryConfig`, `artifactRepository`"),
        (json!({"customContainerConfig": {"entrypoint": "/app"}}), "customContainerConfig.entrypoint: invalid type: string \"/app\", expected a sequence"),
        (json!({"customContainerConfig": {"command": ["/app"], "args": ["-v"]}}), "customContainerConfig.args: give command or args, not both: since the Function Compute 3.0 names, command is the container's arguments (what args was; it replaces the image CMD) and entrypoint replaces the image ENTRYPOINT (what command was)"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"periodSeconds": 5}}}), "customContainerConfig.healthCheckConfig.httpGetUrl: is required"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "ready"}}}), "customContainerConfig.healthCheckConfig.httpGetUrl: must be a path starting with / of at most 2048 visible ASCII characters (no spaces), got \"ready\""),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "initialDelaySeconds": -1}}}), "customContainerConfig.healthCheckConfig.initialDelaySeconds: must be between 0 and 120, got -1"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "periodSeconds": 121}}}), "customContainerConfig.healthCheckConfig.periodSeconds: must be between 1 and 120, got 121"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "timeoutSeconds": 0}}}), "customContainerConfig.healthCheckConfig.timeoutSeconds: must be between 1 and 3, got 0"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "failureThreshold": 121}}}), "customContainerConfig.healthCheckConfig.failureThreshold: must be between 1 and 120, got 121"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "successThreshold": 0}}}), "customContainerConfig.healthCheckConfig.successThreshold: must be between 1 and 120, got 0"),
        (json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "path": "/x"}}}), "customContainerConfig.healthCheckConfig.path: unknown field `path`, expected one of `httpGetUrl`, `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `failureThreshold`, `successThreshold`"),
        (json!({"internetAccess": "yes"}), "internetAccess: invalid type: string \"yes\", expected a boolean"),
        (json!({"vpcConfig": {"vpcId": "vpc-1", "vSwitchIds": ["vsw-1"]}}), "vpcConfig: not supported: functions cannot be attached to a VPC; leave it out (or empty)"),
        (json!({"nasConfig": {"mountPoints": [{"serverAddr": "x.nas.aliyuncs.com:/", "mountDir": "/mnt/nas"}]}}), "nasConfig: not supported: NAS file systems cannot be mounted; leave it out (or empty)"),
        (json!({"ossMountConfig": {"mountPoints": [{"bucketName": "b", "mountDir": "/mnt/oss"}]}}), "ossMountConfig: not supported: OSS buckets cannot be mounted; leave it out (or empty)"),
        (json!({"layers": ["acs:fc:cn-hangzhou:official:layers/Python310/versions/2"]}), "layers: not supported: layers cannot be added to a custom container; leave it out (or empty)"),
        (json!({"gpuConfig": {"gpuMemorySize": 16384, "gpuType": "fc.gpu.tesla.1"}}), "gpuConfig: not supported: functions get no GPU; leave it out (or empty)"),
        (json!({"instanceLifecycleConfig": {"preStop": {"handler": "stop", "timeout": 3}}}), "instanceLifecycleConfig.preStop.handler: not supported: lifecycle hooks are not called; leave it out (or empty)"),
        (json!({"role": 7}), "role: invalid type: integer `7`, expected a string"),
        (json!({"memorySize": -5}), "memorySize: must be between 128 and 32768, got -5"),
        (json!({"memorySize": 32832}), "memorySize: must be between 128 and 32768, got 32832"),
        (json!({"memorySize": 200}), "memorySize: must be a multiple of 64, got 200"),
        (json!({"memorySize": "512"}), "memorySize: invalid type: string \"512\", expected i64"),
        (json!({"memorySize": 512.5}), "memorySize: invalid type: floating point `512.5`, expected i64"),
        (json!({"cpu": 0}), "cpu: must be between 0.05 and 16, got 0"),
        (json!({"cpu": 16.5}), "cpu: must be between 0.05 and 16, got 16.5"),
        (json!({"timeout": 0}), "timeout: must be between 1 and 86400, got 0"),
        (json!({"timeout": 86401}), "timeout: must be between 1 and 86400, got 86401"),
        (json!({"instanceConcurrency": 0}), "instanceConcurrency: must be between 1 and 200, got 0"),
        (json!({"instanceConcurrency": 201}), "instanceConcurrency: must be between 1 and 200, got 201"),
        (json!({"environmentVariables": {"BAD-NAME": "v"}}), "environmentVariables: invalid name \"BAD-NAME\": must match [A-Za-z_][A-Za-z0-9_]*"),
        (json!({"environmentVariables": {"N": 1}}), "environmentVariables.N: invalid type: integer `1`, expected a string"),
        (json!({"initializationTimeout": 0}), "initializationTimeout: must be between 1 and 600, got 0"),
        (json!({"initializationTimeout": 601}), "initializationTimeout: must be between 1 and 600, got 601"),
        (json!({"authType": "token"}), "authType: must be \"function\" or \"anonymous\", got \"token\""),
        (json!({"runtime": "python3.10"}), "runtime: must be \"custom-container\", got \"python3.10\""),
        (json!({"description": "d".repeat(257)}), "description: must be at most 256 characters, got 257"),
    ];
    for (extra, message) in cases {
        let body = create_body(&env, extra.clone());
        let r = env.call(Method::POST, FUNCTIONS, Some(body)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "InvalidArgument", message);
    }
    // An unknown top-level field is refused, not ignored.
    let r = env
        .call(
            Method::POST,
            FUNCTIONS,
            Some(create_body(&env, json!({"hander": "x"}))),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("hander: unknown field `hander`, expected one of `functionName`"),
        "{}",
        r.body
    );
    // Nothing was created by any of them.
    let list = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(list.body, json!({"functions": []}));

    // Updates are validated the same way, and leave the function as it was.
    let before = env.create("f", &env.image("app:v1"), json!({})).await;
    for (body, message) in [
        (
            json!({"memorySize": -5}),
            "memorySize: must be between 128 and 32768, got -5",
        ),
        (
            json!({"customContainerConfig": {"port": 0}}),
            "customContainerConfig.port: must be between 1 and 65535, got 0",
        ),
        (
            json!({"functionName": "g"}),
            "functionName: cannot be changed from \"f\", got \"g\"",
        ),
        (
            json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": "/r", "timeoutSeconds": 5}}}),
            "customContainerConfig.healthCheckConfig.timeoutSeconds: must be between 1 and 3, got 5",
        ),
        (
            json!({"vpcConfig": {"vpcId": "vpc-1"}}),
            "vpcConfig: not supported: functions cannot be attached to a VPC; leave it out (or empty)",
        ),
    ] {
        let r = env
            .call(Method::PUT, "/2023-03-30/functions/f", Some(body))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "InvalidArgument", message);
    }
    let after = env.call(Method::GET, "/2023-03-30/functions/f", None).await;
    assert_eq!(after.body, before);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let env = Env::start().await;
    let bearer = format!("Bearer {}", env.token());
    for (method, path) in [
        (Method::POST, FUNCTIONS),
        (Method::PUT, "/2023-03-30/functions/f"),
    ] {
        let r = env
            .call_raw(
                method.clone(),
                path,
                Some(&bearer),
                Some(br#"{"functionName": "f""#.to_vec()),
            )
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "MalformedJSON",
            "request body is not valid JSON: EOF while parsing an object at line 1 column 20",
        );
        let r = env
            .call_raw(method.clone(), path, Some(&bearer), Some(Vec::new()))
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "MalformedJSON",
            "request body is not valid JSON: EOF while parsing a value at line 1 column 0",
        );
        // A key given twice is refused, not "the last one wins", nested ones too.
        let r = env
            .call_raw(
                method.clone(),
                path,
                Some(&bearer),
                Some(
                    br#"{"memorySize": 128, "customContainerConfig": {"port": 1, "port": 2}}"#
                        .to_vec(),
                ),
            )
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "MalformedJSON",
            "request body is not valid JSON: duplicate key \"port\" at line 1 column 67",
        );
        let r = env
            .call_raw(method, path, Some(&bearer), Some(b"[1, 2]".to_vec()))
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "request body: must be a JSON object",
        );
    }
}

#[tokio::test]
async fn unresolvable_images_are_400_with_the_registry_message() {
    let env = Env::start().await;
    env.push("app:v1", b"x").await;
    let host = env.registry.host();
    for image in [format!("{host}/nosuch:v1"), format!("{host}/app:v2")] {
        let r = env
            .call(
                Method::POST,
                FUNCTIONS,
                Some(json!({"functionName": "f", "customContainerConfig": {"image": image}})),
            )
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            &format!("customContainerConfig.image: manifest not found: {image}"),
        );
    }
    // A registry nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = env
        .call(
            Method::POST,
            FUNCTIONS,
            Some(json!({
                "functionName": "f",
                "customContainerConfig": {"image": format!("127.0.0.1:{port}/app:v1")},
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "customContainerConfig.image: cannot reach registry 127.0.0.1:{port}: "
        )),
        "{message}"
    );

    // An update to an unknown image is refused and changes nothing.
    let before = env.create("f", &env.image("app:v1"), json!({})).await;
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/f",
            Some(json!({"customContainerConfig": {"image": format!("{host}/app:v9")}, "memorySize": 1024})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "InvalidArgument",
        &format!("customContainerConfig.image: manifest not found: {host}/app:v9"),
    );
    let after = env.call(Method::GET, "/2023-03-30/functions/f", None).await;
    assert_eq!(after.body, before);
}

#[tokio::test]
async fn unknown_function_is_404_and_existing_name_is_409() {
    let env = Env::start().await;
    env.push("app:v1", b"x").await;
    for method in [Method::GET, Method::DELETE] {
        let r = env.call(method, "/2023-03-30/functions/nope", None).await;
        assert_error(
            &r,
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            "function nope not found",
        );
    }
    let r = env
        .call(
            Method::PUT,
            "/2023-03-30/functions/nope",
            Some(json!({"memorySize": 1024})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "FunctionNotFound",
        "function nope not found",
    );

    let first = env.create("dup", &env.image("app:v1"), json!({})).await;
    let r = env
        .call(
            Method::POST,
            FUNCTIONS,
            Some(json!({
                "functionName": "dup",
                "customContainerConfig": {"image": env.image("app:v1")},
                "memorySize": 1024,
            })),
        )
        .await;
    assert_error(
        &r,
        StatusCode::CONFLICT,
        "FunctionAlreadyExists",
        "function dup already exists",
    );
    let still = env
        .call(Method::GET, "/2023-03-30/functions/dup", None)
        .await;
    assert_eq!(still.body, first);
}

#[tokio::test]
async fn every_control_request_needs_the_token() {
    let env = Env::start().await;
    let token = env.token();
    let refused = [
        (None, "missing Authorization header"),
        (Some("Bearer wrong".to_string()), "invalid API token"),
        (Some(format!("Bearer {token}x")), "invalid API token"),
        (
            Some(format!("Basic {token}")),
            "Authorization header must be \"Bearer TOKEN\"",
        ),
        (
            Some(token.clone()),
            "Authorization header must be \"Bearer TOKEN\"",
        ),
    ];
    for path in [
        FUNCTIONS,
        "/2023-03-30/functions/f",
        "/2023-03-30/functions/f/invocations",
        "/2023-03-30/nothing-here",
    ] {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            for (auth, message) in &refused {
                let r = env
                    .call_raw(method.clone(), path, auth.as_deref(), Some(b"{}".to_vec()))
                    .await;
                assert_error(&r, StatusCode::UNAUTHORIZED, "Unauthorized", message);
                assert_eq!(r.headers["www-authenticate"], "Bearer");
            }
        }
    }
    // With the token, unknown routes and methods are told apart.
    let r = env
        .call(Method::GET, "/2023-03-30/nothing-here", None)
        .await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "NotFound",
        "no route for GET /2023-03-30/nothing-here",
    );
    let r = env.call(Method::PATCH, FUNCTIONS, None).await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method PATCH is not allowed on /2023-03-30/functions",
    );
}

#[tokio::test]
async fn invoke_listener_explains_paths_it_does_not_serve() {
    let env = Env::start().await;
    let url = format!("http://{}/hello/anything", env.server().invoke_addr);
    let r = common::reply(env.http.post(url).body("x").send().await.unwrap()).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "NotFound",
        "invoke a function at /invoke/{functionName}/{path} or with the x-fc-invocation-target header",
    );
}
