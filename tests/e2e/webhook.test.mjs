// POST /stripe/webhook: signatures checked as Stripe specifies (every v1, every
// configured secret, 300 s tolerance) before anything is read; each
// PaymentIntent credits at most once whatever the duplicates and their order;
// failures and disputes; everything else acknowledged and ignored.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Stripe from 'stripe';
import {
  TRIAL, api, assertAmount, assertError, assertRunningBalance, ledgerOf, ownerToken, randomId, units, waitFor,
} from './harness.mjs';
import {
  WEBHOOK_SECRET, deliver, eventPayload, nowSeconds, purchaseIdFor, signatureHeader, startStack, v1Signature,
} from './stripe.mjs';

const THREE_D_SECURE_CARD = '4000002500003155';

let stack;
let w;

before(async () => {
  // localstripe's own deliveries go through a recording relay: a test waits
  // for the one it expects and sees the worker's answer.
  stack = await startStack({ webhooks: 'relay' });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

/** A PaymentIntent as Stripe renders it, never created at Stripe (no event of its own). */
function syntheticIntent(org, { pack = 'starter', amount = 1000, received = amount, status = 'succeeded', purchaseId } = {}) {
  return {
    id: randomId('pi_'),
    object: 'payment_intent',
    amount,
    amount_received: received,
    currency: 'usd',
    status,
    client_secret: null,
    latest_charge: randomId('ch_'),
    last_payment_error: null,
    metadata: { org_id: org, pack_id: pack, ...(purchaseId ? { purchase_id: purchaseId } : {}) },
  };
}

/** A real succeeded PaymentIntent created at localstripe with our metadata. */
async function paidIntentAtStripe(org, metadata) {
  const customer = await stack.stripe.post('/v1/customers', { description: `e2e ${org}` });
  assert.equal(customer.status, 200, customer.text);
  const pm = await stack.stripe.post('/v1/payment_methods/pm_card_visa/attach', { customer: customer.json.id });
  assert.equal(pm.status, 200, pm.text);
  const pi = await stack.stripe.post('/v1/payment_intents', {
    amount: 1000,
    currency: 'usd',
    customer: customer.json.id,
    payment_method: pm.json.id,
    confirm: 'true',
    off_session: 'true',
    metadata: { org_id: org, pack_id: 'starter', ...metadata },
  });
  assert.equal(pi.status, 200, pi.text);
  assert.equal(pi.json.status, 'succeeded');
  return pi.json;
}

function send(payload, header, worker = stack.worker) {
  return deliver(worker.base, payload, header);
}

async function putCardOnFile(client, org, paymentMethod = 'pm_card_visa') {
  const res = await client.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethod } });
  assert.equal(res.status, 200, res.text);
}

function buy(client, org, packId, key = randomId('key_')) {
  return client.call('POST', '/v1/orgs/{org}/purchases', { org }, {
    token: ownerToken(org),
    body: { pack_id: packId },
    headers: { 'idempotency-key': key },
  });
}

function getPurchase(client, org, id) {
  return client.call('GET', '/v1/orgs/{org}/purchases/{purchase_id}', { org, purchase_id: id }, { token: ownerToken(org) });
}

