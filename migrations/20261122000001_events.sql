-- The event store: one append-only table, the source of truth for everything in Switchyard.
--
-- Global read order is (transaction_id, position): readers only read events written by
-- transactions older than the oldest one still running (pg_snapshot_xmin), so an event that
-- commits late is never skipped. See crates/store/src/lib.rs.

CREATE TABLE events (
    -- Unique, increasing in append order within a transaction; the CloudEvents `sequence`.
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction; what the gap-free cursor orders by.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    workspace       text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    id              text        NOT NULL,
    source          text        NOT NULL,
    type            text        NOT NULL,
    time            timestamptz NOT NULL,
    data            jsonb       NOT NULL,
    correlation_id  text        NOT NULL,
    causation_id    text,
    traceparent     text,
    -- Other CloudEvents extension attributes, NULL when there are none.
    extensions      jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Optimistic concurrency: two writers cannot both append version N of a stream.
    CONSTRAINT events_stream_version_key UNIQUE (workspace, stream_id, stream_version),
    -- Idempotency: (workspace, source, id) is unique for the lifetime of the store.
    CONSTRAINT events_source_id_key UNIQUE (workspace, source, id)
);

-- The global read order.
CREATE INDEX events_global_order ON events (transaction_id, position);

-- Events are never changed or removed, whoever asks: the database refuses it.
CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- API tokens. Only their SHA-256 is stored; the token itself is shown once.
CREATE TABLE api_tokens (
    id          uuid        PRIMARY KEY,
    token_hash  bytea       NOT NULL UNIQUE,
    name        text        NOT NULL,
    -- NULL: every workspace (admin tokens).
    workspace   text,
    scope       text        NOT NULL CHECK (scope IN ('read', 'propose', 'approve', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
