// SPEC §10, what Stripe says happened to a payment after it was credited:
// refunds issued in Stripe take back their share of the purchase once (never
// below zero, the rest written off as unrecovered), a dispute takes back the
// unspent credits and switches auto top-up off, a won dispute gives back
// exactly what it took, once; and the owner's "off" cancels an auto top-up
// whose charge never reached Stripe. Against the real runtime and
// localstripe: real refunds at localstripe, the `charge.refunded` events built
// from the charge localstripe returns (it sends no refund webhooks), dispute
// events about real PaymentIntents (localstripe has no disputes), all signed
// as Stripe signs them. Then the exact parsing of amounts and the byte bound
// on metadata.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import {
  TRIAL, api, assertAmount, assertError, assertWalletInvariants, ownerToken, randomId, serviceToken, units, waitFor,
} from './harness.mjs';
import { eventPayload, startStack } from './stripe.mjs';
import { EVENTS_SECRET, startEventReceiver } from './event-receiver.mjs';
import {
  allEvents, allTransactions, assertLedgerAddsUp, authenticatedPurchase, decimal, dispute, foreignPaidIntent, getAutoTopUp, getPurchase,
  paidPurchase, pauseStripe, putAutoTopUp, putCardOnFile, refundAtStripe, sendAll, shareUnits,
} from './money.mjs';

// The default catalogue plus a pack whose credits per cent do not terminate
// (3,000 credits for $29.00), so refunds round down to 1/10,000 credit.
const PACKS = [
  { id: 'starter', name: 'Starter', credits: '1000', price_cents: 1000, currency: 'usd' },
  { id: 'odd', name: 'Odd', credits: '3000', price_cents: 2900, currency: 'usd' },
  { id: 'team', name: 'Team', credits: '5250', price_cents: 5000, currency: 'usd' },
  { id: 'business', name: 'Business', credits: '22000', price_cents: 20000, currency: 'usd' },
  { id: 'scale', name: 'Scale', credits: '120000', price_cents: 100000, currency: 'usd' },
];

let stack;
let receiver;
let w;

