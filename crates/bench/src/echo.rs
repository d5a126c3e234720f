//! The agent path: an echo agent on the real runtime answers each `bench.ping.v1` with a
//! `bench.pong.v1`, and a watcher notices each pong once it is committed and readable.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use serde_json::json;
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_events::{Cursor, EventType, RecordedEvent};
use switchyard_store::{EventStore, ReadFilter, Wakeups};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Answers pings.
#[derive(Debug)]
pub(crate) struct Echo(Manifest);

impl Echo {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self(Manifest {
            name: "bench-echo".into(),
            version: "1".into(),
            capabilities: vec!["bench".into()],
            subscribes: vec![EventType::parse("bench.ping.v1")?],
            emits: vec![EventType::parse("bench.pong.v1")?],
            produces: Vec::new(),
            consumes: Vec::new(),
        }))
    }
}

impl Agent for Echo {
    fn manifest(&self) -> &Manifest {
        &self.0
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let n = event.data["n"].as_u64().unwrap_or_default();
            ctx.emit(
                "bench.pong.v1",
                &format!("bench/pong/{}", event.id),
                json!({"n": n, "ping": event.id.to_string()}),
            )
        })
    }
}

/// Who waits for the pong of which ping.
pub(crate) type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Follows the store from `after` and tells each waiter when its pong was readable.
pub(crate) async fn watch(
    store: EventStore,
    after: Cursor,
    waiters: Waiters,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut wakeups = Wakeups::listen(&store).await?;
    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: None,
        ty: Some(EventType::parse("bench.pong.v1")?),
    };
    let mut cursor = after;
    while !shutdown.is_cancelled() {
        let page = store.read_all(cursor, &filter, 1_000).await?;
        let seen = Instant::now();
        cursor = page.next;
        for pong in &page.events {
            let ping = pong.data["ping"].as_str().unwrap_or_default();
            let waiter = waiters.lock().ok().and_then(|mut w| w.remove(ping));
            if let Some(waiter) = waiter {
                let _ = waiter.send(seen);
            }
        }
        if page.events.is_empty() {
            let wait = if page.held_back { 2 } else { 200 };
            wakeups.wait(Duration::from_millis(wait)).await;
        }
    }
    Ok(())
}
