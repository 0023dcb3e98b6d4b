//! Why a cold start took what it took: `GET /2023-03-30/functions/{functionName}/explain`,
//! rendered by `pronto function explain` and the console's function page.
//!
//! Inputs: the access trace the function's first accelerated cold start recorded (the chunks
//! it read, first read first), the profile of that start (its local setup, the program's own
//! time and the time its reads waited on the registry: [`StartProfile`]), and the artifact's
//! index (every file and its chunks). The chunk digests of the trace are mapped to the files
//! whose content holds them; from there: which files the start read and in what order, how many
//! bytes, what share of the image it never touched, the largest untouched files, and per layer
//! (with `layers=true`: the layers are read from the registry and each file of the final tree
//! attributed to the last layer that wrote it) how much of it the start used.
//!
//! A chunk stored once for several identical files counts as read for each of them (the trace
//! records contents, not paths).
//!
//! The prediction is a model, not a measurement. **Image transfer = bytes / bandwidth + round
//! trips × RTT**:
//! - full pull: the config and every layer (compressed), in 3 round trips (registry auth,
//!   manifest, config) plus one per 4 layers (4 download at a time);
//! - accelerated, first start (no prefetch): the index and the chunks the trace names
//!   (stored size), in 3 round trips (auth, artifact manifest, index) plus one per request,
//!   the lazy fs's requests taken as runs of the trace in read order whose chunks are stored
//!   back to back in one pack (each request waits for the read before it); on a link that
//!   brings the whole artifact within the stream's eager time (5 s), at most that transfer,
//!   since the node streams the image beside such a start;
//! - accelerated with the trace prefetched (later starts): the same bytes, the trace sorted
//!   into pack order and cut into runs of at most 4 MiB, 4 requests in flight at once.
//!
//! **Cold start** (when the trace came with a profile) = the image part + the start's local
//! setup (overlay, bundle, runtime) + the program's own time (its time to the first byte less
//! what its reads waited on fetches). The full pull's image part is the larger of its transfer
//! and its unpack, at [`UNPACK_BYTES_PER_SECOND`] of file data (measured on this project's
//! bench machine: `bench/results/unpack-2026-11-23.md`, a 530 MB gzip image unpacked at 173 MB/s
//! from a local registry; the download and the unpack overlap). The prefetched start's image
//! part overlaps the container's start, so only what exceeds the setup counts.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use pronto_format::{ChunkRef, Index, NodeKind};
use pronto_image::RegistryClient;
use serde::{Deserialize, Serialize};

/// A link: bits per second and round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub bits_per_second: f64,
    pub rtt_seconds: f64,
}

impl FromStr for Link {
    type Err = String;

    fn from_str(s: &str) -> Result<Link, String> {
        let bad = || format!("{s:?}: expected BANDWIDTH,RTT such as 100mbit,20ms or 1gbit,2ms");
        let (bw, rtt) = s.split_once(',').ok_or_else(bad)?;
        let split = |t: &str| {
            let t = t.trim().to_ascii_lowercase();
            let i = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let n: f64 = t[..i].parse().ok()?;
            Some((n, t[i..].to_string()))
        };
        let (n, unit) = split(bw).ok_or_else(bad)?;
        let bits_per_second = n * match unit.as_str() {
            "bit" | "bps" => 1.0,
            "kbit" | "kbps" => 1e3,
            "mbit" | "mbps" => 1e6,
            "gbit" | "gbps" => 1e9,
            _ => return Err(bad()),
        };
        let (n, unit) = split(rtt).ok_or_else(bad)?;
        let rtt_seconds = n * match unit.as_str() {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            _ => return Err(bad()),
        };
        if bits_per_second <= 0.0 {
            return Err(bad());
        }
        Ok(Link {
            bits_per_second,
            rtt_seconds,
        })
    }
}

