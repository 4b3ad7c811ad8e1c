#!/usr/bin/env bash
# Quickstart: install fusillade in .venv, then run examples/requests.jsonl (200 chat
# completions over two models) against the bundled mock upstream, durably, on an
# embedded PostgreSQL (no database to set up). Results land in examples/results.jsonl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[embedded,server]'

log=$(mktemp)
.venv/bin/python -m fusillade mock-upstream --port 0 --latency 0.2 >"$log" 2>&1 &
mock=$!
trap 'kill "$mock" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 100); do grep -q listening "$log" && break; sleep 0.1; done
url=$(awk '/listening/ {print $NF; exit}' "$log")
[ -n "$url" ] || { cat "$log" >&2; exit 1; }

.venv/bin/python -m fusillade run examples/requests.jsonl -o examples/results.jsonl \
  --upstream "$url" --concurrency 32
echo
echo "first result line:"
head -c 300 examples/results.jsonl
echo
