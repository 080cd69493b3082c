// Priced AI usage (SPEC §12): the rate card, debits and holds priced from
// usage at the decision's instant, captures at the hold's rate with
// `unbilled`, and replays. Every expected price is computed here from
// GET /v1/rates alone, exactly, in BigInt ten-thousandths of a credit.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  api, assertAmount, assertError, ownerToken, randomId, serviceToken, startWorker, units, waitFor,
} from './harness.mjs';
import { decimal } from './money.mjs';

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });

after(() => worker?.stop());

const rates = async (now) => {
  const res = await w.call('GET', '/v1/rates', {}, { token: serviceToken('org_any'), now });
  assert.equal(res.status, 200, res.summary);
  return res.json.data;
};

const inForce = (card, model) => {
  const rate = card.find((r) => r.model === model && r.in_force);
  assert.ok(rate, `no rate in force for ${model}`);
  return rate;
};

/** The rate card's formula, rounded up to 0.0001 credit. */
function priceUnits(rate, { input_tokens, cached_input_tokens = 0, output_tokens }) {
  const scaled = BigInt(input_tokens - cached_input_tokens) * units(rate.input_per_million)
    + BigInt(cached_input_tokens) * units(rate.cached_input_per_million)
    + BigInt(output_tokens) * units(rate.output_per_million);
  return (scaled + 999_999n) / 1_000_000n + units(rate.per_request);
}

const debitUsage = (org, usage, { key = randomId('key_'), now, feature = 'chat', amount } = {}) =>
  w.debit(org, undefined, { key, now, body: { feature, usage, ...(amount === undefined ? {} : { amount }) } });

const holdEstimate = (org, usage_estimate, { key = randomId('key_'), now } = {}) =>
  w.hold(org, undefined, { key, now, body: { feature: 'chat', usage_estimate } });

test('GET /v1/rates lists every rate, ordered, with the one in force now', async () => {
  const card = await rates();
  const models = new Set(card.map((r) => r.model));
  assert.ok(models.size >= 3, 'the development card has at least three models');
  const sorted = [...card].sort((a, b) => (a.model === b.model ? Date.parse(a.effective_from) - Date.parse(b.effective_from) : a.model < b.model ? -1 : 1));
  assert.deepEqual(card, sorted);
  for (const model of models) {
    assert.equal(card.filter((r) => r.model === model && r.in_force).length, 1, model);
  }
  for (const r of card) {
    const stamp = r.effective_from.replace(/[-:]/g, '').replace(/\.\d+/, '');
    assert.equal(r.id, `rate_${r.model}_${stamp}`);
  }
  assert.ok(card.some((r) => Date.parse(r.effective_from) > Date.now()), 'a change is scheduled');
  const unauthenticated = await w.call('GET', '/v1/rates', {}, {});
  assertError(unauthenticated, 401, 'unauthorized');
  const viewer = await w.call('GET', '/v1/rates', {}, { token: ownerToken('org_x') });
  assert.equal(viewer.status, 200);
});

test('a debit priced by usage is the rate card formula, exactly, and records its usage', async () => {
  const org = await w.newOrg();
  const card = await rates();
  let balance = units('200');
  for (const [model, usage] of [
    ['gpt-4o', { input_tokens: 12_345, cached_input_tokens: 2_345, output_tokens: 678 }],
    ['gpt-4o-mini', { input_tokens: 1, output_tokens: 0 }],
    ['claude-sonnet-4', { input_tokens: 999, cached_input_tokens: 999, output_tokens: 1 }],
  ]) {
    const rate = inForce(card, model);
    const expected = priceUnits(rate, usage);
    const res = await debitUsage(org, { model, ...usage });
    assert.equal(res.status, 201, res.summary);
    assert.equal(units(res.json.amount), expected, model);
    balance -= expected;
    assert.equal(units(res.json.balance_after), balance);
    assert.deepEqual(res.json.usage, {
      model, input_tokens: usage.input_tokens, cached_input_tokens: usage.cached_input_tokens ?? 0,
      output_tokens: usage.output_tokens, rate_id: rate.id,
    });
  }
  assert.equal(units(await w.balance(org)), balance);
  const ledger = await w.ledger(org);
  assert.deepEqual(ledger.filter((e) => e.kind === 'debit').map((e) => e.usage.model), ['claude-sonnet-4', 'gpt-4o-mini', 'gpt-4o']);
});

