#!/usr/bin/env bash
# `make bench`: measures the wallet under `wrangler dev` (workerd, local D1 and
# Durable Objects) with wrk over loopback, and prints one table of throughput,
# latency and storage work, each beside the platform floor it is compared with.
#
# This script owns the processes: it builds the release worker, applies the
# migrations and seeds a fresh temporary --persist-to directory, starts
# `wrangler dev` in its own process group and kills that group on exit. The
# scenarios and the table are in scripts/bench/run.mjs; the load is generated
# by scripts/bench/wallet.lua.
#
#   scripts/bench.sh [--duration 10s] [--connections 16] [--smoke] [--seed-entries N] [--keep]
#
# BENCH_SMOKE=1 is the same as --smoke: 1-second scenarios (batches 3 s),
# 4 connections and a 10,000-entry seed, to prove in CI that the benchmark
# still runs (it then fails on any error response). A full run exits 0
# whatever the figures, unless something crashed; the targets are printed as
# PASS/MISS, not asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

DURATION=""
CONNECTIONS=""
SMOKE=${BENCH_SMOKE:-0}
SEED_ENTRIES=""
KEEP=0
READY_TIMEOUT_S=120
WRANGLER_TIMEOUT_S=300

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --connections=*) CONNECTIONS=${1#*=}; shift ;;
    --seed-entries) SEED_ENTRIES=$2; shift 2 ;;
    --seed-entries=*) SEED_ENTRIES=${1#*=}; shift ;;
    --smoke) SMOKE=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ $SMOKE == 1 ]] || SMOKE=0
if [[ $SMOKE == 1 ]]; then
  DURATION=${DURATION:-1s}
  CONNECTIONS=${CONNECTIONS:-4}
  SEED_ENTRIES=${SEED_ENTRIES:-10000}
else
  DURATION=${DURATION:-10s}
  CONNECTIONS=${CONNECTIONS:-16}
  SEED_ENTRIES=${SEED_ENTRIES:-1000000}
fi
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || { echo "bench: --duration must look like 10s, 2m or 10" >&2; exit 2; }
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --connections must be a positive integer" >&2; exit 2; }
[[ $SEED_ENTRIES =~ ^[1-9][0-9]*$ && $SEED_ENTRIES -le 1900000 ]] ||
  { echo "bench: --seed-entries must be 1 to 1,900,000 (the seeded debits spend the trial grant)" >&2; exit 2; }

BEGIN_NS=$(date +%s%N)
export BENCH_BEGIN_MS=$((BEGIN_NS / 1000000))
progress() {
  printf '[bench %5.1fs] %s\n' "$(( ($(date +%s%N) - BEGIN_NS) / 1000000 ))e-3" "$*" >&2
}

command -v wrk >/dev/null || { echo "bench: wrk is not installed; \`make bench\` installs it" >&2; exit 1; }

progress "building the release worker (make worker; nothing to do when up to date)"
make -s worker

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ai-wallet-bench.XXXXXX")
STATE=$WORK/state
DEV_PGID=""

stop_dev() {
  [[ -n $DEV_PGID ]] || return 0
  kill -TERM -- "-$DEV_PGID" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 -- "-$DEV_PGID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$DEV_PGID" 2>/dev/null || true
  DEV_PGID=""
}

