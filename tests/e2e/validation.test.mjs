// Input validation: every bad input is refused with a precise error and changes
// nothing; plus /openapi.json and /healthz.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  FEATURES, api, assertAmount, assertError, ownerToken, randomId, sendChunked, serviceToken, startWorker, token, units,
} from './harness.mjs';

let worker;
let w;
let org;
let snapshot; // the wallet as the last accepted operation left it

const KEY_FIELD = 'Idempotency-Key';

async function readState() {
  const res = await w.wallet(org);
  assert.equal(res.status, 200, res.summary);
  const { balance, held, spent_today, held_today, daily_cap } = res.json;
  return { balance, held, spent_today, held_today, daily_cap };
}

async function assertUnchanged() {
  assert.deepEqual(await readState(), snapshot);
}

/** After an accepted operation: the new state becomes the reference. */
async function accept(res, status) {
  assert.equal(res.status, status, res.summary);
  snapshot = await readState();
  return res;
}

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
  org = await w.newOrg();
  // A high cap so that only the balance and the per-operation limit bound amounts.
  await accept(await w.setCap(org, '50000'), 200);
}, { timeout: 150_000 });

after(() => worker?.stop());

const JSON_TYPE = 'application/json';

describe('malformed JSON → 400 invalid_json', () => {
  for (const raw of ['{"feature": "chat", "amount": ', 'not json', '{"feature": "chat",}', '']) {
    test(`debit body ${JSON.stringify(raw)}`, async () => {
      const res = await w.call('POST', '/v1/orgs/{org}/debits', { org }, {
        token: serviceToken(org),
        rawBody: raw,
        headers: { 'content-type': JSON_TYPE, 'idempotency-key': randomId('key_') },
      });
      assertError(res, 400, 'invalid_json');
      await assertUnchanged();
    });
  }

  test('holds, daily-cap and signup bodies too', async () => {
    const opts = (tok, rawBody) => ({ token: tok, rawBody, headers: { 'content-type': JSON_TYPE, 'idempotency-key': randomId('key_') } });
    const fresh = randomId('org_');
    const truncated = [
      ['POST', '/v1/orgs/{org}/holds', serviceToken(org), '{"feature": "chat", "amount": "1"'],
      ['PUT', '/v1/orgs/{org}/daily-cap', ownerToken(org), '{"daily_cap": "100"'],
      ['POST', '/v1/orgs', serviceToken(fresh), `{"org_id": "${fresh}", "owner_id": "u"`],
    ];
    for (const [method, template, tok, raw] of truncated) {
      assertError(await w.call(method, template, { org }, opts(tok, raw)), 400, 'invalid_json');
    }
    assertError(await w.wallet(fresh), 404, 'wallet_not_found');
    await assertUnchanged();
  });

  test('a truncated body is invalid_json even when a field in it is unknown', async () => {
    const res = await w.call('PUT', '/v1/orgs/{org}/daily-cap', { org }, {
      token: ownerToken(org),
      rawBody: '{"colour": "red"',
      headers: { 'content-type': JSON_TYPE },
    });
    assertError(res, 400, 'invalid_json');
    await assertUnchanged();
  });

  test('a JSON body that is not an object is 422 or 400', async () => {
    for (const raw of ['[]', '"chat"', '42', 'null']) {
      const res = await w.call('POST', '/v1/orgs/{org}/debits', { org }, {
        token: serviceToken(org),
        rawBody: raw,
        headers: { 'content-type': JSON_TYPE, 'idempotency-key': randomId('key_') },
      });
      assert.ok([400, 422].includes(res.status), `${raw}: ${res.summary}`);
    }
    await assertUnchanged();
  });
});

