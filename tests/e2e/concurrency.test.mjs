// Bursts of concurrent requests against one organization: the Durable Object
// must serialize them so that no invariant ever breaks.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, assertAmount, assertError, assertWalletInvariants, randomId, startWorker, sumUnits, units, waitFor,
} from './harness.mjs';

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });

after(() => worker?.stop());

/** Runs burst() while polling the wallet; every snapshot must satisfy the invariants. */
async function withWalletWatch(org, burst) {
  let done = false;
  const snapshots = [];
  const watcher = (async () => {
    for (let i = 0; i < 2000 && !done; i++) {
      const res = await w.wallet(org);
      assert.equal(res.status, 200, res.summary);
      assertWalletInvariants(res.json);
      snapshots.push(res.json);
      await sleep(10);
    }
  })();
  try {
    return await burst();
  } finally {
    done = true;
    await watcher;
    assert.ok(snapshots.length > 0, 'the wallet was never polled during the burst');
  }
}

const byStatus = (results) => {
  const counts = {};
  for (const r of results) counts[r.status] = (counts[r.status] ?? 0) + 1;
  return counts;
};

test('200 concurrent debits against credits for exactly 100: 100 × 201, 100 × 402, never negative', async () => {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, '50000')).status, 200);

  const results = await withWalletWatch(org, () =>
    Promise.all(Array.from({ length: 200 }, (_, i) => w.debit(org, '2', { key: `burst-${i}`, user_id: `user_${i % 7}` }))),
  );

  assert.deepEqual(byStatus(results), { 201: 100, 402: 100 });
  for (const r of results.filter((r) => r.status === 402)) assertError(r, 402, 'insufficient_credits');
  const accepted = results.filter((r) => r.status === 201).map((r) => r.json);
  // Serialized decisions leave every even balance from 198 down to 0 exactly once.
  const balancesAfter = accepted.map((e) => units(e.balance_after)).sort((a, b) => (a < b ? -1 : 1));
  assert.deepEqual(balancesAfter, Array.from({ length: 100 }, (_, i) => BigInt(i * 2) * 10_000n));

  const wallet = await w.wallet(org);
  assertAmount(wallet.json.balance, '0');
  assertAmount(wallet.json.spent_today, '200');
  assert.equal(wallet.json.status, 'paused_no_credits');

  const ledger = await waitFor(async () => {
    const entries = await w.ledger(org);
    const debits = entries.filter((e) => e.kind === 'debit');
    assert.equal(debits.length, 100, `ledger has ${debits.length} of 100 debits`);
    return entries;
  }, 5000);
  const debits = ledger.filter((e) => e.kind === 'debit');
  assert.equal(sumUnits(debits.map((e) => e.amount)), 200n * 10_000n);
  assert.deepEqual(new Set(debits.map((e) => e.id)), new Set(accepted.map((e) => e.id)));
  assert.equal(ledger.length, 101, 'trial grant plus 100 debits');
});

test('100 concurrent debits against a cap for 50: 50 × 201, 50 × 429', async () => {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, '100')).status, 200);
  const results = await withWalletWatch(org, () =>
    Promise.all(Array.from({ length: 100 }, () => w.debit(org, '2'))),
  );
  assert.deepEqual(byStatus(results), { 201: 50, 429: 50 });
  for (const r of results.filter((r) => r.status === 429)) assertError(r, 429, 'daily_cap_reached');
  const wallet = await w.wallet(org);
  assertAmount(wallet.json.balance, '100');
  assertAmount(wallet.json.spent_today, '100');
  assertAmount(wallet.json.cap_remaining, '0');
});

test('30 concurrent requests with one Idempotency-Key take effect once and answer alike', async () => {
  const org = await w.newOrg();
  const key = randomId('key_');
  const results = await Promise.all(Array.from({ length: 30 }, () => w.debit(org, '7', { key })));
  for (const r of results) {
    assert.equal(r.status, 201, r.summary);
    assert.deepEqual(r.json, results[0].json);
  }
  assertAmount(await w.balance(org), '193');

  const holdKey = randomId('key_');
  const holds = await Promise.all(Array.from({ length: 30 }, () => w.hold(org, '11', { key: holdKey })));
  for (const r of holds) {
    assert.equal(r.status, 201, r.summary);
    assert.deepEqual(r.json, holds[0].json);
  }
  const wallet = await w.wallet(org);
  assertAmount(wallet.json.held, '11');
  assertAmount(wallet.json.available, '182');
});

test('concurrent holds and debits share one available balance', async () => {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, '50000')).status, 200);
  // 120 requests of 2 credits each against 200 available: exactly 100 succeed.
  const results = await withWalletWatch(org, () =>
    Promise.all(Array.from({ length: 120 }, (_, i) => (i % 2 ? w.debit(org, '2') : w.hold(org, '2')))),
  );
  assert.deepEqual(byStatus(results), { 201: 100, 402: 20 });
  const holds = results.filter((r, i) => i % 2 === 0 && r.status === 201).map((r) => r.json);
  const debited = results.filter((r, i) => i % 2 === 1 && r.status === 201).length;

  // Capture half of each hold for half of them, release the rest, all at once.
  const settled = await withWalletWatch(org, () =>
    Promise.all(holds.map((h, i) => (i % 2 ? w.release(org, h.id) : w.capture(org, h.id, '1')))),
  );
  for (const r of settled) assert.equal(r.status, 200, r.summary);
  const captured = Math.ceil(holds.length / 2);
  const wallet = await w.wallet(org);
  assertWalletInvariants(wallet.json);
  assertAmount(wallet.json.held, '0');
  assertAmount(wallet.json.balance, String(200 - 2 * debited - captured));

  const ledger = await waitFor(async () => {
    const entries = await w.ledger(org);
    assert.equal(entries.length, 1 + debited + captured, `ledger has ${entries.length} entries`);
    return entries;
  }, 5000);
  assert.equal(units(ledger[0].balance_after), units(wallet.json.balance));
});
