//! Calls to the OCI runtime binary (`runc`; `crun` takes the same verbs and flags).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("running {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the container's pid from {path}: {source}")]
    Pid {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{bin} {verb} {id} failed: {stderr}")]
    Failed {
        bin: String,
        verb: &'static str,
        id: String,
        stderr: String,
    },
}

/// One OCI runtime binary with its own state directory (`--root`), so several nodes (or test
/// daemons) on one machine never see each other's containers.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub bin: String,
    pub root: PathBuf,
}

/// `runc state` as far as Pronto needs it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    pub pid: i32,
}

impl OciRuntime {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    async fn run(
        &self,
        verb: &'static str,
        id: &str,
        mut cmd: Command,
    ) -> Result<Vec<u8>, OciError> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(OciError::Failed {
            bin: self.bin.clone(),
            verb,
            id: id.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `create`: sets the container up, its process waiting to exec. The process's stdout and
    /// stderr are `output` (inherited through the runtime, which passes its own stdio through
    /// when there is no terminal). Returns the init process's pid.
    pub async fn create(&self, id: &str, bundle: &Path, output: OwnedFd) -> Result<i32, OciError> {
        let err_file = output.try_clone().map_err(|source| OciError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(bundle.join("runtime.log"))
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(bundle.join("pid"))
            .arg(id)
            .stdout(output)
            .stderr(err_file);
        let status = cmd.status().await.map_err(|source| OciError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        // Our copies of the output pipe's write end go now: only the container keeps one.
        drop(cmd);
        if status.success() {
            let path = bundle.join("pid");
            let pid_err = |source| OciError::Pid {
                path: path.clone(),
                source,
            };
            let text = std::fs::read_to_string(&path).map_err(pid_err)?;
            return text
                .trim()
                .parse()
                .map_err(|e| pid_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
        }
        // The runtime's own error went to its --log file (JSON lines); keep its last message.
        let stderr = std::fs::read_to_string(bundle.join("runtime.log"))
            .ok()
            .and_then(|t| {
                t.lines().rev().find_map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).ok()?["msg"]
                        .as_str()
                        .map(str::to_string)
                })
            })
            .unwrap_or_else(|| status.to_string());
        Err(OciError::Failed {
            bin: self.bin.clone(),
            verb: "create",
            id: id.to_string(),
            stderr,
        })
    }

    pub async fn start(&self, id: &str) -> Result<(), OciError> {
        let mut cmd = self.command();
        cmd.args(["start", id]);
        self.run("start", id, cmd).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        let mut cmd = self.command();
        cmd.args(["kill", id, signal]);
        self.run("kill", id, cmd).await.map(drop)
    }

    /// `delete --force`: kills what is left and removes the container and its cgroup.
    pub async fn delete(&self, id: &str) -> Result<(), OciError> {
        let mut cmd = self.command();
        cmd.args(["delete", "--force", id]);
        match self.run("delete", id, cmd).await {
            Err(OciError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
            r => r.map(drop),
        }
    }

    pub async fn state(&self, id: &str) -> Result<ContainerState, OciError> {
        let mut cmd = self.command();
        cmd.args(["state", id]);
        let out = self.run("state", id, cmd).await?;
        serde_json::from_slice(&out).map_err(|e| OciError::Failed {
            bin: self.bin.clone(),
            verb: "state",
            id: id.to_string(),
            stderr: format!("unreadable state: {e}"),
        })
    }

    /// Ids of every container under this runtime root.
    pub async fn list(&self) -> Result<Vec<String>, OciError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mut cmd = self.command();
        cmd.args(["list", "--format", "json"]);
        let out = self.run("list", "", cmd).await?;
        let states: Option<Vec<ContainerState>> = serde_json::from_slice(&out).unwrap_or_default();
        Ok(states
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.id)
            .collect())
    }
}
