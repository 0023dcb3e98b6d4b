//! The control plane of `pronto serve`.
//!
//! - [`access`]: per-function registry credentials (own or named) and artifact repositories.
//! - [`accel`]: acceleration jobs (`Preparing` → `Ready`/`Failed`).
//! - [`model`]: function specs, the API's input patch and its validation.
//! - [`store`]: the SQLite metadata store (`DATA_DIR/pronto.db`).
//! - [`auth`]: the API token (`DATA_DIR/api-token`) and the middleware that checks it.
//! - [`images`]: image references resolved and pinned to a digest.
//! - [`api`]: the REST API (`/2023-03-30/functions...`), described by `openapi.yaml`.
//! - [`invoke`]: the invoke listener: auth, routing to a function, [`pool`] and [`proxy`].
//! - [`pool`]: instances per function: warm reuse, cold starts, idle reclaim.
//! - [`proxy`]: streams one request to an instance and its response back.
//! - [`metrics`]: what `/metrics` exports (Prometheus/OpenMetrics text).
//! - [`recent`]: each function's last invocations and their cold-start breakdowns.
//! - [`console`]: the web console (`/console`, server-rendered HTML behind the API token).
//!
//! [`Server::new`] opens the data directory; [`Server::start`] (or [`Server::start_on`] with
//! listeners already bound) serves both listeners and returns a [`RunningServer`]; [`serve`]
//! does all of it until a shutdown future completes.

pub mod accel;
pub mod access;
pub mod api;
pub mod auth;
pub mod console;
pub mod explain;
pub mod hot;
pub mod images;
pub mod invoke;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod proxy;
pub mod recent;
pub mod releases;
pub mod store;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use axum::Router;
use pronto_image::RegistryClient;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use auth::ApiToken;
/// The node switches `pronto serve` sets (`--seccomp`, `--userns`).
pub use pronto_runtime::network::{Subnet, DEFAULT_SUBNET};
pub use pronto_runtime::{Isolation, NetworkConfig, SeccompMode, StreamPolicy, UsernsMode};
pub use store::Store;

/// Where `pronto serve` listens for invocations unless told otherwise.
pub const DEFAULT_INVOKE_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9000);
/// How often provisioned instances are checked (a dead one is replaced within this).
pub const PROVISION_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// Where `pronto serve` listens for the control API unless told otherwise.
pub const DEFAULT_CONTROL_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9001);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds `pronto.db` and `api-token`; created (0700) if missing.
    pub data_dir: PathBuf,
    pub control_addr: SocketAddr,
    pub invoke_addr: SocketAddr,
    /// Resolves function images.
    pub registry: RegistryClient,
    /// The OCI runtime binary: `runc` (default) or `crun`.
    pub runtime_bin: String,
    /// An instance with no request for this long is stopped (scale to zero).
    pub idle_timeout: std::time::Duration,
    /// Instances one function may have at once on this node.
    pub max_instances: usize,
    /// Run acceleration jobs (off: functions stay `Preparing`, to be resumed by a later start).
    pub accelerate: bool,
    /// Conversions at once.
    pub max_conversions: usize,
    /// Bound of the node chunk cache (contents of lazily loaded rootfs), in bytes.
    pub chunk_cache_bytes: u64,
    /// What new lazy mounts do with the rest of their image (`pronto serve --background-stream`).
    pub background_stream: StreamPolicy,
    /// Serve `/metrics` on the control listener without the API token.
    pub metrics_public: bool,
    /// The node's memory for instances (MiB): the sum of `memorySize` of live instances stays
    /// within it.
    pub memory_budget_mb: u64,
    /// Cold starts of one function under way at once.
    pub max_concurrent_starts: usize,
    /// Bound of an image's uncompressed layers, in bytes: on the full-pull path of cold starts
    /// and in conversions (`pronto serve --max-unpacked-size`).
    pub max_unpacked_bytes: u64,
    /// How containers are confined (seccomp profile, user namespaces); confined by default.
    pub isolation: pronto_runtime::Isolation,
    /// Instances' outbound network (`--instance-subnet`, `--resolv-conf`); `None`: only
    /// their loopback, whatever `internetAccess` says.
    pub network: Option<pronto_runtime::NetworkConfig>,
    /// Where converted artifacts are pushed for functions without an `artifactRepository`
    /// of their own (`pronto serve --artifact-repository`); `None`: beside each image.
    pub artifact_repository: Option<pronto_image::Reference>,
}

