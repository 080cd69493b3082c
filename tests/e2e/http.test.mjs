// HTTP conformance at the edge (SPEC §6): 405 with `Allow` on every path,
// nosniff on every answer, a 413 that names its route's limit, and bodies
// without Content-Length (chunked) read with a running limit: refused as
// soon as they pass it, on every route that reads a body, the
// unauthenticated Stripe webhook included.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, assertError, ownerToken, randomId, sendChunked, serviceToken, startWorker, units,
} from './harness.mjs';

let worker;
let w;
let org;
let documented; // the paths of /openapi.json: template → { method: operation }

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
  org = await w.newOrg();
  const res = await w.req('GET', '/openapi.json');
  assert.equal(res.status, 200, res.summary);
  documented = res.json.paths;
}, { timeout: 150_000 });
after(() => worker?.stop());

// QUERY and PROPFIND: methods the Workers runtime passes on but worker::Method does not know.
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'QUERY', 'PROPFIND'];
const concrete = (template) => template.replace(/\{[^}]+\}/g, (name) => (name === '{org}' ? org : 'x_1'));

describe('405 method_not_allowed', () => {
  test('every documented path answers any other method with 405 and its methods in Allow', async () => {
    let checked = 0;
    for (const [template, ops] of Object.entries(documented)) {
      const allowed = Object.keys(ops).map((m) => m.toUpperCase()).sort();
      for (const method of METHODS.filter((m) => !allowed.includes(m))) {
        // A token for the path's organization: the 405 must come before any auth decision anyway.
        const res = await w.req(method, concrete(template), { token: ownerToken(org) });
        assert.equal(res.status, 405, `${method} ${template}: ${res.summary}`);
        if (method !== 'HEAD') assert.equal(res.json?.error?.code, 'method_not_allowed', res.summary);
        const allow = (res.headers.get('allow') ?? '').split(',').map((m) => m.trim()).filter(Boolean).sort();
        assert.deepEqual(allow, allowed, `Allow of ${method} ${template}`);
        assert.equal(res.headers.get('x-content-type-options'), 'nosniff', res.summary);
        checked += 1;
      }
    }
    assert.ok(checked >= 100, `only ${checked} method/path pairs checked`);
  });

  test('without a token too (405 before 401), and unknown paths stay 404', async () => {
    const res = await w.req('DELETE', `/v1/orgs/${org}/wallet`);
    assert.equal(res.status, 405, res.summary);
    assert.equal(res.headers.get('allow'), 'GET');
    assertError(await w.req('POST', '/healthz'), 405, 'method_not_allowed');
    const unknown = await w.req('GET', `/v1/orgs/${org}/nothing`, { token: ownerToken(org) });
    assertError(unknown, 404, 'not_found');
    assert.equal(unknown.headers.get('allow'), null);
  });
});

describe('headers on every API answer', () => {
  test('nosniff on successes, errors and Durable Object answers', async () => {
    const answers = [
      await w.req('GET', '/healthz'),
      await w.req('GET', '/openapi.json'),
      await w.wallet(org), // answered by the organization's Durable Object
      await w.debit(org, '0.5'),
      await w.req('GET', `/v1/orgs/${org}/wallet`), // 401
      await w.wallet(org, { tok: serviceToken('other') }), // 403
      await w.wallet(randomId('org_')), // 404 from the Durable Object
      await w.req('GET', '/nowhere'),
    ];
    assert.deepEqual(answers.map((r) => r.status), [200, 200, 200, 201, 401, 403, 404, 404]);
    for (const res of answers) {
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', res.summary);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/, res.summary);
    }
  });
});

