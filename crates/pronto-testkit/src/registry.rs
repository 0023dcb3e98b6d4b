//! The real registry (Debian's `docker-registry`, Docker Distribution 2.8) as a test fixture.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pronto_image::{Digest, Reference};

use crate::token_server::{self, TokenServer};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How the registry asks clients to authenticate.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// htpasswd (HTTP Basic) with one user.
    Basic { username: String, password: String },
    /// Bearer tokens from a [`TokenServer`] (which checks one username and password).
    Token { username: String, password: String },
}

/// A running registry with its own storage directory; stopped (by PID) on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: Option<Child>,
    /// Kept alive as long as the registry: it issues the tokens.
    pub token_server: Option<TokenServer>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> TestRegistry {
        Self::start_with(None).expect("starting docker-registry (run scripts/install-deps.sh)")
    }

    pub fn start_with(auth: Option<RegistryAuth>) -> anyhow::Result<TestRegistry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} not found: install the docker-registry package");
        }
        let mut dir = tempfile::Builder::new()
            .prefix("pronto-registry-")
            .tempdir()?;
        let mut last_err = None;
        // A free port can be taken between our probe and the registry's bind: retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = dir.path().join("config.yml");
            let mut yaml = format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            );
            if let Some(RegistryAuth::Basic { username, password }) = &auth {
                let hash = bcrypt::hash(password, 4)?;
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{username}:{hash}\n"))?;
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: pronto-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let mut token_server = None;
            if let Some(RegistryAuth::Token { username, password }) = &auth {
                let server = TokenServer::start(username, password)?;
                let bundle = dir.path().join("token-cert.pem");
                std::fs::write(&bundle, &server.cert_pem)?;
                yaml.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    token_server::SERVICE,
                    token_server::ISSUER,
                    bundle.display()
                ));
                token_server = Some(server);
            }
            std::fs::write(&config, yaml)?;
            let child = spawn_registry(dir.path())?;
            let mut reg = TestRegistry {
                child: Some(child),
                token_server,
                dir,
                addr,
            };
            match reg.wait_ready() {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    last_err = Some(e);
                    reg.stop();
                    dir = std::mem::replace(&mut reg.dir, tempfile::tempdir()?);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("docker-registry exited with {status}: {}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "docker-registry did not listen on {} within 15 s: {}",
            self.addr,
            self.log()
        )
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("registry.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT/<repo_and_tag>` parsed.
    pub fn reference(&self, repo_and_tag: &str) -> Reference {
        format!("{}/{repo_and_tag}", self.host())
            .parse()
            .expect("valid test reference")
    }

    /// Where the registry stores a blob's bytes (to tamper with it in tests).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Number and total size of the blobs stored.
    pub fn blob_usage(&self) -> (usize, u64) {
        let root = self
            .dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256");
        let mut count = 0;
        let mut bytes = 0;
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(m) = std::fs::metadata(blob.path().join("data")) {
                    count += 1;
                    bytes += m.len();
                }
            }
        }
        (count, bytes)
    }

    /// Starts the registry again after [`TestRegistry::stop`]: same port, same storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.child = Some(spawn_registry(self.dir.path())?);
            self.wait_ready()?;
        }
        Ok(())
    }

    /// Restarts the registry read-only (Distribution's `maintenance.readonly`): reads as
    /// before, every push refused (405): a registry the server cannot push to.
    pub fn make_read_only(&mut self) -> anyhow::Result<()> {
        let config = self.dir.path().join("config.yml");
        let yaml = std::fs::read_to_string(&config)?;
        let yaml = yaml.replacen(
            "storage:\n",
            "storage:\n  maintenance:\n    readonly:\n      enabled: true\n",
            1,
        );
        std::fs::write(&config, yaml)?;
        self.stop();
        self.restart()
    }

    /// The process id (tests check it is gone after a stop).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the registry: SIGTERM, then SIGKILL after 5 s. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: `pid` is our own child, not yet reaped (we hold its `Child`), so it cannot
        // name another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts `docker-registry` on the `config.yml` in `dir`, logging to `registry.log` there.
fn spawn_registry(dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes the
    // kernel kill the registry if the test process dies without running our Drop.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("spawning docker-registry")
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
