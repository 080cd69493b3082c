#!/usr/bin/env bash
# Starts the local stack: localstripe (the Stripe emulator) on
# http://127.0.0.1:8420 with its webhooks registered to the worker, the D1
# migrations, then the worker under `wrangler dev` on http://127.0.0.1:8787
# (local D1 and Durable Objects in .wrangler/state).
#
# Environment: PORT (8787), STRIPE_PORT (8420), EVENTS_WEBHOOK_URL (unset:
# events are not sent), INSPECTOR_PORT (wrangler's
# default, 9229), DEV_STATE_DIR (wrangler's default, .wrangler/state: the
# local D1 and Durable Object storage, passed as --persist-to to the
# migrations and to wrangler dev; the localstripe log goes there too).
#
# Stopping: Ctrl-C, or SIGTERM/SIGINT to this script or to `make dev`'s
# process group, stops everything it started and returns once all of it has
# exited (the ports are free again). A second signal during the shutdown
# kills what is left at once instead of waiting up to STOP_GRACE_S seconds.
# If this script's parent (`make dev`) is killed outright, the stack stops too.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8787}"
STRIPE_PORT="${STRIPE_PORT:-8420}"
STRIPE_BASE="http://127.0.0.1:${STRIPE_PORT}"
STOP_GRACE_S="${STOP_GRACE_S:-10}"
WEBHOOK_SECRET=whsec_local_dev # .dev.vars gives the worker the same one
PYTHON=.venv/bin/python        # scripts/setup.sh installs localstripe there
persist_args=()
if [ -n "${DEV_STATE_DIR:-}" ]; then
  mkdir -p "$DEV_STATE_DIR"
  persist_args=(--persist-to "$DEV_STATE_DIR")
  STRIPE_LOG="$DEV_STATE_DIR/localstripe.log"
else
  mkdir -p .wrangler
  STRIPE_LOG=.wrangler/localstripe.log
fi
inspector_args=()
[ -n "${INSPECTOR_PORT:-}" ] && inspector_args=(--inspector-port "$INSPECTOR_PORT")
[ -x "$PYTHON" ] || { echo "dev: $PYTHON is missing; run scripts/setup.sh (make dev does)" >&2; exit 1; }

# Every child runs in its own session and process group (setsid), so that one
# kill reaches all of its processes (wrangler's workerd, localstripe's
# Python), and so that Ctrl-C does not hit them before we decide to stop them.
# The flip side: a signal to our process group does not reach them either;
# this script has to stop them, and does, on every way out.
groups=()
signals=0     # INT/TERM received so far
exit_status=0 # what this script exits with once everything has stopped
sleeper=""    # the main loop's current `sleep`

