use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use switchyard_events::{Cursor, ExpectedVersion};
use switchyard_store::{Error, ReadFilter};

use crate::{count, memory, read_n, store};

/// Twenty identical appends at once, each through its own store (so in separate, racing
/// transactions): one event is stored, and every caller is told its one position.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn racing_identical_appends_store_one_event(pool: PgPool) {
    let event = memory("demo", "agent/a", "race");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store(&pool);
        let event = event.clone();
        tasks.push(tokio::spawn(async move { store.append(vec![event]).await }));
    }
    let mut positions = HashSet::new();
    let mut originals = 0;
    for task in tasks {
        let appended = task.await.unwrap().unwrap();
        positions.insert(appended[0].position);
        originals += usize::from(!appended[0].duplicate);
    }
    assert_eq!(positions.len(), 1, "every caller sees the same position");
    assert_eq!(originals, 1, "exactly one caller appended");
    assert_eq!(count(&pool).await, 1);
}

/// Concurrent appends share commits, yet each keeps its own outcome: conflicting ones fail
/// alone, the others land, and versions of a shared stream stay gap-free.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn grouped_appends_fail_alone(pool: PgPool) {
    let store = store(&pool);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every tenth append insists on a fresh stream that already exists.
            let expected = if i % 10 == 0 && i > 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Any
            };
            let stream = if expected == ExpectedVersion::NoStream {
                "agent/shared"
            } else {
                ["agent/shared", "agent/other"][i % 2]
            };
            store
                .append(vec![
                    memory("demo", stream, &format!("k{i}")).expecting(expected),
                ])
                .await
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    // i = 0 may create agent/shared; 10, 20, … 190 must all conflict (the stream exists by
    // then or is created by a sibling in the same group, which is checked in order).
    assert!(conflicts >= 18, "conflicts: {conflicts}");
    assert_eq!(ok + conflicts, 200);
    assert_eq!(count(&pool).await, ok as i64);
    let versions: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, count(*), max(stream_version) FROM events GROUP BY stream_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (stream, n, max) in versions {
        assert_eq!(n, max, "{stream}: versions 1..{max} without gaps");
    }
}

/// A transaction that took its id first but commits last must be read first, and must hold
/// back everything behind it until it commits.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_late_commit_is_never_skipped(pool: PgPool) {
    let store = store(&pool);
    let mut early = pool.begin().await.unwrap();
    // Take a transaction id now, append later.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *early)
        .await
        .unwrap();

    let quick = store
        .append(vec![memory("demo", "agent/quick", "q")])
        .await
        .unwrap();
    store
        .append_in(&mut early, vec![memory("demo", "agent/slow", "s")])
        .await
        .unwrap();

    let page = store
        .read_all(Cursor::START, &ReadFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        page.events.is_empty(),
        "the quick event waits behind the open transaction: {:?}",
        page.events
            .iter()
            .map(|e| (e.cursor, e.stream.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(
        page.held_back,
        "the reader is told that committed events wait"
    );
    let cursor = page.next;

    early.commit().await.unwrap();
    let page = read_n(&store, cursor, &ReadFilter::default(), 2).await;
    let streams: Vec<&str> = page.events.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        ["agent/slow", "agent/quick"],
        "ordered by transaction, not position"
    );
    assert!(
        page.events[0].position > quick[0].position,
        "the slow one has the larger position"
    );
}

/// 16 writers append concurrently, through group commit and inside their own transactions
/// (some held open for a second, some rolled back), while a reader follows the cursor. The
/// reader sees every committed event exactly once, in order, and no rolled-back one.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_following_reader_sees_every_committed_event_once_in_order(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Held-open and rolled-back transactions each keep a connection: more than the five of
    // a test's default pool.
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect_with(connect)
        .await
        .unwrap();
    let store = store(&pool);
    const WRITERS: usize = 16;
    const ROUNDS: usize = 12;

    let done = Arc::new(AtomicBool::new(false));
    // Set once the writers are done: how many events the reader must end up with. (An empty
    // page alone does not mean the end: events wait for every older transaction of the
    // cluster, and parallel tests hold some open.)
    let expected = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let reader = {
        let store = store.clone();
        let done = Arc::clone(&done);
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            let mut cursor = Cursor::START;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store
                    .read_all(cursor, &ReadFilter::default(), 37)
                    .await
                    .unwrap();
                for event in &page.events {
                    assert!(event.cursor > cursor, "cursors only move forward");
                    cursor = event.cursor;
                    seen.push((
                        event.id.to_string(),
                        event.stream.to_string(),
                        event.stream_version,
                    ));
                }
                assert!(page.next >= cursor);
                cursor = page.next;
                if finished
                    && page.events.is_empty()
                    && seen.len() >= expected.load(Ordering::SeqCst)
                {
                    // Read once more after reaching the count: nothing beyond it may appear.
                    let more = store
                        .read_all(cursor, &ReadFilter::default(), 37)
                        .await
                        .unwrap();
                    assert!(more.events.is_empty(), "events beyond the committed ones");
                    return seen;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the reader never saw all events"
                );
                if page.events.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut rolled_back = Vec::new();
            for round in 0..ROUNDS {
                let stream = format!("writer/{w}");
                let events: Vec<_> = (0..1 + (w + round) % 3)
                    .map(|i| memory("demo", &stream, &format!("w{w}r{round}i{i}")))
                    .collect();
                let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                match (w + round) % 4 {
                    // Through group commit.
                    0 | 1 => {
                        store.append(events).await.unwrap();
                        committed.extend(ids);
                    }
                    // In the writer's own transaction, held open before commit.
                    2 => {
                        let mut tx = pool.begin().await.unwrap();
                        store.append_in(&mut tx, events).await.unwrap();
                        let hold = if round % 3 == 0 { 1000 } else { 20 };
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        tx.commit().await.unwrap();
                        committed.extend(ids);
                    }
                    // In the writer's own transaction, rolled back.
                    _ => {
                        let mut tx = pool.begin().await.unwrap();
                        store.append_in(&mut tx, events).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        tx.rollback().await.unwrap();
                        rolled_back.extend(ids);
                    }
                }
            }
            (committed, rolled_back)
        }));
    }

    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for writer in writers {
        let (c, r) = writer.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    expected.store(committed.len(), Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let seen_ids: Vec<&String> = seen.iter().map(|(id, _, _)| id).collect();
    let unique: HashSet<&String> = seen_ids.iter().copied().collect();
    assert_eq!(unique.len(), seen_ids.len(), "no event seen twice");
    assert!(!rolled_back.is_empty() && committed.len() > 100);
    for id in &committed {
        assert!(unique.contains(id), "committed event {id} was never seen");
    }
    for id in &rolled_back {
        assert!(!unique.contains(id), "rolled-back event {id} was seen");
    }
    assert_eq!(unique.len(), committed.len());
    // Each stream's events arrive in version order, without gaps.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, stream, version) in &seen {
        let previous = last.insert(stream, *version).unwrap_or(0);
        assert_eq!(*version, previous + 1, "{stream}");
    }
    let per_stream: HashMap<&str, u64> = last.into_iter().collect();
    assert_eq!(per_stream.len(), WRITERS);
    pool.close().await;
}

