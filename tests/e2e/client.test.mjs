// The TypeScript client (clients/typescript) against the real worker under
// `wrangler dev`, through a relay that counts, and can drop, the answers:
// withHold captures on success and releases when the AI call throws; an
// answer lost on the way makes the client resend the same operation, which
// the ledger shows once; a 429 with Retry-After is waited out; 402 is thrown
// typed and sent once. Effects are read from the wallet and the ledger.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WalletClient, WalletError } from '../../clients/typescript/src/index.ts';
import { api, assertAmount, assertError, ledgerOf, mapLimit, serviceToken, startWorker, token, units } from './harness.mjs';
import { startRelay } from './relay.mjs';

let worker;
let w;
let relay;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
  relay = await startRelay(worker.base);
}, { timeout: 180_000 });

after(() => worker?.stop());

/** A client of `org` through the relay, as an AI feature's backend uses it. */
const clientOf = (org, options = {}) =>
  new WalletClient({ baseUrl: relay.base, org, token: serviceToken(org), timeoutMs: 5_000, ...options });

/** The relay's exchanges for one organization's route: `debits`, `usage`, … exactly, or every path under `holds/`. */
const exchangesOf = (org, route) =>
  relay.exchanges.filter((e) => {
    const pathname = new URL(e.path, 'http://x').pathname;
    const wanted = `/v1/orgs/${org}/${route}`;
    return route.endsWith('/') ? pathname.startsWith(wanted) : pathname === wanted;
  });

/** The rate card's formula over a rate of GET /v1/rates, in ten-thousandths of a credit, rounded up. */
function priceUnits(rate, { input_tokens, cached_input_tokens = 0, output_tokens }) {
  const scaled = BigInt(input_tokens - cached_input_tokens) * units(rate.input_per_million)
    + BigInt(cached_input_tokens) * units(rate.cached_input_per_million)
    + BigInt(output_tokens) * units(rate.output_per_million);
  return (scaled + 999_999n) / 1_000_000n + units(rate.per_request);
}

/** The wallet's balance and held amount, each a decimal string or BigInt ten-thousandths. */
async function assertWallet(org, balance, held) {
  const wallet = (await w.wallet(org)).json;
  const exact = (amount) => (typeof amount === 'bigint' ? amount : units(amount));
  assert.equal(units(wallet.balance), exact(balance), `balance of ${org}: ${wallet.balance}`);
  assert.equal(units(wallet.held), exact(held), `held of ${org}: ${wallet.held}`);
}

test('withHold holds, runs the call and captures what it used: one capture entry, nothing left held', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org);
  let seenHold;
  const captured = await wallet.withHold({ feature: 'chat', amount: '10', userId: 'user_ada' }, async (hold) => {
    seenHold = hold;
    await assertWallet(org, '200', '10'); // reserved while the AI call runs
    return { amount: '3.5' };
  });
  assert.equal(captured.id, seenHold.id);
  assert.equal(captured.status, 'captured');
  assertAmount(captured.captured_amount, '3.5');
  await assertWallet(org, '196.5', '0');
  const [capture, trial] = await ledgerOf(w, org, 2);
  assert.equal(trial.kind, 'trial_grant');
  assert.equal(capture.kind, 'capture');
  assertAmount(capture.amount, '3.5');
  assert.equal(capture.hold_id, seenHold.id);
  assert.equal(capture.feature, 'chat');
  assert.equal(capture.user_id, 'user_ada');
  assert.equal(captured.entry.id, capture.id);
});

