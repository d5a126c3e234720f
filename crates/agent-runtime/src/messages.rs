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

/// Waits (up to [`INBOX_WAIT`]) until the `agent_state` projection, which holds the inboxes,
/// has applied everything up to `cause` in the store's global order: then every message sent
/// before the handled event is in the inbox. After the wait the inbox is read as it is.
pub(crate) async fn wait_for_inbox(
    conn: &mut sqlx::PgConnection,
    cause: switchyard_events::Cursor,
) -> Result<(), sqlx::Error> {
    let deadline = tokio::time::Instant::now() + INBOX_WAIT;
    loop {
        let caught_up: Option<bool> = sqlx::query_scalar(
            "SELECT (transaction_id, position) >= ($1, $2)
             FROM projection_checkpoints WHERE name = 'agent_state'",
        )
        .bind(i64::try_from(cause.transaction).unwrap_or(i64::MAX))
        .bind(cause.position)
        .fetch_optional(&mut *conn)
        .await?;
        if caught_up == Some(true) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                ?cause,
                "the agent_state projection is behind; reading the inbox as it is"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// How long an inbox read waits for the projection to reach the handled event.
pub(crate) const INBOX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Messages for `agent` in `workspace` (addressed to it or to `*`) that it has not
/// acknowledged, oldest first, at most `limit`. Read from the `agent_state` projection
/// ([`wait_for_inbox`] first makes it hold everything sent before the handled event).
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
