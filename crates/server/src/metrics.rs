//! Prometheus metrics, kept with the Prometheus project's client library (`prometheus-client`,
//! OpenMetrics text): requests by operation and reason code, latency histograms by route, group-
//! commit sizes and flush durations, commit and authentication failures, readiness, open
//! connections, manifests, TLS reloads and the build. No label comes from a request's values.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use selene_kms_core::ReasonCode;
use selene_kms_store::{BATCH_BOUNDS, BatchHistogram, FLUSH_BOUNDS, WriteHealth};

/// The exposition's content type.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Operations counted (KMS operations, redemption, admin, everything else).
const OPERATIONS: [&str; 8] = [
    "GET_HANDLE",
    "ISSUE_EPHEMERAL",
    "ROTATE",
    "REVOKE",
    "REDEEM",
    "ADMIN",
    "UNPARSED",
    "OTHER",
];
/// Latency bucket bounds, seconds; millisecond steps up to 5 ms, where the latency targets are.
const LATENCY_BOUNDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// Route classes with a latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// `POST /v1/kms/requests`.
    Kms,
    /// `POST /v1/material/redeem`.
    Redeem,
    /// `POST /v1/crypto/{op}`.
    Crypto,
    /// Admin and audit routes.
    Admin,
    /// Health, metrics, OpenAPI, unknown routes.
    Other,
}

impl RouteClass {
    fn name(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::Redeem => "redeem",
            Self::Crypto => "crypto",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    reason_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS)
}

/// What a scrape reads besides the server's own counters: the store's, and the moment's.
pub struct Scrape<'a> {
    /// Group-commit sizes.
    pub batches: &'a BatchHistogram,
    /// Commit failures and flush durations.
    pub health: &'a WriteHealth,
    /// Whether the node is ready (as `/readyz` says).
    pub ready: bool,
    /// Connections open now.
    pub open_connections: usize,
}

/// A histogram's per-bucket counts, their number and their sum, as read.
type Snapshot = (Vec<u64>, u64, f64);

/// The values of the scrape being encoded.
#[derive(Debug, Default)]
struct Scraped {
    batches: Snapshot,
    flushes: Snapshot,
    commit_failures: u64,
    ready: bool,
    open_connections: u64,
}

/// Encodes [`Scraped`] on each scrape.
#[derive(Debug)]
struct ScrapeCollector(Arc<Mutex<Scraped>>);

