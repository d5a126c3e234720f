//! `POST /v1/github/webhook`: signatures, mapping of GitHub's documented payloads, duplicate
//! and concurrent redeliveries, a delivery that failed before commit, hostile bodies.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{Request, StatusCode},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_http_api::MAX_WEBHOOK_BODY;
use switchyard_testkit::sign;
use tower::ServiceExt as _;

use crate::Api;

/// GitHub's documented example secret.
const SECRET: &str = "It's a Secret to Everybody";

fn fixture(event: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/api/fixtures/github/{event}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Api {
    /// Delivers `body` as GitHub would: signed with [`SECRET`].
    async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> (StatusCode, Value) {
        let signature = sign(SECRET.as_bytes(), body);
        self.deliver_signed(event, delivery, body, &signature).await
    }

    async fn deliver_signed(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: &str,
    ) -> (StatusCode, Value) {
        self.send(
            "POST",
            "/v1/github/webhook",
            &[
                ("content-type", "application/json"),
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-hub-signature-256", signature),
                ("authorization", "none"),
            ],
            body.to_vec(),
        )
        .await
    }

    /// A workspace bound to the GitHub repository `owner/repo`.
    async fn github_workspace(&self, id: &str, owner: &str, repo: &str) {
        let body = json!({"id": id, "name": id, "repository": {"kind": "github", "owner": owner, "repo": repo}});
        let (status, body) = self
            .post_json("/v1/workspaces", "application/json", &body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// `(delivery, outcome, reason, redeliveries)` of every recorded delivery.
    async fn deliveries(&self) -> Vec<(String, String, Option<String>, i32)> {
        sqlx::query_as(
            "SELECT delivery_id, outcome, reason, redeliveries FROM github_deliveries ORDER BY received_at",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// `(workspace, type, stream, source, data)` of the events whose id is `id`.
    async fn events_with_id(&self, id: &str) -> Vec<(String, String, String, String, Value)> {
        sqlx::query_as(
            "SELECT workspace, type, stream_id, source, data FROM events WHERE id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn github_event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type LIKE 'github.%'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn each_documented_payload_becomes_its_github_event(pool: PgPool) {
    let api = Api::with_webhook_secret(pool, SECRET).await;
    // GitHub names compare case-insensitively.
    api.github_workspace("widgets", "Acme", "Widgets").await;
    let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
    let branch = "switchyard/0191d2a4-7c1e-7b3a-9f00-3c5e8a1d2b44";
    let commit_stream = format!("github/commit/{sha}");
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "pull_request",
            "github/pr/2",
            json!({"action": "closed", "number": 2, "merged": true, "state": "closed", "branch": branch,
                   "base_branch": "main", "head_sha": sha, "merge_commit_sha": "c4295bd74fb0f4fda03689c3df3f2803b658fd85",
                   "author": "switchyard-bot", "sender": "Codertocat", "title": "Update the README with new information.",
                   "url": "https://github.com/acme/widgets/pull/2", "draft": false}),
        ),
        (
            "pull_request_review",
            "github/pr/2",
            json!({"action": "submitted", "number": 2, "review_id": 237895671, "state": "changes_requested",
                   "body": "Please add a test for the new link.", "author": "Codertocat", "head_sha": sha, "branch": branch,
                   "url": "https://github.com/acme/widgets/pull/2#pullrequestreview-237895671"}),
        ),
        (
            "issue_comment",
            "github/pr/2",
            json!({"action": "created", "number": 2, "on_pull_request": true, "comment_id": 492700400,
                   "body": "Thanks!\n/switchyard approve 0191d2a4-7c1e-7b3a-9f00-3c5e8a1d2b44", "author": "Codertocat",
                   "url": "https://github.com/acme/widgets/pull/2#issuecomment-492700400"}),
        ),
        (
            "pull_request_review_comment",
            "github/pr/2",
            json!({"action": "created", "number": 2, "comment_id": 284312630, "path": "README.md", "line": 1,
                   "body": "Maybe you should use more emoji on this line.", "head_sha": sha, "branch": branch,
                   "url": "https://github.com/acme/widgets/pull/2#discussion_r284312630"}),
        ),
        (
            "check_run",
            &commit_stream,
            json!({"action": "completed", "check_run_id": 128620228, "name": "Octocoders-linter", "status": "completed",
                   "conclusion": "failure", "head_sha": sha, "branch": branch, "pull_requests": [2],
                   "url": "https://github.com/acme/widgets/runs/128620228", "details_url": "https://octocoders.github.io"}),
        ),
        (
            "workflow_run",
            &commit_stream,
            json!({"action": "completed", "run_id": 30433642, "name": "Build", "run_number": 562, "trigger": "push",
                   "status": "completed", "conclusion": "failure", "head_sha": sha, "branch": branch, "pull_requests": [],
                   "url": "https://github.com/acme/widgets/actions/runs/30433642",
                   "logs_url": "https://api.github.com/repos/acme/widgets/actions/runs/30433642/logs"}),
        ),
        (
            "issues",
            "github/issue/1",
            json!({"action": "opened", "number": 1, "title": "Spelling error in the README file", "state": "open",
                   "labels": ["bug"], "author": "Codertocat", "url": "https://github.com/acme/widgets/issues/1",
                   "body": "It looks like you accidently spelled 'commit' with two 't's."}),
        ),
        (
            "push",
            "github/ref/refs/heads/main",
            json!({"ref": "refs/heads/main", "branch": "main", "before": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                   "head_sha": sha, "forced": false, "deleted": false,
                   "commits": [{"id": sha, "message": "Update README.md", "author": "Codertocat"}],
                   "url": "https://github.com/acme/widgets/compare/f95f852bd8fc...ec26c3e57ca3"}),
        ),
    ];
    for (event, stream, expected) in cases {
        let delivery = guid();
        let (status, answer) = api.deliver(event, &delivery, &fixture(event)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{event}: {answer}");
        assert_eq!(
            answer["delivery"]["outcome"], "processed",
            "{event}: {answer}"
        );
        let stored = api.events_with_id(&delivery).await;
        assert_eq!(stored.len(), 1, "{event}");
        let (workspace, ty, stored_stream, source, data) = &stored[0];
        assert_eq!(workspace, "widgets");
        assert_eq!(ty, &format!("github.{event}.v1"));
        assert_eq!(stored_stream, stream, "{event}");
        assert_eq!(source, "/github/acme/widgets");
        assert_eq!(data["delivery_id"], delivery.as_str());
        assert_eq!(data["repository"], "acme/widgets");
        assert_eq!(data["sender"], "Codertocat");
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&data[key], value, "{event}: {key} in {data}");
        }
    }
    assert_eq!(api.github_event_count().await, 8);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_missing_malformed_or_wrong_signature_is_refused_before_parsing(pool: PgPool) {
    let api = Api::with_webhook_secret(pool, SECRET).await;
    api.github_workspace("widgets", "acme", "widgets").await;
    let body = fixture("issues");
    let reserialised =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    assert_ne!(body, reserialised, "the fixture is pretty-printed");
    let good = sign(SECRET.as_bytes(), &body);
    let cases: Vec<(Vec<u8>, Option<String>, &str)> = vec![
        (body.clone(), None, "signature_missing"),
        (body.clone(), Some("sha1=abc".into()), "signature_malformed"),
        (
            body.clone(),
            Some(format!("{}0", &good)),
            "signature_malformed",
        ),
        (
            body.clone(),
            Some(sign(b"another secret", &body)),
            "signature_mismatch",
        ),
        // Valid JSON, same meaning, other bytes: not what was signed.
        (reserialised, Some(good.clone()), "signature_mismatch"),
        // Not even JSON: still a 401, because nothing is parsed before the check.
        (b"{not json".to_vec(), Some(good), "signature_mismatch"),
    ];
    for (body, signature, code) in cases {
        let mut headers = vec![
            ("x-github-event", "issues"),
            ("x-github-delivery", "d-1"),
            ("authorization", "none"),
        ];
        if let Some(signature) = &signature {
            headers.push(("x-hub-signature-256", signature));
        }
        let (status, answer) = api.send("POST", "/v1/github/webhook", &headers, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
    }
    assert!(api.deliveries().await.is_empty());
    assert_eq!(api.github_event_count().await, 0);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn pings_unknown_events_actions_and_repositories_are_recorded_and_ignored(pool: PgPool) {
    let api = Api::with_webhook_secret(pool, SECRET).await;
    api.github_workspace("widgets", "acme", "widgets").await;

    let (status, answer) = api.deliver("ping", &guid(), &fixture("ping")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivery"]["outcome"], "ping");

    let label = json!({"action": "created", "label": {"name": "x"}, "repository": {"name": "widgets", "owner": {"login": "acme"}}});
    let (status, answer) = api
        .deliver("label", &guid(), label.to_string().as_bytes())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["delivery"]["outcome"], "ignored");

    let mut deleted: Value = serde_json::from_slice(&fixture("issues")).unwrap();
    deleted["action"] = json!("deleted");
    let (status, answer) = api
        .deliver("issues", &guid(), deleted.to_string().as_bytes())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(
        answer["delivery"]["reason"]
            .as_str()
            .unwrap()
            .contains("\"deleted\""),
        "{answer}"
    );

    let mut elsewhere: Value = serde_json::from_slice(&fixture("issues")).unwrap();
    elsewhere["repository"]["name"] = json!("gadgets");
    let (status, answer) = api
        .deliver("issues", &guid(), elsewhere.to_string().as_bytes())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer["delivery"]["reason"],
        "no workspace is bound to acme/gadgets"
    );

    let outcomes: Vec<String> = api.deliveries().await.into_iter().map(|d| d.1).collect();
    assert_eq!(outcomes, ["ping", "ignored", "ignored", "ignored"]);
    assert_eq!(api.github_event_count().await, 0);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn redeliveries_append_nothing_even_twenty_at_once(pool: PgPool) {
    let api = Arc::new(Api::with_webhook_secret(pool, SECRET).await);
    api.github_workspace("widgets", "acme", "widgets").await;
    // A second workspace on the same repository gets the same delivery.
    api.github_workspace("widgets-2", "acme", "widgets").await;
    let body = fixture("pull_request");

    let first = guid();
    let (status, answer) = api.deliver("pull_request", &first, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer["delivery"]["workspaces"],
        json!(["widgets", "widgets-2"])
    );
    let (status, again) = api.deliver("pull_request", &first, &body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        again["delivery"]["sequences"],
        answer["delivery"]["sequences"]
    );

    let concurrent = guid();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (api, body, id) = (Arc::clone(&api), body.clone(), concurrent.clone());
        tasks.push(tokio::spawn(async move {
            api.deliver("pull_request", &id, &body).await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        assert!(status.is_success(), "{status}: {answer}");
        if answer["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one copy is processed");
    assert_eq!(api.events_with_id(&first).await.len(), 2);
    assert_eq!(api.events_with_id(&concurrent).await.len(), 2);
    assert_eq!(api.github_event_count().await, 4);
    let redeliveries: Vec<i32> = api.deliveries().await.into_iter().map(|d| d.3).collect();
    assert_eq!(redeliveries, [1, 19]);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_delivery_that_failed_before_commit_is_processed_when_redelivered(pool: PgPool) {
    let api = Api::with_webhook_secret(pool.clone(), SECRET).await;
    api.github_workspace("widgets", "acme", "widgets").await;
    // A fault after the events were written and before the commit.
    sqlx::raw_sql(
        "CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER inject_fault BEFORE UPDATE ON github_deliveries
             FOR EACH ROW EXECUTE FUNCTION inject_fault();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let delivery = guid();
    let body = fixture("issues");
    let (status, answer) = api.deliver("issues", &delivery, &body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert!(api.deliveries().await.is_empty(), "no trace of the failure");
    assert!(api.events_with_id(&delivery).await.is_empty());

    sqlx::raw_sql("DROP TRIGGER inject_fault ON github_deliveries")
        .execute(&pool)
        .await
        .unwrap();
    let (status, answer) = api.deliver("issues", &delivery, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["duplicate"], false);
    assert_eq!(api.events_with_id(&delivery).await.len(), 1);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn oversized_bodies_are_refused_without_being_read_whole(pool: PgPool) {
    let api = Api::with_webhook_secret(pool, SECRET).await;
    let request = |body: Body, length: Option<usize>| {
        let mut request = Request::post("/v1/github/webhook")
            .header("x-github-event", "issues")
            .header("x-github-delivery", "d-big")
            .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)));
        if let Some(length) = length {
            request = request.header("content-length", length.to_string());
        }
        request.body(body).unwrap()
    };

    // Declared too large: answered before a single byte is read (the body never ends).
    let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        api.router
            .clone()
            .oneshot(request(never, Some(MAX_WEBHOOK_BODY + 1))),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Not declared (chunked): reading stops once the limit is passed.
    let pulled = Arc::new(AtomicUsize::new(0));
    let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
    let counter = Arc::clone(&pulled);
    let endless = futures::stream::repeat_with(move || {
        counter.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    });
    let response = api
        .router
        .clone()
        .oneshot(request(Body::from_stream(endless), None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let read = pulled.load(Ordering::SeqCst);
    assert!(
        read <= MAX_WEBHOOK_BODY + 2 * 1024 * 1024,
        "read {read} bytes of an endless body"
    );
    assert!(api.deliveries().await.is_empty());
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn truncated_and_deeply_nested_json_is_a_400_not_a_crash(pool: PgPool) {
    let api = Api::with_webhook_secret(pool, SECRET).await;
    api.github_workspace("widgets", "acme", "widgets").await;
    let full = fixture("issues");
    let truncated = &full[..full.len() / 2];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [truncated, deep.as_bytes()] {
        let (status, answer) = api.deliver("issues", &guid(), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["code"], "invalid_json");
    }
    // Missing or hostile delivery headers, on a valid signature.
    let signature = sign(SECRET.as_bytes(), &full);
    let (status, _) = api
        .deliver_signed("issues", "../../etc", &full, &signature)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let long = "a".repeat(101);
    let (status, _) = api.deliver_signed("issues", &long, &full, &signature).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(api.deliveries().await.is_empty());
    // And the route still works.
    let (status, _) = api.deliver("issues", &guid(), &full).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn without_a_secret_the_route_is_off(pool: PgPool) {
    let api = Api::new(pool).await;
    let body = fixture("ping");
    let (status, answer) = api.deliver("ping", &guid(), &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["code"], "webhooks_disabled");
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn workspace_settings_name_who_may_command_from_github(pool: PgPool) {
    let api = Api::new(pool).await;
    api.github_workspace("widgets", "acme", "widgets").await;
    let (status, shown) = api.send("GET", "/v1/workspaces/widgets", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["settings"]["github_approvers"], json!([]));
    let (status, answer) = api
        .send(
            "PUT",
            "/v1/workspaces/widgets/settings",
            &[("content-type", "application/json")],
            json!({"github_approvers": ["octocat"]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = api
        .send(
            "PUT",
            "/v1/workspaces/widgets/settings",
            &[("content-type", "application/json")],
            json!({"github_approvers": ["not a login!"]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["pointer"], "/github_approvers/0");
    let (_, shown) = api.send("GET", "/v1/workspaces/widgets", &[], "").await;
    assert_eq!(shown["settings"]["github_approvers"], json!(["octocat"]));
}
