//! The github agent: work that GitHub starts or resumes.
//!
//! - A pull request on `switchyard/<proposal>` that the git agent opened, closed and merged,
//!   marks its proposal `merged` (`proposal.merged.v1`); closed unmerged, `closed`.
//! - A check run or workflow run that completes with a failure on a `switchyard/` branch
//!   requests a remediation task of the CI-failure role (`task.requested.v1`), once per check
//!   and commit.
//! - `/switchyard` commands in comments, from the users the workspace allows
//!   (`workspace.configured.v1` `github_approvers`): approve, reject, retro, retry. Every
//!   command is recorded (`github.command.v1`) and answered with a reply comment; a command
//!   from anyone else changes nothing.
//!
//! Replies are posted inside the handler, before its transaction commits; each carries a key
//! derived from the handled event, so a handler that runs again posts nothing twice.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_events::{EventId, EventType, NewEvent, RecordedEvent, Source, StreamId, Workspace};
use switchyard_github::{
    GitHubHost,
    commands::{self, Command},
};
use switchyard_proposals::{Decision, DecisionError, Proposal, Status, decide, stream};

/// The role that CI failures on Switchyard branches are routed to.
pub const CI_FIXER_ROLE: &str = "ci-fixer";

/// Conclusions that count as a CI failure.
const FAILED: &[&str] = &["failure", "timed_out", "startup_failure"];

/// Retries a dead letter (the agent runtime, plugged in after it is built).
pub trait DeadLetters: Send + Sync + 'static {
    /// Retries dead letter `id` of `workspace`; what happened, for the reply.
    fn retry<'a>(
        &'a self,
        workspace: &'a str,
        id: uuid::Uuid,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// Where the runtime's [`DeadLetters`] is set once it exists (the runtime owns the agents, so
/// it is built after them).
#[derive(Clone, Default)]
pub struct DeadLetterHandle(Arc<OnceLock<Arc<dyn DeadLetters>>>);

impl std::fmt::Debug for DeadLetterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "DeadLetterHandle(set)"
        } else {
            "DeadLetterHandle(unset)"
        })
    }
}

impl DeadLetterHandle {
    /// Sets it; later calls are ignored.
    pub fn set(&self, dead_letters: Arc<dyn DeadLetters>) {
        let _ = self.0.set(dead_letters);
    }
}

/// The agent.
pub struct GitHubAgent {
    manifest: Manifest,
    github: Option<Arc<GitHubHost>>,
    dead_letters: DeadLetterHandle,
}

impl std::fmt::Debug for GitHubAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAgent")
            .field("manifest", &self.manifest)
            .field("replies", &self.github.is_some())
            .finish()
    }
}

fn types(names: &[&str]) -> Vec<EventType> {
    names
        .iter()
        .filter_map(|t| EventType::parse(t).ok())
        .collect()
}

impl GitHubAgent {
    /// Replies through `github` when the server has a token; retries dead letters through
    /// `dead_letters`.
    pub fn new(github: Option<Arc<GitHubHost>>, dead_letters: DeadLetterHandle) -> Self {
        Self {
            manifest: Manifest {
                produces: Vec::new(),
                consumes: Vec::new(),
                name: "github".into(),
                version: "0.1.0".into(),
                capabilities: vec!["github".into(), "ci".into(), "commands".into()],
                subscribes: types(&[
                    "github.pull_request.v1",
                    "github.check_run.v1",
                    "github.workflow_run.v1",
                    "github.issue_comment.v1",
                    "github.pull_request_review_comment.v1",
                ]),
                emits: types(&[
                    "proposal.merged.v1",
                    "proposal.closed.v1",
                    "task.requested.v1",
                    "proposal.approved.v1",
                    "proposal.rejected.v1",
                    "retrospective.trigger.v1",
                    "github.command.v1",
                ]),
            },
            github,
            dead_letters,
        }
    }
}

