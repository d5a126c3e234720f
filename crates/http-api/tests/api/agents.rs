//! External agents: registration over HTTP, and the events API holding an agent's source to
//! its declared emits.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_http_api::{AgentBus, ApiConfig};

use crate::Api;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

async fn api(pool: PgPool) -> Api {
    Api::build(pool, ApiConfig::default(), false, |state| {
        state.with_agent_bus(AgentBus {
            builtin: ["git".to_owned()].into(),
            stream: "SWITCHYARD".into(),
            subject_prefix: "sy".into(),
            runtime: Default::default(),
        })
    })
    .await
}

fn manifest(version: &str) -> Value {
    json!({
        "version": version,
        "capabilities": ["review"],
        "subscribes": ["proposal.created.v1"],
        "emits": ["agent.message.sent.v1"],
    })
}

async fn put(api: &Api, name: &str, body: &Value) -> (StatusCode, Value) {
    api.send(
        "PUT",
        &format!("/v1/agents/{name}"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

async fn registrations(api: &Api) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE type = 'agent.registered.v1' AND source = '/api/agents'",
    )
    .fetch_one(api.store.pool())
    .await
    .unwrap()
}

fn message(id: &str, source: &str, ty: &str) -> Value {
    let data = if ty == "agent.message.sent.v1" {
        json!({"message_id": id, "sender": "sizer", "recipient": "*", "type": "note", "content": "hi"})
    } else {
        json!({"agent": "sizer", "key": id, "value": 1})
    };
    json!({
        "specversion": "1.0", "id": id, "source": source, "type": ty,
        "subject": format!("message/{id}"), "causationid": "e-1", "data": data
    })
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn an_agent_registers_once_per_manifest_and_is_shown_with_its_consumers(pool: PgPool) {
    let api = api(pool).await;
    let (status, first) = put(&api, "sizer", &manifest("1.0.0")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["external"], true);
    assert_eq!(first["source"], "/agents/sizer");
    assert_eq!(
        first["consumers"],
        json!([{"type": "proposal.created.v1", "stream": "SWITCHYARD",
                "durable": "sizer--proposal_created_v1",
                "filter_subject": "sy.*.proposal.created.v1"}])
    );

    let (status, again) = put(&api, "sizer", &manifest("1.0.0")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["manifest_hash"], first["manifest_hash"]);
    assert_eq!(
        registrations(&api).await,
        1,
        "the same manifest registers once"
    );

    let (status, newer) = put(&api, "sizer", &manifest("1.1.0")).await;
    assert_eq!(status, StatusCode::OK, "{newer}");
    assert_eq!(newer["version"], "1.1.0");
    assert_ne!(newer["manifest_hash"], first["manifest_hash"]);
    assert_eq!(registrations(&api).await, 2);

    let (status, shown) = api.send("GET", "/v1/agents/sizer", &[], "").await;
    assert_eq!(
        (status, &shown["version"]),
        (StatusCode::OK, &json!("1.1.0"))
    );
    let (status, listed) = api.send("GET", "/v1/agents", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["sizer"]);
    let (status, _) = api.send("GET", "/v1/agents/nobody", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_bad_registration_is_refused_with_the_reason_and_appends_nothing(pool: PgPool) {
    let api = api(pool).await;
    let mut unknown_field = manifest("1");
    unknown_field["produces"] = json!(["x"]);
    let mut reserved = manifest("1");
    reserved["emits"] = json!(["agent.message.sent.v1", "proposal.approved.v1"]);
    let mut unknown_type = manifest("1");
    unknown_type["subscribes"] = json!(["nothing.happened.v1"]);
    let cases = [
        ("git", manifest("1"), 409, "builtin_agent", None),
        ("Bad!", manifest("1"), 400, "bad_request", Some("/name")),
        ("sizer", unknown_field, 400, "invalid_manifest", None),
        ("sizer", json!({"emits": []}), 400, "invalid_manifest", None),
        ("sizer", reserved, 422, "reserved_type", Some("/emits/1")),
        (
            "sizer",
            unknown_type,
            422,
            "unknown_type",
            Some("/subscribes/0"),
        ),
    ];
    for (name, body, status, code, pointer) in cases {
        let (got, error) = put(&api, name, &body).await;
        assert_eq!(got.as_u16(), status, "{name} {body}: {error}");
        assert_eq!(error["code"], code, "{error}");
        if let Some(pointer) = pointer {
            assert_eq!(error["pointer"], pointer, "{error}");
        }
    }
    api.workspace("demo").await;
    let propose = api.token("agent", "propose", Some("demo")).await;
    let (status, _) = api
        .send(
            "PUT",
            "/v1/agents/sizer",
            &[
                ("authorization", &format!("Bearer {propose}")),
                ("content-type", "application/json"),
            ],
            manifest("1").to_string(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "registering needs an admin token"
    );
    assert_eq!(registrations(&api).await, 0);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn only_a_registered_agent_emits_as_itself_and_only_what_it_declared(pool: PgPool) {
    let api = api(pool).await;
    api.workspace("demo").await;
    let events = "/v1/workspaces/demo/events";
    let refused = [
        (
            message("m-1", "/agents/sizer", "agent.message.sent.v1"),
            "no agent sizer is registered",
        ),
        (
            message("m-1", "/agents/git", "agent.message.sent.v1"),
            "built-in agent",
        ),
    ];
    for (event, why) in &refused {
        let (status, error) = api.post_json(events, STRUCTURED, event).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
        assert_eq!(error["code"], "not_your_source");
        assert_eq!(error["pointer"], "/source");
        assert!(error["message"].as_str().unwrap().contains(why), "{error}");
    }

    assert_eq!(
        put(&api, "sizer", &manifest("1")).await.0,
        StatusCode::CREATED
    );
    let before = api.event_count().await;
    let undeclared = message("m-2", "/agents/sizer", "agent.memory.recorded.v1");
    let (status, error) = api.post_json(events, STRUCTURED, &undeclared).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("did not declare")
    );
    // One refused event refuses the batch: nothing of it is appended.
    let batch = json!([
        message("m-3", "/agents/sizer", "agent.message.sent.v1"),
        undeclared,
    ]);
    let (status, error) = api.post_json(events, BATCH, &batch).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert_eq!(error["pointer"], "/1/source");
    assert_eq!(api.event_count().await, before);

    // A declared type goes through; the same id again is the same event (a retry).
    let declared = message("m-4", "/agents/sizer", "agent.message.sent.v1");
    let (status, first) = api.post_json(events, STRUCTURED, &declared).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, retry) = api.post_json(events, STRUCTURED, &declared).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["sequence"], first["sequence"]);
    assert_eq!(api.event_count().await, before + 1);
}
