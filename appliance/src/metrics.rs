//! Prometheus `/metrics` (prometheus-client, text format) on its own plain-HTTP listener,
//! `[metrics] listen`, off unless configured; the packaged configuration puts it on
//! loopback (docs/operations.md, R14). Why not the KMS listener: every KMS client can reach
//! that one, and traffic figures are nobody's business but IT's; a loopback listener needs
//! no client certificates or firewall rules to keep it private.
//!
//! Labels are from fixed sets only (route, method, status class): never a user ID, a key
//! URI, a token or anything from the request. The hot path costs one `Instant::now`, an
//! atomic increment and one histogram observation; the gauges are read at scrape time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use strongroom_kms::Kms;

const ROUTES: [&str; 4] = ["messages", "discovery", "healthz", "other"];
const METHODS: [&str; 3] = ["GET", "POST", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels = [(&'static str, &'static str); 3];

/// The appliance's metrics. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    /// One counter per (route, method, class), created up front so the hot path takes no lock.
    requests: Vec<Counter>,
    latency: Vec<Histogram>,
    keys: Gauge,
    channels: Gauge,
    audit_records: Gauge,
    audit_checkpoint: Gauge,
    audit_writable: Gauge,
    audit_signing: Gauge,
    audit_flushes: Gauge,
    audit_reserve: Gauge,
    audit_reserve_short: Gauge,
    storage_healthy: Gauge,
    hsm_connected: Gauge,
    hsm_idle: Gauge,
    hsm_pool_size: Gauge,
    hsm_recoveries: Gauge,
    core_connected: Gauge,
    core_configured: Gauge,
    core_reconnects: Gauge,
}

fn route_index(path: &str) -> usize {
    match path {
        "/kms/messages" => 0,
        p if p.starts_with("/kms/") => 1,
        "/healthz" => 2,
        _ => 3,
    }
}

