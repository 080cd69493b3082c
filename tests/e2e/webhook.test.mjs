// POST /stripe/webhook: signatures checked as Stripe specifies (every v1, every
// configured secret, 300 s tolerance) before anything is read; only a purchase
// the organization started, charged to its own Stripe customer, is credited
// (SPEC §10), each PaymentIntent at most once whatever the duplicates and
// their order; failures and disputes; everything else acknowledged and
// ignored. A purchase that only a webhook can credit is made on a 3-D Secure
// card and authenticated at localstripe (`authenticatedPurchase`).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Stripe from 'stripe';
import {
  TRIAL, api, assertAmount, assertError, assertRunningBalance, ledgerOf, ownerToken, randomId, units, waitFor,
} from './harness.mjs';
import {
  WEBHOOK_SECRET, deliver, eventPayload, nowSeconds, purchaseIdFor, signatureHeader, startStack, v1Signature,
} from './stripe.mjs';
import { THREE_D_SECURE_CARD, authenticatedPurchase } from './money.mjs';

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

/**
 * A real succeeded PaymentIntent created at localstripe with our metadata,
 * charged to a new customer (not the organization's).
 */
async function paidIntentAtStripe(org, metadata, stripe = stack.stripe) {
  const customer = await stripe.post('/v1/customers', { description: `e2e ${org}` });
  assert.equal(customer.status, 200, customer.text);
  const pm = await stripe.post('/v1/payment_methods/pm_card_visa/attach', { customer: customer.json.id });
  assert.equal(pm.status, 200, pm.text);
  const pi = await stripe.post('/v1/payment_intents', {
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

/**
 * A purchase of `pack` that only a webhook can credit: on a 3-D Secure card,
 * authenticated at localstripe. localstripe's own deliveries are cut off
 * (the recording relay answers them 503; localstripe never retries), so only
 * the test's deliveries reach the worker. Returns `{purchase, intent}`.
 */
async function pendingPurchase(org, pack, opts) {
  stack.webhookRelay.setOnline(false);
  return authenticatedPurchase(w, stack.stripe, org, pack, opts);
}

describe('crediting exactly once', () => {
  test('the same payment_intent.succeeded delivered 20 times concurrently credits once', async () => {
    const org = await w.newOrg();
    await putCardOnFile(w, org, await stack.stripe.cardPaymentMethod(THREE_D_SECURE_CARD));
    stack.webhookRelay.setOnline(true); // localstripe's own delivery of the same event comes too
    const res = await buy(w, org, 'starter');
    assert.equal(res.json.status, 'requires_action', res.text);
    const auth = await stack.stripe.authenticate(res.json.payment_intent_id, res.json.client_secret);
    assert.equal(auth.status, 200, auth.text);
    const pi = await stack.stripe.paymentIntent(res.json.payment_intent_id);
    const payload = eventPayload('payment_intent.succeeded', pi);
    const answers = await Promise.all(Array.from({ length: 20 }, () => send(payload, signatureHeader(payload))));
    for (const answer of answers) {
      assert.equal(answer.status, 200, answer.text);
      assert.deepEqual(answer.json, { received: true });
    }
    assertAmount(await w.balance(org), '1200');
    await stack.delivery('payment_intent.succeeded', { intent: pi.id }); // localstripe's own
    assertAmount(await w.balance(org), '1200');
    const [entry] = await ledgerOf(w, org, 2);
    assert.equal(entry.kind, 'purchase');
    assert.equal(entry.payment_intent_id, pi.id);
    assert.equal(entry.purchase_id, res.json.id);
    assert.equal(entry.pack_id, 'starter');
    assertAmount(entry.amount, '1000');
    assert.equal(entry.amount_cents, 1000);
    assertAmount(entry.balance_after, '1200');
    const settled = await getPurchase(w, org, res.json.id);
    assert.equal(settled.json.status, 'succeeded', settled.text);
  });

  test('credits come from the purchase and what Stripe received, not from the event', async () => {
    const org = await w.newOrg();
    // The event says "scale" ($1,000 for 120,000) and $10 received for a team
    // purchase ($50 for 5,250): the purchase's pack, pro rata: 1,050 credits.
    const { intent: team } = await pendingPurchase(org, 'team');
    let payload = eventPayload('payment_intent.succeeded', {
      ...team, amount_received: 1000, metadata: { ...team.metadata, pack_id: 'scale' },
    });
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '1250');
    // More than the price buys the pack, nothing more.
    const { intent: starter } = await pendingPurchase(org, 'starter', { cardOnFile: true });
    payload = eventPayload('payment_intent.succeeded', { ...starter, amount_received: 5000 });
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '2250');
    // Another currency buys nothing (acknowledged, logged); the true event still credits.
    const { intent: third } = await pendingPurchase(org, 'starter', { cardOnFile: true });
    payload = eventPayload('payment_intent.succeeded', { ...third, currency: 'eur' });
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '2250');
    payload = eventPayload('payment_intent.succeeded', third);
    assert.equal((await send(payload, signatureHeader(payload))).status, 200);
    assertAmount(await w.balance(org), '3250');
    const entries = await ledgerOf(w, org, 4);
    assert.deepEqual(entries.map((e) => [e.payment_intent_id, e.pack_id, e.amount, e.amount_cents]), [
      [third.id, 'starter', '1000', 1000],
      [starter.id, 'starter', '1000', 5000],
      [team.id, 'team', '1050', 1000],
      [undefined, undefined, TRIAL, undefined],
    ]);
  });
});

