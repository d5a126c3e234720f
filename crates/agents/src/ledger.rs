//! What became of each proposal of a workspace, read from the store in one pass: who made it,
//! what kind of change it is, how it was decided, whether it was committed. The strategy agent
//! builds milestones from it, the retrospective agent its metrics.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// Most proposal events read at once; older ones are left out beyond it.
const MAX_EVENTS: i64 = 200_000;

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Waiting for a decision.
    Pending,
    /// Approved, not committed yet.
    Approved,
    /// Committed (or its pull request merged).
    Committed,
    /// Approved, but the commit failed.
    Blocked,
    /// Rejected, or its pull request closed.
    Dropped,
}

/// One proposal.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) author: String,
    /// The finding's kind (`broken-link`), or `None` for a person's proposal.
    pub(crate) kind: Option<String>,
    pub(crate) confidence: Option<f64>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) status: Status,
    /// Approved (`true`) or rejected, when decided.
    pub(crate) approved: Option<bool>,
    pub(crate) decided_at: Option<DateTime<Utc>>,
    pub(crate) decision_event: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) sha: Option<String>,
    pub(crate) committed_at: Option<DateTime<Utc>>,
    pub(crate) commit_event: Option<String>,
    /// Failed commits: (event id, time, reason).
    pub(crate) failures: Vec<(String, DateTime<Utc>, String)>,
}

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Every proposal of `workspace`, in creation order, as of the events visible now.
pub(crate) async fn load(
    conn: &mut PgConnection,
    workspace: &str,
) -> Result<Vec<Record>, sqlx::Error> {
    // The type list matches the partial index `events_proposal_work`.
    let rows: Vec<(String, String, DateTime<Utc>, Value)> = sqlx::query_as(
        "SELECT id, type, time, data FROM events
         WHERE workspace = $1 AND type IN ('proposal.created.v1', 'proposal.approved.v1',
               'proposal.rejected.v1', 'proposal.merged.v1', 'proposal.closed.v1',
               'git.commit.v1', 'git.commit_failed.v1')
         ORDER BY position DESC LIMIT $2",
    )
    .bind(workspace)
    .bind(MAX_EVENTS)
    .fetch_all(conn)
    .await?;
    // The newest MAX_EVENTS, read newest first (so the cut falls on the oldest), folded in
    // order.
    let rows = rows.into_iter().rev();
    let mut records: Vec<Record> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (event_id, ty, time, data) in rows {
        let Some(id) = text(&data, "proposal_id") else {
            continue;
        };
        if ty == "proposal.created.v1" {
            index.insert(id.clone(), records.len());
            records.push(Record {
                id,
                title: text(&data, "title").unwrap_or_default(),
                author: text(&data, "author").unwrap_or_default(),
                kind: data["finding"]["kind"].as_str().map(str::to_owned),
                confidence: data["confidence"].as_f64(),
                created_at: time,
                status: Status::Pending,
                approved: None,
                decided_at: None,
                decision_event: None,
                reason: None,
                sha: None,
                committed_at: None,
                commit_event: None,
                failures: Vec::new(),
            });
            continue;
        }
        let Some(record) = index.get(&id).and_then(|i| records.get_mut(*i)) else {
            continue;
        };
        match ty.as_str() {
            "proposal.approved.v1" | "proposal.rejected.v1" => {
                let approved = ty == "proposal.approved.v1";
                record.approved = Some(approved);
                record.decided_at = Some(time);
                record.decision_event = Some(event_id);
                record.reason = text(&data, "reason");
                if record.status == Status::Pending {
                    record.status = if approved {
                        Status::Approved
                    } else {
                        Status::Dropped
                    };
                }
            }
            "git.commit.v1" => {
                record.sha = text(&data, "sha");
                record.committed_at = Some(time);
                record.commit_event = Some(event_id);
                record.status = Status::Committed;
            }
            "git.commit_failed.v1" => {
                let reason = text(&data, "message")
                    .or_else(|| text(&data, "reason"))
                    .unwrap_or_default();
                record.failures.push((event_id, time, reason));
                if record.status != Status::Committed {
                    record.status = Status::Blocked;
                }
            }
            "proposal.merged.v1" => record.status = Status::Committed,
            "proposal.closed.v1" if record.status != Status::Committed => {
                record.status = Status::Dropped;
            }
            _ => {}
        }
    }
    Ok(records)
}
