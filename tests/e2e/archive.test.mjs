// The ledger never fills its object (SPEC §11): with a small live window
// (1,000 entries) and small segments (500), an organization's oldest entries
// are sealed into R2 (the local bucket of `wrangler dev`), and every read
// answers exactly as before: each ledger page, `from`/`to` ranges across the
// boundary and the CSV, byte for byte. The object's live entries stay
// bounded; the segments read back from the bucket match their checkpoints;
// scripts/verify-archive.mjs passes, and fails once a segment is altered in
// the bucket. Without R2, debits go on and nothing is deleted; archiving
// catches up once R2 is back. Past a tiny storage budget, spending answers
// 507 while reads still work.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import zlib from 'node:zlib';
import {
  api, assertError, ownerToken, randomId, serviceToken, startWorker, tempDir, units, waitFor,
} from './harness.mjs';
import { dispute, paidPurchase, putCardOnFile, send } from './money.mjs';
import { eventPayload, startStack } from './stripe.mjs';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(ROOT, 'node_modules/.bin');
const BUCKET = 'ai-wallet-ledger-archive';
const SMALL = { LEDGER_LIVE_ENTRIES: '1000', LEDGER_SEGMENT_ENTRIES: '500' };
const DAY_MS = 86_400_000;
const START = Date.parse('2031-01-05T09:00:00Z');
const at = (ms) => new Date(ms).toISOString();

let stack;
let worker;

before(async () => {
  // Large settings first: nothing is archived while the history is written.
  stack = await startStack({ webhooks: 'none' });
  worker = stack.worker;
}, { timeout: 180_000 });

after(async () => {
  if (worker !== stack?.worker) await worker?.stop();
  await stack?.stop();
});

const wranglerEnv = () => ({ ...process.env, PATH: `${BIN}${path.delimiter}${process.env.PATH}`, WRANGLER_SEND_METRICS: 'false' });

/** An object of the local bucket, straight from the state directory. */
function readSegment(dir, key) {
  const file = path.join(tempDir(), 'segment.gz');
  execFileSync(path.join(BIN, 'wrangler'), ['r2', 'object', 'get', `${BUCKET}/${key}`, '--file', file, '--local', '--persist-to', dir], {
    cwd: ROOT, env: wranglerEnv(), stdio: 'ignore',
  });
  return fs.readFileSync(file);
}

function writeSegment(dir, key, bytes) {
  const file = path.join(tempDir(), 'segment.gz');
  fs.writeFileSync(file, bytes);
  execFileSync(path.join(BIN, 'wrangler'), ['r2', 'object', 'put', `${BUCKET}/${key}`, '--file', file, '--local', '--persist-to', dir], {
    cwd: ROOT, env: wranglerEnv(), stdio: 'ignore',
  });
}

function verifyArchive(org, base, dir) {
  return spawnSync(process.execPath, [path.join(ROOT, 'scripts/verify-archive.mjs'), org, '--base', base, '--persist-to', dir], {
    cwd: ROOT, env: wranglerEnv(), encoding: 'utf8', timeout: 120_000,
  });
}