describe('crediting exactly once', () => {
  test('the same payment_intent.succeeded delivered 20 times concurrently credits once', async () => {
    const org = await w.newOrg();
    const pi = await paidIntentAtStripe(org, {});
    const payload = eventPayload('payment_intent.succeeded', pi);
    const answers = await Promise.all(Array.from({ length: 20 }, () => send(payload, signatureHeader(payload))));
    for (const res of answers) {
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, { received: true });
    }
    assertAmount(await w.balance(org), '1200');
    await stack.delivery('payment_intent.succeeded', { intent: pi.id }); // localstripe's own, of the same event
    assertAmount(await w.balance(org), '1200');
    const [entry] = await ledgerOf(w, org, 2);
    assert.equal(entry.kind, 'purchase');
    assert.equal(entry.payment_intent_id, pi.id);
    assert.equal(entry.pack_id, 'starter');
    assertAmount(entry.amount, '1000');
    assert.equal(entry.amount_cents, 1000);
    assertAmount(entry.balance_after, '1200');
  });

  test('a webhook that arrives before the purchase answer: the purchase request does not credit again', async () => {
    const org = await w.newOrg();
    await putCardOnFile(w, org);
    const key = randomId('key_');
    const purchaseId = purchaseIdFor(org, key);
    // Stripe created and charged the PaymentIntent for this purchase and its
    // event is here first; the purchase request's own answer comes later.
    const pi = await paidIntentAtStripe(org, { purchase_id: purchaseId });
    const payload = eventPayload('payment_intent.succeeded', pi);
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '1200');
    const seen = await getPurchase(w, org, purchaseId);
    assert.equal(seen.status, 200, seen.text);
    assert.equal(seen.json.status, 'succeeded');
    assert.equal(seen.json.payment_intent_id, pi.id);

    const res = await buy(w, org, 'starter', key);
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.id, purchaseId);
    assert.equal(res.json.status, 'succeeded');
    assert.equal(res.json.payment_intent_id, pi.id);
    assertError(await buy(w, org, 'team', key), 409, 'idempotency_key_reused');
    await stack.delivery('payment_intent.succeeded', { intent: pi.id });
    assertAmount(await w.balance(org), '1200');
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1, 'no second charge');
    assertRunningBalance(await ledgerOf(w, org, 2), '1200');
  });

  test('credits come from the catalogue and what Stripe received, not from the event', async () => {
    const org = await w.newOrg();
    // Metadata says "scale" ($1,000 for 120,000) but Stripe received $10: 1,200 credits.
    const short = syntheticIntent(org, { pack: 'scale', amount: 100000, received: 1000 });
    let payload = eventPayload('payment_intent.succeeded', short);
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '1400');
    // More than the price buys the pack, nothing more.
    const over = syntheticIntent(org, { pack: 'starter', amount: 1000, received: 5000 });
    payload = eventPayload('payment_intent.succeeded', over);
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '2400');
    // Another currency, or a pack not in the catalogue, buys nothing (acknowledged, logged).
    for (const intent of [
      { ...syntheticIntent(org), currency: 'eur' },
      syntheticIntent(org, { pack: 'platinum' }),
    ]) {
      payload = eventPayload('payment_intent.succeeded', intent);
      assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    }
    assertAmount(await w.balance(org), '2400');
    const entries = await ledgerOf(w, org, 3);
    assert.deepEqual(entries.map((e) => [e.pack_id, e.amount, e.amount_cents]), [
      ['starter', '1000', 5000],
      ['scale', '1200', 1000],
      [undefined, TRIAL, undefined],
    ]);
  });
});

describe('signatures', () => {
  test('tampered body, wrong secret, stale or future timestamp, missing or malformed header: 400, nothing credited', async () => {
    const org = await w.newOrg();
    const intent = syntheticIntent(org);
    const payload = eventPayload('payment_intent.succeeded', intent);
    const tampered = payload.replace('"amount_received":1000', '"amount_received":100000');
    assert.notEqual(tampered, payload);
    const t = nowSeconds();
    const stale = t - 301; // only gets staler while the test runs
    const future = t + 320; // margin: the worker's clock reads later than ours
    const cases = {
      'tampered body': [tampered, signatureHeader(payload)],
      'wrong secret': [payload, signatureHeader(payload, 'whsec_not_ours')],
      'stale timestamp (301 s)': [payload, signatureHeader(payload, WEBHOOK_SECRET, stale)],
      'future timestamp (320 s)': [payload, signatureHeader(payload, WEBHOOK_SECRET, future)],
      'timestamp changed after signing': [payload, `t=${t + 1},v1=${v1Signature(payload, WEBHOOK_SECRET, t)}`],
      'missing header': [payload, undefined],
      'empty header': [payload, ''],
      'garbage header': [payload, 'garbage'],
      'v0 only': [payload, `t=${nowSeconds()},v0=${v1Signature(payload, WEBHOOK_SECRET)}`],
      'no timestamp': [payload, `v1=${v1Signature(payload, WEBHOOK_SECRET)}`],
    };
    for (const [name, [body, header]] of Object.entries(cases)) {
      const res = await send(body, header);
      assert.equal(res.status, 400, `${name}: ${res.text}`);
      assertError(res, 400, 'invalid_signature');
    }
    assertAmount(await w.balance(org), TRIAL);
    // D1 trails the Durable Object by up to a few seconds: wait for the trial to arrive.
    const kinds = await waitFor(async () => {
      const entries = await w.ledger(org);
      return entries.length > 0 ? entries.map((e) => e.kind) : undefined;
    }, 10_000);
    assert.deepEqual(kinds, ['trial_grant']);
    // The same event correctly signed is accepted: only the signatures were wrong.
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '1200');
  });

  test('a header with two v1 signatures where only the second matches is accepted', async () => {
    const org = await w.newOrg();
    const payload = eventPayload('payment_intent.succeeded', syntheticIntent(org));
    const t = nowSeconds();
    const header = `t=${t},v1=${v1Signature(payload, 'whsec_rotated_away', t)},v1=${v1Signature(payload, WEBHOOK_SECRET, t)}`;
    const res = await send(payload, header);
    assert.equal(res.status, 200, res.text);
    assertAmount(await w.balance(org), '1200');
  });

  test("signatures made by Stripe's own library verify", async () => {
    const org = await w.newOrg();
    const stripe = new Stripe('sk_test_e2e');
    const payload = eventPayload('payment_intent.succeeded', syntheticIntent(org));
    const header = stripe.webhooks.generateTestHeaderString({ payload, secret: WEBHOOK_SECRET });
    const res = await send(payload, header);
    assert.equal(res.status, 200, res.text);
    assertAmount(await w.balance(org), '1200');
    // And Stripe's library accepts ours.
    const ours = signatureHeader(payload);
    assert.doesNotThrow(() => stripe.webhooks.constructEvent(payload, ours, WEBHOOK_SECRET));
  });

  test('bodies over 512 KiB: 413', async () => {
    const payload = eventPayload('customer.created', { id: 'cus_big', filler: 'x'.repeat(600 * 1024) });
    assertError(await send(payload, signatureHeader(payload)), 413, 'payload_too_large');
  });
});

