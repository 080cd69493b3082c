// Buying credits through Stripe (localstripe): the pack catalogue, the payment
// method on file, purchases that succeed, are declined, need 3-D Secure, are
// retried, and who may make them.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ROLES, TRIAL, api, assertAmount, assertError, assertRunningBalance, ledgerOf, ownerToken, randomId, serviceToken, token,
  units, waitFor,
} from './harness.mjs';
import { startStack } from './stripe.mjs';

const PACKS = [
  { id: 'starter', name: 'Starter', credits: '1000', price_cents: 1000, currency: 'usd' },
  { id: 'team', name: 'Team', credits: '5250', price_cents: 5000, currency: 'usd' },
  { id: 'business', name: 'Business', credits: '22000', price_cents: 20000, currency: 'usd' },
  { id: 'scale', name: 'Scale', credits: '120000', price_cents: 100000, currency: 'usd' },
];
const THREE_D_SECURE_CARD = '4000002500003155';

let stack;
let w; // api client

before(async () => {
  // localstripe's own webhooks reach the worker through a recording relay, so
  // a test can wait for a delivery and see the worker's answer to it.
  stack = await startStack({ webhooks: 'relay' });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

const roleToken = (org, role) => token({ org, role, sub: `user_${role}` });

function buy(org, packId, { key = randomId('key_'), tok = ownerToken(org), headers } = {}) {
  return w.call('POST', '/v1/orgs/{org}/purchases', { org }, {
    token: tok === null ? undefined : tok,
    body: { pack_id: packId },
    headers: key === null ? headers : { 'idempotency-key': key, ...headers },
  });
}

function getPurchase(org, id, tok = ownerToken(org)) {
  return w.call('GET', '/v1/orgs/{org}/purchases/{purchase_id}', { org, purchase_id: id }, { token: tok });
}

function paymentMethod(org, tok = ownerToken(org)) {
  return w.call('GET', '/v1/orgs/{org}/payment-method', { org }, { token: tok });
}

/** The development route: a Stripe test payment method becomes the org's default. */
async function putCardOnFile(org, paymentMethodId = 'pm_card_visa') {
  const res = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethodId } });
  assert.equal(res.status, 200, res.text);
  return res.json;
}

/** A new organization with a visa card on file. */
async function orgWithCard(paymentMethodId) {
  const org = await w.newOrg();
  await putCardOnFile(org, paymentMethodId);
  return org;
}

describe('catalogue and payment method', () => {
  test('GET /v1/packs lists the configured packs to anyone authenticated', async () => {
    const org = randomId('org_');
    for (const role of ROLES) {
      const res = await w.call('GET', '/v1/packs', {}, { token: roleToken(org, role) });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, PACKS);
    }
    assertError(await w.call('GET', '/v1/packs', {}, {}), 401, 'unauthorized');
  });

  test('payment-method reports none, then the card put on file, to every role', async () => {
    const org = await w.newOrg();
    const none = await paymentMethod(org);
    assert.equal(none.status, 200, none.text);
    assert.deepEqual(none.json, { has_payment_method: false });

    const attached = await putCardOnFile(org);
    assert.equal(attached.has_payment_method, true);
    for (const role of ['owner', 'admin', 'member', 'viewer']) {
      const res = await paymentMethod(org, roleToken(org, role));
      assert.equal(res.status, 200, `${role}: ${res.text}`);
      assert.deepEqual(res.json, { has_payment_method: true, type: 'card', brand: 'visa', last4: '4242' });
    }
    assertError(await paymentMethod(org, serviceToken(org)), 403, 'forbidden');
    assertError(await paymentMethod(org, ownerToken(randomId('org_'))), 403, 'forbidden');
    assertError(await paymentMethod(randomId('org_')), 404, 'wallet_not_found');
  });

  test('the development card route validates its input', async () => {
    const org = await w.newOrg();
    const bad = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: 'tok_visa' } });
    assertError(bad, 422, 'invalid_request', { field: 'payment_method' });
    const unknown = await w.req('POST', `/dev/orgs/${randomId('org_')}/payment-method`, {
      body: { payment_method: 'pm_card_visa' },
    });
    assertError(unknown, 404, 'wallet_not_found');
  });
});