async function raw(base, org, query) {
  const res = await fetch(`${base}/v1/orgs/${org}/ledger?${new URLSearchParams(query)}`, {
    headers: { authorization: `Bearer ${ownerToken(org)}` },
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${JSON.stringify(query)} → ${res.status} ${text.slice(0, 300)}`);
  return text;
}

/** Every read the archive must not change: each page, ranges, the CSV. */
async function everyRead(base, org, times) {
  const reads = {};
  let cursor;
  for (let page = 0; ; page++) {
    const query = { limit: '100', ...(cursor ? { starting_after: cursor } : {}) };
    const text = await raw(base, org, query);
    reads[`page ${page}`] = text;
    const json = JSON.parse(text);
    if (!json.has_more) break;
    cursor = json.data.at(-1).id;
  }
  for (const [from, to] of [[times[0], times[2]], [times[1], times[4]], [times[3], undefined], [undefined, times[2]]]) {
    const query = { limit: '100', ...(from ? { from: at(from) } : {}), ...(to ? { to: at(to) } : {}) };
    reads[`range ${JSON.stringify(query)}`] = await raw(base, org, query);
    reads[`csv ${JSON.stringify(query)}`] = await raw(base, org, { format: 'csv', ...(from ? { from: at(from) } : {}), ...(to ? { to: at(to) } : {}) });
  }
  reads.csv = await raw(base, org, { format: 'csv' });
  return reads;
}

const storage = async (w, org) => {
  const res = await w.call('GET', '/v1/orgs/{org}/ledger/storage', { org }, { token: ownerToken(org) });
  assert.equal(res.status, 200, res.summary);
  return res.json;
};

async function segmentsOf(w, org) {
  const all = [];
  let cursor;
  for (;;) {
    const query = new URLSearchParams({ limit: '2', ...(cursor ? { starting_after: cursor } : {}) });
    const res = await w.req('GET', `/v1/orgs/${org}/ledger/segments?${query}`, { token: ownerToken(org) });
    w.routesCalled.add('GET /v1/orgs/{org}/ledger/segments');
    assert.equal(res.status, 200, res.summary);
    all.push(...res.json.data);
    if (!res.json.has_more) return all;
    cursor = res.json.data.at(-1).id;
  }
}

const batch = (w, org, debits, now) => w.call('POST', '/v1/orgs/{org}/debits/batch', { org }, {
  token: serviceToken(org), body: { debits }, now,
});

/**
 * ~3,000 entries over five days: batches of debits (with attribution and
 * metadata), holds and their captures, a purchase and a dispute of it.
 * Answers the day boundaries (ms).
 */
async function writeHistory(w, org, stripe) {
  await putCardOnFile(w, org);
  const bought = await paidPurchase(w, org, 'business');
  const res = await w.setCap(org, '50000', { now: at(START) });
  assert.equal(res.status, 200, res.summary);
  const times = [];
  const captures = [];
  for (let day = 0; day < 5; day++) {
    const dayStart = START + day * DAY_MS;
    times.push(dayStart);
    for (let b = 0; b < 2; b++) {
      const items = Array.from({ length: 296 }, (_, i) => ({
        idempotency_key: randomId('bk_'),
        feature: i % 2 ? 'chat' : 'auto_triage',
        amount: '0.0' + (1 + (i % 9)),
        user_id: `u_${i % 7}`,
        project_id: `p_${i % 3}`,
        metadata: { trace: `t${day}-${b}-${i}` },
      }));
      const r = await batch(w, org, items, at(dayStart + b * 3_600_000));
      assert.equal(r.status, 200, r.summary);
      assert.ok(r.json.results.every((x) => x.status === 201), r.summary.slice(0, 300));
    }
    for (let h = 0; h < 10; h++) {
      const now = at(dayStart + 7_200_000 + h * 1000);
      const hold = await w.hold(org, '1', { now });
      assert.equal(hold.status, 201, hold.summary);
      const cap = await w.capture(org, hold.json.id, '0.5', { now });
      assert.equal(cap.status, 200, cap.summary);
      captures.push({ holdId: hold.json.id, text: cap.text });
    }
  }
  const intent = await stripe.paymentIntent(bought.payment_intent_id);
  const sent = await send(worker.base, eventPayload('charge.dispute.created', dispute(intent)));
  assert.equal(sent.status, 200, sent.text);
  return { times, captures };
}

test('archiving seals the oldest entries to R2 and every read answers exactly as before', { timeout: 600_000 }, async () => {
  let w = api(worker.base);
  const org = await w.newOrg();
  const { times, captures } = await writeHistory(w, org, stack.stripe);
  const before = await everyRead(worker.base, org, times);
  const total = (await storage(w, org)).live_entries;
  assert.ok(total >= 3000, `${total} entries written`);
  assert.equal((await segmentsOf(w, org)).length, 0, 'nothing archived under the default window');

  // The same state under a small window: the alarm seals its oldest entries.
  await worker.stop();
  worker = await startWorker({ persistTo: worker.persistTo, vars: { ...stack.workerVars, ...SMALL }, migrate: false });
  w = api(worker.base);
  const refill = await w.call('POST', '/v1/orgs/{org}/ledger/refill', { org }, { token: serviceToken(org) });
  assert.equal(refill.status, 202, refill.summary);
  const segmentsDue = Math.ceil((total - 1000) / 500);
  const settled = await waitFor(async () => {
    const s = await storage(w, org);
    return s.segments === segmentsDue && s;
  }, 60_000, 250);
  assert.ok(settled.live_entries <= 1000, `live entries ${settled.live_entries} stay within the window`);
  assert.equal(settled.archived_entries + settled.live_entries, total, 'no entry lost or doubled');
  assert.equal(settled.archived_entries, segmentsDue * 500);
  assert.ok(settled.object_bytes > 0);

  const after = await everyRead(worker.base, org, times);
  // A capture repeated within the retention gets its first answer, its
  // entry archived or not.
  for (const { holdId, text } of [captures[0], captures.at(-1)]) {
    const again = await w.capture(org, holdId, '0.5');
    assert.equal(again.text, text, `capture of ${holdId} repeated`);
  }
  assert.deepEqual(Object.keys(after), Object.keys(before));
  for (const name of Object.keys(before)) assert.equal(after[name], before[name], `${name} changed by archiving`);

  // The segments: contiguous, in R2, matching their checkpoints.
  const segments = await segmentsOf(w, org);
  assert.equal(segments.length, segmentsDue);
  const archived = [];
  let previousLast = 0;
  for (const s of segments) {
    assert.equal(s.key, `ledger/${org}/${s.first_seq}-${s.last_seq}.ndjson.gz`);
    assert.ok(s.first_seq > previousLast, 'segments follow one another');
    previousLast = s.last_seq;
    const bytes = readSegment(worker.persistTo, s.key);
    assert.equal(bytes.length, s.bytes);
    assert.equal(crypto.createHash('sha256').update(bytes).digest('hex'), s.sha256);
    const lines = zlib.gunzipSync(bytes).toString('utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, 500);
    assert.equal(lines[0].seq, s.first_seq);
    assert.equal(lines.at(-1).seq, s.last_seq);
    assert.equal(lines.at(-1).balance_after, Number(units(s.balance_after)));
    archived.push(...lines);
  }
  // The archived rows are the oldest entries of the ledger as it was read before.
  const oldestFirst = Object.keys(before).filter((k) => k.startsWith('page '))
    .flatMap((k) => JSON.parse(before[k]).data.map((e) => e.id)).reverse();
  assert.deepEqual(archived.map((e) => e.id), oldestFirst.slice(0, archived.length));
  const csvLines = before.csv.trimEnd().split('\n');
  assert.equal(csvLines.length - 1, total, 'the CSV lists every entry');

  const ok = verifyArchive(org, worker.base, worker.persistTo);
  assert.equal(ok.status, 0, `verify-archive: ${ok.stdout}${ok.stderr}`);
  assert.match(ok.stdout, /agree end to end/);

  // A segment altered in the bucket: the verifier says so, and so does a
  // read of it (its checksum no longer matches; never a wrong answer).
  const victim = segments[1];
  const bytes = readSegment(worker.persistTo, victim.key);
  const text = zlib.gunzipSync(bytes).toString('utf8').replace('"amount":', '"amount":1');
  writeSegment(worker.persistTo, victim.key, zlib.gzipSync(text));
  const bad = verifyArchive(org, worker.base, worker.persistTo);
  assert.equal(bad.status, 1, `verify-archive must fail: ${bad.stdout}${bad.stderr}`);
  assert.match(bad.stderr, new RegExp(`segment ${victim.first_seq}-${victim.last_seq}`));
  writeSegment(worker.persistTo, victim.key, bytes);
  const restored = verifyArchive(org, worker.base, worker.persistTo);
  assert.equal(restored.status, 0, `restored: ${restored.stdout}${restored.stderr}`);
});

test('without R2 debits go on and nothing is deleted; archiving catches up when R2 is back', { timeout: 300_000 }, async () => {
  // A configuration whose LEDGER_ARCHIVE binding is missing: every R2 call fails.
  const dir = tempDir();
  // Next to wrangler.toml: the same .dev.vars, build output and assets.
  const config = path.join(ROOT, `.wrangler-no-r2-${process.pid}.toml`);
  const text = fs.readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8')
    .replace(/\[\[(env\.production\.)?r2_buckets\]\]\nbinding = "LEDGER_ARCHIVE"\nbucket_name = "[^"]+"\n/g, '');
  assert.ok(!text.includes('LEDGER_ARCHIVE"'), 'the binding is gone');
  fs.writeFileSync(config, text);
  const vars = { ...SMALL, LEDGER_LIVE_ENTRIES: '200', LEDGER_SEGMENT_ENTRIES: '100' };
  let down;
  try {
    down = await startWorker({ persistTo: dir, vars, config });
  } catch (err) {
    fs.rmSync(config, { force: true });
    throw err;
  }
  let w = api(down.base);
  try {
    const org = await w.newOrg();
    const items = (n) => Array.from({ length: n }, () => ({ idempotency_key: randomId('bk_'), feature: 'chat', amount: '0.01' }));
    for (let i = 0; i < 4; i++) {
      const r = await batch(w, org, items(100));
      assert.equal(r.status, 200, r.summary);
      assert.ok(r.json.results.every((x) => x.status === 201));
    }
    // Alarms come and go; sealing fails each time and deletes nothing.
    await new Promise((r) => setTimeout(r, 6000));
    const s = await storage(w, org);
    assert.deepEqual([s.segments, s.archived_entries, s.live_entries], [0, 0, 401]);
    const debit = await w.debit(org, '0.01');
    assert.equal(debit.status, 201, debit.summary);
    assert.equal((await w.ledger(org)).length, 402);
    await down.stop();
    fs.rmSync(config, { force: true });

    // R2 is back: the next alarm seals what is due.
    down = await startWorker({ persistTo: dir, vars, migrate: false });
    w = api(down.base);
    const refill = await w.call('POST', '/v1/orgs/{org}/ledger/refill', { org }, { token: serviceToken(org) });
    assert.equal(refill.status, 202, refill.summary);
    const settled = await waitFor(async () => {
      const st = await storage(w, org);
      return st.segments === 3 && st;
    }, 60_000, 250);
    // Sealed while more than 200 are live: 402 → 302 → 202 → 102.
    assert.deepEqual([settled.archived_entries, settled.live_entries], [300, 102]);
    const entries = await w.ledger(org);
    assert.equal(entries.length, 402);
    assert.equal(new Set(entries.map((e) => e.id)).size, 402);
  } finally {
    fs.rmSync(config, { force: true });
    await down.stop();
  }
});

test('past its storage budget an organization cannot spend, and can still read', { timeout: 120_000 }, async () => {
  const full = await startWorker({ vars: { OBJECT_BYTES_BUDGET: '4096' } });
  try {
    const w = api(full.base);
    const org = await w.newOrg();
    const balance = await w.balance(org);
    const res = await w.debit(org, '1');
    assertError(res, 507, 'ledger_storage_full');
    const hold = await w.hold(org, '1');
    assertError(hold, 507, 'ledger_storage_full');
    assert.equal(await w.balance(org), balance, 'nothing was spent');
    const entries = await w.ledger(org);
    assert.deepEqual(entries.map((e) => e.kind), ['trial_grant']);
    const s = await storage(w, org);
    assert.ok(s.object_bytes > s.object_bytes_budget, JSON.stringify(s));
    assert.equal(s.object_bytes_budget, 4096);
    // The alarm after signup announced both levels, once each, and later
    // alarms announce nothing more.
    const storageEvents = async () => {
      const res = await w.call('GET', '/v1/orgs/{org}/events', { org }, { token: ownerToken(org) });
      assert.equal(res.status, 200, res.summary);
      return res.json.data.filter((e) => e.type === 'wallet.storage_high').map((e) => e.data.percent);
    };
    await waitFor(async () => (await storageEvents()).length === 2, 15_000, 250);
    for (let i = 0; i < 2; i++) {
      const refill = await w.call('POST', '/v1/orgs/{org}/ledger/refill', { org }, { token: serviceToken(org) });
      assert.equal(refill.status, 202, refill.summary);
      await new Promise((r) => setTimeout(r, 1500));
    }
    assert.deepEqual((await storageEvents()).sort(), [50, 80]);
    const [event] = (await w.call('GET', '/v1/orgs/{org}/events', { org }, { token: ownerToken(org) })).json.data;
    assert.equal(event.data.object_bytes_budget, 4096);
  } finally {
    await full.stop();
  }
});
