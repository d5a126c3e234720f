//! Telemetry: Switchyard's Prometheus metrics. Every metric is named here, once; the crates
//! record into [`metrics()`] where things happen (an append, a request, a handled event), and
//! the server renders them with the figures it reads at scrape time (relay, consumer and
//! projection lag, process CPU and memory) through [`render`].
//!
//! Labels are bounded: event types (the catalog), agents, routes (the matched pattern, never
//! the raw path), outcomes. No workspace, id or user appears in a label.

mod traces;

use std::sync::OnceLock;

pub use traces::{Exporter, TraceConfig, continue_from, current_traceparent, layer, provider};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// `type`: an event type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The event type.
    pub r#type: String,
}

/// An HTTP request: method, matched route, status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// GET, POST, …
    pub method: String,
    /// The route pattern (`/v1/workspaces/{ws}/events`), or `unmatched`.
    pub route: String,
    /// The status code.
    pub status: String,
}

/// An agent.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    /// The agent's name.
    pub agent: String,
}

/// An agent and what became of an event it was given.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentOutcome {
    /// The agent's name.
    pub agent: String,
    /// `handled`, `redelivered` (handled before: only acknowledged), `failed` (will be
    /// retried), `dead_lettered`.
    pub outcome: String,
}

/// What became of something: a webhook delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `processed`, `duplicate`, `ignored`, `refused`, `failed`.
    pub outcome: String,
}

type Seconds = Family<AgentLabel, Histogram, fn() -> Histogram>;
type HttpSeconds = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The metrics recorded as things happen.
#[derive(Debug)]
pub struct Metrics {
    /// `switchyard_events_appended_total{type}`: events appended (not counting duplicates).
    pub appended: Family<TypeLabel, Counter>,
    /// `switchyard_http_request_duration_seconds{method,route,status}`.
    pub http: HttpSeconds,
    /// `switchyard_agent_handle_duration_seconds{agent}`: one event's handler (and, for
    /// long-running agents, its work).
    pub handle_seconds: Seconds,
    /// `switchyard_agent_events_total{agent,outcome}`.
    pub handled: Family<AgentOutcome, Counter>,
    /// `switchyard_relay_published_total`: events the relay published and JetStream
    /// acknowledged.
    pub relayed: Counter,
    /// `switchyard_webhook_deliveries_total{outcome}`.
    pub webhooks: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    fn new() -> Self {
        Self {
            appended: Family::default(),
            http: Family::new_with_constructor(latency),
            handle_seconds: Family::new_with_constructor(latency),
            handled: Family::default(),
            relayed: Counter::default(),
            webhooks: Family::default(),
        }
    }

    /// Counts one event of `ty` appended.
    pub fn appended(&self, ty: &str) {
        self.appended
            .get_or_create(&TypeLabel {
                r#type: ty.to_owned(),
            })
            .inc();
    }

