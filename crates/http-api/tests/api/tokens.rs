//! Tokens through the admin API: made once and shown once, scoped, expiring, revocable.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::Api;

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn tokens_are_created_scoped_listed_and_revoked(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    api.workspace("other").await;
    let (status, made) = api
        .post_json(
            "/v1/tokens",
            "application/json",
            &json!({"name": "reader", "workspace": "demo", "scope": "read", "expires_in": "30d"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("sy_") && token.len() == 67, "{token}");
    assert!(made["expires_at"].is_string());
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    // It reads its workspace, and nothing else; it may not write.
    let (status, _) = api.send("GET", "/v1/workspaces/demo", &auth, "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.send("GET", "/v1/workspaces/other", &auth, "").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another workspace looks missing"
    );
    let (status, _) = api
        .send("POST", "/v1/workspaces/demo/agents/spec/run", &auth, "")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.send("GET", "/v1/tokens", &auth, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Listed without secrets; revoked at once.
    let (status, list) = api.send("GET", "/v1/tokens?workspace=demo", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert!(listed[0].get("token").is_none() && listed[0].get("token_hash").is_none());
    let id = listed[0]["id"].as_str().unwrap();
    let (status, revoked) = api
        .send("POST", &format!("/v1/tokens/{id}/revoke"), &[], "")
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (status, _) = api.send("GET", "/v1/workspaces/demo", &auth, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad requests are refused with pointers.
    for (body, pointer) in [
        (json!({"name": "x", "scope": "root"}), "/scope"),
        (
            json!({"name": "x", "scope": "read", "expires_in": "soon"}),
            "/expires_in",
        ),
        (json!({"name": " ", "scope": "read"}), "/name"),
    ] {
        let (status, error) = api.post_json("/v1/tokens", "application/json", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["pointer"], pointer, "{error}");
    }
    let (status, _) = api
        .post_json(
            "/v1/tokens",
            "application/json",
            &json!({"name": "x", "scope": "read", "workspace": "nowhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_workspace_admin_manages_only_its_workspace(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    api.workspace("other").await;
    let admin = format!(
        "Bearer {}",
        api.token("demo-admin", "admin", Some("demo")).await
    );
    let other = api.token("other-reader", "read", Some("other")).await;
    let auth = [
        ("authorization", admin.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, made) = api
        .send(
            "POST",
            "/v1/tokens",
            &auth,
            json!({"name": "helper", "workspace": "demo", "scope": "propose"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    for body in [
        json!({"name": "x", "workspace": "other", "scope": "read"}),
        json!({"name": "x", "scope": "read"}),
    ] {
        let (status, _) = api
            .send("POST", "/v1/tokens", &auth, body.to_string())
            .await;
        assert!(
            [StatusCode::NOT_FOUND, StatusCode::FORBIDDEN].contains(&status),
            "{status}"
        );
    }
    let (_, list) = api.send("GET", "/v1/tokens", &auth, "").await;
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"other-reader"), "{names:?}");
    // Another workspace's token answers like a missing one.
    let (_, all) = api.send("GET", "/v1/tokens", &[], "").await;
    let other_id = all["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "other-reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .send("POST", &format!("/v1/tokens/{other_id}/revoke"), &auth, "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .send(
            "GET",
            "/v1/workspaces/other",
            &[("authorization", &format!("Bearer {other}"))],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "still valid");
}
