//! An agent that is not compiled into Switchyard: the Python example of
//! `docs/examples/python-agent`, run for real against the real server, JetStream and store.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{AUTH, Server, TOKEN};

const AGENT: &str = "sizer";

/// The Python with the example's requirements: `SWITCHYARD_PYTHON`, else the venv that
/// `scripts/test` makes (`sy_example_venv` in `scripts/lib.sh`).
fn python() -> PathBuf {
    let python = std::env::var_os("SWITCHYARD_PYTHON").map_or_else(
        || {
            let cache = std::env::var_os("SWITCHYARD_CACHE").map_or_else(
                || {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/switchyard")
                },
                PathBuf::from,
            );
            cache.join("example-venv/bin/python")
        },
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (it makes the venv of docs/examples/python-agent), \
         or set SWITCHYARD_PYTHON to a python with nats-py",
        python.display()
    );
    python
}

fn spawn_agent(server: &Server, log: &std::path::Path, args: &[&str]) -> Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/python-agent/agent.py"
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(python())
        .arg(script)
        .args(args)
        .env("SWITCHYARD_URL", format!("http://{}", server.address))
        .env("SWITCHYARD_TOKEN", TOKEN)
        .env("NATS_URL", &server.nats)
        .env("AGENT_NAME", AGENT)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `(id, causation id, data)` of the agent's events, in store order.
async fn emitted(server: &Server) -> Vec<(String, Option<String>, Value)> {
    sqlx::query_as(
        "SELECT id, causation_id, data FROM events
         WHERE source = '/agents/sizer' ORDER BY position",
    )
    .fetch_all(&mut server.db().await)
    .await
    .unwrap()
}

async fn propose(server: &Server, path: &str, content: &str) -> (String, String) {
    let draft = json!({
        "title": format!("Add {path}"),
        "description": "For the external agent.",
        "changes": [{"path": path, "action": "create", "content": content}]
    });
    let (status, created) = server
        .request(
            "POST",
            "/v1/workspaces/ext/proposals",
            &[AUTH, ("Content-Type", "application/json")],
            &draft.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let event: String = sqlx::query_scalar(
        "SELECT id FROM events WHERE type = 'proposal.created.v1' AND stream_id = $1",
    )
    .bind(format!("proposal/{id}"))
    .fetch_one(&mut server.db().await)
    .await
    .unwrap();
    (id, event)
}

/// The Python agent registers, consumes `proposal.created.v1` from its durable consumer and
/// emits through the events API. Killed after its post and before its ack, it gets the event
/// again and posts the same event again: the store keeps one. Every event it emits is caused
/// by the one it handled.
#[tokio::test]
async fn an_external_python_agent_handles_each_event_once_across_a_crash() {
    let server = Server::start().await;
    server.create_workspace("ext").await;
    let log = std::env::temp_dir().join(format!(
        "sy-e2e-sizer-{}.log",
        uuid::Uuid::new_v4().simple()
    ));
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut crashing = spawn_agent(&server, &log, &["--exit-before-ack"]);
    let (first, first_event) = propose(&server, "NOTES.md", "one\ntwo\nthree\n").await;
    let exited = tokio::time::timeout(Duration::from_secs(60), crashing.wait())
        .await
        .unwrap_or_else(|_| panic!("the agent did not handle the proposal:\n{}", show_log()))
        .unwrap();
    assert_eq!(exited.code(), Some(3), "{}", show_log());
    let (status, agent) = server.request("GET", "/v1/agents/sizer", &[AUTH], "").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["external"], true);
    assert_eq!(agent["consumers"][0]["stream"], server.stream.as_str());
    let before_redelivery = emitted(&server).await;
    assert_eq!(before_redelivery.len(), 1, "{}", show_log());

    // Started again, it is handed the unacknowledged event again (ack wait 2 s), and the
    // next one.
    let mut agent = spawn_agent(&server, &log, &[]);
    let (second, second_event) = propose(&server, "TODO.md", "a\n").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let duplicates = || show_log().matches("(duplicate,").count();
    while (emitted(&server).await.len() < 2 || duplicates() < 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.kill().await.unwrap();
    let events = emitted(&server).await;
    assert_eq!(
        duplicates(),
        1,
        "the redelivery posted the same event:\n{}",
        show_log()
    );
    assert_eq!(events.len(), 2, "one event per proposal:\n{}", show_log());
    assert_eq!(
        events[0], before_redelivery[0],
        "the first event is unchanged"
    );
    let by_cause: Vec<(Option<&str>, &Value, &Value)> = events
        .iter()
        .map(|(_, cause, data)| {
            (
                cause.as_deref(),
                &data["content"]["proposal_id"],
                &data["content"]["lines"],
            )
        })
        .collect();
    assert_eq!(
        by_cause,
        [
            (Some(first_event.as_str()), &json!(first), &json!(3)),
            (Some(second_event.as_str()), &json!(second), &json!(1)),
        ]
    );
    // What it sent is delivered like any message (the messages projection).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, listed) = server
            .request("GET", "/v1/workspaces/ext/messages", &[AUTH], "")
            .await;
        assert_eq!(status, 200, "{listed}");
        let senders: Vec<&str> = listed["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["sender"].as_str()).collect())
            .unwrap_or_default();
        if senders == [AGENT, AGENT] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&log);
}
