// Batched debits: up to 1,000 debits with their own idempotency keys, applied
// in order in one Durable Object round trip; one result per item.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  api, assertAmount, assertError, ownerToken, randomId, serviceToken, startWorker, token, units, waitFor,
} from './harness.mjs';

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });

after(() => worker?.stop());

const batch = (org, debits, { tok = serviceToken(org), rawBody, now } = {}) =>
  w.call('POST', '/v1/orgs/{org}/debits/batch', { org }, {
    token: tok,
    ...(rawBody === undefined ? { body: { debits } } : { rawBody }),
    now,
  });

const item = (amount, extra = {}) => ({ idempotency_key: randomId('bk_'), feature: 'chat', amount, ...extra });

test('items apply in order; failures do not stop the others', async () => {
  const org = await w.newOrg();
  const items = [
    item('50'),
    item('1', { feature: 'poetry' }),
    item('500'),
    item('100', { user_id: 'u1' }),
    item(5),
    item('50'),
    item('0.0001'),
  ];
  const res = await batch(org, items);
  assert.equal(res.status, 200, res.summary);
  const results = res.json.results;
  assert.equal(results.length, items.length);
  assert.deepEqual(results.map((r) => r.status), [201, 422, 402, 201, 422, 201, 402]);
  assert.deepEqual(results.map((r) => r.idempotency_key), items.map((i) => i.idempotency_key));
  assert.deepEqual(results.filter((r) => r.status === 201).map((r) => r.entry.balance_after), ['150', '50', '0']);
  assert.equal(results[1].error.field, 'debits[1].feature');
  assert.equal(results[2].error.code, 'insufficient_credits');
  assert.equal(results[3].entry.user_id, 'u1');
  assert.equal(await w.balance(org), '0');
});

test('a replayed item answers its original result; a reused key with another body is refused', async () => {
  const org = await w.newOrg();
  const first = item('3');
  const single = await w.debit(org, '4', { key: 'single-key' });
  assert.equal(single.status, 201, single.summary);
  const res = await batch(org, [first, { ...first }, { ...first, amount: '7' }, { idempotency_key: 'single-key', feature: 'chat', amount: '4' }]);
  assert.equal(res.status, 200, res.summary);
  const [a, b, c, d] = res.json.results;
  assert.equal(a.status, 201);
  assert.deepEqual(b, a, 'a repeat inside the batch is a replay');
  assert.equal(c.status, 409);
  assert.equal(c.error.code, 'idempotency_key_reused');
  assert.deepEqual(d.entry, single.json, 'a key first used on the single route replays here');
  const again = await batch(org, [first]);
  assert.deepEqual(again.json.results[0], a, 'a later batch replays it too');
  assertAmount(await w.balance(org), '193');
});

test('1,000 items in one request (over the usual 16 KiB limit), all in the ledger', async () => {
  const org = await w.newOrg();
  const items = Array.from({ length: 1000 }, (_, i) => item('0.1', { user_id: `u${i % 7}` }));
  const res = await batch(org, items);
  assert.equal(res.status, 200, res.summary);
  assert.ok(res.json.results.every((r) => r.status === 201));
  assert.equal(res.json.results.at(-1).entry.balance_after, '100');
  const ledger = await waitFor(async () => {
    const entries = await w.ledger(org);
    return entries.length === 1001 ? entries : undefined;
  }, 10_000);
  const debitUnits = ledger.filter((e) => e.kind === 'debit').reduce((sum, e) => sum + units(e.amount), 0n);
  assert.equal(debitUnits, units('100'));
});

test('batch limits and bad bodies change nothing', async () => {
  const org = await w.newOrg();
  assertError(await batch(org, []), 422, 'invalid_request', { field: 'debits' });
  assertError(await batch(org, Array.from({ length: 1001 }, () => item('0.0001'))), 422, 'invalid_request', { field: 'debits' });
  assertError(await batch(org, null, { rawBody: '{"debits": [' }), 400, 'invalid_json');
  assertError(await batch(org, null, { rawBody: JSON.stringify({ debits: [], extra: 1 }) }), 422, 'invalid_request', { field: 'extra' });
  const huge = JSON.stringify({ debits: [item('1', { metadata: { note: 'x'.repeat(400) } })] }).padEnd(600 * 1024, ' ');
  assertError(await batch(org, null, { rawBody: huge }), 413, 'payload_too_large');
  assert.equal(await w.balance(org), '200');
});

test('only service tokens of the same organization may batch', async () => {
  const org = await w.newOrg();
  for (const role of ['owner', 'admin', 'member', 'viewer']) {
    assertError(await batch(org, [item('1')], { tok: token({ org, role }) }), 403, 'forbidden');
  }
  const other = await w.newOrg();
  assertError(await batch(org, [item('1')], { tok: serviceToken(other) }), 403, 'forbidden');
  assertError(await batch(org, [item('1')], { tok: ownerToken(org) }), 403, 'forbidden');
  assertError(await batch(randomId('org_'), [item('1')]), 404, 'wallet_not_found');
  assert.equal(await w.balance(org), '200');
});

test('the cap applies item by item', async () => {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, '10')).status, 200);
  const res = await batch(org, [item('6'), item('6'), item('4')]);
  assert.deepEqual(res.json.results.map((r) => r.status), [201, 429, 201]);
  assert.equal(res.json.results[1].error.code, 'daily_cap_reached');
  assert.ok(res.json.results[1].error.resumes_at);
});