/// A file of the image and what the start read of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileUse {
    pub path: String,
    pub size: u64,
    /// Bytes of its chunks in the trace.
    pub bytes_read: u64,
    /// Position of its first chunk in the trace (0 = read first); absent when untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_read: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerUse {
    pub digest: String,
    /// As stored in the registry (what a full pull downloads).
    pub compressed_size: u64,
    /// Files of the final tree it wrote last, and their bytes.
    pub files: u64,
    pub file_bytes: u64,
    pub bytes_read: u64,
    pub untouched_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub bytes: u64,
    pub round_trips: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prediction {
    pub link: Link,
    pub model: String,
    pub full: Transfer,
    pub accelerated: Transfer,
    pub prefetched: Transfer,
    /// The whole cold start of each path, when the trace came with the profile of its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStartPrediction>,
}

/// Predicted cold starts (milliseconds from the request to the first byte of the response).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ColdStartPrediction {
    pub full_ms: f64,
    pub accelerated_ms: f64,
    pub prefetched_ms: f64,
}

/// What the start that recorded the trace spent besides the image, kept with the trace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartProfile {
    /// Overlay, bundle and the OCI runtime's create and start: after the image, before the
    /// program runs.
    pub setup_ms: f64,
    /// From the container's start to the first byte of the response, less `fetch_wait_ms`.
    pub program_ms: f64,
    /// Time the start's reads waited on the registry: its on-demand fetches and the chunks
    /// the stream, read-ahead or another reader had in flight (those waits became most of it
    /// once a fast link streams the image beside the start).
    pub fetch_wait_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub function_name: String,
    pub resolved_image_uri: String,
    /// Regular files of the image (a hardlinked file once) and their bytes.
    pub image_files: u64,
    pub image_file_bytes: u64,
    pub trace_chunks: u64,
    /// Chunks of the trace the index does not hold (0 unless the trace is of another image).
    pub unknown_chunks: u64,
    /// Distinct chunks read: content bytes, and as stored (what was fetched).
    pub bytes_read: u64,
    pub bytes_fetched: u64,
    pub files_read: u64,
    /// Share of the image's file bytes the start never touched (0 to 1).
    pub untouched_share: f64,
    /// Files read, in the order the start first read them.
    pub read: Vec<FileUse>,
    /// Untouched files, largest first.
    pub largest_untouched: Vec<FileUse>,
    /// Largest untouched bytes first; absent with --no-layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerUse>>,
    /// The recording start's own profile (absent for traces stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_profile: Option<StartProfile>,
    pub prediction: Prediction,
}

/// What the explanation needs from the image.
pub struct ImageFacts {
    /// Compressed layers (digest, size) and the config's size.
    pub layers: Vec<(String, u64)>,
    pub config_size: u64,
    pub index_size: u64,
    /// Path (no leading `/`) → the layer that wrote it last, when known.
    pub owners: Option<HashMap<String, usize>>,
    pub start_profile: Option<StartProfile>,
}

/// The explanation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reading the index: {0}")]
    Index(#[from] pronto_format::FormatError),
    #[error("downloading layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: Box<pronto_image::RegistryError>,
    },
    #[error("listing layer {digest}: {source}")]
    ListLayer {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a temporary directory for the layers: {0}")]
    Scratch(std::io::Error),
}

