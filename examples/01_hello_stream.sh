#!/usr/bin/env bash
# Create a Python sandbox, watch a program's output stream live with curl -N, then delete it.
# Usage: PETRI_URL=http://127.0.0.1:8000 ./examples/01_hello_stream.sh
set -euo pipefail
URL=${PETRI_URL:-http://127.0.0.1:8000}

SID=$(curl -sf -X POST "$URL/v1/sandboxes" -H 'Content-Type: application/json' \
  -d '{"language": "python"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "sandbox: $SID"

# Each line appears as it is printed: stdout and stderr are separate typed events.
curl -sfN -X POST "$URL/v1/sandboxes/$SID/exec" \
  -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \
  -d '{"code": "import sys, time\nfor i in range(3):\n    print(f\"tick {i}\")\n    time.sleep(0.3)\nprint(\"done\", file=sys.stderr)"}'

curl -sf -X DELETE "$URL/v1/sandboxes/$SID"
echo "deleted $SID"