/// 32 clients appending to one stream without an expected version, as fast as they can: every
/// append lands (the two writers' races on the stream's next version are retried, never
/// surfaced), and the stream's versions are 1..=N without a gap or a repeat.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn many_clients_appending_to_one_stream_all_land(pool: PgPool) {
    let store = store(&pool);
    let mut tasks = Vec::new();
    for client in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..25 {
                let event = memory("demo", "agent/hot", &format!("c{client}-{i}"));
                let appended = store.append(vec![event]).await?;
                versions.push(appended[0].stream_version);
            }
            Ok::<_, Error>(versions)
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap().expect("every append lands"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=800).collect::<Vec<u64>>());
    assert_eq!(count(&pool).await, 800);
}

/// Concurrent batches over the same streams (as a bulk import sends them), without expected
/// versions: the writers' races on those streams are settled, not surfaced as
/// `ConcurrentWrite`, and every stream's versions stay 1..=N.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn concurrent_batches_over_shared_streams_all_land(pool: PgPool) {
    let store = store(&pool);
    let mut tasks = Vec::new();
    for client in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..10 {
                let events = (0..200)
                    .map(|i| {
                        memory(
                            "demo",
                            &format!("agent/s{}", i % 100),
                            &format!("c{client}-{b}-{i}"),
                        )
                    })
                    .collect();
                store.append(events).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("every batch lands");
    }
    assert_eq!(count(&pool).await, 16_000);
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id, max(stream_version) AS v, count(*) AS n
                               FROM events GROUP BY stream_id) s WHERE v <> n",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0);
}

/// Appends of one to three events at once over three shared streams, in shared commits
/// whose versions are drawn inside the INSERT: what each caller is told (position, version)
/// is what is stored, and every stream's versions run 1..n without a gap or a repeat.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn grouped_appends_report_what_is_stored(pool: PgPool) {
    let store = store(&pool);
    let mut tasks = Vec::new();
    for i in 0..90 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let events: Vec<_> = (0..=i % 3)
                .map(|j| memory("demo", ["agent/a", "agent/b", "agent/c"][(i + j) % 3], "k"))
                .collect();
            let appended = store.append(events.clone()).await.unwrap();
            events.into_iter().zip(appended).collect::<Vec<_>>()
        }));
    }
    let mut told: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    for task in tasks {
        for (event, appended) in task.await.unwrap() {
            assert!(!appended.duplicate);
            assert_eq!(appended.id, event.id);
            assert_eq!(appended.stream, event.stream);
            told.insert(
                event.id.to_string(),
                (appended.position, appended.stream_version),
            );
        }
    }
    let stored: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT id, stream_id, position, stream_version FROM events")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 180, "90 appends of 1, 2 or 3 events");
    assert_eq!(told.len(), 180);
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, stream, position, version) in stored {
        assert_eq!(told[&id], (position, version as u64), "event {id}");
        versions.entry(stream).or_default().push(version);
    }
    for (stream, mut v) in versions {
        v.sort_unstable();
        assert_eq!(v, (1..=v.len() as i64).collect::<Vec<_>>(), "{stream}");
    }
}