/// The explanation of `trace` (chunk digests, first read first) over `index`.
pub fn explain(
    name: &str,
    image: &str,
    index: &Index,
    trace: &[[u8; 32]],
    facts: &ImageFacts,
    link: Link,
) -> Result<Explanation, ExplainError> {
    // Every regular file once (hardlinks share an inode) and its chunks.
    let mut files: Vec<(String, u64, Vec<ChunkRef>)> = Vec::new();
    let mut seen = HashSet::new();
    index.walk_with(|path, ino| {
        let inode = index.inode(ino)?;
        if inode.kind == NodeKind::File && seen.insert(ino) {
            let path = String::from_utf8_lossy(path)
                .trim_start_matches('/')
                .to_string();
            files.push((path, inode.size, index.chunks(ino)?));
        }
        Ok(())
    })?;
    let mut by_digest: HashMap<[u8; 32], (ChunkRef, Vec<usize>)> = HashMap::new();
    for (i, (_, _, chunks)) in files.iter().enumerate() {
        for c in chunks {
            let e = by_digest.entry(c.digest).or_insert((*c, Vec::new()));
            if e.1.last() != Some(&i) {
                e.1.push(i);
            }
        }
    }
    let mut first_read: Vec<Option<usize>> = vec![None; files.len()];
    let mut read_digests = HashSet::new();
    let (mut bytes_read, mut bytes_fetched, mut unknown) = (0u64, 0u64, 0u64);
    let mut known: Vec<ChunkRef> = Vec::new();
    for (pos, d) in trace.iter().enumerate() {
        let Some((c, owners)) = by_digest.get(d) else {
            unknown += 1;
            continue;
        };
        if !read_digests.insert(*d) {
            continue;
        }
        known.push(*c);
        bytes_read += u64::from(c.uncompressed_size);
        bytes_fetched += u64::from(c.compressed_size);
        for &f in owners {
            first_read[f].get_or_insert(pos);
        }
    }
    let uses: Vec<FileUse> = files
        .iter()
        .zip(&first_read)
        .map(|((path, size, chunks), first)| FileUse {
            path: path.clone(),
            size: *size,
            bytes_read: chunks
                .iter()
                .filter(|c| read_digests.contains(&c.digest))
                .map(|c| u64::from(c.uncompressed_size))
                .sum(),
            first_read: *first,
        })
        .collect();
    let image_file_bytes: u64 = uses.iter().map(|f| f.size).sum();
    let touched: u64 = uses.iter().map(|f| f.bytes_read).sum();
    let mut read: Vec<FileUse> = uses
        .iter()
        .filter(|f| f.first_read.is_some())
        .cloned()
        .collect();
    read.sort_by_key(|f| f.first_read);
    let mut untouched: Vec<FileUse> = uses
        .iter()
        .filter(|f| f.first_read.is_none())
        .cloned()
        .collect();
    untouched.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));

    let layers = facts.owners.as_ref().map(|owners| {
        let mut out: Vec<LayerUse> = facts
            .layers
            .iter()
            .map(|(digest, size)| LayerUse {
                digest: digest.clone(),
                compressed_size: *size,
                files: 0,
                file_bytes: 0,
                bytes_read: 0,
                untouched_bytes: 0,
            })
            .collect();
        for f in &uses {
            if let Some(l) = owners.get(&f.path).and_then(|&i| out.get_mut(i)) {
                l.files += 1;
                l.file_bytes += f.size;
                l.bytes_read += f.bytes_read;
                l.untouched_bytes += f.size.saturating_sub(f.bytes_read);
            }
        }
        out.sort_by_key(|l| std::cmp::Reverse(l.untouched_bytes));
        out
    });

    // The artifact's stored bytes: what a stream of the whole image transfers.
    let stored: u64 = by_digest
        .values()
        .map(|(c, _)| u64::from(c.compressed_size))
        .sum::<u64>()
        + facts.index_size;
    let prediction = predict(&known, facts, image_file_bytes, stored, link);
    Ok(Explanation {
        function_name: name.to_string(),
        resolved_image_uri: image.to_string(),
        image_files: uses.len() as u64,
        image_file_bytes,
        trace_chunks: trace.len() as u64,
        unknown_chunks: unknown,
        bytes_read,
        bytes_fetched,
        files_read: read.len() as u64,
        untouched_share: if image_file_bytes == 0 {
            0.0
        } else {
            1.0 - touched as f64 / image_file_bytes as f64
        },
        read,
        largest_untouched: untouched,
        layers,
        start_profile: facts.start_profile,
        prediction,
    })
}

/// A run of requests: chunks stored back to back in one pack, at most `cap` bytes.
fn requests(chunks: &[ChunkRef], cap: u64) -> u64 {
    let mut n = 0;
    let mut run: Option<(u32, u64, u64)> = None; // pack, end, bytes
    for c in chunks {
        let size = u64::from(c.compressed_size);
        match run {
            Some((pack, end, bytes))
                if pack == c.pack && end == c.offset && bytes + size <= cap =>
            {
                run = Some((pack, end + size, bytes + size));
            }
            _ => {
                n += 1;
                run = Some((c.pack, c.offset + size, size));
            }
        }
    }
    n
}

