//! `pronto function|version|alias|provision|invoke|logs`: HTTP clients of a running
//! `pronto serve`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::output::{cell, fields, Output, Table};

/// Where the daemon is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// The control API of `pronto serve`.
    #[arg(
        long,
        env = "PRONTO_API",
        default_value = "http://127.0.0.1:9001",
        global = true
    )]
    pub api: String,
    /// The invoke listener of `pronto serve`.
    #[arg(
        long,
        env = "PRONTO_INVOKE",
        default_value = "http://127.0.0.1:9000",
        global = true
    )]
    pub invoke_url: String,
    /// API token; default: read from DATA_DIR/api-token.
    #[arg(long, env = "PRONTO_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The daemon's data directory (for the token file).
    #[arg(
        long,
        env = "PRONTO_DATA_DIR",
        default_value = "/var/lib/pronto",
        global = true
    )]
    pub data_dir: PathBuf,
}

impl Endpoint {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("api-token");
        let t = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the API token from {} (or pass --token / PRONTO_TOKEN)",
                path.display()
            )
        })?;
        Ok(t.trim().to_string())
    }
}

#[derive(Subcommand, Debug)]
pub enum FunctionCommand {
    /// Create a function from flags or a YAML/JSON spec file (`-f`).
    Create(FunctionFields),
    /// Change some fields of a function (only those given).
    Update(FunctionFields),
    /// Show a function, with its pinned image digest.
    Get {
        /// Function name.
        name: String,
        /// `LATEST` (the default), a version number or an alias: show what it names.
        #[arg(long)]
        qualifier: Option<String>,
    },
    /// List functions.
    List {
        /// Only the functions whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Delete a function and stop its instances.
    Delete {
        /// Function name.
        name: String,
    },
    /// Explain the function's cold start from its access trace: which files it read, in what
    /// order, what it never touched, and its predicted time on a given link.
    Explain(crate::explain::ExplainArgs),
}

#[derive(Args, Debug)]
pub struct FunctionFields {
    /// Function name (or `functionName` in the file).
    pub name: Option<String>,
    /// A YAML or JSON file with the function's fields (Function Compute names); flags override it.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// The image: `[REGISTRY/]REPO[:TAG][@sha256:...]` (`customContainerConfig.image`).
    #[arg(long)]
    pub image: Option<String>,
    /// The program (replaces the image ENTRYPOINT, and with it the image CMD:
    /// `customContainerConfig.entrypoint`); repeat for each word (values may start with `-`:
    /// `--entrypoint /bin/sh --entrypoint -c`). `--command` is its older name.
    #[arg(long = "entrypoint", alias = "command", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Arguments (replace the image CMD: `customContainerConfig.command`); repeat for each
    /// (values may start with `-`: `--arg -c`).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// The port the program listens on inside the container (default 9000).
    #[arg(long)]
    pub port: Option<u16>,
    /// Memory in MB.
    #[arg(long)]
    pub memory_size: Option<i64>,
    /// vCPUs, 0.05 to 16 (default 0.35).
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Seconds an invocation may take (default 60).
    #[arg(long)]
    pub timeout: Option<i64>,
    /// Requests one instance serves at once (default 1).
    #[arg(long)]
    pub instance_concurrency: Option<i64>,
    /// Seconds a new instance has to answer on its port (default 30).
    #[arg(long)]
    pub initialization_timeout: Option<i64>,
    /// `Default` (convert for lazy loading) or `None`.
    #[arg(long)]
    pub acceleration_type: Option<String>,
    /// An environment variable K=V; repeat for each.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Let anyone invoke it without the API token.
    #[arg(long)]
    pub anonymous: bool,
    /// Instances of this function at once on the node, all versions together (default: the
    /// server's `--max-instances`).
    #[arg(long)]
    pub max_instances: Option<i64>,
    /// Seconds an idle on-demand instance is kept before it is stopped (default: the
    /// server's `--idle-timeout`).
    #[arg(long)]
    pub idle_timeout: Option<i64>,
}

impl FunctionFields {
    fn body(&self) -> anyhow::Result<(Option<String>, Value)> {
        let mut body = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let v: Value = serde_yaml::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if !v.is_object() {
                    bail!("{}: expected a mapping of function fields", path.display());
                }
                v
            }
            None => json!({}),
        };
        let obj = body.as_object_mut().expect("checked");
        let mut ccc = obj
            .remove("customContainerConfig")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put(&mut ccc, "image", self.image.clone().map(Value::from));
        put(
            &mut ccc,
            "entrypoint",
            (!self.entrypoint.is_empty()).then(|| json!(self.entrypoint)),
        );
        if !self.args.is_empty() {
            // The file may use Pronto's older name for the arguments; the flag replaces it.
            ccc.remove("args");
            ccc.insert("command".into(), json!(self.args));
        }
        put(&mut ccc, "port", self.port.map(Value::from));
        put(
            &mut ccc,
            "accelerationType",
            self.acceleration_type.clone().map(Value::from),
        );
        if !ccc.is_empty() {
            obj.insert("customContainerConfig".into(), Value::Object(ccc));
        }
        put(obj, "memorySize", self.memory_size.map(Value::from));
        put(obj, "cpu", self.cpu.map(Value::from));
        put(obj, "timeout", self.timeout.map(Value::from));
        put(
            obj,
            "instanceConcurrency",
            self.instance_concurrency.map(Value::from),
        );
        put(
            obj,
            "initializationTimeout",
            self.initialization_timeout.map(Value::from),
        );
        put(obj, "maxInstances", self.max_instances.map(Value::from));
        put(obj, "idleTimeout", self.idle_timeout.map(Value::from));
        if self.anonymous {
            obj.insert("authType".into(), "anonymous".into());
        }
        if !self.env.is_empty() {
            let mut env = obj
                .remove("environmentVariables")
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            for kv in &self.env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?}: expected K=V"))?;
                env.insert(k.to_string(), v.into());
            }
            obj.insert("environmentVariables".into(), Value::Object(env));
        }
        let name = self.name.clone().or_else(|| {
            obj.get("functionName")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        Ok((name, body))
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("http client")
}

/// A control-API request the server answered with an error status. Kept typed so a caller
/// can tell, say, a missing alias (`code` `AliasNotFound`) from a failure.
#[derive(Debug)]
pub(crate) struct ApiRefusal {
    method: reqwest::Method,
    path: String,
    pub status: reqwest::StatusCode,
    /// The error body's `code` (`FunctionNotFound`, `VersionInUse`, ...), if it had one.
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ApiRefusal {
            method,
            path,
            status,
            message,
            ..
        } = self;
        write!(f, "{method} {path}: {status}: {message}")?;
        if *status == reqwest::StatusCode::UNAUTHORIZED {
            write!(
                f,
                " (the API token was refused: give the daemon's, from DATA_DIR/api-token, with \
                 --token, PRONTO_TOKEN or --data-dir)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiRefusal {}

/// Sends a control-API request; returns the JSON answer or fails with the server's message.
pub(crate) async fn call(
    ep: &Endpoint,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    call_with_query(ep, method, path, &[], body).await
}

/// [`call`] with query parameters (encoded by reqwest, so any value is safe).
pub(crate) async fn call_with_query(
    ep: &Endpoint,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", ep.api.trim_end_matches('/'));
    let mut req = http()
        .request(method.clone(), &url)
        .bearer_auth(ep.token()?);
    if !query.is_empty() {
        req = req.query(query);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach pronto serve at {}", ep.api))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let parsed = serde_json::from_str::<Value>(&text).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v[k].as_str().map(str::to_string))
        };
        return Err(ApiRefusal {
            method,
            path: path.to_string(),
            status,
            code: field("code"),
            message: field("message").unwrap_or(text),
        }
        .into());
    }
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    })
}

/// Every page of a list (`GET path`, following `nextToken`) as one answer: `key` holds the
/// items of all pages, the other fields (e.g. `direction`) are the last page's.
pub(crate) async fn list_all(ep: &Endpoint, path: &str, key: &str) -> anyhow::Result<Value> {
    let mut out = call(ep, reqwest::Method::GET, path, None).await?;
    let mut items = out[key].as_array().cloned().unwrap_or_default();
    while let Some(token) = out["nextToken"].as_str().map(str::to_string) {
        let query = [("nextToken", token)];
        out = call_with_query(ep, reqwest::Method::GET, path, &query, None).await?;
        items.extend(out[key].as_array().cloned().unwrap_or_default());
    }
    if let Some(o) = out.as_object_mut() {
        o.remove("nextToken");
        o.insert(key.to_string(), Value::Array(items));
    }
    Ok(out)
}

pub(crate) const FUNCTIONS: &str = "/2023-03-30/functions";

pub async fn function(ep: &Endpoint, out: &Output, cmd: FunctionCommand) -> anyhow::Result<()> {
    let answer = match cmd {
        FunctionCommand::Create(fields) => {
            let (name, mut body) = fields.body()?;
            let name =
                name.context("a function name is required (argument or functionName in the file)")?;
            body["functionName"] = name.into();
            call(ep, reqwest::Method::POST, FUNCTIONS, Some(body)).await?
        }
        FunctionCommand::Update(fields) => {
            let (name, mut body) = fields.body()?;
            let name = name.context("a function name is required")?;
            if let Some(o) = body.as_object_mut() {
                o.remove("functionName");
            }
            call(
                ep,
                reqwest::Method::PUT,
                &format!("{FUNCTIONS}/{name}"),
                Some(body),
            )
            .await?
        }
        FunctionCommand::Get { name, qualifier } => {
            let query: Vec<_> = qualifier.map(|q| ("qualifier", q)).into_iter().collect();
            call_with_query(
                ep,
                reqwest::Method::GET,
                &format!("{FUNCTIONS}/{name}"),
                &query,
                None,
            )
            .await?
        }
        FunctionCommand::List { prefix } => {
            let query: Vec<_> = prefix.map(|p| ("prefix", p)).into_iter().collect();
            let mut page =
                call_with_query(ep, reqwest::Method::GET, FUNCTIONS, &query, None).await?;
            let mut items = page["functions"].as_array().cloned().unwrap_or_default();
            while let Some(token) = page["nextToken"].as_str().map(str::to_string) {
                let mut q = query.clone();
                q.push(("nextToken", token));
                page = call_with_query(ep, reqwest::Method::GET, FUNCTIONS, &q, None).await?;
                items.extend(page["functions"].as_array().cloned().unwrap_or_default());
            }
            let all = json!({ "functions": items });
            return out.print(&all, function_table);
        }
        FunctionCommand::Delete { name } => {
            call(
                ep,
                reqwest::Method::DELETE,
                &format!("{FUNCTIONS}/{name}"),
                None,
            )
            .await?;
            println!("deleted {name}");
            return Ok(());
        }
        FunctionCommand::Explain(args) => return crate::explain::run(ep, out, args).await,
    };
    out.print(&answer, function_fields)
}

/// `function list` for people.
fn function_table(v: &Value, out: &Output) -> String {
    let mut t = Table::new([
        "NAME",
        "IMAGE",
        "MEMORY",
        "CPU",
        "ACCELERATION",
        "TRACE",
        "MODIFIED",
    ]);
    for f in v["functions"].as_array().into_iter().flatten() {
        t.row([
            cell(&f["functionName"]),
            cell(&f["customContainerConfig"]["image"]),
            format!("{} MB", cell(&f["memorySize"])),
            cell(&f["cpu"]),
            acceleration(f, out),
            f["accessTrace"]["chunks"]
                .as_u64()
                .map_or("-".into(), |n| format!("{n} chunks")),
            cell(&f["lastModifiedTime"]),
        ]);
    }
    t.render()
}

/// A function's acceleration state in a word (coloured on a terminal).
fn acceleration(f: &Value, out: &Output) -> String {
    match f["accelerationInfo"]["status"].as_str() {
        Some(s) => out.status(s),
        None => "off".into(),
    }
}

/// One function for people: the fields that matter first, the rest after.
pub(crate) fn function_fields(v: &Value, out: &Output) -> String {
    let mut v = v.clone();
    if let Some(s) = v["accelerationInfo"]["status"].as_str() {
        v["accelerationInfo"]["status"] = out.status(s).into();
    }
    if let Some(o) = v["customContainerConfig"].as_object_mut() {
        // Shown once, at the top level.
        o.remove("accelerationInfo");
    }
    fields(
        &v,
        &[
            "functionName",
            "customContainerConfig.image",
            "customContainerConfig.resolvedImageUri",
            "accelerationInfo.status",
            "accelerationInfo.reason",
            "accelerationInfo.hotPack.status",
            "accelerationInfo.hotPack.bytes",
            "accessTrace.chunks",
            "lastUpdateStatus",
            "memorySize",
            "cpu",
            "timeout",
            "instanceConcurrency",
        ],
    )
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// Request body: a string, or @FILE.
    #[arg(short, long)]
    pub data: Option<String>,
    /// Path inside the function, e.g. /api/items?x=1.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method (default: GET, or POST with --data).
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// Extra header `Name: value`, repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// What to invoke: `LATEST` (the default), a version number or an alias (sent as
    /// `x-fc-qualifier`).
    #[arg(long)]
    pub qualifier: Option<String>,
}

pub async fn invoke(ep: &Endpoint, a: InvokeArgs) -> anyhow::Result<()> {
    let body = match &a.data {
        Some(d) => Some(match d.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
            None => d.clone().into_bytes(),
        }),
        None => None,
    };
    let method = a
        .method
        .clone()
        .unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    let method = reqwest::Method::from_bytes(method.as_bytes()).context("invalid --method")?;
    let path = if a.path.starts_with('/') {
        a.path.clone()
    } else {
        format!("/{}", a.path)
    };
    let url = format!(
        "{}/invoke/{}{path}",
        ep.invoke_url.trim_end_matches('/'),
        a.name
    );
    let mut req = http().request(method, &url);
    if let Ok(t) = ep.token() {
        req = req.bearer_auth(t);
    }
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("-H {h:?}: expected 'Name: value'"))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(q) = &a.qualifier {
        req = req.header(pronto_server::invoke::QUALIFIER_HEADER, q);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let started = std::time::Instant::now();
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach pronto serve at {}", ep.invoke_url))?;
    let status = resp.status();
    let cold = resp
        .headers()
        .get("x-pronto-cold-start")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Absent when the request failed before a version was chosen (e.g. no such alias).
    let version = resp
        .headers()
        .get(pronto_server::invoke::VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("version {v}, "))
        .unwrap_or_default();
    // Only an answer from an instance names one; Pronto's own errors (no such function, a
    // start that failed, throttled) do not.
    let served_by = resp
        .headers()
        .get(pronto_server::proxy::INSTANCE_HEADER)
        .is_some()
        .then_some(());
    let bytes = resp.bytes().await?;
    let elapsed = started.elapsed();
    use std::io::Write;
    if served_by.is_some() || status.is_success() {
        std::io::stdout().write_all(&bytes)?;
    }
    let ms = elapsed.as_secs_f64() * 1e3;
    eprintln!(
        "{}",
        invoke_label(status, &version, served_by, cold.as_deref(), ms)
    );
    if !status.is_success() {
        match served_by {
            Some(_) => bail!("the function answered {status}"),
            None => bail!("invocation failed: {status}: {}", pronto_message(&bytes)),
        }
    }
    Ok(())
}

