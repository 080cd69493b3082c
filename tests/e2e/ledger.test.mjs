// The ledger lives with its organization (SPEC §7): GET …/ledger is served by
// the Durable Object (exact at once, cursor pages, from/to, streamed CSV),
// while each organization's D1 shard receives only what the dashboard
// aggregates (credit-side entries and usage rollups), and replication
// converges after a shard without tables, a refused row, an emptied shard
// and a crash between the commit and the flush.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import {
  DEV_SECRET, api, assertAmount, assertError, assertRunningBalance, migrateShard, ownerToken, randomId, serviceToken,
  startWorker, sumUnits, tempDir, token, units, waitFor,
} from './harness.mjs';
import { d1Execute, d1Query, shardOf } from './d1-local.mjs';

const DAY_MS = 86_400_000;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** An organization id the local configuration assigns to `shard`. */
function orgOn(shard) {
  for (;;) {
    const org = randomId('org_');
    if (shardOf(org) === shard) return org;
  }
}

function ledgerQuery(w, org, query = {}, tok = ownerToken(org)) {
  const qs = new URLSearchParams(query);
  w.routesCalled.add('GET /v1/orgs/{org}/ledger');
  return w.req('GET', `/v1/orgs/${org}/ledger${qs.size ? `?${qs}` : ''}`, { token: tok });
}

async function ledgerAll(w, org, query = {}) {
  const out = [];
  let cursor;
  for (let page = 0; page < 10_000; page++) {
    const res = await ledgerQuery(w, org, { ...query, limit: '100', ...(cursor ? { starting_after: cursor } : {}) });
    assert.equal(res.status, 200, res.summary);
    out.push(...res.json.data);
    if (!res.json.has_more) return out;
    cursor = res.json.data.at(-1).id;
  }
  throw new Error('pagination did not end');
}

async function usageTotal(w, org) {
  const res = await w.req('GET', `/v1/orgs/${org}/usage`, { token: ownerToken(org) });
  assert.equal(res.status, 200, res.summary);
  return res.json;
}

async function transactionIds(w, org) {
  const res = await w.req('GET', `/v1/orgs/${org}/transactions?limit=100`, { token: ownerToken(org) });
  assert.equal(res.status, 200, res.summary);
  return res.json.data.map((t) => t.id);
}

