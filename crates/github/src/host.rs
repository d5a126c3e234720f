//! GitHub as a [`GitHost`], through octocrab's REST client: the branch `switchyard/<key>`, one
//! commit with every change (a tree on top of the default branch), and a pull request.
//!
//! Idempotent by the branch: a retry first looks for `switchyard/<key>`; when it exists the
//! commit was made, and only a missing pull request is opened. So a redelivered approval makes
//! no second branch, commit or pull request.

use futures::future::BoxFuture;
use octocrab::Octocrab;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{CommitOutcome, CommitRequest, FileChange, GitError, GitHost};

/// A GitHub (or GitHub Enterprise) API.
#[derive(Debug, Clone)]
pub struct GitHubHost {
    client: Octocrab,
}

fn host_error(e: octocrab::Error) -> GitError {
    match &e {
        octocrab::Error::GitHub { source, .. } => GitError::Host(format!(
            "GitHub answered {}: {}",
            source.status_code, source.message
        )),
        other => GitError::Host(format!("GitHub request failed: {other}")),
    }
}

fn is_not_found(e: &octocrab::Error) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. } if source.status_code == 404)
}

impl GitHubHost {
    /// A client of the API at `api_url` (`https://api.github.com`, or a stand-in in tests).
    pub fn new(api_url: &str, token: SecretString) -> Result<Self, GitError> {
        let client = Octocrab::builder()
            .base_uri(api_url)
            .map_err(host_error)?
            .personal_token(token)
            .build()
            .map_err(host_error)?;
        Ok(Self { client })
    }

    async fn get(&self, route: &str) -> Result<Option<Value>, GitError> {
        match self.client.get::<Value, _, ()>(route, None).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(host_error(e)),
        }
    }

    async fn post(&self, route: &str, body: &Value) -> Result<Value, GitError> {
        self.client
            .post(route, Some(body))
            .await
            .map_err(host_error)
    }

    /// The pull request of `branch`, opening it if there is none.
    async fn pull_request(
        &self,
        repo: &str,
        owner: &str,
        branch: &str,
        base: &str,
        request: &CommitRequest,
    ) -> Result<Option<String>, GitError> {
        let existing = self
            .get(&format!("{repo}/pulls?head={owner}:{branch}&state=all"))
            .await?
            .and_then(|list| list.as_array().and_then(|a| a.first().cloned()));
        if let Some(pr) = existing {
            return Ok(pr["html_url"].as_str().map(str::to_owned));
        }
        let title = request.message.lines().next().unwrap_or(&request.key);
        let pr = self
            .post(
                &format!("{repo}/pulls"),
                &json!({"title": title, "head": branch, "base": base, "body": request.message}),
            )
            .await?;
        Ok(pr["html_url"].as_str().map(str::to_owned))
    }
}

/// One delivery attempt of a webhook, as GitHub lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HookDelivery {
    /// The attempt's id (what a redelivery names).
    pub id: u64,
    /// The delivery's id (`X-GitHub-Delivery`), shared by its redeliveries.
    pub guid: String,
    /// When it was attempted (RFC 3339).
    pub delivered_at: String,
    /// Whether this attempt was a redelivery.
    #[serde(default)]
    pub redelivery: bool,
    /// The HTTP status Switchyard answered (0 when it could not be reached).
    #[serde(default)]
    pub status_code: u16,
    /// `X-GitHub-Event`.
    #[serde(default)]
    pub event: String,
}

/// The deliveries to ask GitHub for again: those Switchyard has no record of (`known`) and
/// that no attempt delivered (no 2xx). One attempt per delivery, the latest.
pub fn to_redeliver<'a>(
    deliveries: &'a [HookDelivery],
    known: &dyn Fn(&str) -> bool,
) -> Vec<&'a HookDelivery> {
    let mut latest: std::collections::BTreeMap<&str, &HookDelivery> = Default::default();
    let mut delivered: std::collections::HashSet<&str> = Default::default();
    for d in deliveries {
        if (200..300).contains(&d.status_code) {
            delivered.insert(&d.guid);
        }
        let entry = latest.entry(&d.guid).or_insert(d);
        if d.id > entry.id {
            *entry = d;
        }
    }
    latest
        .into_values()
        .filter(|d| !delivered.contains(d.guid.as_str()) && !known(&d.guid))
        .collect()
}

