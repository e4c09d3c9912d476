//! A small metrics registry with Prometheus text exposition (format 0.0.4).
//!
//! Registries are values passed to whoever records, never globals, so tests and several
//! components in one process each see their own numbers. Every family caps its number of
//! label sets; observations for a label set beyond the cap are counted in
//! `sluice_metric_series_dropped_total{family=…}` instead of growing memory without bound.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// Default cap on label sets per family.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// A metric family the registry can print.
trait Encode: Send + Sync {
    fn name(&self) -> &str;
    fn dropped(&self) -> u64;
    fn encode(&self, out: &mut String);
}

/// Where metric families are registered and scraped from.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Encode>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The content type of [`Registry::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, family: Arc<dyn Encode>) {
        if let Ok(mut families) = self.families.lock() {
            families.push(family);
        }
    }

    /// A new counter family.
    pub fn counter(&self, name: &str, help: &str, labels: &[&'static str]) -> Family<Counter> {
        let family = Family::new(name, help, labels, Kind::Counter);
        self.add(Arc::new(family.clone()));
        family
    }

    /// A new gauge family.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&'static str]) -> Family<Gauge> {
        let family = Family::new(name, help, labels, Kind::Gauge);
        self.add(Arc::new(family.clone()));
        family
    }

    /// A new histogram family with upper bucket bounds `buckets` (ascending).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&'static str],
        buckets: &[f64],
    ) -> Family<Histogram> {
        let family = Family::new(name, help, labels, Kind::Histogram(buckets.to_vec()));
        self.add(Arc::new(family.clone()));
        family
    }

    /// Everything registered, in Prometheus text format.
    pub fn encode(&self) -> String {
        let families = match self.families.lock() {
            Ok(f) => f.clone(),
            Err(_) => return String::new(),
        };
        let mut out = String::new();
        for family in &families {
            family.encode(&mut out);
        }
        let dropped: Vec<_> = families.iter().filter(|f| f.dropped() > 0).collect();
        if !dropped.is_empty() {
            out.push_str("# HELP sluice_metric_series_dropped_total Observations not recorded because their family reached its label-set limit.\n");
            out.push_str("# TYPE sluice_metric_series_dropped_total counter\n");
            for f in dropped {
                let _ = writeln!(
                    out,
                    "sluice_metric_series_dropped_total{{family=\"{}\"}} {}",
                    escape(f.name()),
                    f.dropped()
                );
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Vec<f64>),
}

/// What one label set of a family holds.
pub trait Series: Send + Sync + 'static {
    #[doc(hidden)]
    fn create(kind: &KindRef<'_>) -> Self;
    #[doc(hidden)]
    fn write(&self, name: &str, labels: &str, out: &mut String);
}

#[doc(hidden)]
pub struct KindRef<'a>(&'a Kind);

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Series for Counter {
    fn create(_: &KindRef<'_>) -> Self {
        Self::default()
    }

    fn write(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{labels} {}", self.get());
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl Series for Gauge {
    fn create(_: &KindRef<'_>) -> Self {
        Self::default()
    }

    fn write(&self, name: &str, labels: &str, out: &mut String) {
        let _ = writeln!(out, "{name}{labels} {}", number(self.get()));
    }
}

/// Observations counted into buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

impl Series for Histogram {
    fn create(kind: &KindRef<'_>) -> Self {
        let bounds = match kind.0 {
            Kind::Histogram(b) => b.clone(),
            _ => Vec::new(),
        };
        Self {
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn write(&self, name: &str, labels: &str, out: &mut String) {
        let with_le = |le: &str| {
            if labels.is_empty() {
                format!("{{le=\"{le}\"}}")
            } else {
                format!("{},le=\"{le}\"}}", &labels[..labels.len() - 1])
            }
        };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                with_le(&number(*bound))
            );
        }
        let _ = writeln!(out, "{name}_bucket{} {}", with_le("+Inf"), self.count());
        let _ = writeln!(out, "{name}_sum{labels} {}", number(self.sum()));
        let _ = writeln!(out, "{name}_count{labels} {}", self.count());
    }
}

/// A named metric with one series per label set.
pub struct Family<S> {
    inner: Arc<FamilyInner<S>>,
}

impl<S> Clone for Family<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Family<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.inner.name)
            .finish()
    }
}

struct FamilyInner<S> {
    name: String,
    help: String,
    label_names: Vec<&'static str>,
    kind: Kind,
    max_series: usize,
    series: Mutex<SeriesMap<S>>,
    dropped: AtomicU64,
}

/// The keyed hash every family finds its series by: one per process, so one hash of a
/// label set serves every family recorded with it (see [`LabelHash`]).
static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// The hash of one label set's values, to look it up in several families that share the
/// label names (Istio's four request families) while hashing the values once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelHash(u64);

impl LabelHash {
    /// The hash of `values`.
    pub fn of(values: &[&str]) -> Self {
        Self(HASHER.hash_one(values))
    }
}

/// One series with its label values.
type Labelled<S> = (Box<[Box<str>]>, Arc<S>);

/// A family's series by label values. Looked up on every recorded request, so a lookup
/// allocates nothing: series are found by the hash of the values as given (`&[&str]`), and
/// those with the same hash are told apart by comparing the values.
struct SeriesMap<S> {
    by_hash: HashMap<u64, Vec<Labelled<S>>>,
    len: usize,
}

impl<S> SeriesMap<S> {
    fn new() -> Self {
        Self {
            by_hash: HashMap::new(),
            len: 0,
        }
    }

