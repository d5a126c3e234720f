//! Load generation: closed loops of concurrent clients (throughput), open loops at a fixed
//! rate (latency, measured from when each request was due, so a stall is not hidden by the
//! requests it held back), and the figures drawn from them.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// What one path measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    /// Operations done (events, requests, messages).
    pub(crate) count: u64,
    pub(crate) seconds: f64,
    /// `count / seconds`.
    pub(crate) per_second: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

impl Figures {
    /// Figures from a count, an elapsed time and latency samples (may be empty).
    pub(crate) fn new(count: u64, elapsed: Duration, mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |p: f64| {
            (!samples.is_empty()).then(|| {
                let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
                samples[i.min(samples.len() - 1)].as_secs_f64() * 1e3
            })
        };
        let seconds = elapsed.as_secs_f64();
        Self {
            count,
            seconds,
            per_second: count as f64 / seconds.max(1e-9),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples.last().map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
pub(crate) fn progress(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>34} [{bar:30}] {pos:>7}/{len:7} {per_sec:>12} {elapsed:>4}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// `clients` concurrent loops share `total` operations; each operation is `op(n)` and counts
/// `weight` (events per request). Throughput and per-operation latency.
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    total: u64,
    weight: u64,
    bar: &ProgressBar,
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, next, bar) = (Arc::clone(&op), Arc::clone(&next), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(samples);
                }
                let t = Instant::now();
                op(n).await?;
                samples.push(t.elapsed());
                bar.inc(weight);
            }
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Figures::new(total * weight, elapsed, samples))
}

/// Starts `op(n, due)` at `rate` per second for `duration`, without waiting for earlier ones
/// (an open loop); each returns its latency, which it measures from `due`. The figures'
/// throughput is the offered rate that was achieved.
pub(crate) async fn open_loop<F, Fut>(
    rate: u32,
    duration: Duration,
    bar: &ProgressBar,
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(u64, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<Duration>> + Send + 'static,
{
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = started + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let task = op(n, due);
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let latency = task.await;
            bar.inc(1);
            latency
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await??);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Figures::new(total, elapsed, samples))
}
