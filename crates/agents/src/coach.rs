//! The coach agent: reads each new version of `milestones.md` (and says so:
//! `artifact.consumed.v1`), writes `daily_checklist.md` from it — what waits for a decision,
//! what is blocked, what is approved but not committed — and nudges (`coach.nudge.v1`) once per
//! item about work that is blocked or has waited for a decision longer than `stale_after`.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::json;
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_artifacts::{Contracts, Version, consume, contracts_for, publish};
use switchyard_events::RecordedEvent;

use crate::strategy::MILESTONES;

/// The artifact it produces.
pub const CHECKLIST: &str = "daily_checklist.md";

/// The agent.
#[derive(Debug)]
pub struct CoachAgent {
    manifest: Manifest,
    contracts: Arc<Contracts>,
    stale_after: Duration,
}

impl CoachAgent {
    /// With its manifest, under `contracts`; a pending item older than `stale_after` is
    /// stale.
    pub fn new(contracts: Arc<Contracts>, stale_after: Duration) -> Self {
        Self {
            manifest: Manifest {
                name: "coach".into(),
                version: "0.1.0".into(),
                capabilities: vec!["coach".into()],
                subscribes: crate::event_types(&["artifact.updated.v1"]),
                emits: crate::event_types(&[
                    "artifact.updated.v1",
                    "artifact.consumed.v1",
                    "coach.nudge.v1",
                ]),
                produces: vec![CHECKLIST.into()],
                consumes: vec![MILESTONES.into()],
            },
            contracts,
            stale_after,
        }
    }
}

/// An item line of `milestones.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) milestone: String,
    pub(crate) title: String,
    pub(crate) id: String,
    pub(crate) state: String,
}

/// The open items of `milestones.md` (`- [ ] title — `id` · state`), with their milestone
/// (the `` `id` · … `` line under each heading).
pub(crate) fn open_items(markdown: &str) -> Vec<Item> {
    let mut milestone = String::new();
    let mut out = Vec::new();
    for line in markdown.lines() {
        if let Some(rest) = line.strip_prefix('`')
            && let Some((id, _)) = rest.split_once("` · ")
        {
            id.clone_into(&mut milestone);
            continue;
        }
        let Some(rest) = line.strip_prefix("- [ ] ") else {
            continue;
        };
        let Some((title, tail)) = rest.rsplit_once(" — `") else {
            continue;
        };
        let Some((id, state)) = tail.split_once("` · ") else {
            continue;
        };
        out.push(Item {
            milestone: milestone.clone(),
            title: title.to_owned(),
            id: id.to_owned(),
            state: state.to_owned(),
        });
    }
    out
}

fn hours(d: chrono::Duration) -> String {
    let h = d.num_minutes() as f64 / 60.0;
    format!("{h:.1} h")
}

impl Agent for CoachAgent {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.data["name"] != MILESTONES {
                return Ok(());
            }
            let version = Version {
                version: event.data["version"].as_i64().unwrap_or_default(),
                content_hash: event.data["content_hash"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                content: event.data["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event_id: event.id.to_string(),
            };
            consume(ctx, MILESTONES, &version)?;
            let ws = event.workspace.as_str();
            let contracts = contracts_for(ctx.connection(), &self.contracts, ws).await?;
            let now = event.time;
            let stale_after = chrono::Duration::from_std(self.stale_after)
                .unwrap_or_else(|_| chrono::Duration::days(1));
            let items = open_items(&version.content);
            let mut decide = Vec::new();
            let mut unblock = Vec::new();
            let mut commit = Vec::new();
            for item in &items {
                let since = item
                    .state
                    .strip_prefix("pending since ")
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                let (reason, to, text) = if let Some(since) = since {
                    let waited = now - since;
                    decide.push(format!(
                        "- [ ] Decide on `{}`: {} (waiting {})",
                        item.id,
                        item.title,
                        hours(waited)
                    ));
                    if waited <= stale_after {
                        continue;
                    }
                    (
                        "stale",
                        "reviewers",
                        format!(
                            "{} (`{}`) has waited {} for a decision, more than {}.",
                            item.title,
                            item.id,
                            hours(waited),
                            hours(stale_after)
                        ),
                    )
                } else if let Some(why) = item.state.strip_prefix("blocked: ") {
                    unblock.push(format!(
                        "- [ ] Unblock `{}`: {} — {why}",
                        item.id, item.title
                    ));
                    (
                        "blocked",
                        "people",
                        format!("{} (`{}`) is blocked: {why}", item.title, item.id),
                    )
                } else {
                    commit.push(format!(
                        "- [ ] Watch `{}` get committed: {}",
                        item.id, item.title
                    ));
                    continue;
                };
                let nudge_id = format!("{reason}-{}", item.id);
                let key = format!("nudged:{nudge_id}");
                if ctx.recall(&key).await?.is_some() {
                    continue;
                }
                ctx.emit(
                    "coach.nudge.v1",
                    &format!("coach/nudges/{}", item.id),
                    json!({
                        "nudge_id": nudge_id, "reason": reason, "item": item.id,
                        "milestone": item.milestone, "to": to, "text": text,
                        "artifact_version": version.version,
                    }),
                )?;
                ctx.remember(&key, json!(version.version))?;
            }
            let mut checklist = format!(
                "# Daily checklist\n\nFrom `{MILESTONES}` version {} ({} open items).\n",
                version.version,
                items.len()
            );
            for (heading, lines) in [
                ("Decide", &decide),
                ("Unblock", &unblock),
                ("Follow up", &commit),
            ] {
                if lines.is_empty() {
                    continue;
                }
                checklist.push_str(&format!("\n## {heading}\n\n{}\n", lines.join("\n")));
            }
            if items.is_empty() {
                checklist.push_str("\nNothing is open.\n");
            }
            publish(ctx, &contracts, CHECKLIST, checklist).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_open_items_back_from_the_strategy_format() {
        let md = "# Milestones\n\n## Docs without dead links\n\n`broken-link` · 1 of 3 done · 1 blocked\n\n- [x] Fix a — `p1` · committed abc\n- [ ] Fix b — `p2` · pending since 2026-12-02T04:00:00Z\n- [ ] Fix — c — `p3` · blocked: conflict on README.md\n- [-] Fix d — `p4` · dropped: noise\n";
        let items = open_items(md);
        assert_eq!(
            items,
            [
                Item {
                    milestone: "broken-link".into(),
                    title: "Fix b".into(),
                    id: "p2".into(),
                    state: "pending since 2026-12-02T04:00:00Z".into()
                },
                Item {
                    milestone: "broken-link".into(),
                    title: "Fix — c".into(),
                    id: "p3".into(),
                    state: "blocked: conflict on README.md".into()
                },
            ]
        );
    }
}
