//! Scheduled retrospectives: at each slot of a cron pattern (UTC), a
//! `retrospective.trigger.v1` for every workspace, covering the time since the slot before.
//! Every server instance runs the schedule; the trigger's id is derived from the workspace and
//! the slot, so the store keeps the first and answers the others as duplicates: one
//! retrospective per slot, however many instances.

use std::{str::FromStr as _, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use croner::Cron;
use serde_json::json;
use switchyard_events::{EventId, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_store::EventStore;
use tokio_util::sync::CancellationToken;

/// A parsed schedule; the error names the pattern.
pub fn parse_schedule(pattern: &str) -> Result<Cron, String> {
    Cron::from_str(pattern).map_err(|e| format!("retrospectives.schedule {pattern:?}: {e}"))
}

/// The trigger of one slot for one workspace (its id is the same on every instance).
pub fn scheduled_trigger(
    workspace: Workspace,
    slot: DateTime<Utc>,
    previous: Option<DateTime<Utc>>,
) -> Result<NewEvent, switchyard_events::InvalidId> {
    let compact = slot.format("%Y%m%dT%H%M%SZ");
    let id = format!("scheduled-{compact}");
    let mut data =
        json!({"retrospective_id": id, "reason": "scheduled", "requested_by": "scheduler"});
    if let Some(previous) = previous {
        data["window"] = json!({
            "from": previous.to_rfc3339_opts(SecondsFormat::Secs, true),
            "to": slot.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
    }
    let mut event = NewEvent::new(
        workspace,
        Source::parse("/scheduler")?,
        EventType::parse("retrospective.trigger.v1")?,
        StreamId::parse(&format!("retrospective/{id}"))?,
        data,
    );
    event.id = EventId::parse(&format!("retrospective:{compact}"))?;
    event.time = Some(slot);
    Ok(event)
}

/// Appends the triggers of `slot` for every workspace; returns how many were new.
pub async fn fire(store: &EventStore, cron: &Cron, slot: DateTime<Utc>) -> Result<usize, String> {
    let workspaces: Vec<String> = sqlx::query_scalar(
        "SELECT workspace FROM events WHERE stream_id = 'workspace' AND stream_version = 1
         AND workspace <> 'system' ORDER BY workspace",
    )
    .fetch_all(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let previous = cron.find_previous_occurrence(&slot, false).ok();
    let mut fresh = 0;
    for ws in workspaces {
        let Ok(workspace) = Workspace::parse(&ws) else {
            continue;
        };
        let event = scheduled_trigger(workspace, slot, previous).map_err(|e| e.to_string())?;
        match store.append(vec![event]).await {
            Ok(appended) => fresh += appended.iter().filter(|a| !a.duplicate).count(),
            Err(e) => {
                tracing::warn!(workspace = ws, error = %e, "cannot record a scheduled retrospective")
            }
        }
    }
    Ok(fresh)
}

/// Runs the schedule until shutdown.
pub async fn schedule_retrospectives(store: EventStore, cron: Cron, shutdown: CancellationToken) {
    loop {
        let now = Utc::now();
        let Ok(slot) = cron.find_next_occurrence(&now, false) else {
            tracing::warn!("the retrospective schedule has no next slot; stopping it");
            return;
        };
        let wait = (slot - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match fire(&store, &cron, slot).await {
            Ok(fresh) => tracing::info!(%slot, fresh, "scheduled retrospectives"),
            Err(e) => tracing::warn!(%slot, error = %e, "scheduled retrospectives failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_id_per_workspace_and_slot() {
        let cron = parse_schedule("0 18 * * *").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .to_utc();
        let slot = cron.find_next_occurrence(&now, false).unwrap();
        assert_eq!(slot.to_rfc3339(), "2026-12-02T18:00:00+00:00");
        let ws = Workspace::parse("demo").unwrap();
        let previous = cron.find_previous_occurrence(&slot, false).ok();
        let a = scheduled_trigger(ws.clone(), slot, previous).unwrap();
        let b = scheduled_trigger(ws, slot, previous).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.data, b.data);
        assert_eq!(a.data["window"]["from"], "2026-12-01T18:00:00Z");
        assert!(
            parse_schedule("every day")
                .unwrap_err()
                .contains("every day")
        );
        assert!(
            parse_schedule("*/2 * * * * *").is_ok(),
            "seconds are allowed"
        );
    }
}
