// The TypeScript client's retry rules and error mapping, with a fake fetch (no
// worker): backoff bounds, one idempotency key for every attempt of an
// operation, Retry-After honoured or too long to wait, 402/409/422 never
// sent twice, and its error codes and wire types equal to the API's.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_RETRY_POLICY,
  ERROR_STATUS,
  WalletClient,
  WalletError,
  delayBeforeRetry,
  retryAfterMs,
} from '../../clients/typescript/src/index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const json = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
const apiError = (status, code, details = {}, headers = {}) =>
  json(status, { error: { code, message: `${code} happened`, ...details } }, headers);
const ENTRY = { id: 'le_000000000002', kind: 'debit', amount: '1', balance_after: '199', created_at: '2026-12-05T10:00:00.000Z', spent_today: '1', cap_remaining: '499' };

/** A client whose fetch answers from `answers` in turn (a function throws instead), recording requests and waits. */
function fakeClient(answers, options = {}) {
  const requests = [];
  const sleeps = [];
  const client = new WalletClient({
    baseUrl: 'http://wallet.test/',
    org: 'acme',
    token: 'tok',
    random: () => 0.5,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    fetch: async (url, init) => {
      requests.push({ url: String(url), method: init.method, headers: init.headers, body: init.body });
      const next = answers[Math.min(requests.length - 1, answers.length - 1)];
      if (typeof next === 'function') return next(init);
      return next.clone();
    },
    ...options,
  });
  return { client, requests, sleeps };
}

