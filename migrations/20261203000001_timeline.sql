-- The dashboard's timeline reads one workspace's events newest first, whole or narrowed to a
-- type, a source (an agent) or a correlation (which is also how an event's causation chain is
-- found). Each read walks one of these indexes backwards from where the last page ended, so a
-- page costs the same at 100 events as at 10 million.
CREATE INDEX events_timeline ON events (workspace, position);
CREATE INDEX events_timeline_type ON events (workspace, type, position);
CREATE INDEX events_timeline_source ON events (workspace, source, position);
CREATE INDEX events_timeline_correlation ON events (workspace, correlation_id, position);

-- The workspace list: one row per workspace, without reading the log.
CREATE INDEX events_workspaces ON events (position) WHERE type = 'workspace.created.v1';
