#!/usr/bin/env bash
# The `petri` command: run a file (its exit code is yours), run a project's tests, keep a
# sandbox to exec into, replay an execution's output, list and remove sandboxes.
# Usage: PETRI_URL=http://127.0.0.1:8000 ./examples/13_cli.sh
set -euo pipefail
export PETRI_URL=${PETRI_URL:-http://127.0.0.1:8000}
PETRI=(python3 -m gateway)  # `petri` once installed
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

printf 'import sys\nprint("args:", sys.argv[1:])\nprint("to stderr", file=sys.stderr)\nsys.exit(4)\n' > "$WORK/job.py"
set +e
"${PETRI[@]}" run "$WORK/job.py" -- one "two words"
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 4 ]

mkdir -p "$WORK/proj/tests"
printf 'def double(x):\n    return 2 * x\n' > "$WORK/proj/lib.py"
: > "$WORK/proj/conftest.py"
printf 'from lib import double\n\ndef test_double():\n    assert double(21) == 42\n' > "$WORK/proj/tests/test_lib.py"
"${PETRI[@]}" run "$WORK/proj" --test

SID=$("${PETRI[@]}" run "$WORK/proj" --keep --entry lib.py 2>&1 | sed -n 's/.*kept sandbox \(sb-[0-9a-f]*\).*/\1/p')
"${PETRI[@]}" exec "$SID" -- 'python3 -c "from lib import double; print(double(4))"'
"${PETRI[@]}" sandboxes ls
EID=$(curl -sf "$PETRI_URL/v1/sandboxes/$SID/executions" | python3 -c 'import json, sys; print(json.load(sys.stdin)["executions"][0]["id"])')
"${PETRI[@]}" logs "$SID" "$EID"
"${PETRI[@]}" sandboxes rm "$SID"
