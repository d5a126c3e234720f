//! A local stand-in for the parts of GitHub's REST API that Switchyard calls (these machines
//! cannot reach GitHub). It keeps a repository's state in memory and records every call, so a
//! test can assert on the calls and their order.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::any,
};
use serde_json::{Value, json};

/// The in-memory repository `owner/repo` with default branch `main`.
#[derive(Debug, Default)]
pub struct Repo {
    /// Files on `main`.
    pub files: BTreeSet<String>,
    /// Branch → commit sha.
    pub refs: BTreeMap<String, String>,
    /// Commits made through the API: sha → message.
    pub commits: BTreeMap<String, String>,
    /// Pull requests: (head branch, html url).
    pub pulls: Vec<(String, String)>,
    /// Every call, as `METHOD /path`.
    pub calls: Vec<String>,
}

/// The running stand-in.
#[derive(Debug, Clone)]
pub struct GitHubStandIn {
    /// Its base URL, for octocrab's `base_uri`.
    pub url: String,
    /// Its state.
    pub repo: Arc<Mutex<Repo>>,
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

fn sha() -> String {
    format!("{}00000000", uuid::Uuid::new_v4().simple())
}

async fn handle(
    State(repo): State<Arc<Mutex<Repo>>>,
    method: Method,
    uri: Uri,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    body: Option<Json<Value>>,
) -> Response {
    let mut repo = repo.lock().unwrap_or_else(|e| e.into_inner());
    repo.calls.push(format!("{method} {}", uri.path()));
    let rest = rest.trim_start_matches('/');
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    let query = query.unwrap_or_default();
    match (method.as_str(), rest) {
        ("GET", "") => {
            Json(json!({"default_branch": "main", "full_name": "acme/widgets"})).into_response()
        }
        ("GET", r) if r.starts_with("git/ref/heads/") => {
            let branch = &r["git/ref/heads/".len()..];
            let main = (branch == "main").then(|| "a".repeat(40));
            match repo.refs.get(branch).cloned().or(main) {
                Some(sha) => Json(json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}})).into_response(),
                None => not_found(),
            }
        }
        ("GET", r) if r.starts_with("git/commits/") => {
            Json(json!({"sha": &r["git/commits/".len()..], "tree": {"sha": "b".repeat(40)}}))
                .into_response()
        }
        ("GET", r) if r.starts_with("contents/") => {
            if repo.files.contains(&r["contents/".len()..]) {
                Json(json!({"type": "file", "path": &r["contents/".len()..]})).into_response()
            } else {
                not_found()
            }
        }
        ("POST", "git/trees") => (StatusCode::CREATED, Json(json!({"sha": sha()}))).into_response(),
        ("POST", "git/commits") => {
            let sha = sha();
            let message = body["message"].as_str().unwrap_or_default().to_owned();
            repo.commits.insert(sha.clone(), message);
            (StatusCode::CREATED, Json(json!({"sha": sha}))).into_response()
        }
        ("POST", "git/refs") => {
            let name = body["ref"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("refs/heads/")
                .to_owned();
            let sha = body["sha"].as_str().unwrap_or_default().to_owned();
            repo.refs.insert(name, sha);
            (StatusCode::CREATED, Json(json!({"ref": body["ref"]}))).into_response()
        }
        ("GET", "pulls") => {
            let head = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("head="))
                .map(|h| h.split_once(':').map_or(h, |(_, b)| b).replace("%2F", "/"))
                .unwrap_or_default();
            let list: Vec<Value> = repo
                .pulls
                .iter()
                .filter(|(branch, _)| *branch == head)
                .map(|(branch, url)| json!({"html_url": url, "head": {"ref": branch}}))
                .collect();
            Json(Value::Array(list)).into_response()
        }
        ("POST", "pulls") => {
            let number = repo.pulls.len() + 1;
            let url = format!("https://github.example/acme/widgets/pull/{number}");
            let head = body["head"].as_str().unwrap_or_default().to_owned();
            repo.pulls.push((head, url.clone()));
            (
                StatusCode::CREATED,
                Json(json!({"number": number, "html_url": url})),
            )
                .into_response()
        }
        _ => not_found(),
    }
}

impl GitHubStandIn {
    /// Starts it on a free loopback port, holding `files` on `main` of `acme/widgets`.
    pub async fn start(files: &[&str]) -> Self {
        let repo = Arc::new(Mutex::new(Repo {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            ..Repo::default()
        }));
        let app = Router::new()
            .route(
                "/repos/acme/widgets",
                any(|s, m, u, q, b| handle(s, m, u, Path(String::new()), q, b)),
            )
            .route("/repos/acme/widgets/{*rest}", any(handle))
            .with_state(Arc::clone(&repo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, repo }
    }

    /// The calls so far, as `METHOD /path`.
    pub fn calls(&self) -> Vec<String> {
        self.repo
            .lock()
            .map(|r| r.calls.clone())
            .unwrap_or_default()
    }
}
