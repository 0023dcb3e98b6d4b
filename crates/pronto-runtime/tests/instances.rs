//! Instances against the real parts: registry, overlayfs, network namespaces, cgroups, runc.
//! Needs root.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pronto_image::{pull, ClientOptions, RegistryClient};
use pronto_runtime::bundle::ProcessOverrides;
use pronto_runtime::{
    InstanceSpec, Isolation, NetworkConfig, Node, NodeConfig, SeccompMode, StartError, UsernsMode,
};
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CGI_INFO: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"pids=$(ls /proc | grep -c '^[0-9]')\"\necho \"host=$(hostname)\"\necho \"user=$(id -u)\"\necho \"greeting=$GREETING\"\n";
/// What confines the CGI's process: its seccomp mode, its user namespace's map, whether it may
/// make a user namespace of its own, the owner of a file the image gives to uid 1000, and
/// whether it can write its `/tmp`.
const CGI_CONFINEMENT: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\ngrep '^Seccomp:' /proc/self/status | tr -d '\\t '\necho \"uid_map=$(tr -s ' ' < /proc/self/uid_map)\"\nif busybox unshare -U true 2>/tmp/unshare.err; then echo unshare=allowed; else echo \"unshare=refused $(cat /tmp/unshare.err)\"; fi\necho \"owner=$(busybox stat -c %u:%g /www/owned)\"\necho x > /tmp/written && echo tmp=writable\n";
/// `GET /cgi-bin/net?HOST+PORT+PATH`: `GET PATH` from `HOST:PORT` with busybox `nc` within
/// 2 s (a name is resolved with busybox `nslookup` through `/etc/resolv.conf`: the static
/// busybox's libc resolver crashes, and so does its `wget`); prints the answer and `fetched`, or
/// `unreachable`.
const CGI_NET: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nset -- $(echo \"$QUERY_STRING\" | tr '+' ' ')\nhost=$1\ncase \"$host\" in *[a-z]*) host=$(nslookup -type=a \"$1\" 2>/dev/null | awk '/^Name:/ {n=1} n && /^Address/ {print $2; exit}') ;; esac\necho \"resolved=$host\"\nout=$( [ -n \"$host\" ] && printf 'GET %s HTTP/1.0\\r\\n\\r\\n' \"$3\" | nc -w 2 \"$host\" \"$2\" 2>/dev/null)\ncase \"$out\" in HTTP/*) echo \"$out\"; echo fetched ;; *) echo unreachable ;; esac\n";
const CGI_HOG: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nawk 'BEGIN { s = \"x\"; while (length(s) < 400000000) s = s s }' && echo survived\n";

struct Fixture {
    registry: TestRegistry,
    data: tempfile::TempDir,
    node: Node,
    image: Arc<pull::ResolvedImage>,
}

async fn fixture() -> Fixture {
    fixture_with(Isolation::default()).await
}

async fn fixture_with(isolation: Isolation) -> Fixture {
    fixture_on(isolation, None).await
}

async fn fixture_on(isolation: Isolation, network: Option<NetworkConfig>) -> Fixture {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("fn/httpd:v1");
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .dir("www/cgi-bin")
                .file("www/index.html", b"hello from the container\n")
                .file("www/cgi-bin/info", CGI_INFO)
                .mode(0o755)
                .file("www/cgi-bin/hog", CGI_HOG)
                .mode(0o755)
                .file("www/cgi-bin/net", CGI_NET)
                .mode(0o755)
                .file("www/cgi-bin/confinement", CGI_CONFINEMENT)
                .mode(0o755)
                .file("www/owned", b"the image gives this file to uid 1000\n")
                .owner(1000, 1000),
        )
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .env("GREETING=from-image")
        .push(&client, &reference)
        .await
        .unwrap();
    let image = Arc::new(pull::resolve(&client, &reference).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    let (node, cleaned) = Node::open(NodeConfig {
        data_dir: data.path().to_owned(),
        runtime_bin: "runc".into(),
        registry: client,
        chunk_cache_bytes: pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES,
        max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
        background_stream: pronto_runtime::StreamPolicy::Auto,
        isolation,
        network,
    })
    .await
    .unwrap();
    assert_eq!(cleaned, 0);
    Fixture {
        registry,
        data,
        node,
        image,
    }
}

impl Drop for Fixture {
    /// Whatever the test left running (a failed assertion skips its `stop`) is cleaned up the
    /// way a restarted node does it, on a runtime of its own.
    fn drop(&mut self) {
        let data_dir = self.data.path().to_owned();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("cleanup runtime");
            rt.block_on(Node::open(NodeConfig {
                data_dir,
                runtime_bin: "runc".into(),
                registry: RegistryClient::new(ClientOptions::default()).unwrap(),
                chunk_cache_bytes: pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES,
                max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
                background_stream: pronto_runtime::StreamPolicy::Auto,
                isolation: Default::default(),
                network: None,
            }))
            .map(drop)
        })
        .join();
    }
}

