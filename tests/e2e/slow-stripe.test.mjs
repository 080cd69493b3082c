// Auto top-up against a Stripe that hangs or loses answers (SPEC §10): while
// a charge waits on Stripe, replication to D1 and the hand-off of events go
// on (usage within 5 s, events at the receiver); and a charge resent after
// an unknown outcome repeats the first attempt (same card, same amount, same
// key) even when the owner changed the card in between. The worker reaches
// localstripe through a relay (tests/e2e/relay.mjs) that withholds answers,
// answers 503, replays answers by Idempotency-Key and refuses a key reused
// with other parameters, as Stripe does.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, assertAmount, ownerToken, token, units, waitFor } from './harness.mjs';
import { startStack } from './stripe.mjs';
import { EVENTS_SECRET, startEventReceiver } from './event-receiver.mjs';

const MASTERCARD = '5555555555554444';

let stack;
let receiver;
let w;

before(async () => {
  receiver = await startEventReceiver();
  stack = await startStack({
    apiRelay: true,
    webhooks: 'none',
    vars: { EVENTS_WEBHOOK_URL: receiver.url, EVENTS_SIGNING_SECRET: EVENTS_SECRET, EVENTS_RETRY_BASE_SECONDS: '1' },
  });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

const isCharge = (e) => e.method === 'POST' && e.path.startsWith('/v1/payment_intents');
const since = (from) => stack.apiRelay.exchanges.slice(from);
const chargeParams = (e) => Object.fromEntries(new URLSearchParams(e.requestBody));

async function putCardOnFile(org, paymentMethod) {
  const res = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethod } });
  assert.equal(res.status, 200, res.text);
}

/** An organization with a card on file and auto top-up of the starter pack below 150 credits. */
async function orgWithAutoTopUp() {
  const org = await w.newOrg();
  await putCardOnFile(org, 'pm_card_visa');
  const on = await w.call('PUT', '/v1/orgs/{org}/auto-top-up', { org }, {
    token: ownerToken(org), body: { enabled: true, threshold: '150', pack_id: 'starter' },
  });
  assert.equal(on.status, 200, on.text);
  return org;
}

const autoTopUp = async (org) => (await w.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org) })).json;
const usageTotal = async (org) => {
  const res = await w.call('GET', '/v1/orgs/{org}/usage', { org }, { token: token({ org, role: 'member', sub: 'user_member' }) });
  assert.equal(res.status, 200, res.text);
  return res.json.total;
};
const settled = (org, timeoutMs) => waitFor(async () => {
  const state = await autoTopUp(org);
  return state.in_flight === false && state;
}, timeoutMs, 500);

test('while Stripe hangs on an auto top-up charge, debits reach usage within 5 s and events still leave', { timeout: 180_000 }, async () => {
  const org = await orgWithAutoTopUp();
  const from = stack.apiRelay.exchanges.length;
  stack.apiRelay.withhold(isCharge);
  assert.equal((await w.debit(org, '60')).status, 201); // 140 left: below 150
  await waitFor(() => since(from).some((e) => isCharge(e) && e.withheld), 15_000);
  const hungAt = Date.now();

  // While the charge hangs: more debits, and a settings change (an event).
  assert.equal((await w.debit(org, '5', { user_id: 'user_ann' })).status, 201);
  assert.equal((await w.debit(org, '2.5', { user_id: 'user_bob' })).status, 201);
  const alerts = await w.call('PUT', '/v1/orgs/{org}/alerts', { org }, { token: ownerToken(org), body: { low_balance_threshold: '10' } });
  assert.equal(alerts.status, 200, alerts.text);
  const changedAt = Date.now();
  await waitFor(async () => units(await usageTotal(org)) === units('67.5'), 5_000);
  await waitFor(() => receiver.accepted(org).some((e) => e.type === 'settings.changed' && e.data.setting === 'alerts'), Math.max(0, changedAt + 5_000 - Date.now()));
  const state = await autoTopUp(org);
  assert.equal(state.in_flight, true, 'the charge still waits on Stripe');
  assert.ok(Date.now() - hungAt < 20_000, 'checked while the first attempt still hangs');
  assert.ok(!since(from).some((e) => isCharge(e) && e.status !== undefined), 'Stripe has answered no charge yet');

  // Stripe answers again: the charge's next attempt (same key) completes it, once.
  stack.apiRelay.withhold(null);
  const done = await settled(org, 60_000);
  assert.equal(done.disabled_reason, null);
  assertAmount(await w.balance(org), '1132.5'); // 200 − 67.5 + 1000
  assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1);
  receiver.assertAllSigned();
});

test('a resend after an unknown outcome repeats the first attempt although the owner changed the card', { timeout: 180_000 }, async () => {
  const org = await orgWithAutoTopUp();
  const from = stack.apiRelay.exchanges.length;
  stack.apiRelay.withhold(isCharge);
  assert.equal((await w.debit(org, '60')).status, 201);
  const first = await waitFor(() => since(from).find((e) => isCharge(e) && e.withheld), 15_000);
  const firstCard = chargeParams(first).payment_method;
  const firstAt = stack.apiRelay.exchanges.indexOf(first);

  // The owner puts another card on file while the outcome is unknown.
  const mastercard = await stack.stripe.cardPaymentMethod(MASTERCARD);
  await putCardOnFile(org, mastercard);
  // No answer comes: the charge's remaining attempts find Stripe unavailable.
  stack.apiRelay.setOnline(false);
  await waitFor(() => since(from).some((e) => isCharge(e) && !e.forwarded), 40_000, 250);
  stack.apiRelay.withhold(null);
  stack.apiRelay.setOnline(true);

  // Stripe is back: the resend (after its backoff) is the first attempt again.
  const done = await settled(org, 90_000);
  assert.equal(done.enabled, true);
  assert.equal(done.disabled_reason, null);
  const charges = since(from).filter(isCharge);
  assert.ok(charges.length >= 2, 'sent again');
  for (const charge of charges) {
    assert.deepEqual(chargeParams(charge), chargeParams(first), 'every send repeats the first one');
    assert.equal(charge.idempotencyError, undefined, `refused by Stripe: ${charge.responseBody}`);
  }
  const resent = since(firstAt).filter((e) => e.method === 'GET' && e.path.startsWith('/v1/customers/'));
  assert.deepEqual(resent, [], 'the resend did not read the default card again');
  const intents = await stack.stripe.paymentIntentsOf(org);
  assert.equal(intents.length, 1, 'one PaymentIntent at Stripe');
  assert.equal(intents[0].payment_method, firstCard);
  assert.notEqual(firstCard, mastercard);
  assert.equal(intents[0].status, 'succeeded');
  const purchases = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
  assert.equal(purchases.length, 1, 'credited once');
  assert.equal(purchases[0].payment_intent_id, intents[0].id);
  assertAmount(await w.balance(org), '1140'); // 200 − 60 + 1000
});
