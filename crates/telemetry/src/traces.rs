//! Traces: OpenTelemetry through `tracing`. The W3C `traceparent` travels inside every event
//! (and in the NATS headers the relay sets), so that one trace follows a request or a webhook
//! through the store, the relay, each agent and the events it causes, across processes:
//! whoever handles an event continues the trace of the span that wrote it
//! ([`continue_from`]), and whoever writes an event stamps it with the current span
//! ([`current_traceparent`]).
//!
//! Exporters: `off` (the default: spans still exist for logs, nothing is exported), `file` (one
//! JSON object per finished span, for tests and for a look without a collector) and `otlp`
//! (gRPC to a collector).

use std::{collections::HashMap, io::Write as _, path::PathBuf, sync::Mutex};

use opentelemetry::{
    propagation::TextMapPropagator as _,
    trace::{SpanContext, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Where spans go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exporter {
    /// Nowhere.
    #[default]
    Off,
    /// JSON lines in a file.
    File,
    /// OTLP over gRPC.
    Otlp,
}

/// Trace settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// `off`, `file` or `otlp`.
    pub exporter: Exporter,
    /// The file of the `file` exporter.
    pub file: Option<PathBuf>,
    /// The collector of the `otlp` exporter, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
}

/// Writes each finished span as a JSON line: names, ids, parent, attributes, links.
#[derive(Debug)]
struct FileExporter {
    file: Mutex<std::fs::File>,
}

impl SpanExporter for FileExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let mut lines = String::new();
        for span in batch {
            let attributes: serde_json::Map<String, serde_json::Value> = span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), serde_json::json!(kv.value.to_string())))
                .collect();
            let links: Vec<serde_json::Value> = span
                .links
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "trace_id": l.span_context.trace_id().to_string(),
                        "span_id": l.span_context.span_id().to_string(),
                    })
                })
                .collect();
            let line = serde_json::json!({
                "name": span.name,
                "trace_id": span.span_context.trace_id().to_string(),
                "span_id": span.span_context.span_id().to_string(),
                "parent_span_id": span.parent_span_id.to_string(),
                "attributes": attributes,
                "links": links,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let result = match self.file.lock() {
            Ok(mut file) => file.write_all(lines.as_bytes()).map_err(|e| {
                opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string())
            }),
            Err(_) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "the span file's lock is poisoned".into(),
            )),
        };
        std::future::ready(result)
    }
}

/// The tracer provider the configuration asks for; `None` when traces are off.
pub fn provider(config: &TraceConfig) -> Result<Option<SdkTracerProvider>, String> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("switchyard")
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = match config.exporter {
        Exporter::Off => return Ok(None),
        Exporter::File => {
            let path = config
                .file
                .clone()
                .ok_or("obs.traces.file names no file for the file exporter")?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder
                .with_simple_exporter(FileExporter {
                    file: Mutex::new(file),
                })
                .build()
        }
        Exporter::Otlp => {
            use opentelemetry_otlp::WithExportConfig as _;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &config.otlp_endpoint {
                exporter = exporter.with_endpoint(endpoint);
            }
            let exporter = exporter
                .build()
                .map_err(|e| format!("OTLP exporter: {e}"))?;
            builder.with_batch_exporter(exporter).build()
        }
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some(provider))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("switchyard"))
}

/// The OpenTelemetry context a `traceparent` names, if it is valid.
fn remote(traceparent: &str) -> Option<opentelemetry::Context> {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` continue the trace of `traceparent` (its parent), with a link to it too: the
/// event it was written by is the cause of what `span` does. Nothing when it is absent or
/// invalid.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(cx) = traceparent.and_then(remote) else {
        return;
    };
    let link: SpanContext = cx.span().span_context().clone();
    let _ = span.set_parent(cx);
    span.add_link(link);
}

/// The W3C `traceparent` of the current span, when it is being traced.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}
