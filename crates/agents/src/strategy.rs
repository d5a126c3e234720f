//! The strategy agent: keeps `milestones.md` from the workspace's proposals, decisions and
//! commits. A milestone groups the proposals of one kind of change (a finding's kind, e.g.
//! `broken-link`; people's own proposals form one milestone); an item is done when committed,
//! dropped when rejected, blocked when its commit failed. Each change of the file is a new
//! artifact version and a `strategy.updated.v1`; a milestone whose items are all done or
//! dropped (at least one done) gets `milestone.completed.v1`, once per completion.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_artifacts::{Contracts, contracts_for, publish};
use switchyard_events::RecordedEvent;

use crate::ledger::{self, Record, Status};

/// The artifact it produces.
pub const MILESTONES: &str = "milestones.md";

/// The agent.
#[derive(Debug)]
pub struct StrategyAgent {
    manifest: Manifest,
    contracts: Arc<Contracts>,
}

impl StrategyAgent {
    /// With its manifest, under `contracts`.
    pub fn new(contracts: Arc<Contracts>) -> Self {
        Self {
            manifest: Manifest {
                name: "strategy".into(),
                version: "0.1.0".into(),
                capabilities: vec!["strategy".into(), "planning".into()],
                subscribes: crate::event_types(&[
                    "proposal.created.v1",
                    "proposal.approved.v1",
                    "proposal.rejected.v1",
                    "proposal.merged.v1",
                    "proposal.closed.v1",
                    "git.commit.v1",
                    "git.commit_failed.v1",
                ]),
                emits: crate::event_types(&[
                    "artifact.updated.v1",
                    "strategy.updated.v1",
                    "milestone.completed.v1",
                ]),
                produces: vec![MILESTONES.into()],
                consumes: Vec::new(),
            },
            contracts,
        }
    }
}

/// One milestone, as `milestones.md` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Milestone {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) items: Vec<Record>,
}

impl Milestone {
    fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }

    fn complete(&self) -> bool {
        self.count(Status::Committed) > 0
            && self
                .items
                .iter()
                .all(|i| matches!(i.status, Status::Committed | Status::Dropped))
    }
}

/// The milestone of a proposal's kind.
fn milestone_of(kind: Option<&str>) -> (String, String) {
    match kind {
        Some("broken-link") => ("broken-link".into(), "Docs without dead links".into()),
        Some("trailing-whitespace") => (
            "trailing-whitespace".into(),
            "Markdown without trailing whitespace".into(),
        ),
        Some(kind) => (kind.to_owned(), format!("Fixes of kind {kind}")),
        None => ("people".into(), "Changes proposed by people".into()),
    }
}

