//! The web console: `GET /console` on the control listener, server-rendered HTML (minijinja
//! templates and a little CSS/JS compiled into the binary; nothing fetched from elsewhere).
//!
//! - **Auth**: the same API token as the REST API. `POST /console/login` takes it from a form
//!   and sets it as an `HttpOnly`, `SameSite=Strict` cookie scoped to `/console` (no `Secure`:
//!   the control listener is plain HTTP, on loopback by default; behind a TLS proxy it is
//!   still only sent over that connection); an `Authorization: Bearer` header works too. The
//!   token never appears in a URL, a page or a log line (the trace layer logs paths only).
//! - **CSRF**: every state-changing form (invoke, logout) carries a random per-process token
//!   only pages served to an authenticated user contain, and a cross-origin `Origin` is
//!   refused; the `SameSite=Strict` cookie is not sent on cross-site requests anyway.
//! - **Pages**: the functions with their status; one function: configuration, acceleration
//!   (artifact, access trace), instances, recent invocations with each cold start's breakdown
//!   drawn as a bar ([`ColdBar`]), the log tail and an invoke form.
//!
//! Not in `openapi.yaml`: these routes answer HTML for people, not the API (the conformance
//! test checks that every [`route_paths`] entry is under `/console` and undocumented).

mod view;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Form, Path, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, LOCATION,
    ORIGIN, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment};
use serde::Deserialize;
use tower_http::trace::TraceLayer;

use crate::invoke::{self, Destination};
use crate::{auth, AppState};

pub use view::{ColdBar, Segment};

/// Where the console lives on the control listener.
pub const CONSOLE_PATH: &str = "/console";
/// The session cookie: the API token itself, `HttpOnly`, `SameSite=Strict`, `Path=/console`.
pub const COOKIE_NAME: &str = "pronto_console";
/// Response bodies shown after an invoke are cut here.
const MAX_SHOWN_BODY: usize = 64 * 1024;
/// Log lines on a function's page.
const LOG_LINES: usize = 100;

/// What the console's handlers share.
#[derive(Clone)]
struct Console {
    app: AppState,
    /// The CSRF token of this process's forms (random, made at start).
    csrf: Arc<str>,
}

/// Every console route (for the OpenAPI test: none of them is in the API document).
pub fn route_paths() -> Vec<&'static str> {
    vec![
        "/console",
        "/console/login",
        "/console/logout",
        "/console/functions/{functionName}",
        "/console/functions/{functionName}/invoke",
        "/console/functions/{functionName}/explain",
        "/console/static/{file}",
    ]
}

/// The console's routes, to merge into the control router.
pub fn router(app: AppState) -> Router {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let state = Console {
        app,
        csrf: hex::encode(bytes).into(),
    };
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/functions/{functionName}", get(function_page))
        .route(
            "/console/functions/{functionName}/invoke",
            post(invoke_form),
        )
        .route(
            "/console/functions/{functionName}/explain",
            get(explain_page),
        )
        .route("/console/static/{file}", get(asset))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("index.html", include_str!("templates/index.html")),
            ("function.html", include_str!("templates/function.html")),
            ("bar.html", include_str!("templates/bar.html")),
            ("explain.html", include_str!("templates/explain.html")),
        ] {
            env.add_template(name, text).expect("a valid template");
        }
        env
    })
}

/// An HTML page with the console's headers: no caching (pages show live state and hold the
/// CSRF token), nothing loaded from elsewhere, not framed.
fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let html = match templates().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, template = name, "console template failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "console template failed").into_response();
        }
    };
    let mut r = (status, Html(html)).into_response();
    secure_headers(r.headers_mut());
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own form posts.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_str(to).expect("a path"));
    r
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Whether the request carries the API token: `Authorization: Bearer`, else the cookie.
fn signed_in(app: &AppState, headers: &HeaderMap) -> bool {
    if let Some(h) = headers.get(AUTHORIZATION) {
        return auth::check(&app.token, Some(h)).is_ok();
    }
    cookie(headers, COOKIE_NAME).is_some_and(|t| app.token.matches(t))
}

/// Refuses a form post from another origin (the browser's `Origin` against our `Host`).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Non-browser clients send none; browsers send it on every POST.
        return true;
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

/// Checks a state-changing form: signed in, same origin, the right CSRF token.
fn check_post(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<(), Box<Response>> {
    if !signed_in(&c.app, headers) {
        return Err(Box::new(redirect("/console/login")));
    }
    let token_ok: bool = subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), c.csrf.as_bytes()).into();
    if !same_origin(headers) || !token_ok {
        return Err(Box::new(page(
            StatusCode::FORBIDDEN,
            "login.html",
            context! { error => "this form was not sent by the console (cross-site request refused); reload the page and try again" },
        )));
    }
    Ok(())
}

