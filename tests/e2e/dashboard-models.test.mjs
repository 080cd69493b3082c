// The AI Usage tab's "By model" table (SPEC §12) in a real browser (Debian's
// Chromium driven by playwright-core, as dashboard.test.mjs) against the real
// worker: each row's figures are checked against the ledger's priced entries.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, ownerToken, startWorker, units, waitFor } from './harness.mjs';
import { decimal } from './money.mjs';
import { assertNoProblems, launchBrowser, openPage as browserOpenPage, shot, signIn as browserSignIn } from './browser.mjs';

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

const openPage = (opts) => browserOpenPage(browser.context, opts);
const signIn = (page, opts) => browserSignIn(page, worker.base, opts);

const debitUsage = (org, usage) =>
  w.debit(org, undefined, { body: { feature: 'chat', usage } });

test('the By model table shows credits, share, calls, tokens and unbilled per model', async () => {
  const org = await w.newOrg();
  for (const usage of [
    { model: 'gpt-4o', input_tokens: 120_000, cached_input_tokens: 20_000, output_tokens: 8_000 },
    { model: 'gpt-4o', input_tokens: 30_000, output_tokens: 2_000 },
    { model: 'claude-sonnet-4', input_tokens: 10_000, output_tokens: 3_000 },
  ]) {
    const res = await debitUsage(org, usage);
    assert.equal(res.status, 201, res.summary);
  }
  assert.equal((await w.debit(org, '10')).status, 201, 'a debit by amount counts in the total only');
  const hold = await w.hold(org, undefined, {
    body: { feature: 'chat', usage_estimate: { model: 'gpt-4o-mini', input_tokens: 10_000, max_output_tokens: 1_000 } },
  });
  assert.equal(hold.status, 201, hold.summary);
  const capture = await w.capture(org, hold.json.id, undefined, {
    body: { usage: { model: 'gpt-4o-mini', input_tokens: 200_000, output_tokens: 20_000 } },
  });
  assert.equal(capture.status, 200, capture.summary);
  const unbilled = capture.json.unbilled;
  assert.ok(units(unbilled) > 0n);

  const usage = await waitFor(async () => {
    const res = await w.call('GET', '/v1/orgs/{org}/usage', { org }, { token: ownerToken(org) });
    return res.status === 200 && res.json.count === 5 ? res.json : undefined;
  }, 10_000);
  const entries = (await w.ledger(org)).filter((e) => e.usage);
  const credits = (model) => entries.filter((e) => e.usage.model === model).reduce((s, e) => s + units(e.amount), 0n);

  const page = await openPage();
  await signIn(page, { org, sub: 'alice', role: 'admin', tab: 'usage' });
  const rows = page.locator('#by-model-body tr');
  await waitFor(async () => (await rows.count()) === 3, 10_000);
  const table = await rows.evaluateAll((trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)));
  const models = table.map((r) => r[0]);
  assert.deepEqual(models, usage.by_model.map((l) => l.model));
  assert.deepEqual(new Set(models), new Set(['gpt-4o', 'claude-sonnet-4', 'gpt-4o-mini']));
  // The page's own formatting of the expected figures (locale grouping, percent).
  const formatted = (fn, args) => page.evaluate(async ([name, a]) => (await import('/format.js'))[name](...a), [fn, args]);
  for (const [model, creditsText, shareText, calls, input, output, unbilledText] of table) {
    const mine = entries.filter((e) => e.usage.model === model);
    const c = decimal(credits(model));
    assert.equal(creditsText, await formatted('formatCredits', [c]), `${model} credits`);
    assert.equal(shareText, await formatted('formatShare', [c, usage.total]), `${model} share`);
    assert.match(shareText, /%$/);
    assert.equal(calls, String(mine.length));
    assert.equal(input.replace(/\D/g, ''), String(mine.reduce((s, e) => s + e.usage.input_tokens, 0)));
    assert.equal(output.replace(/\D/g, ''), String(mine.reduce((s, e) => s + e.usage.output_tokens, 0)));
    const expectedUnbilled = model === 'gpt-4o-mini' ? unbilled : '0';
    assert.equal(unbilledText, await formatted('formatCredits', [expectedUnbilled]), `${model} unbilled`);
  }
  await shot(page, 'usage-by-model');
  assertNoProblems(page);
  await page.close();

  // An organization without priced usage says so.
  const empty = await w.newOrg();
  const other = await openPage();
  await signIn(other, { org: empty, sub: 'bob', role: 'viewer', tab: 'usage' });
  await other.locator('#by-model-body td.muted').waitFor();
  assert.equal(await other.locator('#by-model-body').textContent(), 'No usage in this period.');
  await other.close();
});
