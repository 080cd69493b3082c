#!/usr/bin/env bash
# Starts the local stack: localstripe (the Stripe emulator) on
# http://127.0.0.1:8420 with its webhooks registered to the worker, the D1
# migrations, then the worker under `wrangler dev` on http://127.0.0.1:8787
# (local D1 and Durable Objects in .wrangler/state). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8787}"
STRIPE_PORT="${STRIPE_PORT:-8420}"
STRIPE_BASE="http://127.0.0.1:${STRIPE_PORT}"
WEBHOOK_SECRET=whsec_local_dev # .dev.vars gives the worker the same one
mkdir -p .wrangler
STRIPE_LOG=.wrangler/localstripe.log

stripe_pgid=""
worker_pgid=""
stop() {
  # Each runs in its own process group (setsid): stop the whole group.
  for pgid in "$worker_pgid" "$stripe_pgid"; do
    [ -n "$pgid" ] && kill -TERM -- "-$pgid" 2>/dev/null || true
  done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> starting localstripe on ${STRIPE_BASE} (log: ${STRIPE_LOG})"
setsid python3 scripts/stripe-emulator.py --port "$STRIPE_PORT" --from-scratch >"$STRIPE_LOG" 2>&1 &
stripe_pgid=$!
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null -u sk_test_local_dev: "${STRIPE_BASE}/v1/customers?limit=1" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$stripe_pgid" 2>/dev/null; then
    echo "localstripe did not start (port ${STRIPE_PORT} in use?); see ${STRIPE_LOG}" >&2
    exit 1
  fi
  sleep 0.1
done
# Registrations live in localstripe's memory: register at every start.
curl -fsS -o /dev/null -X POST "${STRIPE_BASE}/_config/webhooks/ai-wallet" \
  -d "url=http://127.0.0.1:${PORT}/stripe/webhook" -d "secret=${WEBHOOK_SECRET}"

echo "==> applying D1 migrations to every ledger shard (local)"
# The shards are the bindings named by LEDGER_SHARDS in wrangler.toml.
for shard in $(sed -n 's/^LEDGER_SHARDS = "\(.*\)"/\1/p' wrangler.toml | head -1 | tr ',' ' '); do
  wrangler d1 migrations apply "$shard" --local
done

echo "==> starting the worker on http://127.0.0.1:${PORT}"
echo "    test card for an organization: scripts/test-card.sh <org> [pm_card_visa]"
setsid wrangler dev --ip 127.0.0.1 --port "$PORT" --var "STRIPE_API_BASE:${STRIPE_BASE}" \
  --show-interactive-dev-session=false &
worker_pgid=$!
wait "$worker_pgid"