const MODEL: &str = "image transfer = bytes / bandwidth + round trips x RTT; cold start = image part + the recorded start's setup and program time (see docs)";

/// Unpacking speed of the full-pull path, file bytes per second (see the module's doc).
pub const UNPACK_BYTES_PER_SECOND: f64 = 173e6;

fn predict(
    read: &[ChunkRef],
    facts: &ImageFacts,
    file_bytes: u64,
    stored: u64,
    link: Link,
) -> Prediction {
    let time = |bytes: u64, trips: u64| {
        bytes as f64 * 8.0 / link.bits_per_second + trips as f64 * link.rtt_seconds
    };
    let path = |bytes, round_trips| Transfer {
        bytes,
        round_trips,
        seconds: time(bytes, round_trips),
    };
    let layer_bytes: u64 = facts.layers.iter().map(|(_, s)| s).sum();
    let full = path(
        layer_bytes + facts.config_size,
        3 + (facts.layers.len() as u64).div_ceil(4),
    );
    let chunk_bytes: u64 = read.iter().map(|c| u64::from(c.compressed_size)).sum();
    let on_demand = requests(read, 16 << 20);
    let accelerated = path(facts.index_size + chunk_bytes, 3 + on_demand);
    let mut sorted = read.to_vec();
    sorted.sort_by_key(|c| (c.pack, c.offset));
    let prefetch_requests = requests(&sorted, 4 << 20);
    let prefetched = path(
        facts.index_size + chunk_bytes,
        3 + prefetch_requests.div_ceil(4),
    );
    let cold_start = facts.start_profile.map(|p| {
        let unpack = file_bytes as f64 / UNPACK_BYTES_PER_SECOND;
        let local = p.setup_ms + p.program_ms;
        // The index comes before the container can start; the chunks of a prefetch arrive
        // while it starts, so only what the setup does not hide adds up.
        let index = time(facts.index_size, 3);
        // A first start on a link that brings the whole artifact within the stream's eager
        // time has it streamed beside it (`--background-stream auto`): its reads then wait
        // at most for the whole artifact at link speed, not a round trip per run.
        let streamed = time(stored, 4);
        let on_demand = if streamed <= pronto_runtime::STREAM_EAGER_TIME.as_secs_f64() {
            accelerated.seconds.min(streamed)
        } else {
            accelerated.seconds
        };
        ColdStartPrediction {
            full_ms: full.seconds.max(unpack) * 1e3 + local,
            accelerated_ms: on_demand * 1e3 + local,
            prefetched_ms: index * 1e3
                + ((prefetched.seconds - index) * 1e3).max(p.setup_ms)
                + p.program_ms,
        }
    });
    Prediction {
        link,
        model: MODEL.to_string(),
        full,
        accelerated,
        prefetched,
        cold_start,
    }
}

/// Each path of the final tree → the index of the layer that wrote it last.
pub async fn layer_owners(
    client: &RegistryClient,
    image: &pronto_image::pull::ResolvedImage,
) -> Result<HashMap<String, usize>, ExplainError> {
    let dir = tempfile::tempdir().map_err(ExplainError::Scratch)?;
    let mut owners = HashMap::new();
    for (i, layer) in image.manifest.layers.iter().enumerate() {
        let path = dir.path().join(format!("layer-{i}"));
        client
            .download_blob(
                &image.pinned,
                &layer.digest,
                Some(layer.size),
                &path,
                &|_| {},
            )
            .await
            .map_err(|source| ExplainError::Layer {
                digest: layer.digest.to_string(),
                source: Box::new(source),
            })?;
        let compression = image.compressions[i];
        let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let file = std::fs::File::open(&path)?;
            let reader = pronto_image::unpack::decompressed_reader(file, compression);
            let mut archive = tar::Archive::new(reader);
            let mut names = Vec::new();
            for entry in archive.entries()? {
                let entry = entry?;
                let p = entry.path_bytes();
                names.push(normalize(&String::from_utf8_lossy(&p)));
            }
            let _ = std::fs::remove_file(&path);
            Ok(names)
        })
        .await
        .expect("listing task panicked")
        .map_err(|source| ExplainError::ListLayer {
            digest: layer.digest.to_string(),
            source,
        })?;
        for n in names {
            if !n.rsplit('/').next().unwrap_or("").starts_with(".wh.") {
                owners.insert(n, i);
            }
        }
    }
    Ok(owners)
}

