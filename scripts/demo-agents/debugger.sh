#!/bin/sh
# Demo debugger for scripts/up: "fixes" a failed acceptance check by adding the file it wanted.
set -eu
mkdir -p notes
echo "checked by the demo debugger" > notes/CHECKED
printf '{"summary":"added notes/CHECKED, which the acceptance check looks for"}' > "$SWITCHYARD_REPORT_FILE"
