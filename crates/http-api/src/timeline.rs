//! The timeline: a workspace's events newest first (cursor pagination backwards, narrowed by
//! type, source or correlation), one event with its causation chain, and the live tail as
//! server-sent events. The dashboard is built on these; nothing here is dashboard-only.
//!
//! A timeline page answers `live_from`, the cursor a follower starts at so that it misses
//! nothing newer than the page and repeats nothing in it: the page and the live tail meet
//! without a hole, by the store's gap-free order.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Weak},
    time::Duration,
};

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use serde::{Deserialize, Serialize};
use switchyard_events::{Cursor, EventType, RecordedEvent, Workspace};
use switchyard_store::{EventStore, ReadFilter, TimelineFilter, Wakeups};
use tokio::sync::{OnceCell, watch};

use crate::{ApiError, AppState, Principal, Scope};

/// Most events of a causation chain returned with one event.
const CHAIN_LIMIT: u32 = 200;
/// Events read per store round trip by a live follower.
const LIVE_PAGE: u32 = 200;
/// A live follower reads again after this long even without a notification (a lost
/// notification connection costs this much latency, never an event).
const LIVE_POLL: Duration = Duration::from_secs(2);

/// Query of `GET /v1/workspaces/{ws}/timeline`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TimelineQuery {
    /// Events below this sequence (`older` of the previous page); the newest when absent.
    before: Option<i64>,
    /// Only events of this type.
    #[serde(rename = "type")]
    ty: Option<String>,
    /// Only events from this source (an agent is `/agents/<name>`).
    source: Option<String>,
    /// Only events of this correlation id.
    correlation: Option<String>,
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// Query of `GET /v1/workspaces/{ws}/timeline/live`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LiveQuery {
    /// Events after this cursor (`live_from` of a timeline page, or the `id` of the last event
    /// received; a `Last-Event-ID` header wins). From now when absent.
    after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    ty: Option<String>,
    /// Only events from this source.
    source: Option<String>,
    /// Only events of this correlation id.
    correlation: Option<String>,
}

/// A page of the timeline, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TimelineView {
    /// The events, newest first.
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = Vec<crate::openapi::CloudEvent>)]
    events: Vec<switchyard_events::cloudevents::Event>,
    /// The `before` of the next older page; absent on the last one.
    older: Option<i64>,
    /// Where `…/timeline/live` starts to follow on from this page (`after`).
    live_from: String,
}

/// One event, with the events of its correlation to draw what caused it and what it caused.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventDetail {
    /// The event.
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = crate::openapi::CloudEvent)]
    event: switchyard_events::cloudevents::Event,
    /// The events of its correlation, oldest first (the newest 200 of a longer one). Each
    /// names its cause in `causationid`: the chain is the tree those links draw.
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = Vec<crate::openapi::CloudEvent>)]
    chain: Vec<switchyard_events::cloudevents::Event>,
    /// Whether `chain` is the whole correlation.
    chain_complete: bool,
    /// The trace id of the event's `traceparent`, if it has one.
    trace_id: Option<String>,
}

fn filter(
    state: &AppState,
    workspace: Workspace,
    ty: Option<&str>,
    source: Option<&str>,
    correlation: Option<&str>,
) -> Result<TimelineFilter, ApiError> {
    let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    let ty = nonempty(ty)
        .map(|t| EventType::parse(&t))
        .transpose()
        .map_err(|e| ApiError::from(e).at("/type"))?;
    if let Some(ty) = &ty
        && state.store.catalog().get(ty.as_str()).is_none()
    {
        return Err(
            ApiError::bad_request(format!("{ty} is not in the schema catalog")).at("/type"),
        );
    }
    Ok(TimelineFilter {
        workspace,
        ty,
        source: nonempty(source),
        correlation_id: nonempty(correlation),
    })
}

/// Reads the timeline
///
/// A workspace's events newest first, a page at a time (`before` = `older` of the previous
/// page), optionally only one type, source or correlation. Each narrowing walks an index of
/// its own: a page costs the same however large the store. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/timeline",
    tag = "timeline",
    operation_id = "read_timeline",
    params(("ws" = String, Path, description = "The workspace"), TimelineQuery),
    responses(
        (status = 200, description = "A page, newest first", body = TimelineView),
        (status = 400, description = "A malformed type or query", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
pub(crate) async fn read(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    let filter = filter(
        &state,
        workspace,
        query.ty.as_deref(),
        query.source.as_deref(),
        query.correlation.as_deref(),
    )?;
    let page = state
        .store
        .read_newest(&filter, query.before, state.config.page(query.limit))
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    Ok(Json(TimelineView {
        events: page
            .events
            .iter()
            .map(RecordedEvent::to_cloudevent)
            .collect(),
        older: page.older,
        live_from: page.live_from.to_string(),
    })
    .into_response())
}

/// One event and its causation chain
///
/// The event at a sequence, the events of its correlation (to draw what caused it and what
/// it caused), and its trace id. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/timeline/{sequence}",
    tag = "timeline",
    operation_id = "show_event",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("sequence" = i64, Path, description = "The event's global sequence"),
    ),
    responses(
        (status = 200, description = "The event and its chain", body = EventDetail),
        (status = 404, description = "No such workspace, or no such event in it", body = ApiError),
    )
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, sequence)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let missing = || ApiError::not_found(format!("no event {sequence} in workspace {workspace}"));
    let position: i64 = sequence.parse().map_err(|_| missing())?;
    let event = state
        .store
        .get(position)
        .await
        .map_err(|e| ApiError::from_store(e, false))?
        .filter(|e| e.workspace == workspace)
        .ok_or_else(missing)?;
    let correlation = TimelineFilter {
        correlation_id: Some(event.correlation_id.clone()),
        ..TimelineFilter::workspace(workspace.clone())
    };
    let page = state
        .store
        .read_newest(&correlation, None, CHAIN_LIMIT)
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    let trace_id = event
        .traceparent
        .as_deref()
        .and_then(|t| t.split('-').nth(1))
        .map(str::to_owned);
    Ok(Json(EventDetail {
        event: event.to_cloudevent(),
        chain_complete: page.older.is_none(),
        chain: page
            .events
            .iter()
            .rev()
            .map(RecordedEvent::to_cloudevent)
            .collect(),
        trace_id,
    })
    .into_response())
}

