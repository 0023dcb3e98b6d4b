//! `pronto bench load ...`: an HTTP load generator, in `load.rs`.
//!
//! `pronto bench coldstart ...`: the cold-start benchmark, `bench/coldstart/run.sh`, run from the
//! copy of the bench scripts built into this binary, so that an installed `pronto` needs no
//! source checkout. The scripts are written to a fresh temporary directory (removed afterwards,
//! also when the run fails or is interrupted) and `bash run.sh ARGS` runs in the caller's working
//! directory, with this binary as its `$PRONTO_BIN`. What a run needs besides (root, Debian 12,
//! `pronto-mkimage`, the network for Debian/PyPI/npm packages) is in bench/README.md.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Cold starts of real workloads over a shaped link: full pull, accelerated without and with
    /// prefetch, already unpacked (floor), warm.
    ///
    /// Runs the bench/coldstart scripts built into this binary, as root on Debian 12: builds the
    /// workload images from Debian, PyPI and npm packages (cached in /var/cache/pronto-bench),
    /// pushes them with pronto-mkimage (beside this binary, on PATH or in $PRONTO_MKIMAGE) to a
    /// registry in a network namespace behind a shaped veth, and times cold starts of
    /// `pronto serve` (this binary). Takes tens of minutes; see bench/README.md.
    Coldstart(ColdstartArgs),
    /// HTTP load against one URL: throughput, latency percentiles, status and error counts,
    /// cold starts (x-pronto-cold-start), responses by a header's value.
    ///
    /// N workers with one keep-alive connection each, closed loop (or open loop with --rate),
    /// for --duration or --requests. Exits 1 on any failed request with --fail-on-error.
    Load(crate::load::LoadArgs),
}

#[derive(clap::Args)]
pub struct ColdstartArgs {
    /// Workloads to run, comma-separated: puppeteer-pdf, python-ml, python-small, data-loader
    /// [default: all four]
    #[arg(long, value_name = "LIST")]
    workloads: Option<String>,
    /// The link to the registry: a tc rate and a round-trip time, e.g. 100mbit,20ms
    /// [default: 1gbit,2ms]
    #[arg(long, value_name = "RATE,RTT")]
    link: Option<String>,
    /// Samples per workload and mode [default: 5]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// Modes, comma-separated: full, floor, accel-first, accel (needs accel-first), warm
    /// [default: all five]
    #[arg(long, value_name = "LIST")]
    modes: Option<String>,
    /// Directory for report.md, breakdown.svg and samples.tsv [default: ./bench-results/DATE]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Check the arguments and print what would run (workloads and their layers, binaries,
    /// report path), without root, network or building anything
    #[arg(long)]
    dry_run: bool,
}

impl ColdstartArgs {
    /// The arguments for run.sh: the flags given, each as `--NAME VALUE` (the script has the
    /// defaults).
    fn script_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut pass = |name: &str, value: Option<OsString>| {
            if let Some(value) = value {
                args.push(name.into());
                args.push(value);
            }
        };
        pass("--workloads", self.workloads.clone().map(Into::into));
        pass("--link", self.link.clone().map(Into::into));
        pass("--runs", self.runs.map(|n| n.to_string().into()));
        pass("--modes", self.modes.clone().map(Into::into));
        pass("--out", self.out.clone().map(Into::into));
        if self.dry_run {
            args.push("--dry-run".into());
        }
        args
    }
}

/// Embeds the files listed, by their path in the source tree, as (path, contents).
macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../", $path)))),*]
    };
}

/// Every file `bench/coldstart/run.sh` reads: itself, `bench/lib.sh`, `build.sh` (which hashes and
/// copies the apps' files into the images), the latency relay and the report. Written out under
/// the same paths, so that the scripts find each other as in the source tree (and, with no
/// `Cargo.toml` beside `bench/`, know they have no source tree to build in). A unit test checks
/// that the list matches `bench/coldstart/`.
const FILES: &[(&str, &str)] = embed!(
    "bench/lib.sh",
    "bench/coldstart/run.sh",
    "bench/coldstart/build.sh",
    "bench/coldstart/delay-relay.py",
    "bench/coldstart/report.py",
    "bench/coldstart/apps/data-loader/app.py",
    "bench/coldstart/apps/puppeteer-pdf/package.json",
    "bench/coldstart/apps/puppeteer-pdf/server.js",
    "bench/coldstart/apps/python-ml/app.py",
    "bench/coldstart/apps/python-small/app.py",
);
const RUN_SH: &str = "bench/coldstart/run.sh";

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Coldstart(args) => coldstart(&args).await,
        BenchCommand::Load(args) => crate::load::run(args).await,
    }
}