pub(crate) fn milestones(records: &[Record]) -> Vec<Milestone> {
    let mut out: Vec<Milestone> = Vec::new();
    for r in records {
        let (id, title) = milestone_of(r.kind.as_deref());
        match out.iter_mut().find(|m| m.id == id) {
            Some(m) => m.items.push(r.clone()),
            None => out.push(Milestone {
                id,
                title,
                items: vec![r.clone()],
            }),
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `milestones.md`: deterministic in the records (no clock), so an unchanged state publishes
/// no new version. The coach agent reads the item lines back (`- [ ] title — `id` · state`).
pub(crate) fn render(milestones: &[Milestone]) -> String {
    let mut out = String::from(
        "# Milestones\n\nKept by the strategy agent from the workspace's proposals, decisions and commits: an item is done when committed, dropped when rejected, blocked when its commit failed.\n",
    );
    if milestones.is_empty() {
        out.push_str("\nNo proposals yet.\n");
    }
    for m in milestones {
        let done = m.count(Status::Committed);
        let blocked = m.count(Status::Blocked);
        let state = if m.complete() { " · complete" } else { "" };
        out.push_str(&format!(
            "\n## {}\n\n`{}` · {done} of {} done · {blocked} blocked{state}\n\n",
            m.title,
            m.id,
            m.items.len()
        ));
        for i in &m.items {
            let title = one_line(&i.title);
            let line = match i.status {
                Status::Committed => format!(
                    "- [x] {title} — `{}` · committed {}",
                    i.id,
                    i.sha.as_deref().map_or("", |s| &s[..s.len().min(12)])
                ),
                Status::Pending => format!(
                    "- [ ] {title} — `{}` · pending since {}",
                    i.id,
                    i.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                Status::Approved => {
                    format!("- [ ] {title} — `{}` · approved, not committed yet", i.id)
                }
                Status::Blocked => format!(
                    "- [ ] {title} — `{}` · blocked: {}",
                    i.id,
                    one_line(i.failures.last().map_or("", |f| f.2.as_str()))
                ),
                Status::Dropped => format!(
                    "- [-] {title} — `{}` · dropped: {}",
                    i.id,
                    one_line(i.reason.as_deref().unwrap_or("rejected"))
                ),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

impl Agent for StrategyAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ws = event.workspace.as_str();
            let contracts = contracts_for(ctx.connection(), &self.contracts, ws).await?;
            let records = ledger::load(ctx.connection(), ws).await?;
            let milestones = milestones(&records);
            let Some(version) = publish(ctx, &contracts, MILESTONES, render(&milestones)).await?
            else {
                return Ok(()); // nothing changed
            };
            let summary: Vec<_> = milestones
                .iter()
                .take(200)
                .map(|m| {
                    json!({
                        "id": m.id, "title": m.title, "items": m.items.len(),
                        "done": m.count(Status::Committed), "blocked": m.count(Status::Blocked),
                        "complete": m.complete(),
                    })
                })
                .collect();
            ctx.emit(
                "strategy.updated.v1",
                "strategy",
                json!({"artifact_version": version, "milestones": summary}),
            )?;
            for m in milestones.iter().filter(|m| m.complete()) {
                let key = format!("completed:{}", m.id);
                let items = m.items.len();
                if ctx.recall(&key).await?.and_then(|v| v.as_u64()) == Some(items as u64) {
                    continue;
                }
                ctx.emit(
                    "milestone.completed.v1",
                    &format!("milestone/{}", m.id),
                    json!({
                        "milestone_id": m.id, "title": m.title, "items": items,
                        "committed": m.count(Status::Committed), "artifact_version": version,
                    }),
                )?;
                ctx.remember(&key, json!(items))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::coach::open_items;

    fn record(id: &str, kind: Option<&str>, status: Status) -> Record {
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-12-02T04:00:00Z")
            .map(|t| t.to_utc())
            .unwrap_or_default();
        Record {
            id: id.into(),
            title: format!("Fix {id}"),
            author: "spec".into(),
            kind: kind.map(str::to_owned),
            confidence: Some(0.9),
            created_at: at,
            status,
            approved: None,
            decided_at: None,
            decision_event: None,
            reason: Some("noise".into()),
            sha: Some("0123456789abcdef".into()),
            committed_at: None,
            commit_event: None,
            failures: vec![("e1".into(), at, "conflict on README.md".into())],
        }
    }

    #[test]
    fn milestones_group_by_kind_complete_when_all_done_or_dropped_and_read_back() {
        let records = [
            record("p1", Some("broken-link"), Status::Committed),
            record("p2", Some("broken-link"), Status::Dropped),
            record("p3", Some("trailing-whitespace"), Status::Pending),
            record("p4", Some("trailing-whitespace"), Status::Blocked),
            record("p5", None, Status::Dropped),
        ];
        let milestones = milestones(&records);
        let shape: Vec<(&str, usize, bool)> = milestones
            .iter()
            .map(|m| (m.id.as_str(), m.items.len(), m.complete()))
            .collect();
        assert_eq!(
            shape,
            [
                ("broken-link", 2, true),
                ("trailing-whitespace", 2, false),
                // Nothing done: dropped only is not complete.
                ("people", 1, false),
            ]
        );
        let text = render(&milestones);
        assert_eq!(text, render(&milestones), "deterministic");
        assert!(text.contains("`broken-link` · 1 of 2 done · 0 blocked · complete"));
        assert!(text.contains("- [x] Fix p1 — `p1` · committed 0123456789ab"));
        assert!(text.contains("- [-] Fix p2 — `p2` · dropped: noise"));
        // What the coach reads back: the open items with their milestone and state.
        let open: Vec<(String, String, String)> = open_items(&text)
            .into_iter()
            .map(|i| (i.milestone, i.id, i.state))
            .collect();
        assert_eq!(
            open,
            [
                (
                    "trailing-whitespace".to_owned(),
                    "p3".to_owned(),
                    "pending since 2026-12-02T04:00:00Z".to_owned()
                ),
                (
                    "trailing-whitespace".to_owned(),
                    "p4".to_owned(),
                    "blocked: conflict on README.md".to_owned()
                ),
            ]
        );
    }
}
