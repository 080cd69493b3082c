// Money at Stripe's edges (SPEC §10) for the end-to-end tests: purchases that
// only a webhook can credit (3-D Secure, authenticated at localstripe),
// refunds made at localstripe and the `charge.refunded` events built from the
// charge localstripe returns (it sends no refund webhooks), disputes (which
// localstripe does not model: the events are built here, about real
// PaymentIntents), signed deliveries, pausing localstripe (SIGSTOP), and the
// ledger's running balance over every kind of entry.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { ownerToken, randomId, units } from './harness.mjs';
import { deliver, eventPayload, signatureHeader } from './stripe.mjs';

/** A card that asks for 3-D Secure: an off-session purchase on it stops at requires_action. */
export const THREE_D_SECURE_CARD = '4000002500003155';

/** Kinds that add credits; every other kind removes them. */
export const CREDIT_KINDS = ['trial_grant', 'purchase', 'dispute_reinstatement'];

/** Each `balance_after` is the running sum of the ledger (every kind), which ends at `balance`. */
export function assertLedgerAddsUp(entriesNewestFirst, balance) {
  let running = 0n;
  for (const entry of [...entriesNewestFirst].reverse()) {
    running += CREDIT_KINDS.includes(entry.kind) ? units(entry.amount) : -units(entry.amount);
    assert.ok(running >= 0n, `the balance went below zero at ${JSON.stringify(entry)}`);
    assert.equal(units(entry.balance_after), running, `balance_after of ${JSON.stringify(entry)}`);
  }
  assert.equal(running, units(balance), 'balance == sum of the ledger');
}

/** `floor(credits × part / whole)` to 1/10,000 credit, in units. */
export const shareUnits = (creditsUnits, part, whole) => (creditsUnits * BigInt(part)) / BigInt(whole);

/** Units (1/10,000 credit) as the API writes them: no trailing zeros. */
export function decimal(u) {
  const sign = u < 0n ? '-' : '';
  const abs = u < 0n ? -u : u;
  const frac = String(abs % 10_000n).padStart(4, '0').replace(/0+$/, '');
  return `${sign}${abs / 10_000n}${frac ? `.${frac}` : ''}`;
}

// ---------------------------------------------------------------------------
// Purchases

export async function putCardOnFile(client, org, paymentMethod = 'pm_card_visa') {
  const res = await client.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethod } });
  assert.equal(res.status, 200, res.text);
  return res.json;
}

export function buy(client, org, packId, key = randomId('key_')) {
  return client.call('POST', '/v1/orgs/{org}/purchases', { org }, {
    token: ownerToken(org),
    body: { pack_id: packId },
    headers: { 'idempotency-key': key },
  });
}

export function getPurchase(client, org, id) {
  return client.call('GET', '/v1/orgs/{org}/purchases/{purchase_id}', { org, purchase_id: id }, { token: ownerToken(org) });
}

/** An owner purchase of `pack` charged and credited at once (a card on file that pays). */
export async function paidPurchase(client, org, pack) {
  const res = await buy(client, org, pack);
  assert.equal(res.status, 201, res.summary);
  assert.equal(res.json.status, 'succeeded', res.summary);
  return res.json;
}

/**
 * A purchase of `pack` on a 3-D Secure card (put on file first unless
 * `cardOnFile`), authenticated at localstripe: Stripe says succeeded, and
 * only a webhook (or a lookup) credits it. Returns `{purchase, intent}`,
 * the intent as localstripe renders it now.
 */
export async function authenticatedPurchase(client, stripe, org, pack, { cardOnFile = false, key } = {}) {
  if (!cardOnFile) await putCardOnFile(client, org, await stripe.cardPaymentMethod(THREE_D_SECURE_CARD));
  const res = await buy(client, org, pack, key);
  assert.equal(res.status, 201, res.summary);
  assert.equal(res.json.status, 'requires_action', res.summary);
  const auth = await stripe.authenticate(res.json.payment_intent_id, res.json.client_secret);
  assert.equal(auth.status, 200, auth.text);
  const intent = await stripe.paymentIntent(res.json.payment_intent_id);
  assert.equal(intent.status, 'succeeded');
  return { purchase: res.json, intent };
}

// ---------------------------------------------------------------------------
// Stripe's side: refunds, charges, disputes, signed deliveries

export const chargeIdOf = (intent) => (typeof intent.latest_charge === 'string' ? intent.latest_charge : intent.latest_charge.id);

/** Refunds `amount` cents of a PaymentIntent at localstripe; returns the charge as Stripe shows it afterwards. */
export async function refundAtStripe(stripe, intentId, amount) {
  const refund = await stripe.post('/v1/refunds', { payment_intent: intentId, amount });
  assert.equal(refund.status, 200, refund.text);
  const charge = await stripe.get(`/v1/charges/${refund.json.charge}`);
  assert.equal(charge.status, 200, charge.text);
  assert.equal(charge.json.payment_intent, intentId, charge.text);
  return charge.json;
}

