//! Proposals: a change to a workspace's repository that a person must approve before an agent
//! commits it.
//!
//! Deciding is pure: [`propose`] and [`decide`] turn a request and the proposal's current
//! state (folded from its stream `proposal/<id>` by [`fold`]) into the event to append. A
//! decision is appended expecting the stream's exact version, so two concurrent decisions
//! give one success and one conflict, and it names the content hash of exactly what was
//! approved. The [`ProposalsProjection`] keeps the list that the API filters by status.

mod projection;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchyard_events::{
    EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace,
};

pub use projection::ProposalsProjection;

/// What a change does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new file with `content`.
    Create,
    /// An existing file gets `content`.
    Modify,
    /// An existing file is removed.
    Delete,
}

/// One file's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Path relative to the repository root.
    pub path: String,
    /// What happens to it.
    pub action: Action,
    /// The full new content (create, modify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Where a finding-driven proposal came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable across runs.
    pub fingerprint: String,
    /// Kind of finding.
    pub kind: String,
}

/// What a proposer submits. Server-owned fields (id, status, hash, author, approver) are not
/// part of it, and a body that carries them is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// One line.
    pub title: String,
    /// What and why.
    pub description: String,
    /// The file changes.
    pub changes: Vec<Change>,
    /// The author's reasoning or evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// The author's confidence, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The finding it addresses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
}

