//! Prometheus metrics: requests by operation and reason code, latency histograms by route,
//! group-commit batch sizes and flush durations, commit and authentication failures, readiness,
//! open connections, TLS reloads and the build. No label comes from a request's values.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use selene_kms_core::{REGISTRY, ReasonCode};
use selene_kms_store::{BATCH_BOUNDS, BatchHistogram, FLUSH_BOUNDS, WriteHealth};

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
    /// Admin and audit routes.
    Admin,
    /// Health, metrics, OpenAPI, unknown routes.
    Other,
}

impl RouteClass {
    const ALL: [Self; 4] = [Self::Kms, Self::Redeem, Self::Admin, Self::Other];

    fn name(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::Redeem => "redeem",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }
}

struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// All counters of one server.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    latency: [Histogram; 4],
    auth_failures: AtomicU64,
    manifests_signed: AtomicU64,
    manifest_failures: AtomicU64,
    manifest_signed_at_ms: AtomicU64,
    tls_reloads: AtomicU64,
    tls_reload_failures: AtomicU64,
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

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: (0..OPERATIONS.len() * REGISTRY.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: std::array::from_fn(|_| Histogram::new()),
            auth_failures: AtomicU64::new(0),
            manifests_signed: AtomicU64::new(0),
            manifest_failures: AtomicU64::new(0),
            manifest_signed_at_ms: AtomicU64::new(0),
            tls_reloads: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one failed authentication.
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a manifest this node signed at `at_ms`.
    pub fn manifest_signed(&self, at_ms: u64) {
        self.manifests_signed.fetch_add(1, Ordering::Relaxed);
        self.manifest_signed_at_ms
            .fetch_max(at_ms, Ordering::Relaxed);
    }

    /// Counts a manifest that was due and not signed.
    pub fn manifest_failure(&self) {
        self.manifest_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TLS reload: its certificate, key and client CA loaded, or refused.
    pub fn tls_reload(&self, loaded: bool) {
        let counter = if loaded {
            &self.tls_reloads
        } else {
            &self.tls_reload_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn count(&self, operation: Option<&str>, reason: ReasonCode) {
        let op = operation
            .and_then(|o| OPERATIONS.iter().position(|x| *x == o))
            .unwrap_or(OPERATIONS.len() - 1);
        let index = op * REGISTRY.len() + reason as usize;
        if let Some(c) = self.requests.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one request's latency.
    pub fn observe(&self, class: RouteClass, elapsed: std::time::Duration) {
        let Some(h) = self.latency.get(class as usize) else {
            return;
        };
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| secs <= *b)
            && let Some(b) = h.buckets.get(i)
        {
            b.fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP selene_kms_requests_total Answered requests by operation and reason code.\n",
        );
        out.push_str("# TYPE selene_kms_requests_total counter\n");
        for (o, op) in OPERATIONS.iter().enumerate() {
            for (r, info) in REGISTRY.iter().enumerate() {
                let n = self
                    .requests
                    .get(o * REGISTRY.len() + r)
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "selene_kms_requests_total{{operation=\"{op}\",reason_code=\"{}\"}} {n}",
                        info.name
                    );
                }
            }
        }
        out.push_str("# HELP selene_kms_auth_failures_total Requests whose credential did not authenticate.\n");
        out.push_str("# TYPE selene_kms_auth_failures_total counter\n");
        let _ = writeln!(
            out,
            "selene_kms_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        let gauges = [
            (
                "selene_kms_commit_failures_total",
                "counter",
                "Group commits that could not be committed or flushed (every request in one is refused).",
                scrape.health.failures(),
            ),
            (
                "selene_kms_ready",
                "gauge",
                "1 when the node is ready to serve (as /readyz says), else 0.",
                u64::from(scrape.ready),
            ),
            (
                "selene_kms_open_connections",
                "gauge",
                "Client connections open now.",
                u64::try_from(scrape.open_connections).unwrap_or(u64::MAX),
            ),
            (
                "selene_kms_tls_reloads_total",
                "counter",
                "TLS certificate, key and client CA reloads on SIGHUP that took effect.",
                self.tls_reloads.load(Ordering::Relaxed),
            ),
            (
                "selene_kms_tls_reload_failures_total",
                "counter",
                "TLS reloads on SIGHUP refused (the material in use was kept; see the log).",
                self.tls_reload_failures.load(Ordering::Relaxed),
            ),
            (
                "selene_kms_manifests_signed_total",
                "counter",
                "Manifests of the chains' heads this node signed.",
                self.manifests_signed.load(Ordering::Relaxed),
            ),
            (
                "selene_kms_manifest_failures_total",
                "counter",
                "Manifests due and not signed: the store's manifests or chains do not hold, or the store failed (see the log).",
                self.manifest_failures.load(Ordering::Relaxed),
            ),
            (
                "selene_kms_manifest_signed_at_seconds",
                "gauge",
                "When this node last signed a manifest, Unix time (0: not yet).",
                self.manifest_signed_at_ms.load(Ordering::Relaxed) / 1000,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out.push_str("# HELP selene_kms_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE selene_kms_request_duration_seconds histogram\n");
        for class in RouteClass::ALL {
            let Some(h) = self.latency.get(class as usize) else {
                continue;
            };
            let mut cumulative = 0;
            for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&h.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "selene_kms_request_duration_seconds_bucket{{route=\"{}\",le=\"{bound}\"}} {cumulative}",
                    class.name()
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "selene_kms_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}",
                class.name()
            );
            let _ = writeln!(
                out,
                "selene_kms_request_duration_seconds_sum{{route=\"{}\"}} {}",
                class.name(),
                h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "selene_kms_request_duration_seconds_count{{route=\"{}\"}} {count}",
                class.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP selene_kms_build_info The running build.\n# TYPE selene_kms_build_info gauge\nselene_kms_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let (buckets, count, sum_ns) = scrape.health.flushes().snapshot();
        out.push_str(
            "# HELP selene_kms_fsync_seconds How long each flush to stable storage took (one per group commit or more).\n",
        );
        out.push_str("# TYPE selene_kms_fsync_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, n) in FLUSH_BOUNDS.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "selene_kms_fsync_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "selene_kms_fsync_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let seconds = sum_ns as f64 / 1e9;
        let _ = writeln!(out, "selene_kms_fsync_seconds_sum {seconds}");
        let _ = writeln!(out, "selene_kms_fsync_seconds_count {count}");
        let (buckets, count, sum) = scrape.batches.snapshot();
        out.push_str(
            "# HELP selene_kms_commit_batch_size Units per group commit (one fsync each).\n",
        );
        out.push_str("# TYPE selene_kms_commit_batch_size histogram\n");
        let mut cumulative = 0;
        for (bound, n) in BATCH_BOUNDS.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "selene_kms_commit_batch_size_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "selene_kms_commit_batch_size_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "selene_kms_commit_batch_size_sum {sum}");
        let _ = writeln!(out, "selene_kms_commit_batch_size_count {count}");
        out
    }
}
