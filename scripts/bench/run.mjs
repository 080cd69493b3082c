// The scenarios of `make bench` against a running `wrangler dev` (started by
// scripts/bench.sh), and the one table they produce. Load comes from wrk with
// scripts/bench/wallet.lua; setup and the storage counters use plain fetch.
import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LUA = path.join(HERE, 'wallet.lua');
const DEV_SECRET = 'local-dev-jwt-secret';
const UNITS_PER_CREDIT = 10_000;
const AMOUNT_UNITS = 1; // every debit of wallet.lua is "0.0001" (priced ones too: 1 gpt-4o-mini token, rounded up)
const FEATURES = ['chat', 'auto_triage', 'error_analysis', 'incident_timeline', 'release_analysis', 'nl_alerts'];
const MULTI_ORGS = 64;
const BATCH_SIZES = [10, 100, 1000];
// With 16 connections a round of 1,000-debit batches takes 2-3 s here; wrk
// counts only completed requests, so batch scenarios run at least this long.
const MIN_BATCH_SECONDS = 3;

// Cloudflare list prices, USD per million, Workers Paid plan, beyond the
// included monthly amounts. Checked against Cloudflare's pricing pages:
// https://developers.cloudflare.com/durable-objects/platform/pricing/ and
// https://developers.cloudflare.com/d1/platform/pricing/ (their tables come from
// cloudflare-docs src/content/partials/durable-objects/durable-objects-pricing.mdx
// and partials/workers/d1-pricing.mdx), Workers requests from
// https://developers.cloudflare.com/workers/platform/pricing/ (as quoted by the
// Workflows pricing page, "identical to Workers Standard pricing"):
//   Durable Objects requests $0.15/M (HTTP requests, RPC sessions and alarm
//   invocations); SQLite-backed storage rows written $1.00/M, rows read
//   $0.001/M, each setAlarm() billed as one row written; D1 rows written
//   $1.00/M, rows read $0.001/M (an index adds a row written); Workers
//   requests $0.30/M (+ $0.02 per million CPU ms, not modelled here).
const PRICE = {
  workerRequest: 0.3,
  doRequest: 0.15,
  doRowWritten: 1.0,
  doRowRead: 0.001,
  d1RowWritten: 1.0,
  d1RowRead: 0.001,
};

// Targets printed as PASS/MISS (not assertions).
const TARGET = {
  singleVsFloorRps: 0.85,
  singleVsFloorP99: 1.25,
  multiVsFloorRps: 0.85,
  batch100VsSingle: 20,
  usageP99Ms: 50,
  doRowsPerDebit: 3,
  pricedVsPlainCpu: 1.05,
  d1RowsPerDebit: 0.05,
  wasmGzipKiB: 500,
  // SPEC §11: bytes per entry within the idempotency retention and after it.
  entryBytesLive: 500,
  entryBytesPruned: 250,
};

// ---------------------------------------------------------------------------
// Arguments

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const BASE = args.base;
const WORK = args.work;
const DURATION = args.duration;
const CONNECTIONS = Number(args.connections);
const THREADS = Math.min(2, CONNECTIONS); // as the figures in TOOLCHAIN.md (wrk -t2)
const SMOKE = args.smoke === '1';
const USAGE_ORG = args['usage-org'];
const SHARDS = args.shards.split(',');
const MANY_ORGS = Number(args['many-orgs']);
const LEDGER_ENTRIES = Number(args['ledger-entries']);
const STATE = path.join(WORK, 'state');
const RUN_ID = `r${Date.now().toString(36)}`;

function seconds(duration) {
  const m = /^(\d+)([smh]?)$/.exec(duration);
  return Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600 }[m[2]];
}

// Progress times count from the start of scripts/bench.sh.
const started = Number(process.env.BENCH_BEGIN_MS) || Date.now();
function progress(message) {
  process.stderr.write(`[bench ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}\n`);
}

// ---------------------------------------------------------------------------
// HTTP

const b64url = (data) => Buffer.from(data).toString('base64url');

function token(org, role, sub = `bench_${role}`) {
  const claims = { sub, org, role, exp: Math.floor(Date.now() / 1000) + 6 * 3600 };
  const unsigned = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${unsigned}.${crypto.createHmac('sha256', DEV_SECRET).update(unsigned).digest('base64url')}`;
}

async function api(method, urlPath, { auth, body, headers = {} } = {}) {
  const res = await fetch(`${BASE}${urlPath}`, {
    method,
    headers: {
      ...(auth ? { authorization: `Bearer ${auth}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers,
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON; callers look at the status
  }
  return { status: res.status, json, text };
}

async function expectStatus(what, promise, ...statuses) {
  const res = await promise;
  if (!statuses.includes(res.status)) throw new Error(`${what}: HTTP ${res.status} ${res.text.slice(0, 300)}`);
  return res;
}

/** Runs `fn` over `items` with at most `limit` in flight; results in order. */
async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]);
      }
    }),
  );
  return results;
}

async function signup(org, devNow) {
  await expectStatus(
    `signup ${org}`,
    api('POST', '/v1/orgs', {
      auth: token(org, 'service'),
      body: { org_id: org, owner_id: `owner_${org}` },
      headers: devNow ? { 'x-dev-now': devNow } : {},
    }),
    201,
  );
}

async function createOrg(org, devNow, capDevNow) {
  await signup(org, devNow);
  // The largest cap, so no scenario meets the daily cap (the trial's 200
  // credits are 2,000,000 debits of 0.0001).
  await expectStatus(
    `daily cap ${org}`,
    api('PUT', `/v1/orgs/${org}/daily-cap`, {
      auth: token(org, 'owner', `owner_${org}`),
      body: { daily_cap: '50000' },
      headers: capDevNow ? { 'x-dev-now': capDevNow } : {},
    }),
    200,
  );
}

function units(amount) {
  const m = /^(\d+)(?:\.(\d{1,4}))?$/.exec(amount);
  if (!m) throw new Error(`not a credit amount: ${amount}`);
  return Number(m[1]) * UNITS_PER_CREDIT + Number((m[2] ?? '').padEnd(4, '0'));
}

async function balanceUnits(org) {
  const res = await expectStatus(`wallet ${org}`, api('GET', `/v1/orgs/${org}/wallet`, { auth: token(org, 'service') }), 200);
  return units(res.json.balance);
}

async function storage(org) {
  const res = await expectStatus(`storage counters ${org}`, api('GET', `/bench/storage/${org}`), 200);
  return res.json;
}

/**
 * Storage counters of `orgs` once their replica flushes have settled: no
 * organization has entries waiting for its shard (`pending`, from the Durable
 * Object itself: the ledger route is exact, so it no longer tells), then every
 * counter is unchanged over two polls 300 ms apart (requests wrk left in
 * flight when it stopped may still be landing). Polling also keeps the
 * objects busy, so the runtime does not evict them (and their in-memory
 * counters) meanwhile.
 */
async function settled(orgs, timeoutMs = 30_000 + orgs.length * 30) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  let stable = 0;
  for (;;) {
    const now = await pool(orgs, 16, (org) => storage(org));
    const waiting = orgs.filter((_, i) => now[i].pending);
    if (waiting.length === 0 && last && JSON.stringify(now) === JSON.stringify(last)) {
      if (++stable >= 2) return now;
    } else {
      stable = 0;
    }
    if (Date.now() > deadline) {
      progress(
        `warning: replication has not settled after ${timeoutMs / 1000} s (${waiting.length} of ${orgs.length} ` +
          `organizations still pending, e.g. ${waiting[0]}: ${JSON.stringify(now[orgs.indexOf(waiting[0])] ?? now[0])})`,
      );
      problems.push(`replication did not settle for ${waiting.length || 'some'} organizations`);
      return now;
    }
    last = now;
    await sleep(waiting.length ? 200 : 300);
  }
}

const settledStorage = async (org) => (await settled([org]))[0];

// ---------------------------------------------------------------------------
// wrk

function writeOrgsFile(name, orgs, role = 'service') {
  const file = path.join(WORK, `orgs-${name}.txt`);
  fs.writeFileSync(file, orgs.map((org) => `${org} ${token(org, role)}\n`).join(''));
  return file;
}

// CPU time of wrangler dev's process group (wrangler, its proxy and the
// workerd runtime; not wrk): CPU per request is far steadier than requests
// per second on a machine whose cores other work shares.
const DEV_PGID = Number(args['dev-pgid']);
const CLK_TCK = Number(execFileSyncText('getconf', ['CLK_TCK'])) || 100;

function devCpuMs() {
  let ticks = 0;
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // Fields after "(comm)": state ppid pgrp ... utime(12th) stime(13th).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === DEV_PGID) ticks += Number(fields[11]) + Number(fields[12]);
  }
  return (ticks * 1000) / CLK_TCK;
}

let wrkRuns = 0;
const TAIL_MS = 2_500;