/// `(bound, per-bucket count)` pairs, with the `+Inf` bucket holding what no bound did, and
/// the count they add up to. Buckets and count are read one after the other while recordings
/// go on, so the count is never taken as less than the buckets hold.
fn buckets(bounds: impl Iterator<Item = f64>, snapshot: &Snapshot) -> (Vec<(f64, u64)>, u64) {
    let (counts, count, _) = snapshot;
    let mut out: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
    let bucketed: u64 = out.iter().map(|(_, n)| n).sum();
    out.push((f64::INFINITY, count.saturating_sub(bucketed)));
    (out, bucketed.max(*count))
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    (buckets, count): &(Vec<(f64, u64)>, u64),
    snapshot: &Snapshot,
) -> std::fmt::Result {
    let (_, _, sum) = snapshot;
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        encoder
            .encode_descriptor(
                "selene_kms_commit_failures",
                "Group commits that could not be committed or flushed (every request in one is refused).",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&s.commit_failures, None)?;
        encoder
            .encode_descriptor(
                "selene_kms_ready",
                "1 when the node is ready to serve (as /readyz says), else 0.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(s.ready))?;
        encoder
            .encode_descriptor(
                "selene_kms_open_connections",
                "Client connections open now.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&s.open_connections)?;
        let flushes = buckets(FLUSH_BOUNDS.into_iter(), &s.flushes);
        histogram(
            &mut encoder,
            "selene_kms_fsync_seconds",
            "How long each flush to stable storage took (one per group commit or more).",
            &flushes,
            &s.flushes,
        )?;
        #[allow(
            clippy::cast_precision_loss,
            reason = "batch sizes are at most 1024, exact in an f64"
        )]
        let batches = buckets(BATCH_BOUNDS.iter().map(|b| *b as f64), &s.batches);
        histogram(
            &mut encoder,
            "selene_kms_commit_batch_size",
            "Units per group commit (one fsync each).",
            &batches,
            &s.batches,
        )
    }
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    auth_failures: Counter,
    manifests_signed: Counter,
    manifest_failures: Counter,
    manifest_signed_at: Gauge,
    tls_reloads: Counter,
    tls_reload_failures: Counter,
    scraped: Arc<Mutex<Scraped>>,
    /// One scrape at a time: each encodes the values it read.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "selene_kms_requests",
            "Answered requests by operation and reason code.",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "selene_kms_request_duration_seconds",
            "Request latency by route.",
            latency.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let auth_failures = counter(
            &mut registry,
            "selene_kms_auth_failures",
            "Requests whose credential did not authenticate.",
        );
        let manifests_signed = counter(
            &mut registry,
            "selene_kms_manifests_signed",
            "Manifests of the chains' heads this node signed.",
        );
        let manifest_failures = counter(
            &mut registry,
            "selene_kms_manifest_failures",
            "Manifests due and not signed: the store's manifests or chains do not hold, or the store failed (see the log).",
        );
        let manifest_signed_at = Gauge::default();
        registry.register(
            "selene_kms_manifest_signed_at_seconds",
            "When this node last signed a manifest, Unix time (0: not yet).",
            manifest_signed_at.clone(),
        );
        let tls_reloads = counter(
            &mut registry,
            "selene_kms_tls_reloads",
            "TLS certificate, key and client CA reloads on SIGHUP that took effect.",
        );
        let tls_reload_failures = counter(
            &mut registry,
            "selene_kms_tls_reload_failures",
            "TLS reloads on SIGHUP refused (the material in use was kept; see the log).",
        );
        registry.register(
            "selene_kms_build",
            "The running build.",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        let scraped = Arc::new(Mutex::new(Scraped::default()));
        registry.register_collector(Box::new(ScrapeCollector(scraped.clone())));
        Self {
            registry,
            requests,
            latency,
            auth_failures,
            manifests_signed,
            manifest_failures,
            manifest_signed_at,
            tls_reloads,
            tls_reload_failures,
            scraped,
            rendering: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Counts one failed authentication.
    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// Counts a manifest this node signed at `at_ms`.
    pub fn manifest_signed(&self, at_ms: u64) {
        self.manifests_signed.inc();
        let at = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        if at > self.manifest_signed_at.get() {
            self.manifest_signed_at.set(at);
        }
    }

    /// Counts a manifest that was due and not signed.
    pub fn manifest_failure(&self) {
        self.manifest_failures.inc();
    }

    /// Counts a TLS reload: its certificate, key and client CA loaded, or refused.
    pub fn tls_reload(&self, loaded: bool) {
        if loaded {
            self.tls_reloads.inc();
        } else {
            self.tls_reload_failures.inc();
        }
    }

    /// Counts one answered request.
    pub fn count(&self, operation: Option<&str>, reason: ReasonCode) {
        let operation = operation
            .and_then(|o| OPERATIONS.iter().find(|x| **x == o))
            .copied()
            .unwrap_or("OTHER");
        self.requests
            .get_or_create(&RequestLabels {
                operation,
                reason_code: reason.name(),
            })
            .inc();
    }

    /// Records one request's latency.
    pub fn observe(&self, class: RouteClass, elapsed: std::time::Duration) {
        self.latency
            .get_or_create(&RouteLabels {
                route: class.name(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let _one_at_a_time = self
            .rendering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        {
            let (counts, count, sum) = scrape.batches.snapshot();
            #[allow(
                clippy::cast_precision_loss,
                reason = "a sum of batch sizes, as a float"
            )]
            let batches = (counts, count, sum as f64);
            let (counts, count, sum_ns) = scrape.health.flushes().snapshot();
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds shown in seconds")]
            let flushes = (counts, count, sum_ns as f64 / 1e9);
            let mut s = self.scraped.lock().unwrap_or_else(PoisonError::into_inner);
            *s = Scraped {
                batches,
                flushes,
                commit_failures: scrape.health.failures(),
                ready: scrape.ready,
                open_connections: u64::try_from(scrape.open_connections).unwrap_or(u64::MAX),
            };
        }
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
