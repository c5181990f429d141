#!/usr/bin/env bash
# Serve mode: run a small web app in a sandbox as a service and open it through its preview
# URL (a capability: anyone holding it reaches the app; the sandbox itself reaches nothing).
# Usage: PETRI_URL=http://127.0.0.1:8000 ./examples/07_preview_a_web_app.sh
set -euo pipefail
URL=${PETRI_URL:-http://127.0.0.1:8000}
json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

SID=$(curl -sf -X POST "$URL/v1/sandboxes" -d '{"language": "python"}' | json '["id"]')
trap 'curl -sf -X DELETE "$URL/v1/sandboxes/$SID" >/dev/null; echo "deleted $SID"' EXIT
echo "sandbox: $SID"

# The app an AI wrote: a page and a JSON endpoint (standard library only).
curl -sf -X PUT "$URL/v1/sandboxes/$SID/files/app.py" --data-binary @- >/dev/null <<'PY'
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class App(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/api/hello"):
            body, kind = json.dumps({"hello": "from the sandbox", "path": self.path}), "application/json"
        else:
            body, kind = "<h1>Hello from a Petri sandbox</h1>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

print("listening on 5000", flush=True)
ThreadingHTTPServer(("127.0.0.1", 5000), App).serve_forever()
PY

# Start it as a service: 201 at once with the preview URL; status goes starting -> ready.
SERVICE=$(curl -sf -X POST "$URL/v1/sandboxes/$SID/services" \
  -d '{"command": "python3 app.py", "port": 5000, "ready_path": "/api/hello"}')
SVID=$(echo "$SERVICE" | json '["id"]')
PREVIEW=$(echo "$SERVICE" | json '["preview_url"]')
EID=$(echo "$SERVICE" | json '["execution_id"]')
echo "service: $SVID, preview: $PREVIEW"

for _ in $(seq 1 100); do
  STATUS=$(curl -sf "$URL/v1/sandboxes/$SID/services/$SVID" | json '["status"]')
  [ "$STATUS" = starting ] || break
  sleep 0.2
done
echo "status: $STATUS"
[ "$STATUS" = ready ] || exit 1

# Anyone with the URL reaches the app: any method, path and query, WebSockets too.
curl -sf "$PREVIEW"; echo
curl -sf "${PREVIEW}api/hello?name=petri"; echo

# Stop it: 204, the URL is revoked (404), and the app's output stream ends.
curl -sf -X DELETE "$URL/v1/sandboxes/$SID/services/$SVID"
echo "after stop, the preview answers $(curl -s -o /dev/null -w '%{http_code}' "$PREVIEW")"
curl -sfN "$URL/v1/sandboxes/$SID/executions/$EID/events"   # start, stdout, ready, ..., exit