/// The node's memory less a reserve for the daemon and the system (1/8, at least 512 MiB):
/// what instances may use unless `--memory-budget` says otherwise.
pub fn default_memory_budget_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(4 << 20);
    let total_mb = total_kb / 1024;
    total_mb.saturating_sub((total_mb / 8).max(512))
}

impl ServerConfig {
    /// A config with the default addresses.
    pub fn new(data_dir: impl Into<PathBuf>, registry: RegistryClient) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            control_addr: DEFAULT_CONTROL_ADDR,
            invoke_addr: DEFAULT_INVOKE_ADDR,
            registry,
            runtime_bin: "runc".into(),
            idle_timeout: std::time::Duration::from_secs(300),
            max_instances: 10,
            accelerate: true,
            max_conversions: 1,
            chunk_cache_bytes: pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES,
            background_stream: StreamPolicy::Auto,
            metrics_public: false,
            memory_budget_mb: default_memory_budget_mb(),
            max_concurrent_starts: pool::PoolLimits::default().max_concurrent_starts,
            max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
            isolation: pronto_runtime::Isolation::default(),
            network: Some(pronto_runtime::NetworkConfig::default()),
            artifact_repository: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Token(#[from] auth::AuthError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("opening the node's runtime state in {path}: {source}")]
    Node {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding the {listener} listener to {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("serving the {listener} listener: {source}")]
    Serve {
        listener: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {listener} listener task: {source}")]
    Task {
        listener: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What request handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: RegistryClient,
    pub pool: std::sync::Arc<pool::Pool>,
    /// Invocations of functions that are not anonymous need it too.
    pub token: ApiToken,
    /// Pins images at create/update and rebuilds them from what was kept.
    pub images: std::sync::Arc<images::Images>,
    /// Each function's registry client and artifact repository; the named credentials.
    pub access: std::sync::Arc<access::RegistryAccess>,
    /// Defaults of the functions' `maxInstances` and `idleTimeout`.
    pub max_instances: usize,
    pub idle_timeout: std::time::Duration,
    pub accel: std::sync::Arc<accel::Accelerator>,
    /// Hot-set re-layout jobs (after a function's first access trace).
    pub hot: std::sync::Arc<hot::HotPacker>,
    /// Whether acceleration jobs run (see [`ServerConfig::accelerate`]).
    pub accelerate: bool,
    /// Counted as things happen.
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// What a scrape of `/metrics` encodes.
    pub exporter: std::sync::Arc<metrics::Exporter>,
    /// Cancelled when the server stops: long-lived responses (followed logs) end then.
    pub shutdown: CancellationToken,
    /// Wakes the provisioner (provision configs, aliases or versions changed).
    pub provision_kick: std::sync::Arc<tokio::sync::Notify>,
    /// Each function's last invocations (for the console).
    pub recent: std::sync::Arc<recent::RecentInvocations>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// An opened data directory, ready to serve.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    state: AppState,
    token: ApiToken,
    invoke: Router,
}

impl Server {
    /// Creates the data directory if needed, loads (or makes and prints, the first time) the
    /// API token, opens the store, and cleans up instances a previous daemon left behind.
    pub async fn new(config: ServerConfig) -> Result<Server, ServerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|source| ServerError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let (token, created) = auth::load_or_create(&config.data_dir)?;
        if created {
            // Shown once, to whoever started the server; never logged.
            println!(
                "pronto: API token written to {}: {}",
                config.data_dir.join(auth::TOKEN_FILE).display(),
                token.expose()
            );
        }
        let store = Store::open(&config.data_dir)?;
        let node_dir = config.data_dir.join("node");
        let (node, cleaned) = pronto_runtime::Node::open(pronto_runtime::NodeConfig {
            data_dir: node_dir.clone(),
            runtime_bin: config.runtime_bin.clone(),
            registry: config.registry.clone(),
            chunk_cache_bytes: config.chunk_cache_bytes,
            max_unpacked_bytes: config.max_unpacked_bytes,
            isolation: config.isolation,
            network: config.network.clone(),
            background_stream: config.background_stream,
        })
        .await
        .map_err(|source| ServerError::Node {
            path: node_dir,
            source,
        })?;
        if cleaned > 0 {
            tracing::warn!(cleaned, "cleaned up instances left by a previous daemon");
        }
        let mut convert = pronto_convert::ConvertOptions::new(config.data_dir.join("convert"));
        convert.memo = Some(config.data_dir.join("chunk-memo.db"));
        convert.max_unpacked_bytes = config.max_unpacked_bytes;
        // Scratch of conversions a killed daemon left (no conversion runs yet: jobs resume below).
        match pronto_convert::remove_stale_scratch(&convert.work_dir) {
            Ok(removed) => {
                for path in removed {
                    tracing::warn!(path = %path.display(), "removed what an interrupted conversion left");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %convert.work_dir.display(), "cleaning stale conversion scratch")
            }
        }
        let images = std::sync::Arc::new(images::Images::new(config.registry.clone()));
        let access = std::sync::Arc::new(
            access::RegistryAccess::load(
                store.clone(),
                config.registry.clone(),
                config.artifact_repository.clone(),
            )
            .await?,
        );
        let metrics = std::sync::Arc::new(metrics::Metrics::default());
        let accel = accel::Accelerator::new(
            access.clone(),
            images.clone(),
            store.clone(),
            convert,
            config.max_conversions,
            metrics.clone(),
        );
        if config.accelerate {
            let resumed = accel.resume().await?;
            if resumed > 0 {
                tracing::info!(resumed, "resumed acceleration jobs");
            }
        }
        let pool = pool::Pool::new(
            node,
            store.clone(),
            metrics.clone(),
            pool::PoolLimits {
                memory_budget_mb: config.memory_budget_mb,
                max_concurrent_starts: config.max_concurrent_starts.max(1),
            },
        );
        let hot = hot::HotPacker::new(
            access.clone(),
            images.clone(),
            store.clone(),
            pronto_convert::RelayoutOptions::new(config.data_dir.join("convert")),
        );
        if config.accelerate {
            let jobs = hot.clone();
            pool.on_trace_recorded(Box::new(move |function, image| {
                jobs.trace_recorded(function, image)
            }));
            let resumed = hot.resume().await?;
            if resumed > 0 {
                tracing::info!(resumed, "resumed hot pack jobs");
            }
        }
        let exporter = std::sync::Arc::new(metrics::Exporter::new(&metrics, pool.clone()));
        let state = AppState {
            accel,
            hot,
            accelerate: config.accelerate,
            store,
            registry: config.registry.clone(),
            pool,
            metrics,
            exporter,
            shutdown: CancellationToken::new(),
            provision_kick: std::sync::Arc::default(),
            recent: std::sync::Arc::default(),
            token: token.clone(),
            images,
            access,
            max_instances: config.max_instances,
            idle_timeout: config.idle_timeout,
        };
        let invoke = invoke::invoke_router(state.clone());
        Ok(Server {
            config,
            state,
            token,
            invoke,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    /// Binds the configured addresses and serves.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let bind = |listener, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let control = bind("control", self.config.control_addr).await?;
        let invoke = bind("invoke", self.config.invoke_addr).await?;
        self.start_on(control, invoke)
    }

    /// Serves on listeners the caller bound (tests bind port 0).
    pub fn start_on(
        self,
        control: TcpListener,
        invoke: TcpListener,
    ) -> Result<RunningServer, ServerError> {
        let local = |listener, l: &TcpListener| {
            l.local_addr()
                .map_err(|source| ServerError::Serve { listener, source })
        };
        let control_addr = local("control", &control)?;
        let invoke_addr = local("invoke", &invoke)?;
        let cancel = self.state.shutdown.clone();
        let mut tasks = JoinSet::new();
        let control_router = api::control_router(
            self.state.clone(),
            self.token.clone(),
            self.config.metrics_public,
        )
        .merge(console::router(self.state.clone()));
        for (listener, tcp, router) in [
            ("control", control, control_router),
            ("invoke", invoke, self.invoke),
        ] {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let app = router.into_make_service_with_connect_info::<SocketAddr>();
                // Small responses go out at once, not after the client's delayed ACK (Nagle).
                let tcp =
                    axum::serve::ListenerExt::tap_io(tcp, |stream: &mut tokio::net::TcpStream| {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                    });
                let result = axum::serve(tcp, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
                    .map_err(|source| ServerError::Serve { listener, source });
                (listener, result)
            });
        }
        let pool = self.state.pool.clone();
        let reaper_cancel = cancel.clone();
        // Often enough that an instance outlives its idle timeout by at most a quarter of the
        // server's default one.
        let tick = (self.config.idle_timeout / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = reaper_cancel.cancelled() => break,
                    _ = tokio::time::sleep(tick) => pool.reap(),
                }
            }
        });
        // A shutdown's first step starts with the signal, not after the listeners' drain: a
        // request waiting for a cold start is in flight, so the drain would wait for a start
        // stuck on a stalled registry. The starts get a grace period, then are cancelled.
        let (pool, on_shutdown) = (self.state.pool.clone(), cancel.clone());
        tokio::spawn(async move {
            on_shutdown.cancelled().await;
            pool.drain_starts().await;
        });
        tokio::spawn(releases::provisioner(
            self.state.clone(),
            PROVISION_PERIOD,
            self.state.provision_kick.clone(),
            cancel.clone(),
        ));
        tracing::info!(%control_addr, %invoke_addr, data_dir = %self.config.data_dir.display(),
            "pronto serving");
        Ok(RunningServer {
            control_addr,
            invoke_addr,
            token: self.token,
            state: self.state,
            cancel,
            tasks,
        })
    }
}

/// Asks a [`RunningServer`] to stop (from anywhere; cheap to clone).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Stops accepting connections; in-flight requests finish.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// Both listeners, serving. Dropping it stops them (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    pub control_addr: SocketAddr,
    pub invoke_addr: SocketAddr,
    token: ApiToken,
    state: AppState,
    cancel: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), ServerError>)>,
}

impl RunningServer {
    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.cancel.clone())
    }

    /// Stops both listeners and waits for in-flight requests.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.cancel.cancel();
        self.join().await
    }

    /// Waits until both listeners have stopped: after a [`ShutdownHandle::shutdown`], or when
    /// one fails (which stops the other). The first error is returned.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        self.join().await
    }

    async fn join(&mut self) -> Result<(), ServerError> {
        let mut first = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let result = match joined {
                Ok((_, result)) => result,
                Err(source) => Err(ServerError::Task {
                    listener: "server",
                    source,
                }),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "listener stopped");
                self.cancel.cancel();
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        // In-flight requests have drained: now the conversions and the instances go.
        self.state.accel.stop().await;
        self.state.hot.stop().await;
        self.state.pool.shutdown().await;
        self.state.pool.node().close();
        first
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `pronto serve`: opens `config.data_dir`, serves until `shutdown` completes (then lets
/// in-flight requests finish) or a listener fails.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let running = Server::new(config).await?.start().await?;
    let handle = running.shutdown_handle();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        handle.shutdown();
    });
    running.wait().await
}
