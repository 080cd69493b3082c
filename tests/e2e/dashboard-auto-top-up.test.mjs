// Automatic top-up, the low-balance alert and the recent events in the
// dashboard, in a real browser (Debian's Chromium driven by playwright-core,
// as dashboard.test.mjs) against the real worker and its own localstripe (a
// card on file needs one). Every change made in the page is checked through
// the API too. Refunds and disputes are Stripe's signed events, as Stripe
// sends them (tests/e2e/stripe.mjs). Screenshots go to tests/artifacts/ (gitignored).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { api, ownerToken, randomId, token, waitFor } from './harness.mjs';
import { deliver, eventPayload, signatureHeader, startStack } from './stripe.mjs';
import {
  TIME_ZONE, assertNoProblems, launchBrowser, openPage as browserOpenPage, shot, signIn as browserSignIn,
} from './browser.mjs';

let stack; // this file's localstripe and the worker that uses it
let worker;
let w;
let browser;

before(async () => {
  stack = await startStack();
  ({ worker } = stack);
  w = api(worker.base);
  browser = await launchBrowser();
}, { timeout: 180_000 });

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** This file's browser helpers, bound to its browser and worker. */
const openPage = (opts) => browserOpenPage(browser.context, opts);
const signIn = (page, opts) => browserSignIn(page, worker.base, opts);

/** GET of an organization route as `tok`, asserted 200; its JSON. */
async function read(org, route, tok = ownerToken(org)) {
  const res = await w.req('GET', `/v1/orgs/${org}/${route}`, { token: tok });
  assert.equal(res.status, 200, res.summary);
  return res.json;
}
const put = (org, route, body, tok = ownerToken(org)) => w.req('PUT', `/v1/orgs/${org}/${route}`, { token: tok, body });

/** The development route: a Stripe test card becomes the organization's default payment method. */
async function putCardOnFile(org, paymentMethod = 'pm_card_visa') {
  const res = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: paymentMethod } });
  assert.equal(res.status, 200, res.summary);
}

/** Every event of an organization, newest first, following the cursor. */
async function eventsOf(org, tok = ownerToken(org)) {
  const events = [];
  let cursor;
  for (;;) {
    const page = await read(org, `events?limit=100${cursor ? `&starting_after=${cursor}` : ''}`, tok);
    events.push(...page.data);
    if (!page.has_more) return events;
    cursor = page.data.at(-1).id;
  }
}

/** "December 2026" for "2026-12", as the page writes the API's month. */
const monthName = (month) => new Intl.DateTimeFormat('en-US', { month: 'long', year: 'numeric', timeZone: 'UTC' })
  .format(new Date(`${month}-01T00:00:00Z`));
const shownIds = (page) => page.locator('#events-body tr').evaluateAll((rows) => rows.map((tr) => tr.dataset.id));
const detailsOf = (page, id) => page.locator(`#events-body tr[data-id="${id}"] td.details`).textContent();
const deliveryText = ({ status, attempts }) =>
  `${status[0].toUpperCase()}${status.slice(1)} · ${attempts} attempt${attempts === 1 ? '' : 's'}`;

/** Sends a Stripe event about `object`, signed as Stripe signs it; the worker must acknowledge it. */
async function stripeEvent(type, object) {
  const payload = eventPayload(type, object);
  const res = await deliver(worker.base, payload, signatureHeader(payload));
  assert.equal(res.status, 200, `${type}: ${res.text}`);
  assert.deepEqual(res.json, { received: true });
}

/** Answers the page's next GET of `route` (of `org`) with 429 rate_limited and `Retry-After`, as the read limits do. */
async function rateLimitOnce(page, org, route, retryAfter) {
  const pattern = new RegExp(`/v1/orgs/${org}/${route}(\\?|$)`);
  let answered = 0;
  await page.route(pattern, async (r) => {
    if (answered++ > 0) return r.continue();
    await r.fulfill({
      status: 429,
      headers: { 'retry-after': String(retryAfter), 'content-type': 'application/json' },
      body: JSON.stringify({ error: { code: 'rate_limited', message: `Too many reads of this kind for this organization; retry in ${retryAfter} seconds.` } }),
    });
  });
  return () => answered;
}