    /// Counts what became of an event given to `agent`.
    pub fn handled(&self, agent: &str, outcome: &str) {
        self.handled
            .get_or_create(&AgentOutcome {
                agent: agent.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records how long `agent` took over one event.
    pub fn handle_time(&self, agent: &str, seconds: f64) {
        self.handle_seconds
            .get_or_create(&AgentLabel {
                agent: agent.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a webhook delivery by outcome.
    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records one HTTP request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .observe(seconds);
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A consumer's figures at scrape time.
#[derive(Debug, Clone)]
pub struct ConsumerFigures {
    /// The agent.
    pub agent: String,
    /// The event type it consumes.
    pub event_type: String,
    /// Messages not delivered yet.
    pub pending: u64,
    /// Delivered, not acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once.
    pub redelivered: u64,
}

/// What the server reads at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The store's last position.
    pub head_position: i64,
    /// Whether this instance is the active relay.
    pub relay_active: bool,
    /// Whether the relay is paused (ops).
    pub relay_paused: bool,
    /// Committed events not relayed yet (capped).
    pub relay_lag_events: i64,
    /// Age of the oldest event not relayed yet, seconds (0 when caught up).
    pub relay_lag_seconds: f64,
    /// Every consumer.
    pub consumers: Vec<ConsumerFigures>,
    /// `(projection, events behind)`.
    pub projections: Vec<(String, i64)>,
    /// Dead letters not resolved yet.
    pub dead_letters: i64,
    /// Whether this instance is in debug mode.
    pub debug_mode: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    agent: String,
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabel {
    projection: String,
}

/// CPU seconds and resident bytes of this process, read at most once a second (for span
/// attributes on every request, without reading `/proc` on every request).
pub fn process_figures_cached() -> Option<(f64, f64)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static READ_AT_MS: AtomicU64 = AtomicU64::new(0);
    static CPU_MS: AtomicU64 = AtomicU64::new(0);
    static RSS: AtomicU64 = AtomicU64::new(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if now_ms.saturating_sub(READ_AT_MS.load(Ordering::Relaxed)) >= 1_000 {
        let (cpu, rss) = process_figures()?;
        CPU_MS.store((cpu * 1000.0) as u64, Ordering::Relaxed);
        RSS.store(rss as u64, Ordering::Relaxed);
        READ_AT_MS.store(now_ms, Ordering::Relaxed);
    }
    Some((
        CPU_MS.load(Ordering::Relaxed) as f64 / 1000.0,
        RSS.load(Ordering::Relaxed) as f64,
    ))
}

/// CPU seconds (user + system) and resident bytes of this process, from `/proc` (Linux).
fn process_figures() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // USER_HZ is 100 and pages are 4 KiB on the Linux machines Switchyard runs on.
    Some((ticks / 100.0, pages * 4096.0))
}

/// The Prometheus text (OpenMetrics) of everything: the recorded metrics and `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let m = metrics();
    let mut registry = Registry::with_prefix("switchyard");
    registry.register(
        "events_appended",
        "Events appended to the store (duplicates not counted)",
        m.appended.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "HTTP requests by method, route and status",
        m.http.clone(),
    );
    registry.register(
        "agent_handle_duration_seconds",
        "Time an agent took over one event",
        m.handle_seconds.clone(),
    );
    registry.register(
        "agent_events",
        "Events given to agents, by what became of them",
        m.handled.clone(),
    );
    registry.register(
        "relay_published",
        "Events published to JetStream and acknowledged",
        m.relayed.clone(),
    );
    registry.register(
        "webhook_deliveries",
        "GitHub webhook deliveries by outcome",
        m.webhooks.clone(),
    );
    let gauge = |value: f64| {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(value);
        g
    };
    registry.register(
        "store_head_position",
        "The store's last global position",
        gauge(snapshot.head_position as f64),
    );
    registry.register(
        "relay_active",
        "1 when this instance is the active relay",
        gauge(f64::from(u8::from(snapshot.relay_active))),
    );
    registry.register(
        "relay_paused",
        "1 when the relay is paused",
        gauge(f64::from(u8::from(snapshot.relay_paused))),
    );
    registry.register(
        "relay_lag_events",
        "Committed events not relayed to JetStream yet (capped)",
        gauge(snapshot.relay_lag_events as f64),
    );
    registry.register(
        "relay_lag_seconds",
        "Age of the oldest event not relayed yet",
        gauge(snapshot.relay_lag_seconds),
    );
    registry.register(
        "obs_debug",
        "1 while this instance is in debug mode",
        gauge(f64::from(u8::from(snapshot.debug_mode))),
    );
    registry.register(
        "dead_letters_unresolved",
        "Dead-lettered events not retried successfully",
        gauge(snapshot.dead_letters as f64),
    );
    let pending = Family::<ConsumerLabels, Gauge>::default();
    let ack_pending = Family::<ConsumerLabels, Gauge>::default();
    let redelivered = Family::<ConsumerLabels, Gauge>::default();
    for c in &snapshot.consumers {
        let labels = ConsumerLabels {
            agent: c.agent.clone(),
            r#type: c.event_type.clone(),
        };
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        pending.get_or_create(&labels).set(clamp(c.pending));
        ack_pending.get_or_create(&labels).set(clamp(c.ack_pending));
        redelivered.get_or_create(&labels).set(clamp(c.redelivered));
    }
    registry.register(
        "consumer_pending",
        "Messages of a durable consumer not delivered yet",
        pending,
    );
    registry.register(
        "consumer_ack_pending",
        "Messages delivered and not acknowledged yet",
        ack_pending,
    );
    registry.register(
        "consumer_redelivered",
        "Messages delivered more than once",
        redelivered,
    );
    let projections = Family::<ProjectionLabel, Gauge>::default();
    for (name, lag) in &snapshot.projections {
        projections
            .get_or_create(&ProjectionLabel {
                projection: name.clone(),
            })
            .set(*lag);
    }
    registry.register(
        "projection_lag_events",
        "Events a projection has not applied yet (capped)",
        projections,
    );
    if let Some((cpu, rss)) = process_figures() {
        registry.register(
            "process_cpu_seconds",
            "CPU time of the server process (user and system)",
            gauge(cpu),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            gauge(rss),
        );
    }
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        out.push_str("# metrics could not be encoded\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_and_scraped_figures_are_rendered() {
        metrics().appended("proposal.created.v1");
        metrics().handled("git", "handled");
        let text = render(&Snapshot {
            relay_lag_events: 7,
            consumers: vec![ConsumerFigures {
                agent: "git".into(),
                event_type: "proposal.approved.v1".into(),
                pending: 3,
                ack_pending: 1,
                redelivered: 0,
            }],
            projections: vec![("proposals".into(), 2)],
            ..Snapshot::default()
        });
        assert!(
            text.contains("switchyard_events_appended_total{type=\"proposal.created.v1\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_relay_lag_events 7"), "{text}");
        assert!(
            text.contains(
                "switchyard_consumer_pending{agent=\"git\",type=\"proposal.approved.v1\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("switchyard_projection_lag_events{projection=\"proposals\"} 2"));
        assert!(text.contains("switchyard_process_resident_memory_bytes"));
        assert!(text.ends_with("# EOF\n"));
    }
}

/// How much the server tells: `shipping` (spans and metrics, logs at the configured filter) or
/// `debug` (verbose logs and full telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The default.
    Shipping,
    /// Verbose.
    Debug,
}

/// Where the mode stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeState {
    /// The mode.
    pub mode: Mode,
    /// When it goes back to `shipping` by itself (a debug window).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it is what it is.
    pub reason: String,
}

/// Replaces the log filter with the given directives.
pub type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The observability mode, switchable at run time: swaps the log filter in place, and goes
/// back to `shipping` by itself at the end of a debug window.
pub struct Modes {
    reload: Reload,
    shipping_filter: String,
    debug_filter: String,
    state: std::sync::Mutex<(ModeState, u64)>,
}

impl std::fmt::Debug for Modes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modes")
            .field("state", &self.current())
            .finish()
    }
}

impl Modes {
    /// Modes over a filter that `reload` replaces; starts in `initial`.
    pub fn new(reload: Reload, shipping_filter: &str, debug_filter: &str, initial: Mode) -> Self {
        let modes = Self {
            reload,
            shipping_filter: shipping_filter.to_owned(),
            debug_filter: debug_filter.to_owned(),
            state: std::sync::Mutex::new((
                ModeState {
                    mode: Mode::Shipping,
                    until: None,
                    reason: "the default".into(),
                },
                0,
            )),
        };
        if initial == Mode::Debug {
            let _ = modes.apply(Mode::Debug, None, "configured (SWITCHYARD_OBS_MODE)");
        }
        modes
    }

    /// Where the mode stands.
    pub fn current(&self) -> ModeState {
        self.state.lock().map(|s| s.0.clone()).unwrap_or(ModeState {
            mode: Mode::Shipping,
            until: None,
            reason: "unknown".into(),
        })
    }

    fn apply(
        &self,
        mode: Mode,
        window: Option<std::time::Duration>,
        reason: &str,
    ) -> Result<u64, String> {
        let filter = match mode {
            Mode::Shipping => &self.shipping_filter,
            Mode::Debug => &self.debug_filter,
        };
        (self.reload)(filter)?;
        let until = window
            .and_then(|w| chrono::Duration::from_std(w).ok())
            .map(|w| chrono::Utc::now() + w);
        let mut state = self
            .state
            .lock()
            .map_err(|_| "mode state poisoned".to_owned())?;
        state.1 += 1;
        state.0 = ModeState {
            mode,
            until,
            reason: reason.to_owned(),
        };
        Ok(state.1)
    }

    /// Switches to `mode`; with a `window`, back to `shipping` after it (unless switched
    /// again meanwhile). Needs a Tokio runtime for the window.
    pub fn set(
        self: &std::sync::Arc<Self>,
        mode: Mode,
        window: Option<std::time::Duration>,
        reason: &str,
    ) -> Result<ModeState, String> {
        let generation = self.apply(mode, window, reason)?;
        tracing::info!(?mode, ?window, reason, "observability mode switched");
        if let Some(window) = window {
            let modes = std::sync::Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let still = modes
                    .state
                    .lock()
                    .map(|s| s.1 == generation)
                    .unwrap_or(false);
                if still {
                    let _ = modes.apply(Mode::Shipping, None, "the debug window ended");
                    tracing::info!("observability mode back to shipping: the debug window ended");
                }
            });
        }
        Ok(self.current())
    }
}
