//! The fault-injection harness: real processes (a private PostgreSQL cluster, a nats-server of
//! its own, two `switchyard serve` instances), a steady mixed load, and faults injected while it
//! runs. Afterwards it checks that nothing was lost or duplicated, and prints a summary.
//!
//! The slow tier: ignored by the ordinary test run; `scripts/test` runs it with a short budget,
//! and the full run is
//!
//! ```sh
//! SWITCHYARD_FAULTS_SECS=150 SWITCHYARD_FAULTS_RATE=200 \
//!   cargo nextest run -p switchyard --test faults --run-ignored only --no-capture
//! ```
//!
//! Load, per second: `SWITCHYARD_FAULTS_RATE` CloudEvents (one in 25 a
//! `retrospective.trigger.v1` the retrospective agent answers, the others
//! `agent.memory.recorded.v1`), 1 proposal approved by a reviewer (the git agent commits it to a
//! local repository), 2 GitHub webhook deliveries, each sent twice. Every request is retried with
//! the same id until it gets a 2xx, as a client of an idempotent API would.
//!
//! Faults, spread over the run: 3 SIGKILLs of a Switchyard instance (restarted), 3 SIGKILLs of
//! nats-server (restarted on the same store), a SIGSTOP/SIGCONT of nats-server, the deletion
//! of the JetStream stream, and a crash of PostgreSQL (`pg_ctl stop -m immediate`, restarted).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchyard_testkit::{NatsCluster, NatsServer, PrivatePostgres, post_delivery};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