fn next_link(headers: &http::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

impl GitHubHost {
    /// Posts `body` on issue or pull request `number` of `repository` (`owner/repo`) once per
    /// `key`: the comment carries the key in a hidden marker, and a retry that finds it posts
    /// nothing.
    pub async fn comment(
        &self,
        repository: &str,
        number: u64,
        key: &str,
        body: &str,
    ) -> Result<(), GitError> {
        let marker = format!("<!-- switchyard:{key} -->");
        let route = format!("/repos/{repository}/issues/{number}/comments");
        let existing = self
            .get(&format!("{route}?per_page=100"))
            .await?
            .unwrap_or(Value::Null);
        let posted = existing.as_array().is_some_and(|comments| {
            comments
                .iter()
                .any(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
        });
        if !posted {
            self.post(&route, &json!({"body": format!("{body}\n\n{marker}")}))
                .await?;
        }
        Ok(())
    }

    /// The ids of `repository`'s webhooks whose URL ends with `path`.
    pub async fn hooks_to(&self, repository: &str, path: &str) -> Result<Vec<u64>, GitError> {
        let hooks = self
            .get(&format!("/repos/{repository}/hooks?per_page=100"))
            .await?
            .unwrap_or(Value::Null);
        Ok(hooks
            .as_array()
            .map(|hooks| {
                hooks
                    .iter()
                    .filter(|h| {
                        h["config"]["url"]
                            .as_str()
                            .is_some_and(|u| u.trim_end_matches('/').ends_with(path))
                    })
                    .filter_map(|h| h["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The delivery attempts of a hook, newest first, back to `since` (RFC 3339) or at most
    /// `max_pages` pages of 100.
    pub async fn deliveries(
        &self,
        repository: &str,
        hook: u64,
        since: &str,
        max_pages: usize,
    ) -> Result<Vec<HookDelivery>, GitError> {
        let mut url = format!("/repos/{repository}/hooks/{hook}/deliveries?per_page=100");
        let mut all = Vec::new();
        for _ in 0..max_pages {
            let response = self.client._get(url.as_str()).await.map_err(host_error)?;
            let status = response.status();
            let next = next_link(response.headers());
            let body = self
                .client
                .body_to_string(response)
                .await
                .map_err(host_error)?;
            if !status.is_success() {
                return Err(GitError::Host(format!(
                    "GitHub answered {status} listing the deliveries of hook {hook}: {body}"
                )));
            }
            let page: Vec<HookDelivery> = serde_json::from_str(&body).map_err(|e| {
                GitError::Host(format!("unreadable list of deliveries of hook {hook}: {e}"))
            })?;
            // RFC 3339 timestamps in UTC compare as strings.
            let older = page.iter().any(|d| d.delivered_at.as_str() < since);
            all.extend(
                page.into_iter()
                    .filter(|d| d.delivered_at.as_str() >= since),
            );
            match next {
                Some(link) if !older => url = link,
                _ => break,
            }
        }
        Ok(all)
    }

    /// Asks GitHub to deliver attempt `attempt` of hook `hook` again.
    pub async fn redeliver(
        &self,
        repository: &str,
        hook: u64,
        attempt: u64,
    ) -> Result<(), GitError> {
        let route = format!("/repos/{repository}/hooks/{hook}/deliveries/{attempt}/attempts");
        let response = self
            .client
            ._post(route.as_str(), None::<&()>)
            .await
            .map_err(host_error)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(GitError::Host(format!(
                "GitHub answered {status} to the redelivery of attempt {attempt} of hook {hook}"
            )))
        }
    }
}

impl GitHost for GitHubHost {
    fn commit<'a>(
        &'a self,
        repository: &'a str,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitOutcome, GitError>> {
        Box::pin(async move {
            let (owner, _) = repository
                .split_once('/')
                .ok_or_else(|| GitError::Host(format!("{repository} is not owner/repo")))?;
            let repo = format!("/repos/{repository}");
            let branch = format!("switchyard/{}", request.key);
            let files: Vec<String> = request
                .changes
                .iter()
                .map(|c| c.path().to_owned())
                .collect();
            let info = self.get(&repo).await?.ok_or_else(|| {
                GitError::Host(format!(
                    "repository {repository} not found (or the token cannot see it)"
                ))
            })?;
            let base = info["default_branch"].as_str().unwrap_or("main").to_owned();

            // Made before? The branch is the record.
            if let Some(reference) = self.get(&format!("{repo}/git/ref/heads/{branch}")).await? {
                let sha = reference["object"]["sha"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let pull_request_url = self
                    .pull_request(&repo, owner, &branch, &base, request)
                    .await?;
                return Ok(CommitOutcome {
                    sha,
                    branch,
                    files,
                    pull_request_url,
                    existing: true,
                });
            }

            let base_ref = self
                .get(&format!("{repo}/git/ref/heads/{base}"))
                .await?
                .ok_or_else(|| GitError::Host(format!("branch {base} not found")))?;
            let base_sha = base_ref["object"]["sha"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let base_commit = self
                .get(&format!("{repo}/git/commits/{base_sha}"))
                .await?
                .ok_or_else(|| GitError::Host(format!("commit {base_sha} not found")))?;
            let base_tree = base_commit["tree"]["sha"]
                .as_str()
                .unwrap_or_default()
                .to_owned();

            let mut entries = Vec::new();
            for change in &request.changes {
                let path = change.path();
                if path.is_empty()
                    || path.starts_with('/')
                    || path
                        .split('/')
                        .any(|s| s == ".." || s == "." || s.is_empty())
                {
                    return Err(GitError::PathOutside(path.to_owned()));
                }
                let exists = self
                    .get(&format!("{repo}/contents/{path}?ref={base}"))
                    .await?
                    .is_some();
                entries.push(match change {
                    FileChange::Create { content, .. } if !exists => {
                        json!({"path": path, "mode": "100644", "type": "blob", "content": content})
                    }
                    FileChange::Create { .. } => return Err(GitError::Conflict(path.to_owned())),
                    FileChange::Modify { content, .. } if exists => {
                        json!({"path": path, "mode": "100644", "type": "blob", "content": content})
                    }
                    FileChange::Delete { .. } if exists => {
                        json!({"path": path, "mode": "100644", "type": "blob", "sha": null})
                    }
                    _ => return Err(GitError::MissingFile(path.to_owned())),
                });
            }
            let tree = self
                .post(
                    &format!("{repo}/git/trees"),
                    &json!({"base_tree": base_tree, "tree": entries}),
                )
                .await?;
            let commit = self
                .post(
                    &format!("{repo}/git/commits"),
                    &json!({"message": request.message, "tree": tree["sha"], "parents": [base_sha]}),
                )
                .await?;
            let sha = commit["sha"].as_str().unwrap_or_default().to_owned();
            self.post(
                &format!("{repo}/git/refs"),
                &json!({"ref": format!("refs/heads/{branch}"), "sha": sha}),
            )
            .await?;
            let pull_request_url = self
                .pull_request(&repo, owner, &branch, &base, request)
                .await?;
            Ok(CommitOutcome {
                sha,
                branch,
                files,
                pull_request_url,
                existing: false,
            })
        })
    }
}
