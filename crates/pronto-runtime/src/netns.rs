//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and TCP connections
//! made from inside one.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

const NETNS_DIR: &str = "/run/netns";

/// Creates namespace `name` with its loopback up.
pub fn create(name: &str) -> io::Result<PathBuf> {
    run_ip(&["netns", "add", name])?;
    if let Err(e) = run_ip(&["-n", name, "link", "set", "lo", "up"]) {
        let _ = delete(name);
        return Err(e);
    }
    Ok(path_of(name))
}

/// Names the network namespace of process `pid` `name`: a bind mount of `/proc/PID/ns/net`
/// on `/run/netns/NAME`, which is what `ip netns attach` makes (and `ip netns delete` undoes).
pub fn attach(name: &str, pid: i32) -> io::Result<PathBuf> {
    let path = path_of(name);
    std::fs::create_dir_all(NETNS_DIR)?;
    std::fs::File::create_new(&path)?;
    let source = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let bound = rustix::mount::mount_bind(&source, &path);
    if let Err(e) = bound {
        let _ = std::fs::remove_file(&path);
        return Err(io::Error::other(format!(
            "naming the network namespace of pid {pid} {name}: {e}"
        )));
    }
    Ok(path)
}

/// Deletes namespace `name`; a missing one is not an error.
pub fn delete(name: &str) -> io::Result<()> {
    if !path_of(name).exists() {
        return Ok(());
    }
    run_ip(&["netns", "delete", name])
}

pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Connects to `127.0.0.1:port` inside the namespace at `netns`.
///
/// The socket is created by a short-lived thread of its own that enters the namespace: a socket
/// belongs to the namespace it was created in, wherever it is used afterwards. No thread that
/// serves anything else ever changes namespace.
pub async fn connect(netns: PathBuf, port: u16) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pronto-netns".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns)?;
                // SAFETY: `ns` is an open namespace fd; setns changes only this thread, which
                // ends right after creating the socket.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                tokio::net::TcpSocket::new_v4()
            })();
            let _ = tx.send(result);
        })?;
    let socket = rx.await.map_err(io::Error::other)??;
    socket.set_nodelay(true)?;
    socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}