fn normalize(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_with_units() {
        assert_eq!(
            "100mbit,20ms".parse::<Link>(),
            Ok(Link {
                bits_per_second: 1e8,
                rtt_seconds: 0.02
            })
        );
        assert_eq!(
            "1gbit,2ms".parse::<Link>(),
            Ok(Link {
                bits_per_second: 1e9,
                rtt_seconds: 0.002
            })
        );
        assert!("fast".parse::<Link>().is_err());
        assert!("100mb,2ms".parse::<Link>().is_err());
    }

    fn chunk(pack: u32, offset: u64, size: u32) -> ChunkRef {
        ChunkRef {
            digest: [0; 32],
            pack,
            compression: pronto_format::Compression::None,
            offset,
            compressed_size: size,
            uncompressed_size: size,
        }
    }

    #[test]
    fn a_first_start_on_a_fast_link_waits_for_the_stream_not_a_round_trip_per_run() {
        let facts = ImageFacts {
            layers: vec![("a".into(), 10_000_000)],
            config_size: 1000,
            index_size: 0,
            owners: None,
            start_profile: Some(StartProfile {
                setup_ms: 100.0,
                program_ms: 1000.0,
                fetch_wait_ms: 0.0,
            }),
        };
        let link = Link {
            bits_per_second: 1e9,
            rtt_seconds: 0.002,
        };
        // 1,000 scattered chunks of 1 kB: 1,003 round trips on demand, about 2 s.
        let read: Vec<ChunkRef> = (0..1000).map(|i| chunk(0, i * 10_000, 1000)).collect();
        let cold = |stored| predict(&read, &facts, 0, stored, link).cold_start.unwrap();
        // A 10 MB artifact streams in 0.09 s: that bounds the wait.
        let small = cold(10_000_000).accelerated_ms;
        assert!((small - (1100.0 + 80.0 + 8.0)).abs() < 1.0, "{small}");
        // A 1 GB one (8 s, over the eager time) is not streamed beside the start.
        let large = cold(1_000_000_000).accelerated_ms;
        assert!((large - (1100.0 + 8.0 + 2006.0)).abs() < 1.0, "{large}");
    }

    #[test]
    fn requests_are_runs_of_adjacent_chunks() {
        let c = [
            chunk(0, 0, 10),
            chunk(0, 10, 10),
            chunk(0, 50, 10),
            chunk(1, 60, 10),
            chunk(1, 70, 10),
        ];
        assert_eq!(requests(&c, 1 << 20), 3);
        assert_eq!(requests(&c, 15), 5, "runs are capped");
        assert_eq!(requests(&[], 1), 0);
    }

    #[test]
    fn the_model_is_bytes_over_bandwidth_plus_round_trips() {
        let facts = ImageFacts {
            layers: vec![("a".into(), 1_000_000), ("b".into(), 2_000_000)],
            config_size: 1000,
            index_size: 5000,
            owners: None,
            start_profile: None,
        };
        let link = Link {
            bits_per_second: 8e6,
            rtt_seconds: 0.01,
        };
        let p = predict(
            &[
                chunk(0, 0, 100_000),
                chunk(0, 100_000, 100_000),
                chunk(0, 500_000, 45_000),
            ],
            &facts,
            0,
            10_000_000,
            link,
        );
        assert_eq!(p.full.bytes, 3_001_000);
        assert_eq!(p.full.round_trips, 4);
        assert!((p.full.seconds - (3.001 + 0.04)).abs() < 1e-9);
        assert_eq!(p.accelerated.bytes, 250_000);
        assert_eq!(p.accelerated.round_trips, 5);
        assert_eq!(p.prefetched.round_trips, 4);
    }
}
