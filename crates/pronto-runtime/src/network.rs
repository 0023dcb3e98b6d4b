//! Outbound network for instances: a veth pair into each instance's network namespace, a
//! point-to-point /30 from a node-local subnet, a default route through the node, NAT out of
//! it, and a `resolv.conf` from the node's.
//!
//! What an instance may reach (nftables table `inet pronto_<node>`, installed when the node
//! opens, replaced by the next daemon after a crash, removed at [`InstanceNetwork::close`]):
//! - anything beyond the node, masqueraded to the node's address on the way out;
//! - **not** the node itself (its control API, invoke listener, a registry or anything else
//!   listening on any of its addresses: the `input` hook drops what comes in on an instance's
//!   veth, but for answers to connections the node opened), and **not** another instance (the `forward` hook drops instance-to-instance
//!   traffic, this node's and any other Pronto's on the machine). Its own loopback is its own.
//!
//! Addresses: each instance takes a /30 (`.1` the node's end, `.2` its `eth0`) at random from
//! the subnet; the claim is a file `/run/pronto/net/<network address>` made with `O_EXCL`, so
//! nodes on one machine never hand out the same /30. The host end is named `pn<address hex>`.
//! Teardown deletes the host end (which takes the pair) and the claim; a claim whose interface
//! is gone for a while (a daemon killed between the two) is taken over.
//!
//! Cost per start: one `ip -batch` run for the pair and the node's end (a veth can only be
//! made over netlink), then the namespace's end configured in-process with the classic
//! ioctls from a thread that enters the namespace (address, up, default route): ~3 ms in
//! all, where a second `ip` run took another ~3 ms.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

/// Where the /30 claims of every node on the machine are.
const CLAIMS_DIR: &str = "/run/pronto/net";
/// A claim without its interface for this long is stale (its daemon died between the two).
const STALE_CLAIM: Duration = Duration::from_secs(30);
/// The subnet instances' addresses come from unless the node says otherwise.
pub const DEFAULT_SUBNET: &str = "10.208.0.0/16";

/// An IPv4 subnet, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected an IPv4 subnet such as {DEFAULT_SUBNET}"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("{s:?}: bad address: {e}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 8 to 28"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s:?}: host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Subnet {
            network: addr,
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// How many /30s it holds.
    fn slots(&self) -> u32 {
        1 << (30 - self.prefix)
    }

    fn slot(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + (i << 2))
    }
}

/// An instance's /30: the node's end (`.1`, on `pn<hex>`) and the instance's `eth0` (`.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub network: Ipv4Addr,
}

impl Link {
    pub fn host_if(&self) -> String {
        format!("pn{:08x}", u32::from(self.network))
    }

    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn instance_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    fn claim_path(&self) -> PathBuf {
        Path::new(CLAIMS_DIR).join(self.network.to_string())
    }
}

/// The node's outbound network: its subnet, rules and `resolv.conf`.
#[derive(Debug)]
pub struct InstanceNetwork {
    subnet: Subnet,
    table: String,
    resolv_conf: PathBuf,
}

