//! Workflows end to end: plans driven by the orchestrator, run by runner agents whose
//! commands are shell scripts, in git worktrees of a real repository.

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::{AUTH, Server};

/// A work area: the scripts that stand in for agents, a git repository, the configuration.
pub(crate) struct Fixture {
    dir: PathBuf,
}

const CODER: &str = r#"#!/bin/sh
# A coding agent: records its run, works a second, writes <task>.txt.
# The fourth field is the runner's server process (prlimit execs the command).
echo "$SWITCHYARD_TASK_ID $SWITCHYARD_ATTEMPT $SWITCHYARD_KIND $PPID" >> "$LOG"
if grep -q '"feedback"' "$SWITCHYARD_TASK_FILE"; then echo "feedback $SWITCHYARD_TASK_ID" >> "$LOG"; fi
if grep -q 'use the structured logger' "$SWITCHYARD_TASK_FILE"; then echo "message from a person $SWITCHYARD_TASK_ID" >> "$LOG"; fi
if grep -q 'from the reviewer' "$SWITCHYARD_TASK_FILE"; then echo "message from the reviewer $SWITCHYARD_TASK_ID" >> "$LOG"; fi
case "$SWITCHYARD_TASK_ID" in
  slow*) sleep 4 ;;
  *) sleep 1 ;;
esac
echo "$SWITCHYARD_TASK_ID" > "$SWITCHYARD_TASK_ID.txt"
"#;

const DEBUGGER: &str = r#"#!/bin/sh
# A debugger: fixes the failure (writes fixed.txt) once the gate file exists.
echo "debug $SWITCHYARD_TASK_ID $SWITCHYARD_ATTEMPT" >> "$LOG"
if [ -e "$GATE" ]; then
  echo fixed > fixed.txt
  exit 0
fi
echo "cannot fix this yet"
exit 1
"#;

