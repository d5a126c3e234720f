//! GitHub-driven work through the real binary, with a local stand-in for GitHub's API that
//! also sends signed webhook deliveries: the proposal → pull request → merged loop, commands
//! in comments, CI failures, and the catch-up of deliveries missed while the server was down.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::GitHubStandIn;

use crate::{AUTH, Server, spawn_with};

const SECRET: &str = "e2e webhook secret";
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn repository() -> Value {
    json!({"id": 1, "name": "widgets", "full_name": "acme/widgets", "owner": {"login": "acme", "type": "Organization"}})
}

fn user(login: &str) -> Value {
    json!({"login": login, "id": 7, "type": "User"})
}

fn pull_request_closed(number: u64, branch: &str, merged: bool) -> Value {
    json!({
        "action": "closed", "number": number,
        "pull_request": {
            "number": number, "state": "closed", "merged": merged, "title": "Say hello",
            "html_url": format!("https://github.example/acme/widgets/pull/{number}"),
            "user": user("switchyard-bot"),
            "merge_commit_sha": if merged { json!("c4295bd74fb0f4fda03689c3df3f2803b658fd85") } else { Value::Null },
            "head": {"ref": branch, "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"},
            "base": {"ref": "main", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"},
        },
        "repository": repository(), "sender": user("octocat"),
    })
}

fn comment(number: u64, login: &str, body: &str) -> Value {
    json!({
        "action": "created",
        "issue": {"number": number, "title": "Say hello", "pull_request": {"url": "https://api.github.example/x"}},
        "comment": {"id": 1000 + number, "body": body, "user": user(login),
                    "html_url": format!("https://github.example/acme/widgets/pull/{number}#issuecomment-1")},
        "repository": repository(), "sender": user(login),
    })
}

fn check_failed(branch: &str, name: &str) -> Value {
    json!({
        "action": "completed",
        "check_run": {
            "id": 4, "name": name, "status": "completed", "conclusion": "failure",
            "head_sha": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
            "html_url": "https://github.example/acme/widgets/runs/4",
            "details_url": "https://ci.example/builds/4",
            "check_suite": {"head_branch": branch}, "pull_requests": [{"number": 2}],
        },
        "repository": repository(), "sender": user("github-actions[bot]"),
    })
}

impl Server {
    /// SIGKILL, then start again on the same database and stream with `env`, on `listen`.
    async fn restart_with(&mut self, env: &[(&str, &str)], listen: &str) {
        self.child.kill().await.unwrap();
        let (child, address) = spawn_with(
            &self.url,
            &self.nats,
            &self.stream,
            &self.prefix,
            env,
            listen,
        )
        .await;
        self.child = child;
        self.address = address;
    }

    /// The first value `sql` (one `$1` parameter) returns, polled up to 20 s.
    async fn wait_for(&self, sql: &str, param: &str) -> Option<Value> {
        let mut db = self.db().await;
        for _ in 0..200 {
            let row: Option<Value> = sqlx::query_scalar(sql)
                .bind(param)
                .fetch_optional(&mut db)
                .await
                .unwrap();
            if row.is_some() {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn count(&self, sql: &str, param: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(param)
            .fetch_one(&mut self.db().await)
            .await
            .unwrap()
    }

    async fn proposal(&self, id: &str) -> Value {
        self.request(
            "GET",
            &format!("/v1/workspaces/hub/proposals/{id}"),
            &[AUTH],
            "",
        )
        .await
        .1
    }

    async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let mut shown = Value::Null;
        for _ in 0..200 {
            shown = self.proposal(id).await;
            if shown["status"] == status {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shown
    }

    async fn propose(&self, content: &str) -> String {
        let draft = json!({"title": "Say hello", "description": "A friendlier README.",
                           "changes": [{"path": "README.md", "action": "modify", "content": content}]});
        let (status, created) = self
            .request(
                "POST",
                "/v1/workspaces/hub/proposals",
                &[AUTH, JSON],
                &draft.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    async fn github_workspace(&self) {
        let workspace = json!({"id": "hub", "name": "Hub", "repository": {"kind": "github", "owner": "acme", "repo": "widgets"}});
        let (status, body) = self
            .request(
                "POST",
                "/v1/workspaces",
                &[AUTH, JSON],
                &workspace.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

fn github_env(github: &GitHubStandIn, catch_up_hours: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHYARD_GITHUB__API_URL", github.url.clone()),
        ("SWITCHYARD_GITHUB__TOKEN", "test-token".into()),
        ("SWITCHYARD_GITHUB_WEBHOOK_SECRET", SECRET.into()),
        ("SWITCHYARD_GITHUB__CATCH_UP_HOURS", catch_up_hours.into()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn github_merges_commands_and_ci_failures_drive_proposals_and_tasks() {
    let github = GitHubStandIn::start(&["README.md"]).await;
    let mut server = Server::start().await;
    let env = github_env(&github, "0");
    server.restart_with(&borrowed(&env), "127.0.0.1:0").await;
    github.set_hook(
        &format!("http://{}/v1/github/webhook", server.address),
        SECRET,
    );
    server.github_workspace().await;
    let (status, body) = server
        .request(
            "PUT",
            "/v1/workspaces/hub/settings",
            &[AUTH, JSON],
            &json!({"github_approvers": ["OctoCat"]}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The loop: approved over HTTP → pull request #1 → merged on GitHub → `merged`.
    let first = server.propose("# Hello\n").await;
    let reviewer = server.reviewer().await;
    let (status, _) = server
        .request(
            "POST",
            &format!("/v1/workspaces/hub/proposals/{first}/approve"),
            &[("Authorization", &reviewer), JSON],
            "{}",
        )
        .await;
    assert_eq!(status, 200);
    let shown = server.wait_for_status(&first, "committed").await;
    assert_eq!(shown["status"], "committed", "{shown}");
    let branch = format!("switchyard/{first}");
    let (delivery, status) = github
        .deliver("pull_request", &pull_request_closed(1, &branch, true))
        .await;
    assert_eq!(status, 202);
    let shown = server.wait_for_status(&first, "merged").await;
    assert_eq!(shown["status"], "merged", "{shown}");
    let merged = shown["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(merged["type"], "proposal.merged.v1");
    assert_eq!(
        merged["causationid"],
        delivery.as_str(),
        "caused by the delivery"
    );
    assert_eq!(merged["data"]["pull_request"], 1);
    assert_eq!(merged["data"]["merged_by"], "octocat");
    // The list is a projection: it may be a moment behind the stream (other tests' open
    // transactions hold the cluster's read watermark back).
    let mut list = Value::Null;
    for _ in 0..100 {
        list = server
            .request(
                "GET",
                "/v1/workspaces/hub/proposals?status=merged",
                &[AUTH],
                "",
            )
            .await
            .1;
        if list["proposals"][0]["id"] == first.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list["proposals"][0]["id"], first.as_str(), "{list}");

    // A command from someone not allowed: a reply, a record, no decision.
    let second = server.propose("# Hello again\n").await;
    let (_, status) = github
        .deliver(
            "issue_comment",
            &comment(2, "mallory", &format!("/switchyard approve {second}")),
        )
        .await;
    assert_eq!(status, 202);
    let refused = server
        .wait_for(
            "SELECT data FROM events WHERE type = 'github.command.v1' AND data->>'user' = $1",
            "mallory",
        )
        .await
        .expect("the command is recorded");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    let replies = github.comments();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].0, 2);
    assert!(
        replies[0].1.contains("@mallory may not"),
        "{}",
        replies[0].1
    );
    assert_eq!(server.proposal(&second).await["status"], "pending");

    // From an allowed user (logins compare case-insensitively): approved through GitHub,
    // then committed like any approval.
    let (_, status) = github
        .deliver(
            "issue_comment",
            &comment(
                2,
                "octocat",
                &format!("Ship it.\n/switchyard approve {second}"),
            ),
        )
        .await;
    assert_eq!(status, 202);
    let shown = server.wait_for_status(&second, "committed").await;
    assert_eq!(shown["status"], "committed", "{shown}");
    let approval = &shown["history"][1];
    assert_eq!(approval["type"], "proposal.approved.v1");
    assert_eq!(approval["data"]["channel"], "github");
    assert_eq!(approval["data"]["approved_by"], "github:octocat");
    assert_eq!(
        approval["correlationid"], shown["history"][0]["correlationid"],
        "one correlation from proposal to commit"
    );
    assert!(
        github
            .comments()
            .iter()
            .any(|(n, body)| *n == 2 && body.contains("Approved proposal")),
        "{:?}",
        github.comments()
    );

    // A failing check on a Switchyard branch: one remediation task, however often reported.
    let branch = format!("switchyard/{second}");
    for _ in 0..2 {
        let (_, status) = github
            .deliver("check_run", &check_failed(&branch, "test"))
            .await;
        assert_eq!(status, 202);
    }
    let task = server
        .wait_for(
            "SELECT data FROM events WHERE type = 'task.requested.v1' AND data->>'proposal_id' = $1",
            &second,
        )
        .await
        .expect("a task is requested");
    assert_eq!(task["role"], "ci-fixer");
    assert_eq!(task["inputs"]["check"], "test");
    assert_eq!(task["inputs"]["conclusion"], "failure");
    assert_eq!(
        task["inputs"]["urls"],
        json!([
            "https://github.example/acme/widgets/runs/4",
            "https://ci.example/builds/4"
        ])
    );
    assert_eq!(task["pull_request"], 2);
    // Both deliveries were handled before anything else counts.
    server
        .wait_for(
            "SELECT to_jsonb(count(*)) FROM agent_handled h JOIN events e ON e.position = h.event_position
             WHERE h.agent = 'github' AND e.type = 'github.check_run.v1' HAVING count(*) = 2 AND $1 = $1",
            "",
        )
        .await
        .expect("the github agent handled both deliveries");
    assert_eq!(
        server
            .count(
                "SELECT count(*) FROM events WHERE type = 'task.requested.v1' AND data->>'proposal_id' = $1",
                &second
            )
            .await,
        1
    );

    // Its pull request closed without merging: `closed`.
    let (_, status) = github
        .deliver("pull_request", &pull_request_closed(2, &branch, false))
        .await;
    assert_eq!(status, 202);
    let shown = server.wait_for_status(&second, "closed").await;
    assert_eq!(shown["status"], "closed", "{shown}");
    assert_eq!(
        shown["history"].as_array().unwrap().last().unwrap()["data"]["closed_by"],
        "octocat"
    );

    // A retrospective, asked for in a comment.
    let (_, status) = github
        .deliver("issue_comment", &comment(2, "octocat", "/switchyard retro"))
        .await;
    assert_eq!(status, 202);
    let completed = server
        .wait_for(
            "SELECT data FROM events WHERE type = 'retrospective.completed.v1' AND data->>'retrospective_id' LIKE $1",
            "github-%",
        )
        .await;
    assert!(completed.is_some(), "the retrospective ran");

    // A rejection with its reason, and a retry of a dead letter that is not there.
    let third = server.propose("# Hello, third\n").await;
    let missing = uuid::Uuid::now_v7();
    let body = format!("/switchyard reject {third} the tone is wrong\n/switchyard retry {missing}");
    let (_, status) = github
        .deliver("issue_comment", &comment(3, "octocat", &body))
        .await;
    assert_eq!(status, 202);
    let shown = server.wait_for_status(&third, "rejected").await;
    assert_eq!(
        shown["history"][1]["data"]["reason"], "the tone is wrong",
        "{shown}"
    );
    assert_eq!(shown["history"][1]["data"]["channel"], "github");
    let retry = server
        .wait_for(
            "SELECT data FROM events WHERE type = 'github.command.v1' AND data->>'command' = $1",
            "retry",
        )
        .await
        .expect("the retry is recorded");
    assert_eq!(retry["outcome"], "failed", "{retry}");
    assert!(
        retry["message"]
            .as_str()
            .unwrap()
            .contains("no unresolved dead letter"),
        "{retry}"
    );
    // Every agent handled all of this without failing (the spec agent once dead-lettered a
    // rejection of a proposal without a finding): wait for the spec agent's verdict on it.
    server
        .wait_for(
            "SELECT to_jsonb(1) WHERE EXISTS (SELECT 1 FROM agent_handled h JOIN events e ON e.position = h.event_position
                WHERE h.agent = 'spec' AND e.type = 'proposal.rejected.v1' AND e.data->>'proposal_id' = $1)
             OR EXISTS (SELECT 1 FROM dead_letters)",
            &third,
        )
        .await
        .expect("the spec agent handled the rejection");
    let letters: Vec<(String, String)> = sqlx::query_as("SELECT agent, error FROM dead_letters")
        .fetch_all(&mut server.db().await)
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'agent.failed.v1'")
            .fetch_one(&mut server.db().await)
            .await
            .unwrap();
    assert_eq!(failures, 0);
    server.stop().await;
}

#[tokio::test]
async fn deliveries_missed_while_down_are_redelivered_at_start_and_on_demand() {
    let github = GitHubStandIn::start(&["README.md"]).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    github.set_hook(&format!("http://{listen}/v1/github/webhook"), SECRET);
    let mut server = Server::start().await;
    let env = github_env(&github, "72");
    server.restart_with(&borrowed(&env), &listen).await;
    server.github_workspace().await;
    let issue = json!({"action": "opened", "issue": {"number": 9, "title": "Broken link", "state": "open", "user": user("octocat")},
                       "repository": repository(), "sender": user("octocat")});
    let (delivered, status) = github.deliver("issues", &issue).await;
    assert_eq!(status, 202, "delivered while up");

    // Down: GitHub cannot deliver.
    server.child.kill().await.unwrap();
    let (missed, status) = github.deliver("issues", &issue).await;
    assert_eq!(status, 0, "nothing listens");

    // Up again: the catch-up at start asks GitHub to redeliver what never arrived.
    server.restart_with(&borrowed(&env), &listen).await;
    let event = server
        .wait_for("SELECT data FROM events WHERE id = $1", &missed)
        .await
        .expect("the missed delivery arrives");
    assert_eq!(event["number"], 9);
    // The stand-in records the attempt once the answer is in, just after the commit.
    let mut redeliveries = Vec::new();
    for _ in 0..50 {
        redeliveries = github
            .attempts()
            .into_iter()
            .filter(|a| a.redelivery)
            .collect();
        if !redeliveries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redeliveries.len(), 1, "only the missed one is redelivered");
    assert_eq!(redeliveries[0].guid, missed);
    assert_eq!(redeliveries[0].status_code, 202);
    assert_eq!(
        server
            .count("SELECT count(*) FROM events WHERE id = $1", &delivered)
            .await,
        1
    );

    // On demand: down again, a push is missed; the catch-up at start is off this time.
    server.child.kill().await.unwrap();
    let push = json!({"ref": "refs/heads/main", "before": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                      "after": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "commits": [],
                      "repository": repository(), "sender": user("octocat")});
    let (missed_push, status) = github.deliver("push", &push).await;
    assert_eq!(status, 0);
    let env = github_env(&github, "0");
    server.restart_with(&borrowed(&env), &listen).await;
    let (status, report) = server
        .request("POST", "/v1/github/catch-up", &[AUTH], "")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["hooks"], 1, "{report}");
    assert_eq!(report["redelivered"], json!([missed_push]), "{report}");
    server
        .wait_for("SELECT data FROM events WHERE id = $1", &missed_push)
        .await
        .expect("the missed push arrives");
    server.stop().await;
}