before(async () => {
  receiver = await startEventReceiver();
  stack = await startStack({
    // The worker reaches localstripe through a relay that records what it
    // sent (the auto top-up tests check no charge left while Stripe hung).
    apiRelay: true,
    // Only this file's own deliveries reach the worker.
    webhooks: 'none',
    vars: {
      PACKS: JSON.stringify(PACKS),
      EVENTS_WEBHOOK_URL: receiver.url,
      EVENTS_SIGNING_SECRET: EVENTS_SECRET,
      EVENTS_RETRY_BASE_SECONDS: '1',
    },
  });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

const base = () => stack.worker.base;

async function orgWithCard({ cap = '50000' } = {}) {
  const org = await w.newOrg();
  assert.equal((await w.setCap(org, cap)).status, 200);
  await putCardOnFile(w, org);
  return org;
}

async function wallet(org) {
  const res = await w.wallet(org, { tok: ownerToken(org) });
  assert.equal(res.status, 200, res.summary);
  assertWalletInvariants(res.json);
  return res.json;
}

async function debit(org, amount) {
  const res = await w.debit(org, amount);
  assert.equal(res.status, 201, res.summary);
  return res.json;
}

/** The purchase as the owner sees it. */
async function purchaseOf(org, id) {
  const res = await getPurchase(w, org, id);
  assert.equal(res.status, 200, res.summary);
  return res.json;
}

/** Auto top-up once nothing is in flight. */
const settledAutoTopUp = (org) => waitFor(async () => {
  const res = await getAutoTopUp(w, org);
  assert.equal(res.status, 200, res.summary);
  assert.equal(res.json.in_flight, false, res.text);
  return res.json;
}, 20_000, 250);

/** The transactions tab (D1) once it lists `count` rows; D1 trails by at most 5 s. */
const transactionsOf = (org, count) => waitFor(async () => {
  const rows = await allTransactions(w, org);
  assert.equal(rows.length, count, JSON.stringify(rows));
  return rows;
}, 8_000, 400);

const eventsOfType = async (org, type) => (await allEvents(w, org)).filter((e) => e.type === type);

describe('refunds issued in Stripe', () => {
  test('half, then the rest, of a partly spent purchase: its share taken once, never below zero, the rest unrecovered', async () => {
    const org = await orgWithCard();
    const purchase = await paidPurchase(w, org, 'odd');
    assertAmount(purchase.credits, '3000');
    assert.equal(purchase.amount_cents, 2900);
    await debit(org, '1000'); // 2,200 left of 3,200
    const credits = units('3000');

    // Support refunds 14.51 of the 29.00 in Stripe's dashboard.
    const charge1 = await refundAtStripe(stack.stripe, purchase.payment_intent_id, 1451);
    assert.equal(charge1.amount, 2900);
    assert.equal(charge1.amount_refunded, 1451);
    const first = eventPayload('charge.refunded', charge1);
    await sendAll(base(), first, 3); // Stripe's duplicates, at once
    const take1 = shareUnits(credits, 1451, 2900); // floor(3000 × 1451 / 2900) = 1501.0344
    assert.equal(decimal(take1), '1501.0344');
    let state = await wallet(org);
    assert.equal(units(state.balance), units('2200') - take1);
    let entries = await w.ledger(org);
    assert.equal(entries.length, 4, JSON.stringify(entries)); // trial, purchase, debit, refund
    const [refund1] = entries;
    assert.equal(refund1.kind, 'refund_reversal');
    assertAmount(refund1.amount, decimal(take1));
    assert.equal(refund1.amount_cents, 1451);
    assert.equal(refund1.currency, 'usd');
    assert.equal(refund1.pack_id, 'odd');
    assert.equal(refund1.payment_intent_id, purchase.payment_intent_id);
    assert.equal(refund1.purchase_id, purchase.id);
    assertAmount(refund1.balance_after, state.balance);
    let shown = await purchaseOf(org, purchase.id);
    assert.equal(shown.status, 'succeeded');
    assert.equal(shown.amount_refunded_cents, 1451);
    assertAmount(shown.credits_refunded, decimal(take1));
    assertAmount(shown.credits_unrecovered, '0');
    assert.equal(shown.dispute_status, null);
    assertAmount(shown.credits_reinstated, '0');

    // A hold covers 100 of what is left, then the rest is refunded: the
    // refund takes only what is available, and writes the rest off.
    const hold = await w.hold(org, '100', { ttl_seconds: 3600 });
    assert.equal(hold.status, 201, hold.summary);
    const availableBefore = units((await wallet(org)).available);
    assert.equal(availableBefore, units('2200') - take1 - units('100'));
    const charge2 = await refundAtStripe(stack.stripe, purchase.payment_intent_id, 1449);
    assert.equal(charge2.amount_refunded, 2900);
    assert.equal(charge2.refunded, true);
    const second = eventPayload('charge.refunded', charge2);
    await sendAll(base(), second, 2);
    // Due: 3000 − 1501.0344 (cumulative, not the sum of two roundings);
    // taken: what was available; the rest is unrecovered.
    const due2 = credits - take1;
    assert.equal(decimal(due2), '1498.9656');
    const take2 = availableBefore;
    const unrecovered = due2 - take2;
    state = await wallet(org);
    assertAmount(state.balance, '100');
    assertAmount(state.held, '100');
    assertAmount(state.available, '0');
    entries = await w.ledger(org);
    assert.equal(entries.length, 5, JSON.stringify(entries));
    const [refund2] = entries;
    assert.equal(refund2.kind, 'refund_reversal');
    assertAmount(refund2.amount, decimal(take2));
    assert.equal(refund2.amount_cents, 1449, 'the newly refunded cents');
    assert.equal(refund2.purchase_id, purchase.id);
    assertAmount(refund2.balance_after, '100');
    shown = await purchaseOf(org, purchase.id);
    assert.equal(shown.amount_refunded_cents, 2900);
    assertAmount(shown.credits_refunded, decimal(take1 + take2));
    assertAmount(shown.credits_unrecovered, decimal(unrecovered));
    assert.equal(decimal(unrecovered), '900');

    // Credits free up again: what was written off is never taken later, and
    // no repeat (older, the same, or the same state in a new event) changes anything.
    assert.equal((await w.release(org, hold.json.id)).status, 200);
    await sendAll(base(), second, 2);
    await sendAll(base(), first, 1);
    await sendAll(base(), eventPayload('charge.refunded', charge2), 1);
    await sendAll(base(), eventPayload('charge.refunded', charge1), 1);
    state = await wallet(org);
    assertAmount(state.balance, '100');
    assertAmount(state.available, '100');
    entries = await w.ledger(org);
    assert.equal(entries.length, 5, 'repeats wrote nothing');
    assertLedgerAddsUp(entries, state.balance);
    shown = await purchaseOf(org, purchase.id);
    assertAmount(shown.credits_unrecovered, '900');

    // One purchase.refunded per delivery that was news.
    const refunded = await eventsOfType(org, 'purchase.refunded');
    assert.equal(refunded.length, 2, JSON.stringify(refunded));
    assert.deepEqual(refunded.map((e) => ({ ...e.data })), [
      {
        purchase_id: purchase.id, payment_intent_id: purchase.payment_intent_id, source: 'owner', charge_id: charge1.id,
        credits: '3000', credits_reversed: '0', credits_refunded: decimal(take1), credits_unrecovered: '0',
        credits_reinstated: '0', amount_refunded_cents: 1451, credits_taken_back: decimal(take1),
      },
      {
        purchase_id: purchase.id, payment_intent_id: purchase.payment_intent_id, source: 'owner', charge_id: charge1.id,
        credits: '3000', credits_reversed: '0', credits_refunded: decimal(take1 + take2), credits_unrecovered: '900',
        credits_reinstated: '0', amount_refunded_cents: 2900, credits_taken_back: decimal(take2),
      },
    ]);
    // Delivered, signed, to the receiver.
    await waitFor(() => {
      const got = receiver.accepted(org).filter((e) => e.type === 'purchase.refunded');
      assert.deepEqual(got.map((e) => e.id), refunded.map((e) => e.id));
      return true;
    }, 30_000, 250);
    receiver.assertAllSigned();

    // Transactions (D1) list both reversals with the running balance.
    const rows = await transactionsOf(org, 4);
    assert.deepEqual(rows.map((r) => r.kind), ['refund_reversal', 'refund_reversal', 'purchase', 'trial_grant']);
    assertAmount(rows[0].credits, decimal(take2));
    assertAmount(rows[0].balance_after, '100');
    assert.equal(rows[0].amount_cents, 1449);
    assert.equal(rows[0].pack_id, 'odd');
    assertAmount(rows[1].credits, decimal(take1));
    assertAmount(rows[1].balance_after, decimal(units('2200') - take1));
    assert.equal(rows[1].amount_cents, 1451);
    assertAmount(rows[2].credits, '3000');
  });

  test("a refund delivered before the payment's success is taken back when the success arrives, once", async () => {
    const org = await w.newOrg();
    assert.equal((await w.setCap(org, '50000')).status, 200);
    // Paid only after 3-D Secure: the success is news only its webhook brings.
    const { purchase, intent } = await authenticatedPurchase(w, stack.stripe, org, 'team');
    const charge = await refundAtStripe(stack.stripe, intent.id, 2000);
    await sendAll(base(), eventPayload('charge.refunded', charge), 2);
    assertAmount((await wallet(org)).balance, TRIAL, 'nothing to take back yet');
    await sendAll(base(), eventPayload('payment_intent.succeeded', intent), 2);
    const take = shareUnits(units('5250'), 2000, 5000); // 2,100
    assertAmount((await wallet(org)).balance, decimal(units('5450') - take));
    await sendAll(base(), eventPayload('charge.refunded', charge), 1);
    await sendAll(base(), eventPayload('payment_intent.succeeded', intent), 1);
    const entries = await w.ledger(org);
    assert.deepEqual(entries.map((e) => [e.kind, e.amount, e.amount_cents]), [
      ['refund_reversal', decimal(take), 2000],
      ['purchase', '5250', 5000],
      ['trial_grant', TRIAL, undefined],
    ]);
    assertLedgerAddsUp(entries, decimal(units('5450') - take));
    const shown = await purchaseOf(org, purchase.id);
    assert.equal(shown.status, 'succeeded');
    assert.equal(shown.amount_refunded_cents, 2000);
    assertAmount(shown.credits_refunded, decimal(take));
    assertAmount(shown.credits_unrecovered, '0');
  });

  test('a refund or dispute of a payment that is not one of our purchases moves nothing', async () => {
    const org = await orgWithCard();
    await paidPurchase(w, org, 'starter');
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    const eventsBefore = (await allEvents(w, org)).map((e) => e.id);
    // Charges made in Stripe by hand for another customer, naming the
    // organization (and one naming its purchase too), refunded and disputed.
    const [purchase] = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
    for (const metadata of [{ org_id: org, pack_id: 'starter' }, { org_id: org, pack_id: 'starter', purchase_id: purchase.purchase_id }]) {
      const pi = await foreignPaidIntent(stack.stripe, metadata);
      const charge = await refundAtStripe(stack.stripe, pi.id, 1000);
      await sendAll(base(), eventPayload('charge.refunded', charge), 2);
      const dp = dispute(pi);
      await sendAll(base(), eventPayload('charge.dispute.created', dp), 1);
      await sendAll(base(), eventPayload('charge.dispute.closed', { ...dp, status: 'won' }), 1);
    }
    assertAmount((await wallet(org)).balance, '1200');
    const entries = await w.ledger(org);
    assert.deepEqual(entries.map((e) => e.kind), ['purchase', 'trial_grant']);
    // Nor does it switch auto top-up off or announce anything.
    const settings = (await getAutoTopUp(w, org)).json;
    const news = (await allEvents(w, org)).filter((e) => !eventsBefore.includes(e.id));
    assert.deepEqual(
      { enabled: settings.enabled, disabled_reason: settings.disabled_reason, events: news.map((e) => [e.type, e.data]) },
      { enabled: true, disabled_reason: null, events: [] },
      "a stranger's refund or dispute switched auto top-up off or emitted events",
    );
  });
});

describe('disputes', () => {
  test('an auto top-up disputed: credits taken back, auto top-up off and no charge after; won: given back once, still off until the owner enables it', async () => {
    const org = await orgWithCard();
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    await debit(org, '60'); // 140: below the threshold
    assert.equal((await settledAutoTopUp(org)).used_this_month, 1);
    assertAmount((await wallet(org)).balance, '1140');
    const [bought] = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
    assert.equal(bought.source, 'auto_top_up');
    const intents = await stack.stripe.paymentIntentsOf(org);
    assert.equal(intents.length, 1);
    assert.equal(intents[0].id, bought.payment_intent_id);

    const dp = dispute(intents[0]);
    const created = eventPayload('charge.dispute.created', dp);
    await sendAll(base(), created, 3);
    // 1,000 unspent credits of the pack go back.
    assertAmount((await wallet(org)).balance, '140');
    let entries = await w.ledger(org);
    const [reversal] = entries;
    assert.equal(reversal.kind, 'dispute_reversal');
    assertAmount(reversal.amount, '1000');
    assert.equal(reversal.payment_intent_id, intents[0].id);
    assert.equal(reversal.purchase_id, bought.purchase_id);
    assertAmount(reversal.balance_after, '140');
    let settings = (await getAutoTopUp(w, org)).json;
    assert.equal(settings.enabled, false, JSON.stringify(settings));
    assert.equal(settings.disabled_reason, 'payment_disputed');
    assert.equal(settings.in_flight, false);
    let shown = await purchaseOf(org, bought.purchase_id);
    assert.equal(shown.status, 'disputed');
    assertAmount(shown.credits_reversed, '1000');
    assert.equal(shown.dispute_status, 'open');

    // The next decisions keep available under the threshold for 10 s: the
    // alarms that follow start no charge.
    for (let i = 0; i < 10; i++) {
      await debit(org, '1');
      await sleep(1000);
    }
    assertAmount((await wallet(org)).balance, '130');
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1, 'no second charge while disputed');
    settings = (await getAutoTopUp(w, org)).json;
    assert.equal(settings.enabled, false);
    assert.equal(settings.in_flight, false);
    assert.equal(settings.used_this_month, 1);

    // The dispute is won: exactly what it took comes back, once, however often delivered.
    const closed = eventPayload('charge.dispute.closed', { ...dp, status: 'won' });
    await sendAll(base(), closed, 3);
    await sendAll(base(), closed, 1);
    await sendAll(base(), created, 1); // a late retry of the opening changes nothing either
    assertAmount((await wallet(org)).balance, '1130'); // 1,140 before the dispute, less the 10 spent since
    entries = await w.ledger(org);
    const reinstated = entries.filter((e) => e.kind === 'dispute_reinstatement');
    assert.equal(reinstated.length, 1, JSON.stringify(entries.slice(0, 4)));
    assertAmount(reinstated[0].amount, '1000');
    assert.equal(reinstated[0].payment_intent_id, intents[0].id);
    assert.equal(reinstated[0].purchase_id, bought.purchase_id);
    assertAmount(reinstated[0].balance_after, '1130');
    assert.equal(entries.filter((e) => e.kind === 'dispute_reversal').length, 1);
    assertLedgerAddsUp(entries, '1130');
    shown = await purchaseOf(org, bought.purchase_id);
    assert.equal(shown.dispute_status, 'won');
    assertAmount(shown.credits_reinstated, '1000');
    // Auto top-up stays off until the owner says otherwise.
    settings = (await getAutoTopUp(w, org)).json;
    assert.equal(settings.enabled, false);
    assert.equal(settings.disabled_reason, 'payment_disputed');

    const disputed = await eventsOfType(org, 'purchase.disputed');
    assert.equal(disputed.length, 1);
    assert.equal(disputed[0].data.purchase_id, bought.purchase_id);
    assert.equal(disputed[0].data.payment_intent_id, intents[0].id);
    assert.equal(disputed[0].data.dispute_id, dp.id);
    assert.equal(disputed[0].data.source, 'auto_top_up');
    assertAmount(disputed[0].data.credits_reversed, '1000');
    const closings = await eventsOfType(org, 'purchase.dispute_closed');
    assert.equal(closings.length, 1);
    assert.equal(closings[0].data.dispute_id, dp.id);
    assert.equal(closings[0].data.status, 'won');
    assertAmount(closings[0].data.credits_reinstated, '1000');
    const rows = await transactionsOf(org, 4);
    assert.deepEqual(rows.map((r) => r.kind), ['dispute_reinstatement', 'dispute_reversal', 'purchase', 'trial_grant']);
    assertAmount(rows[0].credits, '1000');
    assertAmount(rows[0].balance_after, '1130');
    assertAmount(rows[1].credits, '1000');
    assertAmount(rows[1].balance_after, '140');

    // The owner enables it again: the next crossing buys again.
    const on = await putAutoTopUp(w, org, { enabled: true });
    assert.equal(on.disabled_reason, null);
    await debit(org, '990'); // 140: below the threshold again
    const again = await settledAutoTopUp(org);
    assert.equal(again.disabled_reason, null);
    assert.equal(again.used_this_month, 2);
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 2);
    assertAmount((await wallet(org)).balance, '1140');
  });

  test('a dispute that can take back only part gives back exactly that part when won; a lost one takes nothing more', async () => {
    // Won: 5,450 − 5,000 spent leaves 450 of the pack's 5,250 to take back.
    const wonOrg = await orgWithCard();
    const team = await paidPurchase(w, wonOrg, 'team');
    await debit(wonOrg, '5000');
    const wonIntent = await stack.stripe.paymentIntent(team.payment_intent_id);
    const wonDispute = dispute(wonIntent);
    await sendAll(base(), eventPayload('charge.dispute.created', wonDispute), 2);
    assertAmount((await wallet(wonOrg)).balance, '0');
    assertAmount((await purchaseOf(wonOrg, team.id)).credits_reversed, '450');
    await sendAll(base(), eventPayload('charge.dispute.closed', { ...wonDispute, status: 'won' }), 2);
    assertAmount((await wallet(wonOrg)).balance, '450', 'back where it was before the dispute');
    let entries = await w.ledger(wonOrg);
    assert.deepEqual(entries.slice(0, 2).map((e) => [e.kind, e.amount]), [['dispute_reinstatement', '450'], ['dispute_reversal', '450']]);
    assertLedgerAddsUp(entries, '450');

    // Lost: nothing more is taken, and a late "won" for the closed dispute changes nothing.
    const lostOrg = await orgWithCard();
    const starter = await paidPurchase(w, lostOrg, 'starter');
    await debit(lostOrg, '300'); // 900 left
    const lostIntent = await stack.stripe.paymentIntent(starter.payment_intent_id);
    const lostDispute = dispute(lostIntent);
    await sendAll(base(), eventPayload('charge.dispute.created', lostDispute), 1);
    assertAmount((await wallet(lostOrg)).balance, '0'); // min(1,000 unspent, 900 available)
    await sendAll(base(), eventPayload('charge.dispute.closed', { ...lostDispute, status: 'lost' }), 2);
    await sendAll(base(), eventPayload('charge.dispute.closed', { ...lostDispute, status: 'won' }), 1);
    assertAmount((await wallet(lostOrg)).balance, '0');
    entries = await w.ledger(lostOrg);
    assert.deepEqual(entries.map((e) => e.kind), ['dispute_reversal', 'debit', 'purchase', 'trial_grant']);
    assertAmount(entries[0].amount, '900');
    const shown = await purchaseOf(lostOrg, starter.id);
    assert.equal(shown.status, 'disputed');
    assert.equal(shown.dispute_status, 'lost');
    assertAmount(shown.credits_reversed, '900');
    assertAmount(shown.credits_reinstated, '0');
    const closings = await eventsOfType(lostOrg, 'purchase.dispute_closed');
    assert.deepEqual(closings.map((e) => [e.data.dispute_id, e.data.status]), [[lostDispute.id, 'lost']]);
  });
});