test('a scheduled change applies at its instant and entries name their rate', async () => {
  const card = await rates();
  const change = card.find((r) => Date.parse(r.effective_from) > Date.now());
  const instant = change.effective_from;
  const before = new Date(Date.parse(instant) - 1000).toISOString();
  const org = randomId('org_');
  assert.equal((await w.signup(org, { now: before })).status, 201);
  const usage = { model: change.model, input_tokens: 10_000, cached_input_tokens: 0, output_tokens: 10_000 };
  const old = inForce(await rates(before), change.model);
  assert.notEqual(old.id, change.id);
  const first = await debitUsage(org, usage, { now: before });
  assert.equal(first.status, 201, first.summary);
  assert.equal(units(first.json.amount), priceUnits(old, usage));
  assert.equal(first.json.usage.rate_id, old.id);
  const atChange = inForce(await rates(instant), change.model);
  assert.equal(atChange.id, change.id);
  const second = await debitUsage(org, usage, { now: instant });
  assert.equal(second.status, 201, second.summary);
  assert.equal(units(second.json.amount), priceUnits(change, usage));
  assert.equal(second.json.usage.rate_id, change.id);
  assert.notEqual(first.json.amount, second.json.amount);
  const entries = await w.ledger(org);
  assert.deepEqual(entries.filter((e) => e.kind === 'debit').map((e) => e.usage.rate_id), [change.id, old.id]);
});

test('unknown models, amount with usage, and bad counts are refused and change nothing', async () => {
  const org = await w.newOrg();
  assertError(await debitUsage(org, { model: 'gpt-9', input_tokens: 1, output_tokens: 1 }), 422, 'unknown_model', { field: 'usage.model' });
  assertError(await debitUsage(org, { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 }, { amount: '1' }), 422, 'invalid_request', { field: 'amount' });
  assertError(await w.debit(org, undefined, { body: { feature: 'chat' } }), 422, 'invalid_request', { field: 'amount' });
  assertError(await debitUsage(org, { model: 'gpt-4o', input_tokens: 1, cached_input_tokens: 2, output_tokens: 1 }), 422, 'invalid_request', { field: 'usage.cached_input_tokens' });
  assertError(await debitUsage(org, { model: 'gpt-4o', input_tokens: 100_000_001, output_tokens: 1 }), 422, 'invalid_request', { field: 'usage.input_tokens' });
  assertError(await holdEstimate(org, { model: 'gpt-9', input_tokens: 1, max_output_tokens: 1 }), 422, 'unknown_model');
  // Known to the card but not yet in force at the decision's instant.
  const early = randomId('org_');
  assert.equal((await w.signup(early, { now: '2023-06-01T00:00:00Z' })).status, 201);
  assertError(await debitUsage(early, { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 }, { now: '2023-06-01T00:00:01Z' }), 422, 'unknown_model');
  const batch = await w.call('POST', '/v1/orgs/{org}/debits/batch', { org }, {
    token: serviceToken(org),
    body: { debits: [
      { idempotency_key: 'b1', feature: 'chat', usage: { model: 'gpt-9', input_tokens: 1, output_tokens: 1 } },
      { idempotency_key: 'b2', feature: 'chat', usage: { model: 'gpt-4o', input_tokens: 4_000, output_tokens: 0 } },
    ] },
  });
  assert.equal(batch.status, 200, batch.summary);
  assert.equal(batch.json.results[0].error.code, 'unknown_model');
  assert.equal(batch.json.results[1].entry.amount, '1');
  assert.equal(batch.json.results[1].entry.usage.rate_id, 'rate_gpt-4o_20240101T000000Z');
  assertAmount(await w.balance(org), '199');
});

