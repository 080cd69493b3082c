// How long the dashboard's read routes take for an organization with a
// million debits (not part of `make test`; run with `make bench-reports`).
// The history is written straight into the local D1 (`wrangler d1 execute`):
// 1,000,000 debits of 1 credit over 365 days across 6 features and 50
// members, a purchase every 2,000 entries (the first before any debit), and the matching usage_daily
// rollups, exactly as replication would have left them. Then each route is
// timed over loopback against `wrangler dev` (workerd, local D1).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { api, ownerToken, startWorker } from '../e2e/harness.mjs';
import { d1Execute } from '../e2e/d1-local.mjs';

const DEBITS = Number(process.env.BENCH_DEBITS ?? 1_000_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 20);
const ORG = 'org_bench';
const DAY_MS = 86_400_000;

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });
after(() => worker?.stop());

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function time(label, path, { runs = RUNS, check } = {}) {
  const tok = ownerToken(ORG);
  const samples = [];
  let body;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const res = await fetch(`${worker.base}${path}`, { headers: { authorization: `Bearer ${tok}` }, signal: AbortSignal.timeout(120_000) });
    body = await res.text();
    samples.push(performance.now() - t0);
    assert.equal(res.status, 200, body.slice(0, 500));
  }
  check?.(body);
  samples.sort((a, b) => a - b);
  const line = `${label.padEnd(44)} min ${samples[0].toFixed(1)} ms, ` +
    `median ${percentile(samples, 50).toFixed(1)} ms, p95 ${percentile(samples, 95).toFixed(1)} ms, max ${samples.at(-1).toFixed(1)} ms (${runs} runs, ${body.length} bytes)`;
  console.log(line);
  return line;
}

test(`usage and transactions with ${DEBITS.toLocaleString('en-US')} debits`, { timeout: 1_800_000 }, async () => {
  const signup = await w.signup(ORG);
  assert.equal(signup.status, 201, signup.text);
  const now = Date.now();
  const start = now - 364 * DAY_MS - (now % DAY_MS); // 00:00 UTC 364 days ago: 365 days with today
  const span = now - start;
  const last = DEBITS + 1;
  // seq 1 is the trial grant the signup wrote; entries 2..last follow it in time.
  const sql = `
WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < ${last})
INSERT INTO ledger_entries (org_id, seq, id, kind, amount_units, balance_after_units, created_at_ms,
  usage_day, feature, user_id, pack_id, amount_cents, currency)
SELECT '${ORG}', i, printf('le_%012d', i),
  CASE WHEN i % 2000 = 2 THEN 'purchase' ELSE 'debit' END,
  CASE WHEN i % 2000 = 2 THEN 20000000 ELSE 10000 END,
  2000000 + ((i - 2) / 2000 + 1) * 20000000 - (i - 1 - ((i - 2) / 2000 + 1)) * 10000,
  ${start} + (i - 1) * ${Math.floor(span / last)},
  date((${start} + (i - 1) * ${Math.floor(span / last)}) / 1000, 'unixepoch'),
  CASE WHEN i % 2000 = 2 THEN NULL ELSE
    CASE i % 6 WHEN 0 THEN 'chat' WHEN 1 THEN 'auto_triage' WHEN 2 THEN 'error_analysis'
      WHEN 3 THEN 'incident_timeline' WHEN 4 THEN 'release_analysis' ELSE 'nl_alerts' END END,
  CASE WHEN i % 2000 = 2 OR i % 6 = 1 THEN NULL ELSE 'user_' || ((i / 6) % 50) END,
  CASE WHEN i % 2000 = 2 THEN 'team' END,
  CASE WHEN i % 2000 = 2 THEN 5000 END,
  CASE WHEN i % 2000 = 2 THEN 'usd' END
FROM n;
INSERT INTO usage_daily (org_id, day, feature, user_id, credits_units, entries)
SELECT org_id, usage_day, feature, coalesce(user_id, ''), sum(amount_units), count(*)
FROM ledger_entries WHERE org_id = '${ORG}' AND kind = 'debit' GROUP BY usage_day, feature, coalesce(user_id, '');
INSERT INTO replica_progress (org_id, flushed_seq) VALUES ('${ORG}', ${last})
ON CONFLICT (org_id) DO UPDATE SET flushed_seq = excluded.flushed_seq;`;
  const t0 = performance.now();
  await d1Execute(worker.persistTo, sql, { timeoutMs: 1_500_000 });
  console.log(`built ${DEBITS.toLocaleString('en-US')} debits and their rollups in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const d1Dir = fs.readdirSync(path.join(worker.persistTo, 'v3/d1'), { recursive: true }).filter((f) => f.endsWith('.sqlite'));
  for (const f of d1Dir) {
    const size = fs.statSync(path.join(worker.persistTo, 'v3/d1', f)).size;
    if (size > 1e6) console.log(`local D1 file: ${(size / 1e6).toFixed(0)} MB`);
  }

  const lines = [];
  lines.push(await time('usage, default 30 days', `/v1/orgs/${ORG}/usage`, {
    check: (b) => assert.equal(JSON.parse(b).daily.length, 30),
  }));
  lines.push(await time('usage, 366 days (the whole history)', `/v1/orgs/${ORG}/usage?from=${new Date(start - DAY_MS).toISOString().slice(0, 10)}&to=${new Date(now).toISOString().slice(0, 10)}`, {
    check: (b) => {
      const report = JSON.parse(b);
      assert.equal(report.count, DEBITS - (Math.floor((last - 2) / 2000) + 1));
      assert.equal(report.by_member.length, 51);
    },
  }));
  lines.push(await time('transactions, first page (50)', `/v1/orgs/${ORG}/transactions`));
  lines.push(await time('transactions, limit 100 from the middle', `/v1/orgs/${ORG}/transactions?limit=100&starting_after=le_${String(Math.floor(last / 2)).padStart(12, '0')}`));
  lines.push(await time('transactions CSV, whole history', `/v1/orgs/${ORG}/transactions?format=csv`, { runs: 5 }));
  lines.push(await time('ledger, first page (raw, for comparison)', `/v1/orgs/${ORG}/ledger`));
  fs.mkdirSync(path.join(path.dirname(new URL(import.meta.url).pathname), '../artifacts'), { recursive: true });
  fs.writeFileSync(path.join(path.dirname(new URL(import.meta.url).pathname), '../artifacts/bench-reports.txt'), `${lines.join('\n')}\n`);
});