/// SHA-256 (hex) of exactly what would be committed: title, description and changes, as
/// canonical JSON. An approval names it; the git agent checks it again before committing.
pub fn content_hash(title: &str, description: &str, changes: &[Change]) -> String {
    let canonical = json!({"title": title, "description": description, "changes": changes});
    Sha256::digest(canonical.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a person.
    Pending,
    /// Approved; the git agent commits it.
    Approved,
    /// Rejected, with a reason.
    Rejected,
    /// Committed (`git.commit.v1`).
    Committed,
    /// The commit failed (`git.commit_failed.v1`).
    Failed,
    /// Its pull request was merged (`proposal.merged.v1`).
    Merged,
    /// Its pull request was closed without merging (`proposal.closed.v1`).
    Closed,
}

impl Status {
    /// The lowercase name used in the API and the projection.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::Merged => "merged",
            Self::Closed => "closed",
        }
    }

    /// Where a proposal stands after an event of type `ty` on its stream.
    pub fn after(self, ty: &str) -> Self {
        match ty {
            "proposal.approved.v1" => Self::Approved,
            "proposal.rejected.v1" => Self::Rejected,
            "git.commit.v1" => Self::Committed,
            "git.commit_failed.v1" => Self::Failed,
            "proposal.merged.v1" => Self::Merged,
            "proposal.closed.v1" => Self::Closed,
            _ => self,
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "committed" => Self::Committed,
            "failed" => Self::Failed,
            "merged" => Self::Merged,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

/// A proposal as its stream tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposal {
    /// Its id.
    pub id: String,
    /// Where it stands.
    pub status: Status,
    /// What was proposed (the data of `proposal.created.v1`).
    pub proposal: Value,
    /// Its content hash.
    pub content_hash: String,
    /// When it was proposed.
    pub created_at: DateTime<Utc>,
    /// The stream's last version (what a decision must expect).
    pub version: u64,
    /// The id of its `proposal.created.v1` (what a decision is caused by).
    pub created_event_id: String,
    /// The correlation its events share.
    pub correlation_id: String,
    /// Every event of its stream, oldest first.
    pub history: Vec<Value>,
}

/// The stream of a proposal.
pub fn stream(id: &str) -> String {
    format!("proposal/{id}")
}

/// Folds a proposal's stream. `None` when the stream holds no `proposal.created.v1`.
pub fn fold(events: &[RecordedEvent]) -> Option<Proposal> {
    let created = events
        .iter()
        .find(|e| e.ty.as_str() == "proposal.created.v1")?;
    let mut proposal = Proposal {
        id: created.data["proposal_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status: Status::Pending,
        proposal: created.data.clone(),
        content_hash: created.data["content_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        created_at: created.time,
        version: 0,
        created_event_id: created.id.to_string(),
        correlation_id: created.correlation_id.clone(),
        history: Vec::with_capacity(events.len()),
    };
    for event in events {
        proposal.version = proposal.version.max(event.stream_version);
        proposal.status = proposal.status.after(event.ty.as_str());
        proposal
            .history
            .push(serde_json::to_value(event.to_cloudevent()).unwrap_or(Value::Null));
    }
    Some(proposal)
}

/// Why a proposal or a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionError {
    /// It was decided already.
    #[error("proposal {id} is {status} already; a decision is taken once")]
    AlreadyDecided {
        /// The proposal.
        id: String,
        /// Where it stands.
        status: &'static str,
    },
    /// The approval names another content than the proposal's.
    #[error("the approval is for content {given}, but the proposal's content is {actual}")]
    HashMismatch {
        /// The hash the approver saw.
        given: String,
        /// The proposal's hash.
        actual: String,
    },
    /// A change is malformed.
    #[error("{pointer}: {message}")]
    Invalid {
        /// JSON pointer into the draft.
        pointer: String,
        /// What is wrong.
        message: String,
    },
}

/// How a person decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approve, optionally naming the content hash the person saw.
    Approve {
        /// Comment for the record.
        comment: Option<String>,
        /// The content hash the approver saw; must match when given.
        content_hash: Option<String>,
    },
    /// Reject, with a reason.
    Reject {
        /// Why.
        reason: String,
    },
}

fn event(
    workspace: &Workspace,
    source: &Source,
    ty: &str,
    id: &str,
    data: Value,
) -> Result<NewEvent, DecisionError> {
    let invalid = |e: switchyard_events::InvalidId| DecisionError::Invalid {
        pointer: String::new(),
        message: e.to_string(),
    };
    Ok(NewEvent::new(
        workspace.clone(),
        source.clone(),
        EventType::parse(ty).map_err(invalid)?,
        StreamId::parse(&stream(id)).map_err(invalid)?,
        data,
    ))
}

/// The data of `proposal.created.v1` for a draft: the draft plus the server-owned fields.
pub fn created_data(id: &str, author: &str, draft: &Draft) -> Value {
    let hash = content_hash(&draft.title, &draft.description, &draft.changes);
    let mut data = serde_json::to_value(draft).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut data {
        map.insert("proposal_id".into(), json!(id));
        map.insert("content_hash".into(), json!(hash));
        map.insert("author".into(), json!(author));
    }
    data
}

/// The `proposal.created.v1` event of a new proposal (id generated, stream must be new).
pub fn propose(
    workspace: &Workspace,
    source: &Source,
    author: &str,
    draft: &Draft,
) -> Result<(String, NewEvent), DecisionError> {
    for (i, change) in draft.changes.iter().enumerate() {
        let has_content = change.content.is_some();
        if (change.action == Action::Delete) == has_content {
            return Err(DecisionError::Invalid {
                pointer: format!("/changes/{i}/content"),
                message: if has_content {
                    "a delete carries no content".into()
                } else {
                    "create and modify need the file's full content".into()
                },
            });
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let data = created_data(&id, author, draft);
    let event = event(workspace, source, "proposal.created.v1", &id, data)?
        .expecting(ExpectedVersion::NoStream);
    Ok((id, event))
}

/// The event that records a decision on `proposal`, expecting its stream exactly where it was
/// read, so that of two concurrent decisions one wins and the other conflicts.
pub fn decide(
    proposal: &Proposal,
    workspace: &Workspace,
    source: &Source,
    by: &str,
    channel: &str,
    decision: &Decision,
) -> Result<NewEvent, DecisionError> {
    if proposal.status != Status::Pending {
        return Err(DecisionError::AlreadyDecided {
            id: proposal.id.clone(),
            status: proposal.status.as_str(),
        });
    }
    let (ty, data) = match decision {
        Decision::Approve {
            comment,
            content_hash,
        } => {
            if let Some(given) = content_hash
                && *given != proposal.content_hash
            {
                return Err(DecisionError::HashMismatch {
                    given: given.clone(),
                    actual: proposal.content_hash.clone(),
                });
            }
            let mut data = json!({
                "proposal_id": proposal.id, "approved_by": by, "channel": channel,
                "content_hash": proposal.content_hash,
            });
            if let Some(comment) = comment {
                data["comment"] = json!(comment);
            }
            ("proposal.approved.v1", data)
        }
        Decision::Reject { reason } => (
            "proposal.rejected.v1",
            json!({"proposal_id": proposal.id, "rejected_by": by, "channel": channel, "reason": reason}),
        ),
    };
    let mut event = event(workspace, source, ty, &proposal.id, data)?
        .expecting(ExpectedVersion::Exactly(proposal.version));
    // One correlation from proposal to commit; the decision is caused by the proposal.
    event.correlation_id = Some(proposal.correlation_id.clone());
    event.causation_id = Some(proposal.created_event_id.clone());
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            title: "Fix the README link".into(),
            description: "docs/setup.md does not exist".into(),
            changes: vec![Change {
                path: "README.md".into(),
                action: Action::Modify,
                content: Some("# Hello\n".into()),
            }],
            rationale: None,
            confidence: Some(0.9),
            finding: None,
        }
    }

    #[test]
    fn the_content_hash_covers_exactly_the_content() {
        let d = draft();
        let h = content_hash(&d.title, &d.description, &d.changes);
        assert_eq!(h.len(), 64);
        assert_eq!(h, content_hash(&d.title, &d.description, &d.changes));
        let mut other = d.changes.clone();
        other[0].content = Some("# Hello!\n".into());
        assert_ne!(h, content_hash(&d.title, &d.description, &other));
    }

    #[test]
    fn drafts_refuse_server_owned_fields_and_bad_changes() {
        let with_status =
            json!({"title": "t", "description": "d", "changes": [], "status": "approved"});
        assert!(serde_json::from_value::<Draft>(with_status).is_err());
        let ws = Workspace::parse("demo").unwrap();
        let source = Source::parse("/api").unwrap();
        let mut bad = draft();
        bad.changes[0].content = None;
        let err = propose(&ws, &source, "me", &bad).unwrap_err();
        assert!(
            matches!(err, DecisionError::Invalid { ref pointer, .. } if pointer == "/changes/0/content")
        );
        let (id, event) = propose(&ws, &source, "me", &draft()).unwrap();
        assert_eq!(event.stream.as_str(), format!("proposal/{id}"));
        assert_eq!(event.expected_version, ExpectedVersion::NoStream);
        assert_eq!(event.data["author"], "me");
    }
}
