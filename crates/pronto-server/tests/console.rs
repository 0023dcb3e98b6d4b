//! The web console as a person uses it, in a real headless browser: Debian's `chromium`, driven
//! through `chromedriver` over the W3C WebDriver protocol (plain JSON over HTTP, spoken here
//! with `reqwest`: the dozen commands this test needs do not justify a driver crate). Against a
//! real registry and server: a wrong token refused, signing in, the function list with its
//! status, a function's page, an invoke through the form with its answer, the cold start's
//! breakdown bar, and the session cookie's flags. Forged form posts (no CSRF token, another
//! origin) are checked with a plain HTTP client.
//!
//! Skipped, with a message, only when `chromium` or `chromedriver` is not installed or cannot
//! start a browser at all (`apt install chromium chromium-driver`).

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use pronto_testkit::image::{httpd_image, Layer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` in a process group of its own (it starts chromium, which starts its helpers):
/// the session is deleted, then the whole group killed on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless browser, or why there is none.
    async fn start() -> Result<Browser, String> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !std::path::Path::new(bin).exists() {
                return Err(format!("{bin} is not installed"));
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {CHROMEDRIVER}: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: reqwest::Client::new(),
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", browser._profile.path().display())],
            },
        }}});
        // The driver takes a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(15);
        let answer = loop {
            match browser
                .http
                .post(format!("{}/session", browser.base))
                .json(&caps)
                .send()
                .await
            {
                Ok(r) => break r.json::<Value>().await.map_err(|e| e.to_string())?,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(format!("chromedriver does not answer: {e}")),
            }
        };
        match answer["value"]["sessionId"].as_str() {
            Some(id) => browser.session = id.to_string(),
            None => return Err(format!("chromium cannot start: {}", answer["value"])),
        }
        Ok(browser)
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The element `css` selects, waiting up to 30 s for it (pages load after a click).
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} in {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        let v = self
            .cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let e = self.find(css).await;
        let v = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{e}/attribute/{name}"),
                None,
            )
            .await;
        v.as_str().map(str::to_string)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Waits until the page's URL ends with `suffix`.
    async fn wait_url(&self, suffix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(Instant::now() < deadline, "at {url}, not at …{suffix}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's end closes chromium; then the group (driver and anything left).
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        reqwest::Client::new().delete(url).send(),
                    )
                    .await;
                });
            })
            .join();
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_sees_the_function_invokes_it_and_sees_its_cold_start() {
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED: no headless browser: {why}");
            return;
        }
    };
    let env = Env::start().await;
    let image = env.image("console/hello:v1");
    httpd_image(
        Layer::gzip()
            .dir("www")
            .file("www/index.html", b"hello from the console\n"),
    )
    .push(&env.client, &env.registry.reference("console/hello:v1"))
    .await
    .unwrap();
    env.create(
        "hello",
        &image,
        json!({"description": "the quick start's function",
               "customContainerConfig": {"port": 9000}}),
    )
    .await;
    let console = env.url("/console");
    let token = env.token();

    // Not signed in: the login form. A wrong token is refused and sets no cookie.
    browser.goto(&console).await;
    browser.wait_url("/console/login").await;
    browser
        .type_into("#token", "not-the-token-0123456789")
        .await;
    browser.click("#sign-in").await;
    assert_eq!(browser.text("#error").await, "wrong API token");
    let cookies = browser.cmd(reqwest::Method::GET, "/cookie", None).await;
    assert_eq!(cookies, json!([]), "no session after a wrong token");

    // The right one: the function list, with the function and its status.
    browser.type_into("#token", &token).await;
    browser.click("#sign-in").await;
    browser.wait_url("/console").await;
    let row = browser.text("#functions tr[data-function=hello]").await;
    assert!(row.contains("hello"), "{row}");
    assert!(row.contains("Successful"), "{row}");
    assert!(
        ["Preparing", "Ready"].iter().any(|s| row.contains(s)),
        "acceleration status shown: {row}"
    );
    assert!(row.contains("none yet"), "{row}");
    let cookies = browser.cmd(reqwest::Method::GET, "/cookie", None).await;
    let c = &cookies[0];
    assert_eq!(c["name"], "pronto_console");
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    assert!(
        !browser.source().await.contains(&token),
        "the token is not in the page"
    );

    // A function's page: configuration, no instance yet.
    browser
        .click("#functions a[href='/console/functions/hello']")
        .await;
    browser.wait_url("/console/functions/hello").await;
    assert_eq!(browser.text("#function-name").await, "hello");
    assert!(browser.text("#instances").await.contains("No instance"));
    assert!(browser.text("#config").await.contains(&image));

    // Invoked through the form: the answer, a cold start, its bar in the recent invocations.
    browser.type_into("#invoke-path", "/index.html").await;
    browser.click("#invoke-button").await;
    let answer = browser.text("#invoke-answer").await;
    assert_eq!(answer.trim(), "hello from the console");
    assert_eq!(browser.text("#invoke-status").await, "200");
    assert!(browser.text("#invoke-result").await.contains("cold start"));
    assert_eq!(browser.count("tr.invocation").await, 1);
    assert_eq!(
        browser
            .count("tr.invocation.cold svg.coldbar rect.seg")
            .await,
        4
    );
    let total: u64 = browser
        .attribute("tr.invocation.cold .coldstart", "data-total-ms")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0, "a cold start takes time");
    let legend = browser.text("tr.invocation.cold .legend").await;
    for milestone in [
        "image ready",
        "container started",
        "app ready",
        "first byte",
    ] {
        assert!(legend.contains(milestone), "{legend}");
    }
    // The segments fill the bar: their widths add up to the viewBox's 1000.
    let mut width = 0.0;
    for i in 1..=4 {
        let w: f64 = browser
            .attribute(
                &format!("tr.invocation.cold rect.seg:nth-of-type({i})"),
                "width",
            )
            .await
            .unwrap()
            .parse()
            .unwrap();
        width += w;
    }
    assert!((width - 1000.0).abs() < 0.5, "segments add up to {width}");
    // The instance it started is listed.
    assert!(browser.text("#instances").await.contains("idle"));

    // Again: warm this time, two invocations listed, the newest first.
    browser.click("#invoke-button").await;
    browser.wait_url("/invoke").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while browser.count("tr.invocation").await < 2 {
        assert!(Instant::now() < deadline, "second invocation not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(browser.text("#invoke-result").await.contains("warm"));
    assert_eq!(browser.count("tr.invocation.cold").await, 1);
    let first = browser.text("tr.invocation:first-child").await;
    assert!(first.contains("warm"), "{first}");

    // Forged posts, as another site would send them, with the session cookie (SameSite aside).
    let cookie = format!("pronto_console={token}");
    let invoke_url = env.url("/console/functions/hello/invoke");
    let forged = env
        .http
        .post(&invoke_url)
        .header("cookie", &cookie)
        .form(&[("path", "/index.html")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let csrf = browser
        .attribute("#invoke-form input[name=csrf]", "value")
        .await
        .unwrap();
    let cross = env
        .http
        .post(&invoke_url)
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("path", "/index.html"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN, "another origin");
    assert_eq!(browser.count("tr.invocation").await, 2, "neither invoked");
    // A wrong bearer token gets the login page, not the console.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(env.url("/console/functions/hello"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/console/login");

    // Explain needs a trace, recorded by a cold start on a new lazy mount: `hello`'s first
    // start if its acceleration was Ready by then, else that of a second function of the image
    // (`hello`'s instance runs the pulled tree, so the second mounts the artifact anew).
    let get = |name: &str| {
        let path = format!("/2023-03-30/functions/{name}");
        let env = &env;
        async move { env.call(reqwest::Method::GET, &path, None).await.body }
    };
    for tries in 0.. {
        let f = get("hello").await;
        match f["accelerationInfo"]["status"].as_str() {
            Some("Ready") => break,
            Some("Preparing") if tries < 300 => {}
            _ => panic!("acceleration never became Ready: {f}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let explained = if get("hello").await["accessTrace"]["chunks"].is_u64() {
        "hello"
    } else {
        env.create(
            "lazyhello",
            &image,
            json!({"authType": "anonymous", "customContainerConfig": {"port": 9000}}),
        )
        .await;
        for tries in 0.. {
            let f = get("lazyhello").await;
            match f["accelerationInfo"]["status"].as_str() {
                Some("Ready") => break,
                Some("Preparing") if tries < 300 => {}
                _ => panic!("acceleration never became Ready: {f}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = env
            .http
            .get(format!(
                "http://{}/invoke/lazyhello/index.html",
                env.server().invoke_addr
            ))
            .send()
            .await
            .unwrap();
        let timing = r.headers()["x-pronto-cold-start"].to_str().unwrap();
        assert!(timing.contains("rootfs=lazy;"), "{timing}");
        for tries in 0.. {
            let f = get("lazyhello").await;
            if f["accessTrace"]["chunks"].is_u64() {
                break;
            }
            assert!(tries < 300, "no access trace: {f}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        "lazyhello"
    };
    let page = format!("/console/functions/{explained}");
    browser.goto(&env.url(&page)).await;
    browser.wait_url(&page).await;
    browser.click("#explain-link").await;
    browser.wait_url(&format!("{page}/explain")).await;
    let read = browser.text("#explain-read").await;
    assert!(read.contains("www/index.html"), "{read}");
    assert!(read.contains("bin/busybox"), "{read}");
    let prediction = browser.text("#explain-prediction").await;
    for path in [
        "Full pull",
        "Accelerated, first start",
        "Accelerated + prefetch",
    ] {
        assert!(prediction.contains(path), "{prediction}");
    }
    assert!(
        prediction.contains("100 Mbit/s, 20.0 ms RTT"),
        "{prediction}"
    );
    assert!(
        prediction.contains("The recorded start: setup"),
        "{prediction}"
    );
    assert_eq!(
        browser.count("#explain-prediction svg.coldbar").await,
        3,
        "a bar per path"
    );
    // Another link, from the form.
    browser.type_into("#link-input", "1gbit,2ms").await;
    browser.click("#explain-form button").await;
    browser.wait_url("/explain?link=1gbit%2C2ms").await;
    let prediction = browser.text("#explain-prediction").await;
    assert!(
        prediction.contains("1000 Mbit/s, 2.0 ms RTT"),
        "{prediction}"
    );
    // A link that is not one: the reason, on the page.
    browser
        .goto(&env.url(&format!("{page}/explain?link=fast")))
        .await;
    let error = browser.text("#explain-error").await;
    assert!(error.contains("expected BANDWIDTH,RTT"), "{error}");

    // Signing out ends the session.
    browser.click("#logout").await;
    browser.wait_url("/console/login").await;
    browser.goto(&console).await;
    browser.wait_url("/console/login").await;
}
