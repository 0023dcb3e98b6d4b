//! A recording fake of [`Host`] for tests of the layers above the machine (start, teardown,
//! crash cleanup, the server's scheduler), without root, runc or namespaces.
//!
//! A fake container's "process" is an in-process HTTP/1.1 server on a loopback port: `connect`
//! into the container's namespace reaches it, so readiness probes and proxied requests work as
//! on the real host. The app prints `instance ID: METHOD PATH` for each request to the output
//! pipe it was created with, as a real function prints to its stdout. Every call is recorded ([`FakeHost::events`]); what still exists is in
//! [`FakeHost::leftovers`]. Knobs make starts fail, stall, never become ready or die.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::host::{Host, Overlay};
use crate::oci::OciError;
use crate::userns::IdRange;
use crate::{InstanceSpec, Node};

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    MountDisk(PathBuf),
    UnmountDisk(PathBuf),
    MountOverlay(PathBuf),
    MountIdmapped(PathBuf),
    Unmount(PathBuf),
    CreateNetns(String),
    AttachNetns(String),
    DeleteNetns(String),
    CreateContainer(String),
    StartContainer(String),
    DeleteContainer(String),
}

/// How the fake behaves; change it with [`FakeHost::configure`].
#[derive(Debug, Clone, Default)]
pub struct FakeBehaviour {
    /// Every `create_container` fails with this message.
    pub fail_create: Option<String>,
    /// `start_container` takes this long.
    pub start_delay: Duration,
    /// Started containers never answer HTTP.
    pub never_ready: bool,
    /// Started containers exit at once.
    pub exit_on_start: bool,
}

/// What exists on the fake machine now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub containers: BTreeSet<String>,
    pub netns: BTreeSet<String>,
    pub mounts: BTreeSet<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.netns.is_empty() && self.mounts.is_empty()
    }
}

#[derive(Debug)]
struct FakeContainer {
    pid: i32,
    netns: PathBuf,
    alive: bool,
    oom: bool,
    cgroups_path: String,
    /// The app's address and its accept loop, once started.
    app: Option<(SocketAddr, JoinHandle<()>)>,
    /// The write end of its output pipe, while the "process" lives.
    output: Option<Output>,
}

/// A fake container's stdout and stderr.
type Output = Arc<Mutex<std::fs::File>>;

#[derive(Debug, Default)]
struct State {
    behaviour: FakeBehaviour,
    events: Vec<HostEvent>,
    containers: HashMap<String, FakeContainer>,
    netns: BTreeSet<String>,
    mounts: BTreeSet<PathBuf>,
    next_pid: i32,
}

impl State {
    /// A new live container, not started; returns its pid.
    fn add_container(
        &mut self,
        id: &str,
        netns: PathBuf,
        cgroups_path: String,
        output: Option<Output>,
    ) -> i32 {
        self.next_pid += 1;
        let pid = self.next_pid;
        self.containers.insert(
            id.to_string(),
            FakeContainer {
                pid,
                netns,
                alive: true,
                oom: false,
                cgroups_path,
                app: None,
                output,
            },
        );
        pid
    }
}

#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<State>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake host poisoned")
    }

    pub fn configure(&self, f: impl FnOnce(&mut FakeBehaviour)) {
        f(&mut self.state().behaviour);
    }

    pub fn events(&self) -> Vec<HostEvent> {
        self.state().events.clone()
    }

    pub fn leftovers(&self) -> Leftovers {
        let s = self.state();
        Leftovers {
            containers: s.containers.keys().cloned().collect(),
            netns: s.netns.clone(),
            mounts: s.mounts.clone(),
        }
    }

    /// Ids of the containers whose process is alive.
    pub fn running(&self) -> BTreeSet<String> {
        let s = self.state();
        s.containers
            .iter()
            .filter(|(_, c)| c.alive)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The container's process dies (with `oom`, as if the kernel OOM-killed it).
    pub fn kill(&self, id: &str, oom: bool) {
        if let Some(c) = self.state().containers.get_mut(id) {
            c.alive = false;
            c.oom |= oom;
            c.output = None;
            if let Some((_, task)) = c.app.take() {
                task.abort();
            }
        }
    }

    /// A container left by "a previous daemon": known to the runtime, not to the node.
    pub fn plant_container(&self, id: &str) {
        self.state()
            .add_container(id, PathBuf::new(), String::new(), None);
    }
}

