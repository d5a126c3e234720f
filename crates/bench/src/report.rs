//! The result: the machine and versions, one row per path and per raw limit, the ratios and
//! whether each target was met; as Markdown or JSON.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{PgPool, Row as _};

use crate::{Args, load::Figures};

const BEGIN: &str = "<!-- switchyard-bench:begin -->";
const END: &str = "<!-- switchyard-bench:end -->";

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) path: String,
    /// Whether it is a raw limit (measured beside the path above it).
    pub(crate) raw: bool,
    pub(crate) figures: Figures,
    /// Switchyard ÷ raw, in throughput, where a raw limit stands beside.
    pub(crate) ratio: Option<f64>,
    /// The target, in words.
    pub(crate) target: Option<String>,
    /// Whether it was met.
    pub(crate) met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) command: String,
    pub(crate) machine: String,
    pub(crate) versions: String,
    pub(crate) rows: Vec<Row>,
    /// The server's resident memory at the end and at its peak, in bytes.
    pub(crate) server_rss_bytes: u64,
    pub(crate) server_peak_bytes: u64,
    /// Events in the store at the end.
    pub(crate) events_in_store: i64,
}

impl Report {
    pub(crate) async fn new(
        pool: &PgPool,
        nats: &async_nats::Client,
        binary: &Path,
        args: &Args,
    ) -> anyhow::Result<Self> {
        let postgres: String = sqlx::query("SHOW server_version")
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        let nats_version = nats.server_info().version;
        let switchyard = tokio::process::Command::new(binary)
            .arg("--version")
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "switchyard (unknown version)".into());
        let mut command = String::from("scripts/bench");
        // The defaults, from the arguments' own definitions.
        let defaults = <Args as clap::Parser>::parse_from(["switchyard-bench"]);
        if args.quick {
            command.push_str(" --quick");
        } else {
            for (flag, value, default) in [
                ("--events", args.events, defaults.events),
                ("--clients", args.clients as u64, defaults.clients as u64),
                ("--seconds", args.seconds, defaults.seconds),
                ("--fill", args.fill, defaults.fill),
            ] {
                if value != default {
                    let _ = write!(command, " {flag} {value}");
                }
            }
        }
        Ok(Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            command,
            machine: machine(),
            versions: format!(
                "{switchyard}; PostgreSQL {postgres}; nats-server {nats_version}; release build"
            ),
            rows: Vec::new(),
            server_rss_bytes: 0,
            server_peak_bytes: 0,
            events_in_store: 0,
        })
    }

    /// A path and the raw limit beneath it, in throughput; met when `sy ÷ raw ≥ target`.
    pub(crate) fn ratio(
        &mut self,
        path: &str,
        clients: usize,
        sy: Figures,
        raw_path: &str,
        raw: Figures,
        target: f64,
    ) {
        let ratio = sy.per_second / raw.per_second.max(1e-9);
        self.rows.push(Row {
            path: path.replace("{c}", &clients.to_string()),
            raw: false,
            figures: sy,
            ratio: Some(ratio),
            target: Some(format!("≥ {target:.1}× raw")),
            met: Some(ratio >= target),
        });
        self.rows.push(Row {
            path: raw_path.replace("{c}", &clients.to_string()),
            raw: true,
            figures: raw,
            ratio: None,
            target: None,
            met: None,
        });
    }

    /// A latency path (with the raw one beside it, if any); met when p99 ≤ `target_ms`.
    pub(crate) fn latency(
        &mut self,
        path: &str,
        figures: Figures,
        beside: Option<(&str, Figures)>,
        target_ms: f64,
    ) {
        let met = figures.p99_ms.is_some_and(|p| p <= target_ms);
        self.rows.push(Row {
            path: path.to_owned(),
            raw: false,
            figures,
            ratio: None,
            target: Some(format!("p99 ≤ {target_ms:.0} ms")),
            met: Some(met),
        });
        if let Some((raw_path, raw)) = beside {
            self.limit(raw_path, raw);
        }
    }

    /// A raw limit on its own.
    pub(crate) fn limit(&mut self, path: &str, figures: Figures) {
        self.rows.push(Row {
            path: path.to_owned(),
            raw: true,
            figures,
            ratio: None,
            target: None,
            met: None,
        });
    }

    /// A projection rebuild next to the raw ordered read; met at ≥ 100 000 events/s and
    /// ≥ 0.5× raw.
    /// A rebuild over a store of `total` events, of which it applied `applied` (the types it
    /// declares; the store skips the others): its rate is store events covered per second.
    pub(crate) fn rebuild(
        &mut self,
        projection: &str,
        total: i64,
        applied: u64,
        sy: Figures,
        raw: Figures,
    ) {
        let ratio = sy.per_second / raw.per_second.max(1e-9);
        let met = sy.per_second >= 100_000.0 && ratio >= 0.5;
        let first = !self
            .rows
            .iter()
            .any(|r| r.path.starts_with("raw ordered read"));
        self.rows.push(Row {
            path: format!(
                "projection rebuild: `{projection}`, {total} events in the store, {applied} applied"
            ),
            raw: false,
            figures: sy,
            ratio: Some(ratio),
            target: Some("≥ 100 000 events/s, ≥ 0.5× raw".into()),
            met: Some(met),
        });
        if first {
            self.limit(
                &format!("raw ordered read of the events table, {total} events"),
                raw,
            );
        }
    }

    pub(crate) fn memory(&mut self, rss: u64, peak: u64, events: i64) {
        self.server_rss_bytes = rss;
        self.server_peak_bytes = peak;
        self.events_in_store = events;
    }

    /// Whether every target was met.
    pub(crate) fn all_met(&self) -> bool {
        self.rows.iter().all(|r| r.met != Some(false))
    }

    pub(crate) fn markdown(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
        let mut out = String::new();
        let _ = writeln!(out, "Run of {}: `{}`", self.date, self.command);
        let _ = writeln!(out);
        let _ = writeln!(out, "- Machine: {}", self.machine);
        let _ = writeln!(out, "- Versions: {}", self.versions);
        let _ = writeln!(
            out,
            "- Server (`switchyard serve`, a child process): peak resident memory **{:.0} MiB** \
             (`VmHWM`), {:.0} MiB at the end, with {} events in the store",
            self.server_peak_bytes as f64 / 1_048_576.0,
            self.server_rss_bytes as f64 / 1_048_576.0,
            self.events_in_store
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| path | count | per second | p50 ms | p95 ms | p99 ms | max ms | ÷ raw | target | met |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        );
        for row in &self.rows {
            let f = &row.figures;
            let path = if row.raw {
                format!("↳ raw: {}", row.path)
            } else {
                row.path.clone()
            };
            let _ = writeln!(
                out,
                "| {path} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                f.count,
                f.per_second,
                ms(f.p50_ms),
                ms(f.p95_ms),
                ms(f.p99_ms),
                ms(f.max_ms),
                row.ratio
                    .map_or_else(String::new, |r| format!("**{r:.2}×**")),
                row.target.clone().unwrap_or_default(),
                match row.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                },
            );
        }
        out
    }
}

/// Puts `table` between the markers in `file` (or appends it with them).
pub(crate) fn write_into(file: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let block = format!("{BEGIN}\n{table}{END}");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{block}{}", &text[..begin], &text[end + END.len()..])
        }
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(file, updated).with_context(|| format!("writing {}", file.display()))
}

/// CPU model, cores, memory and kernel, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(String::new, |kb| format!(", {:.0} GiB", kb / 1_048_576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} × {model}{memory}, Linux {}; client, server, PostgreSQL and NATS on the same machine",
        kernel.trim()
    )
}
