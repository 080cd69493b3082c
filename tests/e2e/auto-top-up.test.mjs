// Auto top-up, alerts and outbound events against the real runtime,
// localstripe and a local event receiver: concurrent crossings start one
// purchase, the monthly limit holds over a month, a declining card switches
// it off, and every event reaches the receiver signed, in order, at least
// once although the receiver refused the first attempts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, assertAmount, assertError, ownerToken, randomId, serviceToken, token, units, waitFor,
} from './harness.mjs';
import { startStack } from './stripe.mjs';
import { EVENTS_SECRET, startEventReceiver } from './event-receiver.mjs';

// Every event's first two attempts are answered 500.
const FAIL_FIRST = 2;

let stack;
let receiver;
let w;

before(async () => {
  receiver = await startEventReceiver({ failFirst: FAIL_FIRST });
  stack = await startStack({
    webhooks: 'relay',
    vars: { EVENTS_WEBHOOK_URL: receiver.url, EVENTS_SIGNING_SECRET: EVENTS_SECRET, EVENTS_RETRY_BASE_SECONDS: '1' },
  });
  w = api(stack.worker.base);
}, { timeout: 180_000 });

after(() => stack?.stop());

const roleToken = (org, role) => token({ org, role, sub: `user_${role}` });

const getAutoTopUp = (org, tok = ownerToken(org), now) => w.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: tok, now });
const putAutoTopUp = (org, body, tok = ownerToken(org), now) =>
  w.call('PUT', '/v1/orgs/{org}/auto-top-up', { org }, { token: tok, body, now });
const putAlerts = (org, body, tok = ownerToken(org)) => w.call('PUT', '/v1/orgs/{org}/alerts', { org }, { token: tok, body });
const getAlerts = (org, tok = ownerToken(org)) => w.call('GET', '/v1/orgs/{org}/alerts', { org }, { token: tok });
const getEvents = (org, query = {}, tok = ownerToken(org)) =>
  w.call('GET', `/v1/orgs/{org}/events?${new URLSearchParams(query)}`, { org }, { token: tok });

async function putCardOnFile(org, paymentMethodId = 'pm_card_visa') {
  const res = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethodId } });
  assert.equal(res.status, 200, res.text);
}

async function orgWithCard(paymentMethodId) {
  const org = await w.newOrg();
  await putCardOnFile(org, paymentMethodId);
  return org;
}

async function enable(org, body, now) {
  const res = await putAutoTopUp(org, { enabled: true, ...body }, ownerToken(org), now);
  assert.equal(res.status, 200, res.text);
  return res.json;
}

/** Every event of `org`, oldest first, read through the API's pages. */
async function allEvents(org) {
  const out = [];
  let cursor;
  for (;;) {
    const res = await getEvents(org, cursor ? { limit: 100, starting_after: cursor } : { limit: 100 });
    assert.equal(res.status, 200, res.text);
    out.push(...res.json.data);
    if (!res.json.has_more) return out.reverse();
    cursor = res.json.data.at(-1).id;
  }
}

/** Auto top-up once nothing is in flight. */
const settled = (org, now) => waitFor(async () => {
  const res = await getAutoTopUp(org, ownerToken(org), now);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.in_flight, false, res.text);
  return res.json;
}, 15_000);

const purchasesIn = (entries) => entries.filter((e) => e.kind === 'purchase');

