//! End-to-end: the real `switchyard` binary against a real PostgreSQL (a fresh database per
//! test) and the real nats-server, driven over HTTP on a loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchyard_testkit::TempDatabase;

mod dashboard;
mod external;
mod github;
mod observability;
mod retrospectives;
mod workflows;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

const TOKEN: &str = "sy_e2e_0123456789abcdef0123456789";

/// A running `switchyard serve` on its own database, JetStream stream and subject prefix;
/// killed on drop.
pub(crate) struct Server {
    child: Child,
    address: String,
    /// The database this server created (a second instance on it has none).
    database: Option<TempDatabase>,
    url: String,
    nats: String,
    stream: String,
    prefix: String,
    /// Extra environment of every (re)start.
    env: Vec<(String, String)>,
}

impl Server {
    async fn start() -> Self {
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        Self::start_on(&nats).await
    }

    async fn start_on(nats: &str) -> Self {
        Self::start_with(nats, Vec::new()).await
    }

    /// A server whose every (re)start has `env` too.
    async fn start_with(nats: &str, env: Vec<(String, String)>) -> Self {
        let nats = nats.to_owned();
        let database = TempDatabase::create("sy_e2e").await;
        let url = database.url().to_owned();
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let (stream, prefix) = (format!("E2E{tag}"), format!("e{tag}"));
        let (child, address) = spawn_env(&url, &nats, &stream, &prefix, &env).await;
        Self {
            child,
            address,
            database: Some(database),
            url,
            nats,
            stream,
            prefix,
            env,
        }
    }

    /// Another instance on the same database, NATS and stream.
    async fn twin(&self) -> Self {
        let (child, address) =
            spawn_env(&self.url, &self.nats, &self.stream, &self.prefix, &self.env).await;
        Self {
            child,
            address,
            database: None,
            url: self.url.clone(),
            nats: self.nats.clone(),
            stream: self.stream.clone(),
            prefix: self.prefix.clone(),
            env: self.env.clone(),
        }
    }

    /// `Authorization` of a new approve-scoped token for every workspace, named `reviewer`:
    /// the author of a proposal (here the admin token) may not approve it too.
    pub(crate) async fn reviewer(&self) -> String {
        let (status, made) = self
            .request(
                "POST",
                "/v1/tokens",
                &[AUTH, ("Content-Type", "application/json")],
                &json!({"name": "reviewer", "scope": "approve"}).to_string(),
            )
            .await;
        assert_eq!(status, 201, "{made}");
        format!("Bearer {}", made["token"].as_str().unwrap())
    }

    /// Creates workspace `id` (201 expected).
    async fn create_workspace(&self, id: &str) {
        self.create_workspace_with(id, json!({"kind": "local", "path": format!("/tmp/{id}")}))
            .await;
    }

    /// Creates workspace `id` bound to `repository` (201 expected).
    async fn create_workspace_with(&self, id: &str, repository: Value) {
        let body = json!({"id": id, "name": id, "repository": repository});
        let (status, body) = self
            .request(
                "POST",
                "/v1/workspaces",
                &[AUTH, ("Content-Type", "application/json")],
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// SIGKILL, then start again on the same database and stream (on a new port).
    async fn kill_and_restart(&mut self) {
        self.child.kill().await.unwrap();
        self.respawn().await;
    }

    /// Starts the server again (after it exited) on the same database, stream and
    /// environment, on a new port.
    async fn respawn(&mut self) {
        let (child, address) =
            spawn_env(&self.url, &self.nats, &self.stream, &self.prefix, &self.env).await;
        self.child = child;
        self.address = address;
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Polls a proposal until the git agent decided it (`committed` or `failed`), up to 20 s;
    /// returns it as last seen.
    async fn wait_for_commit_outcome(&self, workspace: &str, id: &str) -> Value {
        let mut shown = Value::Null;
        for _ in 0..200 {
            shown = self
                .request(
                    "GET",
                    &format!("/v1/workspaces/{workspace}/proposals/{id}"),
                    &[AUTH],
                    "",
                )
                .await
                .1;
            if shown["status"] == "committed" || shown["status"] == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shown
    }

    /// How many `agent.registered.v1` the built-in agents appended.
    async fn registrations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'agent.registered.v1'")
            .fetch_one(&mut self.db().await)
            .await
            .unwrap()
    }

    async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, Value)> {
        let mut stream = TcpStream::connect(&self.address).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("the connection closed mid-response"))?;
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap()
        };
        Ok((status, json))
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
        let client = async_nats::connect(&self.nats).await.unwrap();
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&self.stream)
            .await;
        if let Some(database) = self.database.take() {
            database.drop_now().await;
        }
    }
}

