use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_http_api::ApiConfig;

use crate::Api;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";
const EVENTS: &str = "/v1/workspaces/demo/events";

fn event(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/tests", "type": "agent.memory.recorded.v1",
        "subject": "agent/tester", "data": {"agent": "tester", "key": id, "value": 1}
    })
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn every_bad_input_is_a_clear_4xx_and_appends_nothing(pool: PgPool) {
    let config = ApiConfig {
        max_event_body_bytes: 64 * 1024,
        ..ApiConfig::default()
    };
    let api = Api::with_config(pool, config, false).await;
    api.workspace("demo").await;
    let before = api.event_count().await;

    let with = |patch: Value| {
        let mut e = event("e-1");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k);
            } else {
                e[k] = v.clone();
            }
        }
        e
    };
    let structured_cases = [
        (
            with(json!({"type": "nothing.happened.v1"})),
            400,
            "unknown_event_type",
            "/type",
        ),
        (
            with(json!({"data": {"agent": "tester"}})),
            422,
            "schema_violation",
            "/data",
        ),
        (
            with(json!({"data": {"agent": "tester", "key": 5, "value": 1}})),
            422,
            "schema_violation",
            "/data/key",
        ),
        (
            with(json!({"source": null})),
            400,
            "invalid_event",
            "/source",
        ),
        (
            with(json!({"subject": null})),
            400,
            "invalid_event",
            "/subject",
        ),
        (
            with(json!({"specversion": "0.3"})),
            400,
            "invalid_event",
            "/specversion",
        ),
        (
            with(json!({"time": "tomorrow"})),
            400,
            "invalid_event",
            "/time",
        ),
        (
            with(json!({"sequence": 12})),
            400,
            "invalid_event",
            "/sequence",
        ),
        (
            with(json!({"workspace": "other"})),
            400,
            "invalid_event",
            "/workspace",
        ),
        (
            with(json!({"data_base64": "aGk="})),
            400,
            "invalid_event",
            "/data_base64",
        ),
        (
            with(json!({"expectedversion": "soon"})),
            400,
            "invalid_event",
            "/expectedversion",
        ),
        (
            with(json!({"expectedversion": 3})),
            409,
            "conflict",
            "/expectedversion",
        ),
        (json!(["not", "an", "object"]), 400, "invalid_event", ""),
    ];
    for (body, status, code, pointer) in structured_cases {
        let (got, error) = api.post_json(EVENTS, STRUCTURED, &body).await;
        assert_eq!(got.as_u16(), status, "{body} -> {error}");
        assert_eq!(error["code"], code, "{body} -> {error}");
        assert_eq!(error["pointer"], pointer, "{body} -> {error}");
    }

    let batch_cases = [
        (json!({"not": "an array"}), 400, "bad_request", Some("")),
        (json!([]), 400, "bad_request", Some("")),
        (
            json!([event("b-1"), with(json!({"type": 5}))]),
            400,
            "invalid_event",
            Some("/1/type"),
        ),
        (
            json!([event("b-1"), with(json!({"data": {}}))]),
            422,
            "schema_violation",
            Some("/1/data"),
        ),
        (
            json!([event("b-1"), event("b-1")]),
            400,
            "bad_request",
            Some("/1/id"),
        ),
        (
            json!([
                event("b-1"),
                with(json!({"id": "b-2", "expectedversion": 7}))
            ]),
            409,
            "conflict",
            Some(""),
        ),
    ];
    for (body, status, code, pointer) in batch_cases {
        let (got, error) = api.post_json(EVENTS, BATCH, &body).await;
        assert_eq!(got.as_u16(), status, "{body} -> {error}");
        assert_eq!(error["code"], code, "{body} -> {error}");
        assert_eq!(error["pointer"].as_str(), pointer, "{body} -> {error}");
    }

    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let raw_cases: Vec<(Headers, String, u16, &str)> = vec![
        (
            vec![("content-type", STRUCTURED)],
            "{oops".into(),
            400,
            "invalid_json",
        ),
        (
            vec![("content-type", "text/plain")],
            "hello".into(),
            415,
            "unsupported_media_type",
        ),
        (vec![], "hello".into(), 415, "unsupported_media_type"),
        (
            vec![
                ("content-type", "text/plain"),
                ("ce-specversion", "1.0"),
                ("ce-source", "/t"),
                ("ce-type", "agent.memory.recorded.v1"),
                ("ce-subject", "agent/x"),
            ],
            "hello".into(),
            415,
            "unsupported_media_type",
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-type", "agent.memory.recorded.v1"),
                ("ce-subject", "agent/x"),
            ],
            r#"{"agent":"a","key":"k","value":1}"#.into(),
            400,
            "invalid_event",
        ),
        (
            vec![("content-type", STRUCTURED)],
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024)),
            413,
            "payload_too_large",
        ),
    ];
    for (headers, body, status, code) in raw_cases {
        let (got, error) = api.send("POST", EVENTS, &headers, body).await;
        assert_eq!(got.as_u16(), status, "{headers:?} -> {error}");
        assert_eq!(error["code"], code, "{headers:?} -> {error}");
    }

    let (status, error) = api
        .post_json("/v1/workspaces/nowhere/events", STRUCTURED, &event("n-1"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");

    assert_eq!(
        api.event_count().await,
        before,
        "no bad request appended anything"
    );
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn structured_binary_and_batch_modes_append(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;

    let (status, single) = api.post_json(EVENTS, STRUCTURED, &event("s-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{single}");
    assert_eq!(single["id"], "s-1");
    assert_eq!(single["duplicate"], false);

    let headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("ce-specversion", "1.0"),
        ("ce-id", "bin-1"),
        ("ce-source", "/tests/caf%C3%A9"),
        ("ce-type", "agent.memory.recorded.v1"),
        ("ce-subject", "agent/tester"),
        ("ce-expectedversion", "1"),
        ("ce-team", "core"),
    ];
    let (status, binary) = api
        .send(
            "POST",
            EVENTS,
            &headers,
            r#"{"agent":"tester","key":"b","value":[1,2]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{binary}");
    assert_eq!(binary["stream_version"], 2);

    let batch = json!([event("m-1"), event("m-2"), event("m-3")]);
    let (status, appended) = api.post_json(EVENTS, BATCH, &batch).await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    let versions: Vec<i64> = appended["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 4, 5]);

    // Retrying the batch appends nothing and answers 200 with the originals.
    let (status, retried) = api.post_json(EVENTS, BATCH, &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        retried["events"][2]["sequence"],
        appended["events"][2]["sequence"]
    );
    assert_eq!(retried["events"][2]["duplicate"], true);
    assert_eq!(api.event_count().await, 1 + 5);

    // Read back: the binary event's attributes survived, percent-decoded.
    let events = api
        .wait_for_events(&format!("{EVENTS}?type=agent.memory.recorded.v1"), 5)
        .await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["s-1", "bin-1", "m-1", "m-2", "m-3"]);
    assert_eq!(events[1]["source"], "/tests/café");
    assert_eq!(events[1]["team"], "core");
    assert_eq!(events[1]["data"]["value"], json!([1, 2]));
    assert_eq!(
        events[1]["dataschema"],
        "urn:switchyard:event:agent.memory.recorded.v1"
    );
    assert_eq!(events[0]["correlationid"], "s-1");
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_event_log_pages_with_a_cursor(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    api.workspace("other").await;
    let batch: Vec<Value> = (0..7).map(|i| event(&format!("p-{i}"))).collect();
    let (status, _) = api.post_json(EVENTS, BATCH, &Value::Array(batch)).await;
    assert_eq!(status, StatusCode::CREATED);

    api.wait_for_events(EVENTS, 8).await;
    let mut after = "0".to_owned();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (status, page) = api
            .send("GET", &format!("{EVENTS}?after={after}&limit=3"), &[], "")
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 3);
        ids.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        after = page["next"].as_str().unwrap().to_owned();
        if ids.len() == 8 {
            break;
        }
    }
    // The workspace's creation event, then the batch in order; nothing from "other".
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert_eq!(
        &ids[1..],
        (0..7).map(|i| format!("p-{i}")).collect::<Vec<_>>()
    );

    let (status, error) = api
        .send("GET", &format!("{EVENTS}?after=garbage"), &[], "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["message"].as_str().unwrap().contains("cursor"));
    let (status, _) = api
        .send("GET", &format!("{EVENTS}?limit=-1"), &[], "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = api
        .send("GET", &format!("{EVENTS}?limit=100000"), &[], "")
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a large limit is capped, not refused"
    );
    assert!(page["events"].as_array().unwrap().len() <= 1000);
}
