//! HTTP API tests: the router is called in-process (no socket) over a real PostgreSQL
//! database of its own (`#[sqlx::test]`) and, for readiness, the real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod agents;
mod auth;
mod events;
mod github;
mod openapi;
mod proposals;
mod timeline;
mod tokens;
mod workspaces;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt as _;
use serde_json::Value;
use sqlx::PgPool;
use switchyard_events::Catalog;
use switchyard_http_api::{ApiConfig, AppState, bootstrap_admin_token, router};
use switchyard_store::{EventStore, StoreConfig};
use tower::ServiceExt as _;

pub(crate) const TOKEN: &str = "sy_test_admin_token_0123456789";

pub(crate) struct Api {
    router: Router,
    pool: PgPool,
    pub(crate) store: EventStore,
}

impl Api {
    pub(crate) async fn new(pool: PgPool) -> Self {
        Self::with_config(pool, ApiConfig::default(), true).await
    }

    pub(crate) async fn with_config(pool: PgPool, config: ApiConfig, nats: bool) -> Self {
        Self::build(pool, config, nats, |state| state).await
    }

    /// With `POST /v1/github/webhook` on, checking signatures with `secret`.
    pub(crate) async fn with_webhook_secret(pool: PgPool, secret: &str) -> Self {
        let secret = switchyard_http_api::WebhookSecret::new(secret.to_owned().into());
        Self::build(pool, ApiConfig::default(), false, move |state| {
            state.with_webhook_secret(secret)
        })
        .await
    }

    async fn build(
        pool: PgPool,
        config: ApiConfig,
        nats: bool,
        customise: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        bootstrap_admin_token(&pool, TOKEN).await.unwrap();
        let catalog = Arc::new(Catalog::builtin().unwrap());
        let store = EventStore::new(pool.clone(), catalog, &StoreConfig::default());
        let nats = if nats {
            let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
            Some(
                async_nats::connect(url)
                    .await
                    .expect("nats-server must run (scripts/test starts it)"),
            )
        } else {
            None
        };
        Self {
            router: router(customise(AppState::new(store.clone(), nats, config))),
            pool,
            store,
        }
    }

    /// Sends a request with the admin token; `headers` may override or add headers.
    pub(crate) async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self.send_raw(method, uri, headers, body).await;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, json)
    }

    /// [`Api::send`], answering the body's bytes.
    pub(crate) async fn send_raw(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, axum::body::Bytes) {
        let response = self.respond(method, uri, headers, body.into()).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes)
    }

    /// Sends a GET with the admin token and answers the status and headers without reading
    /// the body (a stream that never ends, such as server-sent events), and the body itself.
    pub(crate) async fn open(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, Body) {
        let response = self.respond("GET", uri, headers, Body::empty()).await;
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body)
    }

    /// The router's response, with the admin token unless `headers` names another.
    async fn respond(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> axum::response::Response {
        let mut request = Request::builder().method(method).uri(uri);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            request = request.header("authorization", format!("Bearer {TOKEN}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap()
    }

    pub(crate) async fn post_json(
        &self,
        uri: &str,
        content_type: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        self.send(
            "POST",
            uri,
            &[("content-type", content_type)],
            body.to_string(),
        )
        .await
    }

    pub(crate) async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// GETs `uri` until its page holds `n` events. Events become visible only once every
    /// older transaction of the PostgreSQL cluster has ended (other tests hold some open), so
    /// tests poll, bounded, rather than expect them at once.
    pub(crate) async fn wait_for_events(&self, uri: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, page) = self.send("GET", uri, &[], "").await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.len() >= n || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A new token named `name` with `scope`, for `workspace` (every workspace when `None`).
    pub(crate) async fn token(&self, name: &str, scope: &str, workspace: Option<&str>) -> String {
        let workspace = workspace.map(|w| switchyard_events::Workspace::parse(w).unwrap());
        switchyard_http_api::create_token(
            &self.pool,
            name,
            workspace.as_ref(),
            switchyard_http_api::Scope::parse(scope).unwrap(),
            None,
        )
        .await
        .unwrap()
        .token
    }

    /// Creates workspace `id`.
    pub(crate) async fn workspace(&self, id: &str) {
        let body = serde_json::json!({
            "id": id, "name": format!("Workspace {id}"),
            "repository": {"kind": "local", "path": "/tmp/repo"}
        });
        let (status, body) = self
            .post_json("/v1/workspaces", "application/json", &body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}
