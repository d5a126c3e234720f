use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::Api;

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn workspaces_are_created_once_and_read_back(pool: PgPool) {
    let api = Api::new(pool).await;
    let body = json!({"id": "acme", "name": "Acme", "repository": {"kind": "github", "owner": "acme", "repo": "widgets"}});
    let (status, created) = api
        .post_json("/v1/workspaces", "application/json", &body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["repository"]["repo"], "widgets");

    let (status, again) = api
        .post_json("/v1/workspaces", "application/json", &body)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["code"], "conflict");
    assert_eq!(api.event_count().await, 1);

    let (status, read) = api.send("GET", "/v1/workspaces/acme", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["name"], "Acme");
    assert_eq!(read["sequence"], created["sequence"]);

    let (status, missing) = api.send("GET", "/v1/workspaces/nope", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["code"], "not_found");
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn bad_workspaces_are_refused_with_a_pointer(pool: PgPool) {
    let api = Api::new(pool).await;
    let cases = [
        (
            json!({"name": "x", "repository": {"kind": "local", "path": "/r"}}),
            StatusCode::BAD_REQUEST,
            "/id",
        ),
        (
            json!({"id": "Bad Id", "name": "x", "repository": {"kind": "local", "path": "/r"}}),
            StatusCode::BAD_REQUEST,
            "/id",
        ),
        (
            json!({"id": 7, "name": "x"}),
            StatusCode::BAD_REQUEST,
            "/id",
        ),
        (
            json!({"id": "ok", "name": "x", "repository": {"kind": "local", "path": "/r"}, "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            json!({"id": "ok", "name": 12, "repository": {"kind": "local", "path": "/r"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
        ),
    ];
    for (body, status, pointer) in cases {
        let (got, error) = api
            .post_json("/v1/workspaces", "application/json", &body)
            .await;
        assert_eq!(got, status, "{body} -> {error}");
        assert_eq!(error["pointer"], pointer, "{body} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, error) = api
        .send(
            "POST",
            "/v1/workspaces",
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "invalid_json");
    assert_eq!(api.event_count().await, 0, "nothing appended");
}
