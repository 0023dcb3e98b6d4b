//! `pronto image ...`

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use pronto_image::pull::{self, PullProgress};
use pronto_image::unpack::LayerStats;
use pronto_image::{Reference, RegistryClient};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::output::{camel_keys, Output, OutputFormat};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image and unpack it into DIR (which must not exist or be empty), applying
    /// whiteouts as a container engine does.
    Unpack {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
        /// Where to unpack (must not exist, or be empty).
        dir: PathBuf,
        /// Print the summary as JSON (as `-o json`).
        #[arg(long)]
        json: bool,
        /// Bound of the image's uncompressed layers, all together (a decompression bomb
        /// stops there, and nothing is left); suffixes K, M and G accepted.
        #[arg(long, default_value = "32G", value_parser = parse_bytes)]
        max_unpacked_size: u64,
        /// Create no device nodes. By default they are made as the image says, usually mode
        /// 0666 (as umoci does): in a directory other users can reach, that opens the host's
        /// devices to them.
        #[arg(long)]
        skip_devices: bool,
    },
    /// Print an image's pinned digest, layers, sizes and config as JSON.
    Inspect {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
    },
    /// Convert an image into the accelerated format and push it beside the image
    /// (tag `sha256-<digest>.pronto`), or to --artifact-repository.
    Convert {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
        #[command(flatten)]
        artifacts: ArtifactRepositoryArg,
        /// Chunk size in bytes (a power of two, 4 KiB..16 MiB); suffixes K and M accepted.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: u32,
        /// How chunks are compressed (a chunk that does not shrink is stored raw).
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "lz4", "none"])]
        compression: String,
        /// Scratch space for the unpacked tree and the packs.
        #[arg(long, default_value = "/var/tmp/pronto")]
        work_dir: PathBuf,
        /// The chunk memo (dedup across conversions); "none" to disable.
        #[arg(long, default_value = "/var/lib/pronto/chunk-memo.db")]
        memo: String,
        /// Print the report as JSON (as `-o json`).
        #[arg(long)]
        json: bool,
    },
    /// Mount an image's accelerated artifact read-only at DIR (an existing empty directory),
    /// loading lazily: each chunk is fetched from the registry when first read and kept in
    /// the chunk cache. Runs until Ctrl-C or SIGTERM, then unmounts and prints what it fetched.
    Mount {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
        #[command(flatten)]
        args: MountArgs,
    },
    /// Rebuild an image from its accelerated artifact (every chunk fetched and checked) and
    /// compare it with a plain unpack of the image; its hot revision too, if it has one.
    Verify {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
        #[command(flatten)]
        artifacts: ArtifactRepositoryArg,
        /// Scratch space for the plain unpack and the rebuilt tree.
        #[arg(long, default_value = "/var/tmp/pronto")]
        work_dir: PathBuf,
    },
}

/// `--artifact-repository`, shared by convert, verify and mount.
#[derive(clap::Args)]
pub struct ArtifactRepositoryArg {
    /// The repository (REGISTRY/REPO, no tag) that holds the artifact instead of the image's
    /// own: for images you cannot push beside (read-only or public). The artifact is still
    /// tagged `sha256-<source digest>.pronto` and names the source as its subject.
    #[arg(long, value_name = "REPO", value_parser = parse_artifact_repository)]
    artifact_repository: Option<Reference>,
}

