#!/usr/bin/env bash
# `make schemathesis` (part of `make test`): schemathesis 4.32.5 against the
# real worker under `wrangler dev`, over its own /openapi.json.
#
# Starts localstripe (scripts/stripe-emulator.py) and the worker, each on a
# free port in its own process group, killed at exit whatever happens; the
# worker gets a fresh --persist-to directory (migrations applied) and
# localstripe as its Stripe, so purchases reach a payment provider. Creates an organization (signup with a service token), mints a
# token for each role through /dev/token, and runs schemathesis once per
# role with the path parameter `org` set to that organization: every phase
# (examples, coverage, fuzzing, stateful), every check except
# positive_data_acceptance (a valid request may still be refused: no credits,
# daily cap, hold already closed), bounded by --max-examples and --max-time.
# Prints the totals (cases, failures, server errors) and exits non-zero on
# any failure or server error.
#
#   scripts/schemathesis.sh [--max-examples N] [--max-time SECONDS] [--roles owner,service] [--keep]
#
# schemathesis comes from .venv (scripts/setup.sh installs it); this script
# installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

MAX_EXAMPLES=25
MAX_TIME=40 # seconds per role; five roles stay under about four minutes
ROLES=owner,admin,member,viewer,service
KEEP=0
READY_TIMEOUT_S=120
WRANGLER_TIMEOUT_S=300
ST="$ROOT/.venv/bin/schemathesis"

while [[ $# -gt 0 ]]; do
  case $1 in
    --max-examples) MAX_EXAMPLES=$2; shift 2 ;;
    --max-time) MAX_TIME=$2; shift 2 ;;
    --roles) ROLES=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "schemathesis: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ $MAX_EXAMPLES =~ ^[1-9][0-9]*$ && $MAX_TIME =~ ^[1-9][0-9]*$ ]] ||
  { echo "schemathesis: --max-examples and --max-time must be positive integers" >&2; exit 2; }
[[ -x $ST ]] || { echo "schemathesis: $ST is missing; run scripts/setup.sh" >&2; exit 1; }
[[ -f build/index.js ]] || { echo "schemathesis: build/index.js is missing; run make worker" >&2; exit 1; }

# localstripe comes from the checkout's .venv when it has it, else the system Python.
PYTHON=python3
if [[ -x .venv/bin/python3 ]] && .venv/bin/python3 -c 'import localstripe' 2>/dev/null; then
  PYTHON=.venv/bin/python3
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ai-wallet-schemathesis.XXXXXX")
STATE=$WORK/state
DEV_PGID=""
STRIPE_PGID=""

stop_group() { # pgid
  [[ -n $1 ]] || return 0
  kill -TERM -- "-$1" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 -- "-$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$1" 2>/dev/null || true
}
cleanup() {
  local status=$?
  stop_group "$DEV_PGID"
  stop_group "$STRIPE_PGID"
  if [[ $status -eq 0 && $KEEP -eq 0 ]]; then
    rm -rf "$WORK"
  else
    echo "schemathesis: logs, reports and state kept in $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

echo "==> applying D1 migrations to every ledger shard of a fresh local state in $WORK"
# The shards are the bindings named by LEDGER_SHARDS in wrangler.toml.
for shard in $(sed -n 's/^LEDGER_SHARDS = "\(.*\)"/\1/p' wrangler.toml | head -1 | tr ',' ' '); do
  timeout -k 5 "$WRANGLER_TIMEOUT_S" wrangler d1 migrations apply "$shard" --local --persist-to "$STATE" \
    </dev/null >>"$WORK/migrate.log" 2>&1 || { tail -n 20 "$WORK/migrate.log" >&2; exit 1; }
done

PORT=$(free_port)
INSPECTOR_PORT=$(free_port)
STRIPE_PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
STRIPE_BASE="http://127.0.0.1:$STRIPE_PORT"

echo "==> starting localstripe on $STRIPE_BASE"
setsid "$PYTHON" scripts/stripe-emulator.py --port "$STRIPE_PORT" --from-scratch \
  </dev/null >"$WORK/localstripe.log" 2>&1 &
STRIPE_PGID=$!
for ((i = 0; i < 100; i++)); do
  curl -fsS --max-time 2 -o /dev/null -u sk_test_local_dev: "$STRIPE_BASE/v1/customers?limit=1" 2>/dev/null && break
  kill -0 "$STRIPE_PGID" 2>/dev/null || { tail -n 20 "$WORK/localstripe.log" >&2; exit 1; }
  sleep 0.1
done
# Its webhooks (signed with the development secret of .dev.vars) go to the worker.
curl -fsS --max-time 5 -o /dev/null -X POST "$STRIPE_BASE/_config/webhooks/ai-wallet" \
  -d "url=$BASE/stripe/webhook" -d "secret=whsec_local_dev"

echo "==> starting wrangler dev on $BASE"
# setsid: wrangler and workerd get their own process group, killed at exit.
setsid wrangler dev --ip 127.0.0.1 --port "$PORT" --inspector-port "$INSPECTOR_PORT" \
  --persist-to "$STATE" --var "STRIPE_API_BASE:$STRIPE_BASE" --show-interactive-dev-session=false \
  </dev/null >"$WORK/wrangler-dev.log" 2>&1 &
DEV_PGID=$!
ready=0
for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
  if ! kill -0 "$DEV_PGID" 2>/dev/null; then
    echo "schemathesis: wrangler dev exited; last lines of its log:" >&2
    tail -n 20 "$WORK/wrangler-dev.log" >&2
    exit 1
  fi
  if curl -fsS --max-time 2 -o /dev/null "$BASE/healthz" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[[ $ready == 1 ]] || { echo "schemathesis: wrangler dev did not answer within ${READY_TIMEOUT_S}s" >&2; exit 1; }

ORG="st-$(date +%s)-$$"
mint() { # role → token
  curl -fsS --max-time 10 -X POST "$BASE/dev/token" -H 'content-type: application/json' \
    -d "{\"org\":\"$ORG\",\"sub\":\"st_$1\",\"role\":\"$1\"}" |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).token));'
}
signup_status=$(curl -sS --max-time 10 -o "$WORK/signup.json" -w '%{http_code}' -X POST "$BASE/v1/orgs" \
  -H "authorization: Bearer $(mint service)" -H 'content-type: application/json' \
  -d "{\"org_id\":\"$ORG\",\"owner_id\":\"st_owner\"}")