describe('the ledger from the Durable Object', () => {
  let worker;
  let w;
  before(async () => {
    worker = await startWorker();
    w = api(worker.base);
  }, { timeout: 150_000 });
  after(() => worker?.stop());

  test('an acknowledged debit is in the very next read, every time', async () => {
    const org = await w.newOrg();
    for (let i = 0; i < 25; i++) {
      const res = await w.debit(org, '0.5', { user_id: 'ann' });
      assert.equal(res.status, 201, res.summary);
      const page = await ledgerQuery(w, org, { limit: '1' });
      assert.equal(page.status, 200, page.summary);
      assert.equal(page.json.data[0].id, res.json.id, `read ${i} missed the debit just acknowledged`);
      assert.equal(page.json.data[0].balance_after, res.json.balance_after);
    }
    const entries = await ledgerAll(w, org);
    assert.equal(entries.length, 26);
    assertRunningBalance(entries, await w.balance(org));
  });

  test('from (inclusive) and to (exclusive) select by time; pages and CSV agree', async () => {
    const org = randomId('org_');
    const t0 = Date.parse('2031-05-01T00:00:00Z');
    const at = (hours) => new Date(t0 + hours * 3_600_000).toISOString();
    assert.equal((await w.signup(org, { now: at(0) })).status, 201);
    const made = [];
    for (let h = 1; h <= 30; h++) {
      const res = await w.debit(org, '0.25', { now: at(h), feature: h % 2 ? 'chat' : 'auto_triage' });
      assert.equal(res.status, 201, res.summary);
      made.push(res.json);
    }
    const between = await ledgerAll(w, org, { from: at(5), to: at(12) });
    assert.deepEqual(between.map((e) => e.id), made.slice(4, 11).reverse().map((e) => e.id), 'hours 5..11');
    assert.deepEqual((await ledgerAll(w, org, { from: at(29) })).map((e) => e.id), [made[28].id, made[29].id].reverse());
    const before1 = await ledgerAll(w, org, { to: at(1) });
    assert.deepEqual(before1.map((e) => e.kind), ['trial_grant']);
    assert.deepEqual(await ledgerAll(w, org, { from: at(40) }), []);
    assert.deepEqual(await ledgerAll(w, org, { from: at(3), to: at(3) }), []);
    // Cursor pages inside a range.
    const small = [];
    let cursor;
    for (;;) {
      const res = await ledgerQuery(w, org, { from: at(5), to: at(12), limit: '3', ...(cursor ? { starting_after: cursor } : {}) });
      assert.equal(res.status, 200, res.summary);
      assert.ok(res.json.data.length <= 3);
      small.push(...res.json.data);
      if (!res.json.has_more) break;
      cursor = res.json.data.at(-1).id;
    }
    assert.deepEqual(small, between);

    // The CSV export: the whole range, streamed, the same rows as JSON.
    const res = await fetch(`${worker.base}/v1/orgs/${org}/ledger?format=csv&from=${encodeURIComponent(at(5))}`, {
      headers: { authorization: `Bearer ${ownerToken(org)}` },
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/csv/);
    assert.match(res.headers.get('content-disposition'), new RegExp(`filename="ledger-${org}-`));
    const [header, ...rows] = (await res.text()).trimEnd().split('\r\n');
    assert.equal(header, 'id,created_at,kind,amount,balance_after,feature,user_id,project_id,hold_id,pack_id,amount_cents,currency,payment_intent_id');
    const json = await ledgerAll(w, org, { from: at(5) });
    assert.deepEqual(rows.map((r) => r.split(',').slice(0, 6).join(',')),
      json.map((e) => [e.id, e.created_at, e.kind, e.amount, e.balance_after, e.feature ?? ''].join(',')));
  });

  test('a whole history of several CSV chunks streams in order', async () => {
    const org = await w.newOrg();
    const items = Array.from({ length: 1200 }, (_, i) => ({ idempotency_key: `k${i}`, feature: 'chat', amount: '0.01' }));
    for (let i = 0; i < items.length; i += 600) {
      const res = await w.req('POST', `/v1/orgs/${org}/debits/batch`, { token: serviceToken(org), body: { debits: items.slice(i, i + 600) } });
      assert.equal(res.status, 200, res.summary);
      assert.ok(res.json.results.every((r) => r.status === 201));
    }
    const res = await fetch(`${worker.base}/v1/orgs/${org}/ledger?format=csv`, { headers: { authorization: `Bearer ${ownerToken(org)}` } });
    assert.equal(res.status, 200);
    let chunks = 0;
    let text = '';
    const decoder = new TextDecoder();
    for await (const chunk of res.body) {
      chunks++;
      text += decoder.decode(chunk, { stream: true });
    }
    assert.ok(chunks >= 2, `expected a streamed body, got ${chunks} chunk(s)`);
    const ids = text.trimEnd().split('\r\n').slice(1).map((r) => r.split(',')[0]);
    assert.equal(ids.length, 1201);
    assert.equal(new Set(ids).size, 1201);
    const seqs = ids.map((id) => Number(id.slice(3)));
    assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), 'newest first');
  });

  test('bad ledger queries are 422 naming the field; roles and organizations as before', async () => {
    const org = await w.newOrg();
    for (const [query, field] of [
      [{ from: 'yesterday' }, 'from'], [{ to: '2030-01-01' }, 'to'], [{ from: '2030-01-01T00:00:00+02:00' }, 'from'],
      [{ from: '2031-01-02T00:00:00Z', to: '2031-01-01T00:00:00Z' }, 'to'], [{ format: 'xml' }, 'format'],
      [{ format: 'csv', limit: '5' }, 'limit'], [{ limit: '101' }, 'limit'], [{ starting_after: 'hold_000000000001' }, 'starting_after'],
    ]) {
      assertError(await ledgerQuery(w, org, query), 422, 'invalid_request', { field });
    }
    for (const role of ['member', 'viewer', 'service']) {
      assertError(await ledgerQuery(w, org, {}, token({ org, role })), 403, 'forbidden');
    }
    assert.equal((await ledgerQuery(w, org, {}, token({ org, role: 'admin' }))).status, 200);
    assertError(await ledgerQuery(w, randomId('org_'), {}, ownerToken('x')), 403, 'forbidden');
    const unknown = randomId('org_');
    assertError(await ledgerQuery(w, unknown, {}), 404, 'wallet_not_found');
    assertError(await ledgerQuery(w, unknown, { format: 'csv' }), 404, 'wallet_not_found');
  });

  test('entries outlive their idempotency records', async () => {
    // An organization living three days in the past: its records are past
    // the 24 h retention at once, and the alarm prunes them.
    const org = randomId('org_');
    const past = new Date(Date.now() - 3 * DAY_MS).toISOString();
    assert.equal((await w.signup(org, { now: past })).status, 201);
    const acked = [];
    for (let i = 0; i < 10; i++) {
      const res = await w.debit(org, '1', { key: `old-${i}`, now: past });
      assert.equal(res.status, 201, res.summary);
      acked.push(res.json.id);
    }
    // The alarm ran (the shard has the usage), and pruned in the same pass.
    await waitFor(async () => (await usageTotal(w, org)).by_feature.length === 1, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    const entries = await ledgerAll(w, org);
    assert.deepEqual(entries.filter((e) => e.kind === 'debit').map((e) => e.id), [...acked].reverse());
    assertRunningBalance(entries, await w.balance(org));
    // The key itself is forgotten after its retention: the same request is decided afresh.
    const again = await w.debit(org, '1', { key: 'old-0', now: past });
    assert.equal(again.status, 201, again.summary);
    assert.notEqual(again.json.id, acked[0]);
  });
});