fn spec(f: &Fixture) -> InstanceSpec {
    InstanceSpec {
        function: "hello".into(),
        image: f.image.clone(),
        overrides: ProcessOverrides::default(),
        port: 9000,
        memory_mb: 128,
        disk_mb: 512,
        cpu: 0.5,
        init_timeout: Duration::from_secs(10),
        accelerated: false,
        prefetch: None,
        readiness: None,
        internet_access: true,
        registry: None,
        artifact_repository: None,
        artifact_revision: None,
    }
}

async fn get(instance: &pronto_runtime::Instance, path: &str) -> String {
    let mut s = instance.connect().await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Nothing of instance `id` is left on the machine.
fn assert_gone(data: &Path, id: &str, pid: i32) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/{id}/")),
        "mount of instance {id} left: {mounts}"
    );
    let run = pronto_runtime::layout::run_dir(&data.canonicalize().unwrap()).join(id);
    assert!(!run.exists(), "mount point dir {} left", run.display());
    assert!(
        !Path::new(&format!("/run/netns/pronto-{id}")).exists(),
        "netns left"
    );
    for hierarchy in ["memory", "cpu", "pids"] {
        let cg = format!("/sys/fs/cgroup/{hierarchy}/pronto-{id}");
        assert!(!Path::new(&cg).exists(), "cgroup {cg} left");
    }
    assert!(!Path::new(&format!("/sys/fs/cgroup/pronto-{id}")).exists());
    assert!(
        !data.join("instances").join(id).exists(),
        "instance dir left"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "process {pid} still running: {stat}"
    );
}

#[tokio::test]
async fn serves_isolated_and_leaves_nothing_behind() {
    let f = fixture().await;
    let mut s = spec(&f);
    s.overrides
        .env
        .insert("GREETING".into(), "from-function".into());
    let instance = f.node.start(s).await.unwrap();
    let t = instance.timings;
    assert!(t.image_pulled, "first start pulls the image");
    assert!(t.image_ready <= t.container_started && t.container_started <= t.app_ready);

    let page = get(&instance, "/index.html").await;
    assert!(
        page.starts_with("HTTP/1.") && page.ends_with("hello from the container\n"),
        "{page}"
    );

    let info = get(&instance, "/cgi-bin/info").await;
    // Own pid namespace: httpd, the CGI shell and its helpers, not the host's hundreds.
    let pids: usize = info
        .split("pids=")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids < 10, "sees {pids} processes: {info}");
    assert!(
        info.contains(&format!("host={}", instance.id)),
        "own uts namespace: {info}"
    );
    assert!(
        info.contains("greeting=from-function"),
        "function env wins: {info}"
    );
    // Own network namespace: its port is not reachable on the host's loopback.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 9000)).is_err() || {
            // something else may listen on the host's 9000; then it must not be our httpd
            true
        }
    );
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let inst_ns = std::fs::read_link(format!("/proc/{}/ns/net", instance.pid())).unwrap();
    assert_ne!(host_ns, inst_ns);
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        host_mnt,
        std::fs::read_link(format!("/proc/{}/ns/mnt", instance.pid())).unwrap()
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", instance.pid())).unwrap();
    assert!(
        cgroups.contains(&format!("pronto-{}", instance.id)),
        "{cgroups}"
    );

    // A second instance reuses the unpacked image.
    let second = f.node.start(spec(&f)).await.unwrap();
    assert!(!second.timings.image_pulled);

    let (id, pid) = (instance.id.clone(), instance.pid());
    instance.stop().await.unwrap();
    assert_gone(f.data.path(), &id, pid);
    let (id2, pid2) = (second.id.clone(), second.pid());
    second.stop().await.unwrap();
    assert_gone(f.data.path(), &id2, pid2);
}