    fn get(&self, hash: u64, values: &[&str]) -> Option<&Arc<S>> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(key, _)| key.iter().map(|k| &**k).eq(values.iter().copied()))
            .map(|(_, s)| s)
    }

    fn insert(&mut self, hash: u64, values: &[&str], series: Arc<S>) {
        let key = values.iter().map(|v| Box::from(*v)).collect();
        self.by_hash.entry(hash).or_default().push((key, series));
        self.len += 1;
    }

    /// Every series, ordered by its label values (the exposition's order).
    fn sorted(&self) -> Vec<(&[Box<str>], &Arc<S>)> {
        let mut all: Vec<_> = self
            .by_hash
            .values()
            .flatten()
            .map(|(key, s)| (&key[..], s))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

impl<S: Series> Family<S> {
    fn new(name: &str, help: &str, labels: &[&'static str], kind: Kind) -> Self {
        Self {
            inner: Arc::new(FamilyInner {
                name: name.to_owned(),
                help: help.to_owned(),
                label_names: labels.to_vec(),
                kind,
                max_series: DEFAULT_MAX_SERIES,
                series: Mutex::new(SeriesMap::new()),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The family's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The series for `values` (one per label name, in order); `None` when the family is at
    /// its label-set limit (the observation is then counted as dropped) or the number of
    /// values is wrong.
    pub fn with(&self, values: &[&str]) -> Option<Arc<S>> {
        self.with_hashed(LabelHash::of(values), values)
    }

    /// [`Family::with`] for values whose hash is known (`hash` must be
    /// `LabelHash::of(values)`).
    pub fn with_hashed(&self, hash: LabelHash, values: &[&str]) -> Option<Arc<S>> {
        if values.len() != self.inner.label_names.len() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let hash = hash.0;
        let mut series = self.inner.series.lock().ok()?;
        if let Some(s) = series.get(hash, values) {
            return Some(s.clone());
        }
        if series.len >= self.inner.max_series {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let s = Arc::new(S::create(&KindRef(&self.inner.kind)));
        series.insert(hash, values, s.clone());
        Some(s)
    }
}

impl<S: Series> Encode for Family<S> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn encode(&self, out: &mut String) {
        let kind = match self.inner.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let name = &self.inner.name;
        let _ = writeln!(out, "# HELP {name} {}", self.inner.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let Ok(series) = self.inner.series.lock() else {
            return;
        };
        for (values, s) in series.sorted() {
            let labels = if values.is_empty() {
                String::new()
            } else {
                let pairs: Vec<String> = self
                    .inner
                    .label_names
                    .iter()
                    .zip(values)
                    .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                    .collect();
                format!("{{{}}}", pairs.join(","))
            };
            s.write(name, &labels, out);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format_and_escaping() {
        let r = Registry::new();
        let c = r.counter("hits_total", "Hits.", &["path"]);
        c.with(&["/a\"b\\c\n"]).unwrap().add(3);
        let h = r.histogram("lat_ms", "Latency.", &["code"], &[1.0, 5.0]);
        let s = h.with(&["200"]).unwrap();
        s.observe(0.5);
        s.observe(3.0);
        s.observe(7.0);
        let g = r.gauge("depth", "Depth.", &[]);
        g.with(&[]).unwrap().set(2.5);
        let text = r.encode();
        assert!(
            text.contains("# TYPE hits_total counter\nhits_total{path=\"/a\\\"b\\\\c\\n\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_ms_bucket{code=\"200\",le=\"1\"} 1\n"));
        assert!(text.contains("lat_ms_bucket{code=\"200\",le=\"5\"} 2\n"));
        assert!(text.contains("lat_ms_bucket{code=\"200\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("lat_ms_sum{code=\"200\"} 10.5\n"));
        assert!(text.contains("lat_ms_count{code=\"200\"} 3\n"));
        assert!(text.contains("depth 2.5\n"));
    }

    #[test]
    fn one_series_per_label_set_printed_in_label_order() {
        let r = Registry::new();
        let c = r.counter("c", "C.", &["a", "b"]);
        for (a, b) in [("y", "1"), ("x", "2"), ("x", "10"), ("", "z")] {
            c.with(&[a, b]).unwrap().inc();
        }
        let again = c.with(&["x", "2"]).unwrap();
        again.inc();
        assert!(Arc::ptr_eq(&again, &c.with(&["x", "2"]).unwrap()));
        // The same strings split differently are another label set.
        assert_eq!(c.with(&["x2", ""]).unwrap().get(), 0);
        let text = r.encode();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("c{")).collect();
        assert_eq!(
            lines,
            [
                "c{a=\"\",b=\"z\"} 1",
                "c{a=\"x\",b=\"10\"} 1",
                "c{a=\"x\",b=\"2\"} 2",
                "c{a=\"x2\",b=\"\"} 0",
                "c{a=\"y\",b=\"1\"} 1",
            ]
        );
    }

    #[test]
    fn label_sets_are_bounded() {
        let r = Registry::new();
        let c = r.counter("c", "C.", &["id"]);
        for i in 0..DEFAULT_MAX_SERIES + 5 {
            if let Some(s) = c.with(&[&i.to_string()]) {
                s.inc();
            }
        }
        assert!(c.with(&["a", "b"]).is_none());
        let text = r.encode();
        assert!(
            text.contains("sluice_metric_series_dropped_total{family=\"c\"} 6\n"),
            "{}",
            &text[text.len() - 300..]
        );
    }
}
