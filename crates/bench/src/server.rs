//! The server under test: the real `switchyard serve` binary, as a child process on a
//! throwaway database, a JetStream stream and subject prefix of its own, so that its memory is
//! its own and nothing of the load generator is counted in it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// The admin token the bench gives the server.
pub(crate) const TOKEN: &str = "sy_bench_0123456789abcdef0123456789";

/// The event types the bench adds to the catalog: notes nobody consumes (the append and relay
/// paths), pings the bench's echo agent answers with pongs (the agent path).
pub(crate) const BENCH_TYPES: [(&str, &str); 3] = [
    (
        "bench.note.v1",
        "A note nobody consumes: the append and relay paths.",
    ),
    (
        "bench.ping.v1",
        "Answered by the bench's echo agent with a bench.pong.v1.",
    ),
    (
        "bench.pong.v1",
        "The echo agent's answer to a bench.ping.v1.",
    ),
];

/// Writes the bench's schemas into `dir` (a `SWITCHYARD_EVENTS_DIR`).
pub(crate) fn write_schemas(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (ty, description) in BENCH_TYPES {
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": ty,
            "description": description,
            "type": "object",
            "required": ["n"],
            "properties": {
                "n": {"type": "integer", "minimum": 0},
                "ping": {"type": "string"},
                "text": {"type": "string"}
            },
            "additionalProperties": false
        });
        std::fs::write(
            dir.join(format!("{ty}.json")),
            serde_json::to_vec_pretty(&schema)?,
        )?;
    }
    Ok(())
}

/// A running server; killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:port`.
    pub(crate) base: String,
}

/// Where the whole thing runs: database, NATS, names.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) database_url: String,
    pub(crate) nats_url: String,
    pub(crate) stream: String,
    pub(crate) prefix: String,
    pub(crate) events_dir: PathBuf,
}

impl Server {
    /// Starts `binary serve` on `setup` and waits for its address.
    pub(crate) async fn start(binary: &Path, setup: &Setup) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", &setup.database_url)
            .env("NATS_URL", &setup.nats_url)
            .env("SWITCHYARD_RELAY__STREAM", &setup.stream)
            .env("SWITCHYARD_RELAY__SUBJECT_PREFIX", &setup.prefix)
            .env("SWITCHYARD_EVENTS_DIR", &setup.events_dir)
            .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
            .env("SWITCHYARD_RETROSPECTIVES__SCHEDULE", "")
            .env("SWITCHYARD_OBS__DEBUG_FILTER", "warn")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the server did not announce its address within 120 s")??
            .context("the server exited before announcing its address")?;
        let Some(address) = line.strip_prefix("switchyard listening on ") else {
            bail!("unexpected first line from the server: {line:?}");
        };
        let base = address.to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, pid, base })
    }

    /// The server's resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM`).
    pub(crate) fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the server's /proc status")?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .with_context(|| format!("no {name} in /proc/{}/status", self.pid))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Stops the server.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An HTTP/1.1 client with a connection pool (one connection per concurrent request).
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    pub(crate) fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            base: base.to_owned(),
        }
    }

    /// Sends one request with the admin token; the status and body.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Full::new(body))?;
        let response = self.client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a request and insists on a 2xx.
    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(method, path, content_type, body).await?;
        if !(200..300).contains(&status) {
            bail!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}