impl InstanceNetwork {
    /// Turns forwarding on, installs the node's rules (replacing a crashed daemon's) and
    /// writes the instances' `resolv.conf` into `run_dir` (from `node_resolv_conf`, without its
    /// loopback servers, which an instance cannot reach).
    pub fn open(
        subnet: Subnet,
        run_dir: &Path,
        node_resolv_conf: &Path,
    ) -> io::Result<InstanceNetwork> {
        let tag = run_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node")
            .to_string();
        let net = InstanceNetwork {
            subnet,
            table: format!("pronto_{tag}"),
            resolv_conf: run_dir.join("resolv.conf"),
        };
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| io::Error::new(e.kind(), format!("turning IPv4 forwarding on: {e}")))?;
        nft(&net.ruleset())?;
        let text = fs::read_to_string(node_resolv_conf).unwrap_or_default();
        let (conf, dropped) = instance_resolv_conf(&text);
        if !dropped.is_empty() {
            tracing::warn!(
                servers = ?dropped,
                file = %node_resolv_conf.display(),
                "name servers on loopback are not reachable from instances; left out of their resolv.conf"
            );
        }
        write_atomically(&net.resolv_conf, conf.as_bytes())?;
        fs::create_dir_all(CLAIMS_DIR)?;
        Ok(net)
    }

    /// The file instances see as `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }

    fn ruleset(&self) -> String {
        let (t, s) = (&self.table, self.subnet);
        // `table …; delete table …;` first: idempotent whether or not a crashed daemon's
        // table is there.
        format!(
            "table inet {t}\ndelete table inet {t}\n\
             table inet {t} {{\n\
             \tchain input {{\n\t\ttype filter hook input priority filter - 1; policy accept;\n\
             \t\tiifname \"pn*\" ct state established,related accept\n\
             \t\tiifname \"pn*\" drop\n\t}}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter - 1; policy accept;\n\
             \t\tiifname \"pn*\" oifname \"pn*\" drop\n\t}}\n\
             \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {s} oifname != \"pn*\" masquerade\n\t}}\n\
             }}\n"
        )
    }

    /// Claims a /30 and connects the namespace at `netns` (named `netns_name`) through it.
    pub fn connect(&self, netns_name: &str) -> io::Result<Link> {
        let link = self.claim()?;
        if let Err(e) = self.wire(&link, netns_name) {
            let _ = release(&link);
            return Err(e);
        }
        Ok(link)
    }

    fn wire(&self, link: &Link, netns_name: &str) -> io::Result<()> {
        let hif = link.host_if();
        ip_batch(&format!(
            "link add {hif} type veth peer name eth0 netns {netns_name}\n\
                 addr add {}/30 dev {hif}\n\
                 link set {hif} up\n",
            link.host_addr()
        ))?;
        configure_inside(netns_name, link)
    }

    /// A free /30, claimed.
    fn claim(&self) -> io::Result<Link> {
        let slots = self.subnet.slots();
        for _ in 0..64 {
            let mut b = [0u8; 4];
            rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())?;
            let link = Link {
                network: self.subnet.slot(u32::from_le_bytes(b) % slots),
            };
            match fs::File::create_new(link.claim_path()) {
                Ok(mut f) => {
                    f.write_all(link.host_if().as_bytes())?;
                    return Ok(link);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if claim_is_stale(&link) {
                        tracing::warn!(network = %link.network, "taking over a stale address claim");
                        let _ = fs::remove_file(link.claim_path());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "no free /30 in {} for an instance's network (64 tries)",
            self.subnet
        )))
    }

    /// Removes the node's rules (the daemon is stopping; its instances are gone).
    /// Removes the node's rules and the instances' `resolv.conf` (the daemon is stopping;
    /// its instances are gone). Closing twice is harmless.
    pub fn close(&self) {
        if let Err(e) = nft(&format!(
            "table inet {t}\ndelete table inet {t}\n",
            t = self.table
        )) {
            tracing::warn!(table = %self.table, error = %e, "removing the instances' network rules");
        }
        let _ = fs::remove_file(&self.resolv_conf);
    }
}

impl Drop for InstanceNetwork {
    /// The node is gone (its last handle dropped): so are its rules.
    fn drop(&mut self) {
        self.close();
    }
}