describe('debit fields', () => {
  test('every configured feature is accepted', async () => {
    for (const feature of FEATURES) {
      const res = await accept(await w.debit(org, '0.0001', { feature }), 201);
      assert.equal(res.json.feature, feature);
    }
  });

  test('unknown or missing feature → 422 naming feature', async () => {
    for (const body of [{ feature: 'image_generation', amount: '1' }, { amount: '1' }, { feature: 5, amount: '1' }, { feature: 'CHAT', amount: '1' }]) {
      assertError(await w.debit(org, null, { body }), 422, 'invalid_request', { field: 'feature' });
    }
    await assertUnchanged();
  });

  const badAmounts = [
    '1.00001', '0', '0.0000', '-1', '-0', '1e3', '1E3', 'NaN', 'Infinity', '', ' 1', '1 ', '+1', '0x10',
    '1.2.3', '1,5', '.5', '1.', 'abc', '10000.0001', '99999999999999999999999', 5, 1.5, null, true, [], {},
  ];
  for (const amount of badAmounts) {
    test(`amount ${JSON.stringify(amount)} → 422 naming amount`, async () => {
      assertError(await w.debit(org, amount), 422, 'invalid_request', { field: 'amount' });
      await assertUnchanged();
    });
  }

  test('missing amount → 422 naming amount', async () => {
    assertError(await w.debit(org, null, { body: { feature: 'chat' } }), 422, 'invalid_request', { field: 'amount' });
    await assertUnchanged();
  });

  test('trailing zeros are not significant: "1.50000" debits 1.5', async () => {
    const before = snapshot.balance;
    const res = await accept(await w.debit(org, '1.50000'), 201);
    assert.equal(res.json.amount, '1.5');
    assert.equal(units(snapshot.balance), units(before) - units('1.5'));
  });

  test('the per-operation maximum (10000) is inclusive: it fails on the balance, not as invalid', async () => {
    const res = await w.debit(org, '10000');
    assertError(res, 402, 'insufficient_credits');
    await assertUnchanged();
  });

  test('unknown top-level field → 422 naming it', async () => {
    assertError(await w.debit(org, null, { body: { feature: 'chat', amount: '1', colour: 'red' } }), 422, 'invalid_request', { field: 'colour' });
    await assertUnchanged();
  });

  test('user_id and project_id longer than 128 characters → 422; 128 is fine', async () => {
    const long = 'u'.repeat(129);
    assertError(await w.debit(org, '1', { user_id: long }), 422, 'invalid_request', { field: 'user_id' });
    assertError(await w.debit(org, '1', { project_id: long }), 422, 'invalid_request', { field: 'project_id' });
    await assertUnchanged();
    const res = await accept(await w.debit(org, '1', { user_id: 'u'.repeat(128), project_id: 'p'.repeat(128) }), 201);
    assert.equal(res.json.user_id, 'u'.repeat(128));
  });

  test(`${KEY_FIELD}: missing, empty or over 255 characters → 422; 255 is fine`, async () => {
    assertError(await w.debit(org, '1', { key: null }), 422, 'invalid_request', { field: KEY_FIELD });
    assertError(await w.debit(org, '1', { key: '' }), 422, 'invalid_request', { field: KEY_FIELD });
    assertError(await w.debit(org, '1', { key: 'k'.repeat(256) }), 422, 'invalid_request', { field: KEY_FIELD });
    await assertUnchanged();
    await accept(await w.debit(org, '1', { key: `${randomId('k')}`.padEnd(255, 'k') }), 201);
  });
});

describe('body size', () => {
  test('a body over 16 KiB → 413 payload_too_large', async () => {
    const metadata = { notes: 'x'.repeat(17 * 1024) };
    assertError(await w.debit(org, null, { body: { feature: 'chat', amount: '1', metadata } }), 413, 'payload_too_large');
    const cap = await w.call('PUT', '/v1/orgs/{org}/daily-cap', { org }, {
      token: ownerToken(org),
      body: { daily_cap: '100', padding: 'x'.repeat(17 * 1024) },
    });
    assertError(cap, 413, 'payload_too_large');
    await assertUnchanged();
  });

  test('a chunked body over 16 KiB (no Content-Length) → 413', async () => {
    // 20 KiB in 1 KiB chunks, then the end: the answer comes once 16 KiB
    // are passed, while the client may still be sending.
    const res = await sendChunked(worker.base, `/v1/orgs/${org}/debits`, {
      headers: { authorization: `Bearer ${serviceToken(org)}`, 'idempotency-key': randomId('key_') },
      chunk: Array.from({ length: 20 }, () => ' '.repeat(1024)),
      end: true,
    });
    assertError(res, 413, 'payload_too_large');
    await assertUnchanged();
  });
});

describe('holds and captures', () => {
  test('bad hold inputs → 422 naming the field', async () => {
    const cases = [
      [{ feature: 'chat', amount: '1.00001' }, 'amount'],
      [{ feature: 'chat', amount: '10000.0001' }, 'amount'],
      [{ feature: 'nope', amount: '1' }, 'feature'],
      [{ feature: 'chat', amount: '1', ttl_seconds: '60' }, 'ttl_seconds'],
      [{ feature: 'chat', amount: '1', ttl_seconds: 1.5 }, 'ttl_seconds'],
      [{ feature: 'chat', amount: '1', ttl_seconds: -1 }, 'ttl_seconds'],
      [{ feature: 'chat', amount: '1', colour: 'red' }, 'colour'],
    ];
    for (const [body, field] of cases) {
      assertError(await w.hold(org, null, { body }), 422, 'invalid_request', { field });
    }
    assertError(await w.hold(org, '1', { key: null }), 422, 'invalid_request', { field: KEY_FIELD });
    await assertUnchanged();
  });

  test('bad capture amounts → 422 and the hold stays active', async () => {
    const hold = await accept(await w.hold(org, '5'), 201);
    for (const amount of ['-1', '1.00001', 'abc', 3, null]) {
      assertError(await w.capture(org, hold.json.id, amount), 422, 'invalid_request', { field: 'amount' });
    }
    assertError(await w.capture(org, hold.json.id, null, { body: { amount: '1', extra: 1 } }), 422, 'invalid_request', { field: 'extra' });
    await assertUnchanged();
    await accept(await w.release(org, hold.json.id), 200);
  });
});

