//! `pronto deploy -f FILE [--wait]`: makes the functions a spec file describes exist as it
//! describes them, idempotently.
//!
//! For each function: absent → `CreateFunction` with the file's fields; present → the file's
//! configuration (every default applied, by the server's own validation code) is compared,
//! field by field, with what `GetFunction` shows, and only the fields that differ are sent in
//! one `UpdateFunction`; none differ → nothing is sent (an update always counts as a change:
//! it re-pins the image and retires warm instances). So the file is the whole configuration:
//! a field removed from it goes back to its default. Three kinds of field cannot be unset
//! through the API and are left as they are when the file does not give them: `maxInstances`,
//! `idleTimeout` and the Function Compute fields Pronto keeps without acting on (`role`, ...).
//! The image is compared as written: a tag that moved in the registry is not an edit of the
//! file (`pronto function update NAME --image SAME` re-pins it).
//!
//! `--wait` then polls each function until its acceleration is `Ready` (the image converted)
//! and the new configuration serves; a `Failed` conversion ends the command with its reason
//! and exit status 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pronto_server::model::FunctionSpec;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{call, parse_duration, ApiRefusal, Endpoint, FUNCTIONS};
use crate::output::{Output, OutputFormat};
use crate::spec_file::{FunctionEntry, SpecFile};

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The spec file: one function's fields (Function Compute 3.0 names), `functions:` with a
    /// list of them, or a Serverless Devs s.yaml (fc3 resources).
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
    /// Wait until every function's image is converted (acceleration `Ready`) and its new
    /// configuration serves; a `Failed` conversion is an error.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (30s, 10m, 1h).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A field that differs: its API name, what the server has, what the file asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// What deploy did to one function.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Created,
    Updated(Vec<Change>),
    Unchanged,
}

/// The fields of a configuration by API name (`memorySize`, `customContainerConfig.port`),
/// as `GetFunction` shows them.
type Fields = BTreeMap<String, Value>;

