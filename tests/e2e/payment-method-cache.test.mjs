// The payment method on file is answered by the organization's Durable
// Object (SPEC §10, "No fan-out abuse"): many reads within a minute cost at
// most one Stripe request (counted at a relay in front of localstripe), a
// card the owner sets, or that a purchase reads, shows at once, and a card
// changed at Stripe behind our back shows once the minute is over.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, mapLimit, ownerToken, randomId, token } from './harness.mjs';
import { startStack } from './stripe.mjs';

const MASTERCARD = '5555555555554444';
const OTHER_VISA = '4012888888881881';

let stack;
let w;

before(async () => {
  stack = await startStack({ apiRelay: true, webhooks: 'none' });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

const viewer = (org) => token({ org, role: 'viewer', sub: 'user_viewer' });
const read = (org, now) => w.call('GET', '/v1/orgs/{org}/payment-method', { org }, { token: viewer(org), now });

/** Requests for the customer (with its default payment method) that reached Stripe since `from`. */
const customerReads = (from) => stack.apiRelay.exchanges.slice(from).filter((e) => e.method === 'GET' && e.path.startsWith('/v1/customers/'));

async function putCardOnFile(org, paymentMethod) {
  const res = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethod } });
  assert.equal(res.status, 200, res.text);
  return res.json;
}

/** Makes `paymentMethod` the customer's default at Stripe directly, as Stripe's dashboard would. */
async function changeCardAtStripe(org, paymentMethod) {
  const customers = await stack.stripe.get('/v1/customers?limit=100');
  const customer = customers.json.data.find((c) => c.metadata?.org_id === org);
  assert.ok(customer, `no Stripe customer for ${org}`);
  const attached = await stack.stripe.post(`/v1/payment_methods/${paymentMethod}/attach`, { customer: customer.id });
  assert.equal(attached.status, 200, attached.text);
  const updated = await stack.stripe.post(`/v1/customers/${customer.id}`, { invoice_settings: { default_payment_method: paymentMethod } });
  assert.equal(updated.status, 200, updated.text);
}

const card = (brand, last4) => ({ has_payment_method: true, type: 'card', brand, last4 });
const later = (seconds) => new Date(Date.now() + seconds * 1000).toISOString();

test('many reads within a minute cost at most one Stripe request; a card changed at Stripe shows after the minute', { timeout: 120_000 }, async () => {
  const org = await w.newOrg();
  assert.deepEqual((await read(org)).json, { has_payment_method: false }, 'no customer yet: nothing to ask Stripe');
  await putCardOnFile(org, 'pm_card_visa');
  const from = stack.apiRelay.exchanges.length;
  const answers = await mapLimit(Array.from({ length: 60 }), 10, () => read(org));
  for (const res of answers) assert.deepEqual(res.json, card('visa', '4242'), res.summary);
  assert.ok(customerReads(from).length <= 1, `${customerReads(from).length} Stripe requests for 60 reads`);

  // Changed at Stripe, not through us: the cached card until the minute is over.
  const mastercard = await stack.stripe.cardPaymentMethod(MASTERCARD);
  await changeCardAtStripe(org, mastercard);
  const beforeMinute = stack.apiRelay.exchanges.length;
  assert.deepEqual((await read(org, later(30))).json, card('visa', '4242'));
  assert.equal(customerReads(beforeMinute).length, 0);
  // A minute later (X-Dev-Now): read once from Stripe, however many readers at once.
  const refreshed = await Promise.all(Array.from({ length: 20 }, () => read(org, later(61))));
  for (const res of refreshed) assert.equal(res.json.last4, '4444', res.summary);
  assert.equal(customerReads(beforeMinute).length, 1, 'one Stripe request for 20 concurrent reads');
  for (let i = 0; i < 10; i++) assert.equal((await read(org, later(70))).json.last4, '4444');
  assert.equal(customerReads(beforeMinute).length, 1);
});

test('a card the owner sets, or a purchase reads, shows at once', { timeout: 120_000 }, async () => {
  const org = await w.newOrg();
  await putCardOnFile(org, 'pm_card_visa');
  assert.deepEqual((await read(org)).json, card('visa', '4242'));
  // The owner sets another card: the very next read shows it, without Stripe.
  const mastercard = await stack.stripe.cardPaymentMethod(MASTERCARD);
  const set = await putCardOnFile(org, mastercard);
  const from = stack.apiRelay.exchanges.length;
  assert.deepEqual((await read(org)).json, card(set.brand, '4444'));
  assert.equal(customerReads(from).length, 0);

  // Changed at Stripe, then a purchase reads it to charge it: shown at once too.
  const otherVisa = await stack.stripe.cardPaymentMethod(OTHER_VISA);
  await changeCardAtStripe(org, otherVisa);
  assert.equal((await read(org)).json.last4, '4444', 'cached');
  const bought = await w.call('POST', '/v1/orgs/{org}/purchases', { org }, {
    token: ownerToken(org), body: { pack_id: 'starter' }, headers: { 'idempotency-key': randomId('key_') },
  });
  assert.equal(bought.status, 201, bought.summary);
  const afterPurchase = stack.apiRelay.exchanges.length;
  assert.equal((await read(org)).json.last4, '1881');
  assert.equal(customerReads(afterPurchase).length, 0);
});
