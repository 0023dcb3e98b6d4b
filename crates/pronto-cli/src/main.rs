//! `pronto`: the command-line front end. Flags are parsed here; each subcommand calls one
//! library function and adds context to its error.

mod bench;
mod client;
mod image;
mod load;
mod release;
mod serve;
mod versions;

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
    /// Publish, list and delete a function's versions (immutable snapshots of LATEST).
    #[command(subcommand)]
    Version(versions::VersionCommand),
    /// Create, show, change and delete aliases (a name for a version, maybe with a canary).
    #[command(subcommand)]
    Alias(versions::AliasCommand),
    /// Keep instances of a qualifier (LATEST, a version, an alias) started and warm.
    #[command(subcommand)]
    Provision(versions::ProvisionCommand),
    /// Release in one go: update the image, wait for its acceleration, publish a version and
    /// move an alias onto it (entirely, or a share with --weight).
    Release(release::ReleaseArgs),
    /// Invoke a function (prints the body; the status, the version that served and the
    /// cold-start timing go to stderr).
    Invoke(client::InvokeArgs),
    /// Benchmarks built into the binary: `bench coldstart`, `bench load` (see bench/README.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show what a function's instances wrote to stdout/stderr (each line: time, instance,
    /// request id or -, the line).
    Logs(client::LogsArgs),
}

/// How the log lines on stderr look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, the span's fields (function, request_id,
    /// instance, image), the message and the event's fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields flattened
    /// (`message`, ...), `span` (the innermost span's fields) and `spans` (all of them).
    Json,
}

/// Colours only for a terminal, and never with `NO_COLOR` set to anything (no-color.org).
fn use_ansi(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRONTO_LOG")
        // fuser warns about its own unmount after ours has already detached the mount.
        // `pronto`: the daemon's start and stop (as events in JSON; text prints a banner).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error,pronto=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(use_ansi(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Image(cmd) => image::run(cmd).await,
            Command::Serve(args) => serve::run(args, &cli.endpoint).await,
            Command::Function(cmd) => client::function(&cli.endpoint, cmd).await,
            Command::Version(cmd) => versions::version(&cli.endpoint, cmd).await,
            Command::Alias(cmd) => versions::alias(&cli.endpoint, cmd).await,
            Command::Provision(cmd) => versions::provision(&cli.endpoint, cmd).await,
            Command::Release(args) => release::release(&cli.endpoint, args).await,
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

#[cfg(test)]
mod tests {
    use super::use_ansi;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(
            !use_ansi(false, None),
            "a pipe or a file gets no escape codes"
        );
        assert!(!use_ansi(true, Some("1".into())));
        assert!(!use_ansi(true, Some("anything".into())));
        assert!(
            use_ansi(true, Some("".into())),
            "NO_COLOR set but empty: no effect"
        );
    }
}