test('withHold by usage: the hold is priced from the estimate, the capture from the usage the call returns, at the hold\'s rate', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org);
  const { data: card } = await wallet.rates();
  const model = 'gpt-4o-mini';
  const rate = card.find((r) => r.model === model && r.in_force);
  assert.ok(rate, JSON.stringify(card));
  const estimate = { model, input_tokens: 20_000, max_output_tokens: 4_000 };
  const used = { model, input_tokens: 20_000, cached_input_tokens: 5_000, output_tokens: 1_234 };
  const held = priceUnits(rate, { input_tokens: 20_000, output_tokens: 4_000 });
  const cost = priceUnits(rate, used);
  assert.ok(cost > 0n && cost < held);
  let seenHold;
  const captured = await wallet.withHold({ feature: 'incident_timeline', usageEstimate: estimate }, async (hold) => {
    seenHold = hold;
    assert.equal(units(hold.amount), held, 'the hold is the estimate priced at the rate in force');
    assert.equal(hold.rate_id, rate.id);
    return used;
  });
  assert.equal(captured.status, 'captured');
  assert.equal(units(captured.captured_amount), cost);
  assert.deepEqual(captured.entry.usage, { ...used, rate_id: rate.id });
  assert.deepEqual(captured.captured_usage, { ...used, rate_id: rate.id });
  assertAmount(captured.unbilled, '0');
  const balance = units('200') - cost;
  await assertWallet(org, balance, '0');
  const [entry] = await ledgerOf(w, org, 2);
  assert.equal(entry.kind, 'capture');
  assert.equal(entry.hold_id, seenHold.id);
  assert.equal(units(entry.amount), cost);
  assert.deepEqual(entry.usage, { ...used, rate_id: rate.id });

  // A call that used more than its estimate: the whole hold is captured, the rest is unbilled.
  const over = await wallet.withHold({ feature: 'chat', usageEstimate: { model, input_tokens: 100, max_output_tokens: 10 } },
    async () => ({ model, input_tokens: 100, output_tokens: 50_000 }));
  const overHeld = priceUnits(rate, { input_tokens: 100, output_tokens: 10 });
  const overCost = priceUnits(rate, { input_tokens: 100, output_tokens: 50_000 });
  assert.equal(units(over.captured_amount), overHeld);
  assert.equal(units(over.entry.unbilled), overCost - overHeld);
  assert.equal(units(over.unbilled), overCost - overHeld);
  await assertWallet(org, balance - overHeld, '0');

  // An unknown model is refused typed (422 unknown_model), never resent.
  const before = exchangesOf(org, 'debits').length;
  await assert.rejects(wallet.debit({ feature: 'chat', usage: { model: 'no-such-model', input_tokens: 1, output_tokens: 1 } }), (err) => {
    assert.ok(err instanceof WalletError);
    assert.equal(err.code, 'unknown_model');
    assert.equal(err.status, 422);
    assert.equal(err.details.field, 'usage.model');
    return true;
  });
  assert.equal(exchangesOf(org, 'debits').length, before + 1);
});

test('withHold releases the hold and rethrows when the AI call throws: nothing captured, nothing left held', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org);
  const failure = new Error('the model provider timed out');
  let holdId;
  await assert.rejects(
    wallet.withHold({ feature: 'error_analysis', amount: '25' }, async (hold) => {
      holdId = hold.id;
      await assertWallet(org, '200', '25');
      throw failure;
    }),
    (err) => err === failure,
  );
  await assertWallet(org, '200', '0');
  // Released, not captured nor left to expire: releasing again answers as the release did.
  const again = await w.release(org, holdId);
  assert.equal(again.status, 200, again.summary);
  assert.equal(again.json.status, 'released');
  // The ledger has no capture: the next entry after the trial is this debit.
  const debit = await wallet.debit({ feature: 'chat', amount: '1' });
  const entries = await ledgerOf(w, org, 2);
  assert.deepEqual(entries.map((e) => [e.kind, e.amount]), [['debit', '1'], ['trial_grant', '200']]);
  assert.equal(entries[0].id, debit.id);
});

test('an answer lost on the way: the client resends with the same key, and the ledger has the operation once', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org, { timeoutMs: 2_000 });
  // The worker applies the first request of each of these; its answer never comes back.
  const dropped = new Set();
  relay.withhold((e) => {
    const route = `${e.method} ${new URL(e.path, 'http://x').pathname}`;
    if (!route.includes(`/v1/orgs/${org}/`) || route.endsWith('/wallet') || dropped.has(route)) return false;
    dropped.add(route);
    return true;
  });
  try {
    const debit = await wallet.debit({ feature: 'chat', amount: '7' });
    const debits = exchangesOf(org, 'debits');
    assert.equal(debits.length, 2, 'sent again after the lost answer');
    assert.ok(debits[0].withheld && !debits[1].withheld);
    assert.equal(debits[0].headers['idempotency-key'], debits[1].headers['idempotency-key'], 'the same Idempotency-Key');
    assert.equal(debits[0].requestBody, debits[1].requestBody);
    assert.equal(debits[1].status, 201, 'the resend answers the original entry');

    // withHold: the hold's answer and the capture's answer are both lost once.
    const captured = await wallet.withHold({ feature: 'chat', amount: '20' }, async () => ({ amount: '12' }));
    const holds = exchangesOf(org, 'holds');
    assert.equal(holds.length, 2);
    assert.equal(holds[0].headers['idempotency-key'], holds[1].headers['idempotency-key']);
    const captures = exchangesOf(org, 'holds/').filter((e) => e.path.endsWith('/capture'));
    assert.equal(captures.length, 2);
    assert.ok(captures[0].withheld);
    assert.equal(captured.status, 'captured');

    // A batch: resent whole, each item keeps its key, so each applies once.
    const batch = await wallet.debitBatch([{ feature: 'auto_triage', amount: '0.5' }, { feature: 'auto_triage', amount: '0.25' }]);
    const batches = exchangesOf(org, 'debits/batch');
    assert.equal(batches.length, 2);
    assert.ok(batches[0].withheld);
    assert.equal(batches[0].requestBody, batches[1].requestBody, 'the same items and keys');
    assert.deepEqual(batch.results.map((r) => r.status), [201, 201]);

    await assertWallet(org, '180.25', '0'); // 200 − 7 − 12 − 0.5 − 0.25: each once, and the one hold closed
    const entries = await ledgerOf(w, org, 5);
    assert.deepEqual(entries.map((e) => [e.kind, e.amount]), [['debit', '0.25'], ['debit', '0.5'], ['capture', '12'], ['debit', '7'], ['trial_grant', '200']]);
    assert.deepEqual(entries.slice(0, 2).map((e) => e.id), [batch.results[1].entry.id, batch.results[0].entry.id]);
    assert.equal(entries[3].id, debit.id);
    assert.equal(entries[2].id, captured.entry.id);
  } finally {
    relay.withhold(null);
  }
});