/// Starts `switchyard serve` on a free port with `env` too; returns it with its address. Its output is
/// drained in the background so that it never blocks on a full pipe.
async fn spawn_env(
    url: &str,
    nats: &str,
    stream: &str,
    prefix: &str,
    env: &[(String, String)],
) -> (Child, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_with(url, nats, stream, prefix, &env, "127.0.0.1:0").await
}

async fn spawn_with(
    url: &str,
    nats: &str,
    stream: &str,
    prefix: &str,
    extra_env: &[(&str, &str)],
    listen: &str,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        // A restart after a kill turns debug mode on: keep the tests' logs quiet anyway.
        .env("SWITCHYARD_OBS__DEBUG_FILTER", "warn")
        // No scheduled retrospective in the middle of a test, unless it asks for one.
        .env("SWITCHYARD_RETROSPECTIVES__SCHEDULE", "")
        .envs(extra_env.iter().copied())
        .args(["serve", "--listen", listen])
        .env("DATABASE_URL", url)
        .env("NATS_URL", nats)
        .env("SWITCHYARD_RELAY__STREAM", stream)
        .env("SWITCHYARD_RELAY__SUBJECT_PREFIX", prefix)
        .env("SWITCHYARD_RUNTIME__BACKOFF_BASE_MS", "20")
        .env("SWITCHYARD_RUNTIME__ACK_WAIT_SECS", "2")
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the server announces its address within 60 s")
        .unwrap()
        .expect("the server printed its address");
    let address = line
        .strip_prefix("switchyard listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// How many of the store's events the `agent_state` projection reads: its types, and every
/// event of an agent (`/agents/…`).
async fn agent_state_reads(db: &mut PgConnection) -> i64 {
    use switchyard_projections::Projection as _;
    let projection = switchyard_projections::AgentState;
    let types: Vec<&str> = projection.types().unwrap_or_default().to_vec();
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE type = ANY($1) OR starts_with(source, $2)",
    )
    .bind(types)
    .bind(projection.or_source_prefix().unwrap_or_default())
    .fetch_one(db)
    .await
    .unwrap()
}

const AUTH: (&str, &str) = ("Authorization", "Bearer sy_e2e_0123456789abcdef0123456789");

#[tokio::test]
async fn a_cloudevent_posted_over_http_is_stored_and_read_back() {
    let server = Server::start().await;

    let (status, _) = server.request("GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let mut ready = (0, Value::Null);
    for _ in 0..50 {
        ready = server.request("GET", "/readyz", &[], "").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(ready.1, json!({"postgres": "ok", "nats": "ok"}));

    let workspace =
        r#"{"id":"demo","name":"Demo","repository":{"kind":"local","path":"/tmp/demo"}}"#;
    let json_type = ("Content-Type", "application/json");
    let (status, body) = server
        .request("POST", "/v1/workspaces", &[json_type], workspace)
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
    let (status, body) = server
        .request("POST", "/v1/workspaces", &[AUTH, json_type], workspace)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "Demo");

    // Structured mode.
    let event = json!({
        "specversion": "1.0", "id": "e2e-1", "source": "/cli/demo",
        "type": "agent.memory.recorded.v1", "subject": "agent/demo",
        "data": {"agent": "demo", "key": "greeting", "value": "hello"}
    })
    .to_string();
    let structured = ("Content-Type", "application/cloudevents+json");
    let (status, first) = server
        .request(
            "POST",
            "/v1/workspaces/demo/events",
            &[AUTH, structured],
            &event,
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["stream_version"], 1);
    assert!(first["sequence"].as_i64().unwrap() > 0);

    // The same event again: 200, the original position, nothing appended.
    let (status, again) = server
        .request(
            "POST",
            "/v1/workspaces/demo/events",
            &[AUTH, structured],
            &event,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["sequence"], first["sequence"]);
    assert_eq!(again["duplicate"], true);

    // Binary mode, expecting the stream at version 1.
    let binary = [
        AUTH,
        ("Content-Type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "e2e-2"),
        ("ce-source", "/cli/demo"),
        ("ce-type", "agent.memory.recorded.v1"),
        ("ce-subject", "agent/demo"),
        ("ce-expectedversion", "1"),
    ];
    let data = r#"{"agent":"demo","key":"mood","value":"curious"}"#;
    let (status, second) = server
        .request("POST", "/v1/workspaces/demo/events", &binary, data)
        .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["stream_version"], 2);
    // The same expectation again is now a conflict.
    let mut stale = binary;
    stale[3] = ("ce-id", "e2e-3");
    let (status, conflict) = server
        .request("POST", "/v1/workspaces/demo/events", &stale, data)
        .await;
    assert_eq!(status, 409, "{conflict}");

    // Read back in order (the workspace's own creation event first).
    let mut events = Vec::new();
    for _ in 0..100 {
        let (status, page) = server
            .request("GET", "/v1/workspaces/demo/events", &[AUTH], "")
            .await;
        assert_eq!(status, 200);
        events = page["events"].as_array().unwrap().clone();
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{events:?}");
    assert_eq!(&ids[1..], ["e2e-1", "e2e-2"]);
    assert_eq!(events[1]["sequence"], first["sequence"]);
    assert_eq!(events[2]["data"]["value"], "curious");
    assert_eq!(events[2]["workspace"], "demo");
    assert_eq!(events[0]["type"], "workspace.created.v1");

    // The machinery behind: the relay published every event (the three above and the built-in
    // agents' registrations), the projections follow.
    let registrations = server.registrations().await;
    assert!(registrations >= 2, "the built-in agents registered");
    let expected = 3 + registrations;
    let mut status = Value::Null;
    for _ in 0..100 {
        let (code, body) = server.request("GET", "/v1/ops/status", &[AUTH], "").await;
        assert_eq!(code, 200, "{body}");
        status = body;
        if status["relay"]["status"]["relayed"] == expected
            && status["projections"][0]["applied"] == expected - 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["store"]["events"], expected, "{status}");
    assert_eq!(status["relay"]["status"]["relayed"], expected, "{status}");
    assert_eq!(status["relay"]["active_here"], true);
    assert_eq!(status["projections"][0]["name"], "agent_state");
    // agent_state reads its types and the agents' events: all but the workspace's creation.
    let reads = agent_state_reads(&mut server.db().await).await;
    assert_eq!(reads, expected - 1);
    assert_eq!(status["projections"][0]["applied"], reads, "{status}");
    assert_eq!(status["projections"][0]["lag_events"], 0, "{status}");
    let client = async_nats::connect(&server.nats).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&server.stream)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages as i64, expected);

    let (code, body) = server
        .request("GET", "/v1/ops/dead-letters", &[AUTH], "")
        .await;
    assert_eq!((code, body), (200, json!({"dead_letters": []})));
    let (code, _) = server
        .request(
            "POST",
            "/v1/ops/dead-letters/01890000-0000-7000-8000-000000000000/retry",
            &[AUTH],
            "",
        )
        .await;
    assert_eq!(code, 404);

    server.stop().await;
}

/// The server runs as a child process with the retrospective agent handling a steady stream of
/// triggers; it is SIGKILLed at random moments, several times, and restarted. Afterwards every
/// trigger that got a 2xx is stored once, was handled exactly once (one handled record, one
/// `retrospective.completed.v1` caused by it), and the projection equals a fresh rebuild.
#[tokio::test]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let mut server = Server::start().await;
    server.create_workspace("crash").await;

    const TRIGGERS: usize = 120;
    let structured = ("Content-Type", "application/cloudevents+json");
    let mut accepted = Vec::new();
    let mut kills = 0;
    for i in 0..TRIGGERS {
        let id = format!("trigger-{i}");
        let event = json!({
            "specversion": "1.0", "id": id, "source": "/tests/crash",
            "type": "retrospective.trigger.v1", "subject": format!("retrospective/r{i}"),
            "data": {"retrospective_id": format!("r{i}"), "reason": "manual", "requested_by": "crash-test"}
        })
        .to_string();
        // A client retries until it gets an answer: the same id makes retries idempotent.
        loop {
            match server
                .try_request(
                    "POST",
                    "/v1/workspaces/crash/events",
                    &[AUTH, structured],
                    &event,
                )
                .await
            {
                Ok((200 | 201, _)) => break,
                Ok((status, body)) => panic!("unexpected {status}: {body}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        accepted.push(id);
        if i % 30 == 29 {
            // Let the agent get busy, then kill at a random moment of its work.
            let pause = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 150;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            server.kill_and_restart().await;
            kills += 1;
        }
    }
    assert_eq!(kills, 4);

    // Wait until every trigger was handled.
    let mut db = server.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE type = 'retrospective.completed.v1'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if completed as usize >= TRIGGERS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {completed} of {TRIGGERS} triggers handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give redeliveries a moment to show any duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, count(*) FROM events WHERE type = 'retrospective.trigger.v1' GROUP BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        stored.len(),
        accepted.len(),
        "every accepted trigger is stored"
    );
    assert!(stored.iter().all(|(_, n)| *n == 1), "none stored twice");
    let handled: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT t.position, (SELECT count(*) FROM events c
                             WHERE c.type = 'retrospective.completed.v1' AND c.causation_id = t.id)
         FROM events t WHERE t.type = 'retrospective.trigger.v1'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(handled.len(), TRIGGERS);
    for (position, completions) in &handled {
        assert_eq!(
            *completions, 1,
            "trigger at {position} was handled {completions} times"
        );
    }
    let records: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agent_handled WHERE agent = 'retrospective'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(records as usize, TRIGGERS);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(dead, 0, "the kills alone caused no dead letter");

    // The projection equals a fresh rebuild.
    let expected_events = agent_state_reads(&mut db).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = server.request("GET", "/v1/ops/status", &[AUTH], "").await;
        if status["projections"][0]["lag_events"] == 0 {
            let emitted: Option<i64> = sqlx::query_scalar(
                "SELECT emitted FROM proj_agent_state.activity WHERE workspace = 'crash' AND agent = 'retrospective'",
            )
            .fetch_optional(&mut db)
            .await
            .unwrap();
            // Each retrospective: its completion and a version of retrospective.md.
            if emitted == Some(2 * TRIGGERS as i64) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projection never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.child.kill().await.unwrap();
    let live = activity(&mut db).await;
    let rebuilt = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["projections", "rebuild", "agent_state"])
        .env("DATABASE_URL", &server.url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let said = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(
        said.contains(&format!("{expected_events} events")),
        "{said}"
    );
    drop(db);
    let mut db = server.db().await;
    assert_eq!(
        activity(&mut db).await,
        live,
        "the live projection equals a fresh rebuild"
    );
    drop(db);
    server.stop().await;
}

async fn activity(db: &mut PgConnection) -> Vec<(String, String, i64, i64)> {
    sqlx::query_as(
        "SELECT workspace, agent, emitted, failed FROM proj_agent_state.activity ORDER BY 1, 2",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// With nats-server dead, the API still accepts events (it needs PostgreSQL only) and reports
/// NATS as not ready; once NATS is back, everything accepted meanwhile is relayed.
#[tokio::test]
async fn the_api_accepts_events_while_nats_is_down() {
    let mut nats = switchyard_testkit::NatsServer::start().await;
    let server = Server::start_on(&nats.url()).await;
    server.create_workspace("calm").await;

    nats.kill();
    let structured = ("Content-Type", "application/cloudevents+json");
    for i in 0..20 {
        let event = json!({
            "specversion": "1.0", "id": format!("calm-{i}"), "source": "/tests", "subject": "agent/calm",
            "type": "agent.memory.recorded.v1", "data": {"agent": "calm", "key": format!("k{i}"), "value": i}
        })
        .to_string();
        let (status, body) = server
            .request(
                "POST",
                "/v1/workspaces/calm/events",
                &[AUTH, structured],
                &event,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut ready = (0, Value::Null);
    for _ in 0..50 {
        ready = server.request("GET", "/readyz", &[], "").await;
        if ready.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(ready.1["postgres"], "ok");

    nats.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = server.request("GET", "/v1/ops/status", &[AUTH], "").await;
        if status["relay"]["status"]["relayed"] == status["store"]["events"]
            && status["relay"]["status"]["lag_events"] == 0
        {
            let expected = 21 + server.registrations().await;
            assert_eq!(
                status["store"]["events"], expected,
                "workspace + agent registrations + 20"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never relayed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// Two instances on the same PostgreSQL and NATS: one relay is active, and every trigger posted
/// to either is handled exactly once.
#[tokio::test]
async fn two_instances_relay_once_and_handle_once() {
    let first = Server::start().await;
    let second = first.twin().await;
    first.create_workspace("twins").await;
    let structured = ("Content-Type", "application/cloudevents+json");
    for i in 0..100 {
        let event = json!({
            "specversion": "1.0", "id": format!("twin-{i}"), "source": "/tests", "subject": format!("retrospective/t{i}"),
            "type": "retrospective.trigger.v1",
            "data": {"retrospective_id": format!("t{i}"), "reason": "manual", "requested_by": "twins"}
        })
        .to_string();
        let server = if i % 2 == 0 { &first } else { &second };
        let (status, body) = server
            .request(
                "POST",
                "/v1/workspaces/twins/events",
                &[AUTH, structured],
                &event,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut db = first.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE type = 'retrospective.completed.v1'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if completed >= 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {completed} handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_trigger: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events c WHERE c.type = 'retrospective.completed.v1' AND c.causation_id = t.id)
         FROM events t WHERE t.type = 'retrospective.trigger.v1'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(per_trigger.len(), 100);
    assert!(
        per_trigger.iter().all(|n| *n == 1),
        "each trigger handled exactly once"
    );
    let (_, a) = first.request("GET", "/v1/ops/status", &[AUTH], "").await;
    let (_, b) = second.request("GET", "/v1/ops/status", &[AUTH], "").await;
    let active = [&a, &b]
        .iter()
        .filter(|s| s["relay"]["active_here"] == true)
        .count();
    assert_eq!(active, 1, "exactly one active relay: {a} {b}");
    let client = async_nats::connect(&first.nats).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&first.stream)
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (stream.info().await.unwrap().state.messages as i64) < stored {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream.info().await.unwrap().state.messages as i64,
        stored,
        "each event relayed once"
    );
    drop(db);
    let mut second = second;
    second.child.kill().await.unwrap();
    first.stop().await;
}

/// A proposal made over HTTP is approved with the CLI; the record says who and through which
/// channel; `events tail` shows it.
#[tokio::test]
async fn the_cli_approves_a_proposal_made_over_http() {
    let server = Server::start().await;
    server.create_workspace("cli").await;
    let draft = json!({
        "title": "Add a contributing guide",
        "description": "New contributors ask how to run the tests.",
        "changes": [{"path": "CONTRIBUTING.md", "action": "create", "content": "Run scripts/test.\n"}]
    })
    .to_string();
    let (status, created) = server
        .request(
            "POST",
            "/v1/workspaces/cli/proposals",
            &[AUTH, ("Content-Type", "application/json")],
            &draft,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let cli = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args(args)
            .env("DATABASE_URL", &server.url)
            .env("RUST_LOG", "warn");
        command
    };
    let approved = cli(&[
        "proposals",
        "-w",
        "cli",
        "approve",
        &id,
        "--as",
        "alice",
        "--comment",
        "ship it",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    assert!(String::from_utf8_lossy(&approved.stdout).contains(&format!("approved {id}")));
    let again = cli(&[
        "proposals",
        "-w",
        "cli",
        "reject",
        &id,
        "--reason",
        "too late",
        "--as",
        "bob",
    ])
    .output()
    .await
    .unwrap();
    assert!(!again.status.success(), "a decision is taken once");
    assert_eq!(again.status.code(), Some(4), "a conflict exits with 4");

    // Scripts get JSON and exit codes that say what went wrong.
    let listed = cli(&["proposals", "-w", "cli", "list", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["status"].as_str()),
        (Some(id.as_str()), Some("approved"))
    );
    let missing = cli(&["proposals", "-w", "cli", "show", "nope", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(3), "not found exits with 3");
    let error: Value = serde_json::from_slice(&missing.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "not_found", "{error}");
    let bogus = cli(&["proposals", "-w", "cli", "list", "--status", "bogus"])
        .output()
        .await
        .unwrap();
    assert_eq!(bogus.status.code(), Some(2), "a bad value exits with 2");
    // The API's document, without a server: the one checked in.
    let openapi = cli(&["openapi"]).output().await.unwrap();
    assert!(openapi.status.success());
    let printed: Value = serde_json::from_slice(&openapi.stdout).unwrap();
    let checked_in: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(printed, checked_in);
    let unreachable = cli(&["projections", "status"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("SWITCHYARD_DATABASE__CONNECT_TIMEOUT_SECS", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );

    let (status, shown) = server
        .request(
            "GET",
            &format!("/v1/workspaces/cli/proposals/{id}"),
            &[AUTH],
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "approved");
    let approval = &shown["history"][1]["data"];
    assert_eq!(
        (
            approval["approved_by"].as_str(),
            approval["channel"].as_str()
        ),
        (Some("alice"), Some("cli"))
    );
    assert_eq!(approval["content_hash"], created["content_hash"]);

    let tail = cli(&[
        "events",
        "tail",
        "-w",
        "cli",
        "--type",
        "proposal.approved.v1",
        "--no-follow",
        "--output",
        "json",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["data"]["proposal_id"], id.as_str());
    server.stop().await;
}

/// A proposal approved over HTTP is committed by the git agent into a real repository; the
/// three events share one correlation id, each caused by the one before.
#[tokio::test]
async fn an_approved_proposal_becomes_a_commit() {
    let repo = std::env::temp_dir().join(format!("sy-e2e-repo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.join("README.md"), "# Demo\n\nSee docs/setup.md.\n").unwrap();
    git(&["add", "README.md"]);
    git(&["commit", "--quiet", "-m", "init"]);

    let server = Server::start().await;
    let workspace = json!({"id": "gitty", "name": "Gitty", "repository": {"kind": "local", "path": repo.to_str().unwrap()}});
    let json_type = ("Content-Type", "application/json");
    let (status, _) = server
        .request(
            "POST",
            "/v1/workspaces",
            &[AUTH, json_type],
            &workspace.to_string(),
        )
        .await;
    assert_eq!(status, 201);
    let draft = json!({
        "title": "Fix the setup link",
        "description": "docs/setup.md does not exist; docs/install.md does.",
        "changes": [
            {"path": "README.md", "action": "modify", "content": "# Demo\n\nSee docs/install.md.\n"},
            {"path": "docs/install.md", "action": "create", "content": "Run scripts/up.\n"}
        ]
    });
    let (status, created) = server
        .request(
            "POST",
            "/v1/workspaces/gitty/proposals",
            &[AUTH, json_type],
            &draft.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let approve = json!({"content_hash": created["content_hash"]}).to_string();
    let reviewer = server.reviewer().await;
    let (status, body) = server
        .request(
            "POST",
            &format!("/v1/workspaces/gitty/proposals/{id}/approve"),
            &[("Authorization", &reviewer), json_type],
            &approve,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let shown = server.wait_for_commit_outcome("gitty", &id).await;
    assert_eq!(shown["status"], "committed", "{shown}");
    let history = shown["history"].as_array().unwrap();
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "proposal.created.v1",
            "proposal.approved.v1",
            "git.commit.v1"
        ]
    );
    let correlation = &history[0]["correlationid"];
    assert!(
        history.iter().all(|e| &e["correlationid"] == correlation),
        "one correlation id"
    );
    assert_eq!(history[1]["causationid"], history[0]["id"]);
    assert_eq!(history[2]["causationid"], history[1]["id"]);

    // The commit is in the repository, on its branch, with the proposed content.
    let commit = &history[2]["data"];
    let sha = commit["sha"].as_str().unwrap();
    assert_eq!(commit["branch"], format!("switchyard/{id}"));
    assert_eq!(git(&["rev-parse", &format!("switchyard/{id}")]), sha);
    assert_eq!(
        git(&["show", &format!("{sha}:docs/install.md")]),
        "Run scripts/up."
    );
    assert_eq!(
        git(&["show", &format!("{sha}:README.md")]),
        "# Demo\n\nSee docs/install.md."
    );
    let message = git(&["log", "-1", "--format=%B", sha]);
    assert!(
        message.contains(&id) && message.contains("Approved-by:"),
        "{message}"
    );

    // An approval that does not name the proposal's content is never committed. The raw
    // events API refuses to take one at all; written into the store behind the API's back
    // (a bug, a compromised agent), the git agent still checks the hash itself.
    let (_, second) = server
        .request(
            "POST",
            "/v1/workspaces/gitty/proposals",
            &[AUTH, json_type],
            &draft.to_string(),
        )
        .await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let forged = json!({
        "specversion": "1.0", "source": "/tests/forger", "type": "proposal.approved.v1",
        "subject": format!("proposal/{second_id}"),
        "data": {"proposal_id": second_id, "approved_by": "mallory", "channel": "api", "content_hash": "f".repeat(64)}
    });
    let (status, body) = server
        .request(
            "POST",
            "/v1/workspaces/gitty/events",
            &[AUTH, ("Content-Type", "application/cloudevents+json")],
            &forged.to_string(),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "reserved_type");
    sqlx::query(
        "INSERT INTO events (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
         VALUES ('gitty', $1, 2, $2, '/tests/forger', 'proposal.approved.v1', now(), $3, $2)",
    )
    .bind(format!("proposal/{second_id}"))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&forged["data"])
    .execute(&mut server.db().await)
    .await
    .unwrap();
    let refused = server.wait_for_commit_outcome("gitty", &second_id).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["history"][2]["data"]["reason"], "content_mismatch");
    let branches = git(&["branch", "--list", &format!("switchyard/{second_id}")]);
    assert!(
        branches.is_empty(),
        "nothing was committed for the forged approval"
    );
    server.stop().await;
    std::fs::remove_dir_all(&repo).unwrap();
}

/// The spec agent proposes a fix for a dead link it finds in the repository; once a person
/// rejects it, it is not proposed again — on demand, and after a restart.
#[tokio::test]
async fn rejected_findings_are_not_proposed_again_after_a_restart() {
    let repo = std::env::temp_dir().join(format!("sy-e2e-spec-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    std::fs::write(
        repo.join("README.md"),
        "# Demo\n\nSee [setup](docs/setup.md) and [api](docs/api.md).\n",
    )
    .unwrap();
    std::fs::write(repo.join("docs/api.md"), "# API\n").unwrap();
    let mut server = Server::start().await;
    let workspace = json!({"id": "specs", "name": "Specs", "repository": {"kind": "local", "path": repo.to_str().unwrap()}});
    let json_type = ("Content-Type", "application/json");
    let (status, _) = server
        .request(
            "POST",
            "/v1/workspaces",
            &[AUTH, json_type],
            &workspace.to_string(),
        )
        .await;
    assert_eq!(status, 201);

    let proposals = |server: &Server| {
        let url = server.url.clone();
        async move {
            let mut db = PgConnection::connect(&url).await.unwrap();
            sqlx::query_as::<_, (String, Value)>(
                "SELECT data->>'proposal_id', data FROM events WHERE type = 'proposal.created.v1' ORDER BY position",
            )
            .fetch_all(&mut db)
            .await
            .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut found = Vec::new();
    while found.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spec agent never proposed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = proposals(&server).await;
    }
    assert_eq!(found.len(), 1, "one dead link, one proposal");
    let (id, data) = &found[0];
    assert_eq!(data["author"], "spec");
    assert_eq!(data["finding"]["kind"], "broken-link");
    assert_eq!(
        data["changes"][0]["content"],
        "# Demo\n\nSee setup and [api](docs/api.md).\n"
    );

    let reject = json!({"reason": "setup.md is coming in the next release"}).to_string();
    let (status, body) = server
        .request(
            "POST",
            &format!("/v1/workspaces/specs/proposals/{id}/reject"),
            &[AUTH, json_type],
            &reject,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Wait until the agent has learnt it (its memory of the rejection).
    let mut db = server.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let learnt: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE type = 'agent.memory.recorded.v1' AND data->>'key' LIKE 'rejected:%'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if learnt == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejection was never remembered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for round in 0..2 {
        if round == 1 {
            server.kill_and_restart().await;
        }
        let (status, _) = server
            .request("POST", "/v1/workspaces/specs/agents/spec/run", &[AUTH], "")
            .await;
        assert_eq!(status, 202);
        // The run is handled (its handled record exists), and proposes nothing new.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let runs: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM agent_handled h JOIN events e ON e.position = h.event_position
                 WHERE h.agent = 'spec' AND e.type = 'agent.run_requested.v1'",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            if runs == round + 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {round} was never handled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            proposals(&server).await.len(),
            1,
            "the rejected finding is not proposed again (round {round})"
        );
    }
    drop(db);
    server.stop().await;
    std::fs::remove_dir_all(&repo).unwrap();
}

/// With a GitHub token, an approved proposal of a GitHub workspace becomes a branch, a commit
/// and a pull request (against a local stand-in for GitHub's API).
#[tokio::test]
async fn an_approved_proposal_becomes_a_pull_request_on_github() {
    let github = switchyard_testkit::GitHubStandIn::start(&["README.md"]).await;
    let mut server = Server::start().await;
    // Restart it with the GitHub host configured.
    server.child.kill().await.unwrap();
    let (child, address) = spawn_with(
        &server.url,
        &server.nats,
        &server.stream,
        &server.prefix,
        &[
            ("SWITCHYARD_GITHUB__API_URL", github.url.as_str()),
            ("SWITCHYARD_GITHUB__TOKEN", "test-token"),
        ],
        "127.0.0.1:0",
    )
    .await;
    server.child = child;
    server.address = address;

    let json_type = ("Content-Type", "application/json");
    let workspace = json!({"id": "hub", "name": "Hub", "repository": {"kind": "github", "owner": "acme", "repo": "widgets"}});
    let (status, _) = server
        .request(
            "POST",
            "/v1/workspaces",
            &[AUTH, json_type],
            &workspace.to_string(),
        )
        .await;
    assert_eq!(status, 201);
    let draft = json!({"title": "Say hello", "description": "A friendlier README.",
                       "changes": [{"path": "README.md", "action": "modify", "content": "# Hello\n"}]});
    let (_, created) = server
        .request(
            "POST",
            "/v1/workspaces/hub/proposals",
            &[AUTH, json_type],
            &draft.to_string(),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let reviewer = server.reviewer().await;
    let (status, _) = server
        .request(
            "POST",
            &format!("/v1/workspaces/hub/proposals/{id}/approve"),
            &[("Authorization", &reviewer), json_type],
            "{}",
        )
        .await;
    assert_eq!(status, 200);

    let shown = server.wait_for_commit_outcome("hub", &id).await;
    assert_eq!(shown["status"], "committed", "{shown}");
    let commit = &shown["history"][2]["data"];
    assert_eq!(commit["repository"], "acme/widgets");
    assert_eq!(
        commit["pull_request_url"],
        "https://github.example/acme/widgets/pull/1"
    );
    {
        let repo = github.repo.lock().unwrap();
        assert_eq!(
            repo.refs.get(&format!("switchyard/{id}")),
            commit["sha"].as_str().map(str::to_owned).as_ref()
        );
        assert_eq!((repo.commits.len(), repo.pulls.len()), (1, 1));
        assert!(repo.commits.values().next().unwrap().contains(&id));
    }
    server.stop().await;
}