[[ $signup_status == 201 ]] || { echo "schemathesis: signup answered $signup_status: $(cat "$WORK/signup.json")" >&2; exit 1; }
echo "==> organization $ORG created; running schemathesis per role (max $MAX_EXAMPLES examples, ${MAX_TIME}s each)"

# The path parameter `org` is the organization that exists, for every operation.
cat >"$WORK/schemathesis.toml" <<TOML
[parameters]
"path.org" = "$ORG"
TOML

IFS=, read -r -a roles <<<"$ROLES"
for role in "${roles[@]}"; do
  echo
  echo "==> role $role"
  status=0
  "$ST" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
    --url "$BASE" \
    --header "Authorization: Bearer $(mint "$role")" \
    --phases examples,coverage,fuzzing,stateful \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" \
    --workers 1 --request-timeout 30 --seed 20261201 \
    --suppress-health-check too_slow,filter_too_much \
    --no-color \
    --report junit --report-junit-path "$WORK/junit-$role.xml" \
    --report ndjson --report-ndjson-path "$WORK/events-$role.ndjson" \
    2>&1 | tee "$WORK/schemathesis-$role.log" || status=$?
  echo "$role $status" >>"$WORK/status"
done

# Totals from schemathesis' own event stream (one JSON object per line).
node - "$WORK" "${roles[@]}" <<'JS'
const fs = require('fs');
const [work, ...roles] = process.argv.slice(2);
let cases = 0, failures = 0, serverErrors = 0, errors = 0;
const statuses = Object.fromEntries(fs.readFileSync(`${work}/status`, 'utf8').trim().split('\n').map((l) => l.split(' ')));
for (const role of roles) {
  let c = 0, f = 0, s = 0, e = 0;
  for (const line of fs.readFileSync(`${work}/events-${role}.ndjson`, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const event = JSON.parse(line);
    const [[kind, body]] = Object.entries(event);
    if (kind === 'ScenarioFinished') {
      c += Object.keys(body.recorder?.cases ?? {}).length;
      for (const checks of Object.values(body.recorder?.checks ?? {})) {
        for (const check of checks) {
          if (check.status === 'failure' || check.status === 'error') {
            f += 1;
            if (check.name === 'not_a_server_error') s += 1;
          }
        }
      }
    }
    if (kind === 'NonFatalError') e += 1;
  }
  console.log(`role ${role.padEnd(8)} cases ${String(c).padStart(6)}  failures ${f}  server errors ${s}  errors ${e}  exit ${statuses[role]}`);
  cases += c; failures += f; serverErrors += s; errors += e;
}
console.log(`TOTAL cases ${cases}  failures ${failures}  server errors ${serverErrors}  errors ${errors}`);
console.log('(failures: failed checks; server errors: not_a_server_error failures)');
const ok = failures === 0 && serverErrors === 0 && errors === 0 && roles.every((r) => statuses[r] === '0');
process.exit(ok ? 0 : 1);
JS