describe('other events', () => {
  test('unknown event types, and PaymentIntents not ours, answer 200 and change nothing', async () => {
    const org = await w.newOrg();
    const events = [
      eventPayload('customer.created', { id: 'cus_x', object: 'customer', metadata: { org_id: org } }),
      eventPayload('invoice.paid', { id: 'in_x', object: 'invoice' }),
      eventPayload('charge.succeeded', { id: 'ch_x', object: 'charge', amount: 1000, metadata: { org_id: org } }),
      eventPayload('payment_intent.succeeded', { ...syntheticIntent(org), metadata: {} }),
      eventPayload('payment_intent.succeeded', syntheticIntent(randomId('org_'))),
    ];
    for (const payload of events) {
      const res = await send(payload, signatureHeader(payload));
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json, { received: true });
    }
    assertAmount(await w.balance(org), TRIAL);
  });

  test('charge.dispute.created marks the purchase disputed and takes back only unspent credits', async () => {
    const org = await w.newOrg();
    await putCardOnFile(w, org);
    const res = await buy(w, org, 'team');
    assert.equal(res.json.status, 'succeeded', res.text);
    const debit = await w.debit(org, '300');
    assert.equal(debit.status, 201, debit.text);
    assertAmount(await w.balance(org), '5150');

    const dispute = {
      id: randomId('dp_'),
      object: 'dispute',
      amount: 5000,
      currency: 'usd',
      charge: randomId('ch_'),
      payment_intent: res.json.payment_intent_id,
      reason: 'fraudulent',
      status: 'needs_response',
      metadata: {},
    };
    const payload = eventPayload('charge.dispute.created', dispute);
    const answers = await Promise.all(Array.from({ length: 5 }, () => send(payload, signatureHeader(payload))));
    for (const answer of answers) assert.equal(answer.status, 200, answer.text);

    // 5,250 bought, 300 spent: the 5,150 still unspent go back; the balance never goes below zero.
    assertAmount(await w.balance(org), '0');
    const got = await getPurchase(w, org, res.json.id);
    assert.equal(got.json.status, 'disputed');
    assertAmount(got.json.credits_reversed, '5150');
    const entries = await ledgerOf(w, org, 4);
    const [reversal] = entries;
    assert.equal(reversal.kind, 'dispute_reversal');
    assertAmount(reversal.amount, '5150');
    assertAmount(reversal.balance_after, '0');
    assert.equal(reversal.pack_id, 'team');
    assert.equal(reversal.payment_intent_id, res.json.payment_intent_id);
    assert.equal(reversal.purchase_id, res.json.id);
    let running = 0n;
    for (const entry of [...entries].reverse()) {
      running += ['trial_grant', 'purchase'].includes(entry.kind) ? units(entry.amount) : -units(entry.amount);
      assert.equal(units(entry.balance_after), running);
    }
    // Later news about the same payment changes nothing.
    const pi = await stack.stripe.paymentIntent(res.json.payment_intent_id);
    const late = eventPayload('payment_intent.succeeded', pi);
    assert.equal((await send(late, signatureHeader(late))).status, 200);
    assertAmount(await w.balance(org), '0');
    // A dispute on a payment Stripe does not know is acknowledged.
    const unknown = eventPayload('charge.dispute.created', { ...dispute, id: randomId('dp_'), payment_intent: 'pi_unknown000' });
    assert.equal((await send(unknown, signatureHeader(unknown))).status, 200);
  });
});

