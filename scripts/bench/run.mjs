// The scenarios of `make bench` against a running `wrangler dev` (started by
// scripts/bench.sh), and the one table they produce. Load comes from wrk with
// scripts/bench/wallet.lua; setup and the storage counters use plain fetch.
import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LUA = path.join(HERE, 'wallet.lua');
const DEV_SECRET = 'local-dev-jwt-secret';
const UNITS_PER_CREDIT = 10_000;
const AMOUNT_UNITS = 1; // every debit of wallet.lua is "0.0001"
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
  d1RowsPerDebit: 2,
  wasmGzipKiB: 500,
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

async function createOrg(org, devNow) {
  await expectStatus(
    `signup ${org}`,
    api('POST', '/v1/orgs', {
      auth: token(org, 'service'),
      body: { org_id: org, owner_id: `owner_${org}` },
      headers: devNow ? { 'x-dev-now': devNow } : {},
    }),
    201,
  );
  // The largest cap, so no scenario meets the daily cap (the trial's 200
  // credits are 2,000,000 debits of 0.0001).
  await expectStatus(
    `daily cap ${org}`,
    api('PUT', `/v1/orgs/${org}/daily-cap`, { auth: token(org, 'owner', `owner_${org}`), body: { daily_cap: '50000' } }),
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
 * Storage counters once the outbox flush has settled: the D1 ledger's newest
 * entry carries the wallet's exact balance (so every entry reached D1,
 * whenever the flush runs), then the counters are unchanged over two polls
 * 300 ms apart (the Durable Object counts its own rows after D1 answers).
 * The balance is read on every poll: requests wrk left in flight when it
 * stopped may still be landing. Reading it also keeps the Durable Object busy,
 * so the runtime does not evict it (and its in-memory counters) meanwhile.
 */
async function settledStorage(org) {
  const owner = token(org, 'owner', `owner_${org}`);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const balance = await balanceUnits(org);
    const page = await api('GET', `/v1/orgs/${org}/ledger?limit=1`, { auth: owner });
    const newest = page.json?.data?.[0];
    if (page.status === 200 && newest && units(newest.balance_after) === balance) break;
    if (Date.now() > deadline) {
      progress(
        `warning: the D1 ledger of ${org} has not caught up after 20 s (newest entry ${newest?.id} ` +
          `balance_after ${newest?.balance_after}, wallet ${balance / UNITS_PER_CREDIT}, counters ${JSON.stringify(await storage(org))})`,
      );
      break;
    }
    await sleep(200);
  }
  let last = await storage(org);
  for (let stable = 0; stable < 2 && Date.now() < deadline + 5_000; ) {
    await sleep(300);
    const now = await storage(org);
    stable = JSON.stringify(now) === JSON.stringify(last) ? stable + 1 : 0;
    last = now;
  }
  return last;
}

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
function wrk({ label, mode, orgsFile, arg = '', duration = DURATION, connections = CONNECTIONS, settle = [], tail = true }) {
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
    const settled = await pool(settle, 8, (org) => settledStorage(org));
    return {
      ...result,
      settled,
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

const loadAtStart = os.loadavg();

async function main() {
  const multi = Array.from({ length: MULTI_ORGS }, (_, i) => `bench-m${String(i).padStart(2, '0')}`);
  const single = 'bench-one';
  const holdOrg = 'bench-hold';
  const isolatedOrg = 'bench-sparse';
  const batchOrgs = Object.fromEntries(BATCH_SIZES.map((n) => [n, `bench-b${n}`]));
  const orgs = [single, holdOrg, isolatedOrg, ...Object.values(batchOrgs), ...multi];

  progress(`creating ${orgs.length + 1} organizations (trial grant, daily cap 50,000)`);
  await pool(orgs, 8, (org) => createOrg(org));
  // The seeded organization's trial grant predates its seeded history.
  await createOrg(USAGE_ORG, new Date(Number(args['seed-start-ms']) - 86_400_000).toISOString());

  const files = {
    single: writeOrgsFile('single', [single]),
    multi: writeOrgsFile('multi', multi),
    hold: writeOrgsFile('hold', [holdOrg]),
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

  const many = check(await wrk({ label: `debits, ${MULTI_ORGS} orgs`, mode: 'debit', orgsFile: files.multi, settle: multi }));
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

  // The replica alarm: one per flush, at most one per organization every 2 s
  // (both with the flush after the response and with the alarm-only flush).
  // /bench/storage does not count setAlarm, so alarms are estimated.
  const perDebit = (before, after, debits, alarms) => {
    const doRows = after.do_rows_written - before.do_rows_written;
    const d1Rows = after.d1_rows_written - before.d1_rows_written;
    // The counters live in the instance's memory: if the runtime replaced the
    // instance in between, they started again from zero.
    if (doRows < 0 || d1Rows < 0) {
      problems.push('a storage counter went backwards: the Durable Object instance was replaced mid-measurement');
    }
    return { debits, doRows: doRows / debits, d1Rows: d1Rows / debits, alarms: alarms / debits };
  };
  const storageLoad = perDebit(loadBefore, loadAfter, loadDebits, Math.ceil(seconds(DURATION) / 2));
  const storageIso = perDebit(isoBefore, isoAfter, isoDebits, sparseCount);

  const wasm = fs.readFileSync(args.wasm);
  // wrangler reports the upload's size with zlib.gzipSync at its default level.
  const wasmGzip = zlib.gzipSync(wasm).length;

  printTable({ floor, floorEnd, one, many, holds, batches, wallet, usage, storageLoad, storageIso, wasm: wasm.length, wasmGzip });

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
  const { floor, floorEnd, one, many, holds, batches, wallet, usage, storageLoad, storageIso } = r;
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

  const manyRps = many.rps / floor.rps;
  row(`debits, ${MULTI_ORGS} orgs`, `${f0(many.rps)} req/s`, f1(many.p50), f1(many.p99), cpu(many), floorRef, vsFloor(many),
    `>= ${TARGET.multiVsFloorRps}x req/s`, verdict(manyRps >= TARGET.multiVsFloorRps), errs(many));

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

  const storageRow = (name, s) => {
    row(`storage per debit, ${name} (${f0(s.debits)} debits)`, `DO ${f3(s.doRows)} + D1 ${f3(s.d1Rows)} rows, ${f3(s.alarms)} alarms`,
      '-', '-', '-', '-', `$${f2(costPerMillion(s))} per 1M debits`,
      `DO <= ${TARGET.doRowsPerDebit}, D1 <= ${TARGET.d1RowsPerDebit}`,
      `${verdict(s.doRows <= TARGET.doRowsPerDebit)} DO, ${verdict(s.d1Rows <= TARGET.d1RowsPerDebit)} D1`);
  };
  storageRow(`under load (${CONNECTIONS} conns)`, storageLoad);
  storageRow('sparse, each flushed alone', storageIso);

  row('release wasm (build/index_bg.wasm)', `${kib(r.wasm)} raw, ${kib(r.wasmGzip)} gzip`, '-', '-', '-', '-', '-',
    `gzip < ${TARGET.wasmGzipKiB} KiB`, verdict(r.wasmGzip / 1024 < TARGET.wasmGzipKiB));
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
      `alarms (one DO request + one setAlarm row each; estimated: one per flush, at most one per organization ` +
      `every 2 s). Not included: rows read (not counted; $0.001/M), Worker CPU time, DO duration.`,
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