test('402 is thrown typed with its details and sent once; 409 and 422 are not resent either', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org);
  await assert.rejects(wallet.debit({ feature: 'chat', amount: '500' }), (err) => {
    assert.ok(err instanceof WalletError);
    assert.equal(err.code, 'insufficient_credits');
    assert.equal(err.status, 402);
    assertAmount(err.details.available, '200');
    assertAmount(err.details.requested, '500');
    assert.equal(err.attempts, 1);
    return true;
  });
  assert.equal(exchangesOf(org, 'debits').length, 1);

  await wallet.debit({ feature: 'chat', amount: '2' }, { idempotencyKey: 'k-once' });
  await assert.rejects(wallet.debit({ feature: 'chat', amount: '3' }, { idempotencyKey: 'k-once' }), { code: 'idempotency_key_reused', status: 409 });
  await assert.rejects(wallet.debit({ feature: 'not_a_feature', amount: '1' }), { code: 'invalid_request', status: 422 });
  await assert.rejects(wallet.hold({ feature: 'chat', amount: '999' }), { code: 'insufficient_credits', status: 402 });
  assert.equal(exchangesOf(org, 'debits').length, 4, 'each refused operation sent once');
  assert.equal(exchangesOf(org, 'holds').length, 1);
  await assertWallet(org, '198', '0');
});

test('429 rate_limited with Retry-After is waited out, then answered', { timeout: 90_000 }, async () => {
  const org = await w.newOrg();
  const viewer = token({ org, role: 'viewer', sub: 'user_viewer' });
  const wallet = clientOf(org, { token: viewer });
  // A fresh 10-second window of the usage read limit (100 per window), used up.
  await sleep(10_000 - (Date.now() % 10_000) + 50);
  const reads = await mapLimit(Array.from({ length: 105 }), 8, () => w.call('GET', '/v1/orgs/{org}/usage', { org }, { token: viewer }));
  assertError(reads.at(-1), 429, 'rate_limited');
  assert.equal(reads.at(-1).headers.get('retry-after'), '10');

  const report = await wallet.usage();
  assertAmount(report.balance, '200');
  assert.deepEqual(report.by_model, []);
  assertAmount(report.unbilled, '0');
  const usage = exchangesOf(org, 'usage');
  assert.deepEqual(usage.map((e) => e.status), [429, 200]);
  const waited = usage[1].at - usage[0].at;
  assert.ok(waited >= 10_000, `resent after ${waited} ms, Retry-After said 10 s`);
  assert.ok(waited < 20_000, `resent after ${waited} ms`);
});

test('batch debits: each item once with its own key; refused items come back as results', async () => {
  const org = await w.newOrg();
  const wallet = clientOf(org);
  const reply = await wallet.debitBatch([
    { feature: 'auto_triage', amount: '1.25' },
    { feature: 'auto_triage', amount: '1000' },
    { feature: 'auto_triage', amount: '0.75', idempotency_key: 'triage-3' },
  ]);
  assert.deepEqual(reply.results.map((r) => r.status), [201, 402, 201]);
  assert.equal(reply.results[1].error.code, 'insufficient_credits');
  assert.equal(reply.results[2].idempotency_key, 'triage-3');
  const keys = JSON.parse(exchangesOf(org, 'debits/batch')[0].requestBody).debits.map((d) => d.idempotency_key);
  assert.equal(new Set(keys).size, 3);
  await assertWallet(org, '198', '0');
  const entries = await ledgerOf(w, org, 3);
  assert.deepEqual(entries.map((e) => e.id).slice(0, 2), [reply.results[2].entry.id, reply.results[0].entry.id]);
});
