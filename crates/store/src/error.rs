use std::sync::Arc;

use switchyard_events::{DataError, ExpectedVersion, InvalidId, StreamId, Workspace};

/// Result of the event store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when appending to or reading from the store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event's data breaks its schema or its type is unknown; nothing was appended.
    #[error("event {index} of the batch: {source}")]
    Invalid {
        /// Position of the event in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        source: DataError,
    },
    /// The stream was not at the version the writer expected; nothing was appended.
    #[error("stream {stream} of workspace {workspace} is at version {actual}, expected {expected}")]
    Conflict {
        /// The workspace of the stream.
        workspace: Workspace,
        /// The stream.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version just before the event, including earlier events of the batch.
        actual: u64,
    },
    /// The same `(source, id)` appears twice in one batch.
    #[error("event {index} of the batch repeats the source and id of event {first}")]
    DuplicateInBatch {
        /// The repeated event.
        index: usize,
        /// The event it repeats.
        first: usize,
    },
    /// A batch held no events, or more than the store accepts in one append.
    #[error("a batch must hold 1 to {max} events, this one holds {len}")]
    BatchSize {
        /// Events in the batch.
        len: usize,
        /// The most one append accepts.
        max: usize,
    },
    /// Appending inside a caller's transaction raced with a concurrent writer of the same
    /// stream version or event id; the caller's transaction is aborted and should be retried.
    #[error("a concurrent transaction appended the same stream version or event id; retry")]
    ConcurrentWrite,
    /// A row read from the database does not hold a valid event (a bug or a manual edit).
    #[error("stored event at position {position} is corrupt: {source}")]
    Corrupt {
        /// The row's position.
        position: i64,
        /// Which field is invalid.
        source: InvalidId,
    },
    /// PostgreSQL failed or could not be reached; whether the append happened is unknown only
    /// if the error came from COMMIT, and a retry with the same ids is then safe.
    #[error("database error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    /// The store is shutting down and takes no more appends.
    #[error("the event store is shutting down")]
    Closed,
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(Arc::new(e))
    }
}

impl Error {
    /// Whether this error is a conflict the caller should see as such (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// Whether a database error is a unique violation of one of the events table's keys, which
/// after our own pre-checks means a concurrent writer got there first.
pub(crate) fn is_append_race(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|db| {
        db.is_unique_violation()
            && matches!(
                db.constraint(),
                Some("events_stream_version_key" | "events_source_id_key")
            )
    })
}
