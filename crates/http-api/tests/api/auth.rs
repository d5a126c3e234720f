use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use switchyard_http_api::{ApiConfig, bootstrap_admin_token};

use crate::{Api, TOKEN};

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn v1_routes_need_a_live_token(pool: PgPool) {
    // Every request asks the database (the cache is tested below).
    let config = ApiConfig {
        token_cache_ms: 0,
        ..ApiConfig::default()
    };
    let api = Api::with_config(pool.clone(), config, true).await;
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

/// A valid token is trusted for `token_cache_ms` without a query: a revocation written to the
/// database by someone else (another instance, the CLI) takes effect within that time, one
/// through this instance's API at once. An unknown token is never cached.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn valid_tokens_are_cached_briefly_and_a_revocation_here_clears_them(pool: PgPool) {
    let config = ApiConfig {
        token_cache_ms: 300,
        ..ApiConfig::default()
    };
    let api = Api::with_config(pool.clone(), config, false).await;
    api.workspace("demo").await;
    let reader = api.token("reader", "read", Some("demo")).await;
    let as_reader = format!("Bearer {reader}");
    assert_eq!(status(&api, &as_reader).await, StatusCode::OK);

    // Revoked behind this instance's back: still trusted for a moment, then refused.
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = 'reader'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(status(&api, &as_reader).await, StatusCode::OK, "cached");
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(
        status(&api, &as_reader).await,
        StatusCode::UNAUTHORIZED,
        "expired from the cache"
    );

    // Revoked through this instance's API: refused at once.
    let other = api.token("other", "read", Some("demo")).await;
    let as_other = format!("Bearer {other}");
    assert_eq!(status(&api, &as_other).await, StatusCode::OK);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'other'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (revoked, body) = api
        .send("POST", &format!("/v1/tokens/{id}/revoke"), &[], "")
        .await;
    assert_eq!(revoked, StatusCode::OK, "{body}");
    assert_eq!(status(&api, &as_other).await, StatusCode::UNAUTHORIZED);

    // A token made after a refusal of it works at once: refusals are not cached.
    let unknown = "Bearer sy_not_yet_a_token_0123456789";
    assert_eq!(status(&api, unknown).await, StatusCode::UNAUTHORIZED);
}

async fn status(api: &Api, authorization: &str) -> StatusCode {
    api.send(
        "GET",
        "/v1/workspaces/demo",
        &[("authorization", authorization)],
        "",
    )
    .await
    .0
}
