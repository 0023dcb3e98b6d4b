//! `pronto bench coldstart ...`: runs the cold-start benchmark (`bench/coldstart/run.sh` of the
//! source tree: it builds the workload images, shapes the link, drives `pronto serve` and writes
//! `bench/results/<date>/report.md` and `breakdown.svg`). The arguments are passed through.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Cold starts of real workloads over a shaped link: full pull, accel-first, floor, warm.
    ///
    /// Options (passed to bench/coldstart/run.sh): --workloads puppeteer-pdf,python-ml,python-small,data-loader
    /// --link 1gbit,2ms --runs 5 --modes full,floor,accel-first,warm --out DIR.
    /// The source tree is found from the current directory upwards, or from $PRONTO_SOURCE.
    Coldstart {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

const SCRIPT: &str = "bench/coldstart/run.sh";

fn source_tree() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PRONTO_SOURCE") {
        let dir = PathBuf::from(dir);
        if dir.join(SCRIPT).is_file() {
            return Ok(dir);
        }
        bail!("PRONTO_SOURCE={} has no {SCRIPT}", dir.display());
    }
    let cwd = std::env::current_dir()?;
    let mut dir: &Path = &cwd;
    loop {
        if dir.join(SCRIPT).is_file() {
            return Ok(dir.to_path_buf());
        }
        dir = dir.parent().with_context(|| {
            format!(
                "no {SCRIPT} in {} or above it (set PRONTO_SOURCE)",
                cwd.display()
            )
        })?;
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Coldstart { args } => {
            let tree = source_tree()?;
            let status = std::process::Command::new("bash")
                .arg(tree.join(SCRIPT))
                .args(&args)
                .current_dir(&tree)
                .status()
                .context("running bash")?;
            if !status.success() {
                bail!("{SCRIPT} failed ({status})");
            }
            Ok(())
        }
    }
}
