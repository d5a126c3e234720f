//! A proposal's changes as a unified diff against the repository: the base is the parent of
//! the commit it became, or `HEAD` while it is undecided. Only repositories on disk can be
//! read; for others each change is shown against an empty base, and the answer says so.

use std::path::Path as FsPath;

use axum::{
    Extension, Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use switchyard_proposals::{Action, Change};

use crate::{ApiError, AppState, Principal, Scope};

/// Files larger than this are not diffed (the diff says so).
const MAX_DIFF_BYTES: usize = 512 * 1024;

/// A proposal's changes as diffs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProposalDiff {
    /// The proposal.
    id: String,
    /// What the changes were compared with: `HEAD` or `<commit>^` of a repository on disk,
    /// or `null` when the repository cannot be read here (a GitHub repository).
    base: Option<String>,
    /// One diff per change, in the proposal's order.
    files: Vec<FileDiff>,
}

/// One file's change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FileDiff {
    /// The path in the repository.
    path: String,
    /// `create`, `modify` or `delete`.
    action: String,
    /// Whether the file existed at the base.
    existed: bool,
    /// The unified diff (`---`/`+++` headers, hunks with 3 lines of context); empty when
    /// nothing changes.
    diff: String,
    /// Lines added and removed.
    added: usize,
    removed: usize,
}

/// A proposal's changes as a diff
///
/// Each change as a unified diff against the repository: the parent of the commit it became,
/// else `HEAD`. For a repository this server cannot read (GitHub), against an empty base,
/// with `base: null`. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/proposals/{id}/diff",
    tag = "proposals",
    operation_id = "proposal_diff",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The proposal"),
    ),
    responses(
        (status = 200, description = "The diffs", body = ProposalDiff),
        (status = 404, description = "No such workspace or proposal", body = ApiError),
    )
)]
pub(crate) async fn diff(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let proposal = crate::proposals::load(&state, &workspace, &id).await?;
    let changes: Vec<Change> = serde_json::from_value(proposal.proposal["changes"].clone())
        .map_err(|e| ApiError::internal(&e))?;
    let commit: Option<String> = sqlx::query_scalar::<_, Option<String>>(
        "SELECT commit_sha FROM proj_proposals.proposals WHERE workspace = $1 AND id = $2",
    )
    .bind(workspace.as_str())
    .bind(&id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?
    .flatten()
    .filter(|sha: &String| !sha.is_empty() && sha.bytes().all(|b| b.is_ascii_hexdigit()));
    let created = state.workspace(&workspace).await?;
    let repository = created.as_ref().map(|e| &e.data["repository"]);
    let local = repository
        .filter(|r| r["kind"] == "local")
        .and_then(|r| r["path"].as_str())
        .map(str::to_owned);
    let base = local
        .as_ref()
        .map(|_| commit.map_or_else(|| "HEAD".to_owned(), |sha| format!("{sha}^")));

    let mut files = Vec::with_capacity(changes.len());
    for change in changes {
        let old = match (&local, &base) {
            (Some(dir), Some(base)) => {
                switchyard_github::read_at(FsPath::new(dir), base, &change.path)
                    .await
                    .unwrap_or_default()
            }
            _ => None,
        };
        files.push(file_diff(&change, old.as_deref()));
    }
    Ok(Json(ProposalDiff { id, base, files }).into_response())
}

fn file_diff(change: &Change, old: Option<&str>) -> FileDiff {
    let action = match change.action {
        Action::Create => "create",
        Action::Modify => "modify",
        Action::Delete => "delete",
    };
    let new = match change.action {
        Action::Delete => "",
        Action::Create | Action::Modify => change.content.as_deref().unwrap_or_default(),
    };
    let before = old.unwrap_or_default();
    let (diff, added, removed) = if before.len() + new.len() > MAX_DIFF_BYTES {
        (
            format!("(not diffed: larger than {MAX_DIFF_BYTES} bytes)\n"),
            0,
            0,
        )
    } else {
        let text = similar::TextDiff::from_lines(before, new);
        let (mut added, mut removed) = (0, 0);
        for op in text.ops() {
            for c in text.iter_changes(op) {
                match c.tag() {
                    similar::ChangeTag::Insert => added += 1,
                    similar::ChangeTag::Delete => removed += 1,
                    similar::ChangeTag::Equal => {}
                }
            }
        }
        let from = if old.is_some() {
            format!("a/{}", change.path)
        } else {
            "/dev/null".to_owned()
        };
        let to = if matches!(change.action, Action::Delete) {
            "/dev/null".to_owned()
        } else {
            format!("b/{}", change.path)
        };
        let diff = text
            .unified_diff()
            .context_radius(3)
            .header(&from, &to)
            .to_string();
        (diff, added, removed)
    };
    FileDiff {
        path: change.path.clone(),
        action: action.to_owned(),
        existed: old.is_some(),
        diff,
        added,
        removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modification_is_a_unified_diff_with_counts() {
        let change = Change {
            path: "README.md".into(),
            action: Action::Modify,
            content: Some("a\nB\nc\n".into()),
        };
        let d = file_diff(&change, Some("a\nb\nc\n"));
        assert_eq!((d.added, d.removed, d.existed), (1, 1, true));
        assert!(
            d.diff.starts_with("--- a/README.md\n+++ b/README.md\n@@"),
            "{}",
            d.diff
        );
        assert!(d.diff.contains("\n-b\n+B\n"), "{}", d.diff);
    }

    #[test]
    fn a_new_file_is_all_added_from_dev_null() {
        let change = Change {
            path: "new.txt".into(),
            action: Action::Create,
            content: Some("one\ntwo\n".into()),
        };
        let d = file_diff(&change, None);
        assert_eq!((d.added, d.removed, d.existed), (2, 0, false));
        assert!(
            d.diff.starts_with("--- /dev/null\n+++ b/new.txt\n"),
            "{}",
            d.diff
        );
    }

    #[test]
    fn a_deletion_removes_every_line() {
        let change = Change {
            path: "old.txt".into(),
            action: Action::Delete,
            content: None,
        };
        let d = file_diff(&change, Some("x\ny\n"));
        assert_eq!((d.added, d.removed), (0, 2));
        assert!(d.diff.contains("+++ /dev/null"), "{}", d.diff);
    }
}
