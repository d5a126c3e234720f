use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_projections::{Projection, ProjectionRunner};
use switchyard_proposals::ProposalsProjection;

use crate::Api;

const PROPOSALS: &str = "/v1/workspaces/demo/proposals";

fn draft() -> Value {
    json!({
        "title": "Fix the setup link",
        "description": "README links to docs/setup.md, which does not exist.",
        "changes": [{"path": "README.md", "action": "modify", "content": "# Demo\n\nSee docs/install.md.\n"}],
        "rationale": "the link is dead",
        "confidence": 0.8
    })
}

async fn project(api: &Api) -> ProjectionRunner {
    let runner = ProjectionRunner::new(
        api.store.clone(),
        vec![Arc::new(ProposalsProjection) as Arc<dyn Projection>],
        100,
    );
    runner.ensure_schemas().await.unwrap();
    runner
}

/// Applies until the list shows `n` proposals (events wait for older transactions).
async fn list_until(api: &Api, runner: &ProjectionRunner, uri: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        runner.step(&ProposalsProjection).await.unwrap();
        let (status, body) = api.send("GET", uri, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list = body["proposals"].as_array().cloned().unwrap_or_default();
        if list.len() >= n || tokio::time::Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_proposal_is_created_listed_shown_and_approved_once(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    let runner = project(&api).await;

    // Proposed by alice; approved below by the admin token (an author may not approve).
    let alice = format!(
        "Bearer {}",
        api.token("alice", "propose", Some("demo")).await
    );
    let (status, created) = api
        .send(
            "POST",
            PROPOSALS,
            &[
                ("content-type", "application/json"),
                ("authorization", &alice),
            ],
            draft().to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "pending");
    let id = created["id"].as_str().unwrap().to_owned();
    let hash = created["content_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);

    let pending = list_until(&api, &runner, &format!("{PROPOSALS}?status=pending"), 1).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());

    // A stale content hash is refused, and appends nothing.
    let wrong = json!({"content_hash": "0".repeat(64)});
    let (status, error) = api
        .post_json(
            &format!("{PROPOSALS}/{id}/approve"),
            "application/json",
            &wrong,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "content_mismatch");

    // Two approvals at once: one 200, one 409, one event.
    let body = json!({"comment": "looks right", "content_hash": hash});
    let uri = format!("{PROPOSALS}/{id}/approve");
    let (a, b) = tokio::join!(
        api.post_json(&uri, "application/json", &body),
        api.send(
            "POST",
            &uri,
            &[
                ("content-type", "application/json"),
                ("x-switchyard-channel", "cli")
            ],
            body.to_string()
        ),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} / {}",
        a.1,
        b.1
    );
    let approvals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'proposal.approved.v1'")
            .fetch_one(&api.store.pool().clone())
            .await
            .unwrap();
    assert_eq!(approvals, 1);

    // The record names who, how, and exactly what was approved.
    let (status, shown) = api.send("GET", &format!("{PROPOSALS}/{id}"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["status"], "approved");
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    let approval = &history[1];
    assert_eq!(approval["type"], "proposal.approved.v1");
    assert_eq!(approval["data"]["content_hash"], hash.as_str());
    assert_eq!(
        approval["data"]["approved_by"],
        "bootstrap admin (SWITCHYARD_ADMIN_TOKEN)"
    );
    assert!(["api", "cli"].contains(&approval["data"]["channel"].as_str().unwrap()));

    // Decided once: a later rejection is refused.
    let (status, error) = api
        .post_json(
            &format!("{PROPOSALS}/{id}/reject"),
            "application/json",
            &json!({"reason": "no"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "already_decided");
    let approved = list_until(&api, &runner, &format!("{PROPOSALS}?status=approved"), 1).await;
    assert_eq!(
        approved[0]["decided_by"],
        "bootstrap admin (SWITCHYARD_ADMIN_TOKEN)"
    );
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn bad_proposals_and_decisions_are_refused(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    project(&api).await;
    let before = api.event_count().await;

    let mut owned = draft();
    owned["status"] = json!("approved");
    let (status, error) = api.post_json(PROPOSALS, "application/json", &owned).await;
    assert_eq!(
        (status, error["pointer"].clone()),
        (StatusCode::BAD_REQUEST, json!("/status"))
    );

    let mut no_content = draft();
    no_content["changes"][0]
        .as_object_mut()
        .unwrap()
        .remove("content");
    let (status, error) = api
        .post_json(PROPOSALS, "application/json", &no_content)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["pointer"], "/changes/0/content");

    let mut escape = draft();
    escape["changes"][0]["path"] = json!("../etc/passwd");
    let (status, error) = api.post_json(PROPOSALS, "application/json", &escape).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["pointer"]
            .as_str()
            .unwrap()
            .starts_with("/changes/0/path"),
        "{error}"
    );

    let (status, _) = api
        .post_json(
            &format!("{PROPOSALS}/nope/approve"),
            "application/json",
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .send("GET", &format!("{PROPOSALS}?status=maybe"), &[], "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, created) = api.post_json(PROPOSALS, "application/json", &draft()).await;
    let id = created["id"].as_str().unwrap();
    let (status, error) = api
        .post_json(
            &format!("{PROPOSALS}/{id}/reject"),
            "application/json",
            &json!({"reason": " "}),
        )
        .await;
    assert_eq!(
        (status, error["pointer"].clone()),
        (StatusCode::BAD_REQUEST, json!("/reason"))
    );
    assert_eq!(
        api.event_count().await,
        before + 1,
        "only the valid proposal was appended"
    );
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_author_of_a_proposal_may_not_approve_it(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    let bob = format!("Bearer {}", api.token("bob", "approve", Some("demo")).await);
    let as_bob = |content_type| {
        [
            ("content-type", content_type),
            ("authorization", bob.as_str()),
        ]
    };
    let (status, created) = api
        .send(
            "POST",
            PROPOSALS,
            &as_bob("application/json"),
            draft().to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let before = api.event_count().await;
    let (status, error) = api
        .send(
            "POST",
            &format!("{PROPOSALS}/{id}/approve"),
            &as_bob("application/json"),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert_eq!(error["code"], "self_approval");
    assert_eq!(api.event_count().await, before, "nothing appended");
    // Rejecting one's own proposal is allowed (withdrawing it).
    let (status, body) = api
        .send(
            "POST",
            &format!("{PROPOSALS}/{id}/reject"),
            &as_bob("application/json"),
            json!({"reason": "withdrawn"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