describe("auto top-up never charges against the owner's word", () => {
  /** The charges the worker sent to Stripe (POST /v1/payment_intents) since `from`. */
  const chargesSent = (from) => stack.apiRelay.exchanges.slice(from)
    .filter((e) => e.method === 'POST' && e.path.split('?')[0] === '/v1/payment_intents');

  /**
   * With localstripe stopped (SIGSTOP: connections open, nothing answered),
   * a debit crosses the threshold; once the object's alarm is waiting on
   * Stripe, `change` runs. Returns the crossing's purchase id.
   */
  async function crossWhileStripeHangs(org, change) {
    const from = stack.apiRelay.exchanges.length;
    const resume = pauseStripe(stack.stripe);
    let purchaseId;
    try {
      await debit(org, '60'); // 140: below 150
      const state = (await getAutoTopUp(w, org)).json;
      assert.equal(state.in_flight, true, JSON.stringify(state));
      purchaseId = state.in_flight_purchase_id;
      // The alarm asks Stripe (the payment method to charge) and waits.
      await waitFor(() => stack.apiRelay.exchanges.length > from, 10_000, 50);
      await sleep(500);
      assert.deepEqual(chargesSent(from), [], 'precondition: the charge itself must not have been sent yet');
      await change(purchaseId);
    } finally {
      resume();
    }
    return purchaseId;
  }

  test('switched off while Stripe hangs: the unsent charge is canceled, never created, nothing credited', async () => {
    const org = await orgWithCard();
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    const from = stack.apiRelay.exchanges.length;
    const purchaseId = await crossWhileStripeHangs(org, async () => {
      const off = await putAutoTopUp(w, org, { enabled: false });
      assert.equal(off.enabled, false);
      assert.equal(off.in_flight, false, JSON.stringify(off));
    });
    // Stripe is back: the alarm's wait ends, and it must not charge.
    await sleep(4000);
    const settings = await settledAutoTopUp(org);
    assert.equal(settings.enabled, false);
    assert.deepEqual(chargesSent(from), [], 'no charge was sent');
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 0, 'no PaymentIntent at Stripe');
    const purchase = await purchaseOf(org, purchaseId);
    assert.equal(purchase.status, 'canceled', JSON.stringify(purchase));
    assert.equal(purchase.source, 'auto_top_up');
    assert.equal(purchase.payment_intent_id, null);
    assertAmount((await wallet(org)).balance, '140');
    const entries = await w.ledger(org);
    assert.deepEqual(entries.map((e) => e.kind), ['debit', 'trial_grant']);
    // More decisions below the threshold start nothing while it is off.
    await debit(org, '1');
    await sleep(2000);
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 0);
    assert.ok(!(await allEvents(w, org)).some((e) => e.type === 'purchase.succeeded'));
  });

  // Enabling (and so changing the pack, which sends enabled: true) checks the
  // card at Stripe, so this test cannot stop all of Stripe: only the alarm's
  // own first request (reading the card it would charge) goes unanswered.
  test('its pack changed before the charge was sent: that charge is canceled, and only the new pack is charged', { timeout: 120_000 }, async () => {
    const org = await orgWithCard();
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    const from = stack.apiRelay.exchanges.length;
    let withheld = null;
    stack.apiRelay.withhold((e) => {
      if (withheld || e.method !== 'GET' || !e.path.startsWith('/v1/customers/')) return false;
      withheld = e;
      return true;
    });
    let starterId;
    try {
      await debit(org, '60'); // 140: below 150
      starterId = (await getAutoTopUp(w, org)).json.in_flight_purchase_id;
      assert.ok(starterId);
      await waitFor(() => withheld !== null, 10_000, 50);
      await sleep(300);
      assert.deepEqual(chargesSent(from), [], 'precondition: the charge itself must not have been sent yet');
      const changed = await putAutoTopUp(w, org, { enabled: true, pack_id: 'team' });
      assert.equal(changed.pack_id, 'team');
      assert.notEqual(changed.in_flight_purchase_id, starterId, 'the starter charge is no longer in flight');
    } finally {
      stack.apiRelay.withhold(null);
    }
    const starter = await purchaseOf(org, starterId);
    assert.equal(starter.status, 'canceled', JSON.stringify(starter));
    // The alarm's read times out (25 s) and is retried; then only the team pack is charged.
    await debit(org, '1'); // a decision below the threshold, in case the change started nothing itself
    await waitFor(async () => {
      const state = await settledAutoTopUp(org);
      return units((await wallet(org)).balance) > units('1000') && state;
    }, 90_000, 500);
    const intents = await stack.stripe.paymentIntentsOf(org);
    assert.deepEqual(intents.map((pi) => [pi.metadata.pack_id, pi.amount]), [['team', 5000]], 'only the new pack was charged');
    assert.notEqual(intents[0].metadata.purchase_id, starterId);
    assert.ok(chargesSent(from).every((e) => !e.requestBody.includes(starterId)), 'the starter purchase was never sent');
    assert.equal((await purchaseOf(org, starterId)).status, 'canceled');
    assertAmount((await wallet(org)).balance, '5389'); // 200 − 61 + 5,250
    const bought = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
    assert.deepEqual(bought.map((e) => [e.pack_id, e.amount, e.payment_intent_id]), [['team', '5250', intents[0].id]]);
  });
});