/// The network namespace path in a bundle's `config.json`: empty when the runtime is to
/// create one (it is then named by `attach_netns`).
fn bundle_netns(bundle: &Path) -> io::Result<(PathBuf, String)> {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let netns = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .ok_or_else(|| io::Error::other("config.json has no network namespace"))?
        .get("path")
        .and_then(|p| p.as_str())
        .unwrap_or_default();
    let cgroups_path = spec["linux"]["cgroupsPath"].as_str().unwrap_or_default();
    Ok((PathBuf::from(netns), cgroups_path.to_string()))
}

fn failed(verb: &'static str, id: &str, stderr: impl Into<String>) -> OciError {
    OciError::Failed {
        bin: "fake".into(),
        verb,
        id: id.to_string(),
        stderr: stderr.into(),
    }
}

#[async_trait]
impl Host for FakeHost {
    fn mount_overlay(&self, o: Overlay<'_>) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::MountOverlay(o.target.to_owned()));
        if !o.lower.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("lower dir {} missing", o.lower.display()),
            ));
        }
        if !s.mounts.insert(o.target.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "mounted twice",
            ));
        }
        Ok(())
    }

    fn mount_idmapped(&self, source: &Path, target: &Path, _range: IdRange) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::MountIdmapped(target.to_owned()));
        if !source.is_dir() || !target.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} or {} missing", source.display(), target.display()),
            ));
        }
        if !s.mounts.insert(target.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "mounted twice",
            ));
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::Unmount(target.to_owned()));
        s.mounts.remove(target);
        Ok(())
    }

    fn mount_disk(&self, image: &Path, _bytes: u64, target: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::MountDisk(target.to_owned()));
        std::fs::File::create_new(image)?;
        std::fs::create_dir_all(target)?;
        if !s.mounts.insert(target.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "mounted twice",
            ));
        }
        Ok(())
    }

    fn unmount_disk(&self, _image: &Path, target: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::UnmountDisk(target.to_owned()));
        s.mounts.remove(target);
        Ok(())
    }

    fn create_netns(&self, name: &str) -> io::Result<PathBuf> {
        let mut s = self.state();
        s.events.push(HostEvent::CreateNetns(name.to_string()));
        if !s.netns.insert(name.to_string()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("netns {name} exists"),
            ));
        }
        Ok(PathBuf::from("/run/netns").join(name))
    }

    fn attach_netns(&self, name: &str, pid: i32) -> io::Result<PathBuf> {
        let mut s = self.state();
        s.events.push(HostEvent::AttachNetns(name.to_string()));
        let path = PathBuf::from("/run/netns").join(name);
        let Some(c) = s.containers.values_mut().find(|c| c.pid == pid) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such process"));
        };
        c.netns = path.clone();
        if !s.netns.insert(name.to_string()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("netns {name} exists"),
            ));
        }
        Ok(path)
    }

    fn delete_netns(&self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.events.push(HostEvent::DeleteNetns(name.to_string()));
        s.netns.remove(name);
        Ok(())
    }

    async fn connect(&self, netns: &Path, port: u16) -> io::Result<TcpStream> {
        let addr = {
            let s = self.state();
            if !s.netns.iter().any(|n| netns.ends_with(n)) {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such netns"));
            }
            s.containers
                .values()
                .find(|c| c.netns == netns && c.alive)
                .and_then(|c| c.app.as_ref().map(|(a, _)| *a))
        };
        let _ = port;
        match addr {
            Some(a) => TcpStream::connect(a).await,
            None => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
        }
    }

    async fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        output: OwnedFd,
    ) -> Result<i32, OciError> {
        let (netns, cgroups_path) =
            bundle_netns(bundle).map_err(|e| failed("create", id, e.to_string()))?;
        let mut output = std::fs::File::from(output);
        let mut s = self.state();
        s.events.push(HostEvent::CreateContainer(id.to_string()));
        if let Some(msg) = s.behaviour.fail_create.clone() {
            // As runc does: its error on its stderr, which is the output pipe.
            let _ = writeln!(output, "{msg}");
            return Err(failed("create", id, msg));
        }
        if s.containers.contains_key(id) {
            return Err(failed("create", id, "container exists"));
        }
        let output = Arc::new(Mutex::new(output));
        Ok(s.add_container(id, netns, cgroups_path, Some(output)))
    }

    async fn start_container(&self, id: &str) -> Result<(), OciError> {
        let behaviour = {
            let mut s = self.state();
            s.events.push(HostEvent::StartContainer(id.to_string()));
            s.behaviour.clone()
        };
        tokio::time::sleep(behaviour.start_delay).await;
        let output = self
            .state()
            .containers
            .get(id)
            .and_then(|c| c.output.clone());
        let app = if behaviour.never_ready || behaviour.exit_on_start {
            None
        } else {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| failed("start", id, e.to_string()))?;
            let addr = listener.local_addr().expect("bound");
            Some((addr, tokio::spawn(serve(listener, id.to_string(), output))))
        };
        let mut s = self.state();
        let Some(c) = s.containers.get_mut(id) else {
            return Err(failed("start", id, "container does not exist"));
        };
        c.app = app;
        if behaviour.exit_on_start {
            c.alive = false;
            c.output = None;
        }
        Ok(())
    }

    async fn delete_container(&self, id: &str) -> Result<(), OciError> {
        let mut s = self.state();
        s.events.push(HostEvent::DeleteContainer(id.to_string()));
        if let Some(c) = s.containers.remove(id) {
            if let Some((_, task)) = c.app {
                task.abort();
            }
        }
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<String>, OciError> {
        Ok(self.state().containers.keys().cloned().collect())
    }

    fn process_alive(&self, pid: i32) -> bool {
        self.state()
            .containers
            .values()
            .any(|c| c.pid == pid && c.alive)
    }

    fn oom_killed(&self, cgroups_path: &str) -> bool {
        self.state()
            .containers
            .values()
            .any(|c| c.cgroups_path == cgroups_path && c.oom)
    }
}