async fn login_form(State(c): State<Console>, headers: HeaderMap) -> Response {
    if signed_in(&c.app, &headers) {
        return redirect("/console");
    }
    page(StatusCode::OK, "login.html", context! {})
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(c): State<Console>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            "login.html",
            context! { error => "cross-site login refused" },
        );
    }
    let presented = f.token.trim();
    if !c.app.token.matches(presented) {
        tracing::warn!("console login refused: wrong API token");
        return page(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { error => "wrong API token" },
        );
    }
    let mut r = redirect("/console");
    // The token is visible ASCII (checked when it was loaded), so it is a valid cookie value.
    let cookie = format!("{COOKIE_NAME}={presented}; Path=/console; HttpOnly; SameSite=Strict");
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("visible ASCII"),
    );
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(c): State<Console>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = check_post(&c, &headers, &f.csrf) {
        return *r;
    }
    let mut r = redirect("/console/login");
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("ascii"),
    );
    r
}

async fn index(State(c): State<Console>, headers: HeaderMap) -> Response {
    if !signed_in(&c.app, &headers) {
        return redirect("/console/login");
    }
    match view::function_rows(&c.app).await {
        Ok(rows) => page(
            StatusCode::OK,
            "index.html",
            context! { functions => rows, csrf => &*c.csrf },
        ),
        Err(e) => error_page(&c, e),
    }
}

fn error_page(c: &Console, e: crate::api::ApiError) -> Response {
    page(
        e.status(),
        "index.html",
        context! { error => e.to_string(), functions => Vec::<()>::new(), csrf => &*c.csrf },
    )
}

async fn function_page(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !signed_in(&c.app, &headers) {
        return redirect("/console/login");
    }
    render_function(&c, &name, None).await
}

async fn render_function(c: &Console, name: &str, result: Option<view::InvokeResult>) -> Response {
    let detail = match view::function_detail(&c.app, name).await {
        Ok(d) => d,
        Err(e) => return error_page(c, e),
    };
    let logs = crate::api::recent_lines(&c.app, name, LOG_LINES).await;
    page(
        StatusCode::OK,
        "function.html",
        context! { f => detail, logs => logs.join("\n"), result => result, csrf => &*c.csrf },
    )
}

#[derive(Deserialize)]
struct ExplainParams {
    link: Option<String>,
}

/// Files listed per table on the explain page (the API lists all).
const EXPLAIN_TOP: usize = 25;

async fn explain_page(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(params): axum::extract::Query<ExplainParams>,
) -> Response {
    if !signed_in(&c.app, &headers) {
        return redirect("/console/login");
    }
    let link_text = params.link.unwrap_or_else(|| "100mbit,20ms".to_string());
    let result = match crate::api::parse_link(Some(&link_text)) {
        Ok(link) => crate::api::explanation(&c.app, &name, link, false).await,
        Err(e) => Err(e),
    };
    let (status, ctx) = match result {
        Ok(e) => (
            StatusCode::OK,
            context! {
                name => &name,
                link => &link_text,
                e => view::explain_view(&e, EXPLAIN_TOP),
                csrf => &*c.csrf,
            },
        ),
        Err(err) => (
            err.status(),
            context! { name => &name, link => &link_text, error => err.to_string(), csrf => &*c.csrf },
        ),
    };
    page(status, "explain.html", ctx)
}

#[derive(Deserialize)]
struct InvokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    body: String,
}

async fn invoke_form(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<InvokeForm>,
) -> Response {
    if let Err(r) = check_post(&c, &headers, &f.csrf) {
        return *r;
    }
    let method = match f.method.as_str() {
        "" | "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        other => {
            return render_function(
                &c,
                &name,
                Some(view::InvokeResult::refused(format!(
                    "unsupported method {other:?}"
                ))),
            )
            .await
        }
    };
    let path = if f.path.starts_with('/') {
        f.path.clone()
    } else {
        format!("/{}", f.path)
    };
    let mut req = Request::builder().method(method).uri(&path);
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", c.app.token.expose())) {
        req = req.header(AUTHORIZATION, v);
    }
    if !f.body.is_empty() {
        req = req.header(CONTENT_TYPE, "text/plain; charset=utf-8");
    }
    let req = match req.body(Body::from(f.body)) {
        Ok(r) => r,
        Err(e) => {
            return render_function(
                &c,
                &name,
                Some(view::InvokeResult::refused(format!(
                    "invalid path {path:?}: {e}"
                ))),
            )
            .await
        }
    };
    let destination = Ok(Destination {
        function: name.clone(),
        qualifier: None,
        path_and_query: path,
    });
    let started = Instant::now();
    let response = invoke::invoke_at(c.app.clone(), destination, req, started).await;
    let result = view::InvokeResult::read(response, started, MAX_SHOWN_BODY).await;
    render_function(&c, &name, Some(result)).await
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (
            include_str!("static/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("static/console.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = ([(CONTENT_TYPE, kind)], body).into_response();
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; pronto_console=tok; b=2")]);
        assert_eq!(cookie(&h, COOKIE_NAME), Some("tok"));
        assert_eq!(
            cookie(&headers(&[("cookie", "xpronto_console=1")]), COOKIE_NAME),
            None
        );
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9001")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9001"),
            ("origin", "http://127.0.0.1:9001")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9001"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9001"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn every_template_compiles() {
        let env = templates();
        for name in [
            "base.html",
            "login.html",
            "index.html",
            "function.html",
            "bar.html",
        ] {
            env.get_template(name).unwrap();
        }
    }
}
