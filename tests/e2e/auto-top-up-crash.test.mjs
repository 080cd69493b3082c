// A kill of the runtime while an auto top-up's charge is in flight: the
// charge reached Stripe but its answer never came back. After the restart
// the object sends it again with the same idempotency key (Stripe answers
// with the first PaymentIntent: the relay in front of localstripe replays
// answers by key, as Stripe does), so it is credited exactly once.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, assertAmount, ownerToken, startWorker, waitFor } from './harness.mjs';
import { startStack } from './stripe.mjs';

let stack;
let worker;

before(async () => {
  stack = await startStack({ apiRelay: true, webhooks: 'none' });
  worker = stack.worker;
}, { timeout: 180_000 });

after(async () => {
  if (worker !== stack?.worker) await worker?.stop();
  await stack?.stop();
});

test('a kill while an auto top-up is in flight neither loses nor doubles it', { timeout: 180_000 }, async () => {
  let w = api(worker.base);
  const org = await w.newOrg();
  const card = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: 'pm_card_visa' } });
  assert.equal(card.status, 200, card.text);
  const on = await w.call('PUT', '/v1/orgs/{org}/auto-top-up', { org }, {
    token: ownerToken(org), body: { enabled: true, threshold: '150', pack_id: 'starter' },
  });
  assert.equal(on.status, 200, on.text);

  // The charge reaches localstripe; its answer is withheld, so the object
  // waits for it when the runtime dies.
  const isCharge = (e) => e.method === 'POST' && e.path.startsWith('/v1/payment_intents');
  stack.apiRelay.withhold(isCharge);
  const debit = await w.debit(org, '60');
  assert.equal(debit.status, 201, debit.summary);
  await waitFor(() => stack.apiRelay.exchanges.some((e) => isCharge(e) && e.withheld), 15_000);
  const inFlight = await w.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org) });
  assert.equal(inFlight.json.in_flight, true);
  assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1, 'Stripe has the charge');
  await worker.kill();
  stack.apiRelay.withhold(null);

  worker = await startWorker({ persistTo: worker.persistTo, migrate: false, vars: stack.workerVars });
  w = api(worker.base);
  // The first request after the restart moves the wallet's clock past the
  // charge's lease (a send that got no answer is resent after 90 s).
  const later = new Date(Date.now() + 120_000).toISOString();
  assert.equal((await w.debit(org, '1', { now: later })).status, 201);
  const state = await waitFor(async () => {
    const res = await w.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org) });
    assert.equal(res.json.in_flight, false, res.text);
    return res.json;
  }, 30_000, 250);
  assert.equal(state.used_this_month, 1);
  assert.equal(state.disabled_reason, null);
  const resent = stack.apiRelay.exchanges.filter(isCharge);
  assert.ok(resent.length >= 2, 'the charge was sent again');
  assert.ok(resent.slice(1).every((e) => e.replayed), 'with the same idempotency key');
  const intents = await stack.stripe.paymentIntentsOf(org);
  assert.equal(intents.length, 1, 'one charge at Stripe');
  const purchases = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
  assert.equal(purchases.length, 1, 'credited once');
  assert.equal(purchases[0].payment_intent_id, intents[0].id);
  assert.equal(purchases[0].source, 'auto_top_up');
  assertAmount(await w.balance(org), '1139'); // 200 − 60 − 1 + 1000
});

test('while Stripe does not answer the auto top-up stays pending and is retried; a day without an answer ends it', { timeout: 180_000 }, async () => {
  const w = api(worker.base);
  const setUp = async () => {
    const org = await w.newOrg();
    const card = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: 'pm_card_visa' } });
    assert.equal(card.status, 200, card.text);
    const on = await w.call('PUT', '/v1/orgs/{org}/auto-top-up', { org }, {
      token: ownerToken(org), body: { enabled: true, threshold: '150', pack_id: 'starter' },
    });
    assert.equal(on.status, 200, on.text);
    return org;
  };
  const autoTopUp = async (org) => (await w.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org) })).json;
  const refusedSince = (from) => stack.apiRelay.exchanges.slice(from).filter((e) => !e.forwarded).length;

  // Stripe is down: every call the object makes is answered 503.
  const recovering = await setUp();
  const stuck = await setUp();
  stack.apiRelay.setOnline(false);
  const from = stack.apiRelay.exchanges.length;
  assert.equal((await w.debit(recovering, '60')).status, 201);
  assert.equal((await w.debit(stuck, '60')).status, 201);
  // Tried, and tried again after a backoff, never charged.
  await waitFor(() => refusedSince(from) >= 4, 40_000, 250);
  for (const org of [recovering, stuck]) {
    const state = await autoTopUp(org);
    assert.equal(state.in_flight, true);
    assert.equal(state.used_this_month, 1);
    assertAmount(await w.balance(org), '140');
  }

  // A day later without an answer for `stuck` (its clock moved by a request):
  // ended as failed, switched off, nothing charged.
  const dayLater = new Date(Date.now() + 24 * 3600_000).toISOString();
  assert.equal((await w.debit(stuck, '1', { now: dayLater })).status, 201);
  const ended = await waitFor(async () => {
    const state = await autoTopUp(stuck);
    return state.in_flight === false && state;
  }, 40_000, 250);
  assert.equal(ended.enabled, false);
  assert.equal(ended.disabled_reason, 'payment_failed');
  const events = (await w.call('GET', '/v1/orgs/{org}/events?limit=100', { org: stuck }, { token: ownerToken(stuck) })).json.data;
  assert.ok(events.some((e) => e.type === 'auto_top_up.failed' && e.data.reason === 'payment_failed'), JSON.stringify(events.map((e) => e.type)));

  // Stripe is back: `recovering` is charged once, at its next retry.
  stack.apiRelay.setOnline(true);
  const done = await waitFor(async () => {
    const state = await autoTopUp(recovering);
    return state.in_flight === false && state;
  }, 90_000, 500);
  assert.equal(done.disabled_reason, null);
  assertAmount(await w.balance(recovering), '1140');
  assert.equal((await stack.stripe.paymentIntentsOf(recovering)).length, 1);
  assert.equal((await stack.stripe.paymentIntentsOf(stuck)).length, 0);
  assertAmount(await w.balance(stuck), '139');
});
