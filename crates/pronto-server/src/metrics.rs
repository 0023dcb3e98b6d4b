//! `/metrics`: what the daemon counts, in the OpenMetrics text format (`prometheus-client`),
//! which Prometheus scrapes natively.
//!
//! Two kinds of metric:
//! - counted as things happen, in [`Metrics`] (shared by the invoke path, the pool and the
//!   acceleration jobs): invocations, cold starts and their breakdown, queue waits,
//!   conversions;
//! - read at each scrape by [`NodeCollector`]: instances by state and queue lengths (from the
//!   pool), the lazy filesystem's counters (added up over every mount the node has made, see
//!   `LazyStore::totals`) and the node chunk cache.
//!
//! Every name starts with `pronto_`; counters end in `_total`, durations are in seconds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pool::Pool;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// Empty when the request named no existing function.
    pub function: String,
    /// The version that served: `LATEST` or a version number (an alias's invocations count
    /// under the version it picked).
    pub qualifier: String,
    /// The HTTP status of the response (the function's, or Pronto's error).
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColdStartLabels {
    pub function: String,
    /// `pulled`, `lazy`, `lazy+prefetch` or `local`.
    pub rootfs: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub function: String,
    /// A phase of the cold-start breakdown (`x-pronto-cold-start`).
    pub phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ready` or `failed`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    function: String,
    state: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request-scale durations: 5 ms to 2 min.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

/// Conversions: a second to an hour.
fn conversion_histogram() -> Histogram {
    Histogram::new([
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

/// What the daemon counts as it happens. Cheap to share (`Arc`); every family is a handle.
#[derive(Debug)]
pub struct Metrics {
    pub invocations: Family<InvocationLabels, Counter>,
    pub cold_starts: Family<ColdStartLabels, Counter>,
    pub cold_start_failures: Family<FunctionLabels, Counter>,
    /// Arrival to first byte of a request that caused a cold start.
    pub cold_start_seconds: HistogramFamily<ColdStartLabels>,
    /// Each phase of those cold starts.
    pub cold_start_phase_seconds: HistogramFamily<PhaseLabels>,
    /// How long requests that found no room waited for an instance (served or not).
    pub queue_wait_seconds: HistogramFamily<FunctionLabels>,
    pub conversions: Family<ResultLabels, Counter>,
    pub conversion_seconds: HistogramFamily<ResultLabels>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            invocations: Family::default(),
            cold_starts: Family::default(),
            cold_start_failures: Family::default(),
            cold_start_seconds: Family::new_with_constructor(latency_histogram),
            cold_start_phase_seconds: Family::new_with_constructor(latency_histogram),
            queue_wait_seconds: Family::new_with_constructor(latency_histogram),
            conversions: Family::default(),
            conversion_seconds: Family::new_with_constructor(conversion_histogram),
        }
    }
}

impl Metrics {
    /// One invocation answered with `status`; `version` is what served it (`LATEST` or a
    /// version number; `LATEST` when none was found).
    pub fn invocation(&self, function: &str, version: &str, status: u16) {
        self.invocations
            .get_or_create(&InvocationLabels {
                function: function.to_string(),
                qualifier: version.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn queue_wait(&self, function: &str, waited: Duration) {
        self.queue_wait_seconds
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn conversion(&self, ok: bool, took: Duration) {
        let labels = ResultLabels {
            result: if ok { "ready" } else { "failed" }.to_string(),
        };
        self.conversions.get_or_create(&labels).inc();
        self.conversion_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// The registry a scrape encodes: [`Metrics`] and the node's state read at scrape time.
pub struct Exporter {
    registry: Registry,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    pub fn new(metrics: &Metrics, pool: Arc<Pool>) -> Exporter {
        let mut r = Registry::default();
        r.register(
            "pronto_invocations",
            "Invocations by function, qualifier and HTTP status",
            metrics.invocations.clone(),
        );
        r.register(
            "pronto_cold_starts",
            "Cold starts that served their request, by function and rootfs path",
            metrics.cold_starts.clone(),
        );
        r.register(
            "pronto_cold_start_failures",
            "Cold starts that failed, by function",
            metrics.cold_start_failures.clone(),
        );
        r.register(
            "pronto_cold_start_duration_seconds",
            "Arrival to first byte of requests that caused a cold start",
            metrics.cold_start_seconds.clone(),
        );
        r.register(
            "pronto_cold_start_phase_seconds",
            "Each phase of the cold-start breakdown (x-pronto-cold-start); the phases of one cold start add up to its duration",
            metrics.cold_start_phase_seconds.clone(),
        );
        r.register(
            "pronto_queue_wait_seconds",
            "Time requests that found every instance busy waited for one (served or refused)",
            metrics.queue_wait_seconds.clone(),
        );
        r.register(
            "pronto_conversions",
            "Acceleration jobs (image conversions) finished, by result",
            metrics.conversions.clone(),
        );
        r.register(
            "pronto_conversion_duration_seconds",
            "Duration of acceleration jobs, by result",
            metrics.conversion_seconds.clone(),
        );
        r.register_collector(Box::new(NodeCollector { pool }));
        Exporter { registry: r }
    }

    /// The scrape body.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// The node's state, read at each scrape.
struct NodeCollector {
    pool: Arc<Pool>,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn put(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let load = self.pool.load();
        let instances = Family::<InstanceLabels, Gauge>::default();
        let queued = Family::<FunctionLabels, Gauge>::default();
        for l in &load {
            for (state, n) in [
                ("starting", l.starting),
                ("idle", l.idle),
                ("busy", l.busy),
                ("draining", l.draining),
            ] {
                instances
                    .get_or_create(&InstanceLabels {
                        function: l.function.clone(),
                        state: state.to_string(),
                    })
                    .set(n as i64);
            }
            queued
                .get_or_create(&FunctionLabels {
                    function: l.function.clone(),
                })
                .set(l.queued as i64);
        }
        put(
            &mut enc,
            "pronto_instances",
            "Instances on this node by function and state (starting, idle, busy, draining)",
            &instances,
        )?;
        put(
            &mut enc,
            "pronto_queue_length",
            "Requests waiting for an instance, by function",
            &queued,
        )?;

        let lazy = self.pool.node().lazy();
        let s = lazy.totals();
        let counters: [(&str, &str, u64); 27] = [
            (
                "pronto_lazyfs_read_requests",
                "FUSE reads answered by lazy rootfs mounts",
                s.read_requests,
            ),
            (
                "pronto_lazyfs_read_bytes",
                "Bytes of those reads",
                s.read_bytes,
            ),
            (
                "pronto_lazyfs_cache_hits",
                "Chunk lookups the node chunk cache answered",
                s.cache_hits,
            ),
            (
                "pronto_lazyfs_cache_misses",
                "Chunk lookups the node chunk cache could not answer",
                s.cache_misses,
            ),
            (
                "pronto_lazyfs_cache_corrupt",
                "Chunk cache entries found corrupt (deleted, fetched again)",
                s.cache_corrupt,
            ),
            (
                "pronto_lazyfs_inflight_waits",
                "Misses that waited for a fetch already in flight",
                s.inflight_waits,
            ),
            (
                "pronto_lazyfs_range_requests",
                "HTTP Range requests sent to registries",
                s.range_requests,
            ),
            (
                "pronto_lazyfs_fetched_bytes",
                "Bytes the Range requests returned (compressed)",
                s.fetched_bytes,
            ),
            (
                "pronto_lazyfs_fetched_chunks",
                "Chunks fetched, verified and decompressed",
                s.fetched_chunks,
            ),
            (
                "pronto_lazyfs_fetched_content_bytes",
                "Content bytes of the chunks fetched",
                s.fetched_content_bytes,
            ),
            (
                "pronto_lazyfs_fetch_retries",
                "Range requests repeated after a failure",
                s.fetch_retries,
            ),
            (
                "pronto_lazyfs_fetch_errors",
                "Fetches given up (the read failed with EIO)",
                s.fetch_errors,
            ),
            (
                "pronto_lazyfs_prefetched_chunks",
                "Chunks fetched ahead of demand from an access trace",
                s.prefetched_chunks,
            ),
            (
                "pronto_lazyfs_prefetched_content_bytes",
                "Content bytes of the prefetched chunks",
                s.prefetched_content_bytes,
            ),
            (
                "pronto_lazyfs_prefetched_bytes",
                "Bytes the prefetcher's Range requests returned (compressed)",
                s.prefetched_bytes,
            ),
            (
                "pronto_lazyfs_readahead_bytes",
                "Bytes fetched ahead of sequential readers (compressed)",
                s.readahead_bytes,
            ),
            (
                "pronto_lazyfs_streamed_chunks",
                "Chunks the background stream of the rest of images stored in the node cache",
                s.streamed_chunks,
            ),
            (
                "pronto_lazyfs_streamed_bytes",
                "Bytes the background stream's Range requests returned (compressed)",
                s.streamed_bytes,
            ),
            (
                "pronto_lazyfs_streamed_content_bytes",
                "Content bytes of the streamed chunks",
                s.streamed_content_bytes,
            ),
            (
                "pronto_lazyfs_stream_range_requests",
                "Range requests of the background stream",
                s.stream_range_requests,
            ),
            (
                "pronto_lazyfs_miss_range_requests",
                "Range requests a program's read waited for (not read-ahead, prefetch or stream)",
                s.demand_range_requests,
            ),
            (
                "pronto_lazyfs_file_opens",
                "Regular files opened through lazy mounts",
                s.file_opens,
            ),
            (
                "pronto_lazyfs_passthrough_opens",
                "Of those, opened with FUSE passthrough (reads bypass the daemon)",
                s.passthrough_opens,
            ),
            (
                "pronto_lazyfs_passthrough_refused",
                "Opens whose backing file the kernel refused (served by the daemon instead)",
                s.passthrough_refused,
            ),
            (
                "pronto_lazyfs_backing_files_built",
                "Backing files built from the node cache for passthrough",
                s.materialized_files,
            ),
            (
                "pronto_chunk_cache_evictions",
                "Entries the node chunk cache deleted to stay within its bound",
                lazy.cache().evictions(),
            ),
            (
                "pronto_chunk_cache_corrupt",
                "Entries of the node chunk cache found corrupt when read (deleted and refetched)",
                lazy.cache().stats().chunks_corrupt,
            ),
        ];
        for (name, help, v) in counters {
            put(&mut enc, name, help, &ConstCounter::new(v))?;
        }
        put(
            &mut enc,
            "pronto_lazyfs_fetch_seconds",
            "Time programs' reads waited in successful Range requests (divide by miss range requests for the mean)",
            &ConstCounter::new(s.fetch_micros_total as f64 / 1e6),
        )?;
        put(
            &mut enc,
            "pronto_lazyfs_flight_wait_seconds",
            "Time programs' reads waited for chunks another request had in flight (prefetch, stream, read-ahead, another reader)",
            &ConstCounter::new(s.flight_wait_micros as f64 / 1e6),
        )?;
        put(
            &mut enc,
            "pronto_lazyfs_fetch_max_seconds",
            "The slowest successful Range request a program's read waited for",
            &ConstGauge::new(s.fetch_micros_max as f64 / 1e6),
        )?;
        let cache = lazy.cache();
        for (name, help, v) in [
            (
                "pronto_chunk_cache_bytes",
                "Bytes in the node chunk cache",
                cache.total_bytes(),
            ),
            (
                "pronto_chunk_cache_capacity_bytes",
                "The node chunk cache's bound",
                cache.capacity(),
            ),
            (
                "pronto_chunk_cache_entries",
                "Chunks in the node chunk cache",
                cache.len() as u64,
            ),
        ] {
            put(&mut enc, name, help, &ConstGauge::new(v as i64))?;
        }
        Ok(())
    }
}
