//! `pronto serve`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pronto_image::RegistryClient;
use pronto_server::ServerConfig;

use crate::client::Endpoint;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Control API address.
    #[arg(long, env = "PRONTO_CONTROL_ADDR", default_value_t = pronto_server::DEFAULT_CONTROL_ADDR)]
    control_addr: SocketAddr,
    /// Invoke listener address.
    #[arg(long, env = "PRONTO_INVOKE_ADDR", default_value_t = pronto_server::DEFAULT_INVOKE_ADDR)]
    invoke_addr: SocketAddr,
    /// OCI runtime: runc (default) or crun.
    #[arg(long, env = "PRONTO_RUNTIME", default_value = "runc")]
    runtime: String,
    /// Seconds an on-demand instance may sit idle before it is stopped, for functions that do
    /// not set `idleTimeout`.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Instances one function may have at once, for functions that do not set `maxInstances`.
    #[arg(long, default_value_t = 10)]
    max_instances: usize,
    /// Memory for instances on this node: the sum of `memorySize` of live instances stays
    /// within it (idle ones are stopped to make room, else requests wait, then get 429);
    /// suffixes K, M and G accepted [default: the node's memory less 1/8, at least 512M, for
    /// the system and the daemon]
    #[arg(long, value_parser = crate::image::parse_bytes)]
    memory_budget: Option<u64>,
    /// Cold starts of one function under way at once (a burst waits for them rather than
    /// starting a container per request).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_starts: u32,
    /// Bound of the node chunk cache (contents of lazily loaded root filesystems, in
    /// DATA_DIR/node/chunks); suffixes K, M and G accepted.
    #[arg(long, default_value = "10G", value_parser = crate::image::parse_bytes)]
    chunk_cache_size: u64,
    /// Bound of an image's uncompressed layers (all together) when a cold start pulls it or a
    /// conversion reads it: a decompression bomb stops there; suffixes K, M and G accepted.
    #[arg(long, default_value = "32G", value_parser = crate::image::parse_bytes)]
    max_unpacked_size: u64,
    /// Serve /metrics on the control address without the API token (for a Prometheus that
    /// has no token); the rest of the API still needs it.
    #[arg(long)]
    metrics_public: bool,
    /// Push converted artifacts to this repository (REGISTRY/REPO, no tag) instead of beside
    /// each image, for images the server cannot push to (read-only, public); a function's
    /// customContainerConfig.artifactRepository overrides it.
    #[arg(long, value_name = "REPO", value_parser = crate::image::parse_artifact_repository)]
    artifact_repository: Option<pronto_image::Reference>,
    /// The containers' seccomp filter: `default` is Docker's default profile (no `unshare`,
    /// `mount`, `setns`, `bpf`, namespace flags to `clone`, ...), `unconfined` none.
    #[arg(long, env = "PRONTO_SECCOMP", default_value = "default")]
    seccomp: pronto_server::SeccompMode,
    /// The containers' user namespace: `private` gives each instance its own (root inside
    /// is an unprivileged host uid from 2^30 up, the image seen through an idmapped mount);
    /// `host` runs them in the node's (root inside is root on the node).
    #[arg(long, env = "PRONTO_USERNS", default_value = "private")]
    userns: pronto_server::UsernsMode,
    /// What a new lazy mount does with the rest of its image: `auto` streams it into the
    /// chunk cache when that pays (at once on a fast link, after the start's burst on a slow
    /// one), `always` from the mount on, `off` fetches only what programs read (and prefetch).
    #[arg(long, env = "PRONTO_BACKGROUND_STREAM", default_value = "auto")]
    background_stream: pronto_server::StreamPolicy,
    /// Where instances' addresses come from: each instance with `internetAccess` gets a /30
    /// of it, a veth and NAT out of the node (it can reach neither the node itself nor other
    /// instances); `none`: instances have only their loopback.
    #[arg(long, env = "PRONTO_INSTANCE_SUBNET", default_value = pronto_server::DEFAULT_SUBNET, value_parser = parse_subnet)]
    instance_subnet: InstanceSubnet,
    /// The resolv.conf instances get (as /etc/resolv.conf), name servers on loopback left out.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: std::path::PathBuf,
    /// Log lines on stderr as text (colours only on a terminal, none with NO_COLOR) or one
    /// JSON object each; PRONTO_LOG sets the level (e.g. info, pronto_server=debug).
    #[arg(long, env = "PRONTO_LOG_FORMAT", value_enum, default_value_t = crate::LogFormat::Text)]
    pub log_format: crate::LogFormat,
}

pub async fn run(args: ServeArgs, endpoint: &Endpoint) -> anyhow::Result<()> {
    let registry = RegistryClient::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let mut config = ServerConfig::new(endpoint.data_dir.clone(), registry);
    config.control_addr = args.control_addr;
    config.invoke_addr = args.invoke_addr;
    config.runtime_bin = args.runtime;
    config.idle_timeout = Duration::from_secs(args.idle_timeout);
    config.max_instances = args.max_instances;
    if let Some(bytes) = args.memory_budget {
        config.memory_budget_mb = bytes >> 20;
    }
    config.max_concurrent_starts = args.max_concurrent_starts as usize;
    config.chunk_cache_bytes = args.chunk_cache_size;
    config.max_unpacked_bytes = args.max_unpacked_size;
    config.metrics_public = args.metrics_public;
    config.artifact_repository = args.artifact_repository;
    config.isolation.seccomp = args.seccomp;
    config.isolation.userns = args.userns;
    config.background_stream = args.background_stream;
    config.network = args
        .instance_subnet
        .0
        .map(|subnet| pronto_server::NetworkConfig {
            subnet,
            resolv_conf: args.resolv_conf.clone(),
        });
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let json = args.log_format == crate::LogFormat::Json;
    // For people the banner is plain text; in JSON every line is an event (target `pronto`,
    // shown at the default level).
    if json {
        tracing::info!(target: "pronto", control_addr = %config.control_addr,
            invoke_addr = %config.invoke_addr, data_dir = %config.data_dir.display(), "serving");
    } else {
        eprintln!(
            "pronto: serving control API on {}, invocations on {}, data in {}",
            config.control_addr,
            config.invoke_addr,
            config.data_dir.display()
        );
    }
    pronto_server::serve(config, shutdown)
        .await
        .context("pronto serve")?;
    if json {
        tracing::info!(target: "pronto", "stopped; all instances torn down");
    } else {
        eprintln!("pronto: stopped; all instances torn down");
    }
    Ok(())
}

/// `--instance-subnet`: a subnet, or `none` (no outbound network).
#[derive(Debug, Clone)]
struct InstanceSubnet(Option<pronto_server::Subnet>);

fn parse_subnet(s: &str) -> Result<InstanceSubnet, String> {
    if s == "none" {
        return Ok(InstanceSubnet(None));
    }
    s.parse().map(|subnet| InstanceSubnet(Some(subnet)))
}