describe('settings', () => {
  test('defaults, who may change them, and bad input changes nothing', async () => {
    const org = await w.newOrg();
    const initial = await getAutoTopUp(org, roleToken(org, 'viewer'));
    assert.equal(initial.status, 200, initial.text);
    assert.deepEqual({ ...initial.json, month: undefined }, {
      enabled: false, threshold: null, pack_id: null, monthly_limit: 3, used_this_month: 0, month: undefined,
      in_flight: false, in_flight_purchase_id: null, disabled_reason: null,
    });
    assert.match(initial.json.month, /^\d{4}-\d{2}$/);
    for (const role of ['admin', 'member', 'viewer', 'service']) {
      assertError(await putAutoTopUp(org, { enabled: false, threshold: '10' }, roleToken(org, role)), 403, 'forbidden');
      assertError(await putAlerts(org, { low_balance_threshold: '10' }, roleToken(org, role)), 403, 'forbidden');
    }
    assertError(await getEvents(org, {}, roleToken(org, 'member')), 403, 'forbidden');
    assertError(await getEvents(org, {}, serviceToken(org)), 403, 'forbidden');
    // Enabling without a payment method on file.
    assertError(await putAutoTopUp(org, { enabled: true, threshold: '50', pack_id: 'starter' }), 409, 'payment_method_required');
    await putCardOnFile(org);
    const bad = [
      [{ enabled: true, threshold: '0', pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: '-1', pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: 50, pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: '1.00001', pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: '1000000.0001', pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: '50', pack_id: 'nope' }, 'pack_id'],
      [{ enabled: false, threshold: null }, 'threshold'],
      [{ enabled: false, pack_id: null }, 'pack_id'],
      [{ enabled: true, threshold: '50', pack_id: 'starter', monthly_limit: 0 }, 'monthly_limit'],
      [{ enabled: true, threshold: '50', pack_id: 'starter', monthly_limit: 101 }, 'monthly_limit'],
      [{ enabled: true, threshold: '50', pack_id: 'starter', monthly_limit: 2.5 }, 'monthly_limit'],
      [{ enabled: true, pack_id: 'starter' }, 'threshold'],
      [{ enabled: true, threshold: '50' }, 'pack_id'],
      [{ threshold: '50', pack_id: 'starter' }, 'enabled'],
      [{ enabled: true, threshold: '50', pack_id: 'starter', surprise: 1 }, 'surprise'],
    ];
    for (const [body, field] of bad) {
      assertError(await putAutoTopUp(org, body), 422, 'invalid_request', { field });
    }
    for (const [body, field] of [[{ low_balance_threshold: '0' }, 'low_balance_threshold'], [{ low_balance_threshold: 5 }, 'low_balance_threshold'], [{}, 'low_balance_threshold']]) {
      assertError(await putAlerts(org, body), 422, 'invalid_request', { field });
    }
    assert.deepEqual((await getAutoTopUp(org)).json, initial.json, 'refused changes change nothing');
    assert.deepEqual((await getAlerts(org)).json, { low_balance_threshold: null, low_balance: false });
    // Nothing was recorded for them either: no audit record, no event.
    const audit = await w.call('GET', '/v1/orgs/{org}/audit', { org }, { token: ownerToken(org) });
    assert.deepEqual(audit.json.data, []);
    assert.deepEqual((await getEvents(org)).json, { data: [], has_more: false });

    const on = await enable(org, { threshold: '50', pack_id: 'starter', monthly_limit: 5 });
    assert.equal(on.enabled, true);
    assertAmount(on.threshold, '50');
    assert.equal(on.monthly_limit, 5);
    const alerts = await putAlerts(org, { low_balance_threshold: '20' });
    assert.equal(alerts.status, 200, alerts.text);
    assert.deepEqual(alerts.json, { low_balance_threshold: '20', low_balance: false });
    const changes = await allEvents(org);
    assert.deepEqual(changes.map((e) => [e.type, e.data.setting]), [['settings.changed', 'auto_top_up'], ['settings.changed', 'alerts']]);
    assert.deepEqual(changes[0].data.before, { enabled: false, threshold: null, pack_id: null, monthly_limit: 3 });
    assert.deepEqual(changes[0].data.after, { enabled: true, threshold: '50', pack_id: 'starter', monthly_limit: 5 });
    assert.equal(changes[1].data.sub, 'user_owner');
  });
});

