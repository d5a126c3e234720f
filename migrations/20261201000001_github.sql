-- GitHub webhook deliveries. A delivery's row is written in the same transaction as the
-- events it produced, so a delivery is either fully processed (row and events) or not at all:
-- a redelivery of a processed one appends nothing, a redelivery of a failed one is processed.

CREATE TABLE github_deliveries (
    -- X-GitHub-Delivery.
    delivery_id   text        PRIMARY KEY,
    -- X-GitHub-Event and the payload's action.
    event         text        NOT NULL,
    action        text,
    -- owner/repo, when the payload names one.
    repository    text,
    -- processed: events appended; ignored: nothing to do (reason says why); ping.
    outcome       text        NOT NULL CHECK (outcome IN ('processed', 'ignored', 'ping')),
    reason        text,
    -- The workspaces the events went to, and their global positions.
    workspaces    text[]      NOT NULL DEFAULT '{}',
    positions     bigint[]    NOT NULL DEFAULT '{}',
    received_at   timestamptz NOT NULL DEFAULT now(),
    -- Later deliveries of the same id, acknowledged without appending anything.
    redeliveries  integer     NOT NULL DEFAULT 0,
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX github_deliveries_received ON github_deliveries (received_at);

-- Finding the workspaces of a repository (case-insensitively, as GitHub names compare).
CREATE INDEX events_github_repository ON events (
    lower(data #>> '{repository,owner}'), lower(data #>> '{repository,repo}'))
    WHERE type = 'workspace.created.v1' AND data #>> '{repository,kind}' = 'github';

-- The table definitions each projection was built with: a projection whose definitions
-- changed is rebuilt from the store at start.
CREATE TABLE projection_schemas (
    name         text        PRIMARY KEY,
    schema_hash  text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
