// Feature caps and the audit trail in the dashboard (SPEC §9), in a real
// browser (Debian's Chromium driven by playwright-core, as dashboard.test.mjs)
// against the real worker. Every change made in the page is checked through
// the API too. Screenshots go to tests/artifacts/ (gitignored).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { api, ownerToken, startWorker, token } from './harness.mjs';
import {
  TIME_ZONE, assertNoProblems, launchBrowser, openPage as browserOpenPage, shot, signIn as browserSignIn,
} from './browser.mjs';

let worker;
let w;
let browser;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
  browser = await launchBrowser();
}, { timeout: 180_000 });

after(async () => {
  await browser?.close();
  await worker?.stop();
});

/** This file's browser helpers, bound to its browser and worker. */
const openPage = (opts) => browserOpenPage(browser.context, opts);
const signIn = (page, opts) => browserSignIn(page, worker.base, opts);
const row = (page, feature) => page.locator(`#feature-caps li[data-feature="${feature}"]`);
const capOf = (wallet, feature) => wallet.feature_caps.find((c) => c.feature === feature);
const auditOf = async (org, tok = ownerToken(org)) => {
  const res = await w.req('GET', `/v1/orgs/${org}/audit?limit=100`, { token: tok });
  assert.equal(res.status, 200, res.summary);
  return res.json.data;
};
const setCaps = (org, caps, tok = ownerToken(org)) =>
  w.req('PUT', `/v1/orgs/${org}/feature-caps`, { token: tok, body: { caps } });

