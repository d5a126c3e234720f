//! Hostile input against the real binary over raw TCP: forged, expired and wrong-scope tokens,
//! other workspaces' ids, server-owned fields, huge, deep, malformed and slow requests, floods
//! of bad tokens. Every case asserts the status **and** that the store did not change.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchyard_testkit::TempDatabase;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

const ADMIN: &str = "sy_hostile_admin_0123456789abcdef";
const SECRET: &str = "hostile webhook secret";

struct Server {
    child: Child,
    address: String,
    database: TempDatabase,
}

/// A response: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: String,
    body: Value,
}

impl Server {
    async fn start() -> Self {
        let database = TempDatabase::create("sy_hostile").await;
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", database.url())
            .env("NATS_URL", nats)
            .env("SWITCHYARD_RELAY__STREAM", format!("HOSTILE{tag}"))
            .env("SWITCHYARD_RELAY__SUBJECT_PREFIX", format!("h{tag}"))
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN)
            .env("SWITCHYARD_GITHUB_WEBHOOK_SECRET", SECRET)
            .env("SWITCHYARD_SERVER__HEADER_READ_TIMEOUT_SECS", "2")
            .env("SWITCHYARD_API__AUTH_FAILURES_PER_MINUTE", "60")
            .env("SWITCHYARD_API__AUTH_FAILURE_BURST", "40")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the server announces its address")
            .unwrap()
            .unwrap();
        let address = line
            .strip_prefix("switchyard listening on http://")
            .unwrap()
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            address,
            database,
        }
    }

    /// Sends raw bytes; reads the answer (or `None` when the server closed without one).
    async fn raw(&self, request: &[u8]) -> Option<Answer> {
        let mut stream = TcpStream::connect(&self.address).await.unwrap();
        // The server may answer (413) and close before a huge body is written: read anyway.
        let _ = stream.write_all(request).await;
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .expect("an answer within 30 s")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
        parse(&response)
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes).await.expect("an answer")
    }

    async fn db(&self) -> PgConnection {
        PgConnection::connect(self.database.url()).await.unwrap()
    }

    /// What must not change: the events (count, last position) and the recorded deliveries.
    async fn fingerprint(&self) -> (i64, Option<i64>, i64) {
        let mut db = self.db().await;
        let (count, last): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), max(position) FROM events")
                .fetch_one(&mut db)
                .await
                .unwrap();
        let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM github_deliveries")
            .fetch_one(&mut db)
            .await
            .unwrap();
        (count, last, deliveries)
    }

    async fn admin_json(&self, method: &str, path: &str, body: &Value) -> Answer {
        self.request(
            method,
            path,
            &[
                ("Authorization", &format!("Bearer {ADMIN}")),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    async fn token(
        &self,
        workspace: Option<&str>,
        scope: &str,
        name: &str,
        expires: Option<&str>,
    ) -> String {
        let mut body = json!({"name": name, "scope": scope});
        if let Some(ws) = workspace {
            body["workspace"] = json!(ws);
        }
        if let Some(expires) = expires {
            body["expires_in"] = json!(expires);
        }
        let made = self.admin_json("POST", "/v1/tokens", &body).await;
        assert_eq!(made.status, 201, "{}", made.body);
        made.body["token"].as_str().unwrap().to_owned()
    }
}

fn parse(response: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn event(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "source": "/tests/hostile", "type": ty, "subject": "hostile/1", "data": data})
}

#[tokio::test]
async fn hostile_requests_are_refused_and_change_nothing() {
    let server = Server::start().await;
    for ws in ["alpha", "beta"] {
        let made = server
            .admin_json(
                "POST",
                "/v1/workspaces",
                &json!({"id": ws, "name": ws, "repository": {"kind": "github", "owner": "acme", "repo": ws}}),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let alpha_read = server
        .token(Some("alpha"), "read", "alpha-reader", None)
        .await;
    let alpha_propose = server
        .token(Some("alpha"), "propose", "alpha-proposer", None)
        .await;
    let beta_admin = server
        .token(Some("beta"), "admin", "beta-admin", None)
        .await;
    let expiring = server
        .token(Some("alpha"), "admin", "brief", Some("1s"))
        .await;
    let revoked = server.token(Some("alpha"), "admin", "gone", None).await;
    let (_, list) = (
        (),
        server
            .admin_json("GET", "/v1/tokens?workspace=alpha", &Value::Null)
            .await,
    );
    let gone_id = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gone")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        server
            .admin_json(
                "POST",
                &format!("/v1/tokens/{gone_id}/revoke"),
                &Value::Null
            )
            .await
            .status,
        200
    );
    // A proposal in alpha, to aim at from beta.
    let draft = json!({"title": "t", "description": "d", "changes": [{"path": "README.md", "action": "modify", "content": "x"}]});
    let made = server
        .request(
            "POST",
            "/v1/workspaces/alpha/proposals",
            &[
                ("Authorization", &bearer(&alpha_propose)),
                ("Content-Type", "application/json"),
            ],
            draft.to_string().as_bytes(),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let alpha_proposal = made.body["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await; // `expiring` is now expired

    let json_type = ("Content-Type", "application/json");
    let ce_type = ("Content-Type", "application/cloudevents+json");
    let read = bearer(&alpha_read);
    let propose = bearer(&alpha_propose);
    let beta = bearer(&beta_admin);
    let memory = event(
        "agent.memory.recorded.v1",
        json!({"agent": "a", "key": "k", "value": 1}),
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big_batch: Vec<Value> = (0..100_000).map(|_| memory.clone()).collect();
    let big_batch = serde_json::to_vec(&big_batch).unwrap();
    let oversized_proposal =
        json!({"title": "t", "description": "x".repeat(300_000), "changes": []}).to_string();
    let mut with_sequence = memory.clone();
    with_sequence["sequence"] = json!(1);
    let mut foreign_schema = memory.clone();
    foreign_schema["dataschema"] = json!("http://169.254.169.254/latest/meta-data/");
    let forged_approval = event(
        "proposal.approved.v1",
        json!({"proposal_id": alpha_proposal, "approved_by": "mallory", "channel": "api", "content_hash": "f".repeat(64)}),
    );
    let mut owned_status = draft.clone();
    owned_status["status"] = json!("approved");
    let mut owned_approver = draft.clone();
    owned_approver["approved_by"] = json!("mallory");
    let huge_header = "a".repeat(100 * 1024);
    let webhook_body = json!({"action": "opened", "issue": {"number": 1}, "repository": {"name": "alpha", "owner": {"login": "acme"}}}).to_string();

    let events_alpha = "/v1/workspaces/alpha/events";
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Vec<(&'a str, String)>,
        Vec<u8>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "no token",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![],
            vec![],
            401,
        ),
        (
            "forged token",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![(
                "Authorization",
                bearer("sy_0000000000000000000000000000000000000000000000000000000000000000"),
            )],
            vec![],
            401,
        ),
        (
            "expired token",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![("Authorization", bearer(&expiring))],
            vec![],
            401,
        ),
        (
            "revoked token",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![("Authorization", bearer(&revoked))],
            vec![],
            401,
        ),
        (
            "basic instead of bearer",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![("Authorization", format!("Basic {ADMIN}"))],
            vec![],
            401,
        ),
        (
            "read scope posts an event",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", read.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            memory.to_string().into_bytes(),
            403,
        ),
        (
            "read scope proposes",
            "POST",
            "/v1/workspaces/alpha/proposals".into(),
            vec![
                ("Authorization", read.clone()),
                (json_type.0, json_type.1.into()),
            ],
            draft.to_string().into_bytes(),
            403,
        ),
        (
            "propose scope approves",
            "POST",
            format!("/v1/workspaces/alpha/proposals/{alpha_proposal}/approve"),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            b"{}".to_vec(),
            403,
        ),
        (
            "propose scope creates a workspace",
            "POST",
            "/v1/workspaces".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            json!({"id": "gamma", "name": "g", "repository": {"kind": "local", "path": "/tmp/g"}})
                .to_string()
                .into_bytes(),
            403,
        ),
        (
            "propose scope mints a token",
            "POST",
            "/v1/tokens".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            json!({"name": "x", "scope": "admin"})
                .to_string()
                .into_bytes(),
            403,
        ),
        (
            "other workspace read",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![("Authorization", beta.clone())],
            vec![],
            404,
        ),
        (
            "other workspace's proposal id",
            "GET",
            format!("/v1/workspaces/beta/proposals/{alpha_proposal}"),
            vec![("Authorization", beta.clone())],
            vec![],
            404,
        ),
        (
            "other workspace's proposal approved",
            "POST",
            format!("/v1/workspaces/alpha/proposals/{alpha_proposal}/approve"),
            vec![
                ("Authorization", beta.clone()),
                (json_type.0, json_type.1.into()),
            ],
            b"{}".to_vec(),
            404,
        ),
        (
            "other workspace's events",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", beta.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            memory.to_string().into_bytes(),
            404,
        ),
        (
            "mass assignment: status",
            "POST",
            "/v1/workspaces/alpha/proposals".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            owned_status.to_string().into_bytes(),
            400,
        ),
        (
            "mass assignment: approved_by",
            "POST",
            "/v1/workspaces/alpha/proposals".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            owned_approver.to_string().into_bytes(),
            400,
        ),
        (
            "mass assignment: sequence",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            with_sequence.to_string().into_bytes(),
            400,
        ),
        (
            "forged approval through the events API",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            forged_approval.to_string().into_bytes(),
            403,
        ),
        (
            "dataschema at 169.254.169.254",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            foreign_schema.to_string().into_bytes(),
            400,
        ),
        (
            "oversized proposal body",
            "POST",
            "/v1/workspaces/alpha/proposals".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            oversized_proposal.into_bytes(),
            413,
        ),
        (
            "100 000-level-deep JSON",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            deep.clone().into_bytes(),
            400,
        ),
        (
            "100 000-event batch",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                ("Content-Type", "application/cloudevents-batch+json".into()),
            ],
            big_batch,
            413,
        ),
        (
            "malformed percent-encoding in ce-source",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                ("Content-Type", "application/json".into()),
                ("ce-specversion", "1.0".into()),
                ("ce-type", "agent.memory.recorded.v1".into()),
                ("ce-source", "/x%zz".into()),
                ("ce-subject", "s".into()),
            ],
            json!({"agent": "a", "key": "k", "value": 1})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "bare CR inside a ce-subject header",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                ("Content-Type", "application/json".into()),
                ("ce-specversion", "1.0".into()),
                ("ce-type", "agent.memory.recorded.v1".into()),
                ("ce-source", "/x".into()),
                ("ce-subject", "a\rb".into()),
            ],
            json!({"agent": "a", "key": "k", "value": 1})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "unknown event type",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                (ce_type.0, ce_type.1.into()),
            ],
            event("nothing.happened.v1", json!({}))
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "XML instead of JSON",
            "POST",
            events_alpha.into(),
            vec![
                ("Authorization", propose.clone()),
                ("Content-Type", "application/xml".into()),
            ],
            b"<event/>".to_vec(),
            415,
        ),
        (
            "invalid UTF-8 body",
            "POST",
            "/v1/workspaces/alpha/proposals".into(),
            vec![
                ("Authorization", propose.clone()),
                (json_type.0, json_type.1.into()),
            ],
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
        ),
        (
            "path traversal in a workspace id",
            "GET",
            "/v1/workspaces/..%2f..%2fetc%2fpasswd".into(),
            vec![("Authorization", bearer(ADMIN))],
            vec![],
            404,
        ),
        (
            "100 KiB header",
            "GET",
            "/v1/workspaces/alpha".into(),
            vec![("Authorization", bearer(ADMIN)), ("X-Filler", huge_header)],
            vec![],
            431,
        ),
        (
            "webhook with a forged signature",
            "POST",
            "/v1/github/webhook".into(),
            vec![
                ("X-GitHub-Event", "issues".into()),
                ("X-GitHub-Delivery", "d-1".into()),
                ("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64))),
                (json_type.0, json_type.1.into()),
            ],
            webhook_body.into_bytes(),
            401,
        ),
        (
            "webhook with a valid signature and 100 000-deep JSON",
            "POST",
            "/v1/github/webhook".into(),
            vec![
                ("X-GitHub-Event", "issues".into()),
                ("X-GitHub-Delivery", "d-2".into()),
                (
                    "X-Hub-Signature-256",
                    switchyard_testkit::sign(SECRET.as_bytes(), deep.as_bytes()),
                ),
                (json_type.0, json_type.1.into()),
            ],
            deep.clone().into_bytes(),
            400,
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, method, path, headers, body, expected) in cases {
        let before = server.fingerprint().await;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = server.request(method, &path, &headers, &body).await;
        assert_eq!(answer.status, expected, "{name}: {}", answer.body);
        assert_eq!(
            server.fingerprint().await,
            before,
            "{name}: the store changed"
        );
        // Malformed HTTP itself (a bare CR, a huge head) is refused by hyper, without a body.
        let protocol_level = name.ends_with(" header");
        if expected >= 400 && !protocol_level {
            assert!(
                answer.body["code"].is_string(),
                "{name}: an error has a code: {}",
                answer.body
            );
        }
        println!("ok  {expected}  {name}");
    }

    // A page far larger than allowed is capped, not served whole.
    let page = server
        .request(
            "GET",
            "/v1/workspaces/alpha/events?limit=10000000",
            &[("Authorization", &read)],
            b"",
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body["events"].as_array().unwrap().len() <= 1000);

    // The server is still healthy.
    let health = server.request("GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    drop(server.child);
    server.database.drop_now().await;
}

#[tokio::test]
async fn a_client_sending_one_byte_a_second_is_cut_off() {
    let server = Server::start().await;
    let before = server.fingerprint().await;
    let mut stream = TcpStream::connect(&server.address).await.unwrap();
    let request = format!(
        "POST /v1/workspaces/alpha/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
    );
    let started = tokio::time::Instant::now();
    let mut cut = false;
    for byte in request.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            cut = true;
            break;
        }
        // The server closes the connection (with or without a 408) when the head is late.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                cut = true;
                break;
            }
            Err(_) => {} // still waiting: send the next byte
        }
    }
    assert!(cut, "the slow client was never cut off");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "cut off after {elapsed:?}; the header read timeout is 2 s"
    );
    assert_eq!(server.fingerprint().await, before);
    // Others are served meanwhile and after.
    let health = server.request("GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    drop(server.child);
    server.database.drop_now().await;
}