/// The comparable fields of what the file asks for.
fn desired_fields(spec: &FunctionSpec) -> Fields {
    let mut v = serde_json::to_value(spec).expect("a spec serializes");
    let o = v.as_object_mut().expect("an object");
    o.remove("functionName");
    let ignored = o.remove("ignored");
    let mut out = Fields::new();
    for (k, v) in o.iter() {
        if k == "customContainerConfig" {
            for (ck, cv) in v.as_object().into_iter().flatten() {
                let name = if ck == "cmd" { "command" } else { ck.as_str() };
                out.insert(format!("customContainerConfig.{name}"), cv.clone());
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    // Absent from the spec's JSON when none; the file not giving one removes it.
    out.entry("customContainerConfig.healthCheckConfig".into())
        .or_insert(Value::Null);
    for (k, v) in ignored
        .as_ref()
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// What differs between `current` (a `GetFunction` answer) and `desired`.
fn diff(current: &Value, desired: &Fields) -> Vec<Change> {
    desired
        .iter()
        .filter_map(|(field, to)| {
            let from = field
                .split('.')
                .fold(current, |v, k| v.get(k).unwrap_or(&Value::Null));
            (!same(from, to)).then(|| Change {
                field: field.clone(),
                from: from.clone(),
                to: to.clone(),
            })
        })
        .collect()
}

/// Equal as values (numbers by value: `1` and `1.0` are the same cpu).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The `UpdateFunction` body that makes the changes.
fn update_body(changes: &[Change]) -> Value {
    let mut body = Map::new();
    for c in changes {
        let value = match (c.field.as_str(), &c.to) {
            // No health check: an empty URL removes it.
            ("customContainerConfig.healthCheckConfig", Value::Null) => json!({"httpGetUrl": ""}),
            _ => c.to.clone(),
        };
        match c.field.split_once('.') {
            Some((outer, inner)) => {
                let o = body.entry(outer).or_insert_with(|| json!({}));
                o[inner] = value;
            }
            None => {
                body.insert(c.field.clone(), value);
            }
        }
    }
    Value::Object(body)
}

pub async fn deploy(ep: &Endpoint, out: &Output, args: DeployArgs) -> anyhow::Result<()> {
    let file = SpecFile::load(&args.file)?;
    for note in &file.notes {
        eprintln!("note: {note}");
    }
    let mut results = Vec::new();
    for f in &file.functions {
        let action = apply(ep, &file, f, args.dry_run).await?;
        results.push((f, action));
    }
    let report: Vec<Value> = results
        .iter()
        .map(|(f, action)| {
            let (word, changes) = match action {
                Action::Created => ("created", Vec::new()),
                Action::Updated(c) => ("updated", c.clone()),
                Action::Unchanged => ("unchanged", Vec::new()),
            };
            json!({
                "functionName": f.name,
                "action": word,
                "changes": changes.iter().map(|c| json!({"field": c.field, "from": c.from, "to": c.to})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let report = json!({ "dryRun": args.dry_run, "functions": report });
    let print_report = |report: &Value| {
        out.print(report, |v, out| {
            let mut text = String::new();
            let would = if args.dry_run { "would be " } else { "" };
            for f in v["functions"].as_array().into_iter().flatten() {
                let name = f["functionName"].as_str().unwrap_or("");
                let action = f["action"].as_str().unwrap_or("");
                if action == "unchanged" {
                    text.push_str(&format!("{name}: unchanged (nothing to do)\n"));
                    continue;
                }
                text.push_str(&format!("{name}: {would}{}\n", out.status(action)));
                for c in f["changes"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "  {}: {} -> {}\n",
                        c["field"].as_str().unwrap_or(""),
                        crate::output::cell(&c["from"]),
                        crate::output::cell(&c["to"]),
                    ));
                }
            }
            text
        })
    };
    // People see what changed before the wait; programs get one document at the end.
    if out.format == OutputFormat::Table || !args.wait {
        print_report(&report)?;
    }
    if args.wait && !args.dry_run {
        let names: Vec<&str> = file.functions.iter().map(|f| f.name.as_str()).collect();
        let finals = wait_all(ep, &names, args.timeout).await;
        if out.format != OutputFormat::Table {
            let mut report = report;
            report["functions"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .zip(&finals)
                .for_each(|(r, f)| {
                    if let Ok(f) = f {
                        r["accelerationInfo"] = f["accelerationInfo"].clone();
                    }
                });
            print_report(&report)?;
        }
        let failures: Vec<String> = finals
            .into_iter()
            .filter_map(Result::err)
            .map(|e| format!("{e:#}"))
            .collect();
        if !failures.is_empty() {
            anyhow::bail!("{}", failures.join("\n"));
        }
    }
    Ok(())
}

/// Creates or updates one function; the error names the file's place when the server's
/// message names a field the file has.
async fn apply(
    ep: &Endpoint,
    file: &SpecFile,
    f: &FunctionEntry,
    dry_run: bool,
) -> anyhow::Result<Action> {
    let path = format!("{FUNCTIONS}/{}", f.name);
    let placed = |e: anyhow::Error| match e.downcast_ref::<ApiRefusal>() {
        Some(r) if r.status.is_client_error() => match file.place_server_message(&f.at, &r.message)
        {
            Some(placed) => anyhow::Error::new(placed).context(format!("deploying {}", f.name)),
            None => e.context(format!("deploying {}", f.name)),
        },
        _ => e.context(format!("deploying {}", f.name)),
    };
    let current = match call(ep, Method::GET, &path, None).await {
        Ok(v) => Some(v),
        Err(e)
            if e.downcast_ref::<ApiRefusal>()
                .and_then(|r| r.code.as_deref())
                == Some("FunctionNotFound") =>
        {
            None
        }
        Err(e) => return Err(e.context(format!("reading function {}", f.name))),
    };
    let Some(current) = current else {
        if !dry_run {
            let mut body = f.body.clone();
            body["functionName"] = f.name.clone().into();
            call(ep, Method::POST, FUNCTIONS, Some(body))
                .await
                .map_err(placed)?;
        }
        return Ok(Action::Created);
    };
    let changes = diff(&current, &desired_fields(&f.spec));
    if changes.is_empty() {
        return Ok(Action::Unchanged);
    }
    if !dry_run {
        call(ep, Method::PUT, &path, Some(update_body(&changes)))
            .await
            .map_err(placed)?;
    }
    Ok(Action::Updated(changes))
}

/// How often --wait asks the server.
const POLL: Duration = Duration::from_millis(500);

/// Waits for every function at once, a spinner each (on a terminal; plain lines otherwise).
/// Each result is the function at the end, or why it did not get there.
async fn wait_all(ep: &Endpoint, names: &[&str], timeout: Duration) -> Vec<anyhow::Result<Value>> {
    let multi = MultiProgress::new();
    let waits = names.iter().map(|name| {
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                .expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        wait_one(ep, name, timeout, bar)
    });
    futures_util::future::join_all(waits).await
}

async fn wait_one(
    ep: &Endpoint,
    name: &str,
    timeout: Duration,
    bar: ProgressBar,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let terminal = !bar.is_hidden();
    let mut said = String::new();
    loop {
        let f = call(ep, Method::GET, &format!("{FUNCTIONS}/{name}"), None).await?;
        let accel = &f["accelerationInfo"];
        let status = accel["status"].as_str().unwrap_or("");
        let serving = f["lastUpdateStatus"].as_str() == Some("Successful");
        let state = match status {
            "Failed" => {
                let reason = accel["reason"].as_str().unwrap_or("no reason given");
                bar.finish_with_message(format!("Failed: {reason}"));
                if !terminal {
                    eprintln!("{name}: acceleration Failed: {reason}");
                }
                anyhow::bail!("{name}: the image's acceleration failed: {reason}");
            }
            "Ready" if serving => Some(format!(
                "Ready: {} stored, converted in {:.1} s",
                crate::output::bytes(accel["storedBytes"].as_u64().unwrap_or(0)),
                accel["durationSeconds"].as_f64().unwrap_or(0.0)
            )),
            "" if serving => Some("serving (no acceleration: cold starts pull the image)".into()),
            _ => None,
        };
        if let Some(done) = state {
            bar.finish_with_message(done.clone());
            if !terminal {
                eprintln!("{name}: {done}");
            }
            return Ok(f);
        }
        let msg = match status {
            "Preparing" => "converting the image (acceleration Preparing)".to_string(),
            _ => "waiting for the new configuration to serve".to_string(),
        };
        if !terminal && msg != said {
            eprintln!("{name}: {msg}");
        }
        said.clone_from(&msg);
        bar.set_message(msg);
        if tokio::time::Instant::now() >= deadline {
            bar.abandon_with_message("timed out");
            anyhow::bail!("{name}: not ready within {timeout:?} (still {status})");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(text: &str) -> FunctionSpec {
        SpecFile::parse(Path::new("f.yaml"), text.into())
            .unwrap()
            .functions
            .remove(0)
            .spec
    }

    /// What GetFunction shows for a function created from `text`.
    fn view_of(text: &str) -> Value {
        let spec = spec(text);
        let mut v = json!({
            "functionName": spec.function_name, "functionId": "x", "runtime": "custom-container",
            "state": "Active", "lastUpdateStatus": "Successful",
        });
        for (k, val) in desired_fields(&spec) {
            if val.is_null() {
                continue;
            }
            match k.split_once('.') {
                Some((a, b)) => {
                    if v.get(a).is_none() {
                        v[a] = json!({});
                    }
                    v[a][b] = val;
                }
                None => v[k] = val,
            }
        }
        v["customContainerConfig"]["resolvedImageUri"] = "r/a@sha256:00".into();
        v
    }

    const BASE: &str =
        "functionName: web\ncustomContainerConfig:\n  image: r/a:v1\nmemorySize: 256\ncpu: 1\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let current = view_of(BASE);
        assert_eq!(diff(&current, &desired_fields(&spec(BASE))), []);
    }

    #[test]
    fn an_edit_changes_only_what_changed() {
        let current = view_of(BASE);
        let edited = BASE.replace(
            "memorySize: 256",
            "memorySize: 512\nenvironmentVariables: {A: b}",
        );
        let changes = diff(&current, &desired_fields(&spec(&edited)));
        let fields: Vec<_> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["environmentVariables", "memorySize"]);
        assert_eq!(
            update_body(&changes),
            json!({"memorySize": 512, "environmentVariables": {"A": "b"}})
        );
        // A field removed from the file goes back to its default.
        let removed = BASE.replace("cpu: 1\n", "");
        let changes = diff(&current, &desired_fields(&spec(&removed)));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "cpu");
        assert_eq!(changes[0].to, json!(pronto_server::model::DEFAULT_CPU));
    }

    #[test]
    fn a_removed_health_check_is_sent_as_an_empty_url() {
        let with = format!("{BASE}  healthCheckConfig: {{httpGetUrl: /ready}}\n").replace("memorySize", "memorySize").replace("  image: r/a:v1\nmemorySize: 256\ncpu: 1\n  healthCheckConfig: {httpGetUrl: /ready}\n", "  image: r/a:v1\n  healthCheckConfig: {httpGetUrl: /ready}\nmemorySize: 256\ncpu: 1\n");
        let current = view_of(&with);
        let changes = diff(&current, &desired_fields(&spec(BASE)));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            update_body(&changes),
            json!({"customContainerConfig": {"healthCheckConfig": {"httpGetUrl": ""}}})
        );
    }
}
