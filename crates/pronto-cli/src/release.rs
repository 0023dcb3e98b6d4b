//! `pronto release`: a release in one command. Update the image, wait until its acceleration
//! is `Ready` and the update serves `LATEST`, publish a version, then move an alias onto it, all
//! at once or as a weighted canary beside the alias's current version.
//!
//! Waiting before publishing matters: a version is a snapshot, so one published while the
//! conversion still runs would have no artifact, and its cold starts would pull the whole
//! image for as long as it lives.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pronto_server::api::{AliasView, FunctionView, VersionView};
use pronto_server::model::{AccelerationStatus, DESCRIPTION_MAX};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{call, parse_duration, ApiRefusal, Endpoint, FUNCTIONS};
use crate::output::{fields, Output};

/// How often the wait asks the server.
const POLL: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Function name.
    pub name: String,
    /// The alias to move onto the new version (created on it if it does not exist).
    #[arg(long)]
    pub alias: String,
    /// Update the function to this image first; without it, what LATEST has now is released.
    #[arg(long)]
    pub image: Option<String>,
    /// A canary: the alias keeps its current version and sends this share of the invocations
    /// (between 0 and 1, e.g. 0.1) to the new one. Without it, the alias moves entirely to the
    /// new version and any split ends.
    #[arg(long, value_parser = parse_canary_weight)]
    pub weight: Option<f64>,
    /// Before publishing, wait until the new image's access trace is recorded (by its first
    /// accelerated cold start: invoke LATEST meanwhile), so the version's cold starts prefetch.
    #[arg(long)]
    pub wait_trace: bool,
    /// Release even when the acceleration failed (the version's cold starts then pull the
    /// whole image).
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the acceleration (30s, 10m, 1h).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A canary's share: strictly between 0 and 1 (0 is no canary, 1 is a full switch).
fn parse_canary_weight(s: &str) -> Result<f64, String> {
    let w: f64 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected a number between 0 and 1"))?;
    if !(w > 0.0 && w < 1.0) {
        return Err(format!(
            "{s:?}: must be between 0 and 1, both excluded (leave --weight out to switch entirely)"
        ));
    }
    Ok(w)
}

pub async fn release(ep: &Endpoint, o: &Output, args: ReleaseArgs) -> anyhow::Result<()> {
    let progress = Progress {
        terminal: std::io::stderr().is_terminal(),
    };
    let name = &args.name;
    let function_path = format!("{FUNCTIONS}/{name}");

    if let Some(image) = &args.image {
        let step = progress.step(format!("updating {name} to {image}"));
        let body = json!({ "customContainerConfig": { "image": image } });
        call(ep, Method::PUT, &function_path, Some(body))
            .await
            .with_context(|| format!("updating {name} to {image}"))?;
        step.done("updated");
    }

    let function = wait_until_served(ep, &args, &progress).await?;

    if args.wait_trace && function.acceleration_info.is_some() {
        wait_for_trace(ep, &args, &progress).await?;
    }

    let step = progress.step(format!("publishing {name}"));
    let released = args
        .image
        .as_deref()
        .unwrap_or(&function.custom_container_config.resolved_image_uri);
    let description: String = format!("release of {released}")
        .chars()
        .take(DESCRIPTION_MAX)
        .collect();
    let version = call(
        ep,
        Method::POST,
        &format!("{function_path}/versions"),
        Some(json!({ "description": description })),
    )
    .await
    .with_context(|| format!("publishing a version of {name}"))?;
    let version: VersionView =
        serde_json::from_value(version).context("reading the published version")?;
    step.done(format!("version {}", version.version_id));

    let alias = &args.alias;
    let step = progress.step(format!("switching alias {alias}"));
    let current = current_alias(ep, name, alias).await?;
    if current.is_none() && args.weight.is_some() {
        progress.note(&format!(
            "alias {alias} does not exist: it is created on version {} (no canary)",
            version.version_id
        ));
    }
    let change = alias_change(current.as_ref(), alias, &version.version_id, args.weight);
    let out = match &change {
        AliasChange::Create(body) => {
            call(
                ep,
                Method::POST,
                &format!("{function_path}/aliases"),
                Some(body.clone()),
            )
            .await
        }
        AliasChange::Update(body) => {
            call(
                ep,
                Method::PUT,
                &format!("{function_path}/aliases/{alias}"),
                Some(body.clone()),
            )
            .await
        }
    }
    .with_context(|| {
        format!(
            "switching alias {alias} to version {} (the version is published)",
            version.version_id
        )
    })?;
    let switched: AliasView =
        serde_json::from_value(out.clone()).context("reading the switched alias")?;
    step.done(describe(&switched));
    o.print(&out, |v, _| {
        fields(v, &["aliasName", "versionId", "additionalVersionWeight"])
    })
}

