//! The host seam: everything an instance does to the machine — mounts, network namespaces,
//! the OCI runtime, process liveness and OOM counters — behind one trait.
//!
//! [`LinuxHost`] is the real one (root, runc, overlayfs, `ip netns`). The layers above (start,
//! teardown, crash cleanup here; the scheduler in the server) take an `Arc<dyn Host>`, so they
//! can be tested without root against the recording fake (`fake::FakeHost`, feature `fake`).

use std::fmt::Debug;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::net::TcpStream;

use crate::netns;
use crate::oci::{OciError, OciRuntime};
use crate::procfs;
use crate::userns::{self, IdRange};

/// The directories of an overlay rootfs.
#[derive(Debug, Clone, Copy)]
pub struct Overlay<'a> {
    pub lower: &'a Path,
    pub upper: &'a Path,
    pub work: &'a Path,
    pub target: &'a Path,
}

#[async_trait]
pub trait Host: Send + Sync + Debug {
    /// Mounts an overlay at `o.target`.
    fn mount_overlay(&self, o: Overlay<'_>) -> io::Result<()>;

    /// Mounts a read-only clone of `source` at `target` whose files owned by id `n` appear
    /// owned by `range.host_base + n` (an idmapped mount).
    fn mount_idmapped(&self, source: &Path, target: &Path, range: IdRange) -> io::Result<()>;

    /// Detaches whatever is mounted at `target`; nothing mounted there is not an error.
    fn unmount(&self, target: &Path) -> io::Result<()>;

    /// Makes a filesystem of `bytes` in the (new, sparse) file `image` and mounts it at
    /// `target`: an instance's writable layer, bounded (`diskSize`).
    fn mount_disk(&self, image: &Path, bytes: u64, target: &Path) -> io::Result<()>;

    /// Unmounts `target` (if mounted) and releases what backs `image`; neither existing is not
    /// an error.
    fn unmount_disk(&self, image: &Path, target: &Path) -> io::Result<()>;

    /// Creates network namespace `name` with its loopback up; returns its path.
    fn create_netns(&self, name: &str) -> io::Result<PathBuf>;

    /// Names the network namespace of process `pid` (one the OCI runtime created) `name`, as
    /// `ip netns attach` does; returns its path. [`Host::delete_netns`] removes the name.
    fn attach_netns(&self, name: &str, pid: i32) -> io::Result<PathBuf>;

    /// Deletes network namespace `name`; a missing one is not an error.
    fn delete_netns(&self, name: &str) -> io::Result<()>;

    /// A TCP connection to `127.0.0.1:port` inside the namespace at `netns`.
    async fn connect(&self, netns: &Path, port: u16) -> io::Result<TcpStream>;

    /// Creates container `id` from the bundle in `bundle`, its stdout and stderr both `output`
    /// (the write end of the instance's output pipe: the caller keeps no copy, so the pipe ends
    /// when the container's processes and the runtime are gone); returns the pid of its init
    /// process.
    async fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        output: OwnedFd,
    ) -> Result<i32, OciError>;

    async fn start_container(&self, id: &str) -> Result<(), OciError>;

    /// Kills and removes container `id` and its cgroup; a missing one is not an error.
    async fn delete_container(&self, id: &str) -> Result<(), OciError>;

    /// Every container the runtime knows (under this node's runtime root).
    async fn list_containers(&self) -> Result<Vec<String>, OciError>;

    /// Alive and not a zombie.
    fn process_alive(&self, pid: i32) -> bool;

    /// The kernel OOM-killed a process of cgroup `cgroups_path`.
    fn oom_killed(&self, cgroups_path: &str) -> bool;
}

/// The machine itself: overlayfs, `ip netns`, the OCI runtime binary, `/proc` and cgroupfs.
#[derive(Debug, Clone)]
pub struct LinuxHost {
    pub oci: OciRuntime,
}

#[async_trait]
impl Host for LinuxHost {
    fn mount_overlay(&self, o: Overlay<'_>) -> io::Result<()> {
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            o.lower.display(),
            o.upper.display(),
            o.work.display()
        );
        let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
        rustix::mount::mount(
            "overlay",
            o.target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .map_err(io::Error::from)
    }

    fn mount_idmapped(&self, source: &Path, target: &Path, range: IdRange) -> io::Result<()> {
        userns::mount_idmapped(source, target, range)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        if !pronto_lazyfs::mountinfo::is_mount_point(target)? {
            return Ok(());
        }
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
    }

    fn mount_disk(&self, image: &Path, bytes: u64, target: &Path) -> io::Result<()> {
        crate::disk::mount(image, bytes, target)
    }

    fn unmount_disk(&self, image: &Path, target: &Path) -> io::Result<()> {
        crate::disk::unmount(image, target)
    }

    fn create_netns(&self, name: &str) -> io::Result<PathBuf> {
        netns::create(name)
    }

    fn attach_netns(&self, name: &str, pid: i32) -> io::Result<PathBuf> {
        netns::attach(name, pid)
    }

    fn delete_netns(&self, name: &str) -> io::Result<()> {
        netns::delete(name)
    }

    async fn connect(&self, netns: &Path, port: u16) -> io::Result<TcpStream> {
        netns::connect(netns.to_owned(), port).await
    }

    async fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        output: OwnedFd,
    ) -> Result<i32, OciError> {
        self.oci.create(id, bundle, output).await
    }

    async fn start_container(&self, id: &str) -> Result<(), OciError> {
        self.oci.start(id).await
    }

    async fn delete_container(&self, id: &str) -> Result<(), OciError> {
        self.oci.delete(id).await
    }

    async fn list_containers(&self) -> Result<Vec<String>, OciError> {
        self.oci.list().await
    }

    fn process_alive(&self, pid: i32) -> bool {
        procfs::process_alive(pid)
    }

    fn oom_killed(&self, cgroups_path: &str) -> bool {
        procfs::oom_killed(cgroups_path)
    }
}