/** One wrk run; resolves to its figures (rates per second, latencies in ms). */
function wrk({
  label, mode, orgsFile, arg = '', duration = DURATION, connections = CONNECTIONS, settle = [], tail = true, onStop = () => {},
}) {
  const threads = Math.min(THREADS, connections);
  const log = path.join(WORK, `wrk-${String(++wrkRuns).padStart(2, '0')}-${mode}.log`);
  const argv = [
    '-t', String(threads), '-c', String(connections), '-d', duration, '--timeout', '30s',
    '-s', LUA, BASE, '--', mode, orgsFile, `${RUN_ID}${wrkRuns}`, arg,
  ];
  progress(`${label}: wrk -t${threads} -c${connections} -d${duration}`);
  const cpuBefore = devCpuMs();
  const run = new Promise((resolve, reject) => {
    execFile(
      'wrk',
      argv,
      { env: { ...process.env, BENCH_MODE: mode }, timeout: (seconds(duration) + 60) * 1000, killSignal: 'SIGKILL', maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        onStop();
        fs.writeFileSync(log, `wrk ${argv.join(' ')}\n${stdout}${stderr}`);
        const line = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '));
        if (err || !line) return reject(new Error(`wrk failed (${err?.message ?? 'no result line'}); see ${log}`));
        const r = JSON.parse(line.slice('BENCH_JSON '.length));
        const secs = r.duration_us / 1e6;
        const errors = r.errors_connect + r.errors_read + r.errors_write + r.errors_status + r.errors_timeout;
        resolve({
          label,
          requests: r.requests,
          rps: r.requests / secs,
          itemsPerSec: r.ok_items / secs,
          okItems: r.ok_items,
          badItems: r.bad_items,
          p50: r.p50_us / 1000,
          p99: r.p99_us / 1000,
          errors,
          statusErrors: r.errors_status,
          log,
        });
      },
    );
  });
  // Work the requests caused after wrk stopped (requests still in flight, the
  // replica flush, whose alarm comes up to 2 s later) belongs to them: for
  // scenarios that write, CPU is counted until TAIL_MS after wrk stopped
  // (except for the warm-up, whose CPU is not reported).
  // Then their organizations' ledgers must catch up (polling, not counted),
  // which also leaves the next scenario a quiet machine.
  return run.then(async (result) => {
    if (settle.length && tail) await sleep(TAIL_MS);
    const cpuMs = devCpuMs() - cpuBefore;
    const counters = settle.length ? await settled(settle) : [];
    return {
      ...result,
      settled: counters,
      cpuPerRequest: cpuMs / Math.max(1, result.requests),
      cpuPerItem: cpuMs / Math.max(1, result.okItems),
    };
  });
}

// ---------------------------------------------------------------------------
// Scenarios

const problems = []; // error responses seen; fatal in smoke mode

function check(result, expectItems = false) {
  const failed = result.errors + (expectItems ? result.badItems : 0);
  if (failed > 0) problems.push(`${result.label}: ${failed} failed requests or items (see ${result.log})`);
  if (result.requests - result.errors <= 0 || (expectItems && result.okItems <= 0)) {
    throw new Error(`${result.label}: no successful request; see ${result.log}`);
  }
  return result;
}

// ---------------------------------------------------------------------------
// Many organizations, a few debits each

const sumOf = (xs, f) => xs.reduce((total, x) => total + f(x), 0);

function percentiles(ms) {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
  return { n: sorted.length, p50: at(50), p99: at(99), max: sorted[sorted.length - 1] ?? NaN };
}

/**
 * MANY_ORGS organizations signed up through the API, then one wrk run of
 * single debits over all of them (each connection moves to the next
 * organization on every request): a few debits per organization, so nearly
 * every flush carries one or two debits. D1 work is summed over the
 * organizations' counters and grouped by the shard each one was assigned.
 */
async function manyOrgs() {
  const orgs = Array.from({ length: MANY_ORGS }, (_, i) => `bench-o${String(i).padStart(5, '0')}`);
  progress(`many organizations: signing up ${f0(MANY_ORGS)} organizations through the API`);
  const t0 = performance.now();
  await pool(orgs, 16, (org) => signup(org));
  const signupSecs = (performance.now() - t0) / 1000;
  const before = await settled(orgs);
  const balancesBefore = await pool(orgs, 16, (org) => balanceUnits(org));
  const run = check(
    await wrk({ label: `debits, ${f0(MANY_ORGS)} orgs`, mode: 'debit', orgsFile: writeOrgsFile('many', orgs), settle: orgs }),
  );
  const balancesAfter = await pool(orgs, 16, (org) => balanceUnits(org));

  const perShard = Object.fromEntries(SHARDS.map((name) => [name, { orgs: 0, batches: 0, d1Rows: 0 }]));
  const total = { debits: 0, doRows: 0, d1Rows: 0, batches: 0 };
  let replaced = 0;
  orgs.forEach((org, i) => {
    const [b, a] = [before[i], run.settled[i]];
    const delta = {
      debits: (balancesBefore[i] - balancesAfter[i]) / AMOUNT_UNITS,
      doRows: a.do_rows_written - b.do_rows_written,
      d1Rows: a.d1_rows_written - b.d1_rows_written,
      batches: a.d1_batches - b.d1_batches,
    };
    // The counters live in the instance's memory: an organization whose
    // object the runtime replaced (idle too long) is left out of the sums.
    // Each debit commits rows, so fewer DO rows than debits means a reset.
    if (delta.doRows < delta.debits || delta.d1Rows < 0 || delta.batches < 0) {
      replaced++;
      return;
    }
    const shard = (perShard[a.ledger_shard] ??= { orgs: 0, batches: 0, d1Rows: 0 });
    shard.orgs++;
    shard.batches += delta.batches;
    shard.d1Rows += delta.d1Rows;
    for (const k of Object.keys(total)) total[k] += delta[k];
  });
  if (replaced) progress(`many organizations: ${replaced} left out (their object was replaced, counters restarted)`);
  return { run, signupSecs, ...total, counted: MANY_ORGS - replaced, perShard, loadSecs: seconds(DURATION) };
}

// ---------------------------------------------------------------------------
// The event receiver (the worker's EVENTS_WEBHOOK_URL)

/**
 * Whether `header` (`t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">`) signs
 * `body` under `secret` within `toleranceSeconds`: the check of
 * tests/e2e/event-receiver.mjs, repeated here because that module registers
 * node:test hooks when imported.
 */
function verifySignature(header, body, secret, toleranceSeconds = 300) {
  const parts = Object.fromEntries(String(header ?? '').split(',').map((p) => p.split('=', 2)));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || Math.abs(Date.now() / 1000 - t) > toleranceSeconds || !parts.v1) return false;
  const expected = crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  return parts.v1.length === expected.length && crypto.timingSafeEqual(Buffer.from(parts.v1), Buffer.from(expected));
}

/**
 * Listens on 127.0.0.1:port: answers 200 to a correctly signed event (400
 * otherwise, so the worker retries it) and remembers every accepted event by
 * id. The worker delivers at least once: an id accepted again is counted, not
 * kept twice.
 */
async function startReceiver(port, secret) {
  const accepted = new Map(); // event id -> event, in the order first accepted
  const stats = { requests: 0, refused: 0, again: 0 };
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    stats.requests++;
    let event = null;
    try {
      event = JSON.parse(body);
    } catch {
      // refused below
    }
    const ok = req.method === 'POST' && verifySignature(req.headers['wallet-signature'], body, secret) && typeof event?.id === 'string';
    if (!ok) stats.refused++;
    else if (accepted.has(event.id)) stats.again++;
    else accepted.set(event.id, event);
    res.writeHead(ok ? 200 : 400, { 'content-type': 'application/json' });
    res.end(ok ? '{"received":true}' : '{"error":"bad signature or body"}');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    stats,
    acceptedOf: (org) => [...accepted.values()].filter((e) => e.org_id === org),
    total: () => accepted.size,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

const ownerOf = (org) => token(org, 'owner', `owner_${org}`);

/** Every event of `org` as GET …/events lists it, oldest first. */
async function eventsOf(org) {
  const out = [];
  let after = null;
  for (let page = 0; page < 1000; page++) {
    const q = new URLSearchParams({ limit: '100', ...(after ? { starting_after: after } : {}) });
    const res = await expectStatus(`events ${org}`, api('GET', `/v1/orgs/${org}/events?${q}`, { auth: ownerOf(org) }), 200);
    out.push(...res.json.data);
    if (!res.json.has_more || res.json.data.length === 0) return out.reverse();
    after = res.json.data.at(-1).id;
  }
  throw new Error(`events of ${org}: pagination did not end`);
}

/**
 * Waits (bounded) until the receiver has accepted every event `orgs` have
 * recorded, and their objects count them delivered. Answers the last look:
 * per organization, the events recorded and accepted.
 */
async function eventsDelivered(orgs, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const looks = await pool(orgs, 8, async (org) => {
      const recorded = await eventsOf(org);
      const accepted = new Set(receiver.acceptedOf(org).map((e) => e.id));
      const missing = recorded.filter((e) => !accepted.has(e.id) || e.delivery?.status !== 'delivered');
      return { org, recorded, accepted: accepted.size, missing };
    });
    const behind = looks.filter((l) => l.missing.length);
    if (behind.length === 0 || Date.now() > deadline) return { looks, behind };
    await sleep(250);
  }
}

// ---------------------------------------------------------------------------
// Debits of one organization with auto top-up, a low-balance alert and events

const AUTO_ORG = 'bench-auto';
const STRIPE_KEY = 'sk_test_local_dev'; // .dev.vars: any sk_test_ key works with localstripe

const creditsText = (u) => `${Math.floor(u / UNITS_PER_CREDIT)}.${String(u % UNITS_PER_CREDIT).padStart(4, '0')}`;

/** The organization, created with the others: the trial grant, the cap, a card on file. */
async function createAutoOrg() {
  await createOrg(AUTO_ORG);
  await expectStatus(
    `card on file ${AUTO_ORG}`,
    api('POST', `/dev/orgs/${AUTO_ORG}/payment-method`, { body: { payment_method: 'pm_card_visa' } }),
    200,
  );
}