describe('daily cap', () => {
  for (const cap of ['0', '-5', '50000.0001', '50001', '1.00001', 'abc', '', 500, null]) {
    test(`daily_cap ${JSON.stringify(cap)} → 422 naming daily_cap`, async () => {
      assertError(await w.setCap(org, cap), 422, 'invalid_request', { field: 'daily_cap' });
      await assertUnchanged();
    });
  }

  test('the maximum itself (50000) is accepted', async () => {
    const res = await accept(await w.setCap(org, '50000'), 200);
    assertAmount(res.json.daily_cap, '50000');
  });
});

describe('organization ids', () => {
  const badIds = ['org bad', 'org$bad', 'ørg_1', 'org/1', `org_${'a'.repeat(61)}`];

  for (const id of badIds) {
    test(`signup with org_id ${JSON.stringify(id.length > 20 ? `${id.slice(0, 12)}…(${id.length})` : id)} → 422`, async () => {
      // The service token must name the same org, so the id is in its claims too:
      // refusing the token itself (401) is as good as refusing the body (422).
      const res = await w.signup(id, { tok: serviceToken(id) });
      if (res.status === 401) assertError(res, 401, 'unauthorized');
      else assertError(res, 422, 'invalid_request', { field: 'org_id' });
    });
  }

  test('in the path: never a 2xx, and no wallet appears', async () => {
    for (const id of badIds) {
      const tok = serviceToken(id);
      const read = await w.wallet(id, { tok });
      assert.ok(read.status >= 400 && read.status < 500, `${id}: ${read.summary}`);
      const debit = await w.debit(id, '1', { tok });
      assert.ok(debit.status >= 400 && debit.status < 500, `${id}: ${debit.summary}`);
    }
    await assertUnchanged();
  });

  test('64 characters is the longest id accepted', async () => {
    const id = `org_${'b'.repeat(44)}${randomId('')}`;
    assert.equal(id.length, 64);
    assert.equal((await w.signup(id)).status, 201);
  });

  test('signup without owner_id or with an unknown field → 422', async () => {
    const id = randomId('org_');
    assertError(await w.signup(id, { body: { org_id: id } }), 422, 'invalid_request', { field: 'owner_id' });
    assertError(await w.signup(id, { body: { org_id: id, owner_id: 'u', plan: 'pro' } }), 422, 'invalid_request', { field: 'plan' });
    assertError(await w.wallet(id), 404, 'wallet_not_found');
  });

  test('every org route answers 404 wallet_not_found for an org never created', async () => {
    const id = randomId('org_');
    assertError(await w.debit(id, '1'), 404, 'wallet_not_found');
    assertError(await w.hold(id, '1'), 404, 'wallet_not_found');
    assertError(await w.setCap(id, '100'), 404, 'wallet_not_found');
    assertError(await w.ledgerPage(id), 404, 'wallet_not_found');
    assertError(await w.wallet(id), 404, 'wallet_not_found');
  });
});

test('ledger limit outside 1..100 → 422', async () => {
  for (const limit of [0, 101]) {
    assertError(await w.ledgerPage(org, { limit }), 422, 'invalid_request', { field: 'limit' });
  }
});

test('GET /healthz → 200', async () => {
  const res = await w.req('GET', '/healthz');
  assert.equal(res.status, 200);
});

// Last, so that it sees every route this file exercised.
test('GET /openapi.json is OpenAPI 3.1 and describes every route exercised', async () => {
  const res = await w.req('GET', '/openapi.json', { token: token({ org, role: 'viewer' }) });
  assert.equal(res.status, 200, res.summary);
  assert.match(String(res.json?.openapi), /^3\.1\./, `openapi version: ${res.summary.slice(0, 300)}`);
  assert.equal(typeof res.json.paths, 'object', 'no paths in /openapi.json');
  // Path parameter names are the implementation's choice: compare templates with them blanked.
  const shape = (template) => template.replace(/\{[^}]+\}/g, '{}');
  const documented = new Map(Object.entries(res.json.paths).map(([p, ops]) => [shape(p), ops]));
  assert.ok(w.routesCalled.size >= 8, `only ${w.routesCalled.size} routes exercised`);
  for (const route of w.routesCalled) {
    const [method, template] = route.split(' ');
    const ops = documented.get(shape(template));
    assert.ok(ops, `${template} is missing from /openapi.json paths`);
    assert.ok(ops[method.toLowerCase()], `${route} is missing from /openapi.json`);
  }
});
