//! Agent state: each agent's manifest as last registered, what it remembers, and how active it
//! is (events it emitted, events it gave up on).

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
