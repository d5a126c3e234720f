//! Group commit: concurrent appends queue up and a few writer tasks each take whatever has
//! queued, plan it as one transaction and commit once. One fsync then covers many callers,
//! which is what lets single-event appends beat one-row-per-transaction inserts.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{PgPool, Postgres, pool::PoolConnection};
use switchyard_events::NewEvent;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    Error, Result,
    append::{self, Appended, Key, Lookup, Written},
    error::is_append_race,
};

/// A writer's connection, and when it was last used.
type Held = (PoolConnection<Postgres>, Instant);

/// One caller's append, waiting for its turn.
pub(crate) struct Job {
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Appended>>>,
}

/// How often a group is retried after losing a race to a concurrent writer before its callers
/// get [`Error::ConcurrentWrite`]. Each retry re-reads the store, so one writer always wins.
const MAX_ATTEMPTS: usize = 10;

pub(crate) async fn run_writer(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_group_events: usize,
) {
    // The writer keeps its connection between groups: sqlx pings every connection returned
    // to the pool, a round trip per group. It goes back to the pool (which tests it) after an
    // error or a second idle, so a restarted PostgreSQL costs no failed group.
    let mut conn = None;
    loop {
        let jobs = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return; // every EventStore handle is gone
            };
            let mut count = first.events.len();
            let mut jobs = vec![first];
            while count < max_group_events {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        commit_group(&pool, &mut conn, jobs).await;
    }
}

#[tracing::instrument(name = "store.append", skip_all, fields(jobs = jobs.len()))]
async fn commit_group(pool: &PgPool, conn: &mut Option<Held>, mut jobs: Vec<Job>) {
    let mut attempt = 0;
    let mut lookup = Lookup::Optimistic;
    while !jobs.is_empty() {
        // Drop callers that gave up waiting, then keep the jobs whose keys do not repeat an
        // earlier job's; the others wait for the next round, where they see that one committed.
        jobs.retain(|job| !job.reply.is_closed());
        let (now, later) = split_repeated_keys(jobs);
        jobs = later;
        if now.is_empty() {
            continue;
        }
        match try_commit(pool, conn, &now, lookup).await {
            Ok(Written::NeedsFullLookup) => {
                lookup = Lookup::Full;
                let mut retry = now;
                retry.append(&mut jobs);
                jobs = retry;
            }
            Ok(Written::Done(results)) => {
                attempt = 0;
                for (job, result) in now.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) if is_append_race(&e) && attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                // A stored duplicate or a concurrent writer: look everything up this time.
                lookup = Lookup::Full;
                tracing::debug!(
                    attempt,
                    "append raced a concurrent writer; retrying the group"
                );
                tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
                let mut retry = now;
                retry.append(&mut jobs);
                jobs = retry;
            }
            Err(e) => {
                let error = if is_append_race(&e) {
                    Error::ConcurrentWrite
                } else {
                    tracing::warn!(error = %e, "group append failed");
                    Error::from(e)
                };
                for job in now {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

async fn try_commit(
    pool: &PgPool,
    held: &mut Option<Held>,
    jobs: &[Job],
    lookup: Lookup,
) -> Result<Written, sqlx::Error> {
    let batches: Vec<&[NewEvent]> = jobs.iter().map(|job| job.events.as_slice()).collect();
    // No explicit transaction: the lookup reads committed state and the single INSERT commits
    // atomically; a concurrent writer that got there first makes it fail on a unique index,
    // and the group is planned again. One or two round trips instead of four.
    let mut conn = match held.take() {
        Some((conn, used)) if used.elapsed() < crate::PING_IF_IDLE_FOR => conn,
        _ => pool.acquire().await?,
    };
    let written = append::write(&mut conn, &batches, lookup).await;
    match &written {
        // A lost race fails one statement cleanly; anything else may have broken the
        // connection, so it goes back to the pool (which tests it) and a fresh one is taken.
        Err(e) if !is_append_race(e) => {}
        _ => *held = Some((conn, Instant::now())),
    }
    written
}

fn split_repeated_keys(jobs: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    let mut seen: HashSet<Key> = HashSet::new();
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for job in jobs {
        let keys: Vec<Key> = job.events.iter().map(append::key).collect();
        if keys.iter().any(|k| seen.contains(k)) {
            later.push(job);
        } else {
            seen.extend(keys);
            now.push(job);
        }
    }
    (now, later)
}
