//! `pronto bench coldstart` as an installed binary runs it: from a directory outside the source
//! tree, with the bench scripts it carries (`--dry-run`: no root, network or build needed).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `pronto bench coldstart ARGS` in `cwd`, with TMPDIR (where it unpacks its scripts) and
/// the layer cache it reports on under `root`.
fn coldstart(root: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(["bench", "coldstart"])
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", root.join("tmp"))
        .env("PRONTO_BENCH_CACHE", root.join("cache"))
        .env_remove("PRONTO_SOURCE")
        .env_remove("PRONTO_BIN")
        .env_remove("PRONTO_MKIMAGE")
        .output()
        .expect("running pronto")
}

fn dirs() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    assert!(
        !root.path().starts_with(&source),
        "{} is inside the source tree",
        root.path().display()
    );
    let cwd = root.path().join("somewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    (root, cwd)
}

fn leftovers(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn coldstart_dry_run_outside_the_source_tree() {
    let (root, cwd) = dirs();
    let out = coldstart(
        root.path(),
        &cwd,
        &[
            "--dry-run",
            "--workloads",
            "python-small,python-ml",
            "--runs",
            "2",
            "--link",
            "100mbit,20ms",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // run.sh parsed the flags...
    assert!(
        stdout.contains("\nworkloads: python-small python-ml\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\nlink: 100mbit, 20ms RTT\n"), "{stdout}");
    assert!(stdout.contains("\nruns: 2\n"), "{stdout}");
    // ...found this binary, and puts the report beside the caller
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_pronto")).unwrap();
    assert!(
        stdout.contains(&format!("\npronto: {}\n", exe.display())),
        "{stdout}"
    );
    let report = format!("\nreport: {}/bench-results/", cwd.display());
    assert!(stdout.contains(&report), "{stdout}");

    // build.sh and the apps came along: the steps it lists, whose hashes cover the apps' files,
    // are the source tree's
    let layers = |s: &str| s[s.find("layers (").expect("a layers section")..].to_owned();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let in_tree = Command::new("bash")
        .arg(source.join("bench/coldstart/run.sh"))
        .args(["--dry-run", "--workloads", "python-small,python-ml"])
        .env("PRONTO_BENCH_CACHE", root.path().join("cache"))
        .output()
        .unwrap();
    assert!(in_tree.status.success());
    let in_tree = String::from_utf8_lossy(&in_tree.stdout);
    assert_eq!(layers(&stdout), layers(&in_tree));
    assert!(stdout.contains("  python-small: slimpy-"), "{stdout}");
    assert!(stdout.contains(" smallapp-"), "{stdout}");

    // the scripts were unpacked under TMPDIR, and removed
    let scripts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("scripts: "))
        .expect("a scripts line");
    assert!(
        Path::new(scripts).starts_with(root.path().join("tmp")),
        "{scripts}"
    );
    assert_eq!(leftovers(root.path()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn coldstart_usage_error_fails_and_cleans_up() {
    let (root, cwd) = dirs();
    let out = coldstart(root.path(), &cwd, &["--dry-run", "--modes", "accel,warm"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mode 'accel' needs 'accel-first'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bench/coldstart/run.sh failed (exit status: 2)"),
        "{stderr}"
    );
    assert_eq!(leftovers(root.path()), Vec::<std::path::PathBuf>::new());
}
