use serde_json::json;
use sqlx::PgPool;
use switchyard_events::{DataError, EventId, EventType, ExpectedVersion, StreamId};
use switchyard_store::Error;

use crate::{count, memory, store, ws};

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn appends_and_reads_a_stream_back(pool: PgPool) {
    let store = store(&pool);
    let events: Vec<_> = (0..3)
        .map(|i| memory("demo", "agent/a", &format!("k{i}")))
        .collect();
    let appended = store.append(events.clone()).await.unwrap();
    assert_eq!(
        appended
            .iter()
            .map(|a| a.stream_version)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(appended.iter().all(|a| !a.duplicate));
    assert!(appended.windows(2).all(|w| w[0].position < w[1].position));

    let stream = StreamId::parse("agent/a").unwrap();
    let read = store
        .read_stream(&ws("demo"), &stream, 0, 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 3);
    for ((event, original), a) in read.iter().zip(&events).zip(&appended) {
        assert_eq!(event.id, original.id);
        assert_eq!(event.data, original.data);
        assert_eq!(event.position, a.position);
        // Without a correlation id an event starts its own correlation.
        assert_eq!(event.correlation_id, original.id.as_str());
    }
    let tail = store
        .read_stream(&ws("demo"), &stream, 2, 100)
        .await
        .unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].stream_version, 3);
    assert_eq!(store.stream_version(&ws("demo"), &stream).await.unwrap(), 3);
    // Streams are scoped by workspace.
    assert_eq!(
        store.stream_version(&ws("other"), &stream).await.unwrap(),
        0
    );
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn expected_version_conflicts_are_typed_and_append_nothing(pool: PgPool) {
    let store = store(&pool);
    store
        .append(vec![
            memory("demo", "agent/a", "first").expecting(ExpectedVersion::NoStream),
        ])
        .await
        .unwrap();

    let err = store
        .append(vec![
            memory("demo", "agent/a", "again").expecting(ExpectedVersion::NoStream),
        ])
        .await
        .unwrap_err();
    match err {
        Error::Conflict {
            stream,
            expected,
            actual,
            ..
        } => {
            assert_eq!(stream.as_str(), "agent/a");
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = store
        .append(vec![
            memory("demo", "agent/a", "x").expecting(ExpectedVersion::Exactly(5)),
        ])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(count(&pool).await, 1);

    // In a batch, each expectation is checked against the batch's own earlier events; one
    // failing event fails the whole batch.
    let batch = vec![
        memory("demo", "agent/a", "b1").expecting(ExpectedVersion::Exactly(1)),
        memory("demo", "agent/b", "b2").expecting(ExpectedVersion::NoStream),
        memory("demo", "agent/a", "b3").expecting(ExpectedVersion::Exactly(1)),
    ];
    let err = store.append(batch).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 2, .. }), "{err:?}");
    assert_eq!(count(&pool).await, 1, "a failed batch appends nothing");

    let batch = vec![
        memory("demo", "agent/a", "b1").expecting(ExpectedVersion::Exactly(1)),
        memory("demo", "agent/a", "b3").expecting(ExpectedVersion::Exactly(2)),
    ];
    let appended = store.append(batch).await.unwrap();
    assert_eq!(appended[1].stream_version, 3);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn reappending_returns_the_original_and_appends_nothing(pool: PgPool) {
    let store = store(&pool);
    let event = memory("demo", "agent/a", "k").expecting(ExpectedVersion::NoStream);
    let first = store.append(vec![event.clone()]).await.unwrap();
    store
        .append(vec![memory("demo", "agent/a", "later")])
        .await
        .unwrap();

    // A retry of the first append is recognised even though the stream has moved on and its
    // expectation no longer holds.
    let again = store.append(vec![event.clone()]).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].position, first[0].position);
    assert_eq!(again[0].stream_version, 1);
    assert_eq!(count(&pool).await, 2);

    // A batch mixing a known event with new ones appends only the new ones.
    let fresh = memory("demo", "agent/a", "fresh");
    let mixed = store.append(vec![event.clone(), fresh]).await.unwrap();
    assert!(mixed[0].duplicate && !mixed[1].duplicate);
    assert_eq!(mixed[1].stream_version, 3);
    assert_eq!(count(&pool).await, 3);

    // The same id from another source, or in another workspace, is another event.
    let event = event.expecting(ExpectedVersion::Any);
    let mut other_source = event.clone();
    other_source.source = "/elsewhere".parse().unwrap();
    let mut other_ws = event.clone();
    other_ws.workspace = ws("other");
    assert!(!store.append(vec![other_source]).await.unwrap()[0].duplicate);
    assert!(!store.append(vec![other_ws]).await.unwrap()[0].duplicate);
    assert_eq!(count(&pool).await, 5);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_batch_may_not_repeat_an_id(pool: PgPool) {
    let store = store(&pool);
    let event = memory("demo", "agent/a", "k");
    let err = store.append(vec![event.clone(), event]).await.unwrap_err();
    assert!(
        matches!(err, Error::DuplicateInBatch { index: 1, first: 0 }),
        "{err:?}"
    );
    let err = store.append(vec![]).await.unwrap_err();
    assert!(matches!(err, Error::BatchSize { len: 0, .. }), "{err:?}");
    assert_eq!(count(&pool).await, 0);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn invalid_data_and_unknown_types_append_nothing(pool: PgPool) {
    let store = store(&pool);
    let mut bad = memory("demo", "agent/a", "k");
    bad.data = json!({"agent": "tester"});
    let good = memory("demo", "agent/a", "ok");
    let err = store.append(vec![good.clone(), bad]).await.unwrap_err();
    match err {
        Error::Invalid {
            index: 1,
            source: DataError::Invalid { violations, .. },
        } => {
            assert_eq!(violations[0].pointer, "");
            assert!(violations[0].message.contains("key"), "{violations:?}");
        }
        other => panic!("expected invalid data, got {other:?}"),
    }
    let mut unknown = memory("demo", "agent/a", "u");
    unknown.ty = EventType::parse("nothing.happened.v1").unwrap();
    let err = store.append(vec![unknown]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                source: DataError::UnknownType(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(count(&pool).await, 0);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn the_database_refuses_update_delete_and_truncate(pool: PgPool) {
    let store = store(&pool);
    let appended = store
        .append(vec![memory("demo", "agent/a", "k")])
        .await
        .unwrap();
    for sql in [
        "UPDATE events SET type = 'tampered.event.v1'",
        "UPDATE events SET data = '{}' WHERE false",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("append-only"), "{sql}: {message}");
    }
    let (ty, position): (String, i64) = sqlx::query_as("SELECT type, position FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ty, "agent.memory.recorded.v1");
    assert_eq!(position, appended[0].position);
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn append_in_commits_with_the_callers_transaction(pool: PgPool) {
    let store = store(&pool);
    let mut tx = pool.begin().await.unwrap();
    let event = memory("demo", "agent/a", "k");
    store.append_in(&mut tx, vec![event.clone()]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool).await, 0, "rolled back with the caller");

    let mut tx = pool.begin().await.unwrap();
    let appended = store.append_in(&mut tx, vec![event.clone()]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!appended[0].duplicate);
    let again = store.append(vec![event]).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(
        again[0].id,
        EventId::parse(appended[0].id.as_str()).unwrap()
    );
    assert_eq!(count(&pool).await, 1);
}