test('backoff doubles from the base, stays within [half, all] of its ceiling, and is capped per wait, in attempts and in total', () => {
  const policy = { maxAttempts: 8, baseDelayMs: 100, maxDelayMs: 1000, maxTotalDelayMs: 100_000 };
  const ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
  ceilings.forEach((ceiling, i) => {
    const attempt = i + 1;
    assert.equal(delayBeforeRetry(policy, attempt, 0, null, 0), ceiling / 2, `attempt ${attempt}, least jitter`);
    assert.equal(delayBeforeRetry(policy, attempt, 0, null, 0.999_999), ceiling - 1, `attempt ${attempt}, most jitter`);
    for (const random of [0.1, 0.37, 0.5, 0.93]) {
      const delay = delayBeforeRetry(policy, attempt, 0, null, random);
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay} outside [${ceiling / 2}, ${ceiling}]`);
    }
  });
  assert.equal(delayBeforeRetry(policy, 8, 0, null, 0.5), null, 'no attempt after maxAttempts');
  assert.equal(delayBeforeRetry({ ...policy, maxTotalDelayMs: 1000 }, 4, 500, null, 0.5), null, 'the total wait is bounded');
  assert.equal(delayBeforeRetry({ ...policy, maxTotalDelayMs: 1000 }, 1, 900, null, 0), 50, 'a wait within the total is kept');
  // Retry-After is a lower bound, even past maxDelayMs, but never past the total.
  assert.equal(delayBeforeRetry(policy, 1, 0, 10_000, 0.5), 10_000);
  assert.equal(delayBeforeRetry(policy, 3, 0, 10, 0.5), 300);
  assert.equal(delayBeforeRetry(policy, 1, 0, 100_001, 0.5), null);
  assert.equal(retryAfterMs('10', 0), 10_000);
  assert.equal(retryAfterMs(' 0 ', 0), 0);
  assert.equal(retryAfterMs('Sat, 05 Dec 2026 10:00:30 GMT', Date.parse('2026-12-05T10:00:00Z')), 30_000);
  assert.equal(retryAfterMs('soon', 0), null);
  assert.equal(retryAfterMs(null, 0), null);
});

test('5xx and network errors are retried with the same Idempotency-Key until an answer', async () => {
  const fail = () => {
    throw new TypeError('fetch failed');
  };
  const { client, requests, sleeps } = fakeClient([apiError(500, 'internal_error'), fail, json(502, 'bad gateway'), json(201, ENTRY)]);
  const entry = await client.debit({ feature: 'chat', amount: '1' });
  assert.deepEqual(entry, ENTRY);
  assert.equal(requests.length, 4);
  const keys = new Set(requests.map((r) => r.headers['idempotency-key']));
  assert.equal(keys.size, 1, `one key for every attempt: ${[...keys]}`);
  assert.match([...keys][0], /^[0-9a-f-]{36}$/);
  assert.ok(requests.every((r) => r.body === JSON.stringify({ feature: 'chat', amount: '1' })), 'the same body each time');
  assert.equal(requests[0].url, 'http://wallet.test/v1/orgs/acme/debits');
  assert.equal(requests[0].headers.authorization, 'Bearer tok');
  assert.deepEqual(sleeps, [150, 300, 600], 'equal jitter at random 0.5: 3/4 of 200, 400, 800');
  // A second operation gets a key of its own.
  await client.debit({ feature: 'chat', amount: '1' });
  assert.notEqual(requests.at(-1).headers['idempotency-key'], requests[0].headers['idempotency-key']);
});

test('retries end at maxAttempts and within maxTotalDelayMs; the last error is thrown, typed', async () => {
  const { client, requests, sleeps } = fakeClient([apiError(503, 'payment_provider_unavailable')]);
  await assert.rejects(client.wallet(), (err) => {
    assert.ok(err instanceof WalletError);
    assert.equal(err.code, 'payment_provider_unavailable');
    assert.equal(err.status, 503);
    assert.equal(err.attempts, DEFAULT_RETRY_POLICY.maxAttempts);
    return true;
  });
  assert.equal(requests.length, DEFAULT_RETRY_POLICY.maxAttempts);
  assert.equal(sleeps.length, DEFAULT_RETRY_POLICY.maxAttempts - 1);

  const bounded = fakeClient([apiError(500, 'internal_error')], { retry: { maxAttempts: 100, baseDelayMs: 1000, maxDelayMs: 4000, maxTotalDelayMs: 10_000 } });
  await assert.rejects(bounded.client.wallet(), { code: 'internal_error' });
  const total = bounded.sleeps.reduce((a, b) => a + b, 0);
  assert.ok(total <= 10_000, `waited ${total} ms in all`);
  assert.deepEqual(bounded.sleeps, [750, 1500, 3000, 3000], 'a fifth wait (3000) would pass 10 s in all');

  const network = fakeClient([() => Promise.reject(new TypeError('fetch failed'))], { retry: { maxAttempts: 2 } });
  await assert.rejects(network.client.wallet(), (err) => err instanceof WalletError && err.code === 'network_error' && err.status === 0 && err.attempts === 2);
});

test('an attempt that takes longer than timeoutMs is a network error and is retried', async () => {
  // Never answers; the interval stands for the open socket (AbortSignal.timeout alone keeps no process alive).
  const hang = (init) => new Promise((_, reject) => {
    const socket = setInterval(() => {}, 1000);
    init.signal.addEventListener('abort', () => {
      clearInterval(socket);
      reject(init.signal.reason);
    });
  });
  const { client, requests } = fakeClient([hang, json(201, ENTRY)], { timeoutMs: 50 });
  assert.deepEqual(await client.debit({ feature: 'chat', amount: '1' }), ENTRY);
  assert.equal(requests.length, 2);
  assert.equal(requests[0].headers['idempotency-key'], requests[1].headers['idempotency-key']);
});

test('507 ledger_storage_full is thrown at once, not retried like other 5xx', async () => {
  const { client, requests, sleeps } = fakeClient([apiError(507, 'ledger_storage_full'), json(201, ENTRY)]);
  await assert.rejects(client.debit({ feature: 'chat', amount: '1' }), (err) => {
    assert.ok(err instanceof WalletError);
    assert.equal(err.code, 'ledger_storage_full');
    assert.equal(err.status, 507);
    assert.equal(err.attempts, 1);
    return true;
  });
  assert.equal(requests.length, 1);
  assert.deepEqual(sleeps, []);
});

test('402, 409 and 422 are thrown at once, typed with their details, never sent twice', async () => {
  const cases = [
    [apiError(402, 'insufficient_credits', { available: '3', requested: '5' }), 'insufficient_credits', { available: '3', requested: '5' }],
    [apiError(409, 'idempotency_key_reused'), 'idempotency_key_reused', {}],
    [apiError(409, 'hold_not_active', { hold_status: 'expired' }), 'hold_not_active', { hold_status: 'expired' }],
    [apiError(422, 'invalid_request', { field: 'feature' }), 'invalid_request', { field: 'feature' }],
    [apiError(403, 'forbidden'), 'forbidden', {}],
  ];
  for (const [answer, code, details] of cases) {
    const { client, requests, sleeps } = fakeClient([answer, json(201, ENTRY)]);
    await assert.rejects(client.debit({ feature: 'chat', amount: '5' }), (err) => {
      assert.ok(err instanceof WalletError, String(err));
      assert.equal(err.code, code);
      assert.equal(err.status, ERROR_STATUS[code]);
      assert.equal(err.message, `${code} happened`);
      assert.deepEqual(err.details, details);
      assert.equal(err.attempts, 1);
      return true;
    });
    assert.equal(requests.length, 1, `${code} sent once`);
    assert.deepEqual(sleeps, []);
  }
});

test('429 waits what Retry-After says, or throws at once when that is past the total bound', async () => {
  const limited = fakeClient([apiError(429, 'rate_limited', {}, { 'retry-after': '7' }), json(200, { data: [] })]);
  assert.deepEqual(await limited.client.rates(), { data: [] });
  assert.deepEqual(limited.sleeps, [7000]);
  assert.equal(limited.requests.length, 2);

  const capped = fakeClient([apiError(429, 'daily_cap_reached', { resumes_at: '2026-12-06T00:00:00.000Z' }, { 'retry-after': '50400' })]);
  await assert.rejects(capped.client.debit({ feature: 'chat', amount: '1' }), (err) => {
    assert.equal(err.code, 'daily_cap_reached');
    assert.equal(err.status, 429);
    assert.equal(err.retryAfterSeconds, 50_400);
    assert.equal(err.details.resumes_at, '2026-12-06T00:00:00.000Z');
    return true;
  });
  assert.equal(capped.requests.length, 1, 'a cap that resumes tomorrow is not waited for');
  assert.deepEqual(capped.sleeps, []);
});

test('withHold releases the hold and rethrows when the call throws or returns no usage', async () => {
  const HOLD = { id: 'hold_000000000001', status: 'active', amount: '10', feature: 'chat', created_at: 'x', expires_at: 'y' };
  const boom = new Error('the model timed out');
  const { client, requests } = fakeClient([json(201, HOLD), json(200, { ...HOLD, status: 'released' })]);
  await assert.rejects(client.withHold({ feature: 'chat', amount: '10' }, async () => {
    throw boom;
  }), (err) => err === boom);
  assert.deepEqual(requests.map((r) => `${r.method} ${new URL(r.url).pathname}`), [
    'POST /v1/orgs/acme/holds',
    'POST /v1/orgs/acme/holds/hold_000000000001/release',
  ]);
  const bad = fakeClient([json(201, HOLD), json(200, { ...HOLD, status: 'released' })]);
  await assert.rejects(bad.client.withHold({ feature: 'chat', amount: '10' }, async () => 42), TypeError);
  assert.equal(bad.requests.at(-1).url, 'http://wallet.test/v1/orgs/acme/holds/hold_000000000001/release');
});

test('withHold captures what the call returns: its token usage, {usage} or {amount}, as the capture body', async () => {
  const HOLD = { id: 'hold_000000000002', status: 'active', amount: '1', feature: 'chat', created_at: 'x', expires_at: 'y' };
  const usage = { model: 'gpt-4o-mini', input_tokens: 10, output_tokens: 2 };
  const estimate = { model: 'gpt-4o-mini', input_tokens: 10, max_output_tokens: 20 };
  for (const [returned, body] of [[usage, { usage }], [{ usage }, { usage }], [{ amount: '0.5' }, { amount: '0.5' }]]) {
    const { client, requests } = fakeClient([json(201, HOLD), json(200, { ...HOLD, status: 'captured' })]);
    const hold = await client.withHold({ feature: 'chat', usageEstimate: estimate, ttlSeconds: 60, userId: 'ada' }, async () => returned);
    assert.equal(hold.status, 'captured');
    assert.deepEqual(JSON.parse(requests[0].body), { feature: 'chat', user_id: 'ada', ttl_seconds: 60, usage_estimate: estimate });
    assert.equal(requests[1].url, 'http://wallet.test/v1/orgs/acme/holds/hold_000000000002/capture');
    assert.deepEqual(JSON.parse(requests[1].body), body);
  }
});

test("the client's error codes and statuses are exactly the API's (api.rs), and agree with the OpenAPI document", () => {
  const api = fs.readFileSync(path.join(ROOT, 'crates/wallet-core/src/api.rs'), 'utf8');
  const declared = {};
  for (const [, status, code] of api.matchAll(/Told::new\(\s*(\d+),\s*"([a-z_]+)"/g)) declared[code] = Number(status);
  assert.ok(Object.keys(declared).length >= 20, 'api.rs parsed');
  assert.deepEqual(Object.fromEntries(Object.entries(ERROR_STATUS).sort()), Object.fromEntries(Object.entries(declared).sort()));
  // Every code a response of the OpenAPI document names is the client's, with that status.
  const doc = JSON.parse(fs.readFileSync(path.join(ROOT, 'public/openapi.json'), 'utf8'));
  let named = 0;
  for (const operations of Object.values(doc.paths)) {
    for (const operation of Object.values(operations)) {
      for (const [status, response] of Object.entries(operation.responses ?? {})) {
        if (Number(status) < 400) continue;
        for (const [word] of (response.description ?? '').matchAll(/\b[a-z]+(?:_[a-z]+)+\b/g)) {
          if (!(word in declared)) continue;
          named += 1;
          assert.equal(ERROR_STATUS[word], Number(status), `${word} documented under ${status}`);
        }
      }
    }
  }
  assert.ok(named > 50, `the document names codes (${named})`);
});

/** The properties of `export interface name {…}` in types.ts: name → optional? (top level only). */
function interfaceProperties(source, name) {
  const start = source.indexOf(`export interface ${name} `);
  assert.ok(start >= 0, `types.ts declares ${name}`);
  const body = source.slice(source.indexOf('{', start) + 1, source.indexOf('\n}', start));
  const properties = {};
  for (const [, property, optional] of body.matchAll(/^ {2}(\w+)(\?)?:/gm)) properties[property] = optional === '?';
  return properties;
}

test("the client's reply and body types have exactly the OpenAPI schemas' properties, required where they are", () => {
  const source = fs.readFileSync(path.join(ROOT, 'clients/typescript/src/types.ts'), 'utf8');
  const { schemas } = JSON.parse(fs.readFileSync(path.join(ROOT, 'public/openapi.json'), 'utf8')).components;
  // OpenAPI schema → the client's interface (the same name unless given).
  const names = {
    Wallet: 'Wallet', FeatureCap: 'FeatureCap', LedgerEntry: 'LedgerEntry', Hold: 'Hold', Usage: 'Usage',
    Transaction: 'Transaction', Pack: 'Pack', Purchase: 'Purchase', PaymentMethod: 'PaymentMethod',
    AuditRecord: 'AuditRecord', AutoTopUp: 'AutoTopUp', Alerts: 'Alerts', Event: 'WalletEvent',
    UsageReport: 'UsageReport', UsageEstimate: 'UsageEstimate', PricedUsage: 'PricedUsage', Rate: 'Rate',
  };
  for (const [schema, name] of Object.entries(names)) {
    assert.ok(schemas[schema], `OpenAPI has ${schema}`);
    const required = new Set(schemas[schema].required ?? []);
    const expected = Object.fromEntries(Object.keys(schemas[schema].properties).map((p) => [p, !required.has(p)]).sort());
    const actual = Object.fromEntries(Object.entries(interfaceProperties(source, name)).sort());
    assert.deepEqual(actual, expected, `${name} (property → optional) against OpenAPI ${schema}`);
  }
});
