#!/bin/sh
# Demo reviewer for scripts/up: asks for an example once, then approves.
set -eu
if grep -q 'now with an example' notes/*.md 2>/dev/null; then
  printf '{"verdict":"approved","message":"looks good"}' > "$SWITCHYARD_REPORT_FILE"
else
  printf '{"verdict":"changes_requested","message":"please add an example"}' > "$SWITCHYARD_REPORT_FILE"
fi
