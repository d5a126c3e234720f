//! The OpenAPI document: current with `docs/openapi.json`, complete (every route, and only
//! routes, with the answers they really give), served at `GET /openapi.json` over a socket,
//! and true: real answers match the schemas it gives for them.

use std::{collections::BTreeSet, sync::Arc};

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_projections::{AgentState, Projection, ProjectionRunner, Retrospectives};
use switchyard_proposals::ProposalsProjection;

use crate::Api;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

fn document() -> Value {
    serde_json::to_value(switchyard_http_api::openapi()).unwrap()
}

/// The document as checked in: pretty JSON and a final newline.
fn generated() -> String {
    let mut text = serde_json::to_string_pretty(&switchyard_http_api::openapi()).unwrap();
    text.push('\n');
    text
}

#[test]
fn openapi_document_matches_docs_openapi_json() {
    let generated = generated();
    if std::env::var("SWITCHYARD_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(CHECKED_IN, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "docs/openapi.json is stale (first difference at line {}: checked in {:?}, generated {:?}); \
             run `SWITCHYARD_BLESS=1 cargo nextest run -p switchyard-http-api openapi` and commit docs/openapi.json",
            line + 1,
            checked_in.lines().nth(line).unwrap_or("<end>"),
            generated.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

#[test]
fn openapi_document_is_3_1_with_a_bearer_scheme() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Switchyard");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");
    // Operation ids are unique (clients are generated from them).
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        assert!(
            op["tags"].as_array().is_some_and(|t| t.len() == 1),
            "{method} {path} has one tag: {}",
            op["tags"]
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has a summary"
        );
    }
}

/// Every operation of the document: (METHOD, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                found.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    found
}

/// The API as it stood before the router was built from the description: a route that goes
/// missing, or a new one, shows up here and must be added on purpose.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/ui/app.js"),
    ("GET", "/ui/app.css"),
    ("GET", "/v1/session"),
    ("GET", "/v1/workspaces"),
    ("GET", "/v1/workspaces/{ws}/timeline"),
    ("GET", "/v1/workspaces/{ws}/timeline/live"),
    ("GET", "/v1/workspaces/{ws}/timeline/{sequence}"),
    ("GET", "/v1/workspaces/{ws}/agents"),
    ("GET", "/v1/workspaces/{ws}/agents/{name}"),
    ("GET", "/v1/workspaces/{ws}/proposals/{id}/diff"),
    ("POST", "/v1/github/webhook"),
    ("POST", "/v1/github/catch-up"),
    ("POST", "/v1/workspaces"),
    ("GET", "/v1/workspaces/{ws}"),
    ("PUT", "/v1/workspaces/{ws}/settings"),
    ("POST", "/v1/workspaces/{ws}/events"),
    ("GET", "/v1/workspaces/{ws}/events"),
    ("GET", "/v1/schemas"),
    ("GET", "/v1/schemas/{ty}"),
    ("POST", "/v1/workspaces/{ws}/proposals"),
    ("GET", "/v1/workspaces/{ws}/proposals"),
    ("GET", "/v1/workspaces/{ws}/proposals/{id}"),
    ("POST", "/v1/workspaces/{ws}/proposals/{id}/approve"),
    ("POST", "/v1/workspaces/{ws}/proposals/{id}/reject"),
    ("POST", "/v1/workspaces/{ws}/plans"),
    ("GET", "/v1/workspaces/{ws}/plans"),
    ("GET", "/v1/workspaces/{ws}/plans/{id}"),
    ("POST", "/v1/workspaces/{ws}/plans/{id}/cancel"),
    (
        "POST",
        "/v1/workspaces/{ws}/plans/{id}/tasks/{task}/resolve",
    ),
    ("POST", "/v1/workspaces/{ws}/messages"),
    ("GET", "/v1/workspaces/{ws}/messages"),
    ("POST", "/v1/workspaces/{ws}/agents/{agent}/run"),
    ("GET", "/v1/agents"),
    ("PUT", "/v1/agents/{name}"),
    ("GET", "/v1/agents/{name}"),
    ("GET", "/v1/workspaces/{ws}/artifacts"),
    ("GET", "/v1/workspaces/{ws}/artifacts/{name}"),
    ("GET", "/v1/workspaces/{ws}/artifacts/{name}/content"),
    ("POST", "/v1/workspaces/{ws}/retrospectives"),
    ("GET", "/v1/workspaces/{ws}/retrospectives"),
    ("GET", "/v1/workspaces/{ws}/metrics"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens/{id}/revoke"),
    ("GET", "/v1/ops/status"),
    ("GET", "/v1/ops/dead-letters"),
    ("POST", "/v1/ops/dead-letters/{id}/retry"),
    ("POST", "/v1/ops/relay/pause"),
    ("POST", "/v1/ops/relay/resume"),
    ("GET", "/v1/ops/mode"),
    ("PUT", "/v1/ops/mode"),
];