// The alarm reads the card it will charge from Stripe before it sends the
// charge. Here the first such read of a chosen customer is forwarded but
// never answered (the worker gives it up after its 25 s attempt timeout and
// reads again), so the charge is not sent yet while the test acts. The two
// tests share that wait (they run concurrently).
describe('while an auto top-up charge is not sent yet', { concurrency: true }, () => {
  const holding = new Set(); // customers whose first card read is held back
  const held = new Map(); // customer → the held exchange
  const cardRead = (e) => e.method === 'GET' && /^\/v1\/customers\/(cus_[^/?]+)/.exec(e.path)?.[1];

  before(() => {
    stack.apiRelay.withhold((e) => {
      const customer = cardRead(e);
      if (!customer || !holding.has(customer) || held.has(customer)) return false;
      held.set(customer, e);
      return true;
    });
  });
  after(() => stack.apiRelay.withhold(null));

  /** The organization's Stripe customer, as the worker created it at localstripe. */
  async function customerOf(org) {
    let cursor;
    for (let page = 0; page < 50; page++) {
      const res = await stack.stripe.get(`/v1/customers?limit=100${cursor ? `&starting_after=${cursor}` : ''}`);
      assert.equal(res.status, 200, res.text);
      const found = res.json.data.find((c) => c.metadata?.org_id === org);
      if (found) return found.id;
      if (!res.json.has_more) break;
      cursor = res.json.data.at(-1).id;
    }
    throw new Error(`no Stripe customer for ${org}`);
  }

  /** Holds back the next card read for `org`'s customer; resolves to a function that waits until it was held. */
  async function holdNextCardRead(org) {
    const customer = await customerOf(org);
    holding.add(customer);
    return {
      customer,
      wasHeld: () => waitFor(() => held.has(customer), 10_000, 50),
      // The worker read again after giving the held read up.
      readAgain: () => waitFor(() => stack.apiRelay.exchanges.some((e) => cardRead(e) === customer && e !== held.get(customer) &&
        e.at > held.get(customer).at && e.status !== undefined), 60_000, 250),
    };
  }

  test("another customer's payment naming it credits nothing, and it is still charged and credited once", { timeout: 120_000 }, async () => {
    const org = await orgWithCard();
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    const hold = await holdNextCardRead(org);
    await debit(org, '60'); // 140: below 150
    const purchaseId = (await getAutoTopUp(w, org)).json.in_flight_purchase_id;
    assert.ok(purchaseId);
    await hold.wasHeld();
    const foreign = await foreignPaidIntent(stack.stripe, { org_id: org, pack_id: 'starter', purchase_id: purchaseId });
    await sendAll(base(), eventPayload('payment_intent.succeeded', foreign), 2);
    assertAmount((await wallet(org)).balance, '140', 'nothing credited for a stranger');
    // The alarm reads the card again and sends the charge.
    await hold.readAgain();
    const state = await waitFor(async () => {
      const res = await getAutoTopUp(w, org);
      assert.equal(res.json.in_flight, false,
        `still in flight: ${res.text}; the purchase: ${(await getPurchase(w, org, purchaseId)).text}; the stranger's PaymentIntent: ${foreign.id}`);
      return res.json;
    }, 20_000, 500);
    assert.equal(state.disabled_reason, null);
    const ours = (await stack.stripe.paymentIntentsOf(org)).filter((pi) => pi.id !== foreign.id);
    assert.equal(ours.length, 1, 'the auto top-up was charged once');
    assert.equal(ours[0].metadata.purchase_id, purchaseId);
    assert.equal(ours[0].customer, hold.customer);
    assertAmount((await wallet(org)).balance, '1140');
    const bought = (await w.ledger(org)).filter((e) => e.kind === 'purchase');
    assert.deepEqual(bought.map((e) => e.payment_intent_id), [ours[0].id]);
    const purchase = await purchaseOf(org, purchaseId);
    assert.equal(purchase.status, 'succeeded', JSON.stringify(purchase));
    assert.equal(purchase.payment_intent_id, ours[0].id);
  });

  test('a dispute of an earlier auto top-up cancels it: never sent, nothing credited', { timeout: 120_000 }, async () => {
    const org = await orgWithCard();
    await putAutoTopUp(w, org, { enabled: true, threshold: '150', pack_id: 'starter' });
    await debit(org, '60');
    await settledAutoTopUp(org);
    assertAmount((await wallet(org)).balance, '1140');
    const [first] = await stack.stripe.paymentIntentsOf(org);
    const hold = await holdNextCardRead(org);
    await debit(org, '1000'); // 140: below 150 again
    const secondId = (await getAutoTopUp(w, org)).json.in_flight_purchase_id;
    assert.ok(secondId);
    await hold.wasHeld();
    // The first top-up is disputed: 140 of its credits are still available to take back.
    await sendAll(base(), eventPayload('charge.dispute.created', dispute(first)), 2);
    assertAmount((await wallet(org)).balance, '0');
    const settings = (await getAutoTopUp(w, org)).json;
    assert.equal(settings.enabled, false);
    assert.equal(settings.disabled_reason, 'payment_disputed');
    assert.equal(settings.in_flight, false, JSON.stringify(settings));
    assert.equal((await purchaseOf(org, secondId)).status, 'canceled');
    // The alarm's wait ends: it must not charge the canceled purchase.
    await hold.readAgain();
    await sleep(2000);
    const intents = await stack.stripe.paymentIntentsOf(org);
    assert.deepEqual(intents.map((pi) => pi.id), [first.id], 'no charge for the canceled purchase');
    const purchase = await purchaseOf(org, secondId);
    assert.equal(purchase.status, 'canceled', JSON.stringify(purchase));
    assert.equal(purchase.payment_intent_id, null);
    assertAmount((await wallet(org)).balance, '0');
    assert.deepEqual((await w.ledger(org)).slice(0, 2).map((e) => e.kind), ['dispute_reversal', 'debit']);
  });
});

