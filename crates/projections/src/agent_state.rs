//! Agent state: each agent's manifest as last registered, what it remembers, how active it is
//! (events it emitted, events it gave up on), and how its proposals fare (made, approved,
//! rejected — the approval rate is approved / (approved + rejected) — and the last rejection
//! reason), and the messages agents send each other (with who acknowledged them).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::RecordedEvent;

use crate::Projection;

/// The `agent_state` projection (schema `proj_agent_state`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentState;

const SCHEMA: &str = "
CREATE TABLE agents (
    name           text PRIMARY KEY,
    version        text NOT NULL,
    capabilities   jsonb NOT NULL,
    subscribes     jsonb NOT NULL,
    emits          jsonb NOT NULL,
    manifest_hash  text NOT NULL,
    registered_at  timestamptz NOT NULL,
    registrations  integer NOT NULL
);
CREATE TABLE memory (
    workspace    text NOT NULL,
    agent        text NOT NULL,
    key          text NOT NULL,
    value        jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (workspace, agent, key)
);
CREATE TABLE proposal_authors (
    workspace    text NOT NULL,
    proposal_id  text NOT NULL,
    agent        text NOT NULL,
    PRIMARY KEY (workspace, proposal_id)
);
CREATE TABLE proposals (
    workspace    text NOT NULL,
    agent        text NOT NULL,
    made         bigint NOT NULL DEFAULT 0,
    approved     bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    last_rejection_reason text,
    PRIMARY KEY (workspace, agent)
);
CREATE TABLE messages (
    workspace    text NOT NULL,
    message_id   text NOT NULL,
    sender       text NOT NULL,
    recipient    text NOT NULL,
    kind         text NOT NULL,
    content      jsonb NOT NULL,
    reply_to     text,
    sent_at      timestamptz NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (workspace, message_id)
);
CREATE INDEX messages_by_recipient ON messages (workspace, recipient, position);
CREATE TABLE message_acks (
    workspace        text NOT NULL,
    message_id       text NOT NULL,
    agent            text NOT NULL,
    acknowledged_at  timestamptz NOT NULL,
    PRIMARY KEY (workspace, message_id, agent)
);
CREATE TABLE activity (
    workspace    text NOT NULL,
    agent        text NOT NULL,
    emitted      bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    last_active  timestamptz NOT NULL,
    PRIMARY KEY (workspace, agent)
);
";

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Projection for AgentState {
    fn name(&self) -> &'static str {
        "agent_state"
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    /// The types `apply_typed` and the memory write handle; activity counts every event whose
    /// source is an agent, so those come whatever their type.
    fn types(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "agent.memory.recorded.v1",
            "agent.registered.v1",
            "proposal.created.v1",
            "proposal.approved.v1",
            "proposal.rejected.v1",
            "agent.message.sent.v1",
            "agent.message.acknowledged.v1",
            "agent.failed.v1",
        ])
    }

    fn or_source_prefix(&self) -> Option<&'static str> {
        Some("/agents/")
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        self.apply_page(tx, std::slice::from_ref(event))
    }

    /// One statement for all of a page's memory records (the last value of each key) and one
    /// for its activity counts; the other events one by one, in order. Memory is written by
    /// memory records alone and activity only by commutative counts and `greatest`, so the
    /// grouping does not change the outcome.
    fn apply_page<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut memory: HashMap<(&str, String, String), &RecordedEvent> = HashMap::new();
            let mut emitted: HashMap<(&str, &str), (i64, DateTime<Utc>)> = HashMap::new();
            for event in events {
                if event.ty.as_str() == "agent.memory.recorded.v1" {
                    let key = (
                        event.workspace.as_str(),
                        text(&event.data, "agent"),
                        text(&event.data, "key"),
                    );
                    memory.insert(key, event);
                } else {
                    apply_typed(tx, event).await?;
                }
                if let Some(agent) = event.source.as_str().strip_prefix("/agents/") {
                    let entry = emitted
                        .entry((event.workspace.as_str(), agent))
                        .or_insert((0, event.time));
                    entry.0 += 1;
                    entry.1 = entry.1.max(event.time);
                }
            }
            write_memory(tx, memory).await?;
            write_activity(tx, emitted).await
        })
    }
}

