-- Every run of `switchyard serve`. A run holds a session advisory lock on its id for as long
-- as its process lives, and marks itself stopped on a clean shutdown; at start, a run still
-- marked running whose lock is free died uncleanly (its connection closed with it), and the new
-- run turns debug mode on for a while.
CREATE TABLE server_runs (
    id          uuid        PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz,
    crashed     boolean     NOT NULL DEFAULT false
);
CREATE INDEX server_runs_running ON server_runs (started_at) WHERE stopped_at IS NULL;
