#!/usr/bin/env bash
# Upload a zipped project (folders preserved), run it by filename, read back a file it wrote.
# Usage: PETRI_URL=http://127.0.0.1:8000 ./examples/02_upload_project.sh
set -euo pipefail
URL=${PETRI_URL:-http://127.0.0.1:8000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/proj/lib"
printf 'def greet(name):\n    return f"hello, {name}"\n' > "$WORK/proj/lib/greeting.py"
printf 'from lib.greeting import greet\nprint(greet("petri"))\nopen("out.txt", "w").write("written by the program\\n")\n' > "$WORK/proj/main.py"
(cd "$WORK/proj" && python3 -m zipfile -c "$WORK/proj.zip" lib main.py)

SID=$(curl -sf -X POST "$URL/v1/sandboxes" -d '{"language": "python"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -sf -X POST "$URL/v1/sandboxes/$SID/upload" -H 'Content-Type: application/zip' \
  --data-binary @"$WORK/proj.zip"
echo
# Without Accept: text/event-stream the exec waits and returns one JSON result.
curl -sf -X POST "$URL/v1/sandboxes/$SID/exec" -d '{"filename": "main.py"}'
echo
curl -sf "$URL/v1/sandboxes/$SID/files/out.txt"
curl -sf "$URL/v1/sandboxes/$SID/files"
echo
curl -sf -X DELETE "$URL/v1/sandboxes/$SID"
