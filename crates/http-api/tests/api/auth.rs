use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use switchyard_http_api::bootstrap_admin_token;

use crate::{Api, TOKEN};

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn v1_routes_need_a_live_token(pool: PgPool) {
    let api = Api::new(pool.clone()).await;
    api.workspace("demo").await;

    for auth in ["", "Bearer ", "Bearer nope", "Basic abc", TOKEN] {
        let (status, body) = api
            .send("GET", "/v1/workspaces/demo", &[("authorization", auth)], "")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["code"], "unauthorized");
    }
    let (status, _) = api.send("GET", "/v1/workspaces/demo", &[], "").await;
    assert_eq!(status, StatusCode::OK);

    // Health needs no token.
    let (status, body) = api
        .send("GET", "/healthz", &[("authorization", "")], "")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    // Tokens are stored hashed, never in clear.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], TOKEN.as_bytes());
    assert_eq!(stored[0].len(), 32);

    // Changing SWITCHYARD_ADMIN_TOKEN rotates the bootstrap token.
    bootstrap_admin_token(&pool, "sy_another_admin_token_42")
        .await
        .unwrap();
    let (status, _) = api.send("GET", "/v1/workspaces/demo", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token is revoked");
    let (status, _) = api
        .send(
            "GET",
            "/v1/workspaces/demo",
            &[("authorization", "Bearer sy_another_admin_token_42")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(bootstrap_admin_token(&pool, "short").await.is_err());
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn readiness_reports_postgres_and_nats(pool: PgPool) {
    let api = Api::new(pool.clone()).await;
    let (status, body) = api.send("GET", "/readyz", &[], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"postgres": "ok", "nats": "ok"}));

    let without_nats = Api::with_config(pool, Default::default(), false).await;
    let (status, body) = without_nats.send("GET", "/readyz", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["nats"], "not configured");
}
