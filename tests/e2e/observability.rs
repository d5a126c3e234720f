//! Observability end to end: `/metrics` against the real binary.

use std::time::Duration;

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{AUTH, Server, dechunk};

impl Server {
    /// `GET path` answered as text.
    async fn get_text(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }
}

/// The value of the sample `name{labels}` (or `name` without labels); 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.rsplit_once(' ').is_some_and(|(key, _)| key == name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_the_relay_lag_grow_while_paused_and_the_work_follow_on_resume() {
    let server = Server::start().await;
    server.create_workspace("metrics").await;
    let handled = "switchyard_agent_events_total{agent=\"retrospective\",outcome=\"handled\"}";
    let scrape = || async {
        let (status, text) = server.get_text("/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    };
    let first = scrape().await;
    assert!(
        first.contains(
            "switchyard_consumer_pending{agent=\"retrospective\",type=\"retrospective.trigger.v1\"}"
        ),
        "{first}"
    );
    assert!(first.contains("switchyard_process_resident_memory_bytes"));
    let handled_before = sample(&first, handled);

    let (status, paused) = server
        .request("POST", "/v1/ops/relay/pause", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    let batch: Vec<_> = (0..5)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("m-{i}"), "source": "/tests/metrics",
                   "type": "retrospective.trigger.v1", "subject": format!("retrospective/m{i}"),
                   "data": {"retrospective_id": format!("m{i}"), "reason": "manual", "requested_by": "metrics-test"}})
        })
        .collect();
    let (status, body) = server
        .request(
            "POST",
            "/v1/workspaces/metrics/events",
            &[AUTH, ("Content-Type", "application/cloudevents-batch+json")],
            &json!(batch).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The lag grows to the five events (the watermark is the cluster's: other tests' open
    // transactions may hold them back for a moment).
    let mut paused_scrape = String::new();
    for _ in 0..100 {
        paused_scrape = scrape().await;
        if sample(&paused_scrape, "switchyard_relay_lag_events") >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sample(&paused_scrape, "switchyard_relay_lag_events") >= 5.0,
        "{paused_scrape}"
    );
    assert_eq!(sample(&paused_scrape, "switchyard_relay_paused"), 1.0);
    assert!(sample(&paused_scrape, "switchyard_relay_lag_seconds") > 0.0);
    assert!(
        paused_scrape.contains("route=\"/v1/workspaces/{ws}/events\""),
        "HTTP latency by route: {paused_scrape}"
    );
    // Nothing reaches the agent while paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sample(&scrape().await, handled), handled_before);

    let (status, resumed) = server
        .request("POST", "/v1/ops/relay/resume", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{resumed}");
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape().await;
        if sample(&after, "switchyard_relay_lag_events") == 0.0
            && sample(&after, handled) >= handled_before + 5.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&after, "switchyard_relay_lag_events"),
        0.0,
        "{after}"
    );
    assert_eq!(sample(&after, "switchyard_relay_paused"), 0.0);
    assert!(sample(&after, handled) >= handled_before + 5.0, "{after}");
    assert!(sample(&after, "switchyard_relay_published_total") >= 5.0);
    assert!(
        sample(
            &after,
            "switchyard_events_appended_total{type=\"retrospective.completed.v1\"}"
        ) >= 5.0
    );
    server.stop().await;
}

impl Server {
    /// SIGTERM (a clean stop), then start again on the same database and stream.
    async fn stop_cleanly_and_restart(&mut self) {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the server stops within 20 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "a clean stop exits 0: {status}");
        self.respawn().await;
    }

    async fn mode(&self) -> serde_json::Value {
        let (status, mode) = self.request("GET", "/v1/ops/mode", &[AUTH], "").await;
        assert_eq!(status, 200, "{mode}");
        mode
    }
}