const TOKEN: &str = "sy_faults_0123456789abcdef0123456";
const SECRET: &str = "faults-webhook-secret";
const STREAM: &str = "FAULTS";
const PREFIX: &str = "flt";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The nats-server under test: one node, or a three-node JetStream cluster (R3 streams).
enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    fn url(&self) -> String {
        match self {
            Self::Single(n) => n.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    /// SIGKILL (node `node` of a cluster), then restart; `wipe` loses its store first.
    async fn kill_and_restart(&mut self, node: usize, wipe: bool) {
        match self {
            Self::Single(n) => {
                n.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                n.restart().await;
            }
            Self::Cluster(c) => {
                c.kill(node);
                tokio::time::sleep(Duration::from_millis(500)).await;
                c.restart(node, wipe).await;
            }
        }
    }

    fn pause(&self, node: usize) {
        match self {
            Self::Single(n) => n.pause(),
            Self::Cluster(c) => c.pause(node),
        }
    }

    fn resume(&self, node: usize) {
        match self {
            Self::Single(n) => n.resume(),
            Self::Cluster(c) => c.resume(node),
        }
    }
}

/// One `switchyard serve`.
struct Instance {
    child: Option<Child>,
    address: Arc<Mutex<String>>,
}

struct Cluster {
    db_url: String,
    nats_url: String,
    replicas: u8,
    repo: String,
    instances: Vec<Instance>,
}

impl Cluster {
    async fn spawn(&self) -> (Child, String) {
        self.spawn_on(STREAM, PREFIX).await
    }

    /// A `switchyard serve` on JetStream stream `stream`, subjects `prefix.>`.
    async fn spawn_on(&self, stream: &str, prefix: &str) -> (Child, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", &self.db_url)
            .env("NATS_URL", &self.nats_url)
            .env("SWITCHYARD_RELAY__STREAM", stream)
            .env("SWITCHYARD_RELAY__SUBJECT_PREFIX", prefix)
            .env("SWITCHYARD_RELAY__REPLICAS", self.replicas.to_string())
            .env("SWITCHYARD_RUNTIME__ACK_WAIT_SECS", "5")
            .env("SWITCHYARD_RUNTIME__BACKOFF_BASE_MS", "100")
            .env("SWITCHYARD_RUNTIME__BACKOFF_MAX_MS", "2000")
            // Faults make handlers fail for a while; give them room before a dead letter.
            .env("SWITCHYARD_RUNTIME__MAX_DELIVER", "50")
            .env("SWITCHYARD_RETROSPECTIVES__SCHEDULE", "")
            .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
            .env("SWITCHYARD_GITHUB_WEBHOOK_SECRET", SECRET)
            .env("SWITCHYARD_OBS__DEBUG_FILTER", "warn")
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_FAULTS_RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            // SWITCHYARD_FAULTS_LOGS=<dir>: each instance's log in a file there.
            .stderr(match std::env::var("SWITCHYARD_FAULTS_LOGS") {
                Ok(dir) => Stdio::from(
                    std::fs::File::create(
                        std::path::Path::new(&dir).join(switchyard_testkit::unique("instance-")),
                    )
                    .unwrap(),
                ),
                Err(_) => Stdio::null(),
            })
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("switchyard announces its address")
            .unwrap()
            .expect("switchyard printed its address");
        let address = line
            .strip_prefix("switchyard listening on http://")
            .unwrap()
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, address)
    }

    async fn start_instance(&mut self) {
        let (child, address) = self.spawn().await;
        self.instances.push(Instance {
            child: Some(child),
            address: Arc::new(Mutex::new(address)),
        });
    }

    /// SIGKILL instance `i`, then start it again (on a new port).
    async fn kill_and_restart(&mut self, i: usize) {
        if let Some(mut child) = self.instances[i].child.take() {
            child.kill().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (child, address) = self.spawn().await;
        self.instances[i].child = Some(child);
        *self.instances[i].address.lock().unwrap() = address;
    }

    fn addresses(&self) -> Vec<Arc<Mutex<String>>> {
        self.instances
            .iter()
            .map(|i| Arc::clone(&i.address))
            .collect()
    }
}

/// One HTTP/1.1 request; the status and the JSON body (`Null` when empty or not JSON).
async fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, Value)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    // The admin token, unless the request brings its own.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
    {
        head.push_str(&format!("Authorization: Bearer {TOKEN}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Sends until a 2xx (or one of `also_ok`), alternating instances; `None` after 120 s.
async fn until_ok(
    addresses: &[Arc<Mutex<String>>],
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    also_ok: &[u16],
    retries: &AtomicU64,
) -> Option<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        let address = addresses[attempt % addresses.len()].lock().unwrap().clone();
        attempt += 1;
        match request(&address, method, path, headers, body).await {
            Ok((status, body)) if (200..300).contains(&status) || also_ok.contains(&status) => {
                return Some((status, body));
            }
            _ => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    None
}

/// What the load got acknowledged.
#[derive(Default)]
struct Accepted {
    events: Vec<String>,
    triggers: Vec<String>,
    proposals: Vec<String>,
    approved: Vec<String>,
    deliveries: Vec<String>,
    requests: u64,
    unanswered: u64,
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}");
}

async fn count(db: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// A digest of every projection table, to compare with a fresh rebuild.
async fn projection_digest(db: &mut PgConnection) -> BTreeMap<String, String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables
         WHERE table_schema LIKE 'proj\\_%' AND table_schema NOT LIKE '%\\_\\_next'
           AND table_type = 'BASE TABLE' ORDER BY 1, 2",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let digest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {schema}.{table} t"
        ))
        .fetch_one(&mut *db)
        .await
        .unwrap();
        out.insert(format!("{schema}.{table}"), digest.unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test runs it with a budget (SWITCHYARD_FAULTS_SECS)"]
async fn nothing_is_lost_or_duplicated_under_faults() {
    let secs = env_u64("SWITCHYARD_FAULTS_SECS", 40);
    let clustered = std::env::var("SWITCHYARD_FAULTS_NATS").is_ok_and(|v| v == "cluster");
    let rate = env_u64("SWITCHYARD_FAULTS_RATE", 200);
    let started = Instant::now();

    let pg = PrivatePostgres::start().await;
    let db_url = pg.create_database("switchyard").await;
    let mut nats = if clustered {
        Nats::Cluster(NatsCluster::start().await)
    } else {
        Nats::Single(NatsServer::start().await)
    };
    let repo = std::env::temp_dir().join(switchyard_testkit::unique("sy-faults-repo-"));
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.join("README.md"), "# Faults\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "init"]);
    let mut cluster = Cluster {
        db_url: db_url.clone(),
        nats_url: nats.url(),
        replicas: if clustered { 3 } else { 1 },
        repo: repo.to_string_lossy().into_owned(),
        instances: Vec::new(),
    };
    cluster.start_instance().await;
    cluster.start_instance().await;
    let addresses = cluster.addresses();
    let json = ("Content-Type", "application/json");
    let retries = Arc::new(AtomicU64::new(0));

    // Workspaces: a local repository for events and proposals, a GitHub one for webhooks.
    let first = addresses[0].lock().unwrap().clone();
    for body in [
        json!({"id": "load", "name": "Load", "repository": {"kind": "local", "path": cluster.repo}}),
        json!({"id": "hub", "name": "Hub", "repository": {"kind": "github", "owner": "acme", "repo": "widgets"}}),
    ] {
        let (status, answer) =
            request(&first, "POST", "/v1/workspaces", &[json], &body.to_string())
                .await
                .unwrap();
        assert_eq!(status, 201, "{answer}");
    }
    let (status, made) = request(
        &first,
        "POST",
        "/v1/tokens",
        &[json],
        &json!({"name": "reviewer", "scope": "approve"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{made}");
    let reviewer = format!("Bearer {}", made["token"].as_str().unwrap());

    // The load.
    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let mut load = Vec::new();
    {
        // CloudEvents at `rate`/s, each in its own task (at most 256 in flight).
        let (addresses, accepted, retries) = (
            addresses.clone(),
            Arc::clone(&accepted),
            Arc::clone(&retries),
        );
        load.push(tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            let mut tasks = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                tick.tick().await;
                let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
                let (addresses, accepted, retries) =
                    (addresses.clone(), Arc::clone(&accepted), Arc::clone(&retries));
                i += 1;
                tasks.push(tokio::spawn(async move {
                    let id = format!("load-{i}");
                    let event = if i.is_multiple_of(25) {
                        json!({"specversion": "1.0", "id": id, "source": "/faults", "type": "retrospective.trigger.v1",
                               "subject": format!("retrospective/r{i}"),
                               "data": {"retrospective_id": format!("r{i}"), "reason": "manual", "requested_by": "faults"}})
                    } else {
                        json!({"specversion": "1.0", "id": id, "source": "/faults", "type": "agent.memory.recorded.v1",
                               "subject": format!("agent/load/memory/k{}", i % 500),
                               "data": {"agent": "load", "key": format!("k{}", i % 500), "value": i}})
                    };
                    let answered = until_ok(
                        &addresses,
                        "POST",
                        "/v1/workspaces/load/events",
                        &[("Content-Type", "application/cloudevents+json")],
                        &event.to_string(),
                        &[],
                        &retries,
                    )
                    .await;
                    let mut a = accepted.lock().unwrap();
                    a.requests += 1;
                    match answered {
                        Some(_) if i.is_multiple_of(25) => a.triggers.push(id),
                        Some(_) => a.events.push(id),
                        None => a.unanswered += 1,
                    }
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }));
    }
    {
        // A proposal a second, approved by the reviewer.
        let (addresses, accepted, retries, reviewer) = (
            addresses.clone(),
            Arc::clone(&accepted),
            Arc::clone(&retries),
            reviewer.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop_at {
                i += 1;
                let draft = json!({"title": format!("Note {i}"), "description": "Under load.",
                    "changes": [{"path": format!("notes/{i}.md"), "action": "create", "content": format!("note {i}\n")}]});
                // Not idempotent: one attempt; only a 201 counts.
                let address = addresses[i % addresses.len()].lock().unwrap().clone();
                let made = request(&address, "POST", "/v1/workspaces/load/proposals", &[("Content-Type", "application/json")], &draft.to_string()).await;
                accepted.lock().unwrap().requests += 1;
                let Ok((201, made)) = made else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let id = made["id"].as_str().unwrap().to_owned();
                accepted.lock().unwrap().proposals.push(id.clone());
                let approve = json!({"content_hash": made["content_hash"]}).to_string();
                // A retry after a lost answer finds it decided: 409 means the first one won.
                let answered = until_ok(
                    &addresses,
                    "POST",
                    &format!("/v1/workspaces/load/proposals/{id}/approve"),
                    &[("Content-Type", "application/json"), ("Authorization", reviewer.as_str())],
                    &approve,
                    &[409],
                    &retries,
                )
                .await;
                {
                    let mut a = accepted.lock().unwrap();
                    a.requests += 1;
                    if answered.is_some() {
                        a.approved.push(id);
                    } else {
                        a.unanswered += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }));
    }
    {
        // Two webhook deliveries a second, each delivered twice.
        let (addresses, accepted, retries) = (
            addresses.clone(),
            Arc::clone(&accepted),
            Arc::clone(&retries),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop_at {
                i += 1;
                let guid = format!("00000000-0000-4000-8000-{i:012}");
                let payload = json!({"action": "opened", "number": i,
                    "pull_request": {"number": i, "title": format!("PR {i}"), "state": "open", "merged": false,
                        "head": {"ref": format!("feature/{i}"), "sha": "0123456789abcdef0123456789abcdef01234567"},
                        "base": {"ref": "main"}, "html_url": format!("https://github.com/acme/widgets/pull/{i}"),
                        "user": {"login": "octocat"}},
                    "repository": {"full_name": "acme/widgets", "name": "widgets", "owner": {"login": "acme"}},
                    "sender": {"login": "octocat"}});
                let bytes = serde_json::to_vec(&payload).unwrap();
                let mut delivered = false;
                for _copy in 0..2 {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let address = addresses[(i as usize) % addresses.len()].lock().unwrap().clone();
                        let url = format!("http://{address}/v1/github/webhook");
                        let status = post_delivery(&url, SECRET, "pull_request", &guid, &bytes).await;
                        accepted.lock().unwrap().requests += 1;
                        if (200..300).contains(&status) {
                            delivered = true;
                            break;
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        if Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                if delivered {
                    accepted.lock().unwrap().deliveries.push(guid);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }

    // The faults, spread over the run.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        KillSwitchyard(usize),
        KillNats(usize),
        StopNats(usize),
        DeleteStream,
        CrashPostgres,
        /// A cluster node killed, its store directory removed, and restarted.
        LoseNodeStore(usize),
    }
    let mut plan = vec![
        Fault::KillSwitchyard(0),
        Fault::KillNats(0),
        Fault::StopNats(1),
        Fault::KillSwitchyard(1),
        Fault::DeleteStream,
        Fault::KillNats(1),
        Fault::CrashPostgres,
        Fault::KillSwitchyard(0),
        Fault::KillNats(2),
    ];
    if clustered {
        plan.push(Fault::LoseNodeStore(0));
    }
    let gap = Duration::from_secs(secs) / (u32::try_from(plan.len()).unwrap() + 1);
    let mut injected: BTreeMap<&str, u32> = BTreeMap::new();
    for fault in plan {
        tokio::time::sleep(gap).await;
        let name = match fault {
            Fault::KillSwitchyard(i) => {
                cluster.kill_and_restart(i).await;
                "SIGKILL + restart of a Switchyard instance"
            }
            Fault::KillNats(node) => {
                nats.kill_and_restart(node, false).await;
                "SIGKILL + restart of nats-server (a node)"
            }
            Fault::StopNats(node) => {
                nats.pause(node);
                tokio::time::sleep(Duration::from_secs(3)).await;
                nats.resume(node);
                "SIGSTOP 3 s + SIGCONT of nats-server (a node)"
            }
            Fault::LoseNodeStore(node) => {
                nats.kill_and_restart(node, true).await;
                "loss of a cluster node's store directory (killed, wiped, restarted)"
            }
            Fault::DeleteStream => {
                let urls: Vec<String> = nats.url().split(',').map(str::to_owned).collect();
                let client = async_nats::connect(urls).await.unwrap();
                async_nats::jetstream::new(client)
                    .delete_stream(STREAM)
                    .await
                    .unwrap();
                "deletion of the JetStream stream"
            }
            Fault::CrashPostgres => {
                pg.crash_and_restart().await;
                "crash (immediate stop) + restart of PostgreSQL"
            }
        };
        eprintln!("faults: {:>5.1} s  {name}", started.elapsed().as_secs_f64());
        *injected.entry(name).or_default() += 1;
    }
    for task in load {
        task.await.unwrap();
    }
    let load_secs = started.elapsed().as_secs_f64();

    // Let the system settle: every trigger answered, every approval committed.
    let accepted = Arc::try_unwrap(accepted)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let mut db = PgConnection::connect(&db_url).await.unwrap();
    // Settled: the effects are all there, no agent has an event of its types unhandled, and
    // the store has not grown for 3 s.
    let unhandled_sql = "SELECT count(*) FROM events e
         JOIN proj_agent_state.agents a ON a.subscribes ? e.type
         WHERE e.workspace IN ('load', 'hub')
           AND NOT EXISTS (SELECT 1 FROM agent_handled h WHERE h.agent = a.name AND h.event_position = e.position)";
    let settle_started = Instant::now();
    let settle = settle_started + Duration::from_secs(300);
    let (mut last_total, mut quiet) = (0, 0);
    loop {
        let completed = count(&mut db, "SELECT count(DISTINCT causation_id) FROM events WHERE type = 'retrospective.completed.v1'").await;
        let committed = count(&mut db, "SELECT count(DISTINCT data->>'proposal_id') FROM events WHERE type IN ('git.commit.v1', 'git.commit_failed.v1')").await;
        let github = count(&mut db, "SELECT count(*) FROM agent_handled h JOIN events e ON e.position = h.event_position WHERE h.agent = 'github' AND e.type = 'github.pull_request.v1'").await;
        let unhandled = count(&mut db, unhandled_sql).await;
        let total = count(&mut db, "SELECT count(*) FROM events").await;
        quiet = if total == last_total { quiet + 1 } else { 0 };
        last_total = total;
        if completed as usize >= accepted.triggers.len()
            && committed as usize >= accepted.approved.len()
            && github as usize >= accepted.deliveries.len()
            && unhandled == 0
            && quiet >= 6
        {
            break;
        }
        assert!(
            Instant::now() < settle,
            "never settled: {completed}/{} retrospectives, {committed}/{} commits, {github}/{} deliveries handled, {unhandled} events unhandled",
            accepted.triggers.len(),
            accepted.approved.len(),
            accepted.deliveries.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_secs = settle_started.elapsed().as_secs_f64();
    // Give redeliveries a moment to show any duplicate.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. Every acknowledged request is stored exactly once.
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, count(*) FROM events WHERE workspace = 'load' AND source = '/faults' GROUP BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let stored: BTreeMap<String, i64> = stored.into_iter().collect();
    let mut lost = 0usize;
    let mut duplicated = 0usize;
    let mut lost_ids = Vec::new();
    for id in accepted.events.iter().chain(&accepted.triggers) {
        match stored.get(id) {
            None => {
                lost += 1;
                lost_ids.push(id.clone());
            }
            Some(n) if *n > 1 => duplicated += 1,
            Some(_) => {}
        }
    }
    for id in &accepted.proposals {
        let n = count(&mut db, &format!("SELECT count(*) FROM events WHERE type = 'proposal.created.v1' AND data->>'proposal_id' = '{id}'")).await;
        lost += usize::from(n == 0);
        duplicated += usize::from(n > 1);
    }
    for guid in &accepted.deliveries {
        let n = count(
            &mut db,
            &format!("SELECT count(*) FROM events WHERE workspace = 'hub' AND id = '{guid}'"),
        )
        .await;
        lost += usize::from(n == 0);
        duplicated += usize::from(n > 1);
    }
    // 2. Every agent handled every event of its types (one handled record each: the primary
    //    key), and its effects happened once.
    let unhandled = count(&mut db, unhandled_sql).await;
    let twice = count(
        &mut db,
        "SELECT count(*) FROM (
             SELECT causation_id FROM events WHERE type = 'retrospective.completed.v1' GROUP BY 1 HAVING count(*) > 1
             UNION ALL
             SELECT data->>'proposal_id' FROM events WHERE type = 'git.commit.v1' GROUP BY 1 HAVING count(*) > 1) d",
    )
    .await;
    let failed_commits = count(
        &mut db,
        "SELECT count(*) FROM events WHERE type = 'git.commit_failed.v1'",
    )
    .await;
    let dead = count(&mut db, "SELECT count(*) FROM dead_letters").await;
    let events = count(&mut db, "SELECT count(*) FROM events").await;

    // 3. Every projection equals a fresh rebuild (once it has caught up).
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let address = addresses[0].lock().unwrap().clone();
        let (_, status) = request(&address, "GET", "/v1/ops/status", &[], "")
            .await
            .unwrap();
        let behind = status["projections"]
            .as_array()
            .map_or(1, |p| p.iter().filter(|p| p["lag_events"] != 0).count());
        if behind == 0 {
            break;
        }
        assert!(
            Instant::now() < settle,
            "projections never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for instance in &mut cluster.instances {
        if let Some(mut child) = instance.child.take() {
            child.kill().await.unwrap();
        }
    }
    let live = projection_digest(&mut db).await;
    let names: Vec<String> = live
        .keys()
        .filter_map(|t| {
            t.strip_prefix("proj_")?
                .split('.')
                .next()
                .map(str::to_owned)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in &names {
        let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["projections", "rebuild", name])
            .env("DATABASE_URL", &db_url)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "rebuild {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rebuilt = projection_digest(&mut db).await;
    let differing: Vec<&String> = live
        .iter()
        .filter(|(t, d)| rebuilt.get(*t) != Some(d))
        .map(|(t, _)| t)
        .collect();

    let faults: u32 = injected.values().sum();
    println!(
        "\nfault-injection run ({secs} s of load, faults over {:.0} s, settled {:.0} s later; nats: {})\n",
        load_secs,
        settle_secs,
        if clustered {
            "3-node cluster, R3 stream"
        } else {
            "one node"
        }
    );
    println!("| load | value |\n| --- | --- |");
    println!("| CloudEvents offered | {rate}/s for {secs} s |");
    println!(
        "| CloudEvents acknowledged | {} (of which {} retrospective triggers) |",
        accepted.events.len() + accepted.triggers.len(),
        accepted.triggers.len()
    );
    println!(
        "| proposals created / approved | {} / {} |",
        accepted.proposals.len(),
        accepted.approved.len()
    );
    println!(
        "| webhook deliveries (each sent twice) | {} |",
        accepted.deliveries.len()
    );
    println!(
        "| requests, retries, never answered | {}, {}, {} |",
        accepted.requests,
        retries.load(Ordering::Relaxed),
        accepted.unanswered
    );
    println!("| events in the store | {events} |");
    println!("\n| fault | count |\n| --- | --- |");
    for (name, n) in &injected {
        println!("| {name} | {n} |");
    }
    println!("\n| check | result |\n| --- | --- |");
    println!("| acknowledged but not stored (lost) | {lost} |");
    println!("| stored more than once (duplicated) | {duplicated} |");
    println!("| events of an agent's types it never handled | {unhandled} |");
    println!("| effects applied twice (retrospectives, commits) | {twice} |");
    println!("| failed commits | {failed_commits} |");
    println!("| dead letters | {dead} |");
    println!(
        "| projections differing from a rebuild | {} of {} tables |",
        differing.len(),
        live.len()
    );
    println!("| faults injected | {faults} |\n");

    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "nothing lost, nothing duplicated (CloudEvents lost: {lost_ids:?})"
    );
    assert_eq!(unhandled, 0, "every agent handled every event of its types");
    assert_eq!(twice, 0, "no effect twice");
    assert_eq!(dead, 0, "the faults alone caused no dead letter");
    assert_eq!(failed_commits, 0, "every approved proposal was committed");
    assert!(
        differing.is_empty(),
        "projections differ from a rebuild: {differing:?}"
    );
    assert_eq!(
        accepted.unanswered, 0,
        "every request was answered in the end"
    );
    drop(db);
    drop(nats);
    let _ = std::fs::remove_dir_all(&repo);
}

/// Events an instance's agent handled, from its `/metrics`
/// (`switchyard_agent_events_total{agent, outcome="handled"}`, all event types).
async fn handled_by(address: &str, agent: &str) -> u64 {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return 0;
    };
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .lines()
        .filter(|l| {
            l.contains("agent_events_total{")
                && l.contains(&format!("agent=\"{agent}\""))
                && l.contains("outcome=\"handled\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Scale-out on the three-node JetStream cluster (R3 stream): the same burst of webhook
/// deliveries with 1, 2 and 3 Switchyard instances behind the load; prints deliveries per
/// second from the first POST to the last `github.pull_request.v1` handled by the github
/// agent. Run with
///
/// ```sh
/// cargo nextest run -p switchyard --test faults --run-ignored only --no-capture scale_out
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: docs/benchmarks.md has the command"]
async fn scale_out() {
    let deliveries = env_u64("SWITCHYARD_SCALE_DELIVERIES", 3000);
    let pg = PrivatePostgres::start().await;
    let nats = NatsCluster::start().await;
    let mut rows = Vec::new();
    let rounds = env_u64("SWITCHYARD_SCALE_FROM", 1) as usize..=3usize;
    for n in rounds {
        let db_url = pg.create_database(&format!("scale{n}")).await;
        let mut cluster = Cluster {
            db_url: db_url.clone(),
            // The cluster, or another server to compare with (a standalone one, say).
            nats_url: std::env::var("SWITCHYARD_SCALE_NATS_URL").unwrap_or_else(|_| nats.url()),
            replicas: u8::try_from(env_u64("SWITCHYARD_SCALE_REPLICAS", 3)).unwrap_or(3),
            repo: String::new(),
            instances: Vec::new(),
        };
        // A stream of its own per round.
        let stream = format!("SCALE{n}");
        let prefix = format!("sc{n}");
        for _ in 0..n {
            let (child, address) = cluster.spawn_on(&stream, &prefix).await;
            cluster.instances.push(Instance {
                child: Some(child),
                address: Arc::new(Mutex::new(address)),
            });
        }
        let addresses = cluster.addresses();
        let first = addresses[0].lock().unwrap().clone();
        let body = json!({"id": "hub", "name": "Hub", "repository": {"kind": "github", "owner": "acme", "repo": "widgets"}});
        let (status, _) = request(
            &first,
            "POST",
            "/v1/workspaces",
            &[("Content-Type", "application/json")],
            &body.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(status, 201);
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for _ in 0..32 {
            let (addresses, next) = (addresses.clone(), Arc::clone(&next));
            senders.push(tokio::spawn(async move {
                loop {
                    // Pull requests are numbered from 1 (0 does not fit the schema, and the
                    // webhook records such a delivery as ignored).
                    let i = next.fetch_add(1, Ordering::Relaxed) + 1;
                    if i > deliveries {
                        return;
                    }
                    let payload = json!({"action": "opened", "number": i,
                        "pull_request": {"number": i, "title": "PR", "state": "open", "merged": false,
                            "head": {"ref": format!("feature/{i}"), "sha": "0123456789abcdef0123456789abcdef01234567"},
                            "base": {"ref": "main"}, "html_url": "https://github.com/acme/widgets/pull/1", "user": {"login": "octocat"}},
                        "repository": {"full_name": "acme/widgets", "name": "widgets", "owner": {"login": "acme"}},
                        "sender": {"login": "octocat"}});
                    let bytes = serde_json::to_vec(&payload).unwrap();
                    let address = addresses[(i as usize) % addresses.len()].lock().unwrap().clone();
                    let url = format!("http://{address}/v1/github/webhook");
                    let guid = format!("00000000-0000-4000-8000-{i:012}");
                    assert_eq!(post_delivery(&url, SECRET, "pull_request", &guid, &bytes).await, 202);
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let posted = started.elapsed().as_secs_f64();
        let mut db = PgConnection::connect(&db_url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let handled = count(&mut db, "SELECT count(*) FROM agent_handled h JOIN events e ON e.position = h.event_position WHERE h.agent = 'github' AND e.type = 'github.pull_request.v1'").await;
            if handled as u64 >= deliveries {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {handled} of {deliveries} handled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let total = started.elapsed().as_secs_f64();
        // Each instance's share of the github agent's work, from its own /metrics.
        let mut shares = Vec::new();
        for address in &addresses {
            let address = address.lock().unwrap().clone();
            shares.push(handled_by(&address, "github").await);
        }
        let shares = shares
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" / ");
        rows.push((n, posted, total, deliveries as f64 / total, shares));
        for instance in &mut cluster.instances {
            if let Some(mut child) = instance.child.take() {
                child.kill().await.unwrap();
            }
        }
    }
    println!(
        "\nscale-out: {deliveries} webhook deliveries, 32 concurrent senders, 3-node JetStream cluster (R3)\n"
    );
    println!(
        "| instances | all accepted after | all handled after | deliveries handled/s | handled per instance |\n| --- | --- | --- | --- | --- |"
    );
    for (n, posted, total, rate, shares) in rows {
        println!("| {n} | {posted:.1} s | {total:.1} s | {rate:.0} | {shares} |");
    }
}
