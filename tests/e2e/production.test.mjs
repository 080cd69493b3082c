// Safe to deploy (SPEC §6): the real worker started with production settings
// serves no development route, ignores X-Dev-Now and accepts only tokens under
// its own secret; a deployment whose settings would open development mode with
// real secrets, or carry development secrets outside development, refuses to
// serve at all (500 internal_error on every request, the reason in its log).
//
// The secrets of .dev.vars are overridden with `wrangler dev --var`; the
// production start proves that override wins (otherwise it would fail closed).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  api, assertError, DEV_SECRET, randomId, startWorker, token, waitFor,
} from './harness.mjs';

const hex = (bytes) => crypto.randomBytes(bytes).toString('hex');
const REAL_JWT_SECRET = hex(32); // 64 characters
const PRODUCTION = {
  ENVIRONMENT: 'production',
  AUTH_JWT_SECRET: REAL_JWT_SECRET,
  STRIPE_SECRET_KEY: `sk_test_${hex(24)}`,
  STRIPE_WEBHOOK_SECRETS: `whsec_${hex(24)}`,
  STRIPE_API_BASE: 'https://api.stripe.com', // never called by these tests
};
const realToken = (org, role) => token({ org, role, sub: `user_${role}`, secret: REAL_JWT_SECRET });
const DEV_NOW = '2031-06-15T12:00:00.000Z'; // far from the real clock

/** Every kind of request answers 500 internal_error, and the log says why. */
async function assertRefusesToServe(worker, reason) {
  const w = api(worker.base);
  const org = randomId('org_');
  const requests = [
    ['GET', '/healthz', {}],
    ['GET', '/openapi.json', {}],
    ['GET', '/v1/packs', { token: token({ org, role: 'viewer' }) }],
    ['GET', `/v1/orgs/${org}/wallet`, { token: realToken(org, 'service') }],
    ['POST', '/v1/orgs', { token: token({ org, role: 'service' }), body: { org_id: org, owner_id: 'u' } }],
    ['POST', '/dev/token', { body: { org, sub: 'mallory', role: 'owner' } }],
    ['POST', '/stripe/webhook', { rawBody: '{}', headers: { 'stripe-signature': 't=1,v1=00' } }],
  ];
  for (const [method, path, opts] of requests) {
    const res = await w.req(method, path, opts);
    assertError(res, 500, 'internal_error');
    assert.equal(res.json.error.message.includes('AUTH_JWT_SECRET'), false, `the answer leaks the reason: ${res.summary}`);
    assert.equal(res.json.token, undefined, res.summary);
  }
  await waitFor(() => fs.readFileSync(worker.logFile, 'utf8').includes(`refusing to serve: ${reason}`), 10_000);
}

describe('production settings', () => {
  let worker;
  let w;
  let org;

  before(async () => {
    worker = await startWorker({ vars: PRODUCTION });
    w = api(worker.base);
    org = randomId('org_');
    const res = await w.signup(org, { tok: realToken(org, 'service') });
    assert.equal(res.status, 201, res.summary);
  }, { timeout: 180_000 });
  after(() => worker?.stop());

  test('/dev/* answers 404 and mints nothing', async () => {
    const mint = await w.req('POST', '/dev/token', { body: { org, sub: 'mallory', role: 'owner' } });
    assertError(mint, 404, 'not_found');
    assert.equal(mint.json.token, undefined);
    assertError(await w.req('GET', '/dev/token'), 404, 'not_found');
    const pm = await w.req('POST', `/dev/orgs/${org}/payment-method`, { body: { payment_method: 'pm_card_visa' } });
    assertError(pm, 404, 'not_found');
    assertError(await w.req('POST', '/dev/anything/else', { body: {} }), 404, 'not_found');
  });

  test('/bench/* answers 404 and never reaches a wallet', async () => {
    assertError(await w.req('POST', `/bench/floor/${org}`), 404, 'not_found');
    assertError(await w.req('GET', `/bench/storage/${org}`), 404, 'not_found');
  });

  test('tokens under the development secret are refused; the real secret works', async () => {
    for (const role of ['owner', 'viewer', 'service']) {
      assertError(await w.wallet(org, { tok: token({ org, role }) }), 401, 'unauthorized');
    }
    assertError(await w.debit(org, '1', { tok: token({ org, role: 'service' }) }), 401, 'unauthorized');
    assertError(await w.signup(randomId('org_'), { tok: token({ org, role: 'service' }) }), 401, 'unauthorized');
    const wallet = await w.wallet(org, { tok: realToken(org, 'viewer') });
    assert.equal(wallet.status, 200, wallet.summary);
    assert.equal(wallet.json.balance, '200', 'the refused debit changed nothing');
    const debit = await w.debit(org, '1.5', { tok: realToken(org, 'service') });
    assert.equal(debit.status, 201, debit.summary);
    assert.equal(debit.json.balance_after, '198.5', debit.summary);
  });

  test('X-Dev-Now is ignored: holds and the wallet day follow the real clock', async () => {
    const startMs = Date.now();
    const hold = await w.hold(org, '2', { ttl_seconds: 60, tok: realToken(org, 'service'), now: DEV_NOW });
    const afterMs = Date.now();
    assert.equal(hold.status, 201, hold.summary);
    const expires = Date.parse(hold.json.expires_at);
    assert.ok(expires >= startMs + 59_000 && expires <= afterMs + 61_000,
      `expires_at ${hold.json.expires_at} is not 60 s from the real now`);
    const wallet = await w.wallet(org, { tok: realToken(org, 'viewer'), now: DEV_NOW });
    assert.equal(wallet.status, 200, wallet.summary);
    const today = new Date().toISOString().slice(0, 10);
    assert.equal(wallet.json.day, today, wallet.summary);
    assert.equal(wallet.json.held, '2', 'the hold is still active: it did not expire at the header time');
    // In development an unreadable X-Dev-Now is a 422; here it is not read at all.
    const garbage = await w.debit(org, '1', { tok: realToken(org, 'service'), now: 'not-a-time' });
    assert.equal(garbage.status, 201, garbage.summary);
  });
});

describe('refusing to serve', () => {
  const cases = [
    {
      name: 'ENVIRONMENT=development with a real JWT secret',
      vars: { ...PRODUCTION, ENVIRONMENT: 'development' },
      reason: 'ENVIRONMENT is "development" but AUTH_JWT_SECRET is not the development secret',
    },
    {
      name: 'ENVIRONMENT=production with the development JWT secret',
      vars: { ...PRODUCTION, AUTH_JWT_SECRET: DEV_SECRET },
      reason: 'AUTH_JWT_SECRET is the development secret',
    },
    {
      name: 'ENVIRONMENT=production with the development webhook secret',
      vars: { ...PRODUCTION, STRIPE_WEBHOOK_SECRETS: `whsec_${hex(24)},whsec_local_dev` },
      reason: 'STRIPE_WEBHOOK_SECRETS lists the development secret',
    },
  ];
  for (const { name, vars, reason } of cases) {
    test(`${name}: every request answers 500 internal_error`, { timeout: 180_000 }, async () => {
      const worker = await startWorker({ vars, readyStatus: 500 });
      try {
        await assertRefusesToServe(worker, reason);
      } finally {
        await worker.stop();
      }
    });
  }
});
