//! The git agent: commits approved proposals through a [`GitHost`] (local git, or GitHub with a
//! branch and a pull request), after checking that the
//! proposal's content is still exactly what was approved. Emits `git.commit.v1` or
//! `git.commit_failed.v1` (with a reason a person can act on) on the proposal's stream.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_events::{EventType, RecordedEvent};
use switchyard_github::{CommitRequest, FileChange, GitError, GitHost};
use switchyard_proposals::{Action, Change, content_hash, stream};
use tracing::Instrument as _;

/// The agent.
pub struct GitAgent {
    manifest: Manifest,
    local: Arc<dyn GitHost>,
    github: Option<Arc<dyn GitHost>>,
}

impl std::fmt::Debug for GitAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAgent")
            .field("manifest", &self.manifest)
            .finish()
    }
}

impl GitAgent {
    /// Commits to local repositories through `local`, and to GitHub repositories through
    /// `github` when the server has a GitHub token.
    pub fn new(local: Arc<dyn GitHost>, github: Option<Arc<dyn GitHost>>) -> Self {
        let types: Vec<EventType> = [
            "proposal.approved.v1",
            "git.commit.v1",
            "git.commit_failed.v1",
        ]
        .iter()
        .filter_map(|t| EventType::parse(t).ok())
        .collect();
        Self {
            manifest: Manifest {
                produces: Vec::new(),
                consumes: Vec::new(),
                name: "git".into(),
                version: "0.1.0".into(),
                capabilities: vec!["git".into(), "commit".into()],
                subscribes: types.iter().take(1).cloned().collect(),
                emits: types.iter().skip(1).cloned().collect(),
            },
            local,
            github,
        }
    }
}

fn failed(
    proposal_id: &str,
    repository: Option<&str>,
    reason: &str,
    message: String,
    retryable: bool,
) -> Value {
    let mut data = json!({"proposal_id": proposal_id, "reason": reason, "message": message, "retryable": retryable});
    if let Some(repository) = repository {
        data["repository"] = json!(repository);
    }
    data
}

impl Agent for GitAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = event.data["proposal_id"]
                .as_str()
                .ok_or_else(|| HandlerError::new("the approval names no proposal"))?
                .to_owned();
            let approved_hash = event.data["content_hash"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let stream_id = stream(&id);
            let workspace = event.workspace.as_str().to_owned();

            // The proposal as it is now, from its stream.
            let created: Option<Value> = sqlx::query_scalar(
                "SELECT data FROM events WHERE workspace = $1 AND stream_id = $2 AND type = 'proposal.created.v1'",
            )
            .bind(&workspace)
            .bind(&stream_id)
            .fetch_optional(ctx.connection())
            .await?;
            let Some(created) = created else {
                return ctx.emit(
                    "git.commit_failed.v1",
                    &stream_id,
                    failed(
                        &id,
                        None,
                        "other",
                        format!("proposal {id} does not exist"),
                        false,
                    ),
                );
            };
            let changes: Vec<Change> =
                serde_json::from_value(created["changes"].clone()).map_err(|e| {
                    HandlerError::new(format!("the proposal's changes are unreadable: {e}"))
                })?;
            let title = created["title"].as_str().unwrap_or_default();
            let description = created["description"].as_str().unwrap_or_default();
            let actual = content_hash(title, description, &changes);
            if actual != approved_hash || created["content_hash"].as_str() != Some(actual.as_str())
            {
                // Never commit anything that was not approved, exactly.
                let message = format!(
                    "the proposal's content ({actual}) is not what was approved ({approved_hash}); nothing was committed"
                );
                return ctx.emit(
                    "git.commit_failed.v1",
                    &stream_id,
                    failed(&id, None, "content_mismatch", message, false),
                );
            }

            // Where to commit: the workspace's repository.
            let repository: Option<Value> = sqlx::query_scalar(
                "SELECT data->'repository' FROM events WHERE workspace = $1 AND stream_id = 'workspace' AND stream_version = 1",
            )
            .bind(&workspace)
            .fetch_optional(ctx.connection())
            .await?;
            let repository = repository.unwrap_or(Value::Null);
            let (target, host) = match repository["kind"].as_str() {
                Some("local") => (
                    repository["path"].as_str().unwrap_or_default().to_owned(),
                    &self.local,
                ),
                Some("github") => {
                    let name = format!(
                        "{}/{}",
                        repository["owner"].as_str().unwrap_or_default(),
                        repository["repo"].as_str().unwrap_or_default()
                    );
                    let Some(github) = &self.github else {
                        let message = "this server has no GitHub token (set SWITCHYARD_GITHUB__TOKEN), so it cannot commit to GitHub".to_owned();
                        return ctx.emit(
                            "git.commit_failed.v1",
                            &stream_id,
                            failed(&id, Some(&name), "host_error", message, false),
                        );
                    };
                    (name, github)
                }
                _ => {
                    let message = format!("workspace {workspace} has no repository to commit to");
                    return ctx.emit(
                        "git.commit_failed.v1",
                        &stream_id,
                        failed(&id, None, "other", message, false),
                    );
                }
            };

            let request = CommitRequest {
                key: id.clone(),
                message: format!(
                    "{title}\n\nProposal: {id}\nApproved-by: {}\nCorrelation-Id: {}\n",
                    event.data["approved_by"].as_str().unwrap_or_default(),
                    event.correlation_id
                ),
                changes: changes
                    .into_iter()
                    .map(|c| match c.action {
                        Action::Create => FileChange::Create {
                            path: c.path,
                            content: c.content.unwrap_or_default(),
                        },
                        Action::Modify => FileChange::Modify {
                            path: c.path,
                            content: c.content.unwrap_or_default(),
                        },
                        Action::Delete => FileChange::Delete { path: c.path },
                    })
                    .collect(),
            };
            let span = tracing::info_span!("git.commit", proposal.id = %id, repository = %target);
            match host.commit(&target, &request).instrument(span).await {
                Ok(outcome) => {
                    let mut data = json!({
                        "proposal_id": id, "repository": target, "branch": outcome.branch,
                        "sha": outcome.sha, "message": request.message, "files": outcome.files,
                    });
                    if let Some(url) = outcome.pull_request_url {
                        data["pull_request_url"] = json!(url);
                    }
                    ctx.emit("git.commit.v1", &stream_id, data)
                }
                // Worth another delivery (with backoff); dead-lettered if it keeps failing.
                Err(GitError::Host(message)) => Err(HandlerError::new(message)),
                Err(e) => {
                    let reason = match e {
                        GitError::Conflict(_) => "conflict",
                        GitError::PathOutside(_) => "path_outside_repository",
                        GitError::MissingFile(_) => "missing_file",
                        _ => "other",
                    };
                    ctx.emit(
                        "git.commit_failed.v1",
                        &stream_id,
                        failed(&id, Some(&target), reason, e.to_string(), false),
                    )
                }
            }
        })
    }
}
