//! `pronto`: the command-line front end. Flags are parsed here; each subcommand calls one
//! library function and adds context to its error.

mod bench;
mod client;
mod image;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pronto",
    version,
    about = "Serverless containers that start in seconds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    endpoint: client::Endpoint,
}

#[derive(Subcommand)]
enum Command {
    /// Work with OCI images: inspect, unpack (the full-pull path).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run the daemon: control API, invoke listener, instances.
    Serve(serve::ServeArgs),
    /// Create, show, change and delete functions.
    #[command(subcommand)]
    Function(client::FunctionCommand),
    /// Invoke a function (prints the body; the status and cold-start timing go to stderr).
    Invoke(client::InvokeArgs),
    /// Benchmarks built into the binary: `bench coldstart` (see bench/README.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show what a function's instances wrote to stdout/stderr (each line: time, instance,
    /// request id or -, the line).
    Logs(client::LogsArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRONTO_LOG")
                // fuser warns about its own unmount after ours has already detached the mount.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Image(cmd) => image::run(cmd).await,
            Command::Serve(args) => serve::run(args, &cli.endpoint).await,
            Command::Function(cmd) => client::function(&cli.endpoint, cmd).await,
            Command::Invoke(args) => client::invoke(&cli.endpoint, args).await,
            Command::Logs(args) => client::logs(&cli.endpoint, args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