test('replays of a priced debit answer the original; other usage under its key is 409', async () => {
  const org = await w.newOrg();
  const key = randomId('key_');
  const usage = { model: 'gpt-4o', input_tokens: 40_000, output_tokens: 1_000 };
  const first = await debitUsage(org, usage, { key });
  assert.equal(first.status, 201, first.summary);
  const again = await debitUsage(org, { ...usage, cached_input_tokens: 0 }, { key });
  assert.equal(again.status, 201);
  assert.equal(again.text, first.text, 'a replay answers the original bytes');
  assertError(await debitUsage(org, { ...usage, output_tokens: 1_001 }, { key }), 409, 'idempotency_key_reused');
  assertError(await w.debit(org, first.json.amount, { key }), 409, 'idempotency_key_reused');
  assertAmount(await w.balance(org), decimal(units('200') - units(first.json.amount)));
  assert.equal((await w.ledger(org)).filter((e) => e.kind === 'debit').length, 1);
});

test('a hold from usage_estimate is captured by usage at its rate: below, equal, above (unbilled)', async () => {
  const org = await w.newOrg();
  const rate = inForce(await rates(), 'gpt-4o');
  const estimate = { model: 'gpt-4o', input_tokens: 10_000, max_output_tokens: 2_000 };
  const held = priceUnits(rate, { input_tokens: 10_000, output_tokens: 2_000 });
  let balance = units('200');
  const cases = [
    ['below', { input_tokens: 8_000, cached_input_tokens: 3_000, output_tokens: 500 }],
    ['equal', { input_tokens: 10_000, output_tokens: 2_000 }],
    ['above', { input_tokens: 30_000, output_tokens: 9_000 }],
  ];
  for (const [name, used] of cases) {
    const hold = await holdEstimate(org, estimate);
    assert.equal(hold.status, 201, hold.summary);
    assert.equal(units(hold.json.amount), held, name);
    assert.equal(hold.json.rate_id, rate.id);
    assert.deepEqual(hold.json.usage_estimate, estimate);
    const wallet = await w.wallet(org);
    assert.equal(units(wallet.json.held), held);
    const cost = priceUnits(rate, used);
    const res = await w.capture(org, hold.json.id, undefined, { body: { usage: { model: 'gpt-4o', ...used } } });
    assert.equal(res.status, 200, res.summary);
    const taken = cost < held ? cost : held;
    assert.equal(units(res.json.captured_amount), taken, name);
    assert.equal(units(res.json.entry.amount), taken);
    assert.equal(res.json.entry.usage.rate_id, rate.id);
    const unbilled = cost - taken;
    assert.equal(units(res.json.unbilled), unbilled);
    if (unbilled > 0n) {
      assert.equal(name, 'above');
      assert.equal(units(res.json.entry.unbilled), unbilled);
    } else {
      assert.equal(res.json.entry.unbilled, undefined, name);
    }
    balance -= taken;
    const after = await w.wallet(org);
    assert.equal(units(after.json.balance), balance);
    assert.equal(units(after.json.held), 0n);
    // The same capture again answers as the first; other usage is refused.
    const again = await w.capture(org, hold.json.id, undefined, { body: { usage: { model: 'gpt-4o', ...used } } });
    assert.equal(again.status, 200, again.summary);
    assert.deepEqual(again.json, res.json);
    assertError(await w.capture(org, hold.json.id, undefined, { body: { usage: { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 } } }), 409, 'hold_not_active');
  }
  // A hold placed by amount is not captured by usage.
  const plain = await w.hold(org, '1');
  assertError(await w.capture(org, plain.json.id, undefined, { body: { usage: { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 } } }), 422, 'invalid_request', { field: 'usage' });
});