#[tokio::test]
async fn a_flood_of_bad_tokens_is_rate_limited_and_good_tokens_still_pass() {
    let server = Server::start().await;
    let before = server.fingerprint().await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut retry_after = None;
    let started = tokio::time::Instant::now();
    // 1 000 bad tokens in about a second, 50 connections at a time.
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let address = server.address.clone();
            tasks.push(tokio::spawn(async move {
                let request = format!(
                    "GET /v1/workspaces/alpha HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer sy_bad_{round}_{i}\r\n\r\n"
                );
                let mut stream = TcpStream::connect(&address).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut response = Vec::new();
                stream.read_to_end(&mut response).await.unwrap();
                parse(&response).unwrap()
            }));
        }
        for task in tasks {
            let answer = task.await.unwrap();
            *statuses.entry(answer.status).or_default() += 1;
            if answer.status == 429 {
                retry_after = answer
                    .headers
                    .lines()
                    .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_owned));
            }
        }
    }
    let elapsed = started.elapsed();
    println!("1 000 bad tokens in {elapsed:?}: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), 1_000);
    assert!(
        statuses.get(&401).copied().unwrap_or(0) <= 60,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 900,
        "{statuses:?}"
    );
    let seconds: u64 = retry_after
        .expect("429 carries Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    // The admin, from the same address, is not locked out.
    let ok = server
        .request(
            "GET",
            "/v1/tokens",
            &[("Authorization", &bearer(ADMIN))],
            b"",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(server.fingerprint().await, before);
    drop(server.child);
    server.database.drop_now().await;
}