signal_groups() {
  local pgid
  for pgid in "${groups[@]}"; do kill "-$1" -- "-$pgid" 2>/dev/null || true; done
}
# A group is gone once nothing but zombies is left in it: an orphan (workerd
# outliving wrangler) may never be reaped where PID 1 does not reap.
groups_alive() {
  local stat fields state pgrp pgid
  for stat in /proc/[0-9]*/stat; do
    { read -r fields <"$stat"; } 2>/dev/null || continue
    read -r state _ pgrp _ <<<"${fields##*) }"
    [ "$state" = Z ] && continue
    for pgid in "${groups[@]}"; do [ "$pgrp" = "$pgid" ] && return 0; done
  done
  return 1
}
on_signal() {
  signals=$((signals + 1))
  exit_status=$1
  if [ "$signals" -eq 1 ]; then
    echo "==> stopping (a second Ctrl-C kills at once)" >&2
    signal_groups TERM
  else
    signal_groups KILL
  fi
}
# Runs on every exit, signalled or not; waits until every process is gone.
finish() {
  local status=$? deadline=$((SECONDS + STOP_GRACE_S))
  set +e # nothing here may end the wait early
  [ "$exit_status" -eq 0 ] && exit_status=$status
  [ "$signals" -eq 0 ] && signal_groups TERM # on_signal already did
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  while groups_alive; do
    if [ "$SECONDS" -ge "$deadline" ]; then signal_groups KILL; fi
    sleep 0.1 || true # a signal to our group kills sleep too
  done
  exit "$exit_status"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap finish EXIT

# Traps run only between commands: each step checks whether it should stop.
stop_requested() { [ "$signals" -gt 0 ]; }

start_group() {
  setsid "$@" &
  groups+=("$!")
}

# Waits for a child in its own group; returns its status, or 1 once a signal
# asked us to stop (wait returns early on a trapped signal).
wait_group() {
  local pid=$1 status=0
  while :; do
    status=0
    wait "$pid" || status=$?
    stop_requested && return 1
    kill -0 "$pid" 2>/dev/null || return "$status"
  done
}

echo "==> starting localstripe on ${STRIPE_BASE} (log: ${STRIPE_LOG})"
start_group "$PYTHON" scripts/stripe-emulator.py --port "$STRIPE_PORT" --from-scratch >"$STRIPE_LOG" 2>&1
stripe_pid=$!
for _ in $(seq 1 100); do
  stop_requested && exit
  if curl -fsS -o /dev/null -u sk_test_local_dev: "${STRIPE_BASE}/v1/customers?limit=1" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$stripe_pid" 2>/dev/null; then
    echo "localstripe did not start (port ${STRIPE_PORT} in use?); see ${STRIPE_LOG}" >&2
    exit 1
  fi
  sleep 0.1 || true
done
stop_requested && exit
# Registrations live in localstripe's memory: register at every start.
curl -fsS -o /dev/null -X POST "${STRIPE_BASE}/_config/webhooks/ai-wallet" \
  -d "url=http://127.0.0.1:${PORT}/stripe/webhook" -d "secret=${WEBHOOK_SECRET}"

echo "==> applying D1 migrations to every ledger shard (local)"
# The shards are the bindings named by LEDGER_SHARDS in wrangler.toml.
for shard in $(sed -n 's/^LEDGER_SHARDS = "\(.*\)"/\1/p' wrangler.toml | head -1 | tr ',' ' '); do
  start_group wrangler d1 migrations apply "$shard" --local "${persist_args[@]}" </dev/null
  wait_group "$!" || exit
done

echo "==> starting the worker on http://127.0.0.1:${PORT}"
echo "    test card for an organization: scripts/test-card.sh <org> [pm_card_visa]"
# Events are recorded and listed always; EVENTS_WEBHOOK_URL (say, a receiver
# of your own on http://127.0.0.1:…) also sends them, signed with .dev.vars'
# EVENTS_SIGNING_SECRET, through the local queue.
var_args=()
if [ -n "${EVENTS_WEBHOOK_URL:-}" ]; then
  echo "    events are sent to ${EVENTS_WEBHOOK_URL}"
  var_args=(--var "EVENTS_WEBHOOK_URL:${EVENTS_WEBHOOK_URL}")
fi
# Limits you may want to try other values of locally pass through from the
# environment (e.g. `MAX_METADATA_BYTES=4096 make dev`, `RATE_CARD='[…]' make dev`,
# `LEDGER_LIVE_ENTRIES=1000 make dev`); unset, wrangler.toml's apply.
for name in MAX_METADATA_BYTES RATE_CARD LEDGER_LIVE_ENTRIES LEDGER_SEGMENT_ENTRIES OBJECT_BYTES_BUDGET; do
  if [ -n "${!name:-}" ]; then
    echo "    ${name}=${!name}"
    var_args+=(--var "${name}:${!name}")
  fi
done
start_group wrangler dev --ip 127.0.0.1 --port "$PORT" "${inspector_args[@]}" "${persist_args[@]}" \
  --var "STRIPE_API_BASE:${STRIPE_BASE}" "${var_args[@]}" --show-interactive-dev-session=false
worker_pid=$!

# Runs until a signal, the worker or localstripe exits, or our parent is gone
# (`make dev` killed with SIGKILL: nobody would stop us otherwise).
parent=$PPID
while ! stop_requested; do
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    wait "$worker_pid" || exit_status=$?
    echo "wrangler dev exited (status ${exit_status})" >&2
    exit
  fi
  if ! kill -0 "$stripe_pid" 2>/dev/null; then
    echo "localstripe exited; see ${STRIPE_LOG}" >&2
    exit_status=1
    exit
  fi
  if ! kill -0 "$parent" 2>/dev/null; then
    echo "==> the parent process is gone: stopping" >&2
    exit
  fi
  sleep 0.5 &
  sleeper=$!
  wait "$sleeper" || true
done
exit