/// The proposal a `switchyard/<id>` branch belongs to.
fn proposal_of(branch: Option<&str>) -> Option<&str> {
    branch?
        .strip_prefix("switchyard/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// A proposal as its stream tells it, read inside the handler's transaction.
async fn load(ctx: &mut Context<'_>, ws: &str, id: &str) -> Result<Option<Proposal>, HandlerError> {
    let rows: Vec<(
        String,
        i64,
        String,
        String,
        Value,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT type, stream_version, id, correlation_id, data, time FROM events
             WHERE workspace = $1 AND stream_id = $2 ORDER BY stream_version",
    )
    .bind(ws)
    .bind(stream(id))
    .fetch_all(ctx.connection())
    .await?;
    let Some((_, _, created_id, correlation, created, time)) = rows
        .iter()
        .find(|(ty, ..)| ty == "proposal.created.v1")
        .cloned()
    else {
        return Ok(None);
    };
    let mut status = Status::Pending;
    let mut version = 0;
    let mut pull_request_url = None;
    for (ty, v, _, _, data, _) in &rows {
        status = status.after(ty);
        version = version.max(u64::try_from(*v).unwrap_or(0));
        if ty == "git.commit.v1" {
            pull_request_url = data["pull_request_url"].as_str().map(str::to_owned);
        }
    }
    let mut proposal = created.clone();
    if let Some(url) = pull_request_url {
        proposal["pull_request_url"] = json!(url);
    }
    Ok(Some(Proposal {
        id: id.to_owned(),
        status,
        content_hash: created["content_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        proposal,
        created_at: time,
        version,
        created_event_id: created_id,
        correlation_id: correlation,
        history: Vec::new(),
    }))
}

/// Who may use `/switchyard` commands in this workspace (lowercase logins).
async fn approvers(ctx: &mut Context<'_>, ws: &str) -> Result<Vec<String>, HandlerError> {
    let data: Option<Value> = sqlx::query_scalar(
        "SELECT data FROM events
         WHERE workspace = $1 AND stream_id = 'workspace' AND type = 'workspace.configured.v1'
         ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(ws)
    .fetch_optional(ctx.connection())
    .await?;
    Ok(data
        .and_then(|d| d["github_approvers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.as_str().map(str::to_ascii_lowercase))
        .collect())
}

fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(60);
    out.trim_matches('-').to_owned()
}

impl GitHubAgent {
    async fn pull_request(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = &event.data;
        if data["action"] != "closed" {
            return Ok(());
        }
        let Some(id) = proposal_of(data["branch"].as_str()) else {
            return Ok(());
        };
        let ws = event.workspace.as_str();
        let Some(proposal) = load(ctx, ws, id).await? else {
            tracing::info!(
                branch = data["branch"].as_str(),
                "a switchyard/ branch without a proposal in this workspace"
            );
            return Ok(());
        };
        // Only pull requests the git agent opened: the proposal was committed.
        if proposal.status != Status::Committed {
            return Ok(());
        }
        let merged = data["merged"].as_bool().unwrap_or(false);
        let mut out = json!({
            "proposal_id": id,
            "repository": data["repository"],
            "pull_request": data["number"],
        });
        if let Some(url) = data["url"].as_str() {
            out["url"] = json!(url);
        }
        let by = data["sender"].as_str();
        let ty = if merged {
            if let Some(sha) = data["merge_commit_sha"].as_str() {
                out["merge_commit_sha"] = json!(sha);
            }
            if let Some(by) = by {
                out["merged_by"] = json!(by);
            }
            "proposal.merged.v1"
        } else {
            if let Some(by) = by {
                out["closed_by"] = json!(by);
            }
            "proposal.closed.v1"
        };
        ctx.emit(ty, &stream(id), out)
    }

    async fn ci_failure(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = &event.data;
        let conclusion = data["conclusion"].as_str().unwrap_or_default();
        let branch = data["branch"].as_str();
        if data["action"] != "completed" || !FAILED.contains(&conclusion) {
            return Ok(());
        }
        let Some(branch) = branch.filter(|b| b.starts_with("switchyard/")) else {
            return Ok(());
        };
        let name = data["name"].as_str().unwrap_or("workflow");
        let sha = data["head_sha"].as_str().unwrap_or_default();
        let kind = if event.ty.as_str() == "github.check_run.v1" {
            "check"
        } else {
            "workflow"
        };
        let task_id = format!("ci-{}-{kind}-{}", &sha[..sha.len().min(12)], slug(name));
        let task_stream = format!("task/{task_id}");
        // Once per failing check and commit, however many deliveries report it.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE workspace = $1 AND stream_id = $2)",
        )
        .bind(event.workspace.as_str())
        .bind(&task_stream)
        .fetch_one(ctx.connection())
        .await?;
        if exists {
            return Ok(());
        }
        let urls: Vec<&str> = ["url", "details_url", "logs_url"]
            .iter()
            .filter_map(|k| data[*k].as_str())
            .collect();
        let mut task = json!({
            "task_id": task_id,
            "role": CI_FIXER_ROLE,
            "title": format!("CI failed on {branch}: {name} ({conclusion})"),
            "description": format!(
                "The {kind} {name:?} concluded {conclusion} on commit {sha} of {branch}. \
                 Find the cause and propose a fix."
            ),
            "requested_by": "github",
            "inputs": {
                "kind": kind, "check": name, "conclusion": conclusion, "head_sha": sha,
                "branch": branch, "urls": urls,
            },
            "repository": data["repository"],
        });
        if let Some(n) = data["pull_requests"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_u64)
        {
            task["pull_request"] = json!(n);
        }
        if let Some(id) = proposal_of(Some(branch)) {
            task["proposal_id"] = json!(id);
        }
        // The task's id is the event's id: two deliveries of the same failure handled at once
        // both get past the check above, and the store keeps one of their events.
        let invalid = |e: switchyard_events::InvalidId| HandlerError::new(e.to_string());
        let mut requested = NewEvent::new(
            event.workspace.clone(),
            Source::parse("/agents/github").map_err(invalid)?,
            EventType::parse("task.requested.v1").map_err(invalid)?,
            StreamId::parse(&task_stream).map_err(invalid)?,
            task,
        );
        requested.id = EventId::parse(&task_id).map_err(invalid)?;
        ctx.emit_event(requested)
    }

    async fn comment(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = &event.data;
        // Commands run when written; an edit does not run them again.
        if data["action"] != "created" {
            return Ok(());
        }
        let commands = commands::parse(data["body"].as_str().unwrap_or_default());
        if commands.is_empty() {
            return Ok(());
        }
        let user = data["author"]
            .as_str()
            .or_else(|| data["sender"].as_str())
            .unwrap_or_default()
            .to_owned();
        let repository = data["repository"].as_str().unwrap_or_default().to_owned();
        let number = data["number"].as_u64().unwrap_or(0);
        let ws = event.workspace.as_str().to_owned();
        let allowed = approvers(ctx, &ws).await?;
        let is_allowed = allowed.contains(&user.to_ascii_lowercase());

        for (index, command) in commands.iter().enumerate() {
            let argument = match command {
                Command::Approve { proposal } | Command::Reject { proposal, .. } => {
                    Some(proposal.clone())
                }
                Command::Retry { dead_letter } => Some(dead_letter.clone()),
                Command::Retro | Command::Invalid { .. } => None,
            };
            let (outcome, message) = if let Command::Invalid { problem, .. } = command {
                ("refused", format!("@{user}: {problem}"))
            } else if !is_allowed {
                let who = if allowed.is_empty() {
                    "nobody is allowed yet; an admin sets github_approvers".to_owned()
                } else {
                    format!("allowed: {}", allowed.join(", "))
                };
                (
                    "refused",
                    format!(
                        "@{user} may not use /switchyard {} in workspace {ws} ({who}). Nothing was changed.",
                        command.name()
                    ),
                )
            } else {
                self.apply(ctx, event, &user, command).await?
            };
            let mut record = json!({
                "repository": repository, "number": number, "user": user,
                "command": command.name(), "outcome": outcome, "message": message,
            });
            if let Some(id) = data["comment_id"].as_u64() {
                record["comment_id"] = json!(id);
            }
            if let Some(argument) = argument {
                record["argument"] = json!(argument);
            }
            ctx.emit("github.command.v1", &format!("github/pr/{number}"), record)?;
            self.reply(
                &repository,
                number,
                &format!("{}-{index}", event.id),
                &message,
            )
            .await?;
        }
        Ok(())
    }

    /// Applies a command of an allowed user: (outcome, message).
    async fn apply(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
        user: &str,
        command: &Command,
    ) -> Result<(&'static str, String), HandlerError> {
        let ws = event.workspace.as_str();
        match command {
            Command::Approve { proposal: id } | Command::Reject { proposal: id, .. } => {
                let Some(proposal) = load(ctx, ws, id).await? else {
                    return Ok((
                        "failed",
                        format!("There is no proposal {id} in workspace {ws}."),
                    ));
                };
                let decision = match command {
                    Command::Reject { reason, .. } => Decision::Reject {
                        reason: reason.clone(),
                    },
                    _ => Decision::Approve {
                        comment: Some(format!(
                            "via GitHub comment {}",
                            event.data["url"].as_str().unwrap_or("")
                        )),
                        content_hash: None,
                    },
                };
                let workspace =
                    Workspace::parse(ws).map_err(|e| HandlerError::new(e.to_string()))?;
                let source = Source::parse("/agents/github")
                    .map_err(|e| HandlerError::new(e.to_string()))?;
                match decide(
                    &proposal,
                    &workspace,
                    &source,
                    &format!("github:{user}"),
                    "github",
                    &decision,
                ) {
                    Ok(decided) => {
                        ctx.emit_event(decided)?;
                        let verb = if matches!(decision, Decision::Approve { .. }) {
                            "Approved"
                        } else {
                            "Rejected"
                        };
                        Ok((
                            "applied",
                            format!(
                                "{verb} proposal {id} (content {}) for @{user}.",
                                &proposal.content_hash[..proposal.content_hash.len().min(12)]
                            ),
                        ))
                    }
                    Err(e @ DecisionError::AlreadyDecided { .. }) => Ok(("failed", e.to_string())),
                    Err(e) => Ok(("failed", e.to_string())),
                }
            }
            Command::Retro => {
                let id = format!("github-{}", event.id);
                ctx.emit(
                    "retrospective.trigger.v1",
                    &format!("retrospective/{id}"),
                    json!({"retrospective_id": id, "reason": "manual", "requested_by": format!("github:{user}")}),
                )?;
                Ok((
                    "applied",
                    format!("Retrospective {id} requested for @{user}."),
                ))
            }
            Command::Retry { dead_letter } => {
                let Some(dead_letters) = self.dead_letters.0.get() else {
                    return Ok((
                        "failed",
                        "Dead letters cannot be retried from here: the runtime is not running."
                            .into(),
                    ));
                };
                let Ok(id) = uuid::Uuid::parse_str(dead_letter) else {
                    return Ok(("failed", format!("{dead_letter} is not a dead-letter id.")));
                };
                match dead_letters.retry(ws, id).await {
                    Ok(message) => Ok(("applied", message)),
                    Err(message) => Ok(("failed", message)),
                }
            }
            Command::Invalid { problem, .. } => Ok(("refused", problem.clone())),
        }
    }

    async fn reply(
        &self,
        repository: &str,
        number: u64,
        key: &str,
        message: &str,
    ) -> Result<(), HandlerError> {
        let Some(github) = &self.github else {
            tracing::info!(
                repository,
                number,
                message,
                "no GitHub token: the reply is only recorded"
            );
            return Ok(());
        };
        github
            .comment(repository, number, key, message)
            .await
            // Worth another delivery: the reply is idempotent by its key.
            .map_err(|e| HandlerError::new(format!("replying on {repository}#{number}: {e}")))
    }
}

impl Agent for GitHubAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match event.ty.as_str() {
                "github.pull_request.v1" => self.pull_request(ctx, event).await,
                "github.check_run.v1" | "github.workflow_run.v1" => {
                    self.ci_failure(ctx, event).await
                }
                "github.issue_comment.v1" | "github.pull_request_review_comment.v1" => {
                    self.comment(ctx, event).await
                }
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_switchyard_branches_name_a_proposal() {
        assert_eq!(proposal_of(Some("switchyard/abc-1")), Some("abc-1"));
        assert_eq!(proposal_of(Some("switchyard/")), None);
        assert_eq!(proposal_of(Some("switchyard/a/b")), None);
        assert_eq!(proposal_of(Some("feature/x")), None);
        assert_eq!(proposal_of(None), None);
        assert_eq!(slug("Build & Test (ubuntu)"), "build---test--ubuntu");
    }
}