const REVIEWER: &str = r#"#!/bin/sh
# A reviewer that always asks for changes.
echo "review $SWITCHYARD_TASK_ID $SWITCHYARD_ATTEMPT" >> "$LOG"
printf '{"verdict":"changes_requested","message":"add a test for the empty input","messages":[{"to":"runner-coder","type":"note","content":"from the reviewer: keep functions short"}]}' > "$SWITCHYARD_REPORT_FILE"
"#;

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(switchyard_testkit::unique("sy-wf-"));
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        for (name, script) in [
            ("coder.sh", CODER),
            ("debugger.sh", DEBUGGER),
            ("reviewer.sh", REVIEWER),
        ] {
            std::fs::write(dir.join(name), script).unwrap();
        }
        std::fs::write(repo.join("README.md"), "# repo\n").unwrap();
        for args in [
            &["init", "--quiet", "--initial-branch=main"][..],
            &["add", "README.md"],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "init",
            ],
        ] {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        }
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let config = format!(
            r#"
[workflows]
work_dir = "{work}"
retry_backoff_ms = 100
silence_grace_secs = 20
deadline_scan_ms = 200

[workflows.roles.coder]
command = ["/bin/sh", "{coder}"]
capabilities = ["implement", "code", "feature"]
env = {{ LOG = "{log}" }}

[workflows.roles.debugger]
command = ["/bin/sh", "{debugger}"]
capabilities = ["debug", "fix", "bug"]
env = {{ LOG = "{log}", GATE = "{gate}" }}

[workflows.roles.reviewer]
command = ["/bin/sh", "{reviewer}"]
capabilities = ["review", "code-review"]
env = {{ LOG = "{log}" }}
"#,
            work = path("work"),
            coder = path("coder.sh"),
            debugger = path("debugger.sh"),
            reviewer = path("reviewer.sh"),
            log = path("log.txt"),
            gate = path("gate"),
        );
        std::fs::write(dir.join("switchyard.toml"), config).unwrap();
        Self { dir }
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn open_gate(&self) {
        std::fs::write(self.dir.join("gate"), "").unwrap();
    }

    pub(crate) async fn server(&self) -> Server {
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let config = self.dir.join("switchyard.toml");
        let server = Server::start_with(
            &nats,
            vec![(
                "SWITCHYARD_CONFIG".into(),
                config.to_string_lossy().into_owned(),
            )],
        )
        .await;
        server
            .create_workspace_with(
                "wf",
                json!({"kind": "local", "path": self.dir.join("repo")}),
            )
            .await;
        server
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    pub(crate) async fn submit_plan(&self, plan: &Value) -> (u16, Value) {
        self.request(
            "POST",
            "/v1/workspaces/wf/plans",
            &[AUTH, ("Content-Type", "application/json")],
            &plan.to_string(),
        )
        .await
    }

    /// Polls a plan until `done` holds (up to `secs`); returns it as last seen.
    pub(crate) async fn wait_plan(
        &self,
        id: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut plan = Value::Null;
        for _ in 0..secs * 10 {
            let (status, shown) = self
                .request("GET", &format!("/v1/workspaces/wf/plans/{id}"), &[AUTH], "")
                .await;
            assert_eq!(status, 200, "{shown}");
            plan = shown;
            if done(&plan) {
                return plan;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The short view first: a long plan is cut off in CI's output.
        let tasks: Vec<String> = plan["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "{} {} attempts={} started={}",
                    t["id"], t["status"], t["attempts"], t["current_run"]["started_at"]
                )
            })
            .collect();
        let letters: Vec<(String, String)> =
            sqlx::query_as("SELECT agent, error FROM dead_letters ORDER BY failed_at")
                .fetch_all(&mut self.db().await)
                .await
                .unwrap_or_default();
        panic!(
            "plan {id} did not get there within {secs} s: {} {tasks:#?}\ndead letters: {letters:?}\n{plan:#}",
            plan["status"]
        );
    }

    /// `(data, time)` of the workspace's events of type `ty`, in store order.
    async fn typed(&self, ty: &str) -> Vec<(Value, chrono::DateTime<chrono::Utc>)> {
        sqlx::query_as(
            "SELECT data, time FROM events WHERE workspace = 'wf' AND type = $1 ORDER BY position",
        )
        .bind(ty)
        .fetch_all(&mut self.db().await)
        .await
        .unwrap()
    }
}

pub(crate) fn task<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {plan:#}"))
}

fn of_task<'a>(
    events: &'a [(Value, chrono::DateTime<chrono::Utc>)],
    id: &str,
) -> Vec<&'a (Value, chrono::DateTime<chrono::Utc>)> {
    events.iter().filter(|(d, _)| d["task_id"] == id).collect()
}