#[tokio::test]
async fn the_mode_switches_at_run_time_and_a_crash_opens_a_debug_window() {
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut server = Server::start_with(
        &nats,
        vec![("SWITCHYARD_OBS__CRASH_DEBUG_SECS".into(), "2".into())],
    )
    .await;
    assert_eq!(server.mode().await["mode"], "shipping");

    // Switched through the ops API, for a window, then back by itself.
    let json = ("Content-Type", "application/json");
    let (status, set) = server
        .request(
            "PUT",
            "/v1/ops/mode",
            &[AUTH, json],
            &json!({"mode": "debug", "for_secs": 1}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["mode"], "debug");
    assert!(set["until"].is_string());
    let (_, metrics) = server.get_text("/metrics").await;
    assert_eq!(sample(&metrics, "switchyard_obs_debug"), 1.0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mode = server.mode().await;
    assert_eq!(mode["mode"], "shipping", "{mode}");
    assert_eq!(mode["reason"], "the debug window ended");
    let (status, body) = server
        .request(
            "PUT",
            "/v1/ops/mode",
            &[AUTH, json],
            &json!({"mode": "verbose"}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // A clean stop leaves nothing to worry about at the next start.
    server.stop_cleanly_and_restart().await;
    assert_eq!(server.mode().await["mode"], "shipping");

    // SIGKILL: the next start finds the run that died, and turns debug on for the window.
    server.kill_and_restart().await;
    let mode = server.mode().await;
    assert_eq!(mode["mode"], "debug", "{mode}");
    assert!(
        mode["reason"]
            .as_str()
            .unwrap()
            .contains("unclean shutdown"),
        "{mode}"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(server.mode().await["mode"], "shipping");
    let crashed: i64 = sqlx::query_scalar("SELECT count(*) FROM server_runs WHERE crashed")
        .fetch_one(&mut server.db().await)
        .await
        .unwrap();
    assert_eq!(crashed, 1, "one run died, one was stopped cleanly");
    server.stop().await;
}

/// The spans the server exported to its file, as JSON objects.
fn spans(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn one_trace_follows_a_webhook_through_the_store_the_relay_and_two_agents() {
    const SECRET: &str = "trace-test-secret";
    let file = std::env::temp_dir().join(switchyard_testkit::unique("sy-spans-"));
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let server = Server::start_with(
        &nats,
        vec![
            ("SWITCHYARD_GITHUB_WEBHOOK_SECRET".into(), SECRET.into()),
            ("SWITCHYARD_OBS__TRACES__EXPORTER".into(), "file".into()),
            (
                "SWITCHYARD_OBS__TRACES__FILE".into(),
                file.to_string_lossy().into_owned(),
            ),
        ],
    )
    .await;
    server
        .create_workspace_with(
            "hub",
            json!({"kind": "github", "owner": "acme", "repo": "widgets"}),
        )
        .await;
    // A failed check on a Switchyard branch: the github agent asks for a task
    // (task.requested.v1), which the orchestrator makes a plan of, and then drives.
    let payload = json!({
        "action": "completed",
        "check_run": {
            "id": 4, "name": "test", "status": "completed", "conclusion": "failure",
            "head_sha": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
            "html_url": "https://github.example/acme/widgets/runs/4",
            "details_url": "https://ci.example/builds/4",
            "check_suite": {"head_branch": "switchyard/0191d2a4-7c1e-7b3a-9f00-3c5e8a1d2b44"},
            "pull_requests": [{"number": 2}],
        },
        "repository": {"name": "widgets", "full_name": "acme/widgets", "owner": {"login": "acme"}},
        "sender": {"login": "github-actions[bot]"},
    });
    let url = format!("http://{}/v1/github/webhook", server.address);
    let status = switchyard_testkit::post_delivery(
        &url,
        SECRET,
        "check_run",
        "6c0f7e4a-0000-4000-8000-000000000001",
        payload.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 202);

    // Until the orchestrator has decided on the plan (the CI-fixer role is not served here,
    // so it escalates), and the spans are written.
    let mut all = Vec::new();
    for _ in 0..200 {
        all = spans(&file);
        let handled = all
            .iter()
            .filter(|s| {
                s["name"] == "agent.handle" && s["attributes"]["agent.name"] == "orchestrator"
            })
            .count();
        if handled >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_name = |name: &str| -> Vec<&serde_json::Value> {
        all.iter().filter(|s| s["name"] == name).collect()
    };
    let request = by_name("http.request");
    assert!(
        request
            .iter()
            .any(|s| s["attributes"]["process.memory_bytes"]
                .as_str()
                .is_some_and(|m| m != "0")),
        "service-level spans carry the process's memory: {request:?}"
    );
    let webhook = by_name("github.webhook");
    assert_eq!(webhook.len(), 1, "{all:#?}");
    let trace = webhook[0]["trace_id"].as_str().unwrap().to_owned();
    let in_trace: Vec<&serde_json::Value> = all
        .iter()
        .filter(|s| s["trace_id"] == trace.as_str())
        .collect();
    let names: std::collections::BTreeSet<&str> = in_trace
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in [
        "http.request",
        "github.webhook",
        "store.append",
        "relay.publish",
        "agent.handle",
    ]
    .iter()
    {
        assert!(names.contains(name), "{name} is in the trace: {names:?}");
    }
    // Both agents handled events of this one trace, in causal order: the github agent's
    // span is an ancestor of the orchestrator's.
    let span = |id: &str| in_trace.iter().find(|s| s["span_id"] == id).copied();
    let ancestors = |start: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        let mut parent = start["parent_span_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        while let Some(p) = span(&parent) {
            out.push(
                p["name"].as_str().unwrap().to_owned()
                    + ":"
                    + p["attributes"]["agent.name"].as_str().unwrap_or(""),
            );
            parent = p["parent_span_id"].as_str().unwrap_or_default().to_owned();
        }
        out
    };
    let github = in_trace
        .iter()
        .find(|s| s["name"] == "agent.handle" && s["attributes"]["agent.name"] == "github")
        .expect("the github agent's span is in the trace");
    assert_eq!(github["attributes"]["event.type"], "github.check_run.v1");
    assert_eq!(github["attributes"]["hop.count"], "0");
    let orchestrator: Vec<&&serde_json::Value> = in_trace
        .iter()
        .filter(|s| s["name"] == "agent.handle" && s["attributes"]["agent.name"] == "orchestrator")
        .collect();
    assert!(orchestrator.len() >= 2, "{names:?}");
    let first = orchestrator
        .iter()
        .find(|s| s["attributes"]["event.type"] == "task.requested.v1")
        .expect("the orchestrator handled the task request in the same trace");
    assert_eq!(first["attributes"]["hop.count"], "1");
    let chain = ancestors(first);
    assert!(
        chain.iter().any(|a| a == "agent.handle:github"),
        "the github agent's span is an ancestor: {chain:?}"
    );
    assert!(
        chain.iter().any(|a| a.starts_with("github.webhook")),
        "{chain:?}"
    );
    // Causation is a link too: each agent span links to the span that wrote its event.
    for s in orchestrator.iter().chain(std::iter::once(&github)) {
        let links = s["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "{s}");
        assert_eq!(links[0]["span_id"], s["parent_span_id"]);
    }
    let plan = orchestrator
        .iter()
        .find(|s| s["attributes"]["event.type"] == "plan.submitted.v1")
        .expect("the orchestrator's plan is in the trace too");
    assert_eq!(plan["attributes"]["hop.count"], "2");
    server.stop().await;
    let _ = std::fs::remove_file(&file);
}

/// The consumers' figures are read from nats-server at most every 2 s, whoever asks (the
/// status route, the metrics scrape): a second status right after the first reuses them and
/// says how old they are; one after the 2 s reads them anew.
#[tokio::test]
async fn the_ops_status_reuses_consumer_figures_for_two_seconds_and_says_their_age() {
    let server = Server::start().await;
    let status = || async {
        let (code, body) = server.request("GET", "/v1/ops/status", &[AUTH], "").await;
        assert_eq!(code, 200, "{body}");
        body
    };
    let first = status().await;
    assert_eq!(first["consumers_age_ms"], 0, "read now");
    assert!(!first["consumers"].as_array().unwrap().is_empty());
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = status().await;
    let age = second["consumers_age_ms"].as_u64().unwrap();
    // (A machine so slow that the second ask came 2 s later would read anew: nothing to check.)
    if started.elapsed() < Duration::from_millis(1500) {
        assert!((50..2000).contains(&age), "reused: {age} ms");
        assert_eq!(second["consumers"], first["consumers"]);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        status().await["consumers_age_ms"],
        0,
        "read again after 2 s"
    );
}
