//! `pronto function explain NAME [--link 100mbit,20ms]`: why a cold start took what it took.
//! The server computes it (`GET .../explain`, `pronto_server::explain`); this renders it.

use clap::Args;
use pronto_server::explain::{Explanation, Link};
use reqwest::Method;

use crate::client::{call, Endpoint, FUNCTIONS};
use crate::output::{bytes, Output, Table};

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Function name.
    pub name: String,
    /// The link to predict the cold start on: bandwidth and round-trip time, e.g.
    /// `100mbit,20ms` or `1gbit,2ms` (kbit, mbit, gbit; us, ms, s).
    #[arg(long, default_value = "100mbit,20ms")]
    pub link: Link,
    /// How many files to list (read, and largest untouched); all are in -o json.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Do not have the server download the layers to tell which layer each file came from.
    #[arg(long)]
    pub no_layers: bool,
}

pub async fn run(ep: &Endpoint, out: &Output, args: ExplainArgs) -> anyhow::Result<()> {
    // On stderr, and only when it is a terminal (indicatif hides it otherwise).
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(120));
    progress.set_message(format!("explaining {}", args.name));
    let link = format!(
        "{}bit,{}us",
        args.link.bits_per_second,
        (args.link.rtt_seconds * 1e6).round()
    );
    let v = call(
        ep,
        Method::GET,
        &format!(
            "{FUNCTIONS}/{}/explain?link={link}&layers={}",
            args.name, !args.no_layers
        ),
        None,
    )
    .await;
    progress.finish_and_clear();
    let v = v?;
    let e: Explanation = serde_json::from_value(v.clone())?;
    out.print(&v, |_, _| render(&e, args.top))
}

fn render(e: &Explanation, top: usize) -> String {
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    let mut s = format!(
        "{}: the first accelerated cold start of {}\n  read {} of {} files: {} of {} ({:.1}%), {} fetched in {} chunks\n  never touched: {:.1}% of the image's file bytes\n",
        e.function_name,
        e.resolved_image_uri,
        e.files_read,
        e.image_files,
        bytes(e.bytes_read),
        bytes(e.image_file_bytes),
        pct(e.bytes_read, e.image_file_bytes),
        bytes(e.bytes_fetched),
        e.trace_chunks - e.unknown_chunks,
        100.0 * e.untouched_share,
    );
    s.push_str("\nfiles read, in order:\n");
    let mut t = Table::new(["#", "FILE", "READ", "SIZE"]);
    for (i, f) in e.read.iter().take(top).enumerate() {
        t.row([
            (i + 1).to_string(),
            f.path.clone(),
            bytes(f.bytes_read),
            bytes(f.size),
        ]);
    }
    s.push_str(&t.render());
    if e.read.len() > top {
        s.push_str(&format!(
            "  ... {} more (-o json lists all)\n",
            e.read.len() - top
        ));
    }
    s.push_str("\nlargest untouched files:\n");
    let mut t = Table::new(["FILE", "SIZE"]);
    for f in e.largest_untouched.iter().take(top) {
        t.row([f.path.clone(), bytes(f.size)]);
    }
    s.push_str(&t.render());
    if let Some(layers) = &e.layers {
        s.push_str("\nlayers, most untouched bytes first:\n");
        let mut t = Table::new([
            "LAYER",
            "COMPRESSED",
            "FILES",
            "FILE BYTES",
            "READ",
            "UNTOUCHED",
        ]);
        for l in layers {
            t.row([
                l.digest.chars().take(19).collect::<String>(),
                bytes(l.compressed_size),
                l.files.to_string(),
                bytes(l.file_bytes),
                bytes(l.bytes_read),
                format!(
                    "{} ({:.0}%)",
                    bytes(l.untouched_bytes),
                    pct(l.untouched_bytes, l.file_bytes)
                ),
            ]);
        }
        s.push_str(&t.render());
    }
    let p = &e.prediction;
    s.push_str(&format!(
        "\npredicted on {:.0} Mbit/s, {:.1} ms RTT ({}):\n",
        p.link.bits_per_second / 1e6,
        p.link.rtt_seconds * 1e3,
        p.model
    ));
    let cold = p.cold_start.as_ref();
    let mut t = Table::new([
        "PATH",
        "BYTES",
        "ROUND TRIPS",
        "IMAGE TRANSFER",
        "COLD START",
    ]);
    for (label, path, start) in [
        ("full pull", &p.full, cold.map(|c| c.full_ms)),
        (
            "accelerated (first start)",
            &p.accelerated,
            cold.map(|c| c.accelerated_ms),
        ),
        (
            "accelerated + prefetch",
            &p.prefetched,
            cold.map(|c| c.prefetched_ms),
        ),
    ] {
        t.row([
            label.to_string(),
            bytes(path.bytes),
            path.round_trips.to_string(),
            format!("{:.2} s", path.seconds),
            start.map_or("-".to_string(), |ms| format!("{:.2} s", ms / 1e3)),
        ]);
    }
    s.push_str(&t.render());
    if let Some(profile) = &e.start_profile {
        s.push_str(&format!(
            "  (the recorded start: setup {:.0} ms, program {:.0} ms, waiting on the registry {:.0} ms)\n",
            profile.setup_ms, profile.program_ms, profile.fetch_wait_ms
        ));
    }
    s
}