describe('only our purchases credit (SPEC §10)', () => {
  test('a signed payment_intent.succeeded naming only {org_id, pack_id} credits nothing: 200, no ledger entry', async () => {
    const org = await w.newOrg();
    stack.webhookRelay.setOnline(true);
    // Never created at Stripe, and no customer.
    const synthetic = syntheticIntent(org);
    // Created and paid at Stripe (another customer), metadata naming only the
    // organization and a pack: localstripe delivers its own event for it too.
    const paid = await paidIntentAtStripe(org, {});
    for (const intent of [synthetic, paid, { ...synthetic, id: randomId('pi_'), metadata: { org_id: org, pack_id: 'scale' } }]) {
      const payload = eventPayload('payment_intent.succeeded', intent);
      const answers = await Promise.all([1, 2].map(() => send(payload, signatureHeader(payload))));
      for (const res of answers) {
        assert.equal(res.status, 200, res.text);
        assert.deepEqual(res.json, { received: true });
      }
    }
    await stack.delivery('payment_intent.succeeded', { intent: paid.id });
    assertAmount(await w.balance(org), TRIAL);
    const entries = await w.ledger(org);
    assert.deepEqual(entries.map((e) => e.kind), ['trial_grant'], 'no ledger entry');
    assert.deepEqual(await stack.stripe.paymentIntentsOf(org).then((pis) => pis.map((pi) => pi.id)), [paid.id]);
  });

  test('an intent naming our purchase but another customer credits nothing; the genuine one credits once', async () => {
    const org = await w.newOrg();
    const { purchase, intent } = await pendingPurchase(org, 'starter');
    assert.match(intent.customer, /^cus_/);
    assert.equal(intent.metadata.purchase_id, purchase.id);
    // Paid at Stripe by someone else, with our purchase's metadata.
    const foreign = await paidIntentAtStripe(org, { purchase_id: purchase.id });
    assert.notEqual(foreign.customer, intent.customer);
    const other = await w.newOrg();
    const { purchase: otherPurchase, intent: otherIntent } = await pendingPurchase(other, 'starter');
    const impostors = {
      'paid by another customer': foreign,
      'our intent, another customer': { ...intent, customer: foreign.customer },
      'our intent, no customer': { ...intent, customer: null },
      'another organization\'s purchase named as ours': { ...otherIntent, metadata: { ...otherIntent.metadata, org_id: org } },
      'a purchase id this organization never started': { ...intent, id: randomId('pi_'), metadata: { ...intent.metadata, purchase_id: purchaseIdFor(org, 'never-started') } },
      'charged to our customer, naming no purchase': { ...intent, id: randomId('pi_'), metadata: { org_id: org, pack_id: 'starter' } },
    };
    for (const [name, body] of Object.entries(impostors)) {
      const payload = eventPayload('payment_intent.succeeded', body);
      const res = await send(payload, signatureHeader(payload));
      assert.equal(res.status, 200, `${name}: ${res.text}`);
      assert.deepEqual(res.json, { received: true });
      assertAmount(await w.balance(org), TRIAL, name);
    }
    assert.deepEqual((await w.ledger(org)).map((e) => e.kind), ['trial_grant']);
    assertAmount(await w.balance(other), TRIAL, "the other organization's purchase is not credited either");

    const genuine = eventPayload('payment_intent.succeeded', intent);
    for (const res of await Promise.all([1, 2, 3].map(() => send(genuine, signatureHeader(genuine))))) {
      assert.equal(res.status, 200, res.text);
    }
    assertAmount(await w.balance(org), '1200');
    const entries = await ledgerOf(w, org, 2);
    assert.equal(entries[0].kind, 'purchase');
    assert.equal(entries[0].payment_intent_id, intent.id);
    assert.equal(entries[0].purchase_id, purchase.id);
    assertRunningBalance(entries, '1200');
    // The impostor paid by another customer, delivered again after the
    // genuine credit, still credits nothing; the purchase follows its own intent.
    const again = eventPayload('payment_intent.succeeded', foreign);
    assert.equal((await send(again, signatureHeader(again))).status, 200);
    assertAmount(await w.balance(org), '1200');
    const shown = await getPurchase(w, org, purchase.id);
    assert.equal(shown.json.status, 'succeeded', shown.text);
    assert.equal(shown.json.payment_intent_id, intent.id);
    assertAmount(shown.json.credits_granted, '1000');
    assertAmount(await w.balance(other), TRIAL);
    assert.equal(otherPurchase.status, 'requires_action');
  });
});

