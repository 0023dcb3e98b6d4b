//! `pronto image ...`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use pronto_image::pull::{self, PullProgress};
use pronto_image::unpack::LayerStats;
use pronto_image::{Reference, RegistryClient};
use serde_json::json;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image and unpack it into DIR (which must not exist or be empty), applying
    /// whiteouts as a container engine does.
    Unpack {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        reference: String,
        dir: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an image's pinned digest, layers, sizes and config as JSON.
    Inspect { reference: String },
}

pub async fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let client = RegistryClient::from_env().map_err(|e| anyhow::anyhow!(e))?;
    match cmd {
        ImageCommand::Inspect { reference } => {
            let reference = parse(&reference)?;
            let image = pull::resolve(&client, &reference)
                .await
                .with_context(|| format!("resolving {reference}"))?;
            let layers: Vec<_> = image
                .manifest
                .layers
                .iter()
                .map(|l| json!({"digest": l.digest, "size": l.size, "mediaType": l.media_type}))
                .collect();
            let out = json!({
                "reference": reference.to_string(),
                "pinned": image.pinned.to_string(),
                "digest": image.manifest_digest,
                "indexDigest": image.index_digest,
                "mediaType": image.manifest.media_type,
                "layers": layers,
                "layersSize": image.layers_size(),
                "configDigest": image.manifest.config.digest,
                "config": image.config,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Unpack {
            reference,
            dir,
            json,
        } => {
            let reference = parse(&reference)?;
            let image = pull::resolve(&client, &reference)
                .await
                .with_context(|| format!("resolving {reference}"))?;
            let bar = Arc::new(BarProgress::new(
                image.layers_size(),
                image.manifest.layers.len(),
            ));
            let summary = pull::unpack_image(&client, &image, &dir, bar.clone())
                .await
                .with_context(|| format!("unpacking {} into {}", image.pinned, dir.display()))?;
            bar.bar.finish_and_clear();
            if json {
                let mut v = serde_json::to_value(&summary)?;
                v["digest"] = json!(image.manifest_digest);
                println!("{}", serde_json::to_string_pretty(&v)?);
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