#[test]
fn openapi_document_lists_every_route_and_the_router_has_no_undocumented_one() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in ROUTES"
    );
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not documented"
    );
    // The router is built from `routes!` alone: a plain `.route(` (or a nested router) would
    // serve a path the document does not know.
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            " Router::new(",
            "axum::Router::new(",
            "(Router::new(",
        ] {
            for (n, line) in text.lines().enumerate() {
                assert!(
                    !line.contains(needle) || line.trim_start().starts_with("//"),
                    "{}:{}: `{needle}` adds a route outside `routes!`: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}

/// Only `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, the dashboard's files and the webhook
/// go without a token.
#[test]
fn openapi_document_marks_every_token_route_with_the_bearer_scheme() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let public = [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/",
            "/ui/app.js",
            "/ui/app.css",
        ]
        .contains(&path.as_str())
            || path == switchyard_http_api::WEBHOOK_PATH;
        let security = &op["security"];
        if public {
            assert!(security.is_null(), "{method} {path} needs no token");
        } else {
            assert_eq!(security, &json!([{"bearer": []}]), "{method} {path}");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        }
    }
}

/// The schema of the answer `status` of `method path` (JSON answers only), or `None` when the
/// document does not list that status.
fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Option<Value> {
    let response = &doc["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    if response.is_null() {
        return None;
    }
    let content = response["content"].as_object()?;
    let (_, media) = content.iter().find(|(ty, _)| ty.contains("json"))?;
    Some(media["schema"].clone())
}

/// Validates `body` against a schema of the document, resolving its `#/components/…`
/// references in the document itself.
fn violations(doc: &Value, schema: &Value, body: &Value) -> Vec<String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("the document's schema does not compile: {e}\n{schema}"));
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {:?}", e, e.instance_path().as_str()))
        .collect()
}

/// The schema of the request body of `method path` as `content_type`.
fn request_schema(doc: &Value, method: &str, path: &str, content_type: &str) -> Value {
    let schema = &doc["paths"][path][method.to_lowercase()]["requestBody"]["content"][content_type]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} takes no {content_type} body"
    );
    schema.clone()
}

/// `body`, sent as `content_type` to `method path`, is what the document describes.
fn assert_request_documented(
    doc: &Value,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) {
    let problems = violations(doc, &request_schema(doc, method, path, content_type), body);
    assert!(
        problems.is_empty(),
        "{method} {path}: the document refuses a body the server takes: {problems:?}\n{body}"
    );
}