/// Polls the function until `accessTrace` appears, within what is left of `--timeout`.
async fn wait_for_trace(
    ep: &Endpoint,
    args: &ReleaseArgs,
    progress: &Progress,
) -> anyhow::Result<()> {
    let name = &args.name;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let step = progress.step(format!(
        "waiting for an access trace (recorded by the first accelerated cold start of {name})"
    ));
    loop {
        let f = call(ep, Method::GET, &format!("{FUNCTIONS}/{name}"), None).await?;
        let f: FunctionView = serde_json::from_value(f).context("reading the function")?;
        if let Some(t) = f.access_trace {
            step.done(format!("{} chunks", t.chunks));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no access trace for {name} within {:?}: invoke it once (a cold start of the \
                 accelerated image records one), or release without --wait-trace",
                args.timeout
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where `LATEST`'s last update stands.
#[derive(Debug, PartialEq)]
enum UpdateState {
    /// The newest configuration serves `LATEST`; its acceleration is `Ready` or off.
    Served,
    /// Not yet: what to show (`Preparing`, `InProgress`).
    Waiting(String),
    /// The conversion failed, with the server's reason.
    Failed(String),
}

fn update_state(f: &FunctionView) -> UpdateState {
    match &f.acceleration_info {
        Some(a) if a.status == AccelerationStatus::Failed => {
            UpdateState::Failed(a.reason.clone().unwrap_or_else(|| "no reason given".into()))
        }
        Some(a) if a.status == AccelerationStatus::Preparing => {
            UpdateState::Waiting("Preparing".into())
        }
        _ if f.last_update_status != "Successful" => {
            UpdateState::Waiting(f.last_update_status.clone())
        }
        _ => UpdateState::Served,
    }
}

/// Polls the function until its last update serves (acceleration `Ready` or off), failing on
/// `Failed` unless `--force`, or when `--timeout` passes.
async fn wait_until_served(
    ep: &Endpoint,
    args: &ReleaseArgs,
    progress: &Progress,
) -> anyhow::Result<FunctionView> {
    let name = &args.name;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut step = progress.step("waiting for acceleration".into());
    loop {
        let f = call(ep, Method::GET, &format!("{FUNCTIONS}/{name}"), None).await?;
        let f: FunctionView = serde_json::from_value(f).context("reading the function")?;
        match update_state(&f) {
            UpdateState::Served => {
                step.done(match &f.acceleration_info {
                    Some(_) => "Ready",
                    None => "acceleration off (accelerationType None)",
                });
                return Ok(f);
            }
            UpdateState::Failed(reason) if args.force => {
                step.done(format!(
                    "Failed ({reason}); releasing anyway (--force): cold starts pull the whole image"
                ));
                return Ok(f);
            }
            UpdateState::Failed(reason) => {
                step.fail("Failed");
                anyhow::bail!(
                    "the acceleration of {name} failed: {reason}; nothing was published \
                     (--force releases it anyway, its cold starts pulling the whole image)"
                );
            }
            UpdateState::Waiting(status) => {
                if tokio::time::Instant::now() >= deadline {
                    step.fail("timed out");
                    anyhow::bail!(
                        "{name}: still {status} after {:?} (--timeout); nothing was published",
                        args.timeout
                    );
                }
                step.set(format!("waiting for acceleration ({status}…)"));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The alias as it is, or `None` if the function has no such alias yet.
async fn current_alias(
    ep: &Endpoint,
    name: &str,
    alias: &str,
) -> anyhow::Result<Option<AliasView>> {
    match call(
        ep,
        Method::GET,
        &format!("{FUNCTIONS}/{name}/aliases/{alias}"),
        None,
    )
    .await
    {
        Ok(v) => Ok(Some(
            serde_json::from_value(v).context("reading the alias")?,
        )),
        Err(e)
            if e.downcast_ref::<ApiRefusal>()
                .is_some_and(|r| r.code.as_deref() == Some("AliasNotFound")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The request that moves `alias` onto `new_version`.
#[derive(Debug, PartialEq)]
enum AliasChange {
    /// No such alias yet: `POST .../aliases` with this body.
    Create(Value),
    /// `PUT .../aliases/{alias}` with this partial body.
    Update(Value),
}

/// With a `weight`, the alias keeps its current version as the main one and the new version
/// gets that share (replacing any earlier canary); without, it names the new version alone.
fn alias_change(
    current: Option<&AliasView>,
    alias: &str,
    new_version: &str,
    weight: Option<f64>,
) -> AliasChange {
    match (current, weight) {
        // Nothing to keep as the main version: the new one is it.
        (None, _) => AliasChange::Create(json!({ "aliasName": alias, "versionId": new_version })),
        (Some(c), Some(w)) if c.version_id != new_version => AliasChange::Update(json!({
            "versionId": c.version_id,
            "additionalVersionWeight": { new_version: w },
        })),
        // `{}` ends a split left by an earlier canary.
        (Some(_), _) => AliasChange::Update(json!({
            "versionId": new_version,
            "additionalVersionWeight": {},
        })),
    }
}

/// `version 3` or `version 2, 10% to version 3`.
fn describe(a: &AliasView) -> String {
    let mut s = format!("version {}", a.version_id);
    for (v, w) in &a.additional_version_weight {
        // Rounded to 0.01%: 0.07 * 100 is 7.000000000000001 in f64.
        let percent = (w * 1e4).round() / 1e2;
        s.push_str(&format!(", {percent}% to version {v}"));
    }
    s
}

/// The steps on stderr: a spinner each on a terminal; plain lines otherwise (logs, CI), where
/// a spinner would be hidden or fill the file with redraws.
struct Progress {
    terminal: bool,
}

/// The spinner frames; the last one is shown once the step has finished.
const SPIN_DONE: &[&str] = &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✓"];
const SPIN_FAILED: &[&str] = &["⠋", "✗"];

impl Progress {
    fn step(&self, message: String) -> Step {
        let bar = self.terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(spinner_style(SPIN_DONE));
            bar.set_message(message.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        if bar.is_none() {
            eprintln!("{message}");
        }
        Step { bar, message }
    }

    fn note(&self, note: &str) {
        eprintln!("note: {note}");
    }
}

fn spinner_style(frames: &[&str]) -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .expect("valid template")
        .tick_strings(frames)
}

/// One step; a spinner left unfinished (an error returned through it) is marked failed.
struct Step {
    bar: Option<ProgressBar>,
    message: String,
}

impl Step {
    /// A new status; as a plain line only when it changed, so polling does not repeat it.
    fn set(&mut self, message: String) {
        if message == self.message {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(message.clone()),
            None => eprintln!("{message}"),
        }
        self.message = message;
    }

    fn done(mut self, outcome: impl AsRef<str>) {
        let line = format!("{}: {}", self.message, outcome.as_ref());
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(line),
            None => eprintln!("{line}"),
        }
    }

    fn fail(mut self, outcome: &str) {
        let line = format!("{}: {outcome}", self.message);
        match self.bar.take() {
            Some(bar) => {
                bar.set_style(spinner_style(SPIN_FAILED));
                bar.abandon_with_message(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.set_style(spinner_style(SPIN_FAILED));
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(version: &str, additional: &[(&str, f64)]) -> AliasView {
        AliasView {
            alias_name: "prod".into(),
            version_id: version.into(),
            additional_version_weight: additional
                .iter()
                .map(|(v, w)| (v.to_string(), *w))
                .collect(),
            description: String::new(),
            created_time: "2024-01-01T00:00:00Z".into(),
            last_modified_time: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_missing_alias_is_created_on_the_new_version_even_with_a_weight() {
        let want = AliasChange::Create(json!({"aliasName": "prod", "versionId": "3"}));
        assert_eq!(alias_change(None, "prod", "3", None), want);
        assert_eq!(alias_change(None, "prod", "3", Some(0.1)), want);
    }

    #[test]
    fn without_a_weight_the_alias_moves_and_any_split_ends() {
        let want = AliasChange::Update(json!({"versionId": "3", "additionalVersionWeight": {}}));
        assert_eq!(
            alias_change(Some(&alias("1", &[])), "prod", "3", None),
            want
        );
        assert_eq!(
            alias_change(Some(&alias("1", &[("2", 0.5)])), "prod", "3", None),
            want
        );
    }

    #[test]
    fn a_weight_keeps_the_current_version_and_replaces_the_canary() {
        assert_eq!(
            alias_change(Some(&alias("1", &[("2", 0.5)])), "prod", "3", Some(0.1)),
            AliasChange::Update(json!({"versionId": "1", "additionalVersionWeight": {"3": 0.1}}))
        );
        // Already on the new version (nothing to canary against): a plain switch.
        assert_eq!(
            alias_change(Some(&alias("3", &[])), "prod", "3", Some(0.1)),
            AliasChange::Update(json!({"versionId": "3", "additionalVersionWeight": {}}))
        );
    }

    #[test]
    fn canary_weights_exclude_0_and_1() {
        assert_eq!(parse_canary_weight("0.1"), Ok(0.1));
        for bad in ["0", "1", "-0.5", "1.5", "NaN"] {
            assert!(parse_canary_weight(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_canary_weight("x").unwrap_err(),
            "\"x\": expected a number between 0 and 1"
        );
    }

    fn function(acceleration: Option<(&str, Option<&str>)>, last_update: &str) -> FunctionView {
        let mut v = json!({
            "functionId": "f", "functionName": "web", "description": "", "runtime": "custom-container",
            "customContainerConfig": {
                "image": "r/web:v1", "resolvedImageUri": "r/web@sha256:00", "command": [],
                "args": [], "port": 9000, "accelerationType": "Default"
            },
            "memorySize": 128, "cpu": 0.1, "timeout": 60, "instanceConcurrency": 1,
            "environmentVariables": {}, "initializationTimeout": 10, "authType": "function",
            "state": "Active", "lastUpdateStatus": last_update, "diskSize": 512,
            "createdTime": "2024-01-01T00:00:00Z", "lastModifiedTime": "2024-01-01T00:00:00Z"
        });
        if let Some((status, reason)) = acceleration {
            v["accelerationInfo"] = json!({ "status": status });
            if let Some(r) = reason {
                v["accelerationInfo"]["reason"] = r.into();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_wait_ends_when_the_update_serves_with_acceleration_ready_or_off() {
        assert_eq!(
            update_state(&function(Some(("Ready", None)), "Successful")),
            UpdateState::Served
        );
        assert_eq!(
            update_state(&function(None, "Successful")),
            UpdateState::Served
        );
        assert_eq!(
            update_state(&function(Some(("Preparing", None)), "InProgress")),
            UpdateState::Waiting("Preparing".into())
        );
        assert_eq!(
            update_state(&function(Some(("Ready", None)), "InProgress")),
            UpdateState::Waiting("InProgress".into())
        );
        assert_eq!(
            update_state(&function(Some(("Failed", Some("disk full"))), "Successful")),
            UpdateState::Failed("disk full".into())
        );
    }

    #[test]
    fn an_alias_is_described_with_its_canary() {
        assert_eq!(describe(&alias("1", &[])), "version 1");
        assert_eq!(
            describe(&alias("1", &[("2", 0.25)])),
            "version 1, 25% to version 2"
        );
        assert_eq!(
            describe(&alias("1", &[("2", 0.07)])),
            "version 1, 7% to version 2"
        );
    }
}