/// Follows the timeline live
///
/// Server-sent events: first `ready` (its data is the cursor followed from), then one
/// `event` per new event of the workspace (its `id` is the event's cursor, its data the
/// CloudEvent), in the store's gap-free order, optionally narrowed like the timeline. A
/// reconnecting client sends the last `id` back (`Last-Event-ID` or `after`) and misses
/// nothing. On a store error the stream sends `error` and ends. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/timeline/live",
    tag = "timeline",
    operation_id = "follow_timeline",
    params(("ws" = String, Path, description = "The workspace"), LiveQuery),
    responses(
        (status = 200, description = "The live tail", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A malformed cursor or type", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
pub(crate) async fn live(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    let filter = filter(
        &state,
        workspace,
        query.ty.as_deref(),
        query.source.as_deref(),
        query.correlation.as_deref(),
    )?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.after.as_deref())
        .filter(|s| !s.is_empty());
    let after: Cursor = match resume {
        Some(s) => s.parse().map_err(|e: switchyard_events::InvalidCursor| {
            ApiError::bad_request(e.to_string()).at("/after")
        })?,
        None => {
            // From now: where a timeline page taken now would hand over.
            let now = TimelineFilter::workspace(filter.workspace.clone());
            state
                .store
                .read_newest(&now, None, 1)
                .await
                .map_err(|e| ApiError::from_store(e, false))?
                .live_from
        }
    };
    let wakeups = state.live.subscribe(&state.store).await?;
    let follower = Follower {
        store: state.store.clone(),
        filter,
        after,
        wakeups,
        ready: false,
        queued: VecDeque::new(),
        failed: false,
    };
    let stream = futures::stream::unfold(follower, |mut f| async move {
        f.next().await.map(|event| (Ok::<_, Infallible>(event), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One live client's place in the store.
struct Follower {
    store: EventStore,
    filter: TimelineFilter,
    after: Cursor,
    wakeups: watch::Receiver<u64>,
    ready: bool,
    queued: VecDeque<RecordedEvent>,
    failed: bool,
}

impl Follower {
    /// The next server-sent event; `None` ends the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        if self.failed {
            return None;
        }
        if !self.ready {
            self.ready = true;
            return Some(
                SseEvent::default()
                    .event("ready")
                    .data(self.after.to_string()),
            );
        }
        let read = ReadFilter {
            workspace: Some(self.filter.workspace.clone()),
            ty: self.filter.ty.clone(),
            types: None,
            or_source_prefix: None,
        };
        while self.queued.is_empty() {
            // Seen before reading: a notification during the read is not lost.
            self.wakeups.borrow_and_update();
            let page = match self.store.read_all(self.after, &read, LIVE_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "timeline: a live read failed; ending the stream");
                    self.failed = true;
                    return Some(SseEvent::default().event("error").data(e.to_string()));
                }
            };
            let full = page.events.len() == LIVE_PAGE as usize;
            self.after = page.next;
            self.queued
                .extend(page.events.into_iter().filter(|e| self.filter.admits(e)));
            if !self.queued.is_empty() || full {
                continue;
            }
            if page.held_back {
                tokio::time::sleep(Duration::from_millis(25)).await;
            } else {
                // Woken by a commit, or after LIVE_POLL whatever happens.
                let _ = tokio::time::timeout(LIVE_POLL, self.wakeups.changed()).await;
            }
        }
        let event = self.queued.pop_front()?;
        let data = serde_json::to_string(&event.to_cloudevent()).unwrap_or_default();
        Some(
            SseEvent::default()
                .event("event")
                .id(event.cursor.to_string())
                .data(data),
        )
    }
}

/// Commit notifications, shared by every live client of the process: one listening
/// connection, started by the first client, however many follow.
#[derive(Debug)]
pub(crate) struct LiveFeed {
    sender: watch::Sender<u64>,
    started: OnceCell<()>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self {
            sender: watch::channel(0).0,
            started: OnceCell::new(),
        }
    }
}

impl LiveFeed {
    /// A receiver that changes on every commit of events.
    async fn subscribe(
        self: &Arc<Self>,
        store: &EventStore,
    ) -> Result<watch::Receiver<u64>, ApiError> {
        self.started
            .get_or_try_init(|| async {
                let mut wakeups = Wakeups::listen(store)
                    .await
                    .map_err(|e| ApiError::from_store(e, false))?;
                let feed: Weak<Self> = Arc::downgrade(self);
                tokio::spawn(async move {
                    loop {
                        let notified = wakeups.wait(Duration::from_secs(30)).await;
                        let Some(feed) = feed.upgrade() else { break };
                        if notified {
                            feed.sender.send_modify(|n| *n = n.wrapping_add(1));
                        }
                    }
                });
                Ok::<_, ApiError>(())
            })
            .await?;
        Ok(self.sender.subscribe())
    }
}
