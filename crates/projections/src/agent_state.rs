//! Agent state: each agent's manifest as last registered, what it remembers, how active it is
//! (events it emitted, events it gave up on), and how its proposals fare (made, approved,
//! rejected — the approval rate is approved / (approved + rejected) — and the last rejection
//! reason), and the messages agents send each other (with who acknowledged them).

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

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
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
                "agent.memory.recorded.v1" => {
                    sqlx::query(
                        "INSERT INTO memory (workspace, agent, key, value, recorded_at, position)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (workspace, agent, key) DO UPDATE SET
                             value = $4, recorded_at = $5, position = $6",
                    )
                    .bind(event.workspace.as_str())
                    .bind(text(data, "agent"))
                    .bind(text(data, "key"))
                    .bind(data.get("value").cloned().unwrap_or(Value::Null))
                    .bind(event.time)
                    .bind(event.position)
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
            if let Some(agent) = event.source.as_str().strip_prefix("/agents/") {
                sqlx::query(
                    "INSERT INTO activity (workspace, agent, emitted, last_active)
                     VALUES ($1, $2, 1, $3)
                     ON CONFLICT (workspace, agent) DO UPDATE SET
                         emitted = activity.emitted + 1,
                         last_active = greatest(activity.last_active, $3)",
                )
                .bind(event.workspace.as_str())
                .bind(agent)
                .bind(event.time)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }
}
