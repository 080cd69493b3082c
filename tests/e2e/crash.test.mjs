// Durability: SIGKILL the whole runtime (wrangler and workerd) in the middle of
// a stream of debits, restart it on the same state, and check that every
// acknowledged debit is still there exactly once and D1 converges to the
// Durable Object's balance.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, assertAmount, mapLimit, startWorker, sumUnits, tempDir, units, waitFor,
} from './harness.mjs';

const LANES = 8; // concurrent request streams
// The kill comes once the load has run MIN_LOAD_MS and ACKED_BEFORE_KILL debits
// were acknowledged (or MAX_LOAD_MS passed), so it always lands mid-stream.
const MIN_LOAD_MS = 1000;
const MAX_LOAD_MS = 10_000;
const ACKED_BEFORE_KILL = 60;
const AMOUNT = '0.1';

let worker;
after(() => worker?.stop());

test('acknowledged debits survive a SIGKILL of the runtime mid-load', { timeout: 300_000 }, async (t) => {
  const persistTo = tempDir();
  worker = await startWorker({ persistTo });
  let w = api(worker.base);
  const orgs = [await w.newOrg(), await w.newOrg(), await w.newOrg()];
  // One acknowledged hold per org must survive the crash as well.
  const holds = new Map();
  for (const org of orgs) {
    const res = await w.hold(org, '5', { ttl_seconds: 3600 });
    assert.equal(res.status, 201, res.summary);
    holds.set(org, res.json.id);
  }

  const acked = []; // {org, key, entry}: debits answered 201 before the kill
  const refusedBeforeKill = [];
  let killing = false;
  let stop = false;
  const lane = async (laneNo) => {
    for (let i = 0; !stop && i < 100_000; i++) {
      const org = orgs[(laneNo + i) % orgs.length];
      const key = `crash-${laneNo}-${i}`;
      try {
        const res = await w.debit(org, AMOUNT, { key });
        if (res.status === 201) acked.push({ org, key, entry: res.json });
        else if (!killing) refusedBeforeKill.push(res.summary);
      } catch {
        // The connection died with the runtime: this debit was not acknowledged.
      }
    }
  };
  const lanes = Array.from({ length: LANES }, (_, n) => lane(n));
  const loadStart = Date.now();
  while (Date.now() - loadStart < MAX_LOAD_MS && (Date.now() - loadStart < MIN_LOAD_MS || acked.length < ACKED_BEFORE_KILL)) {
    await sleep(20);
  }
  killing = true;
  await worker.kill();
  stop = true;
  await Promise.all(lanes);

  assert.deepEqual(refusedBeforeKill, [], 'debits refused under load before the kill');
  assert.ok(acked.length >= ACKED_BEFORE_KILL, `only ${acked.length} debits acknowledged in ${MAX_LOAD_MS} ms`);
  t.diagnostic(`${acked.length} debits acknowledged before the kill, ${Date.now() - loadStart} ms into the load`);

  const restartedAt = Date.now();
  worker = await startWorker({ persistTo });
  w = api(worker.base);
  t.diagnostic(`restarted in ${Date.now() - restartedAt} ms`);

  // Every acknowledged debit replays to the very same entry: it was kept, and only once.
  const replays = await mapLimit(acked, LANES, ({ org, key }) => w.debit(org, AMOUNT, { key }));
  replays.forEach((res, i) => {
    assert.equal(res.status, 201, `replay of ${acked[i].key}: ${res.summary}`);
    assert.deepEqual(res.json, acked[i].entry, `replay of ${acked[i].key}`);
  });

  for (const org of orgs) {
    const ackedIds = acked.filter((a) => a.org === org).map((a) => a.entry.id);
    // D1 may lag behind the Durable Object after the crash, but must catch up.
    await waitFor(async () => {
      const wallet = await w.wallet(org);
      assert.equal(wallet.status, 200, wallet.summary);
      const ledger = await w.ledger(org);
      const ids = new Set(ledger.map((e) => e.id));
      assert.equal(ids.size, ledger.length, `duplicate ledger entries for ${org}`);
      for (const id of ackedIds) assert.ok(ids.has(id), `acknowledged debit ${id} missing from the ledger of ${org}`);

      const grants = ledger.filter((e) => e.kind === 'trial_grant');
      const debits = ledger.filter((e) => e.kind === 'debit');
      assert.equal(grants.length, 1, `trial grants of ${org}`);
      assert.equal(debits.length + grants.length, ledger.length, `unexpected kinds: ${ledger.map((e) => e.kind)}`);
      const ledgerBalance = units('200') - sumUnits(debits.map((e) => e.amount));
      assert.equal(units(wallet.json.balance), ledgerBalance,
        `wallet balance ${wallet.json.balance} != 200 - ${debits.length} ledger debits for ${org}`);
      assert.equal(units(ledger[0].balance_after), ledgerBalance, `newest balance_after of ${org}`);
      assertAmount(wallet.json.held, '5');
      return true;
    }, 10_000, 250);
  }

  t.diagnostic(`replayed and converged in ${Date.now() - restartedAt} ms since the restart began`);

  // The restarted runtime keeps serving debits and captures on the recovered state.
  for (const org of orgs) {
    const balance = units(await w.balance(org));
    const res = await w.debit(org, AMOUNT);
    assert.equal(res.status, 201, res.summary);
    assert.equal(units(res.json.balance_after), balance - units(AMOUNT));
    const capture = await w.capture(org, holds.get(org), '5');
    assert.equal(capture.status, 200, capture.summary);
    assert.equal(units(capture.json.entry.balance_after), balance - units(AMOUNT) - units('5'));
  }
});
