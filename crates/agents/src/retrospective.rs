//! The retrospective agent: answers `retrospective.trigger.v1` (scheduled, by hand, or after a
//! `milestone.completed.v1`, which it turns into a trigger) with `retrospective.completed.v1`:
//! per-agent metrics over the period, insights backed by the events that support them, and
//! action items. Items for agents that act on them (their manifests subscribe to
//! `agent.action_item.assigned.v1`) are also sent to them as events; the rest are for people.
//! It publishes the same as `retrospective.md`.
//!
//! The period runs from the trigger's `window.from` (else the end of the previous
//! retrospective, else the beginning) to its `window.to` (else the trigger's time).

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_artifacts::{Contracts, contracts_for, publish};
use switchyard_events::RecordedEvent;

use crate::ledger::{self, Record};

/// The artifact it produces.
pub const REPORT: &str = "retrospective.md";

/// How retrospectives judge agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrospectiveConfig {
    /// When to run, a cron pattern in UTC (5 fields, or 6 with seconds first); empty: never.
    pub schedule: String,
    /// An agent whose approval rate is below this gets action items.
    pub approval_target: f64,
    /// Decisions in the period before an approval rate is judged at all.
    pub min_decisions: u64,
}

impl Default for RetrospectiveConfig {
    fn default() -> Self {
        Self {
            schedule: "0 18 * * *".into(),
            approval_target: 0.7,
            min_decisions: 3,
        }
    }
}

/// The agent.
#[derive(Debug)]
pub struct Retrospective {
    manifest: Manifest,
    contracts: Arc<Contracts>,
    config: RetrospectiveConfig,
    /// Agents that act on action items.
    adaptive: Vec<String>,
}

impl Retrospective {
    /// With its manifest; `adaptive` are the agents that take action items as events.
    pub fn new(
        contracts: Arc<Contracts>,
        config: RetrospectiveConfig,
        adaptive: Vec<String>,
    ) -> Self {
        Self {
            manifest: Manifest {
                name: "retrospective".into(),
                version: "0.2.0".into(),
                capabilities: vec!["retrospective".into(), "metrics".into()],
                subscribes: crate::event_types(&[
                    "retrospective.trigger.v1",
                    "milestone.completed.v1",
                ]),
                emits: crate::event_types(&[
                    "retrospective.trigger.v1",
                    "retrospective.completed.v1",
                    "agent.action_item.assigned.v1",
                    "artifact.updated.v1",
                ]),
                produces: vec![REPORT.into()],
                consumes: Vec::new(),
            },
            contracts,
            config,
            adaptive,
        }
    }
}

/// Metric and agent names as the schema allows them (`a-z0-9_-`).
fn key(name: &str) -> String {
    let mut k: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if !k.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        k.insert(0, 'x');
        k.truncate(63);
    }
    k
}

/// An action item id as the schema allows it: at most 128 characters.
fn item_id(id: &str) -> String {
    id.chars().take(128).collect()
}

fn within(t: DateTime<Utc>, from: Option<DateTime<Utc>>, to: DateTime<Utc>) -> bool {
    from.is_none_or(|f| t >= f) && t < to
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| (a as f64 / b as f64 * 1000.0).round() / 1000.0)
}

/// What one agent did in the period.
#[derive(Debug, Default)]
struct Tally {
    metrics: BTreeMap<String, f64>,
    /// Decision events, approved and rejected, per kind of change.
    decided: BTreeMap<String, (Vec<String>, Vec<String>)>,
    reasons: BTreeMap<String, u64>,
    reason_events: Vec<String>,
    rejected_confidence: Vec<f64>,
    decision_secs: Vec<i64>,
}

impl Tally {
    fn add(&mut self, name: &str, n: f64) {
        *self.metrics.entry(name.to_owned()).or_default() += n;
    }
    fn approved(&self) -> u64 {
        self.decided.values().map(|(a, _)| a.len() as u64).sum()
    }
    fn rejected(&self) -> u64 {
        self.decided.values().map(|(_, r)| r.len() as u64).sum()
    }
}

/// The retrospective of one period: metrics, insights, action items.
struct Review {
    tallies: BTreeMap<String, Tally>,
    insights: Vec<Value>,
    items: Vec<Value>,
    assignments: Vec<Value>,
}

