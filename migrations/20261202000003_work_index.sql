-- The strategy and retrospective agents read a workspace's proposals, decisions, commits,
-- dead letters and task outcomes in order. A partial index keeps that read off the rest of
-- the log, and costs nothing on the appends of other types.
CREATE INDEX events_work_by_type ON events (workspace, position)
WHERE type IN (
    'proposal.created.v1', 'proposal.approved.v1', 'proposal.rejected.v1',
    'proposal.merged.v1', 'proposal.closed.v1', 'git.commit.v1', 'git.commit_failed.v1',
    'agent.failed.v1', 'task.completed.v1', 'task.failed.v1', 'retrospective.completed.v1'
);