/// The line `pronto invoke` prints on stderr: who answered, how, how fast.
fn invoke_label(
    status: reqwest::StatusCode,
    version: &str,
    served_by: Option<()>,
    cold: Option<&str>,
    ms: f64,
) -> String {
    match (served_by, cold) {
        (None, _) => format!("[{status}] error from pronto, {ms:.1} ms"),
        (Some(()), Some(c)) => format!("[{status}] {version}cold start in {ms:.0} ms ({c})"),
        (Some(()), None) => format!("[{status}] {version}warm, {ms:.1} ms"),
    }
}

/// The `message` of one of Pronto's error bodies, else the body as text.
fn pronto_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            let code = v["code"].as_str()?;
            let message = v["message"].as_str()?;
            Some(format!("{code}: {message}"))
        })
        .unwrap_or_else(|| text.trim().to_string())
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Function name.
    pub name: String,
    /// Lines from the end.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
    /// Keep printing new lines as they are written (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines from this long ago (30s, 10m, 2h, 1d) or since this RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<String>,
    /// Only this instance's lines (its id is in each response's x-pronto-instance).
    #[arg(long)]
    pub instance: Option<String>,
    /// Only the lines printed while serving this request (x-fc-request-id).
    #[arg(long)]
    pub request_id: Option<String>,
}