impl Retrospective {
    fn review(
        &self,
        id: &str,
        trigger: &str,
        records: &[Record],
        others: &[(String, String, String, DateTime<Utc>, Value)],
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Review {
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for r in records {
            let author = key(&r.author);
            // Part of metric names (at most 64 characters): valid and short, whoever wrote it.
            let kind: String = r
                .kind
                .as_deref()
                .map_or_else(|| "manual".into(), key)
                .chars()
                .take(40)
                .collect();
            if within(r.created_at, from, to) {
                let t = tallies.entry(author.clone()).or_default();
                t.add("proposals", 1.0);
                t.add(&format!("proposals.{kind}"), 1.0);
            }
            if let (Some(approved), Some(at), Some(event)) =
                (r.approved, r.decided_at, r.decision_event.clone())
                && within(at, from, to)
            {
                let t = tallies.entry(author.clone()).or_default();
                let entry = t.decided.entry(kind.clone()).or_default();
                if approved {
                    entry.0.push(event);
                } else {
                    entry.1.push(event.clone());
                    let reason = r.reason.clone().unwrap_or_else(|| "no reason given".into());
                    *t.reasons.entry(reason).or_default() += 1;
                    t.reason_events.push(event);
                    if let Some(c) = r.confidence {
                        t.rejected_confidence.push(c);
                    }
                }
                t.decision_secs
                    .push((at - r.created_at).num_seconds().max(0));
            }
        }
        // Commits, dead letters and task outcomes, by the agent they concern.
        let mut evidence: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
        for (event_id, ty, source, time, data) in others {
            if !within(*time, from, to) {
                continue;
            }
            let by_source = source.strip_prefix("/agents/").map(key);
            let (agent, metric) = match ty.as_str() {
                "git.commit.v1" => (by_source, "commits"),
                "git.commit_failed.v1" => (by_source, "failed_commits"),
                "agent.failed.v1" => (data["agent"].as_str().map(key), "dead_letters"),
                "task.completed.v1" => (by_source, "tasks_completed"),
                "task.failed.v1" => (by_source, "tasks_failed"),
                _ => (None, ""),
            };
            let Some(agent) = agent else { continue };
            tallies.entry(agent.clone()).or_default().add(metric, 1.0);
            evidence
                .entry((metric, agent))
                .or_default()
                .push(event_id.clone());
        }
        let mut insights = Vec::new();
        let mut items = Vec::new();
        let mut assignments = Vec::new();
        for (agent, t) in &mut tallies {
            let (approved, rejected) = (t.approved(), t.rejected());
            if approved + rejected > 0 {
                t.add("approved", approved as f64);
                t.add("rejected", rejected as f64);
            }
            if let Some(rate) = ratio(approved, approved + rejected) {
                t.metrics.insert("approval_rate".into(), rate);
            }
            for (kind, (a, r)) in &t.decided {
                let (a, r) = (a.len() as u64, r.len() as u64);
                if let Some(rate) = ratio(a, a + r) {
                    t.metrics.insert(format!("approval_rate.{kind}"), rate);
                }
            }
            if !t.decision_secs.is_empty() {
                let mean =
                    t.decision_secs.iter().sum::<i64>() as f64 / t.decision_secs.len() as f64;
                t.metrics
                    .insert("time_to_decision_secs".into(), mean.round());
            }
            let done = t.metrics.get("tasks_completed").copied().unwrap_or(0.0);
            let failed = t.metrics.get("tasks_failed").copied().unwrap_or(0.0);
            if done + failed > 0.0 {
                t.metrics.insert(
                    "task_success_rate".into(),
                    (done / (done + failed) * 1000.0).round() / 1000.0,
                );
            }
            if approved + rejected > 0 {
                let all: Vec<&String> = t
                    .decided
                    .values()
                    .flat_map(|(a, r)| a.iter().chain(r))
                    .take(100)
                    .collect();
                insights.push(json!({
                    "text": format!(
                        "{agent}: {approved} of {} proposals approved ({:.0}%) in this period",
                        approved + rejected,
                        100.0 * approved as f64 / (approved + rejected) as f64
                    ),
                    "evidence": all,
                }));
            }
            if t.decided.len() > 1 {
                let parts: Vec<String> = t
                    .decided
                    .iter()
                    .map(|(k, (a, r))| format!("{k} {} of {}", a.len(), a.len() + r.len()))
                    .collect();
                let evidence: Vec<&String> = t
                    .decided
                    .values()
                    .filter_map(|(a, r)| r.first().or(a.first()))
                    .collect();
                insights.push(json!({
                    "text": format!("{agent}'s approvals by kind of change: {}", parts.join(", ")),
                    "evidence": evidence,
                }));
            }
            if let Some((reason, n)) = t.reasons.iter().max_by_key(|(_, n)| **n) {
                let reason: String = reason.chars().take(500).collect();
                insights.push(json!({
                    "text": format!("{agent}: the most common rejection reason was \"{reason}\" ({n} of {rejected})"),
                    "evidence": t.reason_events.iter().take(100).collect::<Vec<_>>(),
                }));
            }
            // Action items for an agent that keeps being rejected.
            let rate = ratio(approved, approved + rejected).unwrap_or(1.0);
            if approved + rejected >= self.config.min_decisions
                && rate < self.config.approval_target
            {
                let target = self.config.approval_target;
                let mut avoid: Vec<(String, u64, u64, Vec<String>)> = t
                    .decided
                    .iter()
                    .filter(|(kind, (a, r))| {
                        kind.as_str() != "manual"
                            && r.len() >= 2
                            && (a.len() as f64) / ((a.len() + r.len()) as f64) < target
                    })
                    .map(|(k, (a, r))| (k.clone(), a.len() as u64, r.len() as u64, r.clone()))
                    .collect();
                avoid.sort();
                let mut actions: Vec<(String, String, Value, Vec<String>)> = avoid
                    .into_iter()
                    .map(|(kind, a, r, events)| {
                        (
                            item_id(&format!("{id}.{agent}.avoid-{kind}")),
                            format!(
                                "Stop proposing {kind} changes: {a} of {} approved, below the {:.0}% target.",
                                a + r,
                                target * 100.0
                            ),
                            json!({"kind": "avoid_kind", "finding_kind": kind, "approval_rate": rate, "target": target}),
                            events,
                        )
                    })
                    .collect();
                if actions.is_empty() {
                    let highest = t
                        .rejected_confidence
                        .iter()
                        .copied()
                        .fold(0.0_f64, f64::max);
                    let threshold = ((highest + 0.05).min(0.99) * 100.0).round() / 100.0;
                    actions.push((
                        item_id(&format!("{id}.{agent}.raise-confidence")),
                        format!(
                            "Raise the confidence threshold to {threshold:.2}: approval rate {:.0}%, below the {:.0}% target.",
                            rate * 100.0,
                            target * 100.0
                        ),
                        json!({"kind": "raise_confidence", "min_confidence": threshold, "approval_rate": rate, "target": target}),
                        t.reason_events.clone(),
                    ));
                }
                for (item_id, text, action, events) in actions {
                    items.push(
                        json!({"id": item_id, "agent": agent, "text": text, "status": "open"}),
                    );
                    if self.adaptive.contains(agent) {
                        assignments.push(json!({
                            "action_item_id": item_id, "retrospective_id": id, "agent": agent,
                            "text": text, "action": action,
                            "evidence": events.into_iter().take(100).collect::<Vec<_>>(),
                        }));
                    }
                }
            }
        }
        for ((metric, agent), ids) in &evidence {
            let (text, item) = match *metric {
                "dead_letters" => (
                    format!("{agent} gave up on {} event(s) in this period", ids.len()),
                    Some(format!(
                        "Look into the {} dead letter(s) of {agent} (GET /v1/ops/dead-letters) and retry them once fixed",
                        ids.len()
                    )),
                ),
                "failed_commits" => (
                    format!("{agent}: {} commit(s) failed in this period", ids.len()),
                    Some(format!(
                        "Resolve the {} failed commit(s) of {agent}: the reasons are in git.commit_failed.v1",
                        ids.len()
                    )),
                ),
                "commits" => (format!("{agent} committed {} change(s)", ids.len()), None),
                "tasks_failed" => (format!("{agent}: {} task run(s) failed", ids.len()), None),
                "tasks_completed" => (format!("{agent} completed {} task run(s)", ids.len()), None),
                _ => (format!("{agent}: {} {metric}", ids.len()), None),
            };
            insights
                .push(json!({"text": text, "evidence": ids.iter().take(100).collect::<Vec<_>>()}));
            if let Some(item) = item {
                items.push(json!({
                    "id": item_id(&format!("{id}.{agent}.{}", metric.replace('_', "-"))),
                    "agent": agent, "text": item, "status": "open",
                }));
            }
        }
        // A quiet period still says what it saw, backed by the trigger itself.
        for quiet in [
            "No proposal was decided in this period",
            "No commit was made in this period",
            "No agent gave up on an event in this period",
        ] {
            if insights.len() >= 3 {
                break;
            }
            insights.push(json!({"text": quiet, "evidence": [trigger]}));
        }
        insights.truncate(100);
        items.truncate(100);
        Review {
            tallies,
            insights,
            items,
            assignments,
        }
    }
}

fn report(id: &str, from: Option<DateTime<Utc>>, to: DateTime<Utc>, review: &Review) -> String {
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut out = format!(
        "# Retrospective {id}\n\nPeriod: {} to {}.\n\n## Metrics\n\n| agent | metric | value |\n| --- | --- | --- |\n",
        from.map_or("the beginning".to_owned(), stamp),
        stamp(to)
    );
    for (agent, t) in &review.tallies {
        for (name, value) in &t.metrics {
            out.push_str(&format!("| {agent} | {name} | {value} |\n"));
        }
    }
    out.push_str("\n## Insights\n\n");
    for i in &review.insights {
        out.push_str(&format!(
            "- {} (evidence: {})\n",
            i["text"].as_str().unwrap_or_default(),
            i["evidence"].as_array().map_or(0, Vec::len)
        ));
    }
    out.push_str("\n## Action items\n\n");
    if review.items.is_empty() {
        out.push_str("None.\n");
    }
    for i in &review.items {
        out.push_str(&format!(
            "- [ ] `{}` ({}): {}\n",
            i["id"].as_str().unwrap_or_default(),
            i["agent"].as_str().unwrap_or("people"),
            i["text"].as_str().unwrap_or_default()
        ));
    }
    out
}

impl Agent for Retrospective {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.ty.as_str() == "milestone.completed.v1" {
                let milestone = event.data["milestone_id"].as_str().unwrap_or("milestone");
                let suffix: String = event.id.as_str().chars().rev().take(12).collect();
                let id = format!("milestone-{}-{suffix}", key(milestone));
                return ctx.emit(
                    "retrospective.trigger.v1",
                    &format!("retrospective/{id}"),
                    json!({"retrospective_id": id, "reason": "milestone", "requested_by": "strategy"}),
                );
            }
            let id = event.data["retrospective_id"]
                .as_str()
                .ok_or_else(|| HandlerError::new("the trigger has no retrospective_id"))?
                .to_owned();
            let window = |k: &str| {
                event.data["window"][k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.to_utc())
            };
            let ws = event.workspace.as_str();
            let to = window("to").unwrap_or(event.time);
            let from = match window("from") {
                Some(from) => Some(from),
                None => {
                    // Since the end of the previous retrospective.
                    let previous: Option<Option<String>> = sqlx::query_scalar(
                        "SELECT data->'window'->>'to' FROM events
                         WHERE workspace = $1 AND type IN ('retrospective.completed.v1')
                           AND position < $2
                         ORDER BY position DESC LIMIT 1",
                    )
                    .bind(ws)
                    .bind(event.position)
                    .fetch_optional(ctx.connection())
                    .await?;
                    previous
                        .flatten()
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.to_utc())
                        .filter(|t| *t < to)
                }
            };
            let records = ledger::load(ctx.connection(), ws).await?;
            let others: Vec<(String, String, String, DateTime<Utc>, Value)> = sqlx::query_as(
                "SELECT id, type, source, time, data FROM events
                 WHERE workspace = $1 AND type IN ('git.commit.v1', 'git.commit_failed.v1',
                       'agent.failed.v1', 'task.completed.v1', 'task.failed.v1')
                   AND ($2::timestamptz IS NULL OR time >= $2) AND time < $3
                 ORDER BY position LIMIT 100000",
            )
            .bind(ws)
            .bind(from)
            .bind(to)
            .fetch_all(ctx.connection())
            .await?;
            let review = self.review(&id, event.id.as_str(), &records, &others, from, to);
            let contracts = contracts_for(ctx.connection(), &self.contracts, ws).await?;
            publish(ctx, &contracts, REPORT, report(&id, from, to, &review)).await?;
            let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut window = json!({"to": stamp(to)});
            if let Some(from) = from {
                window["from"] = json!(stamp(from));
            }
            let metrics: BTreeMap<&String, &BTreeMap<String, f64>> = review
                .tallies
                .iter()
                .filter(|(_, t)| !t.metrics.is_empty())
                .map(|(a, t)| (a, &t.metrics))
                .take(256)
                .collect();
            let reasons: BTreeMap<&String, BTreeMap<&String, u64>> = review
                .tallies
                .iter()
                .filter(|(_, t)| !t.reasons.is_empty())
                .map(|(a, t)| {
                    (
                        a,
                        t.reasons.iter().take(100).map(|(r, n)| (r, *n)).collect(),
                    )
                })
                .collect();
            let stream = format!("retrospective/{id}");
            ctx.emit(
                "retrospective.completed.v1",
                &stream,
                json!({
                    "retrospective_id": id,
                    "reason": event.data["reason"].as_str().unwrap_or("manual"),
                    "window": window,
                    "metrics": metrics,
                    "rejection_reasons": reasons,
                    "insights": review.insights,
                    "action_items": review.items,
                }),
            )?;
            for assignment in review.assignments {
                ctx.emit("agent.action_item.assigned.v1", &stream, assignment)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ledger::Status;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn decided(id: &str, kind: &str, approved: bool, confidence: f64) -> Record {
        Record {
            id: id.into(),
            title: id.into(),
            author: "spec".into(),
            kind: Some(kind.into()),
            confidence: Some(confidence),
            created_at: at("2026-12-02T10:00:00Z"),
            status: if approved {
                Status::Committed
            } else {
                Status::Dropped
            },
            approved: Some(approved),
            decided_at: Some(at("2026-12-02T10:00:30Z")),
            decision_event: Some(format!("d-{id}")),
            reason: (!approved).then(|| "noise".to_owned()),
            sha: None,
            committed_at: None,
            commit_event: None,
            failures: Vec::new(),
        }
    }

    fn agent() -> Retrospective {
        Retrospective::new(
            Arc::new(Contracts::builtin().unwrap()),
            RetrospectiveConfig::default(),
            vec!["spec".into()],
        )
    }

    #[test]
    fn a_kind_that_keeps_being_rejected_becomes_an_action_item_for_the_spec_agent() {
        let mut records = Vec::new();
        for i in 0..4 {
            records.push(decided(&format!("l{i}"), "broken-link", true, 0.9));
            records.push(decided(&format!("w{i}"), "trailing-whitespace", false, 0.6));
        }
        let failed = (
            "f1".to_owned(),
            "agent.failed.v1".to_owned(),
            "/runtime".to_owned(),
            at("2026-12-02T10:01:00Z"),
            json!({"agent": "github"}),
        );
        let review = agent().review(
            "r1",
            "t1",
            &records,
            &[failed],
            Some(at("2026-12-02T00:00:00Z")),
            at("2026-12-03T00:00:00Z"),
        );
        let spec = &review.tallies["spec"].metrics;
        assert_eq!(spec["approval_rate"], 0.5);
        assert_eq!(spec["approval_rate.broken-link"], 1.0);
        assert_eq!(spec["approval_rate.trailing-whitespace"], 0.0);
        assert_eq!(spec["time_to_decision_secs"], 30.0);
        assert_eq!(review.tallies["github"].metrics["dead_letters"], 1.0);
        let ids: Vec<&str> = review
            .items
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "r1.spec.avoid-trailing-whitespace",
                "r1.github.dead-letters"
            ]
        );
        // Only the agent that acts on items gets one as an event.
        assert_eq!(review.assignments.len(), 1);
        assert_eq!(
            review.assignments[0]["action"]["finding_kind"],
            "trailing-whitespace"
        );
        assert_eq!(
            review.assignments[0]["evidence"].as_array().unwrap().len(),
            4
        );
        assert!(review.insights.len() >= 3);
        assert!(
            review
                .insights
                .iter()
                .all(|i| !i["evidence"].as_array().unwrap().is_empty())
        );
        // Outside the period, nothing counts.
        let later = agent().review(
            "r2",
            "t2",
            &records,
            &[],
            Some(at("2026-12-03T00:00:00Z")),
            at("2026-12-04T00:00:00Z"),
        );
        assert!(later.tallies.is_empty() && later.items.is_empty());
        assert_eq!(
            later.insights.len(),
            3,
            "a quiet period still has three insights"
        );
        assert!(
            later
                .insights
                .iter()
                .all(|i| i["evidence"] == json!(["t2"]))
        );
    }

    #[test]
    fn rejections_spread_over_kinds_raise_the_confidence_threshold() {
        let records = [
            decided("a1", "a", true, 0.9),
            decided("a2", "a", false, 0.7),
            decided("b1", "b", false, 0.75),
            decided("c1", "c", false, 0.8),
        ];
        let review = agent().review("r", "t", &records, &[], None, at("2026-12-03T00:00:00Z"));
        assert_eq!(review.assignments.len(), 1);
        let action = &review.assignments[0]["action"];
        assert_eq!(action["kind"], "raise_confidence");
        assert_eq!(action["min_confidence"], 0.85);
        assert_eq!(action["approval_rate"], 0.25);
    }

    #[test]
    fn names_become_valid_keys() {
        assert_eq!(key("spec"), "spec");
        assert_eq!(key("Alice Smith"), "alice-smith");
        assert_eq!(key("_x"), "x_x");
    }
}