/// Undoes [`InstanceNetwork::connect`]: the host end (and with it the pair) and the claim.
/// Neither existing is not an error.
pub fn release(link: &Link) -> io::Result<()> {
    let hif = link.host_if();
    if Path::new("/sys/class/net").join(&hif).exists() {
        match ip_batch(&format!("link del {hif}\n")) {
            // Gone meanwhile (its namespace went first: a crash cleanup).
            Err(e) if e.to_string().contains("Cannot find device") => {}
            r => r?,
        }
    }
    match fs::remove_file(link.claim_path()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `eth0` inside the named namespace: the instance's address, up, a default route through the
/// node's end. From a short-lived thread that enters the namespace (sockets and ioctls act in
/// the namespace of the thread that made the socket); no other thread changes namespace.
fn configure_inside(netns_name: &str, link: &Link) -> io::Result<()> {
    let path = crate::netns::path_of(netns_name);
    let (addr, gateway) = (link.instance_addr(), link.host_addr());
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            let ns = fs::File::open(&path)?;
            // SAFETY: `ns` is an open namespace fd; setns changes only this thread, which ends
            // when this closure returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a plain socket(2); the fd is owned right away.
            let raw =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new fd nobody else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(raw) };
            let fd = sock.as_raw_fd();
            let mut ifr = ifreq("eth0");
            ifr.ifr_ifru.ifru_addr = sockaddr(addr);
            ioctl(
                fd,
                libc::SIOCSIFADDR,
                &mut ifr,
                "setting the address of eth0",
            )?;
            ifr.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 252));
            ioctl(
                fd,
                libc::SIOCSIFNETMASK,
                &mut ifr,
                "setting the netmask of eth0",
            )?;
            ioctl(
                fd,
                libc::SIOCGIFFLAGS,
                &mut ifr,
                "reading the flags of eth0",
            )?;
            // SAFETY: SIOCGIFFLAGS filled the flags member.
            unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
            ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr, "bringing eth0 up")?;
            let mut route = RtEntry {
                rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
                rt_gateway: sockaddr(gateway),
                rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
                rt_flags: RTF_UP | RTF_GATEWAY,
                ..RtEntry::default()
            };
            ioctl(fd, libc::SIOCADDRT, &mut route, "adding the default route")
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(fd: libc::c_int, request: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
    // SAFETY: `arg` is the struct this request reads or writes, alive for the call.
    if unsafe { libc::ioctl(fd, request, arg as *mut T) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// `struct rtentry` of `<net/route.h>` (the libc crate has it for musl only).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

impl Default for RtEntry {
    fn default() -> Self {
        // SAFETY: all-zero is a valid rtentry (null pointers, zero addresses).
        unsafe { std::mem::zeroed() }
    }
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn claim_is_stale(link: &Link) -> bool {
    let path = link.claim_path();
    let old = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_CLAIM);
    old && !Path::new("/sys/class/net").join(link.host_if()).exists()
}

/// `resolv.conf` for instances: the node's, without name servers on loopback (each instance
/// has its own). Returns the text and the servers left out.
fn instance_resolv_conf(node: &str) -> (String, Vec<String>) {
    let mut out = String::from("# written by pronto from the node's resolv.conf\n");
    let mut dropped = Vec::new();
    for line in node.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let server = words.next().unwrap_or_default();
            let loopback = server
                .parse::<std::net::IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false);
            if loopback {
                dropped.push(server.to_string());
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, dropped)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

fn nft(script: &str) -> io::Result<()> {
    run_with_input(Command::new("nft").args(["-f", "-"]), script)
}

fn ip_batch(script: &str) -> io::Result<()> {
    run_with_input(Command::new("ip").args(["-batch", "-"]), script)
}

fn run_with_input(cmd: &mut Command, input: &str) -> io::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running {program}: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{program}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_say_what_is_wrong() {
        let s: Subnet = "10.208.0.0/16".parse().unwrap();
        assert_eq!(s.slots(), 16384);
        assert_eq!(s.slot(3), Ipv4Addr::new(10, 208, 0, 12));
        assert!("10.208.0.1/16"
            .parse::<Subnet>()
            .unwrap_err()
            .contains("did you mean 10.208.0.0/16"));
        assert!("10.208.0.0/30".parse::<Subnet>().is_err());
        assert!("nope".parse::<Subnet>().is_err());
        let l = Link {
            network: Ipv4Addr::new(10, 208, 1, 4),
        };
        assert_eq!(l.host_if(), "pn0ad00104");
        assert_eq!(l.host_addr(), Ipv4Addr::new(10, 208, 1, 5));
        assert_eq!(l.instance_addr(), Ipv4Addr::new(10, 208, 1, 6));
    }

    #[test]
    fn loopback_name_servers_are_left_out() {
        let (conf, dropped) = instance_resolv_conf(
            "search example\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\noptions edns0\n",
        );
        assert_eq!(dropped, ["127.0.0.53", "::1"]);
        assert!(conf.contains("nameserver 10.255.255.53\n"));
        assert!(conf.contains("search example\n") && conf.contains("options edns0\n"));
        assert!(!conf.contains("127.0.0.53"));
    }
}