describe('exact amounts and bounded metadata', () => {
  const TOO_PRECISE = ['0.99999999999999999999999999999', '1.00000000000000000000000000001'];

  test('amounts with more digits than fit are refused naming amount, never rounded: debits, batch items, holds, captures', async () => {
    const org = await w.newOrg();
    const hold = await w.hold(org, '5', { ttl_seconds: 3600 });
    assert.equal(hold.status, 201, hold.summary);
    const before = await wallet(org);
    const ledgerBefore = await w.ledger(org);
    for (const amount of TOO_PRECISE) {
      assertError(await w.debit(org, amount), 422, 'invalid_request', { field: 'amount' });
      const batch = await w.call('POST', '/v1/orgs/{org}/debits/batch', { org }, {
        token: serviceToken(org),
        body: { debits: [{ idempotency_key: randomId('bk_'), feature: 'chat', amount }] },
      });
      assert.equal(batch.status, 200, batch.summary);
      assert.equal(batch.json.results[0].status, 422, batch.summary);
      assert.equal(batch.json.results[0].error.code, 'invalid_request');
      assert.equal(batch.json.results[0].error.field, 'debits[0].amount');
      assertError(await w.hold(org, amount), 422, 'invalid_request', { field: 'amount' });
      assertError(await w.capture(org, hold.json.id, amount), 422, 'invalid_request', { field: 'amount' });
    }
    const afterState = await wallet(org);
    assert.deepEqual(
      { balance: afterState.balance, held: afterState.held, spent_today: afterState.spent_today },
      { balance: before.balance, held: before.held, spent_today: before.spent_today },
    );
    assertAmount(afterState.balance, TRIAL);
    assert.deepEqual((await w.ledger(org)).map((e) => e.id), ledgerBefore.map((e) => e.id), 'nothing was written');
    // The hold is still active: it captures normally.
    const captured = await w.capture(org, hold.json.id, '1');
    assert.equal(captured.status, 200, captured.summary);
    assertAmount(captured.json.entry.amount, '1');
  });

  /** Three keys whose JSON takes exactly `bytes` bytes; the last value is `fill` repeated. */
  function metadataOfBytes(bytes, fill = 'z') {
    const meta = { a1: 'x'.repeat(400), a2: 'y'.repeat(400), a3: '' };
    const rest = bytes - Buffer.byteLength(JSON.stringify(meta));
    const per = Buffer.byteLength(fill);
    meta.a3 = fill.repeat(Math.floor(rest / per)) + 'z'.repeat(rest % per);
    assert.equal(Buffer.byteLength(JSON.stringify(meta)), bytes);
    return meta;
  }

  test('metadata: 20 keys of 500 characters is too many bytes; 1,024 bytes of JSON is accepted, 1,025 refused (UTF-8 bytes)', async () => {
    const org = await w.newOrg();
    const debitWith = (metadata) => w.debit(org, null, { body: { feature: 'chat', amount: '1', metadata } });
    const twenty = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`key_${String(i).padStart(2, '0')}`, 'v'.repeat(500)]));
    assertError(await debitWith(twenty), 422, 'invalid_request', { field: 'metadata' });
    assertError(await debitWith(metadataOfBytes(1025)), 422, 'invalid_request', { field: 'metadata' });
    // 1,025 bytes but only 927 characters: bytes are what count.
    const wide = metadataOfBytes(1025, 'é');
    assert.ok(JSON.stringify(wide).length < 1000);
    assertError(await debitWith(wide), 422, 'invalid_request', { field: 'metadata' });
    // The other bounds still hold.
    assertError(await debitWith({ ...Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`k${i}`, 'v'])) }), 422, 'invalid_request', { field: 'metadata' });
    assertError(await debitWith({ ['k'.repeat(41)]: 'v' }), 422, 'invalid_request', { field: 'metadata' });
    const longValue = await debitWith({ note: 'v'.repeat(501) });
    assert.equal(longValue.status, 422, longValue.summary);
    assert.match(longValue.json.error.field, /^metadata/);
    // Batch items are bounded the same way.
    const batch = await w.call('POST', '/v1/orgs/{org}/debits/batch', { org }, {
      token: serviceToken(org),
      body: { debits: [{ idempotency_key: randomId('bk_'), feature: 'chat', amount: '1', metadata: metadataOfBytes(1025) }] },
    });
    assert.equal(batch.status, 200, batch.summary);
    assert.equal(batch.json.results[0].status, 422, batch.summary);
    assert.match(batch.json.results[0].error.field, /metadata$/);
    assertAmount((await wallet(org)).balance, TRIAL, 'nothing refused was debited');

    for (const metadata of [metadataOfBytes(1024), metadataOfBytes(1024, 'é')]) {
      const res = await debitWith(metadata);
      assert.equal(res.status, 201, res.summary);
      const [entry] = await w.ledger(org);
      assert.equal(entry.id, res.json.id);
      assert.deepEqual(entry.metadata, metadata);
    }
    assertAmount((await wallet(org)).balance, '198');
  });
});