/// The lines of the confinement CGI, as `key=value` or `Key:value`.
async fn confinement(instance: &pronto_runtime::Instance) -> String {
    let out = get(instance, "/cgi-bin/confinement").await;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or(&out).to_string();
    assert!(
        body.contains("tmp=writable"),
        "the function writes its /tmp: {out}"
    );
    assert!(
        body.contains("owner=1000:1000"),
        "files keep the image's owners: {out}"
    );
    body
}

#[tokio::test]
async fn functions_run_under_the_default_seccomp_profile_in_a_user_namespace() {
    let f = fixture().await;
    let instance = f.node.start(spec(&f)).await.unwrap();
    let c = confinement(&instance).await;
    assert!(c.contains("Seccomp:2\n"), "filtered: {c}");
    // Root inside is an unprivileged host uid of a range of its own.
    let map = c.split("uid_map=").nth(1).unwrap().lines().next().unwrap();
    let fields: Vec<u64> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 3, "{c}");
    assert_eq!((fields[0], fields[2]), (0, 65536), "{c}");
    let base = fields[1];
    assert!((1 << 30..1 << 31).contains(&base), "{c}");
    // What it writes is owned on the node by that range, not by root.
    use std::os::unix::fs::MetadataExt;
    let written = f
        .data
        .path()
        .join("instances")
        .join(&instance.id)
        .join("disk/upper/tmp/written");
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!((meta.uid() as u64, meta.gid() as u64), (base, base));
    let second = f.node.start(spec(&f)).await.unwrap();
    let c2 = confinement(&second).await;
    assert!(
        !c2.contains(map),
        "each instance has its own range: {map} / {c2}"
    );
    second.stop().await.unwrap();
    assert!(
        c.contains("unshare=refused") && c.contains("Operation not permitted"),
        "no user namespace of its own (EPERM): {c}"
    );
    let (id, pid) = (instance.id.clone(), instance.pid());
    instance.stop().await.unwrap();
    assert_gone(f.data.path(), &id, pid);
}

#[tokio::test]
async fn an_unconfined_node_sets_no_seccomp_filter() {
    let f = fixture_with(Isolation {
        seccomp: SeccompMode::Unconfined,
        ..Default::default()
    })
    .await;
    let instance = f.node.start(spec(&f)).await.unwrap();
    let c = confinement(&instance).await;
    assert!(c.contains("Seccomp:0\n"), "no filter: {c}");
    instance.stop().await.unwrap();
}

#[tokio::test]
async fn a_node_with_host_user_namespaces_runs_root_as_root() {
    let f = fixture_with(Isolation {
        userns: UsernsMode::Host,
        ..Default::default()
    })
    .await;
    let instance = f.node.start(spec(&f)).await.unwrap();
    let c = confinement(&instance).await;
    assert!(c.contains("uid_map= 0 0 4294967295\n"), "{c}");
    let (id, pid) = (instance.id.clone(), instance.pid());
    instance.stop().await.unwrap();
    assert_gone(f.data.path(), &id, pid);
}

#[tokio::test]
async fn memory_limit_kills_the_hog() {
    let f = fixture().await;
    let mut s = spec(&f);
    s.memory_mb = 64;
    let instance = f.node.start(s).await.unwrap();
    assert!(!instance.oom_killed());
    let out = get(&instance, "/cgi-bin/hog").await;
    assert!(
        !out.contains("survived"),
        "a 400 MB allocation under a 64 MB limit: {out}"
    );
    assert!(
        instance.oom_killed(),
        "the OOM kill is visible in the instance's cgroup"
    );
    instance.stop().await.unwrap();
}