/// A duration as `90s`, `10m`, `2h`, `1d`, or plain seconds (`600`).
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration (30s, 10m, 2h, 1d)"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    secs.map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// `--since`: a duration back from now (`90s`, `10m`, `2h`, `1d`), or an RFC 3339 time;
/// either way an RFC 3339 time for the API.
fn parse_since(s: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Ok(s.to_string());
    }
    let back = parse_duration(s)
        .map_err(|e| format!("{e}; or an RFC 3339 time"))
        .and_then(|d| time::Duration::try_from(d).map_err(|e| e.to_string()))?;
    let at = time::OffsetDateTime::now_utc()
        .checked_sub(back)
        .ok_or_else(|| format!("{s:?}: too long ago"))?;
    at.format(&Rfc3339).map_err(|e| e.to_string())
}

pub async fn logs(ep: &Endpoint, a: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let path = format!("{FUNCTIONS}/{}/logs", a.name);
    let url = format!("{}{path}", ep.api.trim_end_matches('/'));
    let mut query = vec![("tail", a.tail.to_string())];
    for (k, v) in [
        ("since", &a.since),
        ("instanceId", &a.instance),
        ("requestId", &a.request_id),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    if a.follow {
        query.push(("follow", "true".into()));
    }
    let mut resp = http()
        .get(&url)
        .bearer_auth(ep.token()?)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("cannot reach pronto serve at {}", ep.api))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("GET {path}: {status}: {msg}");
    }
    if a.follow {
        // Streamed: each piece as it comes.
        let mut out = std::io::stdout();
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
            out.flush()?;
        }
        return Ok(());
    }
    let v: Value = resp.json().await?;
    match v["logs"].as_str() {
        Some(text) => print!("{text}"),
        None => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_duration, parse_since};

    #[test]
    fn durations_take_a_unit_or_plain_seconds() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(
            parse_duration("5w").unwrap_err(),
            "\"5w\": the unit must be s, m, h or d"
        );
        assert_eq!(
            parse_duration("soon").unwrap_err(),
            "\"soon\": expected a duration (30s, 10m, 2h, 1d)"
        );
        assert_eq!(
            parse_duration("99999999999999999999d").unwrap_err(),
            "\"99999999999999999999d\": expected a duration (30s, 10m, 2h, 1d)"
        );
        assert_eq!(
            parse_duration("999999999999999999d").unwrap_err(),
            "\"999999999999999999d\": too long"
        );
    }

    #[test]
    fn command_and_args_take_values_that_start_with_a_dash() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            fields: super::FunctionFields,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--command",
            "/bin/sh",
            "--command",
            "-c",
            "--arg",
            "-v",
            "--arg=--port=1",
        ])
        .unwrap();
        assert_eq!(cli.fields.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(cli.fields.args, ["-v", "--port=1"]);
    }

    #[test]
    fn entrypoint_and_args_are_sent_with_the_function_compute_3_names() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            fields: super::FunctionFields,
        }
        let cli = Cli::try_parse_from(["x", "--entrypoint", "/app", "--arg", "-v"]).unwrap();
        let (_, body) = cli.fields.body().unwrap();
        assert_eq!(
            body["customContainerConfig"],
            serde_json::json!({"entrypoint": ["/app"], "command": ["-v"]})
        );
    }

    #[test]
    fn invoke_labels_cold_warm_and_errors() {
        use reqwest::StatusCode as S;
        assert_eq!(
            super::invoke_label(S::BAD_GATEWAY, "", None, None, 380.94),
            "[502 Bad Gateway] error from pronto, 380.9 ms"
        );
        assert_eq!(
            super::invoke_label(S::NOT_FOUND, "", None, None, 1.0),
            "[404 Not Found] error from pronto, 1.0 ms"
        );
        assert_eq!(
            super::invoke_label(S::OK, "version 2, ", Some(()), Some("total=5"), 5.2),
            "[200 OK] version 2, cold start in 5 ms (total=5)"
        );
        assert_eq!(
            super::invoke_label(S::NOT_FOUND, "", Some(()), None, 2.0),
            "[404 Not Found] warm, 2.0 ms",
            "the function's own 404 is an answer, from a warm instance"
        );
        assert_eq!(
            super::pronto_message(
                br#"{"code":"FunctionNotFound","message":"function x not found"}"#
            ),
            "FunctionNotFound: function x not found"
        );
    }

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        let t = "2024-05-01T10:00:00Z";
        assert_eq!(parse_since(t).as_deref(), Ok(t));
        assert!(parse_since("10m").is_ok());
        assert_eq!(
            parse_since("yesterday").unwrap_err(),
            "\"yesterday\": expected a duration (30s, 10m, 2h, 1d); or an RFC 3339 time"
        );
    }
}