describe('auto top-up', () => {
  test('50 concurrent debits crossing the threshold start exactly one purchase, credited once', async () => {
    const org = await orgWithCard();
    await enable(org, { threshold: '150', pack_id: 'starter' });
    // 200 trial credits; 50 × 2 credits cross 150 at the 26th debit.
    const results = await Promise.all(Array.from({ length: 50 }, () => w.debit(org, '2')));
    assert.deepEqual(results.map((r) => r.status), Array(50).fill(201), results.find((r) => r.status !== 201)?.summary);
    const state = await settled(org);
    assert.equal(state.used_this_month, 1);
    assert.equal(state.disabled_reason, null);
    assertAmount(await w.balance(org), '1100'); // 200 − 100 + 1000
    const entries = await w.ledger(org);
    const bought = purchasesIn(entries);
    assert.equal(bought.length, 1, JSON.stringify(bought));
    assert.equal(bought[0].source, 'auto_top_up');
    assertAmount(bought[0].amount, '1000');
    const intents = await stack.stripe.paymentIntentsOf(org);
    assert.equal(intents.length, 1, 'one charge at Stripe');
    assert.equal(intents[0].id, bought[0].payment_intent_id);
    assert.equal(intents[0].metadata.purchase_id, bought[0].purchase_id);
    // The purchase, as the owner sees it, and in Transactions (the D1 replica) and its CSV.
    const purchase = await w.call('GET', '/v1/orgs/{org}/purchases/{purchase_id}', { org, purchase_id: bought[0].purchase_id }, { token: ownerToken(org) });
    assert.equal(purchase.json.status, 'succeeded');
    assert.equal(purchase.json.source, 'auto_top_up');
    const tx = await waitFor(async () => {
      const res = await w.call('GET', '/v1/orgs/{org}/transactions', { org }, { token: roleToken(org, 'member') });
      assert.equal(res.json.data.length, 2, res.text);
      return res.json.data;
    }, 10_000);
    assert.deepEqual(tx.map((t) => [t.kind, t.source]), [['purchase', 'auto_top_up'], ['trial_grant', null]]);
    const csv = await w.req('GET', `/v1/orgs/${org}/transactions?format=csv`, { token: ownerToken(org) });
    const lines = csv.text.trimEnd().split('\r\n');
    assert.match(lines[0], /,source$/);
    assert.match(lines[1], /,purchase,starter,1000,1000,usd,.*,auto_top_up$/);
    // Later debits above the threshold start nothing more.
    assert.equal((await w.debit(org, '5')).status, 201);
    assert.equal((await settled(org)).used_this_month, 1);
    const events = await allEvents(org);
    const succeeded = events.filter((e) => e.type === 'purchase.succeeded');
    assert.equal(succeeded.length, 1);
    assert.deepEqual(succeeded[0].data, {
      purchase_id: bought[0].purchase_id, pack_id: 'starter', credits: '1000', amount_cents: 1000, currency: 'usd', source: 'auto_top_up',
    });
  });

  test('the monthly limit holds over a month of crossings, and resumes the next month', async () => {
    const org = await orgWithCard();
    const day = (d, time = '12:00:00') => `2031-03-${String(d).padStart(2, '0')}T${time}.000Z`;
    assert.equal((await w.setCap(org, '50000', { now: day(1, '00:00:00') })).status, 200);
    await enable(org, { threshold: '190', pack_id: 'starter', monthly_limit: 3 }, day(1, '00:00:00'));
    // A crossing on each of these days of March: the fourth finds the limit used.
    const spendBelow = async (now) => {
      const balance = units(await w.balance(org));
      const amount = Number(balance - units('189')) / 10_000;
      const res = await w.debit(org, String(amount), { now });
      assert.equal(res.status, 201, res.summary);
      assertAmount(res.json.balance_after, '189');
    };
    for (const d of [1, 9, 17]) {
      await spendBelow(day(d));
      const state = await settled(org, day(d));
      assert.equal(state.disabled_reason, null);
      assertAmount(await w.balance(org), '1189');
    }
    await spendBelow(day(25));
    const paused = await settled(org, day(25));
    assert.equal(paused.used_this_month, 3);
    assert.equal(paused.month, '2031-03');
    assert.equal(paused.enabled, true, 'only paused');
    assert.equal(paused.disabled_reason, 'monthly_limit_reached');
    // More crossings that month buy nothing.
    for (const d of [26, 31]) assert.equal((await w.debit(org, '1', { now: day(d) })).status, 201);
    await new Promise((r) => setTimeout(r, 1500));
    assertAmount(await w.balance(org), '187');
    assert.equal(purchasesIn(await w.ledger(org)).length, 3);
    // April 1st: the first decision (here, reading the settings) resumes it
    // and, available being below the threshold, starts April's first purchase.
    const april = '2031-04-01T00:00:05.000Z';
    const shown = await getAutoTopUp(org, ownerToken(org), april);
    assert.equal(shown.json.disabled_reason, null);
    assert.equal(shown.json.month, '2031-04');
    assert.equal(shown.json.used_this_month, 1);
    const resumed = await settled(org, april);
    assert.equal(resumed.used_this_month, 1);
    assert.equal(resumed.disabled_reason, null);
    assertAmount(await w.balance(org), '1187');
    const bought = purchasesIn(await w.ledger(org));
    assert.equal(bought.length, 4);
    assert.ok(bought.every((e) => e.source === 'auto_top_up'));
    assert.equal(new Set(bought.map((e) => e.purchase_id)).size, 4);
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 4);
  });

  test('a declining card switches auto top-up off with auto_top_up.failed until the owner enables it again', async () => {
    const org = await orgWithCard('pm_card_chargeCustomerFail');
    await enable(org, { threshold: '150', pack_id: 'starter' });
    assert.equal((await w.debit(org, '60')).status, 201);
    const off = await settled(org);
    assert.equal(off.enabled, false);
    assert.equal(off.disabled_reason, 'payment_failed');
    assert.equal(off.used_this_month, 1);
    assertAmount(await w.balance(org), '140');
    const failed = await waitFor(async () => {
      const types = (await allEvents(org)).map((e) => e.type);
      assert.ok(types.includes('auto_top_up.failed'), types.join());
      return (await allEvents(org)).filter((e) => e.type.endsWith('.failed'));
    });
    assert.deepEqual(failed.map((e) => e.type), ['purchase.failed', 'auto_top_up.failed']);
    assert.equal(failed[1].data.reason, 'payment_failed');
    assert.equal(failed[1].data.decline_code, 'card_declined');
    assert.equal(failed[0].data.source, 'auto_top_up');
    // It stays off: more spending below the threshold tries nothing.
    assert.equal((await w.debit(org, '10')).status, 201);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await stack.stripe.paymentIntentsOf(org)).length, 1);
    assert.equal((await getAutoTopUp(org)).json.disabled_reason, 'payment_failed');
    // Enabling again clears the reason; the next decision below the threshold tries again.
    const again = await enable(org, {});
    assert.equal(again.disabled_reason, null);
    await waitFor(async () => (await stack.stripe.paymentIntentsOf(org)).length === 2, 10_000);
    const second = await settled(org);
    assert.equal(second.disabled_reason, 'payment_failed');
    assert.equal(second.used_this_month, 2);
    assertAmount(await w.balance(org), '130');
    // The receiver got the failure, signed.
    await waitFor(() => receiver.accepted(org).some((e) => e.type === 'auto_top_up.failed'), 30_000);
  });
});

