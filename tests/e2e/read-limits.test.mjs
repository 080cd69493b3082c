// Per-organization read limits (SPEC §10, "No fan-out abuse") against the
// real runtime and its emulated rate-limiting bindings (wrangler.toml
// `[[ratelimits]]`): usage and payment-method reads get 100 per 10 s per
// organization each, transactions pages 300, CSV exports 10 per minute; past
// that 429 `rate_limited` with Retry-After. Other organizations, other kinds
// of read and the organization's own debits are never held back.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { api, assertError, mapLimit, ownerToken, startWorker, token } from './harness.mjs';

const READS_PER_WINDOW = 100;
const PAGES_PER_WINDOW = 300;
const EXPORTS_PER_MINUTE = 10;

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 180_000 });

after(() => worker?.stop());

const viewer = (org) => token({ org, role: 'viewer', sub: 'user_viewer' });
const usage = (org) => w.call('GET', '/v1/orgs/{org}/usage', { org }, { token: viewer(org) });
const transactions = (org, query = '') => w.req('GET', `/v1/orgs/${org}/transactions${query}`, { token: ownerToken(org) });
const paymentMethod = (org) => w.call('GET', '/v1/orgs/{org}/payment-method', { org }, { token: viewer(org) });

/**
 * Waits for the start of a fresh window of `periodSeconds` (the emulator's
 * windows are aligned to the clock), so a burst is counted in one window.
 */
async function freshWindow(periodSeconds) {
  const period = periodSeconds * 1000;
  await sleep(period - (Date.now() % period) + 50);
}

function assertLimited(res, retryAfterSeconds) {
  assertError(res, 429, 'rate_limited');
  assert.equal(res.headers.get('retry-after'), String(retryAfterSeconds), res.summary);
}

test("hammering one organization's usage answers 429 rate_limited; another organization, other reads and its debits go on", { timeout: 120_000 }, async () => {
  const [busy, other] = [await w.newOrg(), await w.newOrg()];
  await freshWindow(10);
  // 130 usage reads of `busy`, 8 at a time; meanwhile its debits, and the
  // other organization's usage.
  const debits = [];
  const others = [];
  const reads = await mapLimit(Array.from({ length: 130 }), 8, async (_, i) => {
    if (i % 13 === 0) {
      debits.push(w.debit(busy, '1'));
      others.push(usage(other));
    }
    return usage(busy);
  });
  const ok = reads.filter((r) => r.status === 200);
  const limited = reads.filter((r) => r.status !== 200);
  assert.ok(ok.length <= READS_PER_WINDOW, `${ok.length} usage reads served in one window`);
  assert.ok(limited.length >= 130 - READS_PER_WINDOW, `${limited.length} refused`);
  for (const res of limited) assertLimited(res, 10);
  // Still limited, at the same time as everything else goes on.
  const [again, debit, otherUsage, busyTransactions, busyPaymentMethod] = await Promise.all([
    usage(busy), w.debit(busy, '1'), usage(other), transactions(busy), paymentMethod(busy),
  ]);
  assertLimited(again, 10);
  assert.equal(debit.status, 201, debit.summary);
  assert.equal(otherUsage.status, 200, otherUsage.summary);
  assert.equal(busyTransactions.status, 200, busyTransactions.summary);
  assert.equal(busyPaymentMethod.status, 200, busyPaymentMethod.summary);
  for (const res of await Promise.all(debits)) assert.equal(res.status, 201, res.summary);
  for (const res of await Promise.all(others)) assert.equal(res.status, 200, res.summary);
  // Every debit took effect: 200 trial credits − 11.
  assert.equal((await w.wallet(busy)).json.balance, '189');
  // The next window serves the organization again.
  await freshWindow(10);
  assert.equal((await usage(busy)).status, 200);
});

test('payment-method reads and transactions pages have their own budgets; CSV exports get 10 a minute', { timeout: 180_000 }, async () => {
  const org = await w.newOrg();
  await freshWindow(10);
  const reads = await mapLimit(Array.from({ length: READS_PER_WINDOW + 5 }), 8, () => paymentMethod(org));
  assert.deepEqual(reads.filter((r) => r.status === 200).map((r) => r.json), Array(READS_PER_WINDOW).fill({ has_payment_method: false }));
  for (const res of reads.filter((r) => r.status !== 200)) assertLimited(res, 10);
  await freshWindow(10);
  const pages = await mapLimit(Array.from({ length: PAGES_PER_WINDOW + 5 }), 8, () => transactions(org));
  assert.equal(pages.filter((r) => r.status === 200).length, PAGES_PER_WINDOW);
  for (const res of pages.filter((r) => r.status !== 200)) assertLimited(res, 10);
  assert.equal((await usage(org)).status, 200, 'usage has a budget of its own');

  // CSV exports: a window of a minute; start early in one.
  if (Date.now() % 60_000 > 45_000) await freshWindow(60);
  const exports = [];
  for (let i = 0; i < EXPORTS_PER_MINUTE + 2; i++) exports.push(await transactions(org, '?format=csv'));
  assert.deepEqual(exports.map((r) => r.status), [...Array(EXPORTS_PER_MINUTE).fill(200), 429, 429]);
  assertLimited(exports.at(-1), 60);
});