async function assertNoSidewaysScroll(page) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at phone width`);
}

describe('automatic top-up and the low-balance alert', () => {
  test('the owner turns automatic top-up on, is refused a bad threshold, sets the alert, and sees the banner and the events', async () => {
    const org = await w.newOrg();
    const initial = await read(org, 'auto-top-up');
    assert.equal(initial.enabled, false);
    const page = await openPage();
    await signIn(page, { org, sub: 'olivia', role: 'owner' });
    const form = {
      enabled: page.getByLabel('Top up automatically'),
      threshold: page.getByLabel('Top up when available credits fall below'),
      pack: page.getByLabel('Pack to buy'),
      limit: page.getByLabel('Top-ups per month, at most'),
      save: page.getByRole('button', { name: 'Save automatic top-up' }),
    };
    await page.locator('#atu-state', { hasText: 'Off' }).waitFor();
    assert.equal(await page.locator('#atu-threshold').textContent(), 'Not set');
    assert.equal(await page.locator('#atu-pack').textContent(), 'Not chosen');
    assert.equal(await page.locator('#atu-limit').textContent(), `${initial.monthly_limit} top-ups a month`);
    assert.equal(await page.locator('#atu-used').textContent(),
      `0 of ${initial.monthly_limit} in ${monthName(initial.month)} (UTC)`);
    assert.equal(await page.locator('#atu-in-flight').textContent(), 'No');
    assert.equal(await form.enabled.isChecked(), false);
    assert.equal(await form.limit.inputValue(), String(initial.monthly_limit));
    // Every pack of the catalogue can be chosen, by name.
    const packs = (await w.req('GET', '/v1/packs', { token: ownerToken(org) })).json;
    assert.deepEqual((await form.pack.locator('option').allTextContents()).slice(1).map((t) => t.split(':')[0]),
      packs.map((p) => p.name));

    // No card on file yet: turning it on is refused with the reason, and nothing changes.
    await form.enabled.check();
    await form.threshold.fill('10');
    await form.pack.selectOption({ label: 'Starter: 1,000 credits for $10.00' });
    await form.limit.fill('2');
    await form.save.click();
    await page.locator('#atu-enabled-message.error').waitFor();
    assert.match(await page.locator('#atu-enabled-message').textContent(), /no payment method is on file/);
    assert.deepEqual(await read(org, 'auto-top-up'), initial, 'the refused change was not applied');
    await shot(page, 'auto-top-up-owner-no-card');

    // With a card on file the same form is saved.
    await putCardOnFile(org);
    await form.save.click();
    await page.locator('#atu-message.ok').waitFor();
    assert.equal(await page.locator('#atu-message').textContent(),
      'Saved: when available credits fall below 10 credits, Starter is bought automatically, at most 2 top-ups a month.');
    const saved = await read(org, 'auto-top-up');
    assert.deepEqual(
      [saved.enabled, saved.threshold, saved.pack_id, saved.monthly_limit, saved.disabled_reason, saved.in_flight],
      [true, '10', 'starter', 2, null, false]);
    assert.equal(await page.locator('#atu-state').textContent(), 'On');
    assert.equal(await page.locator('#atu-threshold').textContent(), 'Below 10 credits');
    assert.equal(await page.locator('#atu-pack').textContent(), 'Starter: 1,000 credits for $10.00');
    assert.equal(await page.locator('#atu-limit').textContent(), '2 top-ups a month');
    assert.equal(await page.locator('#atu-reason').isVisible(), false);

    // A threshold the server refuses: its own message on that field, and nothing changes.
    await form.threshold.fill('-5');
    await form.save.click();
    await page.locator('#atu-threshold-message.error').waitFor();
    const refused = await put(org, 'auto-top-up', { enabled: true, threshold: '-5', pack_id: 'starter', monthly_limit: 2 });
    assert.equal(refused.status, 422, refused.summary);
    assert.equal(refused.json.error.field, 'threshold');
    assert.equal(await page.locator('#atu-threshold-message').textContent(), `Not saved: ${refused.json.error.message}`);
    assert.equal(await form.threshold.getAttribute('aria-invalid'), 'true');
    assert.match(await form.threshold.getAttribute('aria-describedby'), /atu-threshold-message/);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'atu-threshold-input');
    assert.deepEqual(await read(org, 'auto-top-up'), saved, 'the refused threshold was not applied');
    await shot(page, 'auto-top-up-owner-refused');
    await form.threshold.fill('10');

    // The alert threshold, by keyboard; 200 available is not under it yet.
    const alert = page.getByLabel('Alert below (credits)');
    await alert.fill('150');
    await alert.press('Enter');
    await page.locator('#alerts-message.ok').waitFor();
    assert.equal(await page.locator('#alerts-message').textContent(), 'Saved: the alert shows below 150 credits.');
    assert.deepEqual(await read(org, 'alerts'), { low_balance_threshold: '150', low_balance: false });
    assert.equal(await page.locator('#alerts-current').textContent(), 'Alert below 150 credits');
    assert.equal(await page.locator('#low-balance-banner').isVisible(), false);

    // AI calls elsewhere take available to 120: under the alert, above the top-up threshold.
    assert.equal((await w.debit(org, '80', { feature: 'chat' })).status, 201);
    assert.deepEqual(await read(org, 'alerts'), { low_balance_threshold: '150', low_balance: true });
    const lowEvent = await waitFor(async () => (await eventsOf(org)).find((e) => e.type === 'wallet.low_balance'), 10_000);
    assert.deepEqual(lowEvent.data, { available: '120', threshold: '150' });
    await page.reload();
    const banner = page.locator('#low-balance-banner');
    await banner.waitFor({ state: 'visible' });
    assert.equal(await banner.textContent(), 'Credits are running low.Available: 120 credits, under the alert threshold of ' +
      '150 credits. Buy a credit pack or turn on automatic top-up on the Wallet tab.');
    assert.equal(await page.locator('#available').textContent(), '120 credits');
    // The banner stays on the other tabs, as the paused one does.
    await page.getByRole('tab', { name: 'Transactions' }).click();
    assert.equal(await banner.isVisible(), true);
    await page.getByRole('tab', { name: 'Wallet' }).click();
    assert.equal((await read(org, 'wallet')).balance, '120', 'no top-up above its threshold');

    // The events: the two saved changes (not the refused ones) and the low balance, as the API lists them.
    const events = await eventsOf(org);
    await page.locator(`#events-body tr[data-id="${events[0].id}"]`).waitFor();
    assert.deepEqual(await shownIds(page), events.map((e) => e.id));
    const changes = events.filter((e) => e.type === 'settings.changed');
    assert.deepEqual(changes.map((e) => e.data.setting), ['alerts', 'auto_top_up']);
    assert.deepEqual(changes.map((e) => [e.data.sub, e.data.role]), [['olivia', 'owner'], ['olivia', 'owner']]);
    assert.equal(await detailsOf(page, lowEvent.id), '120 credits available, under the alert threshold of 150 credits.');
    assert.equal(await detailsOf(page, changes[0].id),
      'Low-balance alert by olivia (Owner): no alert → below 150 credits.');
    assert.match(await detailsOf(page, changes[1].id),
      /^Automatic top-up by olivia \(Owner\): Automatic top-up: off → on; Threshold: not set → below 10 credits; Pack: none → Starter; Monthly limit: \d+ a month → 2 a month\.$/);
    const lowRow = page.locator(`#events-body tr[data-id="${lowEvent.id}"]`);
    assert.equal(await lowRow.locator('td.event-type').textContent(), 'Low balance wallet.low_balance');
    assert.equal(await lowRow.locator('td.delivery').textContent(), deliveryText(events.find((e) => e.id === lowEvent.id).delivery));
    const when = lowRow.locator('time');
    assert.equal(await when.getAttribute('datetime'), lowEvent.created_at);
    assert.equal(await when.textContent(), new Intl.DateTimeFormat('en-US', { dateStyle: 'medium', timeStyle: 'short', timeZone: TIME_ZONE })
      .format(new Date(lowEvent.created_at)));
    assert.equal(await page.getByRole('button', { name: 'Load more' }).isVisible(), false, 'everything fits one page');
    await shot(page, 'auto-top-up-owner-low-balance');

    // More than a page: 20 newest, then "Load more" with the API's cursor.
    for (let i = 1; i <= 19; i++) assert.equal((await put(org, 'alerts', { low_balance_threshold: String(150 + i) })).status, 200);
    await page.reload();
    let all = await eventsOf(org);
    assert.ok(all.length > 20, `${all.length} events`);
    await page.locator(`#events-body tr[data-id="${all[0].id}"]`).waitFor();
    assert.deepEqual(await shownIds(page), all.slice(0, 20).map((e) => e.id));
    // A change made now shows on top when the figures refresh; the rows shown stay, and "Load more" goes on after them.
    const shownBefore = await shownIds(page);
    assert.equal((await put(org, 'alerts', { low_balance_threshold: '140' })).status, 200);
    await page.getByRole('tab', { name: 'Wallet' }).click(); // the tab refreshes the wallet
    all = await eventsOf(org);
    const added = all.findIndex((e) => e.id === shownBefore[0]);
    assert.ok(added >= 1, 'the change is a new event');
    await page.locator(`#events-body tr[data-id="${all[0].id}"]`).waitFor();
    assert.deepEqual(await shownIds(page), all.slice(0, added + 20).map((e) => e.id));
    await page.getByRole('button', { name: 'Load more' }).click();
    await page.locator(`#events-body tr[data-id="${all.at(-1).id}"]`).waitFor();
    assert.deepEqual(await shownIds(page), all.map((e) => e.id));
    assert.equal(await page.getByRole('button', { name: 'Load more' }).isVisible(), false);
    // 120 is under the new threshold too: the banner names it.
    await banner.filter({ hasText: 'threshold of 140 credits' }).waitFor();

    // Every control is named; the page fits a phone.
    const unnamed = await page.$$eval('input, select, button', (els) =>
      els.filter((el) => el.offsetParent !== null && !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
        .map((el) => el.outerHTML));
    assert.deepEqual(unnamed, []);
    await page.setViewportSize({ width: 390, height: 844 });
    await page.locator('#atu-title').scrollIntoViewIfNeeded();
    await shot(page, 'auto-top-up-owner-phone');
    await assertNoSidewaysScroll(page);
    assertNoProblems(page, ['409 /v1/orgs/', '422 /v1/orgs/']);
    await page.close();
  });

  test('a debit under the threshold buys the pack automatically, the monthly limit pauses it, and a declined card turns it off until enabled again', async () => {
    const org = await w.newOrg();
    assert.equal((await w.setCap(org, '5000')).status, 200); // room for the debits below
    await putCardOnFile(org);
    assert.equal((await put(org, 'auto-top-up', { enabled: true, threshold: '150', pack_id: 'starter', monthly_limit: 1 })).status, 200);
    // AI calls take available to 140, under 150: one Starter purchase starts, charged in the background.
    assert.equal((await w.debit(org, '60')).status, 201);
    await waitFor(async () => (await read(org, 'wallet')).balance === '1140', 30_000);
    let state = await waitFor(async () => {
      const s = await read(org, 'auto-top-up');
      return !s.in_flight && s;
    }, 10_000);
    assert.deepEqual([state.enabled, state.used_this_month, state.disabled_reason], [true, 1, null]);

    const page = await openPage();
    await signIn(page, { org, sub: 'olivia', role: 'owner' });
    await page.locator('#atu-used', { hasText: `1 of 1 in ${monthName(state.month)} (UTC)` }).waitFor();
    assert.equal(await page.locator('#atu-state').textContent(), 'On');
    assert.equal(await page.locator('#atu-in-flight').textContent(), 'No');
    assert.equal(await page.locator('#balance').textContent(), '1,140');
    const bought = (await eventsOf(org)).find((e) => e.type === 'purchase.succeeded');
    assert.equal(bought.data.source, 'auto_top_up');
    await page.locator(`#events-body tr[data-id="${bought.id}"]`).waitFor();
    assert.equal(await detailsOf(page, bought.id), 'Starter, automatic top-up: 1,000 credits for $10.00.');

    // Under the threshold again with this month's one top-up used: paused, nothing charged.
    assert.equal((await w.debit(org, '1000')).status, 201);
    state = await read(org, 'auto-top-up');
    assert.deepEqual([state.enabled, state.disabled_reason, state.in_flight], [true, 'monthly_limit_reached', false]);
    await page.reload();
    await page.locator('#atu-state', { hasText: 'Paused' }).waitFor();
    assert.equal(await page.locator('#atu-reason').textContent(), "Paused: this month's limit is used; resumes on the 1st (UTC).");
    assert.equal((await read(org, 'wallet')).balance, '140');
    await shot(page, 'auto-top-up-owner-paused');

    // The card on file is now declined. Raising the limit in the page starts a top-up at once; it fails.
    await putCardOnFile(org, 'pm_card_chargeCustomerFail');
    await page.getByLabel('Top-ups per month, at most').fill('3');
    await page.getByRole('button', { name: 'Save automatic top-up' }).click();
    await page.locator('#atu-message.ok').waitFor();
    assert.match(await page.locator('#atu-message').textContent(), /at most 3 top-ups a month\. A top-up is being charged now\.$/);
    state = await waitFor(async () => {
      const s = await read(org, 'auto-top-up');
      return s.disabled_reason === 'payment_failed' && s;
    }, 30_000);
    assert.deepEqual([state.enabled, state.used_this_month, state.in_flight], [false, 2, false]);
    await page.reload();
    await page.locator('#atu-state', { hasText: 'Off' }).waitFor();
    assert.equal(await page.locator('#atu-reason').textContent(), 'Off: the last automatic charge was declined; enable it again to retry.');
    assert.equal(await page.getByLabel('Top up automatically').isChecked(), false);
    const events = await eventsOf(org);
    const failed = events.find((e) => e.type === 'auto_top_up.failed');
    const declined = events.find((e) => e.type === 'purchase.failed');
    assert.deepEqual([failed.data.reason, declined.data.source], ['payment_failed', 'auto_top_up']);
    const code = (c) => (c ? ` (${c})` : '');
    await page.locator(`#events-body tr[data-id="${failed.id}"]`).waitFor();
    assert.equal(await detailsOf(page, failed.id),
      `Automatic top-up stopped: the last automatic charge was declined; enable it again to retry${code(failed.data.decline_code)}.`);
    assert.equal(await detailsOf(page, declined.id),
      `Starter, automatic top-up: the payment failed${code(declined.data.decline_code)}; no credits were added.`);
    assert.equal((await read(org, 'wallet')).balance, '140', 'no credits from the declined charge');
    await shot(page, 'auto-top-up-owner-declined');

    // A working card again: enabling it in the page clears the reason and tries at once.
    await putCardOnFile(org);
    await page.getByLabel('Top up automatically').check();
    await page.getByRole('button', { name: 'Save automatic top-up' }).click();
    await page.locator('#atu-message.ok').waitFor();
    await waitFor(async () => (await read(org, 'wallet')).balance === '1140', 30_000);
    state = await waitFor(async () => {
      const s = await read(org, 'auto-top-up');
      return !s.in_flight && s;
    }, 10_000);
    assert.deepEqual([state.enabled, state.disabled_reason, state.used_this_month], [true, null, 3]);
    await page.reload();
    await page.locator('#atu-used', { hasText: '3 of 3' }).waitFor();
    assert.equal(await page.locator('#atu-state').textContent(), 'On');
    assert.equal(await page.locator('#atu-reason').isVisible(), false);

    // The Transactions tab names the purchases automatic top-up made (the declined one credited nothing).
    const txs = await waitFor(async () => {
      const page1 = await read(org, 'transactions?limit=10');
      return page1.data.length === 3 && page1.data;
    }, 10_000);
    assert.deepEqual(txs.map((t) => [t.kind, t.source]), [['purchase', 'auto_top_up'], ['purchase', 'auto_top_up'], ['trial_grant', null]]);
    await page.getByRole('tab', { name: 'Transactions' }).click();
    await page.locator(`#tx-body tr[data-id="${txs[0].id}"]`).waitFor();
    assert.deepEqual(await page.locator('#tx-body tr td:nth-child(2)').allTextContents(), ['Automatic top-up', 'Automatic top-up', 'Trial credit']);
    await shot(page, 'auto-top-up-transactions');
    assertNoProblems(page);
    await page.close();
  });

  test('a refund and a dispute issued in Stripe show in Transactions as credits taken back, a won dispute as given back, and the dispute switches automatic top-up off with its reason', async () => {
    const org = await w.newOrg();
    await putCardOnFile(org);
    const on = await put(org, 'auto-top-up', { enabled: true, threshold: '100', pack_id: 'starter', monthly_limit: 3 });
    assert.equal(on.status, 200, on.summary);
    // The owner buys the Team pack (5,250 credits for $50): 5,450 with the trial.
    const bought = await w.req('POST', `/v1/orgs/${org}/purchases`, {
      token: ownerToken(org), body: { pack_id: 'team' }, headers: { 'idempotency-key': randomId('key_') },
    });
    assert.equal(bought.status, 201, bought.summary);
    assert.equal(bought.json.status, 'succeeded', bought.summary);
    const pi = bought.json.payment_intent_id;
    assert.equal((await read(org, 'wallet')).balance, '5450');

    // Support refunds $25 of the $50 in Stripe's dashboard: half the pack's credits go back (2,625, all available).
    const charge = { id: randomId('ch_'), object: 'charge', amount: 5000, amount_refunded: 2500, currency: 'usd', payment_intent: pi, status: 'succeeded' };
    await stripeEvent('charge.refunded', { ...charge, refunded: false });
    assert.equal((await read(org, 'wallet')).balance, '2825');
    // Then the bank disputes the payment: the rest (2,625) goes back and automatic top-up switches off.
    const dispute = { id: randomId('dp_'), object: 'dispute', amount: 2500, currency: 'usd', charge: charge.id, payment_intent: pi, reason: 'fraudulent', status: 'needs_response' };
    await stripeEvent('charge.dispute.created', dispute);
    assert.equal((await read(org, 'wallet')).balance, '200');
    const off = await read(org, 'auto-top-up');
    assert.deepEqual([off.enabled, off.disabled_reason, off.in_flight], [false, 'payment_disputed', false]);

    const page = await openPage();
    await signIn(page, { org, sub: 'olivia', role: 'owner' });
    await page.locator('#atu-state', { hasText: 'Off' }).waitFor();
    assert.equal(await page.locator('#atu-reason').textContent(),
      'Off: a payment was disputed with the bank; enable it again to resume. Check the card on file in your Lognitor billing settings first.');
    assert.equal(await page.getByLabel('Top up automatically').isChecked(), false);
    await shot(page, 'auto-top-up-disputed');

    // The dispute is won: exactly what it took comes back, once (Stripe delivers it twice).
    await stripeEvent('charge.dispute.closed', { ...dispute, status: 'won' });
    await stripeEvent('charge.dispute.closed', { ...dispute, status: 'won' });
    assert.equal((await read(org, 'wallet')).balance, '2825');
    const purchase = await read(org, `purchases/${bought.json.id}`);
    assert.deepEqual(
      [purchase.status, purchase.amount_refunded_cents, purchase.credits_refunded, purchase.credits_unrecovered, purchase.dispute_status, purchase.credits_reinstated],
      ['disputed', 2500, '2625', '0', 'won', '2625']);

    // Transactions (from the shard, a few seconds behind) list what refunds and disputes did, newest first.
    const txs = await waitFor(async () => {
      const first = await read(org, 'transactions?limit=10');
      return first.data.length === 5 && first.data;
    }, 10_000);
    assert.deepEqual(txs.map((t) => [t.kind, t.credits]), [
      ['dispute_reinstatement', '2625'], ['dispute_reversal', '2625'], ['refund_reversal', '2625'], ['purchase', '5250'], ['trial_grant', '200'],
    ]);
    // The tab's first request is refused by the read limit: the page says so and asks again when allowed.
    const limited = await rateLimitOnce(page, org, 'transactions', 2);
    await page.getByRole('tab', { name: 'Transactions' }).click();
    const txError = page.locator('#tx-error');
    await txError.filter({ hasText: 'Too many requests right now: retrying in' }).waitFor();
    assert.match(await txError.textContent(), /^Transactions: Too many requests right now: retrying in [12] s\.$/);
    await page.locator(`#tx-body tr[data-id="${txs[0].id}"]`).waitFor();
    assert.equal(await txError.isVisible(), false, 'the message goes once the retry answered');
    assert.equal(limited(), 2, 'refused once, then asked again');
    const rows = await page.locator('#tx-body tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].slice(1).map((td) => td.textContent)));
    assert.deepEqual(rows, [
      ['Dispute won', 'Team', '+2,625', '—', '2,825'],
      ['Dispute', 'Team', '\u22122,625', '—', '200'],
      ['Refund', 'Team', '\u22122,625', '$25.00 refunded', '2,825'],
      ['Purchase', 'Team', '+5,250', '$50.00', '5,450'],
      ['Trial credit', '—', '+200', 'Free', '200'],
    ]);
    assert.deepEqual(await page.locator('#tx-body td.minus').count(), 2, 'credits taken back are marked as such');
    await shot(page, 'transactions-refund-dispute');

    // The events say the same in words.
    await page.getByRole('tab', { name: 'Wallet' }).click();
    const events = await eventsOf(org);
    const byType = (type) => events.filter((e) => e.type === type);
    assert.deepEqual([byType('purchase.refunded').length, byType('purchase.disputed').length, byType('purchase.dispute_closed').length], [1, 1, 1]);
    const [refunded] = byType('purchase.refunded');
    const [disputed] = byType('purchase.disputed');
    const [closed] = byType('purchase.dispute_closed');
    await page.locator(`#events-body tr[data-id="${closed.id}"]`).waitFor();
    assert.equal(await detailsOf(page, refunded.id), '$25.00 of a purchase (bought by the owner) refunded in all: 2,625 credits taken back now.');
    assert.equal(await detailsOf(page, disputed.id), 'The bank disputed a purchase (bought by the owner): 2,625 credits taken back; ' +
      'automatic top-up, if it was on, is off until the owner enables it again.');
    assert.equal(await detailsOf(page, closed.id), 'Dispute won: 2,625 credits given back.');
    assert.equal(await page.locator(`#events-body tr[data-id="${closed.id}"] td.event-type`).textContent(), 'Dispute closed purchase.dispute_closed');

    // Usage refused once by the read limit: the message, then the report.
    await rateLimitOnce(page, org, 'usage', 1);
    await page.getByRole('tab', { name: 'AI Usage' }).click();
    await page.locator('#usage-error', { hasText: 'Usage: Too many requests right now: retrying in 1 s.' }).waitFor();
    await page.locator('#usage-error').waitFor({ state: 'hidden' });
    await page.locator('#usage-balance', { hasText: '2,825' }).waitFor();
    assertNoProblems(page, ['429 /v1/orgs/']);
    await page.close();
  });

  test('an admin, a member and a viewer read the settings and see the banner while low; only the admin gets the events', async () => {
    const org = await w.newOrg();
    await putCardOnFile(org);
    const set = await put(org, 'auto-top-up', { enabled: true, threshold: '5', pack_id: 'team', monthly_limit: 4 });
    assert.equal(set.status, 200, set.summary);
    assert.equal((await put(org, 'alerts', { low_balance_threshold: '190' })).status, 200);
    assert.equal((await w.debit(org, '20', { feature: 'auto_triage' })).status, 201);
    assert.equal((await read(org, 'alerts')).low_balance, true);
    const state = await read(org, 'auto-top-up');

    for (const role of ['admin', 'member', 'viewer']) {
      const tok = token({ org, role, sub: `user_${role}` });
      const page = await openPage();
      const eventRequests = [];
      page.on('request', (req) => {
        if (new URL(req.url()).pathname.endsWith('/events')) eventRequests.push(req.url());
      });
      await signIn(page, { org, sub: `user_${role}`, role });
      await page.locator('#atu-state', { hasText: 'On' }).waitFor();
      assert.equal(await page.locator('#atu-threshold').textContent(), 'Below 5 credits');
      assert.equal(await page.locator('#atu-pack').textContent(), 'Team: 5,250 credits for $50.00');
      assert.equal(await page.locator('#atu-limit').textContent(), '4 top-ups a month');
      assert.equal(await page.locator('#atu-used').textContent(), `0 of 4 in ${monthName(state.month)} (UTC)`);
      assert.equal(await page.locator('#alerts-current').textContent(), 'Alert below 190 credits');
      // Read-only: nothing to type in or press in either panel.
      for (const card of ['atu-title', 'alerts-title']) {
        const panel = page.locator(`section[aria-labelledby="${card}"]`);
        assert.equal(await panel.locator('input:visible, select:visible, button:visible').count(), 0, `${card}: no controls for a ${role}`);
      }
      await page.locator('#atu-readonly').waitFor({ state: 'visible' });
      await page.locator('#alerts-readonly').waitFor({ state: 'visible' });
      const banner = page.locator('#low-balance-banner');
      await banner.waitFor({ state: 'visible' });
      assert.equal(await banner.textContent(), 'Credits are running low.Available: 180 credits, under the alert threshold of ' +
        '190 credits. Ask your team owner to top up the wallet.');

      if (role === 'admin') {
        // The admin's own view of the events agrees with the page.
        const events = await eventsOf(org, tok);
        await page.locator(`#events-body tr[data-id="${events[0].id}"]`).waitFor();
        assert.deepEqual(await shownIds(page), events.map((e) => e.id));
        assert.deepEqual(events.map((e) => e.type).sort(), ['settings.changed', 'settings.changed', 'wallet.low_balance']);
      } else {
        assert.equal(await page.locator('#events').isVisible(), false, 'no events section');
        assert.deepEqual(eventRequests, [], 'the page does not ask for what the server refuses');
        assert.equal((await w.req('GET', `/v1/orgs/${org}/events`, { token: tok })).status, 403);
      }
      await shot(page, `auto-top-up-${role}`);

      // Above the alert again (the owner lowered it): no banner after a reload.
      if (role === 'member') {
        assert.equal((await put(org, 'alerts', { low_balance_threshold: '100' })).status, 200);
        await page.reload();
        await page.locator('#alerts-current', { hasText: 'Alert below 100 credits' }).waitFor();
        assert.equal(await banner.isVisible(), false);
        assert.equal((await put(org, 'alerts', { low_balance_threshold: '190' })).status, 200);
        await page.setViewportSize({ width: 390, height: 844 });
        await page.locator('#atu-title').scrollIntoViewIfNeeded();
        await shot(page, 'auto-top-up-member-phone');
        await assertNoSidewaysScroll(page);
      }
      assertNoProblems(page); // a 403 from the events route would be listed here
      await page.close();
    }
  });
});
