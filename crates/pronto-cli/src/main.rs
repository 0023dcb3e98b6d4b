//! `pronto`: the command-line front end. Flags are parsed here; each subcommand calls one
//! library function and adds context to its error.

mod bench;
mod client;
mod deploy;
mod explain;
mod image;
mod load;
mod output;
mod release;
mod serve;
mod spec_file;
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
    /// How answers are printed: `table` for people (the default on a terminal), `json` (the
    /// default otherwise) or `yaml`.
    #[arg(short = 'o', long, global = true, value_enum)]
    output: Option<output::OutputFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with OCI images: inspect, unpack (the full pull), convert to the accelerated
    /// format, verify a conversion, mount lazily.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run the daemon: control API, invoke listener, instances.
    Serve(serve::ServeArgs),
    /// Create or update the functions a spec file describes (Function Compute fields, or a
    /// Serverless Devs s.yaml), idempotently: prints what changed.
    Deploy(deploy::DeployArgs),
    /// Create, show, change, delete and explain functions.
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
            .with_ansi(output::use_color(
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
    let out = output::Output::new(cli.output);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Image(cmd) => image::run(cmd, cli.output).await,
            Command::Serve(args) => serve::run(args, &cli.endpoint).await,
            Command::Deploy(args) => deploy::deploy(&cli.endpoint, &out, args).await,
            Command::Function(cmd) => client::function(&cli.endpoint, &out, cmd).await,
            Command::Version(cmd) => versions::version(&cli.endpoint, &out, cmd).await,
            Command::Alias(cmd) => versions::alias(&cli.endpoint, &out, cmd).await,
            Command::Provision(cmd) => versions::provision(&cli.endpoint, &out, cmd).await,
            Command::Release(args) => release::release(&cli.endpoint, &out, args).await,
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
    use clap::CommandFactory;

    /// Every argument of every subcommand says what it is for (`--help` shows it).
    #[test]
    fn every_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "pronto", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn image_help_lists_all_its_subcommands() {
        let cli = super::Cli::command();
        let image = cli.find_subcommand("image").unwrap();
        let about = image.get_about().unwrap().to_string();
        for sub in ["inspect", "unpack", "convert", "verify", "mount"] {
            assert!(image.find_subcommand(sub).is_some(), "{sub}");
            assert!(
                about.contains(sub),
                "`pronto --help` says of image: {about}"
            );
        }
    }
}