cleanup() {
  local status=$?
  stop_dev
  if [[ $status -eq 0 && $KEEP -eq 0 ]]; then
    rm -rf "$WORK"
  else
    echo "bench: logs and state kept in $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# `timeout` runs wrangler in its own process group and signals the whole group,
# so a hung wrangler takes its workerd with it.
wrangler_step() {
  local log=$1
  shift
  if ! timeout -k 5 "$WRANGLER_TIMEOUT_S" wrangler "$@" </dev/null >"$log" 2>&1; then
    echo "bench: wrangler $* failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

progress "applying D1 migrations to a fresh local database in $WORK"
wrangler_step "$WORK/migrate.log" d1 migrations apply DB --local --persist-to "$STATE"

# The usage report reads the D1 replica: seed an organization's history
# straight into it, as if its Durable Object had flushed it. Debits of one unit
# (0.0001 credit) spread evenly over the last 60 days, 6 features and 20
# members; seq 1 is left to the trial grant the organization's signup makes.
# usage_daily and replica_progress are filled exactly as replica.rs's flush
# would (ROLL_UP_USAGE, ADVANCE_PROGRESS), so the flush of that grant skips them.
USAGE_ORG=bench-usage
NOW_MS=$(date +%s%3N)
SPAN_MS=$((60 * 86400 * 1000))
SEED_START_MS=$((NOW_MS - SPAN_MS))
cat >"$WORK/seed.sql" <<SQL
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $SEED_ENTRIES)
INSERT INTO ledger_entries (org_id, seq, id, kind, amount_units, balance_after_units,
  created_at_ms, usage_day, feature, user_id)
SELECT '$USAGE_ORG', i + 1, printf('le_%012d', i + 1), 'debit', 1, 2000000 - i,
  $SEED_START_MS + i * $SPAN_MS / $SEED_ENTRIES,
  strftime('%Y-%m-%d', ($SEED_START_MS + i * $SPAN_MS / $SEED_ENTRIES) / 1000, 'unixepoch'),
  json_extract('["chat","auto_triage","error_analysis","incident_timeline","release_analysis","nl_alerts"]',
    '\$[' || (i % 6) || ']'),
  printf('user_%02d', (i / 6) % 20 + 1)
FROM n;
INSERT INTO usage_daily (org_id, day, feature, user_id, credits_units, entries)
SELECT org_id, usage_day, feature, coalesce(user_id, ''), sum(amount_units), count(*)
FROM ledger_entries WHERE org_id = '$USAGE_ORG' AND kind IN ('debit', 'capture')
GROUP BY usage_day, feature, user_id;
INSERT INTO replica_progress (org_id, flushed_seq) VALUES ('$USAGE_ORG', $((SEED_ENTRIES + 1)));
SQL
progress "seeding $SEED_ENTRIES ledger entries (60 days, 6 features, 20 members) into local D1"
wrangler_step "$WORK/seed.log" d1 execute DB --local --persist-to "$STATE" --file "$WORK/seed.sql"

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
PORT=$(free_port)
INSPECTOR_PORT=$(free_port) # 9229 may belong to someone's `make dev`
BASE="http://127.0.0.1:$PORT"

progress "starting wrangler dev on $BASE (BENCH_ROUTES enabled)"
START_NS=$(date +%s%N)
# setsid: wrangler, workerd and the build command get their own process group.
setsid wrangler dev --ip 127.0.0.1 --port "$PORT" --inspector-port "$INSPECTOR_PORT" \
  --persist-to "$STATE" --var BENCH_ROUTES:enabled --show-interactive-dev-session=false \
  </dev/null >"$WORK/wrangler-dev.log" 2>&1 &
DEV_PGID=$!
READY_MS=""
for ((i = 0; i < READY_TIMEOUT_S * 20; i++)); do
  if ! kill -0 "$DEV_PGID" 2>/dev/null; then
    echo "bench: wrangler dev exited before answering; last lines of its log:" >&2
    tail -n 20 "$WORK/wrangler-dev.log" >&2
    exit 1
  fi
  if curl -fsS --max-time 2 -o /dev/null "$BASE/healthz" 2>/dev/null; then
    READY_MS=$((($(date +%s%N) - START_NS) / 1000000))
    break
  fi
  sleep 0.05
done
[[ -n $READY_MS ]] || { echo "bench: wrangler dev did not answer /healthz within ${READY_TIMEOUT_S}s" >&2; exit 1; }
progress "first /healthz answered ${READY_MS} ms after starting wrangler dev"

node scripts/bench/run.mjs \
  --base "$BASE" --work "$WORK" --duration "$DURATION" --connections "$CONNECTIONS" \
  --smoke "$SMOKE" --startup-ms "$READY_MS" --dev-pgid "$DEV_PGID" --usage-org "$USAGE_ORG" \
  --seed-entries "$SEED_ENTRIES" --seed-start-ms "$SEED_START_MS" --wasm build/index_bg.wasm