/// The fake app: answers every request `200 instance ID: METHOD PATH` (`/status/NNN`: status
/// NNN), keeping the connection
/// alive as HTTP/1.1 does, and prints the same line to its output.
async fn serve(listener: TcpListener, id: String, output: Option<Output>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (id, output) = (id.clone(), output.clone());
        // In the set: aborting the app aborts its connections, and their hold on the output.
        connections.spawn(async move {
            let _ = answer(stream, &id, output).await;
        });
    }
}

async fn answer(mut stream: TcpStream, id: &str, output: Option<Output>) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut body_len = 0usize;
        let mut close = request_line.ends_with("HTTP/1.0");
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => body_len = v.trim().parse().unwrap_or(0),
                "connection" => close |= v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + body_len);
        let mut parts = request_line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let body = format!("instance {id}: {method} {path}");
        if let Some(out) = &output {
            // A pipe write; small, and the daemon's pump drains it.
            let _ = writeln!(out.lock().expect("output poisoned"), "{body}");
        }
        // `/status/NNN` answers NNN (health checks that fail).
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// A resolved image that exists only in memory (no layers; config `Cmd` = `cmd`), pinned to a
/// registry that does not exist: whatever uses it must not need the registry.
pub fn kept_image(cmd: &[&str]) -> pronto_image::pull::ResolvedImage {
    use pronto_image::{Digest, Reference};
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("serializes");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": pronto_image::manifest::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [],
    }))
    .expect("serializes");
    let pinned: Reference = format!("127.0.0.1:1/test/kept@{}", Digest::of(&manifest))
        .parse()
        .expect("a valid reference");
    pronto_image::pull::ResolvedImage::from_kept(pinned, None, manifest.into(), config.into())
        .expect("consistent by construction")
}

/// A spec for `function` whose image ([`kept_image`]) is already unpacked on `node` (an empty
/// tree), so a start asks no registry.
pub fn local_spec(node: &Node, function: &str) -> InstanceSpec {
    let image = std::sync::Arc::new(kept_image(&["/app"]));
    std::fs::create_dir_all(node.images().path_of(&image.manifest_digest))
        .expect("creating the image dir");
    InstanceSpec {
        function: function.into(),
        image,
        overrides: Default::default(),
        port: 9000,
        memory_mb: 128,
        disk_mb: 512,
        cpu: 0.5,
        init_timeout: Duration::from_secs(5),
        accelerated: false,
        prefetch: None,
        readiness: None,
        internet_access: true,
        registry: None,
        artifact_repository: None,
        artifact_revision: None,
    }
}