async function assertNoSidewaysScroll(page) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at phone width`);
}

describe('feature caps', () => {
  test('the owner sets a cap, sees today\'s use, is refused above the daily cap, and removes it', async () => {
    const org = await w.newOrg();
    const page = await openPage();
    await signIn(page, { org, sub: 'user_owner', role: 'owner' });
    const triage = row(page, 'auto_triage');
    const input = page.getByLabel('Auto-triage cap (credits)');
    const message = page.locator('#fcap-auto_triage-message');
    await triage.waitFor();
    assert.equal(await page.locator('#feature-caps li').count(), 6, 'every configured feature has a row');
    assert.match(await triage.textContent(), /No cap of its own/);
    assert.equal(await input.inputValue(), '');
    assert.equal(await triage.getByRole('button', { name: 'Remove Auto-triage cap' }).isVisible(), false, 'nothing to remove yet');

    // Client-side checks: nothing reaches the wallet.
    for (const [value, why] of [['600', /at most the daily spend cap, 500 credits/], ['2.00001', /4 decimal places/],
      ['0', /more than 0/], ['abc', /such as 500/], ['', /Enter a cap/]]) {
      await input.fill(value);
      await triage.getByRole('button', { name: 'Save Auto-triage cap' }).click();
      await page.locator('#fcap-auto_triage-message.error').waitFor();
      assert.match(await message.textContent(), why, `value ${JSON.stringify(value)}`);
      assert.equal(await input.getAttribute('aria-invalid'), 'true');
      assert.match(await input.getAttribute('aria-describedby'), /fcap-auto_triage-message/);
    }
    await shot(page, 'caps-owner-refused');
    assert.deepEqual((await w.wallet(org)).json.feature_caps, [], 'nothing invalid reached the wallet');
    assert.deepEqual(await auditOf(org), [], 'and nothing was recorded');

    // Keyboard only: type a cap and press Enter.
    await input.fill('200');
    await input.press('Enter');
    await page.locator('#fcap-auto_triage-message.ok').waitFor();
    assert.match(await message.textContent(), /Auto-triage is capped at 200 credits a day/);
    assert.equal(await input.getAttribute('aria-invalid'), 'false');
    assert.deepEqual(capOf((await w.wallet(org)).json, 'auto_triage'),
      { feature: 'auto_triage', daily_cap: '200', spent_today: '0', held_today: '0', cap_remaining: '200' });
    const [record] = await auditOf(org);
    assert.deepEqual([record.setting, record.sub, record.role, record.before, record.after],
      ['feature_caps', 'user_owner', 'owner', {}, { auto_triage: '200' }]);

    // Today's use after AI calls made by the service: 3.5 spent and 1.25 held.
    const debit = await w.debit(org, '3.5', { feature: 'auto_triage' });
    assert.equal(debit.status, 201, debit.summary);
    const hold = await w.hold(org, '1.25', { feature: 'auto_triage', ttl_seconds: 600 });
    assert.equal(hold.status, 201, hold.summary);
    assert.equal((await w.debit(org, '2', { feature: 'chat' })).status, 201, 'chat has no cap of its own');
    await page.getByRole('tab', { name: 'Wallet' }).click(); // the tab refreshes the wallet
    await triage.getByText('4.75 used today').waitFor();
    const summary = await page.locator('#fcap-auto_triage-summary').textContent();
    assert.equal(summary, 'Cap 200 credits a day · 4.75 used today (1.25 held by running AI calls) · 195.25 remaining.');
    const bar = triage.getByRole('progressbar');
    assert.equal(await bar.getAttribute('aria-valuenow'), '2');
    assert.match(await row(page, 'chat').textContent(), /No cap of its own/);
    await shot(page, 'caps-owner');

    // The server's 422 names the field: the daily cap went down in another tab, so 300 is now too much.
    assert.equal((await w.setCap(org, '250')).status, 200);
    const chat = page.getByLabel('Chat cap (credits)');
    await chat.fill('300');
    await chat.press('Enter');
    await page.locator('#fcap-chat-message.error').waitFor();
    assert.match(await page.locator('#fcap-chat-message').textContent(), /^Not saved: .+/);
    assert.equal(await chat.getAttribute('aria-invalid'), 'true');
    assert.equal(capOf((await w.wallet(org)).json, 'chat'), undefined, 'the refused cap was not applied');
    await page.locator('#daily-cap', { hasText: '250' }).waitFor(); // the page caught up with the new daily cap
    await shot(page, 'caps-owner-server-refused');

    // Remove the auto-triage cap; the keyboard stays on that feature.
    await triage.getByRole('button', { name: 'Remove Auto-triage cap' }).click();
    await page.locator('#fcap-auto_triage-message.ok', { hasText: 'no cap of its own' }).waitFor();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'fcap-auto_triage-input');
    assert.match(await triage.textContent(), /No cap of its own/);
    assert.equal(await input.inputValue(), '');
    assert.deepEqual((await w.wallet(org)).json.feature_caps, []);
    const trail = await auditOf(org);
    assert.deepEqual(trail.map((r) => [r.setting, r.sub, r.before, r.after]), [
      ['feature_caps', 'user_owner', { auto_triage: '200' }, {}],
      ['daily_cap', 'user_owner', '500', '250'],
      ['feature_caps', 'user_owner', {}, { auto_triage: '200' }],
    ]);

    // Every control is named; the page fits a phone.
    const unnamed = await page.$$eval('input, select, button', (els) =>
      els.filter((el) => el.offsetParent !== null && !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
        .map((el) => el.outerHTML));
    assert.deepEqual(unnamed, []);
    await page.setViewportSize({ width: 390, height: 844 });
    await page.locator('#feature-caps-title').scrollIntoViewIfNeeded();
    await shot(page, 'caps-owner-phone');
    await assertNoSidewaysScroll(page);
    assertNoProblems(page, ['422 /v1/orgs/']);
    await page.close();
  });

  test('a member and a viewer read the caps with no way to change them and no audit', async () => {
    const org = await w.newOrg();
    assert.equal((await setCaps(org, { auto_triage: '40', nl_alerts: '2.5' })).status, 200);
    assert.equal((await w.debit(org, '10', { feature: 'auto_triage' })).status, 201);
    for (const role of ['member', 'viewer']) {
      const page = await openPage();
      await signIn(page, { org, sub: `user_${role}`, role, tab: 'audit' });
      await page.locator('#feature-caps li').first().waitFor();
      // #audit is not offered: the Wallet tab opens instead.
      assert.equal(await page.getByRole('tab', { name: 'Wallet' }).getAttribute('aria-selected'), 'true');
      assert.equal(await page.getByRole('tab', { name: 'Audit' }).count(), 0, 'no Audit tab');
      assert.equal(await page.locator('#panel-audit').isVisible(), false);
      assert.equal(await page.locator('#feature-caps input, #feature-caps button').count(), 0, 'no inputs');
      await page.locator('#feature-caps-readonly').waitFor({ state: 'visible' });
      assert.equal(await page.locator('#fcap-auto_triage-summary').textContent(),
        'Cap 40 credits a day · 10 used today · 30 remaining.');
      assert.match(await page.locator('#fcap-nl_alerts-summary').textContent(), /^Cap 2\.5 credits a day · 0 used today · 2\.5 remaining/);
      assert.match(await row(page, 'chat').textContent(), /No cap of its own/);
      // The tabs still go round with the arrow keys without an Audit stop.
      await page.getByRole('tab', { name: 'Wallet' }).focus();
      await page.keyboard.press('ArrowLeft');
      assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-usage');
      await page.keyboard.press('ArrowRight');
      assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-wallet');
      await shot(page, `caps-${role}`);
      if (role === 'member') {
        await page.setViewportSize({ width: 390, height: 844 });
        await page.locator('#feature-caps-title').scrollIntoViewIfNeeded();
        await shot(page, 'caps-member-phone');
        await assertNoSidewaysScroll(page);
      }
      assertNoProblems(page); // a 403 from the audit route would be listed here
      await page.close();
    }
  });
});

describe('audit view', () => {
  test('the owner sees each change with who made it, pages Older/Newer, and downloads the CSV', async () => {
    const org = await w.newOrg();
    const alice = token({ org, role: 'owner', sub: 'alice' });
    // 27 changes: 26 of the daily cap, then one of feature caps.
    for (let i = 1; i <= 26; i++) assert.equal((await w.setCap(org, String(100 + i), { tok: alice })).status, 200);
    assert.equal((await setCaps(org, { chat: '20', auto_triage: '12.5' }, alice)).status, 200);
    const trail = await auditOf(org);
    assert.equal(trail.length, 27);

    const page = await openPage();
    await signIn(page, { org, sub: 'alice', role: 'owner', tab: 'audit' });
    const rows = page.locator('#audit-body tr');
    await rows.first().waitFor();
    assert.equal(await rows.count(), 25);
    const first = await rows.first().locator('td').allTextContents();
    assert.deepEqual(first.slice(1), ['alice (Owner)', 'Feature caps', 'Auto-triage: no cap → 12.5 creditsChat: no cap → 20 credits']);
    assert.deepEqual(await rows.first().locator('td.change .change-lines div').allTextContents(),
      ['Auto-triage: no cap → 12.5 credits', 'Chat: no cap → 20 credits']);
    // The time in the reader's zone (Tokyo), from the record's UTC time.
    const when = rows.first().locator('time');
    assert.equal(await when.getAttribute('datetime'), trail[0].created_at);
    const expected = new Intl.DateTimeFormat('en-US', { dateStyle: 'medium', timeStyle: 'short', timeZone: TIME_ZONE })
      .format(new Date(trail[0].created_at));
    assert.equal(await when.textContent(), expected);
    assert.deepEqual((await rows.nth(1).locator('td').allTextContents()).slice(1),
      ['alice (Owner)', 'Daily spend cap', '125 credits → 126 credits']);
    await shot(page, 'audit-owner');

    await page.getByRole('button', { name: 'Older' }).click();
    await page.locator('#audit-page', { hasText: 'Page 2' }).waitFor();
    assert.equal(await rows.count(), 2);
    assert.deepEqual((await rows.last().locator('td').allTextContents()).slice(1),
      ['alice (Owner)', 'Daily spend cap', '500 credits → 101 credits']);
    assert.deepEqual(await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id)), trail.slice(25).map((r) => r.id));
    assert.equal(await page.getByRole('button', { name: 'Older' }).isDisabled(), true);
    await page.getByRole('button', { name: 'Newer' }).click();
    await page.locator('#audit-page', { hasText: 'Page 1' }).waitFor();
    assert.equal(await rows.count(), 25);
    assert.equal(await page.getByRole('button', { name: 'Newer' }).isDisabled(), true);

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download CSV' }).click(),
    ]);
    assert.match(download.suggestedFilename(), new RegExp(`^audit-${org}-\\d{4}-\\d{2}-\\d{2}\\.csv$`));
    const csv = fs.readFileSync(await download.path(), 'utf8').trimEnd().split('\r\n');
    assert.equal(csv[0], 'id,created_at,setting,sub,role,before,after');
    assert.deepEqual(csv.slice(1).map((line) => line.split(',')[0]), trail.map((r) => r.id));
    await page.locator('#audit-csv-status.ok').waitFor();

    // A change made in the page shows up at the top when the tab is opened again.
    await page.getByRole('tab', { name: 'Wallet' }).click();
    const chat = page.getByLabel('Chat cap (credits)');
    await page.locator('#fcap-chat-summary', { hasText: 'Cap 20 credits' }).waitFor();
    await chat.fill('15');
    await chat.press('Enter');
    await page.locator('#fcap-chat-message.ok').waitFor();
    await page.getByRole('tab', { name: 'Audit' }).click();
    await page.locator('#audit-body tr td.change', { hasText: 'Chat: 20 credits → 15 credits' }).first().waitFor();
    const [latest] = await auditOf(org);
    assert.deepEqual([latest.sub, latest.role, latest.before, latest.after],
      ['alice', 'owner', { chat: '20', auto_triage: '12.5' }, { chat: '15', auto_triage: '12.5' }]);

    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'audit-owner-phone', { fullPage: false });
    // The selected tab is on screen at phone width, not scrolled out of the tab list.
    const tabBox = await page.getByRole('tab', { name: 'Audit' }).boundingBox();
    const listBox = await page.getByRole('tablist').boundingBox();
    assert.ok(tabBox.x >= listBox.x && tabBox.x + tabBox.width <= listBox.x + listBox.width,
      `Audit tab at ${JSON.stringify(tabBox)} in the tab list at ${JSON.stringify(listBox)}`);
    assert.equal(await page.getByRole('tablist').evaluate((el) => el.scrollWidth - el.clientWidth), 0, 'the tab list does not scroll');
    await assertNoSidewaysScroll(page);
    assertNoProblems(page);
    await page.close();
  });

  test('an admin sees the audit trail and the caps read-only', async () => {
    const org = await w.newOrg();
    assert.equal((await setCaps(org, { release_analysis: '30' }, token({ org, role: 'owner', sub: 'olga' }))).status, 200);
    const page = await openPage();
    await signIn(page, { org, sub: 'adam', role: 'admin' });
    await page.locator('#fcap-release_analysis-summary', { hasText: 'Cap 30 credits' }).waitFor();
    assert.equal(await page.locator('#feature-caps input, #feature-caps button').count(), 0, 'an admin cannot change caps');
    await page.getByRole('tab', { name: 'Audit' }).click();
    const rows = page.locator('#audit-body tr');
    await rows.first().waitFor();
    assert.equal(await rows.count(), 1);
    assert.deepEqual((await rows.first().locator('td').allTextContents()).slice(1),
      ['olga (Owner)', 'Feature caps', 'Release analysis: no cap → 30 credits']);
    assert.equal(await page.getByRole('button', { name: 'Older' }).isDisabled(), true);
    // The admin's own view of the API agrees with the page.
    const viaApi = await auditOf(org, token({ org, role: 'admin', sub: 'adam' }));
    assert.equal(await rows.first().getAttribute('data-id'), viaApi[0].id);
    await shot(page, 'audit-admin');
    assertNoProblems(page);
    await page.close();
  });
});