#[tokio::test]
async fn failures_say_why_and_clean_up() {
    let f = fixture().await;

    let mut s = spec(&f);
    s.overrides.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo starting; echo broken config >&2; exit 3".into(),
    ]);
    let err = f.node.start(s).await.unwrap_err();
    assert!(matches!(err, StartError::Exited { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("the container exited before its port 9000 answered; container output:"),
        "{msg}"
    );
    assert!(msg.contains("broken config"), "{msg}");

    let mut s = spec(&f);
    s.overrides.command = Some(vec!["/bin/sleep".into(), "1000".into()]);
    s.init_timeout = Duration::from_millis(800);
    let err = f.node.start(s).await.unwrap_err();
    assert!(matches!(err, StartError::InitTimeout { .. }), "{err}");
    assert!(err.to_string().starts_with(
        "the container did not answer HTTP on port 9000 within the initialization timeout of 800ms"
    ));

    let mut s = spec(&f);
    s.overrides.command = Some(vec!["/no/such/binary".into()]);
    let err = f.node.start(s).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/binary"), "{err}");

    // Every failed start was torn down.
    assert_eq!(
        std::fs::read_dir(f.data.path().join("instances"))
            .unwrap()
            .count(),
        0
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&f.data.path().display().to_string()));
}

#[tokio::test]
async fn a_new_node_cleans_up_after_a_crashed_one() {
    let f = fixture().await;
    let instance = f.node.start(spec(&f)).await.unwrap();
    let (id, pid) = (instance.id.clone(), instance.pid());
    // The daemon "crashes": the instance is never stopped.
    drop(instance);
    assert!(Path::new(&format!("/run/netns/pronto-{id}")).exists());
    let (_node, cleaned) = Node::open(NodeConfig {
        data_dir: f.data.path().to_owned(),
        runtime_bin: "runc".into(),
        registry: RegistryClient::new(ClientOptions::default()).unwrap(),
        chunk_cache_bytes: pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES,
        max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
        background_stream: pronto_runtime::StreamPolicy::Auto,
        isolation: Default::default(),
        network: None,
    })
    .await
    .unwrap();
    assert_eq!(cleaned, 1);
    assert_gone(f.data.path(), &id, pid);
}

/// The node's addresses other than loopback and the test's own links (e.g. `eth0`'s).
fn node_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" pn") && !l.contains(" ptinet"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .collect()
}

/// A port on every address of the node answering HTTP `node` (what an instance must not reach).
fn node_service() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            use std::io::{Read, Write};
            // Read the request first: closing with unread bytes would reset the connection.
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nnode\n");
        }
    });
    port
}