/// The request bodies that are the data of an event (or part of it) take every example of
/// that event's schema (the catalog's, which the server checks), and refuse what it refuses.
#[test]
fn openapi_request_bodies_take_the_examples_of_their_event_schemas() {
    let doc = document();
    let catalog = switchyard_events::Catalog::builtin().unwrap();
    let examples = |ty: &str| -> Vec<Value> {
        let schema = catalog.get(ty).unwrap_or_else(|| panic!("no schema {ty}"));
        let examples = schema.document()["examples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!examples.is_empty(), "{ty} has examples");
        examples
    };
    let json = "application/json";
    for example in examples("workspace.created.v1") {
        assert_request_documented(&doc, "POST", "/v1/workspaces", json, &example);
    }
    for example in examples("workspace.configured.v1") {
        assert_request_documented(&doc, "PUT", "/v1/workspaces/{ws}/settings", json, &example);
    }
    for example in examples("plan.submitted.v1") {
        assert_request_documented(
            &doc,
            "POST",
            "/v1/workspaces/{ws}/plans",
            json,
            &example["plan"],
        );
    }
    for example in examples("proposal.created.v1") {
        // The draft: what is left once the server-owned fields are taken out.
        let mut draft = example.clone();
        let map = draft.as_object_mut().unwrap();
        for owned in [
            "proposal_id",
            "content_hash",
            "author",
            "status",
            "id",
            "created_at",
        ] {
            map.remove(owned);
        }
        assert_request_documented(&doc, "POST", "/v1/workspaces/{ws}/proposals", json, &draft);
        // A server-owned field is refused by the document as by the server.
        let schema = request_schema(&doc, "POST", "/v1/workspaces/{ws}/proposals", json);
        assert!(!violations(&doc, &schema, &example).is_empty(), "{example}");
    }
    let schema = request_schema(&doc, "POST", "/v1/workspaces", json);
    for refused in [
        json!({"id": "Bad Id", "name": "x", "repository": {"kind": "local", "path": "/r"}}),
        json!({"id": "ok", "name": "x", "repository": {"kind": "local", "path": "/r"}, "extra": 1}),
        json!({"id": "ok", "name": "x", "repository": {"kind": "svn", "url": "x"}}),
        json!({"id": "ok", "name": "x", "repository": {"kind": "local", "path": "relative"}}),
    ] {
        assert!(!violations(&doc, &schema, &refused).is_empty(), "{refused}");
    }
}

/// `body`, answered with `status` to `method path`, is what the document says.
fn assert_documented(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let schema = response_schema(doc, method, path, status.as_u16()).unwrap_or_else(|| {
        panic!("{method} {path} answered {status}, which the document does not list: {body}")
    });
    let problems = violations(doc, &schema, body);
    assert!(
        problems.is_empty(),
        "{method} {path} answered {status} with a body that does not match its schema: {problems:?}\n{body}"
    );
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn openapi_answers_match_their_schemas(pool: PgPool) {
    let api = Api::new(pool).await;
    let doc = document();

    let body = json!({"id": "demo", "name": "Demo", "repository": {"kind": "github", "owner": "acme", "repo": "widgets", "default_branch": "main"}});
    assert_request_documented(&doc, "POST", "/v1/workspaces", "application/json", &body);
    let (status, created) = api
        .post_json("/v1/workspaces", "application/json", &body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_documented(&doc, "POST", "/v1/workspaces", status, &created);

    // The check can fail: the same answer with a wrong type, or without a required field.
    let schema = response_schema(&doc, "POST", "/v1/workspaces", 201).unwrap();
    let mut wrong = created.clone();
    wrong["sequence"] = json!("seven");
    assert!(!violations(&doc, &schema, &wrong).is_empty(), "{wrong}");
    let mut wrong = created.clone();
    wrong.as_object_mut().unwrap().remove("repository");
    assert!(!violations(&doc, &schema, &wrong).is_empty(), "{wrong}");
    let mut wrong = created.clone();
    wrong["repository"]["kind"] = json!("svn");
    assert!(!violations(&doc, &schema, &wrong).is_empty(), "{wrong}");

    let (status, again) = api
        .post_json("/v1/workspaces", "application/json", &body)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_documented(&doc, "POST", "/v1/workspaces", status, &again);

    let (status, read) = api.send("GET", "/v1/workspaces/demo", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_documented(&doc, "GET", "/v1/workspaces/{ws}", status, &read);

    let (status, missing) = api.send("GET", "/v1/workspaces/nope", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_documented(&doc, "GET", "/v1/workspaces/{ws}", status, &missing);
    let error = response_schema(&doc, "GET", "/v1/workspaces/{ws}", 404).unwrap();
    assert!(!violations(&doc, &error, &json!({"message": "no code"})).is_empty());

    let (status, unauthorized) = api
        .send(
            "GET",
            "/v1/workspaces/demo",
            &[("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_documented(&doc, "GET", "/v1/workspaces/{ws}", status, &unauthorized);

    // Proposals: created, listed (through the projection), shown.
    let alice = format!(
        "Bearer {}",
        api.token("alice", "propose", Some("demo")).await
    );
    let draft = json!({
        "title": "Fix the setup link",
        "description": "README links to docs/setup.md, which does not exist.",
        "changes": [{"path": "README.md", "action": "modify", "content": "# Demo\n"}],
        "confidence": 0.8
    });
    let proposals = "/v1/workspaces/{ws}/proposals";
    assert_request_documented(&doc, "POST", proposals, "application/json", &draft);
    let (status, proposal) = api
        .send(
            "POST",
            "/v1/workspaces/demo/proposals",
            &[
                ("content-type", "application/json"),
                ("authorization", &alice),
            ],
            draft.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{proposal}");
    assert_documented(&doc, "POST", proposals, status, &proposal);
    let runner = projections(&api).await;
    let list = list_until(&api, &runner, "/v1/workspaces/demo/proposals", "proposals").await;
    assert_eq!(
        list["proposals"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_documented(&doc, "GET", proposals, StatusCode::OK, &list);
    let id = proposal["id"].as_str().unwrap();
    let (status, shown) = api
        .send(
            "GET",
            &format!("/v1/workspaces/demo/proposals/{id}"),
            &[],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_documented(
        &doc,
        "GET",
        "/v1/workspaces/{ws}/proposals/{id}",
        status,
        &shown,
    );
    let (status, approved) = api
        .send(
            "POST",
            &format!("/v1/workspaces/demo/proposals/{id}/approve"),
            &[],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_documented(
        &doc,
        "POST",
        "/v1/workspaces/{ws}/proposals/{id}/approve",
        status,
        &approved,
    );

    // Events: one posted, then read back as CloudEvents.
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "/test", "type": "task.requested.v1",
        "subject": "task/42", "data": {"task_id": "42", "role": "writer", "title": "Write the docs",
            "requested_by": "test", "inputs": {}}});
    let events_path = "/v1/workspaces/{ws}/events";
    assert_request_documented(
        &doc,
        "POST",
        events_path,
        "application/cloudevents+json",
        &event,
    );
    assert_request_documented(
        &doc,
        "POST",
        events_path,
        "application/cloudevents-batch+json",
        &json!([event]),
    );
    let (status, appended) = api
        .post_json(
            "/v1/workspaces/demo/events",
            "application/cloudevents+json",
            &event,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    assert_documented(
        &doc,
        "POST",
        "/v1/workspaces/{ws}/events",
        status,
        &appended,
    );
    let (status, again) = api
        .post_json(
            "/v1/workspaces/demo/events",
            "application/cloudevents-batch+json",
            &json!([event]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a duplicate: {again}");
    assert_eq!(again["events"][0]["duplicate"], true, "{again}");
    assert_documented(&doc, "POST", "/v1/workspaces/{ws}/events", status, &again);
    let events = api
        .wait_for_events("/v1/workspaces/demo/events?limit=10", 3)
        .await;
    assert!(events.len() >= 3, "{events:?}");
    let (status, page) = api
        .send("GET", "/v1/workspaces/demo/events?limit=10", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_documented(&doc, "GET", "/v1/workspaces/{ws}/events", status, &page);

    // Messages: sent, then listed (through the projection).
    let message = json!({"to": "coach", "content": {"text": "the build is red"}});
    assert_request_documented(
        &doc,
        "POST",
        "/v1/workspaces/{ws}/messages",
        "application/json",
        &message,
    );
    let (status, sent) = api
        .post_json("/v1/workspaces/demo/messages", "application/json", &message)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_documented(&doc, "POST", "/v1/workspaces/{ws}/messages", status, &sent);
    let messages = list_until(&api, &runner, "/v1/workspaces/demo/messages", "messages").await;
    assert_documented(
        &doc,
        "GET",
        "/v1/workspaces/{ws}/messages",
        StatusCode::OK,
        &messages,
    );
    let (status, started) = api
        .send("POST", "/v1/workspaces/demo/retrospectives", &[], "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_documented(
        &doc,
        "POST",
        "/v1/workspaces/{ws}/retrospectives",
        status,
        &started,
    );

    // Tokens, schemas, health.
    let token = json!({"name": "ci", "workspace": "demo", "scope": "read", "expires_in": "30d"});
    assert_request_documented(&doc, "POST", "/v1/tokens", "application/json", &token);
    let (status, made) = api
        .post_json("/v1/tokens", "application/json", &token)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_documented(&doc, "POST", "/v1/tokens", status, &made);
    let (status, tokens) = api.send("GET", "/v1/tokens", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_documented(&doc, "GET", "/v1/tokens", status, &tokens);
    for (path, uri) in [
        ("/v1/schemas", "/v1/schemas"),
        ("/v1/schemas/{ty}", "/v1/schemas/workspace.created.v1"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        (
            "/v1/workspaces/{ws}/artifacts",
            "/v1/workspaces/demo/artifacts",
        ),
        (
            "/v1/workspaces/{ws}/messages",
            "/v1/workspaces/demo/messages",
        ),
        ("/v1/workspaces/{ws}/plans", "/v1/workspaces/demo/plans"),
        (
            "/v1/workspaces/{ws}/retrospectives",
            "/v1/workspaces/demo/retrospectives",
        ),
        ("/v1/workspaces/{ws}/metrics", "/v1/workspaces/demo/metrics"),
    ] {
        let (status, body) = api.send("GET", uri, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_documented(&doc, "GET", path, status, &body);
    }
}

/// Every projection the API reads, with its tables made.
async fn projections(api: &Api) -> ProjectionRunner {
    let runner = ProjectionRunner::new(
        api.store.clone(),
        vec![
            Arc::new(ProposalsProjection) as Arc<dyn Projection>,
            Arc::new(AgentState),
            Arc::new(Retrospectives),
            Arc::new(switchyard_workflows::WorkflowsProjection),
            Arc::new(switchyard_artifacts::ArtifactsProjection),
        ],
        100,
    );
    runner.ensure_schemas().await.unwrap();
    runner
}

/// Applies the projections until `GET uri` lists something under `key` (events become
/// visible only once older transactions of the cluster end, so this polls, bounded).
async fn list_until(api: &Api, runner: &ProjectionRunner, uri: &str, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        runner.step(&ProposalsProjection).await.unwrap();
        runner.step(&AgentState).await.unwrap();
        let (status, list) = api.send("GET", uri, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if list[key].as_array().is_some_and(|l| !l.is_empty())
            || tokio::time::Instant::now() > deadline
        {
            return list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Answers that handlers once built with `json!` and build from typed structs now keep their
/// bytes: `json!` wrote every object with its keys sorted, at every depth.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn openapi_typed_answers_keep_the_bytes_json_gave(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    let runner = projections(&api).await;
    let draft = json!({"title": "t", "description": "d",
        "changes": [{"path": "README.md", "action": "modify", "content": "x"}]});
    let (status, _) = api
        .post_json("/v1/workspaces/demo/proposals", "application/json", &draft)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    list_until(&api, &runner, "/v1/workspaces/demo/proposals", "proposals").await;
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "/test", "type": "task.requested.v1",
        "subject": "task/1", "data": {"task_id": "1", "role": "writer", "title": "t",
            "requested_by": "test", "inputs": {}}});
    for (method, uri, content_type, body) in [
        ("GET", "/v1/tokens", "", String::new()),
        ("GET", "/v1/workspaces/demo/proposals", "", String::new()),
        ("GET", "/v1/workspaces/demo/events", "", String::new()),
        ("GET", "/v1/workspaces/demo/artifacts", "", String::new()),
        ("GET", "/v1/schemas", "", String::new()),
        ("GET", "/readyz", "", String::new()),
        (
            "POST",
            "/v1/workspaces/demo/events",
            "application/cloudevents-batch+json",
            json!([event]).to_string(),
        ),
        (
            "PUT",
            "/v1/workspaces/demo/settings",
            "application/json",
            json!({"github_approvers": ["octocat"]}).to_string(),
        ),
    ] {
        let (status, bytes) = api
            .send_raw(method, uri, &[("content-type", content_type)], body)
            .await;
        assert!(status.is_success(), "{method} {uri}: {status}");
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(text, value.to_string(), "{method} {uri}: keys out of order");
    }
}

/// Fills a path template with `value` for every parameter.
fn fill(path: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        out.push_str(value);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every documented operation is served (never the fallback, never 405), and what it answers
/// to a request with nothing in it is a status the document lists, with a body that matches.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn openapi_every_documented_operation_is_served_as_documented(pool: PgPool) {
    let api = Api::new(pool).await;
    api.workspace("demo").await;
    projections(&api).await;
    let doc = document();
    for (method, path, _) in operations(&doc) {
        let uri = fill(&path, "demo");
        if path.ends_with("/timeline/live") {
            // Server-sent events: the body never ends; the head is what is documented.
            let (status, headers, _) = api.open(&uri, &[]).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(headers["content-type"], "text/event-stream", "{uri}");
            continue;
        }
        let (status, body) = api
            .send(&method, &uri, &[("content-type", "application/json")], "")
            .await;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert_ne!(body["message"], "no such route", "{method} {uri}");
        if body.is_object() || body.is_array() {
            assert_documented(&doc, &method, &path, status, &body);
        } else {
            assert!(
                doc["paths"][&path][method.to_lowercase()]["responses"][status.as_str()]
                    .is_object(),
                "{method} {uri} answered {status}, which the document does not list"
            );
        }
    }
    // A method the document does not give a path is not served there (405).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if item.get(method.to_lowercase()).is_none() {
                let uri = fill(path, "demo");
                let (status, body) = api.send(method, &uri, &[], "").await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not documented: {body}"
                );
            }
        }
    }
    // An undocumented route is the fallback's 404.
    let (status, body) = api.send("GET", "/v1/nothing-here", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "no such route");
}

/// `GET /openapi.json` over a real socket, without a token: 200 and the same document.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn openapi_json_is_served_over_http_without_a_token(pool: PgPool) {
    let api = Api::new(pool).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = api.router.clone();
    let server = tokio::spawn(async move {
        let limits = switchyard_http_api::ServeLimits::default();
        switchyard_http_api::serve(listener, router, &limits, async {
            let _ = stopped.await;
        })
        .await
    });

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::get("/openapi.json")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        response.headers()
    );
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(served, document());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
