//! Retrospectives over time: each retrospective with its period, insights and action items,
//! its per-agent metrics as rows (for series: one agent's approval rate across periods), and
//! each action item's fate (assigned to an agent, done or dropped, with the outcome).

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::RecordedEvent;

use crate::Projection;

/// The `retrospectives` projection (schema `proj_retrospectives`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Retrospectives;

const SCHEMA: &str = "
CREATE TABLE retrospectives (
    workspace     text NOT NULL,
    id            text NOT NULL,
    reason        text,
    window_from   timestamptz,
    window_to     timestamptz,
    completed_at  timestamptz NOT NULL,
    event_id      text NOT NULL,
    insights      jsonb NOT NULL,
    action_items  jsonb NOT NULL,
    rejection_reasons jsonb,
    position      bigint NOT NULL,
    PRIMARY KEY (workspace, id)
);
CREATE TABLE metrics (
    workspace         text NOT NULL,
    retrospective_id  text NOT NULL,
    agent             text NOT NULL,
    name              text NOT NULL,
    value             double precision NOT NULL,
    window_from       timestamptz,
    window_to         timestamptz,
    PRIMARY KEY (workspace, retrospective_id, agent, name)
);
CREATE INDEX metrics_by_agent ON metrics (workspace, agent, window_to);
CREATE TABLE action_items (
    workspace         text NOT NULL,
    id                text NOT NULL,
    retrospective_id  text NOT NULL,
    agent             text,
    text              text NOT NULL,
    action            jsonb,
    status            text NOT NULL,
    assigned_at       timestamptz NOT NULL,
    completed_at      timestamptz,
    outcome           text,
    PRIMARY KEY (workspace, id)
);
";

fn time(data: &Value, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    data["window"][key]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
}

impl Projection for Retrospectives {
    fn name(&self) -> &'static str {
        "retrospectives"
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn types(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "retrospective.completed.v1",
            "agent.action_item.assigned.v1",
            "agent.action_item.completed.v1",
        ])
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let data = &event.data;
            let ws = event.workspace.as_str();
            match event.ty.as_str() {
                "retrospective.completed.v1" => {
                    let id = data["retrospective_id"].as_str().unwrap_or_default();
                    let (from, to) = (time(data, "from"), time(data, "to"));
                    let inserted = sqlx::query(
                        "INSERT INTO retrospectives (workspace, id, reason, window_from, window_to,
                             completed_at, event_id, insights, action_items, rejection_reasons, position)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(ws)
                    .bind(id)
                    .bind(data["reason"].as_str())
                    .bind(from)
                    .bind(to)
                    .bind(event.time)
                    .bind(event.id.as_str())
                    .bind(&data["insights"])
                    .bind(&data["action_items"])
                    .bind(data.get("rejection_reasons"))
                    .bind(event.position)
                    .execute(&mut *tx)
                    .await?;
                    if inserted.rows_affected() == 0 {
                        return Ok(());
                    }
                    for (agent, metrics) in data["metrics"].as_object().into_iter().flatten() {
                        for (name, value) in metrics.as_object().into_iter().flatten() {
                            let Some(value) = value.as_f64() else {
                                continue;
                            };
                            sqlx::query(
                                "INSERT INTO metrics (workspace, retrospective_id, agent, name, value, window_from, window_to)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                            )
                            .bind(ws)
                            .bind(id)
                            .bind(agent)
                            .bind(name)
                            .bind(value)
                            .bind(from)
                            .bind(to)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    for item in data["action_items"].as_array().into_iter().flatten() {
                        sqlx::query(
                            "INSERT INTO action_items (workspace, id, retrospective_id, agent, text, status, assigned_at)
                             VALUES ($1, $2, $3, $4, $5, 'open', $6) ON CONFLICT DO NOTHING",
                        )
                        .bind(ws)
                        .bind(item["id"].as_str().unwrap_or_default())
                        .bind(id)
                        .bind(item["agent"].as_str())
                        .bind(item["text"].as_str().unwrap_or_default())
                        .bind(event.time)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                "agent.action_item.assigned.v1" => {
                    sqlx::query(
                        "INSERT INTO action_items (workspace, id, retrospective_id, agent, text, action, status, assigned_at)
                         VALUES ($1, $2, $3, $4, $5, $6, 'assigned', $7)
                         ON CONFLICT (workspace, id) DO UPDATE SET action = $6,
                             status = CASE WHEN action_items.status = 'open' THEN 'assigned' ELSE action_items.status END",
                    )
                    .bind(ws)
                    .bind(data["action_item_id"].as_str().unwrap_or_default())
                    .bind(data["retrospective_id"].as_str().unwrap_or_default())
                    .bind(data["agent"].as_str())
                    .bind(data["text"].as_str().unwrap_or_default())
                    .bind(&data["action"])
                    .bind(event.time)
                    .execute(&mut *tx)
                    .await?;
                }
                "agent.action_item.completed.v1" => {
                    sqlx::query(
                        "UPDATE action_items SET status = $3, completed_at = $4, outcome = $5
                         WHERE workspace = $1 AND id = $2",
                    )
                    .bind(ws)
                    .bind(data["action_item_id"].as_str().unwrap_or_default())
                    .bind(data["status"].as_str().unwrap_or("done"))
                    .bind(event.time)
                    .bind(data["outcome"].as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}
