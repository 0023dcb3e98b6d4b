//! `pronto-mkimage`: builds an OCI image from host directories (one layer each) and pushes it.
//! For the demo and the benchmarks, which have no Docker engine to build images with.
//!
//! ```text
//! pronto-mkimage [--compression gzip|zstd|none] [--entrypoint /bin/sh] [--cmd ARG]...
//!                [--env K=V]... --layer DIR[:PREFIX]... REGISTRY/REPO:TAG
//! ```

use anyhow::{bail, Context};
use pronto_image::manifest::Compression;
use pronto_image::RegistryClient;
use pronto_testkit::image::{ImageBuilder, Layer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut compression = Compression::Gzip;
    let mut builder = ImageBuilder::new();
    let mut entrypoint = Vec::new();
    let mut cmd = Vec::new();
    let mut reference = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--compression" => {
                compression = match value()?.as_str() {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    "none" => Compression::None,
                    other => bail!("unknown compression {other:?}"),
                }
            }
            "--layer" => {
                let v = value()?;
                let (dir, prefix) = v.split_once(':').unwrap_or((&v, "."));
                builder = builder.layer(Layer::new(compression).host_dir(dir.as_ref(), prefix));
            }
            "--entrypoint" => entrypoint.push(value()?),
            "--cmd" => cmd.push(value()?),
            "--env" => builder = builder.env(&value()?),
            "--workdir" => builder = builder.working_dir(&value()?),
            "-h" | "--help" => {
                println!("usage: pronto-mkimage [--compression gzip|zstd|none] [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--workdir DIR] --layer DIR[:PREFIX]... REF");
                return Ok(());
            }
            r if !r.starts_with('-') => reference = Some(r.parse::<pronto_image::Reference>()?),
            other => bail!("unknown flag {other}"),
        }
    }
    let reference = reference.context("missing image reference")?;
    if !entrypoint.is_empty() {
        builder.run.entrypoint = Some(entrypoint);
    }
    if !cmd.is_empty() {
        builder.run.cmd = Some(cmd);
    }
    let client = RegistryClient::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Runtime::new()?;
    let pushed = rt.block_on(builder.push(&client, &reference))?;
    println!("{}", pushed.digest);
    Ok(())
}