fn file_check(files: &[&str]) -> Value {
    let mut run = vec![json!("test")];
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            run.push(json!("-a"));
        }
        run.push(json!("-f"));
        run.push(json!(f));
    }
    json!([{ "run": run, "timeout_secs": 10 }])
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_within_its_concurrency_limit() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    let plan = json!({
        "id": "diamond", "title": "A diamond with a fan-out of three",
        "concurrency": {"global": 2},
        "tasks": [
            {"id": "a", "title": "Implement the data model", "role": "coder",
             "acceptance": file_check(&["a.txt"])},
            {"id": "b", "title": "Implement the parser", "role": "coder", "depends_on": ["a"],
             "acceptance": file_check(&["a.txt", "b.txt"])},
            {"id": "c", "title": "Implement the printer", "role": "coder", "depends_on": ["a"],
             "acceptance": file_check(&["a.txt", "c.txt"])},
            {"id": "d", "title": "Implement the checker", "role": "coder", "depends_on": ["a"],
             "acceptance": file_check(&["a.txt", "d.txt"])},
            {"id": "e", "title": "Implement the command line", "role": "coder",
             "depends_on": ["b", "c", "d"],
             // Its worktree holds its dependencies' commits.
             "acceptance": file_check(&["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"])},
        ],
    });
    // A person's message to the coder reaches its next run, once.
    let (status, sent) = server
        .request(
            "POST",
            "/v1/workspaces/wf/messages",
            &[AUTH, ("Content-Type", "application/json")],
            &json!({"to": "runner-coder", "type": "note",
                    "content": "please use the structured logger"})
            .to_string(),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    // The inbox is a projection: wait until it holds the message.
    for _ in 0..100 {
        let (_, listed) = server
            .request(
                "GET",
                "/v1/workspaces/wf/messages?recipient=runner-coder",
                &[AUTH],
                "",
            )
            .await;
        if listed["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("diamond", 90, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let seen = fixture
        .log()
        .iter()
        .filter(|l| l.starts_with("message from a person"))
        .count();
    assert_eq!(
        seen,
        1,
        "the message reached exactly one run: {:?}",
        fixture.log()
    );
    let acks = server.typed("agent.message.acknowledged.v1").await;
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0["agent"], "runner-coder");
    assert_eq!(acks[0].0["message_id"], sent["message_id"]);

    let started = server.typed("task.started.v1").await;
    let completed = server.typed("task.completed.v1").await;
    assert_eq!(started.len(), 5, "each task started once: {started:?}");
    assert_eq!(completed.len(), 5, "each task completed once");
    let start = |id: &str| of_task(&started, id)[0].1;
    let end = |id: &str| of_task(&completed, id)[0].1;
    for id in ["b", "c", "d"] {
        assert!(start(id) > end("a"), "{id} started before a completed");
        assert!(start("e") > end(id), "e started before {id} completed");
    }
    // The most runs at once, from the events' times: exactly the limit (the fan-out of three
    // ran two at a time).
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for (data, at) in &started {
        edges.push((*at, 1));
        let done = of_task(&completed, data["task_id"].as_str().unwrap())[0].1;
        edges.push((done, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    assert_eq!(most, 2, "runs at once never exceed the global limit of 2");
    // Every dispatch carries the router's recommendation and the orchestrator's decision.
    let dispatched = server.typed("task.dispatched.v1").await;
    assert_eq!(dispatched.len(), 5);
    for (data, _) in &dispatched {
        assert_eq!(data["decision"]["agent"], "runner-coder", "{data}");
        assert!(
            !data["recommendation"].as_array().unwrap().is_empty(),
            "{data}"
        );
    }
    // Each plan task's work is on a branch of the repository.
    let commit = task(&shown, "e")["commit"].as_str().unwrap();
    let branch = std::process::Command::new("git")
        .arg("-C")
        .arg(fixture.dir.join("repo"))
        .args(["rev-parse", "switchyard/plan/diamond/e"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&branch.stdout).trim(), commit);
    assert_eq!(
        server.typed("plan.finished.v1").await.len(),
        1,
        "the plan finishes once"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failure_branches_to_the_debugger_and_escalates_beyond_the_depth_limit() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    // First: the debugger can fix it.
    fixture.open_gate();
    let plan = json!({
        "id": "fixable", "title": "A task whose first run fails",
        "tasks": [
            {"id": "broken", "title": "Implement the cache", "role": "coder",
             "acceptance": file_check(&["fixed.txt"])},
            {"id": "after", "title": "Implement the cache's metrics", "role": "coder",
             "depends_on": ["broken"]},
        ],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("fixable", 90, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let broken = task(&shown, "broken");
    assert_eq!(broken["branches"], json!(["broken~1"]));
    assert_eq!(task(&shown, "broken~1")["status"], "done");
    assert_eq!(task(&shown, "broken~1")["parent_id"], "broken");
    let branched = server.typed("task.branched.v1").await;
    assert_eq!(branched.len(), 1);
    assert_eq!(branched[0].0["cause"], "implementation_bug");
    assert_eq!(branched[0].0["role"], "debugger");
    // The parent's acceptance ran again (a verification), then its dependant ran.
    let dispatched = server.typed("task.dispatched.v1").await;
    let kinds: Vec<(String, String)> = dispatched
        .iter()
        .map(|(d, _)| {
            (
                d["task_id"].as_str().unwrap().to_owned(),
                d["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let kinds: Vec<(&str, &str)> = kinds
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("broken", "work"),
            ("broken~1", "work"),
            ("broken", "verify"),
            ("after", "work")
        ]
    );

    // Second: with a depth limit of 1 and a debugger that cannot fix it yet, the branch task's
    // own failure would need depth 2: it is escalated, and `resolve retry` continues it.
    std::fs::remove_file(fixture.dir.join("gate")).unwrap();
    let plan = json!({
        "id": "stuck", "title": "A failure the debugger cannot fix at first",
        "max_branch_depth": 1,
        "tasks": [
            {"id": "broken", "title": "Implement the index", "role": "coder",
             "acceptance": file_check(&["fixed.txt"])},
            {"id": "after", "title": "Implement the index's API", "role": "coder",
             "depends_on": ["broken"]},
        ],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("stuck", 60, |p| {
            p["tasks"].as_array().is_some_and(|tasks| {
                tasks
                    .iter()
                    .any(|t| t["id"] == "broken~1" && t["status"] == "escalated")
            })
        })
        .await;
    let escalation = task(&shown, "broken~1")["escalation"].as_str().unwrap();
    assert!(escalation.contains("max_branch_depth 1"), "{escalation}");
    assert_eq!(task(&shown, "broken")["status"], "blocked");
    assert_eq!(task(&shown, "after")["status"], "waiting");
    // A read token cannot resolve it; a token with the approve scope can.
    let reviewer = server.reviewer().await;
    fixture.open_gate();
    let (status, body) = server
        .request(
            "POST",
            "/v1/workspaces/wf/plans/stuck/tasks/broken~1/resolve",
            &[
                ("Authorization", reviewer.as_str()),
                ("Content-Type", "application/json"),
            ],
            &json!({"action": "retry", "comment": "the gate is open now"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let shown = server
        .wait_plan("stuck", 60, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    assert_eq!(task(&shown, "after")["status"], "done");
    // Resolving a task that is not escalated is refused.
    let (status, body) = server
        .request(
            "POST",
            "/v1/workspaces/wf/plans/stuck/tasks/after/resolve",
            &[
                ("Authorization", reviewer.as_str()),
                ("Content-Type", "application/json"),
            ],
            &json!({"action": "skip"}).to_string(),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_review_loop_stops_after_its_last_cycle_and_escalates() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    let plan = json!({
        "id": "reviewed", "title": "A change the reviewer never likes",
        "tasks": [
            {"id": "feature", "title": "Implement the export", "role": "coder",
             "review": {"reviewer_role": "reviewer", "max_cycles": 2}},
        ],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("reviewed", 90, |p| {
            task(p, "feature")["status"] == "escalated"
        })
        .await;
    let feature = task(&shown, "feature");
    assert_eq!(feature["review"]["label"], "review cycle 2 of 2");
    let escalation = feature["escalation"].as_str().unwrap();
    assert!(
        escalation.contains("review cycle 2 of 2") && escalation.contains("empty input"),
        "{escalation}"
    );
    let reviews = server.typed("task.reviewed.v1").await;
    assert_eq!(reviews.len(), 2, "two reviews, then a person");
    assert!(
        reviews
            .iter()
            .all(|(d, _)| d["verdict"] == "changes_requested")
    );
    // The author got the reviewer's message once, with the cycles left.
    let dispatched = server.typed("task.dispatched.v1").await;
    let rework: Vec<&Value> = dispatched
        .iter()
        .map(|(d, _)| d)
        .filter(|d| d.get("feedback").is_some())
        .collect();
    assert_eq!(rework.len(), 1, "{dispatched:?}");
    assert_eq!(rework[0]["feedback"]["remaining_cycles"], 1);
    assert_eq!(
        rework[0]["feedback"]["message"],
        "add a test for the empty input"
    );
    assert!(fixture.log().contains(&"feedback feature".to_owned()));
    // The reviewer's report sent the coder a message, which its rework run received.
    let sent = server.typed("agent.message.sent.v1").await;
    assert!(
        sent.iter()
            .any(|(d, _)| d["sender"] == "runner-reviewer" && d["recipient"] == "runner-coder"),
        "{sent:?}"
    );
    assert!(
        fixture
            .log()
            .contains(&"message from the reviewer feature".to_owned()),
        "{:?}",
        fixture.log()
    );
    assert_eq!(shown["status"], "running", "the plan waits for a person");
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_plan_is_refused_naming_the_problem_and_nothing_is_appended() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE workspace = 'wf'")
            .fetch_one(&mut server.db().await)
            .await
            .unwrap()
    };
    let before = count().await;
    let cycle = json!({"title": "cycle", "tasks": [
        {"id": "a", "title": "a", "role": "coder", "depends_on": ["b"]},
        {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]},
    ]});
    let (status, body) = server.submit_plan(&cycle).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "dependency_cycle");
    assert_eq!(body["message"], "dependency cycle: a → b → a");
    let unknown = json!({"title": "unknown", "tasks": [
        {"id": "a", "title": "a", "role": "coder", "depends_on": ["ghost"]},
    ]});
    let (status, body) = server.submit_plan(&unknown).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "unknown_dependency");
    assert_eq!(body["pointer"], "/tasks/0/depends_on/0");
    assert!(body["message"].as_str().unwrap().contains("ghost"));
    let role = json!({"title": "role", "tasks": [
        {"id": "a", "title": "a", "role": "astronaut"},
        {"id": "a", "title": "again", "role": "coder"},
    ]});
    let (status, body) = server.submit_plan(&role).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "unknown_role");
    assert_eq!(body["details"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["details"][1]["code"], "duplicate_task");
    let (status, body) = server
        .submit_plan(&json!({"title": "x", "tasks": [], "status": "succeeded"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(count().await, before, "nothing was appended");
    server.stop().await;
}

#[tokio::test]
async fn a_plan_survives_sigkill_of_the_server_mid_task() {
    let fixture = Fixture::new();
    let mut server = fixture.server().await;
    let plan = json!({
        "id": "chain", "title": "Three tasks in a row",
        "tasks": [
            {"id": "first", "title": "Implement the store", "role": "coder"},
            {"id": "slow", "title": "Implement the migration", "role": "coder",
             "depends_on": ["first"], "acceptance": file_check(&["first.txt", "slow.txt"])},
            {"id": "last", "title": "Implement the report", "role": "coder",
             "depends_on": ["slow"]},
        ],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    server
        .wait_plan("chain", 60, |p| task(p, "slow")["status"] == "running")
        .await;
    // Its command is running (it logged its start): kill the server under it.
    for _ in 0..100 {
        if fixture.log().iter().any(|l| l.starts_with("slow ")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill_and_restart().await;
    let shown = server
        .wait_plan("chain", 90, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let log = fixture.log();
    let runs = |id: &str| {
        log.iter()
            .filter(|l| l.starts_with(&format!("{id} ")))
            .count()
    };
    assert_eq!(
        runs("first"),
        1,
        "a completed task does not run again: {log:?}"
    );
    assert_eq!(runs("slow"), 2, "the running task ran again: {log:?}");
    let started = server.typed("task.started.v1").await;
    assert_eq!(of_task(&started, "slow").len(), 2);
    assert_eq!(runs("last"), 1, "{log:?}");
    let completed = server.typed("task.completed.v1").await;
    for id in ["first", "slow", "last"] {
        assert_eq!(of_task(&completed, id).len(), 1, "{id} completed once");
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut server.db().await)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    server.stop().await;
}

#[tokio::test]
async fn task_text_never_reaches_a_shell_and_other_workspaces_plans_answer_missing() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    let trap = |name: &str| fixture.dir.join(name);
    let injected = |name: &str| {
        format!(
            "$(touch {}) `touch {}`",
            trap(name).display(),
            trap(name).display()
        )
    };
    let plan = json!({
        "id": "hostile", "title": injected("title-ran"),
        "tasks": [{
            "id": "t", "title": injected("task-title-ran"), "role": "coder",
            "description": format!("; touch {} #", trap("description-ran").display()),
            "inputs": {"x": injected("input-ran")},
            // No shell: the check gets the text as one argument, a file name that is not there.
            "acceptance": [{"run": ["test", "!", "-e", injected("check-ran")], "timeout_secs": 10}],
        }],
    });
    let (status, made) = server.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("hostile", 60, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    for name in [
        "title-ran",
        "task-title-ran",
        "description-ran",
        "input-ran",
        "check-ran",
    ] {
        assert!(
            !trap(name).exists(),
            "{name}: text from the plan reached a shell"
        );
    }

    // Another workspace's token: the plan answers exactly like a missing one, and nothing is
    // appended.
    server
        .create_workspace_with("other", json!({"kind": "local", "path": "/tmp/other"}))
        .await;
    let (status, made) = server
        .request(
            "POST",
            "/v1/tokens",
            &[AUTH, ("Content-Type", "application/json")],
            &json!({"name": "mallory", "workspace": "other", "scope": "approve"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let mallory = format!("Bearer {}", made["token"].as_str().unwrap());
    let mallory = ("Authorization", mallory.as_str());
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut server.db().await)
        .await
        .unwrap();
    let (missing_status, missing) = server
        .request(
            "GET",
            "/v1/workspaces/other/plans/no-such-plan",
            &[mallory],
            "",
        )
        .await;
    let (status, body) = server
        .request("GET", "/v1/workspaces/other/plans/hostile", &[mallory], "")
        .await;
    assert_eq!((status, missing_status), (404, 404), "{body}");
    assert_eq!(body["code"], missing["code"]);
    let (status, _) = server
        .request("GET", "/v1/workspaces/wf/plans/hostile", &[mallory], "")
        .await;
    assert_eq!(status, 404, "another workspace answers like a missing one");
    for (path, body) in [
        (
            "/v1/workspaces/wf/plans/hostile/cancel",
            json!({"reason": "x"}),
        ),
        (
            "/v1/workspaces/other/plans/hostile/cancel",
            json!({"reason": "x"}),
        ),
        (
            "/v1/workspaces/wf/plans/hostile/tasks/t/resolve",
            json!({"action": "abort"}),
        ),
        (
            "/v1/workspaces/other/plans/hostile/tasks/t/resolve",
            json!({"action": "abort"}),
        ),
    ] {
        let (status, answer) = server
            .request(
                "POST",
                path,
                &[mallory, ("Content-Type", "application/json")],
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    // A read-scoped token of the plan's own workspace may look, not resolve or cancel.
    let (status, made) = server
        .request(
            "POST",
            "/v1/tokens",
            &[AUTH, ("Content-Type", "application/json")],
            &json!({"name": "reader", "workspace": "wf", "scope": "read"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let reader = format!("Bearer {}", made["token"].as_str().unwrap());
    let (status, _) = server
        .request(
            "POST",
            "/v1/workspaces/wf/plans/hostile/cancel",
            &[("Authorization", reader.as_str())],
            "",
        )
        .await;
    assert_eq!(status, 403);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut server.db().await)
        .await
        .unwrap();
    assert_eq!(after, before, "nothing was appended");
    server.stop().await;
}

#[tokio::test]
async fn two_instances_share_a_plan_and_run_each_task_once() {
    let fixture = Fixture::new();
    let server = fixture.server().await;
    let twin = server.twin().await;
    let tasks: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("t{i}"), "title": format!("Implement part {i}"), "role": "coder"}))
        .collect();
    let plan = json!({"id": "shared", "title": "Eight independent tasks", "concurrency": {"global": 8},
                      "tasks": tasks});
    let (status, made) = twin.submit_plan(&plan).await;
    assert_eq!(status, 201, "{made}");
    let shown = server
        .wait_plan("shared", 90, |p| p["status"] != "running")
        .await;
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let log = fixture.log();
    for i in 0..8 {
        let runs = log
            .iter()
            .filter(|l| l.starts_with(&format!("t{i} ")))
            .count();
        assert_eq!(runs, 1, "t{i} ran once: {log:?}");
    }
    let completed = server.typed("task.completed.v1").await;
    assert_eq!(completed.len(), 8);
    // The work was shared: each instance holds at most 4 runs at once, and both ran some.
    let servers: std::collections::BTreeSet<&str> =
        log.iter().filter_map(|l| l.split(' ').nth(3)).collect();
    assert_eq!(servers.len(), 2, "both instances ran tasks: {log:?}");
    let dispatched = server.typed("task.dispatched.v1").await;
    assert_eq!(dispatched.len(), 8, "each task dispatched once");
    assert_eq!(server.typed("plan.finished.v1").await.len(), 1);
    twin.stop().await;
    server.stop().await;
}

/// Long work spreads over instances: a plan of `SWITCHYARD_SPREAD_TASKS` (24) independent
/// one-second tasks, run by 1, 2 and 3 instances on one database and stream, each taking 4 runs
/// at once (`runtime.concurrency`). Work that waits (a model's answer, a build) is bounded by
/// the runs an instance holds, not by the cores, so instances add throughput even on this
/// machine. Prints a table; figures in docs/benchmarks.md. Slow tier:
/// `cargo nextest run -p switchyard --test e2e --run-ignored only --no-capture long_work`.
#[tokio::test]
#[ignore = "a measurement (about 30 s); run explicitly"]
async fn long_work_spreads_over_instances() {
    let tasks: usize = std::env::var("SWITCHYARD_SPREAD_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut rows = Vec::new();
    for instances in 1..=3usize {
        let fixture = Fixture::new();
        let first = fixture.server().await;
        let mut others = Vec::new();
        for _ in 1..instances {
            others.push(first.twin().await);
        }
        let plan = json!({
            "id": "spread", "title": "Independent work",
            "concurrency": {"global": tasks},
            "tasks": (0..tasks)
                .map(|i| json!({"id": format!("t{i}"), "title": format!("Implement part {i}"), "role": "coder"}))
                .collect::<Vec<_>>(),
        });
        let started = std::time::Instant::now();
        let (status, made) = first.submit_plan(&plan).await;
        assert_eq!(status, 201, "{made}");
        let shown = first
            .wait_plan("spread", 120, |p| p["status"] != "running")
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(shown["status"], "succeeded", "{shown:#}");
        let log = fixture.log();
        // Each task ran once, and every instance ran some (the fourth field is its pid).
        assert_eq!(log.len(), tasks, "{log:?}");
        let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in &log {
            *per.entry(line.split(' ').nth(3).unwrap_or("?"))
                .or_default() += 1;
        }
        assert_eq!(per.len(), instances, "every instance ran tasks: {per:?}");
        let shares: Vec<String> = per.values().map(usize::to_string).collect();
        rows.push((instances, elapsed, tasks as f64 / elapsed, shares.join("/")));
        for other in others {
            other.stop().await;
        }
        first.stop().await;
    }
    println!("\n| instances | {tasks} one-second tasks took | tasks/s | runs per instance |");
    println!("| --- | --- | --- | --- |");
    for (n, secs, rate, shares) in &rows {
        println!("| {n} | {secs:.1} s | {rate:.2} | {shares} |");
    }
    // Four runs at once per instance: more instances, more at once.
    assert!(
        rows[2].2 > rows[0].2 * 1.5,
        "3 instances ran faster than 1: {rows:?}"
    );
}
