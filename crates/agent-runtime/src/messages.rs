//! Agent-to-agent messages: `agent.message.sent.v1` (to one agent or to every agent, `*`) and
//! `agent.message.acknowledged.v1`, one per recipient. A message reaches the recipient's next
//! step through its inbox, until it acknowledges it. Any agent may send and acknowledge
//! without declaring these types.

use serde::Serialize;
use serde_json::Value;

/// The type a message is sent as.
pub const MESSAGE_SENT: &str = "agent.message.sent.v1";
/// The type a message is acknowledged as.
pub const MESSAGE_ACKNOWLEDGED: &str = "agent.message.acknowledged.v1";

/// A message waiting in an agent's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Message {
    /// Its id.
    pub message_id: String,
    /// Who sent it: an agent's name or `user:<token name>`.
    pub sender: String,
    /// The agent it is for, or `*`.
    pub recipient: String,
    /// What kind of message.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it says.
    pub content: Value,
    /// The message it answers.
    pub reply_to: Option<String>,
    /// When it was sent.
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

/// Messages for `agent` in `workspace` (addressed to it or to `*`) that it has not
/// acknowledged, oldest first, at most `limit`. Read from the `agent_state` projection, so a
/// message sent a moment ago may reach only the step after next.
pub async fn inbox<'c, E>(
    executor: E,
    workspace: &str,
    agent: &str,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_as(
        "SELECT m.message_id, m.sender, m.recipient, m.kind, m.content, m.reply_to, m.sent_at
         FROM proj_agent_state.messages m
         WHERE m.workspace = $1 AND m.recipient IN ($2, '*') AND m.sender <> $2
           AND NOT EXISTS (SELECT 1 FROM proj_agent_state.message_acks a
                           WHERE a.workspace = m.workspace AND a.message_id = m.message_id
                             AND a.agent = $2)
         ORDER BY m.position LIMIT $3",
    )
    .bind(workspace)
    .bind(agent)
    .bind(limit.clamp(1, 1_000))
    .fetch_all(executor)
    .await
}
