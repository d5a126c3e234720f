-- Delivery machinery: the relay's checkpoint, projection checkpoints, agents' "handled"
-- records and dead letters, and the wake-up for everything that follows the store.

-- Wake followers (relay, projections) when events commit. One notification per transaction:
-- PostgreSQL folds identical notifications of a transaction into one.
CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switchyard_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Where the relay stands, per JetStream stream.
CREATE TABLE relay_checkpoints (
    stream          text        PRIMARY KEY,
    transaction_id  bigint      NOT NULL,
    position        bigint      NOT NULL,
    -- The JetStream stream these messages went into (its creation time, as JetStream reports it):
    -- a stream recreated since means everything must be relayed again.
    stream_created  text,
    -- The last JetStream sequence acknowledged; a stream whose last sequence is lower lost data.
    stream_sequence bigint      NOT NULL DEFAULT 0,
    relayed         bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Where each projection stands.
CREATE TABLE projection_checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  bigint      NOT NULL,
    position        bigint      NOT NULL,
    applied         bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Effectively-once handling: written in the same transaction as the agent's new events.
CREATE TABLE agent_handled (
    agent           text        NOT NULL,
    event_position  bigint      NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, event_position)
);

-- Events an agent gave up on (with agent.failed.v1 in the same transaction).
CREATE TABLE dead_letters (
    id              uuid        PRIMARY KEY,
    agent           text        NOT NULL,
    event_position  bigint      NOT NULL,
    workspace       text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    deliveries      integer     NOT NULL,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    -- Set when a retry handled it.
    resolved_at     timestamptz,
    UNIQUE (agent, event_position)
);
