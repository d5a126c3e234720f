//! The `proposals` projection (schema `proj_proposals`): one row per proposal with its status,
//! for lists filtered by status.

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::RecordedEvent;
use switchyard_projections::Projection;

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProposalsProjection;

const SCHEMA: &str = "
CREATE TABLE proposals (
    workspace     text NOT NULL,
    id            text NOT NULL,
    title         text NOT NULL,
    author        text NOT NULL,
    status        text NOT NULL,
    content_hash  text NOT NULL,
    created_at    timestamptz NOT NULL,
    decided_by    text,
    decided_via   text,
    decided_at    timestamptz,
    reason        text,
    commit_sha    text,
    pull_request_url text,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace, id)
);
CREATE INDEX proposals_by_status ON proposals (workspace, status, created_at);
";

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl Projection for ProposalsProjection {
    fn name(&self) -> &'static str {
        "proposals"
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn types(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "proposal.created.v1",
            "proposal.approved.v1",
            "proposal.rejected.v1",
            "git.commit.v1",
            "git.commit_failed.v1",
            "proposal.merged.v1",
            "proposal.closed.v1",
        ])
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let data = &event.data;
            let Some(id) = text(data, "proposal_id") else {
                return Ok(());
            };
            let ws = event.workspace.as_str();
            match event.ty.as_str() {
                "proposal.created.v1" => {
                    sqlx::query(
                        "INSERT INTO proposals (workspace, id, title, author, status, content_hash, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6)
                         ON CONFLICT (workspace, id) DO NOTHING",
                    )
                    .bind(ws)
                    .bind(&id)
                    .bind(text(data, "title").unwrap_or_default())
                    .bind(text(data, "author").unwrap_or_default())
                    .bind(text(data, "content_hash").unwrap_or_default())
                    .bind(event.time)
                    .execute(&mut *tx)
                    .await?;
                }
                "proposal.approved.v1" | "proposal.rejected.v1" => {
                    let approved = event.ty.as_str() == "proposal.approved.v1";
                    sqlx::query(
                        "UPDATE proposals SET status = $3, decided_by = $4, decided_via = $5,
                                decided_at = $6, reason = $7, updated_at = $6
                         WHERE workspace = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&id)
                    .bind(if approved { "approved" } else { "rejected" })
                    .bind(text(
                        data,
                        if approved {
                            "approved_by"
                        } else {
                            "rejected_by"
                        },
                    ))
                    .bind(text(data, "channel"))
                    .bind(event.time)
                    .bind(text(data, "reason"))
                    .execute(&mut *tx)
                    .await?;
                }
                "git.commit.v1" | "git.commit_failed.v1" => {
                    let committed = event.ty.as_str() == "git.commit.v1";
                    sqlx::query(
                        "UPDATE proposals SET status = $3, commit_sha = $4, reason = coalesce($5, reason),
                                pull_request_url = $7, updated_at = $6
                         WHERE workspace = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&id)
                    .bind(if committed { "committed" } else { "failed" })
                    .bind(text(data, "sha"))
                    .bind(text(data, "message").filter(|_| !committed))
                    .bind(event.time)
                    .bind(text(data, "pull_request_url"))
                    .execute(&mut *tx)
                    .await?;
                }
                "proposal.merged.v1" | "proposal.closed.v1" => {
                    let merged = event.ty.as_str() == "proposal.merged.v1";
                    sqlx::query(
                        "UPDATE proposals SET status = $3, pull_request_url = coalesce($4, pull_request_url),
                                updated_at = $5
                         WHERE workspace = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(&id)
                    .bind(if merged { "merged" } else { "closed" })
                    .bind(text(data, "url"))
                    .bind(event.time)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}