async fn write_memory(
    tx: &mut PgConnection,
    memory: HashMap<(&str, String, String), &RecordedEvent>,
) -> Result<(), sqlx::Error> {
    if memory.is_empty() {
        return Ok(());
    }
    let (mut ws, mut agent, mut key, mut value, mut at, mut position) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((w, a, k), event) in memory {
        ws.push(w);
        agent.push(a);
        key.push(k);
        value.push(event.data.get("value").cloned().unwrap_or(Value::Null));
        at.push(event.time);
        position.push(event.position);
    }
    sqlx::query(
        "INSERT INTO memory (workspace, agent, key, value, recorded_at, position)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[],
                              $5::timestamptz[], $6::int8[])
         ON CONFLICT (workspace, agent, key) DO UPDATE SET
             value = excluded.value, recorded_at = excluded.recorded_at,
             position = excluded.position",
    )
    .bind(ws)
    .bind(agent)
    .bind(key)
    .bind(value)
    .bind(at)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn write_activity(
    tx: &mut PgConnection,
    emitted: HashMap<(&str, &str), (i64, DateTime<Utc>)>,
) -> Result<(), sqlx::Error> {
    if emitted.is_empty() {
        return Ok(());
    }
    let (mut ws, mut agent, mut count, mut at) = (vec![], vec![], vec![], vec![]);
    for ((w, a), (n, t)) in emitted {
        ws.push(w);
        agent.push(a);
        count.push(n);
        at.push(t);
    }
    sqlx::query(
        "INSERT INTO activity (workspace, agent, emitted, last_active)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::timestamptz[])
         ON CONFLICT (workspace, agent) DO UPDATE SET
             emitted = activity.emitted + excluded.emitted,
             last_active = greatest(activity.last_active, excluded.last_active)",
    )
    .bind(ws)
    .bind(agent)
    .bind(count)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every event but memory records and the activity count of its source.
async fn apply_typed(tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), sqlx::Error> {
    let data = &event.data;
    match event.ty.as_str() {
        "agent.registered.v1" => {
            sqlx::query(
                "INSERT INTO agents (name, version, capabilities, subscribes, emits,
                                             manifest_hash, registered_at, registrations)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1)
                         ON CONFLICT (name) DO UPDATE SET
                             version = $2, capabilities = $3, subscribes = $4, emits = $5,
                             manifest_hash = $6, registered_at = $7,
                             registrations = agents.registrations + 1",
            )
            .bind(text(data, "name"))
            .bind(text(data, "version"))
            .bind(
                data.get("capabilities")
                    .cloned()
                    .unwrap_or(Value::Array(vec![])),
            )
            .bind(
                data.get("subscribes")
                    .cloned()
                    .unwrap_or(Value::Array(vec![])),
            )
            .bind(data.get("emits").cloned().unwrap_or(Value::Array(vec![])))
            .bind(text(data, "manifest_hash"))
            .bind(event.time)
            .execute(&mut *tx)
            .await?;
        }
        "proposal.created.v1" => {
            let author = text(data, "author");
            sqlx::query(
                "INSERT INTO proposal_authors (workspace, proposal_id, agent) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
            )
            .bind(event.workspace.as_str())
            .bind(text(data, "proposal_id"))
            .bind(&author)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO proposals (workspace, agent, made) VALUES ($1, $2, 1)
                         ON CONFLICT (workspace, agent) DO UPDATE SET made = proposals.made + 1",
            )
            .bind(event.workspace.as_str())
            .bind(&author)
            .execute(&mut *tx)
            .await?;
        }
        "proposal.approved.v1" | "proposal.rejected.v1" => {
            let approved = event.ty.as_str() == "proposal.approved.v1";
            sqlx::query(
                "UPDATE proposals p SET
                             approved = p.approved + $3, rejected = p.rejected + $4,
                             last_rejection_reason = coalesce($5, p.last_rejection_reason)
                         FROM proposal_authors a
                         WHERE a.workspace = $1 AND a.proposal_id = $2
                           AND p.workspace = a.workspace AND p.agent = a.agent",
            )
            .bind(event.workspace.as_str())
            .bind(text(data, "proposal_id"))
            .bind(i64::from(approved))
            .bind(i64::from(!approved))
            .bind(if approved {
                None
            } else {
                Some(text(data, "reason"))
            })
            .execute(&mut *tx)
            .await?;
        }
        "agent.message.sent.v1" => {
            sqlx::query(
                "INSERT INTO messages (workspace, message_id, sender, recipient, kind,
                                               content, reply_to, sent_at, position)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT DO NOTHING",
            )
            .bind(event.workspace.as_str())
            .bind(text(data, "message_id"))
            .bind(text(data, "sender"))
            .bind(text(data, "recipient"))
            .bind(text(data, "type"))
            .bind(data.get("content").cloned().unwrap_or(Value::Null))
            .bind(data.get("reply_to").and_then(Value::as_str))
            .bind(event.time)
            .bind(event.position)
            .execute(&mut *tx)
            .await?;
        }
        "agent.message.acknowledged.v1" => {
            sqlx::query(
                "INSERT INTO message_acks (workspace, message_id, agent, acknowledged_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(event.workspace.as_str())
            .bind(text(data, "message_id"))
            .bind(text(data, "agent"))
            .bind(event.time)
            .execute(&mut *tx)
            .await?;
        }
        "agent.failed.v1" => {
            sqlx::query(
                "INSERT INTO activity (workspace, agent, failed, last_active)
                         VALUES ($1, $2, 1, $3)
                         ON CONFLICT (workspace, agent) DO UPDATE SET
                             failed = activity.failed + 1,
                             last_active = greatest(activity.last_active, $3)",
            )
            .bind(event.workspace.as_str())
            .bind(text(data, "agent"))
            .bind(event.time)
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