describe('signatures', () => {
  test('tampered body, wrong secret, stale or future timestamp, missing or malformed header: 400, nothing credited', async () => {
    const org = await w.newOrg();
    const { intent } = await pendingPurchase(org, 'starter');
    const payload = eventPayload('payment_intent.succeeded', { ...intent, amount_received: 1000 });
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
    const { intent } = await pendingPurchase(org, 'starter');
    const payload = eventPayload('payment_intent.succeeded', intent);
    const t = nowSeconds();
    const header = `t=${t},v1=${v1Signature(payload, 'whsec_rotated_away', t)},v1=${v1Signature(payload, WEBHOOK_SECRET, t)}`;
    const res = await send(payload, header);
    assert.equal(res.status, 200, res.text);
    assertAmount(await w.balance(org), '1200');
  });

  test("signatures made by Stripe's own library verify", async () => {
    const org = await w.newOrg();
    const stripe = new Stripe('sk_test_e2e');
    const { intent } = await pendingPurchase(org, 'starter');
    const payload = eventPayload('payment_intent.succeeded', intent);
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
    // Only the test's deliveries: localstripe's own would credit the purchases too.
    rotating = await startStack({ webhookSecrets: [OLD, NEW], webhooks: 'none' });
    client = api(rotating.worker.base);
  }, { timeout: 180_000 });

  after(() => rotating?.stop());

  test('events signed with either configured secret are accepted, others refused', async () => {
    const org = await client.newOrg();
    const pending = async (cardOnFile) => (await authenticatedPurchase(client, rotating.stripe, org, 'starter', { cardOnFile })).intent;
    for (const [i, secret] of [OLD, NEW].entries()) {
      const payload = eventPayload('payment_intent.succeeded', await pending(i > 0));
      const res = await send(payload, signatureHeader(payload, secret), rotating.worker);
      assert.equal(res.status, 200, `${secret}: ${res.text}`);
    }
    assertAmount(await client.balance(org), '2200');
    const payload = eventPayload('payment_intent.succeeded', await pending(true));
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

  // The charge reaches Stripe but its answer is held back (the relay forwards
  // it and withholds the answer), so the events arrive while the purchase
  // request still waits; the worker's next attempt (after its 25 s timeout)
  // gets the answer, which must not credit again.
  test('a webhook that arrives before the purchase answer credits it; the answer, coming later, does not credit again', { timeout: 120_000 }, async () => {
    relayed.webhookRelay.setOnline(false);
    relayed.apiRelay.setOnline(true);
    const org = await client.newOrg();
    await putCardOnFile(client, org);
    const key = randomId('key_');
    const purchaseId = purchaseIdFor(org, key);
    const isCharge = (e) => e.method === 'POST' && e.path.split('?')[0] === '/v1/payment_intents';
    const from = relayed.apiRelay.exchanges.length;
    relayed.apiRelay.withhold(isCharge);
    let answer;
    let pi;
    let foreign;
    let seen;
    try {
      // Settled with the test even if it fails half-way (no stray rejection).
      const pending = buy(client, org, 'starter', key).catch((err) => ({ status: 'no answer', text: String(err) }));
      await waitFor(() => relayed.apiRelay.exchanges.slice(from).some((e) => isCharge(e) && e.withheld), 15_000, 50);
      [pi] = await relayed.stripe.paymentIntentsOf(org);
      assert.equal(pi.status, 'succeeded');
      assert.equal(pi.metadata.purchase_id, purchaseId);

      // First, a payment by another customer naming this very purchase: nothing.
      foreign = await paidIntentAtStripe(org, { purchase_id: purchaseId }, relayed.stripe);
      const impostor = eventPayload('payment_intent.succeeded', foreign);
      assert.equal((await send(impostor, signatureHeader(impostor), relayed.worker)).status, 200);
      assertAmount(await client.balance(org), TRIAL);

      // Then Stripe's event for the real charge: credited, once.
      const payload = eventPayload('payment_intent.succeeded', pi);
      const delivered = await Promise.all([1, 2].map(() => send(payload, signatureHeader(payload), relayed.worker)));
      for (const res of delivered) assert.equal(res.status, 200, res.text);
      assertAmount(await client.balance(org), '1200');
      seen = await getPurchase(client, org, purchaseId);
      assert.equal(seen.status, 200, seen.text);

      relayed.apiRelay.withhold(null);
      answer = await pending;
    } finally {
      relayed.apiRelay.withhold(null);
    }
    // Money first: credited once, one charge, whatever the purchase shows.
    assertAmount(await client.balance(org), '1200');
    const charges = (await relayed.stripe.paymentIntentsOf(org)).filter((x) => x.customer === pi.customer);
    assert.deepEqual(charges.map((x) => x.id), [pi.id], 'one charge at Stripe');
    const entries = await ledgerOf(client, org, 2);
    assert.equal(entries[0].payment_intent_id, pi.id);
    assertRunningBalance(entries, '1200');
    // The purchase follows its own PaymentIntent, not the other customer's
    // that named it first: succeeded, as the event and the answer said.
    const which = (res) => `(genuine ${pi.id}, another customer's ${foreign.id}): ${res.text}`;
    assert.equal(seen.json.payment_intent_id, pi.id, `the purchase after the webhook ${which(seen)}; the answer: ${answer.text}`);
    assert.equal(seen.json.status, 'succeeded', `the purchase after the webhook ${which(seen)}`);
    assert.equal(answer.status, 201, answer.text);
    assert.equal(answer.json.id, purchaseId);
    assert.equal(answer.json.payment_intent_id, pi.id, `the purchase answer ${which(answer)}`);
    assert.equal(answer.json.status, 'succeeded', `the purchase answer ${which(answer)}`);
    const replay = await buy(client, org, 'starter', key);
    assert.equal(replay.status, 201, replay.text);
    assert.equal(replay.json.payment_intent_id, pi.id);
    assertError(await buy(client, org, 'team', key), 409, 'idempotency_key_reused');
    assertAmount(await client.balance(org), '1200');
  });
});