async fn coldstart(args: &ColdstartArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the pronto binary")?;
    let dir = tempfile::Builder::new()
        .prefix("pronto-bench-")
        .tempdir()
        .context("creating a directory for the bench scripts")?;
    write_files(dir.path())?;
    let signals = Signals::new()?;
    let progress_file = dir.path().join("progress");
    let mut child = tokio::process::Command::new("bash")
        .arg(dir.path().join(RUN_SH))
        .args(args.script_args())
        .env("PRONTO_BIN", &exe)
        .env("PRONTO_BENCH_PROGRESS", &progress_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running bash")?;
    // The script's log (stderr) is printed above the bar, so that the two do not interleave.
    let bar = indicatif::ProgressBar::new_spinner();
    let log = child.stderr.take().expect("piped");
    let printer = tokio::spawn(print_above(bar.clone(), log));
    let ticker = tokio::spawn(follow_progress(bar.clone(), progress_file));
    let status = signals.wait(&mut child).await;
    ticker.abort();
    // Bounded: a process the script left behind could hold its stderr open.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), printer).await;
    bar.finish_and_clear();
    let removed = dir.close();
    let status = status.context("waiting for bash")?;
    if !status.success() {
        bail!("{RUN_SH} failed ({status})");
    }
    removed.context("removing the bench scripts")
}

/// Prints each line of `log` above `bar` (as is when stderr is not a terminal: the bar is
/// hidden then).
async fn print_above(bar: indicatif::ProgressBar, log: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(log).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    }
}

/// Shows on `bar` what the script last wrote to `file` ([`parse_progress`]), every 200 ms.
async fn follow_progress(bar: indicatif::ProgressBar, file: PathBuf) {
    let counting = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples, {msg} (ETA {eta})",
    )
    .expect("a valid template");
    let waiting = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
        .expect("a valid template");
    bar.set_style(waiting.clone());
    bar.set_message("starting");
    let mut last = String::new();
    loop {
        bar.tick();
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            if text != last {
                if let Some((done, total, what)) = parse_progress(&text) {
                    if total == 0 {
                        bar.set_style(waiting.clone());
                    } else {
                        bar.set_style(counting.clone());
                        bar.set_length(total);
                        bar.set_position(done);
                    }
                    bar.set_message(what.to_string());
                }
                last = text;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `DONE TOTAL WHAT` (bench/lib.sh's `progress`); TOTAL 0: a phase without a count.
fn parse_progress(text: &str) -> Option<(u64, u64, &str)> {
    let line = text.lines().next()?;
    let mut parts = line.splitn(3, ' ');
    let done = parts.next()?.parse().ok()?;
    let total = parts.next()?.parse().ok()?;
    Some((done, total, parts.next().unwrap_or("")))
}

/// Writes [`FILES`] under `dir`: directories 0755 and files 0644, as in a checkout (build.sh
/// copies the apps' files into the images with their modes).
fn write_files(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for (path, contents) in FILES {
        let file = dir.join(path);
        let parent = file.parent().expect("a file path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&file)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// While the script runs: SIGINT and SIGHUP, which a terminal sends to the whole process group
/// (the script included), must not end this process before the script has cleaned up and its
/// files are removed; SIGTERM, sent to this process alone, is passed on to the script (its trap
/// stops what it started). Registered before the script starts, so that none is missed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    /// Waits for `child` to exit, passing SIGTERM on to it.
    async fn wait(mut self, child: &mut tokio::process::Child) -> std::io::Result<ExitStatus> {
        loop {
            tokio::select! {
                status = child.wait() => return status,
                _ = self.interrupt.recv() => {}
                _ = self.hangup.recv() => {}
                _ = self.terminate.recv() => {
                    let pid = child.id().and_then(|id| i32::try_from(id).ok());
                    if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                        // ESRCH: it has just exited, and the next wait() says how
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn files_under(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // what `npm install` or Python may leave in a checkout; build.sh skips the first
                let name = path.file_name().unwrap();
                if name != "node_modules" && name != "__pycache__" {
                    files_under(root, &path, found);
                }
            } else {
                let rel = path.strip_prefix(root).unwrap();
                found.insert(rel.to_str().unwrap().to_owned());
            }
        }
    }

    #[test]
    fn every_coldstart_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut in_tree = BTreeSet::from(["bench/lib.sh".to_owned()]);
        files_under(&root, &root.join("bench/coldstart"), &mut in_tree);
        let embedded: BTreeSet<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(embedded, in_tree);
    }

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress("3 40 python-ml accel run 2\n"),
            Some((3, 40, "python-ml accel run 2"))
        );
        assert_eq!(
            parse_progress("0 0 pushing the workload images"),
            Some((0, 0, "pushing the workload images"))
        );
        assert_eq!(parse_progress("3 4"), Some((3, 4, "")));
        assert_eq!(parse_progress(""), None, "a file being written");
        assert_eq!(parse_progress("3"), None);
        assert_eq!(parse_progress("x 4 y"), None);
    }

    #[test]
    fn script_args_pass_only_the_flags_given() {
        let args = ColdstartArgs {
            workloads: Some("python-ml".into()),
            link: None,
            runs: Some(3),
            modes: None,
            out: Some("results/x".into()),
            dry_run: true,
        };
        let expected = [
            "--workloads",
            "python-ml",
            "--runs",
            "3",
            "--out",
            "results/x",
            "--dry-run",
        ];
        assert_eq!(args.script_args(), expected.map(OsString::from));
    }

    #[tokio::test]
    async fn sigterm_is_passed_on_to_the_script() {
        use tokio::io::AsyncBufReadExt;
        let signals = Signals::new().unwrap();
        let mut child = tokio::process::Command::new("bash")
            .args([
                "-c",
                "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        assert_eq!(line, "ready\n");
        // to this process, as `kill PID` would; the handler above catches it
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
            .unwrap();
        let status = signals.wait(&mut child).await.unwrap();
        assert_eq!(status.code(), Some(3));
    }
}
