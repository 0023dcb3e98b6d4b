//! A `pronto serve` started as a user starts it, over a temporary data directory, and the CLI
//! pointed at it.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub child: Child,
    pub data: std::path::PathBuf,
    pub control: u16,
    pub invoke: u16,
}

impl Daemon {
    pub fn start(data: &Path) -> Daemon {
        Self::start_with(data, &[], &[], Stdio::null())
    }

    /// With more `serve` arguments, environment, and its stderr (its log) going to `stderr`.
    pub fn start_with(
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: impl Into<Stdio>,
    ) -> Daemon {
        let (control, invoke) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args([
                "serve",
                "--control-addr",
                &format!("127.0.0.1:{control}"),
                "--invoke-addr",
                &format!("127.0.0.1:{invoke}"),
            ])
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .env_remove("PRONTO_LOG")
            .env_remove("PRONTO_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            data: data.to_owned(),
            control,
            invoke,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", control)).is_err() {
            assert!(Instant::now() < deadline, "pronto serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--api", &format!("http://127.0.0.1:{}", self.control)])
            .args(["--invoke-url", &format!("http://127.0.0.1:{}", self.invoke)])
            .output()
            .unwrap()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: our own child, not yet reaped: the pid cannot name another process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }
}

impl Drop for Daemon {
    /// A graceful stop (it tears its instances down), then a kill if that hangs.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The output of a command that must have succeeded: (stdout, stderr).
pub fn ok(out: std::process::Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout: {o}\nstderr: {e}");
    (o, e)
}