/** Every PaymentIntent at localstripe whose metadata names `org`. */
async function paymentIntentsOf(org) {
  const found = [];
  let after = null;
  for (let page = 0; page < 1000; page++) {
    const q = new URLSearchParams({ limit: '100', ...(after ? { starting_after: after } : {}) });
    const res = await fetch(`${args['stripe-base']}/v1/payment_intents?${q}`, {
      headers: { authorization: `Bearer ${STRIPE_KEY}` },
      signal: AbortSignal.timeout(30_000),
    });
    const json = await res.json();
    if (res.status !== 200) throw new Error(`localstripe payment_intents: HTTP ${res.status} ${JSON.stringify(json).slice(0, 300)}`);
    found.push(...json.data.filter((pi) => pi.metadata?.org_id === org));
    if (!json.has_more || json.data.length === 0) return found;
    after = json.data.at(-1).id;
  }
  throw new Error('localstripe: PaymentIntent pagination did not end');
}

/** Purchases in the organization's ledger (exact, from its Durable Object). */
async function ledgerPurchases(org) {
  const out = [];
  let after = null;
  for (let page = 0; page < 10_000; page++) {
    const q = new URLSearchParams({ limit: '100', ...(after ? { starting_after: after } : {}) });
    const res = await expectStatus(`ledger ${org}`, api('GET', `/v1/orgs/${org}/ledger?${q}`, { auth: ownerOf(org) }), 200);
    out.push(...res.json.data.filter((e) => e.kind === 'purchase'));
    if (!res.json.has_more || res.json.data.length === 0) return out;
    after = res.json.data.at(-1).id;
  }
  throw new Error(`ledger of ${org}: pagination did not end`);
}

/**
 * The wrk debit load of "debits, 1 org" against AUTO_ORG, whose thresholds sit
 * just below its balance: the low-balance alert after about a tenth of the
 * debits the plain run made, auto top-up (the starter pack, 1,000 credits)
 * after about a fifth, so the crossings, the charge at localstripe and the
 * events' delivery all happen under load. Then: the storage counters as for
 * the plain run, the top-ups credited against localstripe's PaymentIntents,
 * the events recorded against those the receiver accepted.
 */
async function autoTopUpDebits(plainDebits, orgsFile) {
  const owner = ownerOf(AUTO_ORG);
  const startUnits = await balanceUnits(AUTO_ORG);
  const gap = Math.max(10, Math.round((plainDebits * AMOUNT_UNITS) / 5));
  const threshold = creditsText(startUnits - gap);
  const alertThreshold = creditsText(startUnits - Math.round(gap / 2));
  await expectStatus(
    'alerts',
    api('PUT', `/v1/orgs/${AUTO_ORG}/alerts`, { auth: owner, body: { low_balance_threshold: alertThreshold } }),
    200,
  );
  await expectStatus(
    'auto top-up',
    api('PUT', `/v1/orgs/${AUTO_ORG}/auto-top-up`, {
      auth: owner,
      body: { enabled: true, threshold, pack_id: 'starter', monthly_limit: 100 },
    }),
    200,
  );
  // The settings' own events reach the receiver before the run.
  await eventsDelivered([AUTO_ORG]);
  const eventsBefore = (await eventsOf(AUTO_ORG)).length;
  const before = await settledStorage(AUTO_ORG);
  const balanceBefore = await balanceUnits(AUTO_ORG);
  progress(`auto top-up: balance ${creditsText(balanceBefore)}, alert below ${alertThreshold}, top-up below ${threshold}`);
  const run = check(
    await wrk({ label: 'debits, 1 org, auto top-up + alert + events', mode: 'debit', orgsFile, settle: [AUTO_ORG] }),
  );

  // A charge or a delivery may still be under way: wait for both (bounded).
  const deadline = Date.now() + 30_000;
  let state;
  for (;;) {
    state = (await expectStatus('auto top-up state', api('GET', `/v1/orgs/${AUTO_ORG}/auto-top-up`, { auth: owner }), 200)).json;
    if (!state.in_flight || Date.now() > deadline) break;
    await sleep(200);
  }
  if (state.in_flight) problems.push(`auto top-up: purchase ${state.in_flight_purchase_id} still in flight 30 s after the run`);
  const delivery = await eventsDelivered([AUTO_ORG]);
  const after = await settledStorage(AUTO_ORG);
  const balanceAfter = await balanceUnits(AUTO_ORG);

  const purchases = (await ledgerPurchases(AUTO_ORG)).filter((e) => e.source === 'auto_top_up');
  const creditedUnits = sumOf(purchases, (e) => units(e.amount));
  const intents = await paymentIntentsOf(AUTO_ORG);
  const recorded = delivery.looks[0].recorded;
  const accepted = delivery.looks[0].accepted;
  const during = recorded.slice(eventsBefore);
  const debits = (balanceBefore - balanceAfter + creditedUnits) / AMOUNT_UNITS;

  const doRows = after.do_rows_written - before.do_rows_written;
  const d1Rows = after.d1_rows_written - before.d1_rows_written;
  const alarms = after.d1_batches - before.d1_batches;
  if (doRows < 0 || d1Rows < 0) {
    problems.push('auto top-up: a storage counter went backwards (the Durable Object instance was replaced mid-measurement)');
  }
  if (purchases.length === 0) problems.push('auto top-up: no top-up was credited during the run');
  if (purchases.length !== intents.length) {
    problems.push(`auto top-up: ${purchases.length} top-ups credited but ${intents.length} PaymentIntents at localstripe`);
  }
  if (new Set(purchases.map((e) => e.payment_intent_id)).size !== purchases.length) {
    problems.push('auto top-up: one PaymentIntent was credited twice');
  }
  if (state.used_this_month !== purchases.length) {
    problems.push(`auto top-up: used_this_month ${state.used_this_month}, ${purchases.length} top-ups in the ledger`);
  }
  if (delivery.behind.length || accepted !== recorded.length) {
    problems.push(`events: ${recorded.length} recorded, ${accepted} accepted by the receiver within 30 s`);
  }
  const types = {};
  for (const e of during) types[e.type] = (types[e.type] ?? 0) + 1;
  progress(
    `auto top-up: ${purchases.length} credited, ${intents.length} PaymentIntents; events ${recorded.length} recorded ` +
      `(${during.length} during the run: ${JSON.stringify(types)}), ${accepted} accepted`,
  );
  return {
    run,
    startUnits,
    threshold,
    alertThreshold,
    storage: { debits, doRows: doRows / debits, d1Rows: d1Rows / debits, alarms: alarms / debits, d1RowsPerFlush: d1Rows / alarms },
    credited: purchases.length,
    creditedUnits,
    intents: intents.length,
    intentsSucceeded: intents.filter((pi) => pi.status === 'succeeded').length,
    usedThisMonth: state.used_this_month,
    recorded: recorded.length,
    during: during.length,
    types,
    accepted,
  };
}

// ---------------------------------------------------------------------------
// One organization with a long ledger

const LEDGER_ORG = 'bench-ledger';
// The seeded history spans the last 20 hours: under the 24 h idempotency
// retention, so no pruning runs during the scenario, and wide enough for
// hour-long from/to ranges.
const LEDGER_SPAN_MS = 20 * 3600 * 1000;
const RANGES = 20;
const PAGES_PER_RANGE = 5;
const iso = (ms) => new Date(ms).toISOString();

/** LEDGER_ENTRIES debits through POST /debits/batch (1,000 per request), dated over the span. */
async function seedLedger() {
  const startMs = Date.now() - LEDGER_SPAN_MS - 60_000;
  return seedDebits(LEDGER_ORG, LEDGER_ENTRIES, startMs, LEDGER_SPAN_MS);
}

/** `count` debits into a new organization `org`, dated from startMs over spanMs. */
async function seedDebits(org, count, startMs, spanMs) {
  await createOrg(org, iso(startMs), iso(startMs));
  await eventsDelivered([org]); // its daily cap's settings.changed, before the seeding
  const service = token(org, 'service');
  const batches = Array.from({ length: Math.ceil(count / 1000) }, (_, b) => b);
  progress(`ledger: ${f0(count)} debits into ${org} through ${batches.length} batch requests`);
  let done = 0;
  const marks = []; // [debits done, ms since the start], as batches complete
  const t0 = performance.now();
  let failed = 0;
  // Two requests in flight: the Worker parses one while the object applies the other.
  await pool(batches, 2, async (b) => {
    const debits = Array.from({ length: Math.min(1000, count - b * 1000) }, (_, j) => {
      const k = b * 1000 + j;
      // A typical AI call's record: who, which project, the model and tokens, a trace id.
      return {
        idempotency_key: `${RUN_ID}-${org}-${k}`,
        feature: FEATURES[k % FEATURES.length],
        amount: '0.0001',
        user_id: `user_${(k % 20) + 1}`,
        project_id: `proj_${(k % 5) + 1}`,
        metadata: {
          model: 'gpt-4o-mini',
          input_tokens: String(800 + (k % 400)),
          output_tokens: String(100 + (k % 300)),
          trace_id: crypto.randomBytes(8).toString('hex'),
        },
      };
    });
    const res = await expectStatus(
      'ledger seed batch',
      api('POST', `/v1/orgs/${org}/debits/batch`, {
        auth: service,
        body: { debits },
        headers: { 'x-dev-now': iso(startMs + 60_000 + Math.floor((b * spanMs) / batches.length)) },
      }),
      200,
    );
    failed += debits.length - (res.text.match(/"status":201/g) ?? []).length;
    done += debits.length;
    marks.push([done, performance.now() - t0]);
  });
  const secs = (performance.now() - t0) / 1000;
  if (failed) problems.push(`ledger seed of ${org}: ${failed} batch items failed`);
  await settledStorage(org);
  return { startMs, debitsPerSec: count / secs, secs, marks };
}