pub(crate) fn parse_artifact_repository(s: &str) -> Result<Reference, String> {
    pronto_artifact::parse_repository(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u32, String> {
    u32::try_from(parse_bytes(s)?).map_err(|_| format!("size {s:?} is too large"))
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u64 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `--json` or `-o json|yaml`: the summary as a document (camelCase keys), else text.
fn document(json: bool, output: Option<OutputFormat>) -> Option<OutputFormat> {
    match output {
        Some(OutputFormat::Table) => None,
        Some(f) => Some(f),
        None => json.then_some(OutputFormat::Json),
    }
}

/// Prints a library summary as JSON or YAML, its keys camelCase like the API's.
fn print_document(v: &impl serde::Serialize, format: OutputFormat) -> anyhow::Result<()> {
    let v = camel_keys(serde_json::to_value(v)?);
    Output {
        format,
        color: false,
    }
    .print(&v, |_, _| String::new())
}

pub async fn run(cmd: ImageCommand, output: Option<OutputFormat>) -> anyhow::Result<()> {
    let client = RegistryClient::from_env().map_err(|e| anyhow::anyhow!(e))?;
    match cmd {
        ImageCommand::Inspect { reference } => {
            let image = resolve(&client, &reference).await?;
            let layers: Vec<_> = image
                .manifest
                .layers
                .iter()
                .map(|l| json!({"digest": l.digest, "size": l.size, "mediaType": l.media_type}))
                .collect();
            let out = json!({
                "reference": image.reference.to_string(),
                "pinned": image.pinned.to_string(),
                "digest": image.manifest_digest,
                "indexDigest": image.index_digest,
                "mediaType": image.manifest.media_type,
                "layers": layers,
                "layersSize": image.layers_size(),
                "configDigest": image.manifest.config.digest,
                "config": image.config,
            });
            // The image config keeps its own (Docker's) key names.
            Output {
                format: document(true, output).unwrap_or(OutputFormat::Json),
                color: false,
            }
            .print(&out, |_, _| String::new())?;
        }
        ImageCommand::Convert {
            reference,
            artifacts,
            chunk_size,
            compression,
            work_dir,
            memo,
            json,
        } => {
            let image = resolve(&client, &reference).await?;
            let mut opts = pronto_convert::ConvertOptions::new(work_dir);
            opts.chunk_size = chunk_size;
            opts.compression = match compression.as_str() {
                "lz4" => pronto_format::Compression::Lz4,
                "none" => pronto_format::Compression::None,
                _ => pronto_format::Compression::Zstd,
            };
            opts.memo = (memo != "none").then(|| PathBuf::from(memo));
            opts.artifact_repository = artifacts.artifact_repository;
            let spinner = ProgressBar::new_spinner();
            spinner.set_message(format!("converting {}", image.pinned));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let report = pronto_convert::convert(&client, &image, &opts)
                .await
                .with_context(|| format!("converting {}", image.pinned));
            spinner.finish_and_clear();
            let report = report?;
            if let Some(format) = document(json, output) {
                print_document(&report, format)?;
            } else {
                let secs = report.elapsed.as_secs_f64();
                println!(
                    "converted {} → {}\n  index {} ({} bytes, {} compressed, {:.2}% of the files)\n  {} files, {:.1} MB in {} chunks ({} reused), {} packs ({} new), {:.1} MB stored, {:.1} MB uploaded\n  {:.2} s ({:.2} s unpack + {:.2} s chunking), {:.0} MB/s of file data",
                    image.reference,
                    report.artifact,
                    report.index_digest,
                    report.index_size,
                    report.index_layer_size,
                    100.0 * report.index_size as f64 / report.file_bytes.max(1) as f64,
                    report.files,
                    report.file_bytes as f64 / 1e6,
                    report.chunks,
                    report.reused_chunks,
                    report.packs,
                    report.new_packs,
                    report.stored_bytes as f64 / 1e6,
                    report.uploaded_bytes as f64 / 1e6,
                    secs,
                    report.unpack_time.as_secs_f64(),
                    report.chunk_time.as_secs_f64(),
                    report.file_bytes as f64 / 1e6 / secs.max(1e-9),
                );
            }
        }
        ImageCommand::Mount { reference, args } => mount(&client, &reference, args, output).await?,
        ImageCommand::Verify {
            reference,
            artifacts,
            work_dir,
        } => {
            let image = resolve(&client, &reference).await?;
            let spinner = ProgressBar::new_spinner();
            spinner.set_message(format!("verifying the artifact of {}", image.pinned));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let repo = artifacts.artifact_repository.as_ref();
            let report = pronto_convert::verify(&client, &image, repo, &work_dir)
                .await
                .with_context(|| format!("verifying the artifact of {}", image.pinned));
            spinner.finish_and_clear();
            let report = report?;
            println!(
                "ok: {} matches {}: {} entries, {} files, {} chunks, {:.1} MB",
                report.artifact,
                image.pinned,
                report.entries,
                report.files,
                report.chunks,
                report.file_bytes as f64 / 1e6
            );
            if let Some(hot) = &report.hot {
                println!(
                    "ok: {} (hot revision, index {}) matches {} too: {} chunks",
                    hot.artifact, hot.index_digest, image.pinned, hot.chunks
                );
            }
        }
        ImageCommand::Unpack {
            reference,
            dir,
            json,
            max_unpacked_size,
            skip_devices,
        } => {
            // SIGINT/SIGTERM cancel the unpack: it removes its staging and download
            // directories before it returns, then the process exits as the signal would have.
            let (cancel, signalled) = cancel_on_signal()?;
            let image = tokio::select! {
                image = resolve(&client, &reference) => image?,
                () = cancel.cancelled() => exit_on_signal(&signalled, &dir),
            };
            let bar = Arc::new(BarProgress::new(
                image.layers_size(),
                image.manifest.layers.len(),
            ));
            let options = pull::UnpackOptions {
                max_unpacked_bytes: max_unpacked_size,
                cancel: cancel.clone(),
                skip_devices,
            };
            let result =
                pull::unpack_image_with(&client, &image, &dir, bar.clone(), &options).await;
            if let Err(pull::PullError::Cancelled) = result {
                bar.bar.finish_and_clear();
                exit_on_signal(&signalled, &dir);
            }
            let summary = result
                .with_context(|| format!("unpacking {} into {}", image.pinned, dir.display()))?;
            bar.bar.finish_and_clear();
            if let Some(format) = document(json, output) {
                let mut v = serde_json::to_value(&summary)?;
                v["digest"] = json!(image.manifest_digest);
                print_document(&v, format)?;
            } else {
                let secs = summary.elapsed.as_secs_f64();
                println!(
                    "unpacked {} ({}) into {}\n  {} layers, {:.1} MB compressed, {:.1} MB of files, {} entries, {} whiteouts\n  {:.2} s, {:.0} MB/s of file data",
                    image.reference,
                    image.manifest_digest,
                    dir.display(),
                    summary.layers,
                    summary.compressed_bytes as f64 / 1e6,
                    summary.file_bytes as f64 / 1e6,
                    summary.entries,
                    summary.whiteouts,
                    secs,
                    summary.file_bytes as f64 / 1e6 / secs.max(1e-9),
                );
            }
        }
    }
    Ok(())
}

/// A token cancelled at the first SIGINT or SIGTERM, and which one it was.
fn cancel_on_signal() -> anyhow::Result<(CancellationToken, Arc<AtomicI32>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (cancel, signalled) = (CancellationToken::new(), Arc::new(AtomicI32::new(0)));
    let (c, s) = (cancel.clone(), signalled.clone());
    tokio::spawn(async move {
        let number = tokio::select! {
            _ = term.recv() => SIGTERM,
            _ = int.recv() => SIGINT,
        };
        s.store(number, Ordering::SeqCst);
        c.cancel();
    });
    Ok((cancel, signalled))
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Exits as a shell reports a process ended by `signalled` (128 + its number: 130, 143).
fn exit_on_signal(signalled: &AtomicI32, dir: &std::path::Path) -> ! {
    let number = signalled.load(Ordering::SeqCst);
    let name = if number == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!(
        "pronto: {name}: unpack into {} stopped, temporary files removed",
        dir.display()
    );
    std::process::exit(128 + number)
}

#[derive(clap::Args)]
pub struct MountArgs {
    /// The mount point (an existing empty directory).
    dir: PathBuf,
    #[command(flatten)]
    artifacts: ArtifactRepositoryArg,
    /// The chunk cache (kept across mounts).
    #[arg(long, default_value = "/var/cache/pronto/chunks")]
    cache_dir: PathBuf,
    /// Bound of the chunk cache; suffixes K, M and G accepted.
    #[arg(long, default_value = "10G", value_parser = parse_bytes)]
    cache_size: u64,
    /// Write the access trace (the chunks read, first read first; see docs/format.md) to
    /// FILE on exit.
    #[arg(long, value_name = "FILE")]
    save_trace: Option<PathBuf>,
    /// Prefetch the access trace in FILE (from --save-trace) right after mounting.
    #[arg(long, value_name = "FILE", conflicts_with = "save_trace")]
    prefetch: Option<PathBuf>,
    /// Print the counters as JSON on exit (as `-o json`).
    #[arg(long)]
    json: bool,
}

async fn mount(
    client: &RegistryClient,
    reference: &str,
    args: MountArgs,
    output: Option<OutputFormat>,
) -> anyhow::Result<()> {
    let MountArgs {
        dir,
        artifacts,
        cache_dir,
        cache_size,
        save_trace,
        prefetch,
        json,
    } = args;
    let (dir, cache_dir) = (dir.as_path(), cache_dir.as_path());
    let trace = match &prefetch {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the access trace {}", path.display()))?;
            Some(
                pronto_lazyfs::AccessTrace::from_bytes(&bytes)
                    .with_context(|| format!("access trace {}", path.display()))?,
            )
        }
        None => None,
    };
    let image = resolve(client, reference).await?;
    let repo = artifacts
        .artifact_repository
        .as_ref()
        .unwrap_or(&image.pinned);
    let artifact = pronto_artifact::fetch_artifact_in(client, &image, repo)
        .await
        .with_context(|| format!("fetching the accelerated artifact of {}", image.pinned))?;
    let cache = pronto_lazyfs::ChunkCache::open(cache_dir, cache_size)
        .with_context(|| format!("opening the chunk cache in {}", cache_dir.display()))?;
    let options = pronto_lazyfs::MountOptions {
        record_access: save_trace.is_some(),
        ..Default::default()
    };
    let mut mount = pronto_lazyfs::LazyMount::mount(
        &artifact,
        client.clone(),
        Arc::new(cache),
        dir,
        &options,
        tokio::runtime::Handle::current(),
    )
    .with_context(|| format!("mounting {} at {}", artifact.reference, dir.display()))?;
    if let Some(trace) = &trace {
        let n = mount.prefetch(trace);
        eprintln!(
            "prefetching {n} chunks (of {} in the trace)",
            trace.chunks.len()
        );
    }
    eprintln!(
        "mounted {} ({} inodes, index {}) at {}; Ctrl-C unmounts",
        image.pinned,
        artifact.index.inode_count(),
        artifact.index_digest,
        dir.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    mount.stop_prefetch();
    let stats = mount.stats();
    if let Some(path) = &save_trace {
        let trace = mount.take_access_trace().unwrap_or_default();
        std::fs::write(path, trace.to_bytes())
            .with_context(|| format!("writing the access trace {}", path.display()))?;
        eprintln!(
            "access trace: {} chunks, written to {}",
            trace.len(),
            path.display()
        );
    }
    tokio::task::spawn_blocking(move || mount.unmount())
        .await?
        .with_context(|| format!("unmounting {}", dir.display()))?;
    if let Some(format) = document(json, output) {
        print_document(&stats, format)?;
    } else {
        eprintln!("unmounted {}: {stats}", dir.display());
    }
    Ok(())
}

/// Parses and resolves a reference given on the command line.
async fn resolve(client: &RegistryClient, reference: &str) -> anyhow::Result<pull::ResolvedImage> {
    let reference = parse(reference)?;
    pull::resolve(client, &reference)
        .await
        .with_context(|| format!("resolving {reference}"))
}

fn parse(reference: &str) -> anyhow::Result<Reference> {
    reference
        .parse()
        .with_context(|| format!("invalid image reference {reference:?}"))
}

/// A download bar (bytes) whose message counts unpacked layers; hidden when stderr is no tty.
struct BarProgress {
    bar: ProgressBar,
    layers: usize,
}

impl BarProgress {
    fn new(total: u64, layers: usize) -> BarProgress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("0/{layers} layers unpacked"));
        BarProgress { bar, layers }
    }
}

impl PullProgress for BarProgress {
    fn downloaded(&self, n: u64) {
        self.bar.inc(n);
    }
    fn layer_unpacked(&self, index: usize, _stats: &LayerStats) {
        self.bar
            .set_message(format!("{}/{} layers unpacked", index + 1, self.layers));
    }
}
