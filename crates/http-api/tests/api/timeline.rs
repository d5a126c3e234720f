//! The timeline (newest first, narrowed, one event with its chain), its live tail over
//! server-sent events, the session and workspace list, and the dashboard's files.

use std::time::Duration;

use axum::{body::Body, http::StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{Api, TOKEN};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

fn event(id: &str, source: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": source, "type": "agent.memory.recorded.v1",
        "subject": "agent/tester", "data": {"agent": "tester", "key": id, "value": 1}
    })
}

/// Posts `n` events to `workspace` in one batch, sources alternating `/tests/a`, `/tests/b`.
async fn post_batch(api: &Api, workspace: &str, prefix: &str, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| {
            let source = if i % 2 == 0 { "/tests/a" } else { "/tests/b" };
            event(&format!("{prefix}-{i}"), source)
        })
        .collect();
    let (status, body) = api
        .post_json(
            &format!("/v1/workspaces/{workspace}/events"),
            BATCH,
            &json!(batch),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn sequences(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect()
}

/// Every page of `uri` (newest first), following `older`.
async fn all_pages(api: &Api, uri: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let sep = if uri.contains('?') { '&' } else { '?' };
        let page_uri = match before {
            Some(b) => format!("{uri}{sep}before={b}"),
            None => uri.to_owned(),
        };
        let (status, page) = api.send("GET", &page_uri, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["older"].as_i64() {
            Some(b) => before = Some(b),
            None => return out,
        }
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_timeline_pages_newest_first_without_gaps_or_repeats_and_narrows(pool: PgPool) {
    let api = Api::with_config(pool, Default::default(), false).await;
    api.workspace("demo").await;
    api.workspace("elsewhere").await;
    post_batch(&api, "demo", "d", 25).await;
    post_batch(&api, "elsewhere", "x", 5).await;
    // The workspace.created.v1 and 25 events.
    let log = api
        .wait_for_events("/v1/workspaces/demo/events?limit=1000", 26)
        .await;
    let mut expected = sequences(&log);
    expected.reverse();

    let pages = all_pages(&api, "/v1/workspaces/demo/timeline?limit=7").await;
    assert_eq!(
        sequences(&pages),
        expected,
        "newest first, every event once"
    );
    assert!(pages.iter().all(|e| e["workspace"] == "demo"));

    let (_, first) = api
        .send("GET", "/v1/workspaces/demo/timeline?limit=7", &[], "")
        .await;
    assert_eq!(first["events"].as_array().unwrap().len(), 7);
    assert_eq!(first["older"], first["events"][6]["sequence"]);
    assert!(first["live_from"].as_str().unwrap().contains('.'));

    let a = all_pages(&api, "/v1/workspaces/demo/timeline?limit=4&source=/tests/a").await;
    assert_eq!(a.len(), 13);
    assert!(a.iter().all(|e| e["source"] == "/tests/a"));
    let created = all_pages(
        &api,
        "/v1/workspaces/demo/timeline?type=workspace.created.v1",
    )
    .await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["type"], "workspace.created.v1");

    let (status, body) = api
        .send(
            "GET",
            "/v1/workspaces/demo/timeline?type=not%20a%20type",
            &[],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = api
        .send("GET", "/v1/workspaces/nowhere/timeline", &[], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A type or a source is looked for in a bounded window of positions per page: with events
/// far apart (positions restarted 2.5 windows on), a narrowed page may come back short or
/// empty but says where to go on, and following it finds every match once, in order.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_narrowed_timeline_looks_a_window_back_per_page_and_says_where_to_go_on(pool: PgPool) {
    let window = switchyard_store::TIMELINE_WINDOW;
    let api = Api::with_config(pool.clone(), Default::default(), false).await;
    api.workspace("demo").await;
    post_batch(&api, "demo", "low", 4).await;
    let jump = window * 5 / 2;
    sqlx::query(&format!(
        "ALTER TABLE events ALTER COLUMN position RESTART WITH {jump}"
    ))
    .execute(&pool)
    .await
    .unwrap();
    post_batch(&api, "demo", "high", 4).await;
    let log = api
        .wait_for_events("/v1/workspaces/demo/events?limit=1000", 9)
        .await;
    let mut a: Vec<i64> = log
        .iter()
        .filter(|e| e["source"] == "/tests/a")
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    a.reverse();
    assert_eq!(a.len(), 4);
    assert!(a[1] >= jump && a[2] < window, "two high, two low: {a:?}");

    // The first page finds the two high ones, not the low ones a window and more below.
    let (_, first) = api
        .send(
            "GET",
            "/v1/workspaces/demo/timeline?source=/tests/a&limit=10",
            &[],
            "",
        )
        .await;
    assert_eq!(sequences(first["events"].as_array().unwrap()), a[..2]);
    let older = first["older"].as_i64().expect("there is more further back");
    assert!(older > 1 && older < a[1], "{first}");
    // The next window holds nothing of the workspace: an empty page, still going on.
    let (_, empty) = api
        .send(
            "GET",
            &format!("/v1/workspaces/demo/timeline?source=/tests/a&limit=10&before={older}"),
            &[],
            "",
        )
        .await;
    assert_eq!(empty["events"], json!([]), "{empty}");
    assert!(empty["older"].as_i64().is_some(), "{empty}");
    // Followed to the end: each match once, newest first, and then no cursor.
    let all = all_pages(
        &api,
        "/v1/workspaces/demo/timeline?source=/tests/a&limit=10",
    )
    .await;
    assert_eq!(sequences(&all), a);
    // The whole workspace and a correlation walk their own indexes: no window.
    let (_, whole) = api
        .send("GET", "/v1/workspaces/demo/timeline?limit=100", &[], "")
        .await;
    assert_eq!(whole["events"].as_array().unwrap().len(), 9);
    assert_eq!(whole["older"], Value::Null);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn one_event_comes_with_its_correlation_to_draw_the_causation_chain(pool: PgPool) {
    let api = Api::with_config(pool, Default::default(), false).await;
    api.workspace("demo").await;
    api.workspace("elsewhere").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut root = event("root", "/tests/a");
    root["correlationid"] = json!("corr-1");
    root["traceparent"] = json!(traceparent);
    let mut child = event("child", "/tests/b");
    child["correlationid"] = json!("corr-1");
    child["causationid"] = json!("root");
    let mut grandchild = event("grandchild", "/tests/a");
    grandchild["correlationid"] = json!("corr-1");
    grandchild["causationid"] = json!("child");
    let unrelated = event("unrelated", "/tests/a");
    for e in [&root, &child, &grandchild, &unrelated] {
        let (status, body) = api
            .post_json("/v1/workspaces/demo/events", STRUCTURED, e)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, other) = api
        .post_json(
            "/v1/workspaces/elsewhere/events",
            STRUCTURED,
            &event("other", "/tests/a"),
        )
        .await;
    api.wait_for_events("/v1/workspaces/demo/events", 5).await;

    let correlated = all_pages(&api, "/v1/workspaces/demo/timeline?correlation=corr-1").await;
    let ids: Vec<&str> = correlated
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["grandchild", "child", "root"]);

    let child_seq = correlated[1]["sequence"].as_i64().unwrap();
    let (status, detail) = api
        .send(
            "GET",
            &format!("/v1/workspaces/demo/timeline/{child_seq}"),
            &[],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["event"]["id"], "child");
    let chain: Vec<(&str, Option<&str>)> = detail["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["causationid"].as_str()))
        .collect();
    assert_eq!(
        chain,
        [
            ("root", None),
            ("child", Some("root")),
            ("grandchild", Some("child"))
        ],
        "oldest first, each naming its cause"
    );
    assert_eq!(detail["chain_complete"], true);
    assert_eq!(
        detail["trace_id"],
        Value::Null,
        "the child has no traceparent"
    );
    let root_seq = correlated[2]["sequence"].as_i64().unwrap();
    let (_, detail) = api
        .send(
            "GET",
            &format!("/v1/workspaces/demo/timeline/{root_seq}"),
            &[],
            "",
        )
        .await;
    assert_eq!(detail["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // Another workspace's event is not found through this one; neither is nonsense.
    let other_seq = other["sequence"].as_i64().unwrap();
    for path in [
        format!("/v1/workspaces/demo/timeline/{other_seq}"),
        "/v1/workspaces/demo/timeline/999999".to_owned(),
        "/v1/workspaces/demo/timeline/abc".to_owned(),
    ] {
        let (status, body) = api.send("GET", &path, &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
}

/// Reads server-sent events from `body` until `n` `event` frames came (or 30 s passed);
/// answers their (id, sequence, source).
async fn read_events(body: &mut Body, buffer: &mut String, n: usize) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        while let Some(cut) = buffer.find("\n\n") {
            let block: String = buffer.drain(..cut + 2).collect();
            let mut kind = "";
            let (mut id, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = if v == "event" { "event" } else { "other" };
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if kind == "event" {
                let e: Value = serde_json::from_str(&data).unwrap();
                out.push((
                    id,
                    e["sequence"].as_i64().unwrap(),
                    e["source"].as_str().unwrap().to_owned(),
                ));
            }
        }
        if out.len() >= n {
            break;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events within 30 s: {out:?}", out.len()))
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    out
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_live_tail_hands_over_from_a_page_and_resumes_from_the_last_id(pool: PgPool) {
    let api = Api::with_config(pool, Default::default(), false).await;
    api.workspace("demo").await;
    api.workspace("elsewhere").await;
    post_batch(&api, "demo", "before", 3).await;
    api.wait_for_events("/v1/workspaces/demo/events", 4).await;
    let (_, page) = api
        .send("GET", "/v1/workspaces/demo/timeline?limit=2", &[], "")
        .await;
    let live_from = page["live_from"].as_str().unwrap().to_owned();
    let shown = sequences(page["events"].as_array().unwrap());

    let (status, headers, mut body) = api
        .open(
            &format!("/v1/workspaces/demo/timeline/live?after={live_from}"),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    // Events arrive in several commits, with another workspace's in between.
    for round in 0..4 {
        post_batch(&api, "demo", &format!("r{round}"), 5).await;
        post_batch(&api, "elsewhere", &format!("r{round}"), 2).await;
    }
    let mut buffer = String::new();
    let got = read_events(&mut body, &mut buffer, 20).await;
    let seqs: Vec<i64> = got.iter().map(|(_, s, _)| *s).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, each once");
    assert!(
        seqs.iter().all(|s| !shown.contains(s)),
        "nothing of the page again"
    );
    let log = api
        .wait_for_events("/v1/workspaces/demo/events?limit=1000", 24)
        .await;
    let newer: Vec<i64> = sequences(&log)
        .into_iter()
        .filter(|s| *s > shown[0])
        .collect();
    assert_eq!(seqs, newer, "exactly the workspace's events after the page");

    // A reconnect with the tenth id gets the eleventh on, and what comes after.
    drop(body);
    let (status, _, mut body) = api
        .open(
            "/v1/workspaces/demo/timeline/live",
            &[("last-event-id", got[9].0.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut buffer = String::new();
    let again = read_events(&mut body, &mut buffer, 10).await;
    assert_eq!(again, got[10..].to_vec());
    post_batch(&api, "demo", "late", 1).await;
    let late = read_events(&mut body, &mut buffer, 1).await;
    assert!(late[0].1 > got[19].1, "then the next one, nothing repeated");

    // Narrowed to a source.
    let (_, _, mut body) = api
        .open(
            &format!("/v1/workspaces/demo/timeline/live?after={live_from}&source=/tests/b"),
            &[],
        )
        .await;
    let mut buffer = String::new();
    let b = read_events(&mut body, &mut buffer, 8).await;
    let expected: Vec<_> = got
        .iter()
        .filter(|(_, _, source)| source == "/tests/b")
        .cloned()
        .collect();
    assert_eq!(b, expected, "only /tests/b's, in order");

    let (status, _, _) = api
        .open("/v1/workspaces/demo/timeline/live?after=nonsense", &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_session_says_what_a_token_may_do_and_lists_only_its_workspaces(pool: PgPool) {
    let api = Api::with_config(pool, Default::default(), false).await;
    api.workspace("demo").await;
    api.workspace("other").await;
    let (status, me) = api.send("GET", "/v1/session", &[], "").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["scope"], "admin");
    assert_eq!(
        me["can"],
        json!({"read": true, "propose": true, "approve": true, "admin": true, "ops": true})
    );
    let (_, list) = api.send("GET", "/v1/workspaces", &[], "").await;
    let ids: Vec<&str> = list["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "other"]);

    let reader = api.token("watcher", "read", Some("demo")).await;
    let auth = format!("Bearer {reader}");
    let (_, me) = api
        .send("GET", "/v1/session", &[("authorization", &auth)], "")
        .await;
    assert_eq!(me["name"], "watcher");
    assert_eq!(me["workspace"], "demo");
    assert_eq!(
        me["can"],
        json!({"read": true, "propose": false, "approve": false, "admin": false, "ops": false})
    );
    let (_, list) = api
        .send("GET", "/v1/workspaces", &[("authorization", &auth)], "")
        .await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1);
    assert_eq!(list["workspaces"][0]["id"], "demo");
    let (status, _) = api
        .send(
            "GET",
            "/v1/workspaces/other/timeline",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another workspace looks missing"
    );
    let (status, _) = api
        .send(
            "GET",
            "/v1/session",
            &[("authorization", "Bearer sy_nope_0123456789abcdef")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_dashboard_files_need_no_token_and_forbid_inline_and_foreign_code(pool: PgPool) {
    let api = Api::with_config(pool, Default::default(), false).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (status, headers, body) = api
            .open(path, &[("authorization", "Bearer not-a-token")])
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(!bytes.is_empty());
        let (status, _, _) = api.open(path, &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
    }
    let (_, _, body) = api.open("/", &[]).await;
    let html = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(!html.contains(TOKEN));
}