describe('purchases', () => {
  test('a purchase with a card on file succeeds, credits once and shows in the ledger', async () => {
    const org = await orgWithCard();
    const res = await buy(org, 'team');
    assert.equal(res.status, 201, res.text);
    const purchase = res.json;
    assert.match(purchase.id, /^pur_[0-9a-f]{24}$/);
    assert.equal(purchase.status, 'succeeded');
    assert.equal(purchase.pack_id, 'team');
    assertAmount(purchase.credits, '5250');
    assert.equal(purchase.amount_cents, 5000);
    assert.equal(purchase.currency, 'usd');
    assert.match(purchase.payment_intent_id, /^pi_/);
    assert.equal(purchase.client_secret, undefined);
    assertAmount(purchase.credits_granted, '5250');

    assertAmount(await w.balance(org), '5450');
    const [entry, grant] = await ledgerOf(w, org, 2);
    assert.equal(grant.kind, 'trial_grant');
    assert.equal(entry.kind, 'purchase');
    assert.equal(entry.id, purchase.entry_id);
    assertAmount(entry.amount, '5250');
    assertAmount(entry.balance_after, '5450');
    assert.equal(entry.pack_id, 'team');
    assert.equal(entry.amount_cents, 5000);
    assert.equal(entry.currency, 'usd');
    assert.equal(entry.payment_intent_id, purchase.payment_intent_id);
    assert.equal(entry.purchase_id, purchase.id);

    // localstripe's own payment_intent.succeeded arrives after the answer: no second credit.
    await stack.delivery('payment_intent.succeeded', { intent: purchase.payment_intent_id });
    assertAmount(await w.balance(org), '5450');
    assert.equal((await w.ledger(org)).length, 2);

    const again = await getPurchase(org, purchase.id, roleToken(org, 'viewer'));
    assert.equal(again.status, 200, again.text);
    assert.deepEqual({ ...again.json, updated_at: undefined }, { ...purchase, updated_at: undefined });
    const [pi] = await stack.stripe.paymentIntentsOf(org);
    assert.equal(pi.id, purchase.payment_intent_id);
    assert.equal(pi.amount, 5000);
    assert.deepEqual(pi.metadata, { org_id: org, pack_id: 'team', purchase_id: purchase.id });
  });

  test('purchases add up: the running balance follows every purchase and debit', async () => {
    const org = await orgWithCard();
    for (const pack of ['starter', 'business']) {
      const res = await buy(org, pack);
      assert.equal(res.status, 201, res.text);
      assert.equal(res.json.status, 'succeeded');
    }
    const debit = await w.debit(org, '150.5');
    assert.equal(debit.status, 201, debit.text);
    const balance = await w.balance(org);
    assertAmount(balance, '23049.5'); // 200 + 1000 + 22000 - 150.5
    const entries = await ledgerOf(w, org, 4);
    assert.deepEqual(entries.map((e) => e.kind), ['debit', 'purchase', 'purchase', 'trial_grant']);
    assertRunningBalance(entries, balance);
  });

  test('a declined card leaves the balance untouched and the purchase failed', async () => {
    const org = await orgWithCard('pm_card_chargeCustomerFail');
    const res = await buy(org, 'starter');
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.status, 'failed');
    assert.equal(res.json.decline_code, 'card_declined');
    assert.equal(res.json.credits_granted, undefined);
    await stack.delivery('payment_intent.payment_failed', { purchase: res.json.id });
    assertAmount(await w.balance(org), TRIAL);
    const entries = await ledgerOf(w, org, 1); // D1 trails the Durable Object
    assert.deepEqual(entries.map((e) => e.kind), ['trial_grant']);
    const stored = await getPurchase(org, res.json.id);
    assert.equal(stored.json.status, 'failed');
    assert.equal(stored.json.decline_code, 'card_declined');
  });

  test('without a payment method on file: 409 payment_method_required, nothing charged', async () => {
    const org = await w.newOrg();
    for (let i = 0; i < 2; i++) {
      assertError(await buy(org, 'starter'), 409, 'payment_method_required');
    }
    assertAmount(await w.balance(org), TRIAL);
    assert.deepEqual(await stack.stripe.paymentIntentsOf(org), []);
  });

  test('only the owner buys: admin, member, viewer and service get 403', async () => {
    const org = await orgWithCard();
    for (const role of ['admin', 'member', 'viewer', 'service']) {
      assertError(await buy(org, 'starter', { tok: roleToken(org, role) }), 403, 'forbidden');
    }
    assertError(await buy(org, 'starter', { tok: ownerToken(randomId('org_')) }), 403, 'forbidden');
    assertError(await buy(org, 'starter', { tok: null }), 401, 'unauthorized');
    assertAmount(await w.balance(org), TRIAL);
    assert.deepEqual(await stack.stripe.paymentIntentsOf(org), []);
  });

  test('a retried purchase charges once: replays answer the same purchase', async () => {
    const org = await orgWithCard();
    const key = randomId('key_');
    const first = await buy(org, 'team', { key });
    assert.equal(first.status, 201, first.text);
    const replays = [
      ...(await Promise.all(Array.from({ length: 8 }, () => buy(org, 'team', { key })))),
      await buy(org, 'team', { key }),
    ];
    for (const replay of replays) {
      assert.equal(replay.status, 201, replay.text);
      assert.equal(replay.json.id, first.json.id);
      assert.equal(replay.json.status, 'succeeded');
      assert.equal(replay.json.payment_intent_id, first.json.payment_intent_id);
    }
    assertError(await buy(org, 'starter', { key }), 409, 'idempotency_key_reused');
    await stack.delivery('payment_intent.succeeded', { purchase: first.json.id });
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1, 'one PaymentIntent at Stripe');
    assertAmount(await w.balance(org), '5450');
    assert.equal((await ledgerOf(w, org, 2))[0].kind, 'purchase');
  });

  test('concurrent first attempts with one key charge once', async () => {
    const org = await orgWithCard();
    const key = randomId('key_');
    const answers = await Promise.all(Array.from({ length: 10 }, () => buy(org, 'starter', { key })));
    const ids = new Set();
    for (const res of answers) {
      assert.equal(res.status, 201, res.text);
      ids.add(res.json.id);
      // A request that arrives while the first is charging reports it in progress.
      assert.ok(['succeeded', 'processing'].includes(res.json.status), res.text);
    }
    assert.equal(ids.size, 1);
    const settled = await getPurchase(org, [...ids][0]);
    assert.equal(settled.json.status, 'succeeded');
    await stack.delivery('payment_intent.succeeded', { purchase: settled.json.id });
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1);
    assertAmount(await w.balance(org), '1200');
  });

  test('3-D Secure: requires_action with client_secret for the owner, credited once after authentication', async () => {
    const org = await w.newOrg();
    await putCardOnFile(org, await stack.stripe.cardPaymentMethod(THREE_D_SECURE_CARD));
    const res = await buy(org, 'starter');
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.status, 'requires_action');
    assert.match(res.json.client_secret, /^pi_.+_secret_/);
    assertAmount(await w.balance(org), TRIAL);
    const asViewer = await getPurchase(org, res.json.id, roleToken(org, 'viewer'));
    assert.equal(asViewer.json.status, 'requires_action');
    assert.equal(asViewer.json.client_secret, undefined, 'only the owner sees the client secret');

    // The owner authenticates in Stripe.js; Stripe's webhook and the purchase
    // lookup may arrive in either order, and only one credits.
    const auth = await stack.stripe.authenticate(res.json.payment_intent_id, res.json.client_secret);
    assert.equal(auth.status, 200, auth.text);
    const done = await waitFor(async () => {
      const got = await getPurchase(org, res.json.id);
      assert.equal(got.json.status, 'succeeded', got.text);
      return got.json;
    });
    assert.equal(done.client_secret, undefined);
    await stack.delivery('payment_intent.succeeded', { purchase: res.json.id });
    assertAmount(await w.balance(org), '1200');
    const entries = await ledgerOf(w, org, 2);
    assert.equal(entries[0].payment_intent_id, res.json.payment_intent_id);
    assertRunningBalance(entries, '1200');
  });

  test('validation: Idempotency-Key, pack and purchase ids', async () => {
    const org = await orgWithCard();
    assertError(await buy(org, 'starter', { key: null }), 422, 'invalid_request', { field: 'Idempotency-Key' });
    assertError(await buy(org, 'platinum'), 422, 'invalid_request', { field: 'pack_id' });
    const extra = await w.call('POST', '/v1/orgs/{org}/purchases', { org }, {
      token: ownerToken(org),
      body: { pack_id: 'starter', credits: '1000000' },
      headers: { 'idempotency-key': randomId('key_') },
    });
    assertError(extra, 422, 'invalid_request', { field: 'credits' });
    assertError(await getPurchase(org, 'pur_000000000000000000000000'), 404, 'purchase_not_found');
    assertError(await getPurchase(org, 'nonsense'), 404, 'purchase_not_found');
    assertError(await buy(randomId('org_'), 'starter'), 404, 'wallet_not_found');
    assertAmount(await w.balance(org), TRIAL);
  });
});

// Last: it stops this file's localstripe.
describe('when Stripe is unreachable', () => {
  test('Stripe routes answer 503 payment_provider_unavailable; nothing changes; AI usage goes on', async () => {
    const org = await orgWithCard();
    await stack.stripe.stop();
    // The card on file is answered by the organization's Durable Object,
    // from what it last read, even when Stripe cannot be asked again.
    const later = new Date(Date.now() + 120_000).toISOString();
    for (const now of [undefined, later]) {
      const res = await w.call('GET', '/v1/orgs/{org}/payment-method', { org }, { token: ownerToken(org), now });
      assert.deepEqual(res.json, { has_payment_method: true, type: 'card', brand: 'visa', last4: '4242' }, res.summary);
    }
    assertError(await buy(org, 'starter'), 503, 'payment_provider_unavailable');
    assertAmount(await w.balance(org), TRIAL);
    const debit = await w.debit(org, '5');
    assert.equal(debit.status, 201, debit.text);
    const packs = await w.call('GET', '/v1/packs', {}, { token: ownerToken(org) });
    assert.equal(packs.status, 200, packs.text);
  });
});
