#!/bin/sh
# Demo "coding agent" for scripts/up: writes notes/<task>.md in the task's worktree.
# Switchyard hands it the task as JSON in $SWITCHYARD_TASK_FILE; it runs in the worktree.
set -eu
mkdir -p notes
{
  echo "# $SWITCHYARD_TASK_ID"
  echo
  echo "Written by the demo coder, attempt $SWITCHYARD_ATTEMPT."
  if grep -q '"feedback"' "$SWITCHYARD_TASK_FILE"; then
    echo
    echo "Reworked after review: now with an example."
  fi
} > "notes/$SWITCHYARD_TASK_ID.md"
sleep 1
