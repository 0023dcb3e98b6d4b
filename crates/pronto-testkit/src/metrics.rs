//! Reading a Prometheus scrape in tests.

use prometheus_parse::{Sample, Scrape, Value};

/// A sample's value: counters, gauges and untyped as they are, a histogram as its count (its
/// `+Inf` bucket); summaries are not used by Pronto (NaN).
pub fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map_or(0.0, |b| b.count),
        Value::Summary(_) => f64::NAN,
    }
}

/// The samples named `name` whose labels include `labels`.
pub fn matching<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    scrape.samples.iter().filter(move |s| {
        s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })
}