describe('D1 shards', () => {
  test('organizations spread over both shards by a stable hash; each shard holds only its own', { timeout: 240_000 }, async () => {
    const worker = await startWorker();
    try {
      const w = api(worker.base);
      const orgs = Array.from({ length: 16 }, () => randomId('org_'));
      for (const org of orgs) {
        assert.equal((await w.signup(org)).status, 201);
        assert.equal((await w.debit(org, '1.5', { user_id: 'ann' })).status, 201);
      }
      await waitFor(async () => {
        for (const org of orgs) if ((await transactionIds(w, org)).length !== 1) return false;
        return true;
      }, 10_000);
      const held = {};
      for (const shard of ['DB', 'DB_1']) {
        const rows = await d1Query(worker.persistTo, 'SELECT org_id, flushed_seq FROM replica_progress', { shard });
        held[shard] = new Set(rows.map((r) => r.org_id));
        // Only the credit side as rows: no debit entries are copied per row.
        const kinds = await d1Query(worker.persistTo, 'SELECT DISTINCT kind FROM ledger_entries', { shard });
        assert.ok(kinds.every((k) => k.kind === 'trial_grant'), `${shard}: ${JSON.stringify(kinds)}`);
      }
      for (const org of orgs) {
        const expected = shardOf(org);
        assert.ok(held[expected].has(org), `${org} should be on ${expected}`);
        assert.ok(!held[expected === 'DB' ? 'DB_1' : 'DB'].has(org), `${org} is on both shards`);
      }
      assert.ok(held.DB.size > 0 && held.DB_1.size > 0, 'both shards take organizations');
      for (const org of orgs) {
        const usage = await usageTotal(w, org);
        assertAmount(usage.total, '1.5');
        assert.deepEqual(usage.by_member.map((m) => [m.user_id, m.count]), [['ann', 1]]);
      }
    } finally {
      await worker.stop();
    }
  });

  test('a shard without its tables, then a refused row, then an emptied shard: debits never wait, D1 converges', { timeout: 300_000 }, async () => {
    const persistTo = tempDir();
    // DB_1 starts without its tables.
    let worker = await startWorker({ persistTo, migrate: ['DB'] });
    try {
      let w = api(worker.base);
      const org = orgOn('DB_1');
      assert.equal((await w.signup(org)).status, 201);
      let spent = [];
      const spend = async (n, amount) => {
        for (let i = 0; i < n; i++) {
          const res = await w.debit(org, amount, { user_id: 'ann', feature: i % 2 ? 'chat' : 'auto_triage' });
          assert.equal(res.status, 201, res.summary);
          spent.push(amount);
        }
      };
      await spend(10, '0.75');
      // The ledger and the balance are exact while the shard refuses.
      assert.equal((await ledgerAll(w, org)).length, 11);
      assertAmount(await w.balance(org), (200 - 7.5).toString());
      await new Promise((r) => setTimeout(r, 3_000)); // at least one failed flush
      assert.equal((await w.req('GET', `/v1/orgs/${org}/usage`, { token: ownerToken(org) })).status, 500,
        'reading a shard without tables is an internal error, never wrong figures');
      // The tables arrive; the retry (with backoff) fills them.
      await migrateShard(persistTo, 'DB_1');
      await waitFor(async () => units((await usageTotal(w, org)).total) === sumUnits(spent), 60_000, 500);
      assert.deepEqual(await transactionIds(w, org), ['le_000000000001']);

      // A row the shard refuses (a trigger standing in for a constraint a new
      // entry breaks) fails the whole flush; nothing is skipped.
      await d1Execute(persistTo, `CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_daily
        BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;`, { shard: 'DB_1' });
      // A new day, so the rollup is an insert the trigger refuses.
      const tomorrow = new Date(Date.now() + DAY_MS).toISOString();
      for (let i = 0; i < 5; i++) {
        const res = await w.debit(org, '0.5', { user_id: 'bob', now: tomorrow });
        assert.equal(res.status, 201, res.summary);
        spent.push('0.5');
      }
      await new Promise((r) => setTimeout(r, 3_000));
      const progress = await d1Query(persistTo, `SELECT flushed_seq FROM replica_progress WHERE org_id = '${org}'`, { shard: 'DB_1' });
      assert.deepEqual(progress, [{ flushed_seq: 11 }], 'the refused batch did not advance the shard');
      await d1Execute(persistTo, 'DROP TRIGGER refuse_usage;', { shard: 'DB_1' });
      await waitFor(async () => {
        const rows = await d1Query(persistTo, `SELECT sum(credits_units) AS u FROM usage_daily WHERE org_id = '${org}'`, { shard: 'DB_1' });
        return BigInt(rows[0].u ?? 0) === sumUnits(spent);
      }, 30_000, 500);

      // The shard is emptied (restored from nothing): the next flush refills
      // it from the Durable Object, exactly, without double counting.
      const before = await d1Query(persistTo, `SELECT day, feature, user_id, credits_units, entries FROM usage_daily
        WHERE org_id = '${org}' ORDER BY day, feature, user_id`, { shard: 'DB_1' });
      await d1Execute(persistTo, 'DELETE FROM ledger_entries; DELETE FROM usage_daily; DELETE FROM replica_progress;', { shard: 'DB_1' });
      assert.equal((await w.debit(org, '0.25', { user_id: 'bob', now: tomorrow })).status, 201);
      spent.push('0.25');
      await waitFor(async () => {
        const rows = await d1Query(persistTo, `SELECT sum(credits_units) AS u FROM usage_daily WHERE org_id = '${org}'`, { shard: 'DB_1' });
        return BigInt(rows[0].u ?? 0) === sumUnits(spent);
      }, 30_000, 500);
      const afterRefill = await d1Query(persistTo, `SELECT day, feature, user_id, credits_units, entries FROM usage_daily
        WHERE org_id = '${org}' ORDER BY day, feature, user_id`, { shard: 'DB_1' });
      const bob = (rows) => rows.find((r) => r.user_id === 'bob');
      assert.deepEqual(afterRefill.filter((r) => r.user_id !== 'bob'), before.filter((r) => r.user_id !== 'bob'));
      assert.deepEqual({ ...bob(afterRefill) }, { ...bob(before), credits_units: bob(before).credits_units + 2500, entries: bob(before).entries + 1 });
      assert.deepEqual(await transactionIds(w, org), ['le_000000000001']);

      // Emptied again, and this time nothing moves: the operator's refill
      // (scripts/refill-shard.mjs, the README's procedure) brings the shard
      // back without a new entry.
      await d1Execute(persistTo, 'DELETE FROM ledger_entries; DELETE FROM usage_daily; DELETE FROM replica_progress;', { shard: 'DB_1' });
      const list = path.join(persistTo, 'orgs.txt');
      fs.writeFileSync(list, `${org}\n`);
      const out = execFileSync(process.execPath, [path.join(ROOT, 'scripts/refill-shard.mjs'), '--base', worker.base, list], {
        env: { ...process.env, AUTH_JWT_SECRET: DEV_SECRET },
        encoding: 'utf8',
      });
      assert.match(out, /scheduled 1 \(DB_1: 1\), failed 0/);
      const refill = await w.req('POST', `/v1/orgs/${org}/ledger/refill`, { token: serviceToken(org) });
      assert.equal(refill.status, 202, refill.summary);
      assert.deepEqual(refill.json, { ledger_shard: 'DB_1', status: 'scheduled' });
      await waitFor(async () => {
        const rows = await d1Query(persistTo, `SELECT sum(credits_units) AS u FROM usage_daily WHERE org_id = '${org}'`, { shard: 'DB_1' });
        return BigInt(rows[0].u ?? 0) === sumUnits(spent);
      }, 15_000, 500);
      assert.deepEqual(await transactionIds(w, org), ['le_000000000001']);
      assertError(await w.req('POST', `/v1/orgs/${randomId('org_')}/ledger/refill`, { token: serviceToken('x') }), 403, 'forbidden');
      const unknown = randomId('org_');
      assertError(await w.req('POST', `/v1/orgs/${unknown}/ledger/refill`, { token: serviceToken(unknown) }), 404, 'wallet_not_found');

      // A crash between the commit and the flush: debits acknowledged, the
      // runtime killed before its alarm, restarted on the same state.
      for (let i = 0; i < 8; i++) {
        assert.equal((await w.debit(org, '1', { user_id: 'cy', now: tomorrow })).status, 201);
        spent.push('1');
      }
      await worker.kill();
      worker = await startWorker({ persistTo, migrate: [] });
      w = api(worker.base);
      await waitFor(async () => {
        const rows = await d1Query(persistTo, `SELECT sum(credits_units) AS u FROM usage_daily WHERE org_id = '${org}'`, { shard: 'DB_1' });
        return BigInt(rows[0].u ?? 0) === sumUnits(spent);
      }, 30_000, 500);
      const entries = await ledgerAll(w, org);
      assert.equal(entries.filter((e) => e.kind === 'debit').length, spent.length);
      assertRunningBalance(entries, await w.balance(org));
      // The other shard never saw this organization.
      assert.deepEqual(await d1Query(persistTo, `SELECT org_id FROM replica_progress WHERE org_id = '${org}'`, { shard: 'DB' }), []);
    } finally {
      await worker.stop();
    }
  });
});