describe('two webhook secrets (rotation)', () => {
  let rotating;
  let client;
  const [OLD, NEW] = ['whsec_old_e2e', 'whsec_new_e2e'];

  before(async () => {
    rotating = await startStack({ webhookSecrets: [OLD, NEW] });
    client = api(rotating.worker.base);
  }, { timeout: 180_000 });

  after(() => rotating?.stop());

  test('events signed with either configured secret are accepted, others refused', async () => {
    const org = await client.newOrg();
    for (const secret of [OLD, NEW]) {
      const payload = eventPayload('payment_intent.succeeded', syntheticIntent(org));
      const res = await send(payload, signatureHeader(payload, secret), rotating.worker);
      assert.equal(res.status, 200, `${secret}: ${res.text}`);
    }
    assertAmount(await client.balance(org), '2200');
    const payload = eventPayload('payment_intent.succeeded', syntheticIntent(org));
    assertError(await send(payload, signatureHeader(payload, WEBHOOK_SECRET), rotating.worker), 400, 'invalid_signature');
    // Stripe signs with both while rotating: one header, two signatures.
    const t = nowSeconds();
    const both = `t=${t},v1=${v1Signature(payload, OLD, t)},v1=${v1Signature(payload, NEW, t)}`;
    assert.equal((await send(payload, both, rotating.worker)).status, 200);
    assertAmount(await client.balance(org), '3200');
  });
});