async function ledgerPage(owner, query, org = LEDGER_ORG) {
  const t = performance.now();
  const res = await fetch(`${BASE}/v1/orgs/${org}/ledger?${query}`, {
    headers: { authorization: `Bearer ${owner}` },
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  const ms = performance.now() - t;
  if (res.status !== 200) throw new Error(`GET ledger?${query}: HTTP ${res.status} ${text.slice(0, 300)}`);
  const json = JSON.parse(text);
  return { ms, data: json.data, hasMore: json.has_more };
}

/** Follows the cursor from the newest entry; stops at the end, after maxPages, or when stop.done. */
async function walk(owner, query, { maxPages = Infinity, stop = null, ms = [], org = LEDGER_ORG, after = null } = {}) {
  let entries = 0;
  for (let pages = 0; pages < maxPages && !stop?.done; pages++) {
    const page = await ledgerPage(owner, after ? `${query}&starting_after=${after}` : query, org);
    ms.push(page.ms);
    entries += page.data.length;
    if (!page.hasMore || page.data.length === 0) break;
    after = page.data[page.data.length - 1].id;
  }
  return { ms, entries };
}

async function ledgerReads(seed) {
  const owner = token(LEDGER_ORG, 'owner', `owner_${LEDGER_ORG}`);
  await walk(owner, 'limit=100', { maxPages: 5 }); // warm-up, not measured
  progress(`ledger: walking every page of ${LEDGER_ORG} (limit=100)`);
  const t0 = performance.now();
  const full = await walk(owner, 'limit=100');
  const fullSecs = (performance.now() - t0) / 1000;
  // Every seeded debit plus the trial grant.
  if (full.entries !== LEDGER_ENTRIES + 1) {
    problems.push(`ledger walk saw ${full.entries} entries, expected ${LEDGER_ENTRIES + 1}`);
  }
  progress(`ledger: ${RANGES} one-hour from/to ranges, up to ${PAGES_PER_RANGE} pages each`);
  const rangeMs = [];
  let rangeEntries = 0;
  for (let r = 0; r < RANGES; r++) {
    const from = seed.startMs + 60_000 + Math.floor(((r + 0.5) * (LEDGER_SPAN_MS - 3_600_000)) / RANGES);
    const q = `limit=100&from=${encodeURIComponent(iso(from))}&to=${encodeURIComponent(iso(from + 3_600_000))}`;
    rangeEntries += (await walk(owner, q, { maxPages: PAGES_PER_RANGE, ms: rangeMs })).entries;
  }
  progress('ledger: the whole history as ?format=csv');
  const t1 = performance.now();
  const res = await fetch(`${BASE}/v1/orgs/${LEDGER_ORG}/ledger?format=csv`, {
    headers: { authorization: `Bearer ${owner}` },
    signal: AbortSignal.timeout(300_000),
  });
  const csv = await res.text();
  const csvSecs = (performance.now() - t1) / 1000;
  if (res.status !== 200) problems.push(`ledger csv: HTTP ${res.status}`);
  const csvRows = csv.split('\r\n').filter(Boolean).length - 1;
  if (csvRows !== LEDGER_ENTRIES + 1) problems.push(`ledger csv has ${csvRows} rows, expected ${LEDGER_ENTRIES + 1}`);
  return {
    full: { ...percentiles(full.ms), entries: full.entries, secs: fullSecs },
    ranges: { ...percentiles(rangeMs), entries: rangeEntries },
    csv: { secs: csvSecs, bytes: Buffer.byteLength(csv), rows: csvRows },
  };
}

/**
 * Debits/s of the long-ledger organization alone, then while one client
 * walks its ledger page after page (from the top again when it reaches the
 * end), then alone again: the ratio compares the paging run with the mean of
 * the two runs around it, so drift of a shared machine largely cancels.
 */
async function debitsWhilePaging() {
  const file = writeOrgsFile('ledger', [LEDGER_ORG]);
  const owner = token(LEDGER_ORG, 'owner', `owner_${LEDGER_ORG}`);
  const label = `debits, 1 org of ${f0(LEDGER_ENTRIES)} entries`;
  const before = check(await wrk({ label: `${label}, alone`, mode: 'debit', orgsFile: file, settle: [LEDGER_ORG] }));
  const stop = { done: false };
  const pageMs = [];
  const paging = (async () => {
    const t = performance.now();
    while (!stop.done) await walk(owner, 'limit=100', { stop, ms: pageMs });
    return (performance.now() - t) / 1000;
  })();
  const during = check(
    await wrk({
      label: `${label}, while a client pages its ledger`,
      mode: 'debit',
      orgsFile: file,
      settle: [LEDGER_ORG],
      onStop: () => {
        stop.done = true;
      },
    }),
  );
  const pagingSecs = await paging;
  const after = check(await wrk({ label: `${label}, alone again`, mode: 'debit', orgsFile: file, settle: [LEDGER_ORG] }));
  return { before, during, after, pages: { ...percentiles(pageMs), perSec: pageMs.length / pagingSecs } };
}

// ---------------------------------------------------------------------------
// One organization far past its live window: the ledger archive (SPEC §11)

const ARCHIVE_ORG = 'bench-archive';
const ARCHIVE_ENTRIES = Number(args['archive-entries']); // the trial grant included
const ARCHIVE_LIVE = Number(args['archive-live']); // the worker's LEDGER_LIVE_ENTRIES
const ARCHIVE_SEGMENT = Number(args['archive-segment']); // its LEDGER_SEGMENT_ENTRIES
// Its history spans days 30 to 2 ago: past the 24 h idempotency retention, as
// an organization's old history is, so records are pruned and the object
// keeps only the live window.
const ARCHIVE_SPAN_MS = 28 * 86_400_000;
const ARCHIVE_POSITIONS = 20;
// List prices, $ per GB-month: Durable Object SQLite storage, R2 Standard.
const DO_GB_MONTH = 0.2;
const R2_GB_MONTH = 0.015;

async function ledgerStorage(org) {
  const owner = token(org, 'owner', `owner_${org}`);
  return (await expectStatus(`ledger storage ${org}`, api('GET', `/v1/orgs/${org}/ledger/storage`, { auth: owner }), 200)).json;
}

/** Every checkpoint of org's archive (GET …/ledger/segments, 100 per page). */
async function segmentsOf(org) {
  const owner = token(org, 'owner', `owner_${org}`);
  const out = [];
  for (let after = null; ;) {
    const q = `limit=100${after ? `&starting_after=${after}` : ''}`;
    const page = (await expectStatus('ledger segments', api('GET', `/v1/orgs/${org}/ledger/segments?${q}`, { auth: owner }), 200)).json;
    out.push(...page.data);
    if (!page.has_more || page.data.length === 0) return out;
    after = page.data[page.data.length - 1].id;
  }
}

/** Polls the organization's storage until the alarm has sealed all it should (live entries within the window). */
async function archiveCaughtUp(org, timeoutMs) {
  const t0 = performance.now();
  for (;;) {
    const s = await ledgerStorage(org);
    if (s.live_entries <= ARCHIVE_LIVE) return { ...s, waitSecs: (performance.now() - t0) / 1000 };
    if (performance.now() - t0 > timeoutMs) {
      problems.push(`archive of ${org}: still ${s.live_entries} live entries after ${timeoutMs / 1000} s`);
      return { ...s, waitSecs: (performance.now() - t0) / 1000 };
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Pages (limit=100) walked from evenly spread positions in seq range (low, high], PAGES_PER_RANGE from each. */
async function pagesFrom(org, low, high) {
  const owner = token(org, 'owner', `owner_${org}`);
  const ms = [];
  for (let i = 0; i < ARCHIVE_POSITIONS; i++) {
    const seq = low + Math.floor(((i + 0.5) * (high - low)) / ARCHIVE_POSITIONS) + 1;
    await walk(owner, 'limit=100', { maxPages: PAGES_PER_RANGE, ms, org, after: `le_${String(seq).padStart(12, '0')}` });
  }
  return percentiles(ms);
}

async function archiveScenario() {
  const startMs = Date.now() - ARCHIVE_SPAN_MS - 2 * 86_400_000;
  const seed = await seedDebits(ARCHIVE_ORG, ARCHIVE_ENTRIES - 1, startMs, ARCHIVE_SPAN_MS);
  // Side by side in the same stream: until the live window is full no
  // segment can be due; after it the alarm seals while the seeding goes on.
  const [windowDone, windowMs] = seed.marks.findLast(([n]) => n < ARCHIVE_LIVE) ?? [0, 0];
  const [allDone, allMs] = seed.marks[seed.marks.length - 1];
  seed.withoutArchiving = windowDone / (windowMs / 1000);
  seed.withArchiving = (allDone - windowDone) / ((allMs - windowMs) / 1000);
  progress(`archive: waiting for ${ARCHIVE_ORG}'s alarm to seal what is past ${f0(ARCHIVE_LIVE)} live entries`);
  const caught = await archiveCaughtUp(ARCHIVE_ORG, SMOKE ? 120_000 : 600_000);
  const segments = await segmentsOf(ARCHIVE_ORG);
  const archived = segments.reduce((n, c) => n + c.entries, 0);
  const archivedBytes = segments.reduce((n, c) => n + c.bytes, 0);
  const file = await doSizes(ARCHIVE_ORG);
  const archivedThrough = segments.length ? segments[segments.length - 1].last_seq : 0;
  progress(`archive: ${ARCHIVE_POSITIONS} positions x ${PAGES_PER_RANGE} pages in the live entries, then in the archived ones`);
  const live = await pagesFrom(ARCHIVE_ORG, archivedThrough, ARCHIVE_ENTRIES);
  const sealed = await pagesFrom(ARCHIVE_ORG, 0, archivedThrough);
  progress(`archive: the whole history of ${f0(ARCHIVE_ENTRIES)} entries as ?format=csv`);
  const t1 = performance.now();
  const res = await fetch(`${BASE}/v1/orgs/${ARCHIVE_ORG}/ledger?format=csv`, {
    headers: { authorization: `Bearer ${token(ARCHIVE_ORG, 'owner', `owner_${ARCHIVE_ORG}`)}` },
    signal: AbortSignal.timeout(900_000),
  });
  let csvRows = -1; // the header
  const decoder = new TextDecoder();
  for await (const chunk of res.body) csvRows += (decoder.decode(chunk, { stream: true }).match(/\r\n/g) ?? []).length;
  const csvSecs = (performance.now() - t1) / 1000;
  if (res.status !== 200) problems.push(`archive csv: HTTP ${res.status}`);
  if (csvRows !== ARCHIVE_ENTRIES) problems.push(`archive csv has ${csvRows} rows, expected ${ARCHIVE_ENTRIES}`);
  if (archived + caught.live_entries !== ARCHIVE_ENTRIES) {
    problems.push(`archive: ${archived} archived + ${caught.live_entries} live entries, expected ${ARCHIVE_ENTRIES}`);
  }
  return { seed, caught, segments: segments.length, archived, archivedBytes, file, live, sealed, csv: { rows: csvRows, secs: csvSecs } };
}

// ---------------------------------------------------------------------------
// Pruning: the rows a debit costs later, when its idempotency record expires

const PRUNE_DEBITS = 1000;

/**
 * Two organizations each get one batch of PRUNE_DEBITS debits: one dated an
 * hour ago, one two days ago, past the 24 h retention, so the alarm that
 * flushes it also prunes it. The difference in Durable Object rows written
 * per debit is what pruning adds to a debit over its life.
 */
async function pruneCost() {
  const rowsPerDebit = async (org, agoMs) => {
    const at = iso(Date.now() - agoMs);
    await createOrg(org, at, at);
    await eventsDelivered([org]); // its daily cap's settings.changed, before the measurement
    const before = await settledStorage(org);
    const debits = Array.from({ length: PRUNE_DEBITS }, (_, k) => ({
      idempotency_key: `${RUN_ID}-${org}-${k}`,
      feature: FEATURES[k % FEATURES.length],
      amount: '0.0001',
      user_id: `user_${(k % 20) + 1}`,
    }));
    await expectStatus(
      `batch ${org}`,
      api('POST', `/v1/orgs/${org}/debits/batch`, { auth: token(org, 'service'), body: { debits }, headers: { 'x-dev-now': at } }),
      200,
    );
    const after = await settledStorage(org);
    return (after.do_rows_written - before.do_rows_written) / PRUNE_DEBITS;
  };
  progress(`pruning: ${PRUNE_DEBITS} debits dated 1 h ago, ${PRUNE_DEBITS} dated 48 h ago (pruned by their flush's alarm)`);
  const kept = await rowsPerDebit('bench-prune-recent', 3_600_000);
  const pruned = await rowsPerDebit('bench-prune-old', 48 * 3_600_000);
  return { kept, pruned, prune: pruned - kept };
}

// ---------------------------------------------------------------------------
// Sizes of the local SQLite files (the capacity model's bytes per row)

/** The .sqlite files under the persist directory's v3/<kind>/ (do or d1). */
function sqliteFiles(kind) {
  const root = path.join(STATE, 'v3', kind);
  const out = [];
  const visit = (dir) => {
    for (const e of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) visit(p);
      else if (e.name.endsWith('.sqlite')) out.push(p);
    }
  };
  visit(root);
  return out;
}

/**
 * Runs fn over a copy of a live database (the file and its WAL, so committed
 * pages not yet checkpointed count): the runtime keeps writing the original.
 * undefined when fn throws (not a database of the expected kind).
 */
async function withCopy(file, fn) {
  const { DatabaseSync } = await import('node:sqlite');
  const dir = fs.mkdtempSync(path.join(WORK, 'sizes-'));
  const copy = path.join(dir, path.basename(file));
  fs.copyFileSync(file, copy);
  if (fs.existsSync(`${file}-wal`)) fs.copyFileSync(`${file}-wal`, `${copy}-wal`);
  const db = new DatabaseSync(copy);
  try {
    return fn(db);
  } catch {
    return undefined;
  } finally {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const dbBytes = (db) => db.prepare('PRAGMA page_count').get().page_count * db.prepare('PRAGMA page_size').get().page_size;

/** Bytes of each table and index, whole pages (what the file holds, free space in pages included). */
function btreeBytes(db) {
  return Object.fromEntries(
    db.prepare('SELECT name, sum(pgsize) AS bytes FROM dbstat GROUP BY name').all().map((r) => [r.name, r.bytes]),
  );
}

/**
 * The long-ledger organization's Durable Object database, as stored (each
 * entry's row still carries its idempotency record, kept 24 h) and as it
 * will be once pruning has cleared those (applied to the copy, then VACUUM).
 */
async function doSizes(org) {
  // The long ledger is among the largest objects: look at the largest files first.
  const bySize = sqliteFiles('do').sort((a, b) => fs.statSync(b).size - fs.statSync(a).size);
  for (const file of bySize) {
    const sized = await withCopy(file, (db) => {
      if (db.prepare('SELECT org_id FROM wallet').get()?.org_id !== org) return undefined;
      const entries = db.prepare('SELECT count(*) AS n FROM ops WHERE kind IS NOT NULL').get().n;
      // What the entry's own columns and its idempotency record hold, on average.
      const avg = db.prepare(`SELECT avg(coalesce(length(kind), 0) + coalesce(length(feature), 0)
          + coalesce(length(user_id), 0) + coalesce(length(project_id), 0) + coalesce(length(metadata), 0)
          + coalesce(length(model), 0) + coalesce(length(rate_id), 0) + coalesce(length(extra), 0)) AS entry,
        avg(coalesce(length(idempotency_key), 0) + coalesce(length(fingerprint), 0)
          + coalesce(length(response), 0)) AS record FROM ops WHERE kind IS NOT NULL`).get();
      const stored = dbBytes(db);
      const tables = btreeBytes(db);
      // As the retention's pruning leaves it (wallet_store::prune), then VACUUM.
      db.exec(`UPDATE ops SET idempotency_key = NULL, fingerprint = NULL, response = NULL,
                 reply_spent_today = NULL, reply_cap_remaining = NULL;
               DELETE FROM ops WHERE kind IS NULL; VACUUM;`);
      return {
        entries, stored, pruned: dbBytes(db), avgEntryChars: avg.entry, avgRecordChars: avg.record,
        opsBytes: (tables.ops ?? 0) + (tables.ops_by_key ?? 0),
      };
    });
    if (sized) return sized;
  }
  problems.push(`no Durable Object database of ${org} under ${STATE}/v3/do`);
  return null;
}

/** Every shard's database: bytes and rows of credit entries (with their indexes), rollups and watermarks. */
async function d1Sizes() {
  const out = { files: 0, bytes: 0, credit: { rows: 0, bytes: 0 }, rollup: { rows: 0, bytes: 0 }, progress: { rows: 0, bytes: 0 } };
  for (const file of sqliteFiles('d1')) {
    await withCopy(file, (db) => {
      const count = (table) => db.prepare(`SELECT count(*) AS n FROM ${table}`).get().n;
      const t = btreeBytes(db);
      const credit = count('ledger_entries');
      const rollup = count('usage_daily');
      const progressRows = count('replica_progress');
      out.files++;
      out.bytes += dbBytes(db);
      out.credit.rows += credit;
      out.credit.bytes += (t.ledger_entries ?? 0) + (t.ledger_entries_by_time ?? 0) + (t.ledger_entries_credits ?? 0);
      out.rollup.rows += rollup;
      out.rollup.bytes += t.usage_daily ?? 0;
      out.progress.rows += progressRows;
      out.progress.bytes += t.replica_progress ?? 0;
    });
  }
  return out;
}

const loadAtStart = os.loadavg();
let receiver; // the worker's events go there (startReceiver)

async function main() {
  const multi = Array.from({ length: MULTI_ORGS }, (_, i) => `bench-m${String(i).padStart(2, '0')}`);
  const single = 'bench-one';
  const holdOrg = 'bench-hold';
  const pricedOrg = 'bench-priced';
  const isolatedOrg = 'bench-sparse';
  const batchOrgs = Object.fromEntries(BATCH_SIZES.map((n) => [n, `bench-b${n}`]));
  const orgs = [single, holdOrg, pricedOrg, isolatedOrg, ...Object.values(batchOrgs), ...multi];

  receiver = await startReceiver(Number(args['receiver-port']), args['events-secret']);
  progress(`creating ${orgs.length + 2} organizations (trial grant, daily cap 50,000)`);
  await pool(orgs, 8, (org) => createOrg(org));
  // The seeded organization's trial grant predates its seeded history.
  await createOrg(USAGE_ORG, new Date(Number(args['seed-start-ms']) - 86_400_000).toISOString());
  await createAutoOrg();
  // Setting the daily cap records a settings.changed event: let every one of
  // them reach the receiver first, so no delivery runs during a measurement.
  const setup = await eventsDelivered([...orgs, USAGE_ORG, AUTO_ORG], 60_000);
  progress(`setup events: ${f0(receiver.total())} accepted by the receiver${setup.behind.length ? `, ${setup.behind.length} organizations still behind` : ''}`);
  if (setup.behind.length) problems.push(`setup events of ${setup.behind.length} organizations not delivered within 60 s`);

  const files = {
    single: writeOrgsFile('single', [single]),
    multi: writeOrgsFile('multi', multi),
    hold: writeOrgsFile('hold', [holdOrg]),
    priced: writeOrgsFile('priced', [pricedOrg]),
    auto: writeOrgsFile('auto', [AUTO_ORG]),
    // The usage report is for the organization's people, not for service tokens.
    usage: writeOrgsFile('usage', [USAGE_ORG], 'viewer'),
    ...Object.fromEntries(BATCH_SIZES.map((n) => [`b${n}`, writeOrgsFile(`b${n}`, [batchOrgs[n]])])),
  };

  if (!SMOKE) {
    // JIT and instance warm-up, not measured.
    await wrk({ label: 'warm-up, floor', mode: 'floor', orgsFile: files.single, duration: '1s' });
    await wrk({ label: 'warm-up, debits', mode: 'debit', orgsFile: files.single, duration: '1s', settle: [single], tail: false });
  }

  const floor = check(await wrk({ label: 'floor: POST /bench/floor', mode: 'floor', orgsFile: files.single }));

  const loadBefore = await settledStorage(single);
  const balanceBefore = await balanceUnits(single);
  const one = check(await wrk({ label: 'debits, 1 org', mode: 'debit', orgsFile: files.single, settle: [single] }));
  const loadAfter = one.settled[0];
  const loadDebits = (balanceBefore - (await balanceUnits(single))) / AMOUNT_UNITS;
  // The same load priced from usage (SPEC §12) on an organization of its own.
  const pricedBefore = await settledStorage(pricedOrg);
  const pricedBalance = await balanceUnits(pricedOrg);
  const priced = check(await wrk({ label: 'priced debits (usage), 1 org', mode: 'priced', orgsFile: files.priced, settle: [pricedOrg] }));
  const pricedDebits = (pricedBalance - (await balanceUnits(pricedOrg))) / AMOUNT_UNITS;
  // The same load beside it: an organization with auto top-up, an alert and events.
  const auto = await autoTopUpDebits(loadDebits, files.auto);

  const multiRun = check(await wrk({ label: `debits, ${MULTI_ORGS} orgs`, mode: 'debit', orgsFile: files.multi, settle: multi }));
  const holds = check(
    await wrk({ label: 'hold -> capture, 1 org', mode: 'hold_capture', orgsFile: files.hold, settle: [holdOrg] }),
    true,
  );
  const batches = {};
  for (const n of BATCH_SIZES) {
    const duration = seconds(DURATION) < MIN_BATCH_SECONDS ? `${MIN_BATCH_SECONDS}s` : DURATION;
    batches[n] = check(
      await wrk({
        label: `batched debits x${n}`,
        mode: 'batch',
        orgsFile: files[`b${n}`],
        arg: String(n),
        duration,
        settle: [batchOrgs[n]],
      }),
      true,
    );
  }
  const wallet = check(await wrk({ label: 'GET wallet', mode: 'wallet', orgsFile: files.single }));

  // Measured where the route exists (a build without reports skips it).
  const to = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.now() - 29 * 86_400_000).toISOString().slice(0, 10);
  const usageQuery = `from=${from}&to=${to}`;
  const probe = await api('GET', `/v1/orgs/${USAGE_ORG}/usage?${usageQuery}`, { auth: token(USAGE_ORG, 'viewer') });
  let usage = null;
  if (probe.status === 404 && probe.json?.error?.code === 'not_found') {
    progress('GET usage: the route is not present in this build, skipped');
  } else if (probe.status !== 200) {
    throw new Error(`GET usage probe: HTTP ${probe.status} ${probe.text.slice(0, 300)}`);
  } else {
    // A dashboard read: its latency target is measured one request at a time
    // (under 16 closed-loop connections p99 is mostly queueing behind the others).
    usage = check(await wrk({ label: 'GET usage, 30 days (1 connection)', mode: 'usage', orgsFile: files.usage, arg: usageQuery, connections: 1 }));
  }

  const many = await manyOrgs();
  const seed = await seedLedger();
  // Sized right after seeding: the long ledger alone, before more debits land.
  const doSize = await doSizes(LEDGER_ORG);
  const reads = await ledgerReads(seed);
  const paging = await debitsWhilePaging();
  const archive = await archiveScenario();

  // The same floor again: how far the machine drifted during the run.
  const floorEnd = check(await wrk({ label: 'floor again (drift check)', mode: 'floor', orgsFile: files.single }));

  // Sparse debits: each one waits until the previous one reached D1, so every
  // flush carries a single entry (the worst case for storage work per debit).
  const sparseCount = SMOKE ? 1 : 2;
  progress(`storage per sparse debit: ${sparseCount} debits, each flushed alone`);
  const isoBefore = await settledStorage(isolatedOrg);
  const isoBalance = await balanceUnits(isolatedOrg);
  let isoAfter = isoBefore;
  for (let i = 0; i < sparseCount; i++) {
    await expectStatus(
      'sparse debit',
      api('POST', `/v1/orgs/${isolatedOrg}/debits`, {
        auth: token(isolatedOrg, 'service'),
        body: { feature: 'chat', amount: '0.0001', user_id: 'user_1' },
        headers: { 'idempotency-key': `${RUN_ID}-sparse-${i}` },
      }),
      201,
    );
    isoAfter = await settledStorage(isolatedOrg);
  }
  const isoDebits = (isoBalance - (await balanceUnits(isolatedOrg))) / AMOUNT_UNITS;
  const prune = await pruneCost();

  // The replica alarm: one per D1 batch (a flush), at most one per
  // organization every 2 s; /bench/storage counts the batches.
  const perDebit = (before, after, debits) => {
    const doRows = after.do_rows_written - before.do_rows_written;
    const d1Rows = after.d1_rows_written - before.d1_rows_written;
    const alarms = after.d1_batches - before.d1_batches;
    // The counters live in the instance's memory: if the runtime replaced the
    // instance in between, they started again from zero.
    if (doRows < 0 || d1Rows < 0) {
      problems.push('a storage counter went backwards: the Durable Object instance was replaced mid-measurement');
    }
    return { debits, doRows: doRows / debits, d1Rows: d1Rows / debits, alarms: alarms / debits, d1RowsPerFlush: d1Rows / alarms };
  };
  const storageLoad = perDebit(loadBefore, loadAfter, loadDebits);
  const storagePriced = perDebit(pricedBefore, priced.settled[0], pricedDebits);
  const storageIso = perDebit(isoBefore, isoAfter, isoDebits);
  const d1Size = await d1Sizes();
  // Entries of single debits without metadata or project, for comparison.
  const doSizePlain = await doSizes(single);

  const wasm = fs.readFileSync(args.wasm);
  // wrangler reports the upload's size with zlib.gzipSync at its default level.
  const wasmGzip = zlib.gzipSync(wasm).length;

  const figures = { floor, floorEnd, one, priced, storagePriced, auto, multi: multiRun, holds, batches, wallet, usage, storageLoad, storageIso, prune, many, seed, doSize, doSizePlain, d1Size, reads, paging, archive, wasm: wasm.length, wasmGzip };
  const receiverTotals = { ...receiver.stats, accepted: receiver.total() };
  await receiver.close();
  figures.receiver = receiverTotals;
  // Every figure, for docs/performance.md (kept with --keep).
  fs.writeFileSync(path.join(WORK, 'figures.json'), JSON.stringify(figures, null, 2));
  printTable(figures);
  if (receiverTotals.refused) problems.push(`the event receiver refused ${receiverTotals.refused} requests (bad signature or body)`);

  if (problems.length) {
    process.stderr.write(`\nerror responses during the run:\n  ${problems.join('\n  ')}\n`);
    if (SMOKE) process.exit(1);
  }
}

// ---------------------------------------------------------------------------
// The table

const f0 = (x) => Math.round(x).toLocaleString('en-US');
const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
// Rows per debit: three decimals, so 3.004 does not print as a failing 3.00.
const f3 = (x) => x.toFixed(3);
const ratio = (x) => `${x.toFixed(2)}x`;
const plural = (n, what) => `${f0(n)} ${what}${n === 1 ? '' : 's'}`;
const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;
const verdict = (ok) => (ok ? 'PASS' : 'MISS');

function costPerMillion(s) {
  return (
    PRICE.workerRequest +
    PRICE.doRequest +
    s.doRows * PRICE.doRowWritten +
    s.d1Rows * PRICE.d1RowWritten +
    s.alarms * (PRICE.doRequest + PRICE.doRowWritten) // alarm invocation + its setAlarm row
  );
}

function printTable(r) {
  const { floor, floorEnd, one, multi, holds, batches, wallet, usage, storageLoad, storageIso } = r;
  const vsFloor = (x) => `${ratio(x.rps / floor.rps)} / ${ratio(x.p50 / floor.p50)} / ${ratio(x.p99 / floor.p99)}`;
  const floorRef = `floor ${f0(floor.rps)} req/s, ${f1(floor.p50)}/${f1(floor.p99)} ms`;
  const errs = (x) => String(x.errors + (x.badItems ?? 0));

  const rows = [];
  const row = (scenario, throughput, p50, p99, cpu, against, ratios, target, result, errors = '') =>
    rows.push([scenario, throughput, p50, p99, cpu, against, ratios, target, result, errors]);
  const cpu = (x) => f2(x.cpuPerRequest);

  row('floor: POST /bench/floor (Worker -> DO, no work)', `${f0(floor.rps)} req/s`, f1(floor.p50), f1(floor.p99),
    cpu(floor), '-', '-', '-', '', errs(floor));

  const oneRps = one.rps / floor.rps;
  const oneP99 = one.p99 / floor.p99;
  row('debits, 1 org', `${f0(one.rps)} req/s`, f1(one.p50), f1(one.p99), cpu(one), floorRef, vsFloor(one),
    `>= ${TARGET.singleVsFloorRps}x req/s; p99 <= ${TARGET.singleVsFloorP99}x`,
    `${verdict(oneRps >= TARGET.singleVsFloorRps)} req/s, ${verdict(oneP99 <= TARGET.singleVsFloorP99)} p99`, errs(one));
  const pricedRun = r.priced;
  const cpuRatio = pricedRun.cpuPerRequest / one.cpuPerRequest;
  const sp = r.storagePriced;
  const sl = r.storageLoad;
  row('priced debits (usage, not amount), 1 org', `${f0(pricedRun.rps)} req/s`, f1(pricedRun.p50), f1(pricedRun.p99), cpu(pricedRun),
    `debits, 1 org: CPU ${cpu(one)} ms, DO ${f3(sl.doRows)} + D1 ${f3(sl.d1Rows)} rows/debit`,
    `CPU ${ratio(cpuRatio)}; rows DO ${f3(sp.doRows)} + D1 ${f3(sp.d1Rows)}`,
    `CPU <= ${TARGET.pricedVsPlainCpu}x; DO rows <= plain`,
    `${verdict(cpuRatio <= TARGET.pricedVsPlainCpu)} CPU, ${verdict(sp.doRows <= sl.doRows + 0.001)} rows`, errs(pricedRun));
  const a = r.auto;
  const vsOne = (x) => `${ratio(x.rps / one.rps)} / ${ratio(x.p50 / one.p50)} / ${ratio(x.p99 / one.p99)}`;
  row('debits, 1 org, with auto top-up, low-balance alert, events', `${f0(a.run.rps)} req/s`, f1(a.run.p50), f1(a.run.p99),
    cpu(a.run), `debits, 1 org ${f0(one.rps)} req/s, ${f1(one.p50)}/${f1(one.p99)} ms`, vsOne(a.run), '-', '', errs(a.run));
  const types = Object.entries(a.types).map(([t, n]) => (n > 1 ? `${n} ${t}` : t)).join(', ') || 'none';
  const autoOk = a.credited > 0 && a.credited === a.intents && a.accepted === a.recorded;
  row(`  its top-ups (starter, 1,000 credits) and events`,
    `${plural(a.credited, 'top-up')} credited, ${plural(a.intents, 'PaymentIntent')}`, '-', '-', '-',
    `balance ${creditsText(a.startUnits)}: alert < ${a.alertThreshold}, top-up < ${a.threshold}`,
    `events ${f0(a.recorded)} recorded (${f0(a.during)} in the run: ${types}), ${f0(a.accepted)} accepted`,
    'credited = PIs >= 1; all accepted', verdict(autoOk));

  const multiRps = multi.rps / floor.rps;
  row(`debits, ${MULTI_ORGS} orgs`, `${f0(multi.rps)} req/s`, f1(multi.p50), f1(multi.p99), cpu(multi), floorRef, vsFloor(multi),
    `>= ${TARGET.multiVsFloorRps}x req/s`, verdict(multiRps >= TARGET.multiVsFloorRps), errs(multi));

  row('hold -> capture cycles, 1 org', `${f0(holds.itemsPerSec)} captures/s (${f0(holds.rps)} req/s)`,
    f1(holds.p50), f1(holds.p99), cpu(holds), floorRef, `${ratio(holds.itemsPerSec / floor.rps)} captures/s per floor req/s`,
    '-', '', errs(holds));

  for (const n of BATCH_SIZES) {
    const b = batches[n];
    const x = b.itemsPerSec / one.rps;
    row(`batched debits, ${f0(n)} per request, 1 org`, `${f0(b.itemsPerSec)} debits/s (${f1(b.rps)} req/s)`,
      f1(b.p50), f1(b.p99), `${cpu(b)} (${f2(b.cpuPerItem)}/debit)`, `single debits ${f0(one.rps)}/s`, `${ratio(x)} debits/s`,
      n === 100 ? `>= ${TARGET.batch100VsSingle}x debits/s` : '-', n === 100 ? verdict(x >= TARGET.batch100VsSingle) : '',
      errs(b));
  }

  row('GET /v1/orgs/{org}/wallet', `${f0(wallet.rps)} req/s`, f1(wallet.p50), f1(wallet.p99), cpu(wallet), floorRef, vsFloor(wallet),
    '-', '', errs(wallet));

  if (usage) {
    row(`GET usage, 30 days of ${f0(Number(args['seed-entries']))} entries, 1 connection`, `${f0(usage.rps)} req/s`, f1(usage.p50),
      f1(usage.p99), cpu(usage), floorRef, vsFloor(usage), `p99 < ${TARGET.usageP99Ms} ms`, verdict(usage.p99 < TARGET.usageP99Ms),
      errs(usage));
  } else {
    row(`GET usage, 30 days of ${f0(Number(args['seed-entries']))} entries`, 'n/a (route not present)', '-', '-', '-', '-',
      '-', `p99 < ${TARGET.usageP99Ms} ms`, 'n/a');
  }

  row('floor again, at the end (drift check)', `${f0(floorEnd.rps)} req/s`, f1(floorEnd.p50), f1(floorEnd.p99),
    cpu(floorEnd), floorRef, vsFloor(floorEnd), '-', '', errs(floorEnd));

  const storageRow = (name, s, against = '-') => {
    row(`storage per debit, ${name} (${f0(s.debits)} debits)`, `DO ${f3(s.doRows)} + D1 ${f3(s.d1Rows)} rows, ${f3(s.alarms)} alarms`,
      '-', '-', '-', against, `$${f2(costPerMillion(s))} per 1M debits`,
      `DO <= ${TARGET.doRowsPerDebit}, D1 <= ${TARGET.d1RowsPerDebit}`,
      `${verdict(s.doRows <= TARGET.doRowsPerDebit)} DO, ${verdict(s.d1Rows <= TARGET.d1RowsPerDebit)} D1`);
  };
  storageRow(`under load (${CONNECTIONS} conns)`, storageLoad);
  storageRow(`auto top-up org under load`, a.storage,
    `plain DO ${f3(storageLoad.doRows)} + D1 ${f3(storageLoad.d1Rows)} (${ratio(a.storage.doRows / storageLoad.doRows)} / ${ratio(a.storage.d1Rows / storageLoad.d1Rows)})`);
  storageRow('sparse, each flushed alone', storageIso);
  const pr = r.prune;
  row(`DO rows per debit added by pruning after 24 h (batch of ${f0(PRUNE_DEBITS)})`, `+${f3(pr.prune)} rows`, '-', '-', '-',
    `batched ${f3(pr.kept)} before, ${f3(pr.pruned)} with pruning`,
    `lifetime under load: DO ${f3(storageLoad.doRows + pr.prune)} rows/debit`, '-', '');

  // Many organizations: debits, then D1 work per shard.
  const m = r.many;
  row(`debits, ${f0(MANY_ORGS)} orgs (${f1(m.debits / m.counted)} debits each)`, `${f0(m.run.rps)} req/s`, f1(m.run.p50),
    f1(m.run.p99), cpu(m.run), floorRef, vsFloor(m.run), '-', '', errs(m.run));
  const shardText = Object.entries(m.perShard)
    .map(([name, x]) => `${name} ${f1(x.batches / m.loadSecs)}/s (${f0(x.orgs)} orgs)`)
    .join(', ');
  row(`  D1 batches per shard, ${f0(m.counted)} of ${f0(MANY_ORGS)} orgs counted`, shardText, '-', '-', '-', `${f0(MANY_ORGS)} signups in ${f1(m.signupSecs)} s`,
    `${f3(m.batches / m.debits)} flushes/debit, ${f1(m.d1Rows / Math.max(1, m.batches))} D1 rows/flush`, '-', '');
  const manyStorage = { doRows: m.doRows / m.debits, d1Rows: m.d1Rows / m.debits, alarms: m.batches / m.debits };
  storageRow(`${f0(m.counted)} of ${f0(MANY_ORGS)} orgs`, { ...manyStorage, debits: m.debits });

  // One organization's long ledger.
  const { full, ranges, csv } = r.reads;
  const entriesText = f0(LEDGER_ENTRIES + 1);
  row(`seed: ${f0(LEDGER_ENTRIES)} debits with metadata, POST /debits/batch x1000`, `${f0(r.seed.debitsPerSec)} debits/s`,
    '-', '-', '-', '-', '-', '-', '');
  row(`GET ledger ?limit=100, every page of ${entriesText} entries`, `${f0(full.n / full.secs)} pages/s`, f1(full.p50),
    f1(full.p99), '-', floorRef, `${ratio(full.p50 / floor.p50)} p50 / ${ratio(full.p99 / floor.p99)} p99`, '-', '', '0');
  row(`GET ledger ?limit=100&from=&to= (${RANGES} 1-hour ranges, ${f0(ranges.n)} pages)`, `${f0(ranges.entries)} entries`,
    f1(ranges.p50), f1(ranges.p99), '-', floorRef, `${ratio(ranges.p50 / floor.p50)} p50 / ${ratio(ranges.p99 / floor.p99)} p99`, '-', '');
  row(`GET ledger ?format=csv, all ${entriesText} entries`, `${f1(csv.secs)} s (${f0(csv.rows / csv.secs)} rows/s)`, '-', '-', '-', '-',
    `${(csv.bytes / 1048576).toFixed(1)} MiB`, '-', '');
  const p = r.paging;
  const aloneRps = (p.before.rps + p.after.rps) / 2;
  row(`debits, the org of ${entriesText} entries, alone (mean of 2 runs)`, `${f0(aloneRps)} req/s`,
    f1((p.before.p50 + p.after.p50) / 2), f1((p.before.p99 + p.after.p99) / 2), f2((p.before.cpuPerRequest + p.after.cpuPerRequest) / 2),
    `runs: ${f0(p.before.rps)}, ${f0(p.after.rps)} req/s`, '-', '-', '', String(p.before.errors + p.after.errors));
  row(`debits, same org, while 1 client pages its ledger`, `${f0(p.during.rps)} req/s`, f1(p.during.p50), f1(p.during.p99),
    cpu(p.during), `alone ${f0(aloneRps)} req/s`, `${ratio(p.during.rps / aloneRps)} debits/s`, '-', '', errs(p.during));
  row(`  its pages meanwhile (limit=100)`, `${f1(p.pages.perSec)} pages/s`, f1(p.pages.p50), f1(p.pages.p99), '-', '-',
    `${f0(p.pages.n)} pages`, '-', '');

  const ar = r.archive;
  // The live entries' own bytes: the file as the retention's pruning leaves it, after VACUUM
  // (the object's file also keeps the pages archived rows freed, which SQLite reuses).
  const liveB = ar.file ? ar.file.pruned / ar.caught.live_entries : NaN;
  const archB = ar.archivedBytes / Math.max(1, ar.archived);
  const seedRatio = ar.seed.withArchiving / ar.seed.withoutArchiving;
  row(`archive: seed ${f0(ARCHIVE_ENTRIES)} entries (live ${f0(ARCHIVE_LIVE)}, segments ${f0(ARCHIVE_SEGMENT)}), batch x1000`,
    `${f0(ar.seed.withArchiving)} debits/s past the window (sealing)`, '-', '-', '-',
    `${f0(ar.seed.withoutArchiving)} debits/s filling the window (nothing to seal); ${f0(ar.seed.debitsPerSec)}/s overall, ledger seed ${f0(r.seed.debitsPerSec)}/s`,
    ratio(seedRatio), '>= 0.9x', verdict(seedRatio >= 0.9));
  row('  sealed after seeding', `${plural(ar.segments, 'segment')}, ${f0(ar.archived)} entries archived`, '-', '-', '-',
    `${f0(ar.caught.live_entries)} live entries`, `caught up ${f1(ar.caught.waitSecs)} s after seeding`, `live <= ${f0(ARCHIVE_LIVE)}`,
    verdict(ar.caught.live_entries <= ARCHIVE_LIVE));
  row('  object bytes', `${(ar.caught.object_bytes / 1048576).toFixed(1)} MiB (${ar.file ? (ar.file.pruned / 1048576).toFixed(1) : 'n/a'} MiB after VACUUM)`, '-', '-', '-',
    `${f0(liveB)} B per live entry (file after VACUUM), ${f1(archB)} B per archived entry (R2)`,
    `per 1M entries-month: DO $${((1e6 * liveB) / 1e9 * DO_GB_MONTH).toFixed(4)}, R2 $${((1e6 * archB) / 1e9 * R2_GB_MONTH).toFixed(6)}`, '-', '');
  row('  ledger pages (limit=100) from live positions', `${plural(ar.live.n, 'page')}`, f1(ar.live.p50), f1(ar.live.p99), '-', '-', '-', '', '');
  row('  ledger pages (limit=100) from archived positions', `${plural(ar.sealed.n, 'page')}`, f1(ar.sealed.p50), f1(ar.sealed.p99), '-',
    'live pages', `p99 ${ratio(ar.sealed.p99 / ar.live.p99)}`, 'p99 <= 3x live', verdict(ar.sealed.p99 <= 3 * ar.live.p99));
  row(`  ?format=csv, all ${f0(ar.csv.rows)} entries`, `${f0(ar.csv.rows / ar.csv.secs)} rows/s`, '-', '-', '-', `${f1(ar.csv.secs)} s`, '-', '', '');

  // Sizes for the capacity model.
  for (const [d, what] of [[r.doSize, 'with metadata'], [r.doSizePlain, 'plain']]) {
    if (!d) continue;
    row(`DO SQLite, ${f0(d.entries)} entries (${what})`, `${f0(d.stored / d.entries)} B/entry stored, ${f0(d.pruned / d.entries)} after pruning`,
      '-', '-', '-', `${(d.stored / 1048576).toFixed(1)} MiB file`,
      `entry text ${f0(d.avgEntryChars)} chars, key+fingerprint+reply ${f0(d.avgRecordChars)}; ops+index ${f0(d.opsBytes / d.entries)} B/entry`,
      d === r.doSize ? `<= ${TARGET.entryBytesLive} B, <= ${TARGET.entryBytesPruned} B after` : '-',
      d === r.doSize ? verdict(d.stored / d.entries <= TARGET.entryBytesLive && d.pruned / d.entries <= TARGET.entryBytesPruned) : '');
  }
  const s1 = r.d1Size;
  const per = (x) => (x.rows ? f0(x.bytes / x.rows) : 'n/a');
  row(`D1 shards (${s1.files} files)`, `credit row ${per(s1.credit)} B, rollup ${per(s1.rollup)} B, progress ${per(s1.progress)} B`,
    '-', '-', '-', `${(s1.bytes / 1048576).toFixed(1)} MiB in all`,
    `${f0(s1.credit.rows)} credit, ${f0(s1.rollup.rows)} rollup rows`, '-', '');

  row('release wasm (build/index_bg.wasm)', `${kib(r.wasm)} raw, ${kib(r.wasmGzip)} gzip`, '-', '-', '-', '-', '-',
    `gzip < ${TARGET.wasmGzipKiB} KiB`, verdict(r.wasmGzip / 1024 < TARGET.wasmGzipKiB));
  row(`D1 flush under load (1 org, ${CONNECTIONS} conns)`, `${f1(storageLoad.d1RowsPerFlush)} rows/flush (4 statements)`, '-', '-', '-',
    '-', `${f3(storageLoad.alarms)} flushes/debit`, '-', '');
  row('start: wrangler dev -> first /healthz answer', `${f0(Number(args['startup-ms']))} ms`, '-', '-', '-', '-', '-', '-', '');

  const header = ['scenario', 'throughput', 'p50 ms', 'p99 ms', 'CPU ms/req', 'compared with', 'ratio (req/s / p50 / p99)', 'target', 'result', 'errors'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i].length)));
  const line = (cells) => cells.map((c, i) => (i >= 1 && i <= 4 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();

  const commit = (() => {
    try {
      const sha = execFileSyncText('git', ['rev-parse', '--short', 'HEAD']);
      const dirty = execFileSyncText('git', ['status', '--porcelain', '--untracked-files=no']) ? ' (uncommitted changes)' : '';
      return `${sha}${dirty}`;
    } catch {
      return 'unknown';
    }
  })();
  const out = [
    '',
    `AI Wallet benchmark: wrangler dev (workerd, local D1 and Durable Objects), wrk over loopback`,
    `machine: ${os.cpus().length} cores (nproc ${execFileSyncText('nproc', [])}), load average ${loadAtStart.map((x) => x.toFixed(2)).join(' ')} at the start, ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} at the end; ` +
      `wrk -t${THREADS} -c${CONNECTIONS} -d${DURATION} per scenario; commit ${commit}${SMOKE ? '; SMOKE RUN (figures meaningless)' : ''}`,
    '',
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...rows.map(line),
    '',
    `Prices (USD per million beyond the monthly allowance, Workers Paid): Workers requests $${PRICE.workerRequest}, ` +
      `Durable Object requests $${PRICE.doRequest}, DO SQLite rows written $${PRICE.doRowWritten.toFixed(2)} (read $${PRICE.doRowRead}), ` +
      `D1 rows written $${PRICE.d1RowWritten.toFixed(2)} (read $${PRICE.d1RowRead}).`,
    `Cost per 1M debits = 1M Worker requests + 1M DO requests + rows written (counted by /bench/storage) + replica ` +
      `alarms (one DO request + one setAlarm row each; one per D1 batch, as counted). Not included: rows read ` +
      `(not counted; $0.001/M), Worker CPU time, DO duration.`,
    `Auto top-up org: the same load as "debits, 1 org", its alert and auto top-up thresholds just below its balance ` +
      `at the start, so the crossings, the charge (from the object's alarm, at localstripe) and the events' delivery ` +
      `(queue -> this run's receiver, Wallet-Signature checked) happen under load; its rows include the purchase's, ` +
      `and the delivery marks (one events-row UPDATE per delivery attempt). ` +
      `Receiver, whole run: ${f0(r.receiver.requests)} requests, ${f0(r.receiver.accepted)} events accepted, ` +
      `${f0(r.receiver.again)} sent again, ${f0(r.receiver.refused)} refused.`,
    `Sizes: whole SQLite pages (dbstat) of copies of the local files under the persist directory; "after pruning" ` +
      `clears the idempotency records (kept 24 h) on the copy and VACUUMs it. A credit row counts its two indexes. ` +
      `A flush is one D1 batch of 4 statements (credit rows, rollups, watermark, read-back; a 5th, the rollups by model, when the stretch has entries priced from usage; src/ledger_shards.rs).`,
    `Ratios are figure / reference; throughput ratios want >= 1, latency ratios <= 1. Latency from wrk (closed loop).`,
    `CPU ms/req: CPU time of wrangler dev's processes (wrangler, its proxy, workerd with the D1 simulator) per ` +
      `completed request; for scenarios that write, until 2.5 s after wrk stopped, so that the replica flush is ` +
      `included. Steadier than req/s when other work shares the cores.`,
  ];
  process.stdout.write(`${out.join('\n')}\n`);
}

function execFileSyncText(cmd, argv) {
  return execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
}

main().catch((err) => {
  process.stderr.write(`bench: ${err.stack ?? err}\n`);
  process.exit(1);
});
