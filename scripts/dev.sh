#!/usr/bin/env bash
# Starts the local stack: D1 migrations, then the worker under `wrangler dev`
# on http://127.0.0.1:8787 (local D1 and Durable Objects in .wrangler/state).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8787}"

echo "==> applying D1 migrations (local)"
wrangler d1 migrations apply DB --local

echo "==> starting the worker on http://127.0.0.1:${PORT}"
exec wrangler dev --ip 127.0.0.1 --port "$PORT" --show-interactive-dev-session=false