async fn fetch(instance: &pronto_runtime::Instance, host: &str, port: u16, path: &str) -> String {
    // The whole answer: the CGI's own lines end in \n, the fetched answer's in \r\n.
    get(instance, &format!("/cgi-bin/net?{host}+{port}+{path}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reaches_the_internet_by_name_but_not_the_node_nor_other_instances() {
    let internet = pronto_testkit::internet::Internet::start(
        &["example.test"],
        &[("page.txt", b"hello from the internet\n")],
    );
    let f = fixture_on(
        Isolation::default(),
        Some(NetworkConfig {
            resolv_conf: internet.resolv_conf(),
            ..Default::default()
        }),
    )
    .await;
    let first = f.node.start(spec(&f)).await.unwrap();
    let second = f.node.start(spec(&f)).await.unwrap();
    let mut offline = spec(&f);
    offline.internet_access = false;
    let offline = f.node.start(offline).await.unwrap();
    let (a1, a2) = (first.address().unwrap(), second.address().unwrap());
    assert_ne!(a1, a2);
    assert!(offline.address().is_none());

    // By name, through the DNS answer of the test's internet, and NAT.
    let page = fetch(&first, "example.test", 80, "/page.txt").await;
    assert!(
        page.contains(&format!("resolved={}", internet.addr))
            && page.contains("hello from the internet\n")
            && page.contains("fetched"),
        "{page}"
    );
    let conf =
        std::fs::read_to_string(format!("/proc/{}/root/etc/resolv.conf", first.pid())).unwrap();
    assert!(
        conf.contains(&format!("nameserver {}\n", internet.addr)),
        "{conf}"
    );

    // Not the node: a port open on all its addresses, through its end of the veth or its
    // own address; not the registry on its loopback (the instance's loopback is its own).
    let port = node_service();
    let gateway = std::net::Ipv4Addr::from(u32::from(a1) - 1);
    let mut node = node_addresses();
    node.push(gateway.to_string());
    for addr in &node {
        let out = fetch(&first, addr, port, "/").await;
        assert!(
            out.contains("unreachable") && !out.contains("node"),
            "{addr}:{port}: {out}"
        );
    }
    let registry_port = f.registry.addr().port();
    let out = fetch(&first, "127.0.0.1", registry_port, "/v2/").await;
    assert!(out.contains("unreachable"), "the node's registry: {out}");
    // The node itself reaches that service (the test is sound) and the second instance.
    let direct = reqwest_like(&format!("{}:{port}", node[0])).await;
    assert!(direct.contains("node"), "{direct}");
    assert!(reqwest_like(&format!("{a2}:9000")).await.contains("200 OK"));
    // Not another instance.
    let out = fetch(&first, &a2.to_string(), 9000, "/index.html").await;
    assert!(out.contains("unreachable"), "the second instance: {out}");

    // Without internet access: nothing but itself.
    let out = fetch(&offline, "example.test", 80, "/page.txt").await;
    assert!(out.contains("unreachable"), "{out}");
    let out = fetch(&offline, &internet.addr.to_string(), 80, "/page.txt").await;
    assert!(out.contains("unreachable"), "{out}");

    let links: Vec<String> = [a1, a2]
        .iter()
        .map(|a| format!("pn{:08x}", u32::from(*a) - 2))
        .collect();
    for i in [first, second, offline] {
        let (id, pid) = (i.id.clone(), i.pid());
        i.stop().await.unwrap();
        assert_gone(f.data.path(), &id, pid);
    }
    for l in links {
        assert!(!Path::new("/sys/class/net").join(&l).exists(), "{l} left");
    }
}

/// One HTTP/1.0 GET from the node (no client library needed for this).
async fn reqwest_like(addr: &str) -> String {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr}: no answer in 5 s"))
        .unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// A pull slower than a start may wait: the start gives up at its initialization timeout, the
/// pull goes on, and the next start finds the image on the node (one pull in all, not one per
/// attempt, which would never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_outlasts_its_start_goes_on_for_the_next_one() {
    use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
    let f = fixture().await;
    let proxy = FaultyProxy::start(f.registry.addr());
    let via: pronto_image::Reference = format!("{}/fn/httpd:v1", proxy.host()).parse().unwrap();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let image = Arc::new(pull::resolve(&client, &via).await.unwrap());
    proxy.add(
        Rule::path("/blobs/")
            .method("GET")
            .fault(Fault::Delay(Duration::from_millis(1500))),
    );
    let mut first = spec(&f);
    first.image = image.clone();
    first.init_timeout = Duration::from_millis(500);
    let e = f.node.start(first).await.unwrap_err();
    assert!(matches!(e, StartError::ImageTimeout { .. }), "{e}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f.node.images().has(&image.manifest_digest) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull did not go on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut second = spec(&f);
    second.image = image.clone();
    let instance = f.node.start(second).await.unwrap();
    assert!(
        !instance.timings.image_pulled,
        "the pull already done is used"
    );
    let blob_gets = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .count();
    // The config was read at resolve (before the delay); each layer once.
    let layers = image.manifest.layers.len();
    assert!(
        blob_gets <= layers + 1,
        "{blob_gets} blob reads for {layers} layers"
    );
    instance.stop().await.unwrap();
}
