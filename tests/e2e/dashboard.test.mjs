// The Billing → Wallet page in a real browser (Debian's Chromium driven by
// playwright-core) against the real worker. Screenshots of each view go to
// tests/artifacts/ (gitignored) for people to look at.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { api, ownerToken, randomId, serviceToken, units, waitFor } from './harness.mjs';
import { startStack } from './stripe.mjs';
import { d1Execute, shardOf, sqlText } from './d1-local.mjs';
import {
  ROOT, assertNoProblems, launchBrowser, openPage as browserOpenPage, shot, signIn as browserSignIn,
} from './browser.mjs';
const DAY_MS = 86_400_000;

let stack; // this file's localstripe and the worker that uses it
let worker;
let LOCALSTRIPE_URL;
let w;
let browser;

before(async () => {
  assert.ok(fs.existsSync(path.join(ROOT, 'public/vendor/chart.umd.min.js')),
    'public/vendor/chart.umd.min.js is missing: run scripts/setup.sh (node scripts/vendor-assets.mjs)');
  stack = await startStack();
  ({ worker } = stack);
  LOCALSTRIPE_URL = stack.stripe.base;
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

describe('wallet view', () => {
  test('a member sees why buying is unavailable, and who to ask when credits run out', async () => {
    const org = await w.newOrg();
    const page = await openPage();
    await signIn(page, { org, sub: 'user_bob', role: 'member' });
    await assert.doesNotReject(page.getByText('200', { exact: true }).first().waitFor());
    const reason = page.locator('#buy-reason');
    await reason.waitFor({ state: 'visible' });
    assert.match(await reason.textContent(), /Only the team owner can buy credits/);
    const buttons = page.locator('#packs button');
    for (const button of await buttons.all()) {
      assert.equal(await button.isDisabled(), true, 'buy buttons are disabled for members');
      assert.equal(await button.getAttribute('aria-describedby'), 'buy-reason');
    }
    assert.equal(await page.locator('#cap-form').isHidden(), true, 'members cannot change the cap');
    await page.locator('#cap-readonly').waitFor({ state: 'visible' });
    await shot(page, 'wallet-member');

    // Spend everything: the banner tells a member to contact the owner.
    const drain = await w.debit(org, '200', { feature: 'chat', user_id: 'user_bob' });
    assert.equal(drain.status, 201, drain.text);
    await page.reload();
    const banner = page.locator('#banner');
    await banner.waitFor({ state: 'visible' });
    assert.equal(await banner.getAttribute('data-state'), 'paused_no_credits');
    assert.match(await banner.textContent(), /out of credits.*contact your team owner/s);
    assert.equal(await banner.getByRole('button').count(), 0, 'no buy button for a member');
    await shot(page, 'wallet-member-no-credits');
    assertNoProblems(page);
    await page.close();
  });

  test('the owner changes the daily cap, and an invalid value is refused', async () => {
    const org = await w.newOrg();
    const page = await openPage();
    await signIn(page, { org, sub: 'user_owner', role: 'owner' });
    const input = page.getByLabel('New daily cap (credits)');
    const save = page.getByRole('button', { name: 'Save cap' });
    const message = page.locator('#cap-message');
    assert.equal(await input.inputValue(), '500');

    for (const [value, why] of [['60000', /at most 50,000/], ['1.00001', /4 decimal places/], ['0', /more than 0/], ['-5', /without a sign/], ['', /Enter an amount/]]) {
      await input.fill(value);
      await save.click();
      await page.locator('#cap-message.error').waitFor();
      assert.match(await message.textContent(), why, `value ${JSON.stringify(value)}`);
      assert.equal(await input.getAttribute('aria-invalid'), 'true');
    }
    await shot(page, 'wallet-owner-cap-refused');
    assert.equal((await w.wallet(org)).json.daily_cap, '500', 'nothing invalid reached the wallet');

    // Keyboard only: type a valid cap and press Enter.
    await input.fill('750.5');
    await input.press('Enter');
    await page.locator('#cap-message.ok').waitFor();
    assert.match(await message.textContent(), /750\.5 credits/);
    assert.equal(await input.getAttribute('aria-invalid'), 'false');
    assert.equal(await page.locator('#daily-cap').textContent(), '750.5');
    assert.equal((await w.wallet(org)).json.daily_cap, '750.5');

    // Every form control has an accessible name.
    const unnamed = await page.$$eval('input, select, button', (els) =>
      els.filter((el) => el.offsetParent !== null && !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
        .map((el) => el.outerHTML));
    assert.deepEqual(unnamed, []);
    await shot(page, 'wallet-owner');

    // The same page at phone width.
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'wallet-owner-phone');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at phone width`);
    assertNoProblems(page);
    await page.close();
  });

  test('the paused banner appears when the daily cap is reached, with the local resume time', async () => {
    const org = await w.newOrg();
    assert.equal((await w.setCap(org, '5')).status, 200);
    const spent = await w.debit(org, '5', { feature: 'auto_triage' });
    assert.equal(spent.status, 201, spent.text);
    assert.equal((await w.wallet(org)).json.status, 'paused_daily_cap');

    for (const role of ['owner', 'viewer']) {
      const page = await openPage();
      await signIn(page, { org, sub: `user_${role}`, role });
      const banner = page.locator('#banner');
      await banner.waitFor({ state: 'visible' });
      assert.equal(await banner.getAttribute('data-state'), 'paused_daily_cap');
      const text = await banner.textContent();
      assert.match(text, /AI features resume at 00:00 UTC/);
      assert.match(text, /09:00 AM GMT\+9/, 'midnight UTC shown in the viewer’s zone (Tokyo)');
      assert.equal(/raise the daily cap/.test(text), role === 'owner');
      assert.match(await page.locator('#status-pill').textContent(), /daily cap reached/);
      // The banner stays on the other tabs.
      await page.getByRole('tab', { name: 'AI Usage' }).click();
      assert.equal(await banner.isVisible(), true);
      await page.getByRole('tab', { name: 'Wallet' }).click();
      await shot(page, `wallet-paused-cap-${role}`);
      assertNoProblems(page);
      await page.close();
    }
  });

  test('the owner buys a pack with the card on file and sees the credits arrive', async () => {
    // A Stripe customer with a default card in the local Stripe the worker talks to.
    const stripe = async (p, form) => {
      const res = await fetch(`${LOCALSTRIPE_URL}${p}`, {
        method: 'POST',
        headers: { authorization: 'Bearer sk_test_dashboard', 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(form),
        signal: AbortSignal.timeout(10_000),
      }).catch((err) => assert.fail(`the local Stripe at ${LOCALSTRIPE_URL} is not reachable: ${err.message}`));
      assert.ok(res.ok, `${p}: ${res.status} ${await res.clone().text()}`);
      return res.json();
    };
    const customer = await stripe('/v1/customers', { email: 'owner@example.com' });
    await stripe('/v1/payment_methods/pm_card_visa/attach', { customer: customer.id });
    await stripe(`/v1/customers/${customer.id}`, { 'invoice_settings[default_payment_method]': 'pm_card_visa' });
    const org = randomId('org_');
    const signup = await w.signup(org, { body: { org_id: org, owner_id: 'user_owner', stripe_customer_id: customer.id } });
    assert.equal(signup.status, 201, signup.text);

    const page = await openPage();
    await signIn(page, { org, sub: 'user_owner', role: 'owner' });
    const before = (await w.wallet(org)).json.balance;
    const pack = page.locator('#packs li').first();
    const credits = (await pack.locator('.credits').textContent()).replace(/[^\d.]/g, '');
    await pack.getByRole('button').click();
    await page.getByRole('dialog').waitFor();
    await shot(page, 'wallet-buy-confirm');
    await page.getByRole('button', { name: 'Buy now' }).click();
    await page.locator('#purchase-status.ok').waitFor({ timeout: 70_000 });
    const after = (await w.wallet(org)).json.balance;
    assert.equal(units(after) - units(before), units(credits));
    assert.equal(units((await page.locator('#balance').textContent()).replace(/,/g, '')), units(after));
    await shot(page, 'wallet-bought');
    await page.getByRole('tab', { name: 'Transactions' }).click();
    const first = page.locator('#tx-body tr').first();
    await first.waitFor();
    assert.match(await first.textContent(), /Purchase/);
    await shot(page, 'transactions-after-purchase');
    assertNoProblems(page);
    await page.close();
  });
});

describe('transactions view', () => {
  test('the table shows the running balance, pages with Older/Newer, and downloads the CSV', async () => {
    const org = await w.newOrg(); // its trial grant is entry 1
    // 30 purchases written straight into its D1 shard: a long history without 30 Stripe round trips.
    const t0 = Date.now() - 40 * DAY_MS;
    let balance = 2_000_000n;
    const rows = Array.from({ length: 30 }, (_, i) => {
      balance += 10_000_000n;
      const ms = t0 + i * DAY_MS;
      return `(${[sqlText(org), 100 + i, sqlText(`le_${String(100 + i).padStart(12, '0')}`), sqlText('purchase'),
        10_000_000, balance, ms, sqlText(new Date(ms).toISOString().slice(0, 10)), sqlText('starter'), 1000, sqlText('usd')].join(', ')})`;
    });
    await d1Execute(worker.persistTo, `INSERT INTO ledger_entries (org_id, seq, id, kind, amount_units,
      balance_after_units, created_at_ms, usage_day, pack_id, amount_cents, currency) VALUES ${rows.join(',\n')};`,
    { shard: shardOf(org) });
    // The trial grant reaches the shard by replication (within 5 s).
    await waitFor(async () => {
      const res = await fetch(`${worker.base}/v1/orgs/${org}/transactions?limit=100`, {
        headers: { authorization: `Bearer ${ownerToken(org)}` },
      });
      return res.status === 200 && (await res.json()).data.length === 31;
    }, 10_000);

    const page = await openPage();
    await signIn(page, { org, sub: 'user_viewer', role: 'viewer', tab: 'transactions' });
    const body = page.locator('#tx-body tr');
    await body.first().waitFor();
    assert.equal(await body.count(), 25);
    const firstCells = await body.first().locator('td').allTextContents();
    assert.equal(firstCells[1], 'Purchase');
    assert.equal(firstCells[3], '+1,000');
    assert.equal(firstCells[4], '$10.00');
    assert.equal(firstCells[5], '30,200');
    await shot(page, 'transactions');

    await page.getByRole('button', { name: 'Older' }).click();
    await page.locator('#tx-page', { hasText: 'Page 2' }).waitFor();
    assert.equal(await body.count(), 6);
    const lastCells = await body.last().locator('td').allTextContents();
    assert.deepEqual(lastCells.slice(1), ['Trial credit', '—', '+200', 'Free', '200']);
    assert.equal(await page.getByRole('button', { name: 'Older' }).isDisabled(), true);
    await page.getByRole('button', { name: 'Newer' }).click();
    await page.locator('#tx-page', { hasText: 'Page 1' }).waitFor();
    assert.equal(await body.count(), 25);

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download CSV' }).click(),
    ]);
    assert.match(download.suggestedFilename(), new RegExp(`^transactions-${org}-\\d{4}-\\d{2}-\\d{2}\\.csv$`));
    const csv = fs.readFileSync(await download.path(), 'utf8').trimEnd().split('\r\n');
    assert.equal(csv[0], 'id,created_at,kind,pack_id,credits,amount_cents,currency,balance_after,source');
    assert.equal(csv.length, 32);
    assert.match(csv[1], /^le_000000000129,.*,purchase,starter,1000,1000,usd,30200,owner$/);

    // Keyboard: arrows move between tabs.
    await page.getByRole('tab', { name: 'Transactions' }).focus();
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getByRole('tab', { name: 'AI Usage' }).getAttribute('aria-selected'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-usage');
    await page.keyboard.press('ArrowLeft');

    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'transactions-phone', { fullPage: false });
    assertNoProblems(page);
    await page.close();
  });
});

describe('usage view', () => {
  test('with seeded usage the chart has one bar per day of the range, and the tables add up', async () => {
    // Usage over the last 40 days, oldest first (an organization's clock never goes back).
    const now = Date.now();
    const day = (n) => new Date(now - n * DAY_MS).toISOString().slice(0, 10);
    const org = randomId('org_');
    const tok = serviceToken(org);
    assert.equal((await w.signup(org, { tok, now: `${day(40)}T00:00:01Z` })).status, 201);
    const plan = [
      [38, 'chat', '3.5', 'alice'], [30, 'auto_triage', '0.25', undefined], [20, 'error_analysis', '12', 'bob'],
      [12, 'chat', '1.75', 'bob'], [6, 'release_analysis', '4', 'alice'], [2, 'nl_alerts', '0.0125', 'carol'],
      [1, 'chat', '2', 'carol'],
    ];
    for (const [n, feature, amount, user_id] of plan) {
      const res = await w.debit(org, amount, { feature, user_id, now: `${day(n)}T06:00:00Z` });
      assert.equal(res.status, 201, res.text);
    }
    assert.equal((await w.ledger(org)).length, 1 + plan.length, 'the ledger is exact at once');
    // Usage comes from the D1 shard, replicated within 5 s: wait until all of it is there.
    await waitFor(async () => {
      const res = await fetch(`${worker.base}/v1/orgs/${org}/usage?from=${day(40)}&to=${day(0)}`, {
        headers: { authorization: `Bearer ${ownerToken(org)}` },
      });
      const usage = await res.json();
      return res.status === 200 && usage.by_feature.reduce((n, f) => n + f.count, 0) === plan.length;
    }, 10_000);

    const page = await openPage();
    await signIn(page, { org, sub: 'alice', role: 'admin', tab: 'usage' });
    const barCount = () => page.evaluate(() => window.Chart.getChart(document.getElementById('usage-chart'))?.data.labels.length);
    await waitFor(async () => (await barCount()) === 30, 10_000);
    const values = await page.evaluate(() => window.Chart.getChart(document.getElementById('usage-chart')).data.datasets[0].data);
    assert.equal(values.filter((v) => v > 0).length, 5, 'days 20, 12, 6, 2 and 1 ago had usage; 30 and 38 are outside');
    assert.equal(await page.locator('#usage-total').textContent(), '19.7625 credits');
    // avg = ceil(6.0125 / 7) = 0.859; balance 176.4875; floor(176.4875 / 0.859) = 205
    assert.equal(await page.locator('#usage-avg').textContent(), '0.859 credits');
    assert.equal(await page.locator('#usage-projection').textContent(), '205 days');
    const features = await page.locator('#by-feature-body th').allTextContents();
    assert.deepEqual(features, ['Error analysis', 'Release analysis', 'Chat', 'Natural-language alerts']);
    const members = await page.locator('#by-member-body th').allTextContents();
    assert.deepEqual(members, ['bob', 'alice', 'carol']);
    await shot(page, 'usage');

    await page.getByRole('button', { name: '7 days' }).click();
    await waitFor(async () => (await barCount()) === 7, 10_000);
    await page.getByLabel('From (UTC)').fill(day(44));
    await page.getByLabel('To (UTC)').fill(day(0));
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    await waitFor(async () => (await barCount()) === 45, 10_000);
    assert.equal(await page.locator('#by-member-body th').count(), 4, 'the automated auto-triage now shows');
    assert.equal(await page.locator('#daily-body tr').count(), 45);
    await shot(page, 'usage-45-days');

    // A backwards range is refused with the server's message.
    await page.getByLabel('From (UTC)').fill(day(0));
    await page.getByLabel('To (UTC)').fill(day(3));
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    await page.locator('#usage-error').waitFor({ state: 'visible' });
    assert.match(await page.locator('#usage-error').textContent(), /from must not be after to/);
    assert.equal(await page.getByLabel('From (UTC)').getAttribute('aria-invalid'), 'true');

    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole('button', { name: '30 days' }).click();
    await waitFor(async () => (await barCount()) === 30, 10_000);
    await shot(page, 'usage-phone');
    assertNoProblems(page, ['422 /v1/orgs/']);
    await page.close();
  });
});

test('the page signs in through POST /dev/token and keeps no token in the markup', async () => {
  const html = await (await fetch(`${worker.base}/`)).text();
  assert.doesNotMatch(html, /eyJ[\w-]+\.[\w-]+\./, 'no JWT in the page');
  const page = await openPage();
  await page.goto(`${worker.base}/`);
  await page.getByLabel('Organization id').fill(''); // the form remembers the last sign-in
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#login-error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#login-error').textContent(), /organization id/);
  await shot(page, 'login');
  const org = await w.newOrg();
  await signIn(page, { org, sub: 'user_x', role: 'viewer' });
  assert.match(await page.locator('#who-text').textContent(), new RegExp(`${org} · user_x \\(Viewer\\)`));
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#login').waitFor({ state: 'visible' });
  assertNoProblems(page);
  await page.close();
});