fn method_index(m: &axum::http::Method) -> usize {
    match *m {
        axum::http::Method::GET => 0,
        axum::http::Method::POST => 1,
        _ => 2,
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::<i64, AtomicI64>::default();
    registry.register(name, help, g.clone());
    g
}

impl Metrics {
    pub fn new(core_configured: bool) -> Arc<Self> {
        let mut registry = Registry::with_prefix("strongroom");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let family = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status class",
            family.clone(),
        );
        let mut requests = Vec::with_capacity(ROUTES.len() * METHODS.len() * CLASSES.len());
        for route in ROUTES {
            for method in METHODS {
                for class in CLASSES {
                    requests.push(
                        family
                            .get_or_create(&[
                                ("route", route),
                                ("method", method),
                                ("status", class),
                            ])
                            .clone(),
                    );
                }
            }
        }
        let latency_family =
            Family::<[(&'static str, &'static str); 1], Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 14))
            });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency_family.clone(),
        );
        let latency = ROUTES
            .iter()
            .map(|r| latency_family.get_or_create(&[("route", *r)]).clone())
            .collect();
        let r = &mut registry;
        let m = Self {
            keys: gauge(r, "keys_stored", "Keys in the store"),
            channels: gauge(
                r,
                "channels_live",
                "Unexpired ECDHE channels held in memory",
            ),
            audit_records: gauge(r, "audit_records", "Records in the audit log"),
            audit_checkpoint: gauge(
                r,
                "audit_checkpoint_size",
                "Tree size of the last signed checkpoint",
            ),
            audit_writable: gauge(r, "audit_writable", "1 while the audit log accepts appends"),
            audit_signing: gauge(r, "audit_signing", "1 while checkpoints are being signed"),
            audit_flushes: gauge(
                r,
                "audit_flushes",
                "Audit record groups written and flushed since start (records / flushes = mean group size)",
            ),
            audit_reserve: gauge(
                r,
                "audit_reserve_bytes",
                "Zero-filled space preallocated ahead of the audit records",
            ),
            audit_reserve_short: gauge(
                r,
                "audit_reserve_short",
                "1 while the audit reserve cannot be extended (disk full): free space before it runs out",
            ),
            storage_healthy: gauge(r, "storage_healthy", "1 while the store is readable"),
            hsm_connected: gauge(r, "hsm_connected", "1 while logged in to the HSM token"),
            hsm_idle: gauge(r, "hsm_sessions_idle", "Idle HSM sessions in the pool"),
            hsm_pool_size: gauge(r, "hsm_sessions_max_idle", "Most idle HSM sessions kept"),
            hsm_recoveries: gauge(r, "hsm_recoveries", "HSM session recoveries since start"),
            core_configured: gauge(
                r,
                "dialout_configured",
                "1 when a hosted core is configured",
            ),
            core_connected: gauge(
                r,
                "dialout_connected",
                "1 while the dial-out connection is up",
            ),
            core_reconnects: gauge(
                r,
                "dialout_reconnects",
                "Dial-out reconnect attempts since start",
            ),
            registry,
            requests,
            latency,
        };
        m.core_configured.set(i64::from(core_configured));
        Arc::new(m)
    }

    /// Counts one request (axum middleware on the KMS router).
    pub async fn track(
        axum::extract::State(metrics): axum::extract::State<Arc<Self>>,
        req: Request,
        next: Next,
    ) -> Response {
        let route = route_index(req.uri().path());
        let method = method_index(req.method());
        let start = Instant::now();
        let resp = next.run(req).await;
        let class = class_index(resp.status().as_u16());
        let i = (route * METHODS.len() + method) * CLASSES.len() + class;
        if let Some(c) = metrics.requests.get(i) {
            c.inc();
        }
        if let Some(h) = metrics.latency.get(route) {
            h.observe(start.elapsed().as_secs_f64());
        }
        resp
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, kms: &Kms, core: Option<&crate::dialout::Health>) -> String {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match kms.store().key_count() {
            Ok(n) => {
                self.keys.set(to_i64(n));
                self.storage_healthy.set(1);
            }
            Err(_) => {
                self.storage_healthy.set(0);
            }
        }
        self.channels
            .set(i64::try_from(kms.live_channels()).unwrap_or(i64::MAX));
        let a = kms.audit().health();
        self.audit_records.set(to_i64(a.size));
        self.audit_checkpoint.set(a.checkpointed.map_or(-1, to_i64));
        self.audit_writable.set(i64::from(a.writable));
        self.audit_signing.set(i64::from(a.signing));
        self.audit_flushes.set(to_i64(a.flushes));
        self.audit_reserve.set(to_i64(a.reserve_bytes));
        self.audit_reserve_short.set(i64::from(a.reserve_short));
        let p = kms.hsm().pool_stats();
        self.hsm_connected.set(i64::from(p.connected));
        self.hsm_idle.set(i64::try_from(p.idle).unwrap_or(i64::MAX));
        self.hsm_pool_size
            .set(i64::try_from(p.size).unwrap_or(i64::MAX));
        self.hsm_recoveries.set(to_i64(p.reconnects));
        if let Some(h) = core {
            self.core_connected
                .set(i64::from(h.get() == crate::dialout::CoreState::Connected));
            self.core_reconnects.set(to_i64(h.reconnects()));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` (plain HTTP) until SIGTERM/SIGINT.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    kms: Arc<Kms>,
    core: Option<crate::dialout::Health>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the metrics listener is not on loopback: firewall it");
    }
    tracing::info!(listen = %listener.local_addr()?, "metrics on /metrics (HTTP)");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, kms, core) = (Arc::clone(&metrics), Arc::clone(&kms), core.clone());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(&kms, core.as_ref()),
                )
            }
        }),
    );
    crate::server::serve_plain(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(route_index("/kms/messages"), 0);
        assert_eq!(route_index("/kms/3f0c1a52-6a0e-4c55-9d7e-1f2a3b4c5d6e"), 1);
        assert_eq!(route_index("/healthz"), 2);
        assert_eq!(
            route_index("/kms/x/keys/secret"),
            1,
            "the path itself is never a label"
        );
        assert_eq!(route_index("/kms:/x"), 3);
        assert_eq!(route_index("/anything"), 3);
        assert_eq!(class_index(200), 1);
        assert_eq!(class_index(499), 3);
        assert_eq!(class_index(503), 4);
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(999), 4);
    }
}