describe('bodies without Content-Length', () => {
  const KIB = 1024;
  const routes = [
    { name: 'a debit', path: () => `/v1/orgs/${org}/debits`, limit: 16 * KIB, headers: () => ({ authorization: `Bearer ${serviceToken(org)}`, 'idempotency-key': randomId('key_') }) },
    { name: 'the daily cap', method: 'PUT', path: () => `/v1/orgs/${org}/daily-cap`, limit: 16 * KIB, headers: () => ({ authorization: `Bearer ${ownerToken(org)}` }) },
    { name: 'a batch', path: () => `/v1/orgs/${org}/debits/batch`, limit: 512 * KIB, headers: () => ({ authorization: `Bearer ${serviceToken(org)}` }) },
    { name: 'the Stripe webhook (no token)', path: () => '/stripe/webhook', limit: 512 * KIB, headers: () => ({ 'stripe-signature': `t=${Math.floor(Date.now() / 1000)},v1=${'0'.repeat(64)}` }) },
  ];
  for (const route of routes) {
    test(`${route.name}: refused with 413 (limit ${route.limit}) while still streaming`, async () => {
      const balanceBefore = await w.balance(org);
      const res = await sendChunked(worker.base, route.path(), {
        method: route.method,
        headers: route.headers(),
        chunk: ['{"padding":"'],
        maxBytes: route.limit * 4,
      });
      assert.equal(res.status, 413, res.text);
      assert.equal(res.json?.error?.code, 'payload_too_large', res.text);
      assert.equal(res.json.error.limit_bytes, route.limit, res.text);
      assert.ok(res.json.error.message.includes(String(route.limit)), res.text);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      // Answered before the body ended: the worker stopped reading at the limit.
      // Answered once the limit was passed, not at the end: the client was
      // still streaming (measured here: one chunk past the limit).
      assert.ok(res.sentWhenAnswered > route.limit && res.sentWhenAnswered < route.limit + 64 * KIB,
        `413 after ${res.sentWhenAnswered} bytes sent (limit ${route.limit})`);
      assert.equal(await w.balance(org), balanceBefore, 'a refused body changed the balance');
    });
  }

  test('a chunked debit under the limit is applied', async () => {
    const before = units(await w.balance(org));
    // Metadata is bounded in bytes (MAX_METADATA_BYTES), so the body is made
    // long with JSON whitespace, which the parser must read through all the same.
    const metadata = { note: 'n'.repeat(400) };
    const compact = JSON.stringify({ feature: 'chat', amount: '2.25', metadata });
    const body = `{${' '.repeat(9 * 1024)}${compact.slice(1)}`;
    assert.ok(body.length > 8 * 1024, `debit body is only ${body.length} bytes`);
    const pieces = body.match(/[\s\S]{1,700}/g);
    const res = await sendChunked(worker.base, `/v1/orgs/${org}/debits`, {
      headers: { authorization: `Bearer ${serviceToken(org)}`, 'idempotency-key': randomId('key_') },
      chunk: pieces,
      end: true,
    });
    assert.equal(res.status, 201, res.text);
    assert.equal(units(res.json.balance_after), before - units('2.25'), res.text);
    assert.equal(units(await w.balance(org)), before - units('2.25'));
  });

  test('a chunked batch over 16 KiB but under 512 KiB is applied', async () => {
    const before = units(await w.balance(org));
    const debits = Array.from({ length: 300 }, (_, i) => ({ idempotency_key: randomId(`b${i}_`), feature: 'auto_triage', amount: '0.01' }));
    const body = JSON.stringify({ debits });
    assert.ok(body.length > 16 * 1024, `batch body is only ${body.length} bytes`);
    const res = await sendChunked(worker.base, `/v1/orgs/${org}/debits/batch`, {
      headers: { authorization: `Bearer ${serviceToken(org)}` },
      chunk: body.match(/[\s\S]{1,4096}/g),
      end: true,
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(units(await w.balance(org)), before - 300n * units('0.01'));
  });

  test('a declared Content-Length over the limit is refused before reading, naming the limit', async () => {
    const res = await w.call('PUT', '/v1/orgs/{org}/daily-cap', { org }, {
      token: ownerToken(org),
      rawBody: JSON.stringify({ daily_cap: '100', padding: 'x'.repeat(17 * 1024) }),
      headers: { 'content-type': 'application/json' },
    });
    assertError(res, 413, 'payload_too_large', { limit_bytes: 16 * 1024 });
  });
});