// A purchase lookup (GET .../purchases/{id}) refreshes an unsettled purchase
// from Stripe, so it would settle a purchase even if the webhook did nothing.
// Here the worker reaches Stripe through a relay the test switches off before
// the webhook arrives: only the webhook can change the purchase, and the
// lookup shows what the Durable Object stored.
describe('webhooks settle purchases with Stripe out of reach', () => {
  let relayed;
  let client;

  before(async () => {
    relayed = await startStack({ apiRelay: true, webhooks: 'relay' });
    client = api(relayed.worker.base);
  }, { timeout: 180_000 });

  after(() => relayed?.stop());

  /** A purchase of `pack` on a 3-D Secure card: requires_action, nothing credited yet. */
  async function purchaseNeedingAuthentication(org, pack) {
    await putCardOnFile(client, org, await relayed.stripe.cardPaymentMethod(THREE_D_SECURE_CARD));
    const res = await buy(client, org, pack);
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.status, 'requires_action', res.text);
    return res.json;
  }

  /** Cuts the worker off from Stripe; the lookup that follows proves it tried and was refused. */
  async function cutStripeOff(org, purchase) {
    relayed.apiRelay.setOnline(false);
    const from = relayed.apiRelay.exchanges.length;
    const stored = await getPurchase(client, org, purchase.id);
    assert.equal(stored.status, 200, stored.text);
    assert.equal(stored.json.status, 'requires_action', `not refreshed: ${stored.text}`);
    const tried = relayed.apiRelay.exchanges.slice(from);
    assert.ok(tried.some((e) => e.path.includes(purchase.payment_intent_id) && !e.forwarded),
      `the lookup should have tried Stripe: ${JSON.stringify(tried.map((e) => e.path))}`);
  }

  test("3-D Secure: the webhook credits (twice delivered, once credited); the lookup that follows does not credit again", async () => {
    relayed.webhookRelay.setOnline(false); // only this test's deliveries reach the worker
    const org = await client.newOrg();
    const purchase = await purchaseNeedingAuthentication(org, 'team');
    const auth = await relayed.stripe.authenticate(purchase.payment_intent_id, purchase.client_secret);
    assert.equal(auth.status, 200, auth.text);
    await cutStripeOff(org, purchase);

    const payload = eventPayload('payment_intent.succeeded', await relayed.stripe.paymentIntent(purchase.payment_intent_id));
    const [first, second] = await Promise.all([
      send(payload, signatureHeader(payload), relayed.worker),
      send(payload, signatureHeader(payload), relayed.worker),
    ]);
    assert.equal(first.status, 200, first.text);
    assert.equal(second.status, 200, second.text);
    assertAmount(await client.balance(org), '5450');
    const settled = await getPurchase(client, org, purchase.id);
    assert.equal(settled.json.status, 'succeeded', settled.text);
    assertAmount(settled.json.credits_granted, '5250');

    // Stripe reachable again: the lookup finds the purchase settled and credits nothing more.
    relayed.apiRelay.setOnline(true);
    const looked = await getPurchase(client, org, purchase.id);
    assert.equal(looked.json.status, 'succeeded', looked.text);
    assertAmount(await client.balance(org), '5450');
    const entries = await ledgerOf(client, org, 2);
    assert.equal(entries[0].payment_intent_id, purchase.payment_intent_id);
    assertRunningBalance(entries, '5450');
  });

  test('payment_intent.payment_failed marks the purchase failed', async () => {
    relayed.webhookRelay.setOnline(false);
    const org = await client.newOrg();
    const purchase = await purchaseNeedingAuthentication(org, 'starter');
    const auth = await relayed.stripe.authenticate(purchase.payment_intent_id, purchase.client_secret, false);
    assert.equal(auth.status, 200, auth.text);
    const failed = await relayed.stripe.paymentIntent(purchase.payment_intent_id);
    assert.equal(failed.status, 'requires_payment_method');
    await cutStripeOff(org, purchase);

    const payload = eventPayload('payment_intent.payment_failed', failed);
    assert.equal((await send(payload, signatureHeader(payload), relayed.worker)).status, 200);
    const got = await getPurchase(client, org, purchase.id);
    assert.equal(got.json.status, 'failed', got.text);
    assert.equal(got.json.decline_code, 'payment_intent_authentication_failure');
    assertAmount(await client.balance(org), TRIAL);
    relayed.apiRelay.setOnline(true);
    const later = await getPurchase(client, org, purchase.id);
    assert.equal(later.json.status, 'failed', later.text);
  });

  test("localstripe's own payment_intent.succeeded delivery alone credits the purchase, answered 200", async () => {
    relayed.webhookRelay.setOnline(true);
    const org = await client.newOrg();
    const purchase = await purchaseNeedingAuthentication(org, 'starter');
    await cutStripeOff(org, purchase);
    const from = relayed.webhookRelay.exchanges.length;
    // The owner authenticates in Stripe.js; Stripe tells the worker by webhook.
    const auth = await relayed.stripe.authenticate(purchase.payment_intent_id, purchase.client_secret);
    assert.equal(auth.status, 200, auth.text);

    const delivery = await waitFor(() => relayed.webhookRelay.exchanges.slice(from).find((e) => {
      const event = JSON.parse(e.requestBody);
      return event.type === 'payment_intent.succeeded' && event.data.object.id === purchase.payment_intent_id &&
        e.status !== undefined; // answered
    }), 10_000);
    assert.equal(delivery.method, 'POST');
    assert.equal(delivery.path, '/stripe/webhook');
    assert.ok(delivery.forwarded, 'delivered to the worker');
    assert.equal(delivery.status, 200, `the worker's answer to localstripe: ${delivery.responseBody}`);
    assert.deepEqual(JSON.parse(delivery.responseBody), { received: true });

    assertAmount(await client.balance(org), '1200');
    const entries = await ledgerOf(client, org, 2);
    assert.equal(entries[0].kind, 'purchase');
    assert.equal(entries[0].payment_intent_id, purchase.payment_intent_id);
    assert.equal(entries[0].purchase_id, purchase.id);
    assertRunningBalance(entries, '1200');
    const stored = await getPurchase(client, org, purchase.id);
    assert.equal(stored.json.status, 'succeeded', stored.text);
    relayed.apiRelay.setOnline(true);
  });
});
