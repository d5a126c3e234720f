-- Operators may pause the relay of a stream (POST /v1/ops/relay/pause): whichever instance is
-- active publishes nothing while a row is here. Events keep being stored; the relay lag grows.
CREATE TABLE relay_pauses (
    stream     text        PRIMARY KEY,
    paused_by  text        NOT NULL,
    paused_at  timestamptz NOT NULL DEFAULT now()
);
