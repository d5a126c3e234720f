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
    /// Comments on issues and pull requests: (number, body).
    pub comments: Vec<(u64, String)>,
    /// The repository's webhook (id 1): where deliveries go, when set.
    pub hook_url: Option<String>,
    /// The secret deliveries are signed with.
    pub secret: String,
    /// Every delivery attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// One delivery attempt of the webhook.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The attempt's id.
    pub id: u64,
    /// `X-GitHub-Delivery`.
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The exact bytes sent.
    pub payload: Vec<u8>,
    /// What the receiver answered (0: unreachable).
    pub status_code: u16,
    /// Whether it was a redelivery.
    pub redelivery: bool,
    /// When (RFC 3339, UTC).
    pub delivered_at: String,
}

/// `sha256=<hex>` of `body` under `secret`, as GitHub signs deliveries.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a signed delivery to `url` (`http://host:port/path`) over a plain TCP connection;
/// the status, or 0 when nothing answered.
pub async fn post_delivery(
    url: &str,
    secret: &str,
    event: &str,
    guid: &str,
    payload: &[u8],
) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(rest) = url.strip_prefix("http://") else {
        return 0;
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else {
        return 0;
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-GitHub-Event: {event}\r\nX-GitHub-Delivery: {guid}\r\n\
         X-Hub-Signature-256: {}\r\nUser-Agent: GitHub-Hookshot/stand-in\r\n\r\n",
        payload.len(),
        sign(secret.as_bytes(), payload)
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(payload).await.is_err()
    {
        return 0;
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).await.is_err() {
        return 0;
    }
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
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
    let shared = Arc::clone(&repo);
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
        ("GET", r) if r.starts_with("issues/") && r.ends_with("/comments") => {
            let number: u64 = r["issues/".len()..r.len() - "/comments".len()]
                .parse()
                .unwrap_or(0);
            let list: Vec<Value> = repo
                .comments
                .iter()
                .filter(|(n, _)| *n == number)
                .map(|(_, body)| json!({"body": body}))
                .collect();
            Json(Value::Array(list)).into_response()
        }
        ("POST", r) if r.starts_with("issues/") && r.ends_with("/comments") => {
            let number: u64 = r["issues/".len()..r.len() - "/comments".len()]
                .parse()
                .unwrap_or(0);
            let body = body["body"].as_str().unwrap_or_default().to_owned();
            repo.comments.push((number, body.clone()));
            (
                StatusCode::CREATED,
                Json(json!({"id": repo.comments.len(), "body": body})),
            )
                .into_response()
        }
        ("GET", "hooks") => {
            let hooks: Vec<Value> = repo
                .hook_url
                .iter()
                .map(|url| json!({"id": 1, "name": "web", "active": true, "config": {"url": url, "content_type": "json"}}))
                .collect();
            Json(Value::Array(hooks)).into_response()
        }
        ("GET", "hooks/1/deliveries") => {
            let list: Vec<Value> = repo
                .attempts
                .iter()
                .rev()
                .map(|a| json!({"id": a.id, "guid": a.guid, "delivered_at": a.delivered_at,
                                "redelivery": a.redelivery, "status_code": a.status_code,
                                "status": if a.status_code == 0 { "Connection refused".to_owned() } else { a.status_code.to_string() },
                                "event": a.event, "action": null, "duration": 0.1}))
                .collect();
            Json(Value::Array(list)).into_response()
        }
        ("POST", r) if r.starts_with("hooks/1/deliveries/") && r.ends_with("/attempts") => {
            let id: u64 = r["hooks/1/deliveries/".len()..r.len() - "/attempts".len()]
                .parse()
                .unwrap_or(0);
            let (Some(original), Some(url)) = (
                repo.attempts.iter().find(|a| a.id == id).cloned(),
                repo.hook_url.clone(),
            ) else {
                return not_found();
            };
            let secret = repo.secret.clone();
            let state = Arc::clone(&shared);
            // GitHub redelivers asynchronously and answers 202 at once.
            tokio::spawn(async move {
                let status = post_delivery(
                    &url,
                    &secret,
                    &original.event,
                    &original.guid,
                    &original.payload,
                )
                .await;
                let mut repo = state.lock().unwrap_or_else(|e| e.into_inner());
                let id = repo.attempts.len() as u64 + 1;
                repo.attempts.push(Attempt {
                    id,
                    status_code: status,
                    redelivery: true,
                    delivered_at: now(),
                    ..original
                });
            });
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
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

    /// Points the repository's webhook at `url`, signing with `secret`.
    pub fn set_hook(&self, url: &str, secret: &str) {
        let mut repo = self.repo.lock().unwrap_or_else(|e| e.into_inner());
        repo.hook_url = Some(url.to_owned());
        repo.secret = secret.to_owned();
    }

    /// Sends a delivery to the webhook as GitHub would (signed, with a new delivery id) and
    /// records the attempt; returns the delivery id and the status answered (0: unreachable).
    pub async fn deliver(&self, event: &str, payload: &serde_json::Value) -> (String, u16) {
        let guid = uuid::Uuid::new_v4().to_string();
        let bytes = serde_json::to_vec(payload).unwrap_or_default();
        let (url, secret) = {
            let repo = self.repo.lock().unwrap_or_else(|e| e.into_inner());
            (
                repo.hook_url.clone().unwrap_or_default(),
                repo.secret.clone(),
            )
        };
        let status = post_delivery(&url, &secret, event, &guid, &bytes).await;
        let mut repo = self.repo.lock().unwrap_or_else(|e| e.into_inner());
        let id = repo.attempts.len() as u64 + 1;
        repo.attempts.push(Attempt {
            id,
            guid: guid.clone(),
            event: event.to_owned(),
            payload: bytes,
            status_code: status,
            redelivery: false,
            delivered_at: now(),
        });
        (guid, status)
    }

    /// Comments posted so far: (number, body).
    pub fn comments(&self) -> Vec<(u64, String)> {
        self.repo
            .lock()
            .map(|r| r.comments.clone())
            .unwrap_or_default()
    }

    /// Delivery attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.repo
            .lock()
            .map(|r| r.attempts.clone())
            .unwrap_or_default()
    }

    /// The calls so far, as `METHOD /path`.
    pub fn calls(&self) -> Vec<String> {
        self.repo
            .lock()
            .map(|r| r.calls.clone())
            .unwrap_or_default()
    }
}
