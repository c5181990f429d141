#!/usr/bin/env bash
# A timeout and an explicit kill both end the run with one `exit` event saying what happened.
# Usage: PETRI_URL=http://127.0.0.1:8000 ./examples/05_kill_and_timeout.sh
set -euo pipefail
URL=${PETRI_URL:-http://127.0.0.1:8000}
SID=$(curl -sf -X POST "$URL/v1/sandboxes" -d '{"language": "python"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

echo "== an endless loop with a 2 s timeout"
curl -sf -X POST "$URL/v1/sandboxes/$SID/exec" -d '{"command": "while :; do :; done", "timeout_seconds": 2}'
echo

echo "== start a long run without waiting, then kill it"
EID=$(curl -sf -X POST "$URL/v1/sandboxes/$SID/exec" -d '{"command": "sleep 600", "wait": false}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["execution_id"])')
sleep 0.5
curl -sf -X POST "$URL/v1/sandboxes/$SID/executions/$EID/kill" > /dev/null
curl -sfN "$URL/v1/sandboxes/$SID/executions/$EID/events"   # replays to the terminal event
curl -sf -X DELETE "$URL/v1/sandboxes/$SID"