describe('events', () => {
  test('each crossing fires once and re-arms; every event reaches the receiver signed, in order, after refused attempts', async () => {
    const org = await w.newOrg();
    assert.equal((await putAlerts(org, { low_balance_threshold: '50' })).status, 200);
    assert.equal((await w.setCap(org, '180')).status, 200);
    assert.equal((await w.debit(org, '140')).status, 201); // 60 left
    assert.equal((await w.debit(org, '15')).status, 201); // 45: below 50
    assert.equal((await w.debit(org, '5')).status, 201); // 40: still below, nothing new
    assert.deepEqual((await getAlerts(org, roleToken(org, 'viewer'))).json, { low_balance_threshold: '50', low_balance: true });
    // The cap: 160 spent of 180; 25 more is refused, once an event.
    assertError(await w.debit(org, '25'), 429, 'daily_cap_reached');
    assertError(await w.debit(org, '25'), 429, 'daily_cap_reached');
    // A threshold below available re-arms the alert; the next drop under it fires again.
    assert.equal((await putAlerts(org, { low_balance_threshold: '30' })).status, 200);
    assert.equal((await w.debit(org, '15')).status, 201); // 25: below 30 again
    assert.equal((await w.debit(org, '5')).status, 201); // 20: cap 180 reached exactly, already fired today
    assert.equal((await w.setCap(org, '5000')).status, 200);
    assert.equal((await w.debit(org, '20')).status, 201); // 0: depleted
    const events = await allEvents(org);
    assert.deepEqual(events.map((e) => e.type), [
      'settings.changed', 'settings.changed', 'wallet.low_balance', 'wallet.daily_cap_reached',
      'settings.changed', 'wallet.low_balance', 'settings.changed', 'wallet.depleted',
    ]);
    assert.deepEqual(events[2].data, { available: '45', threshold: '50' });
    assert.equal(events[3].data.daily_cap, '180');
    assert.deepEqual(events[7].data, { balance: '0', available: '0' });
    const ids = events.map((e) => e.id);
    assert.deepEqual([...ids].sort(), ids, 'ids sort in order');
    // Delivered at least once each, in order, after FAIL_FIRST refusals each.
    const delivered = await waitFor(async () => {
      const accepted = receiver.accepted(org);
      assert.equal(accepted.length, events.length);
      return accepted;
    }, 60_000, 250);
    receiver.assertAllSigned();
    assert.deepEqual(delivered.map((e) => e.id), ids, 'accepted in order');
    assert.deepEqual(receiver.firstSeen(org).map((e) => e.id), ids, 'first seen in order');
    for (const event of events) {
      assert.ok(receiver.attemptsOf(event.id) >= FAIL_FIRST + 1, `${event.id}: ${receiver.attemptsOf(event.id)} attempts`);
      const { delivery, ...sent } = event;
      assert.deepEqual(delivered.find((e) => e.id === event.id), sent, `${delivery.status} ${event.id}`);
    }
    const listed = await waitFor(async () => {
      const all = await allEvents(org);
      assert.ok(all.every((e) => e.delivery.status === 'delivered'), JSON.stringify(all.map((e) => e.delivery)));
      return all;
    }, 10_000);
    for (const e of listed) assert.ok(e.delivery.attempts >= FAIL_FIRST + 1, JSON.stringify(e.delivery));
    // Pages: newest first, cursor by id.
    const first = await getEvents(org, { limit: 3 }, roleToken(org, 'admin'));
    assert.deepEqual(first.json.data.map((e) => e.id), [...ids].reverse().slice(0, 3));
    assert.equal(first.json.has_more, true);
    const next = await getEvents(org, { limit: 3, starting_after: first.json.data[2].id });
    assert.deepEqual(next.json.data.map((e) => e.id), [...ids].reverse().slice(3, 6));
    assertError(await getEvents(org, { starting_after: 'evt_nope' }), 422, 'invalid_request', { field: 'starting_after' });
    const otherOrg = await w.newOrg();
    assertError(await getEvents(otherOrg, { starting_after: ids[0] }), 422, 'invalid_request', { field: 'starting_after' });
  });
});