test('an underestimated capture never crosses the balance or the cap', async () => {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, '5')).status, 200);
  const estimate = { model: 'gpt-4o', input_tokens: 4_000, max_output_tokens: 3_000 }; // 1 + 3 = 4 credits
  const hold = await holdEstimate(org, estimate);
  assert.equal(hold.status, 201, hold.summary);
  assertAmount(hold.json.amount, '4');
  const res = await w.capture(org, hold.json.id, undefined, {
    body: { usage: { model: 'gpt-4o', input_tokens: 100_000, output_tokens: 100_000 } }, // 125 credits
  });
  assert.equal(res.status, 200, res.summary);
  assertAmount(res.json.entry.amount, '4');
  assertAmount(res.json.entry.unbilled, '121');
  const wallet = await w.wallet(org);
  assertAmount(wallet.json.spent_today, '4');
  assertAmount(wallet.json.balance, '196');
  assert.ok(units(wallet.json.spent_today) <= units(wallet.json.daily_cap));
});

test('usage by_model matches the entries, with the unbilled total', async () => {
  const org = await w.newOrg();
  const spend = [
    { model: 'gpt-4o', input_tokens: 20_000, cached_input_tokens: 5_000, output_tokens: 1_500 },
    { model: 'gpt-4o', input_tokens: 3_000, output_tokens: 700 },
    { model: 'gpt-4o-mini', input_tokens: 50_000, output_tokens: 9_000 },
    { model: 'claude-sonnet-4', input_tokens: 2_000, output_tokens: 400 },
  ];
  for (const usage of spend) assert.equal((await debitUsage(org, usage)).status, 201);
  assert.equal((await w.debit(org, '2')).status, 201, 'a debit by amount is not by model');
  const hold = await holdEstimate(org, { model: 'gpt-4o-mini', input_tokens: 1_000, max_output_tokens: 100 });
  const captured = await w.capture(org, hold.json.id, undefined, {
    body: { usage: { model: 'gpt-4o-mini', input_tokens: 100_000, output_tokens: 10_000 } },
  });
  assert.equal(captured.status, 200, captured.summary);
  assert.ok(units(captured.json.unbilled) > 0n);
  // Expected figures from the ledger's entries alone.
  const entries = (await w.ledger(org)).filter((e) => e.usage);
  const expected = new Map();
  for (const e of entries) {
    const line = expected.get(e.usage.model) ?? { model: e.usage.model, credits: 0n, count: 0, input_tokens: 0, output_tokens: 0, unbilled: 0n };
    line.credits += units(e.amount);
    line.count += 1;
    line.input_tokens += e.usage.input_tokens;
    line.output_tokens += e.usage.output_tokens;
    line.unbilled += e.unbilled ? units(e.unbilled) : 0n;
    expected.set(e.usage.model, line);
  }
  const want = [...expected.values()]
    .sort((a, b) => (a.credits === b.credits ? (a.model < b.model ? -1 : 1) : a.credits > b.credits ? -1 : 1))
    .map((l) => ({ ...l, credits: decimal(l.credits), unbilled: decimal(l.unbilled) }));
  assert.equal(want.length, 3);
  const report = await waitFor(async () => {
    const res = await w.call('GET', '/v1/orgs/{org}/usage', { org }, { token: ownerToken(org) });
    assert.equal(res.status, 200, res.summary);
    assert.equal(res.json.count, 6, 'every usage entry replicated');
    return res.json;
  }, 10_000);
  assert.deepEqual(report.by_model, want);
  assert.equal(report.unbilled, captured.json.unbilled);
  const byModelCredits = want.reduce((sum, l) => sum + units(l.credits), 0n);
  assert.equal(units(report.total) - byModelCredits, units('2'), 'the total still counts debits by amount');
});