/**
 * A PaymentIntent made and paid at localstripe by hand for a new customer
 * (not the organization's), with `metadata` (say, naming one of our purchases).
 */
export async function foreignPaidIntent(stripe, metadata, amount = 1000) {
  const customer = await stripe.post('/v1/customers', { description: 'someone else' });
  assert.equal(customer.status, 200, customer.text);
  const pm = await stripe.post('/v1/payment_methods/pm_card_visa/attach', { customer: customer.json.id });
  assert.equal(pm.status, 200, pm.text);
  const pi = await stripe.post('/v1/payment_intents', {
    amount, currency: 'usd', customer: customer.json.id, payment_method: pm.json.id,
    confirm: 'true', off_session: 'true', metadata,
  });
  assert.equal(pi.status, 200, pi.text);
  assert.equal(pi.json.status, 'succeeded');
  return pi.json;
}

/** A dispute object as Stripe sends it in `charge.dispute.*` events. */
export function dispute(intent, { id = randomId('dp_'), status = 'needs_response' } = {}) {
  return {
    id,
    object: 'dispute',
    amount: intent.amount,
    currency: intent.currency ?? 'usd',
    charge: chargeIdOf(intent),
    payment_intent: intent.id,
    reason: 'fraudulent',
    status,
    metadata: {},
  };
}

/** POSTs a freshly signed delivery of `payload` (one event, so the same id on every delivery). */
export function send(base, payload) {
  return deliver(base, payload, signatureHeader(payload));
}

/** Builds and delivers an event; returns `{res, payload}`. */
export async function sendEvent(base, type, object) {
  const payload = eventPayload(type, object);
  return { res: await send(base, payload), payload };
}

/** Delivers `payload` `times` times at once; each answer must be 200 {received: true}. */
export async function sendAll(base, payload, times = 1) {
  const answers = await Promise.all(Array.from({ length: times }, () => send(base, payload)));
  for (const res of answers) {
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { received: true });
  }
}

// ---------------------------------------------------------------------------
// Pausing localstripe: SIGSTOP keeps its socket open (connections are
// accepted by the kernel) but nothing is answered until SIGCONT.

/** The pid of the localstripe listening on `port` (started by stripe.mjs). */
export function localstripePid(port) {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv;
    try {
      argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    const at = argv.indexOf('--port');
    if (argv.some((a) => a.endsWith('stripe-emulator.py')) && at > 0 && argv[at + 1] === String(port)) return Number(entry);
  }
  throw new Error(`no localstripe process listening on ${port}`);
}

export function pauseStripe(stripe) {
  const pid = localstripePid(stripe.port);
  process.kill(pid, 'SIGSTOP');
  let resumed = false;
  const resume = () => {
    if (resumed) return;
    resumed = true;
    try {
      process.kill(pid, 'SIGCONT');
    } catch (err) {
      if (err.code !== 'ESRCH') throw err;
    }
  };
  // Never leave it stopped, whatever a test does.
  process.once('exit', resume);
  return resume;
}

// ---------------------------------------------------------------------------
// Events and auto top-up

/** Every event of `org`, oldest first, through the API's pages. */
export async function allEvents(client, org) {
  const out = [];
  let cursor;
  for (let page = 0; page < 100; page++) {
    const query = new URLSearchParams({ limit: '100' });
    if (cursor) query.set('starting_after', cursor);
    const res = await client.call('GET', `/v1/orgs/{org}/events?${query}`, { org }, { token: ownerToken(org) });
    assert.equal(res.status, 200, res.summary);
    out.push(...res.json.data);
    if (!res.json.has_more) return out.reverse();
    cursor = res.json.data.at(-1).id;
  }
  throw new Error('events pagination did not end');
}

export const getAutoTopUp = (client, org) => client.call('GET', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org) });

export async function putAutoTopUp(client, org, body) {
  const res = await client.call('PUT', '/v1/orgs/{org}/auto-top-up', { org }, { token: ownerToken(org), body });
  assert.equal(res.status, 200, res.summary);
  return res.json;
}

/** Every transaction (D1) of `org`, newest first. */
export async function allTransactions(client, org) {
  const out = [];
  let cursor;
  for (let page = 0; page < 100; page++) {
    const query = new URLSearchParams({ limit: '100' });
    if (cursor) query.set('starting_after', cursor);
    const res = await client.call('GET', `/v1/orgs/{org}/transactions?${query}`, { org }, { token: ownerToken(org) });
    assert.equal(res.status, 200, res.summary);
    out.push(...res.json.data);
    if (!res.json.has_more) return out;
    cursor = res.json.data.at(-1).id;
  }
  throw new Error('transactions pagination did not end');
}
