//! A stand-in for the internet: a network namespace of its own, reached from the node through
//! a veth pair on a random /30 of `198.18.0.0/15` (the benchmarking range, never routed
//! outside), running an HTTP server (busybox `httpd`) and a DNS server (`dnsmasq`) that answers
//! the names the test gives with its own address. Traffic stays on this machine.
//!
//! A node whose instances use [`Internet::resolv_conf`] as their `resolv.conf` resolve those
//! names here, and their packets reach it through the node's NAT like packets to any host.
//! Everything (processes by PID, the namespace, the veth) goes on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Internet {
    netns: String,
    host_if: String,
    /// The address of its end: the HTTP and DNS server.
    pub addr: Ipv4Addr,
    /// The node's end.
    pub gateway: Ipv4Addr,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Internet {
    /// Starts it; `names` resolve to [`Internet::addr`], and `files` (path, content) are
    /// served over HTTP on port 80.
    pub fn start(names: &[&str], files: &[(&str, &[u8])]) -> Internet {
        let mut b = [0u8; 4];
        getrandom(&mut b);
        let tag = hex::encode(&b[..3]);
        let slot = u32::from_le_bytes(b) % (1 << 15);
        let network = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (slot << 2);
        let (gateway, addr) = (Ipv4Addr::from(network + 1), Ipv4Addr::from(network + 2));
        let netns = format!("ptest-inet-{tag}");
        let host_if = format!("ptinet{tag}");
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut net = Internet {
            netns,
            host_if,
            addr,
            gateway,
            dir,
            servers: Vec::new(),
        };
        let ns = net.netns.clone();
        run("ip", &["netns", "add", &ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{gateway}/30"), "dev", &net.host_if],
        );
        run("ip", &["link", "set", &net.host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);

        let www = net.dir.path().join("www");
        for (path, content) in files {
            let p = www.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        std::fs::create_dir_all(&www).expect("mkdir");
        let mut dns = Command::new("ip");
        dns.args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
            ])
            .args(["--user=root", "--log-facility=/dev/null"])
            .arg(format!("--listen-address={addr}"));
        for name in names {
            // Answered here only (AAAA: no data), never forwarded.
            dns.arg(format!("--local=/{name}/"))
                .arg(format!("--host-record={name},{addr}"));
        }
        net.spawn(dns);
        let mut http = Command::new("ip");
        http.args(["netns", "exec", &ns, "busybox", "httpd", "-f"])
            .arg("-p")
            .arg(format!("{addr}:80"))
            .arg("-h")
            .arg(&www);
        net.spawn(http);
        std::fs::write(net.resolv_conf(), format!("nameserver {addr}\n")).expect("resolv.conf");
        net.wait_listening(80);
        net.wait_listening(53);
        net
    }

    /// A `resolv.conf` naming its DNS server.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    fn spawn(&mut self, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a server of the test internet");
        self.servers.push(child);
    }

    /// Until something listens on `port` (TCP) inside, at most 10 s.
    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let port_hex = format!(":{port:04X}");
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns, "cat", "/proc/net/tcp"])
                .output()
                .expect("reading its sockets");
            let listening = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&port_hex) && cols[3] == "0A"
            });
            if listening {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "nothing listens on port {port} in {} after 10 s",
            self.netns
        );
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for child in &mut self.servers {
            // `ip netns exec` execs the server: the pid is the server's.
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn getrandom(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(b))
        .expect("/dev/urandom");
}
