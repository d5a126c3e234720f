-- The dashboard's timeline reads one workspace's events newest first, whole or narrowed to a
-- type, a source (an agent) or a correlation (which is also how an event's causation chain is
-- found). Each read walks one of these indexes backwards from where the last page ended, so a
-- page costs the same at 100 events as at 10 million. A type or a source is looked for in a
-- bounded window of the workspace's index (crates/store/src/read.rs, TIMELINE_WINDOW): an
-- index of each would cost every append two more entries, which the agent path's latency
-- showed (docs/benchmarks.md).
--
-- Their workspace column is indexed under the "C" collation (equality is the same: byte for
-- byte), and only the timeline compares `workspace COLLATE "C" = …`: no other statement can
-- use them, so they cannot change another statement's plan. Indexed plainly they did: with
-- statistics older than the table's growth, the append path's idempotency lookup
-- (workspace, source, id) walked one of them instead of events_source_id_key, and a batch's
-- lookup took 7 to 12 s in the benchmark (none before these indexes).
CREATE INDEX events_timeline ON events ((workspace COLLATE "C"), position);
CREATE INDEX events_timeline_correlation ON events ((workspace COLLATE "C"), correlation_id, position);

-- The workspace list: one row per workspace, without reading the log.
CREATE INDEX events_workspaces ON events (position) WHERE type = 'workspace.created.v1';
