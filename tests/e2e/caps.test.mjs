// Feature caps and the audit trail (SPEC §9) through the real runtime: a
// capped feature stops at its cap while others go on, midnight UTC resets
// it, holds count on their day, concurrency never crosses a cap, bad input
// changes nothing, and every settings change is recorded with who made it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  addSeconds, api, assertAmount, assertError, futureDate, mapLimit, ownerToken, randomId, serviceToken,
  startWorker, token, units,
} from './harness.mjs';

let worker;
let w;
before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });
after(() => worker?.stop());

const setCaps = (org, caps, { tok = ownerToken(org), now, body } = {}) =>
  w.call('PUT', '/v1/orgs/{org}/feature-caps', { org }, { token: tok, body: body ?? { caps }, now });
const audit = (org, query = {}, tok = ownerToken(org)) => {
  const qs = new URLSearchParams(query);
  w.routesCalled.add('GET /v1/orgs/{org}/audit');
  return w.req('GET', `/v1/orgs/${org}/audit${qs.size ? `?${qs}` : ''}`, { token: tok });
};
const capOf = (wallet, feature) => wallet.feature_caps.find((c) => c.feature === feature);
const batch = (org, items, now) =>
  w.req('POST', `/v1/orgs/${org}/debits/batch`, { token: serviceToken(org), body: { debits: items }, now });

describe('feature caps', () => {
  test('a burst of auto-triage stops at its cap while chat goes on', async () => {
    const org = await w.newOrg();
    const set = await setCaps(org, { auto_triage: '10' });
    assert.equal(set.status, 200, set.summary);
    assert.deepEqual(set.json.feature_caps, [
      { feature: 'auto_triage', daily_cap: '10', spent_today: '0', held_today: '0', cap_remaining: '10' },
    ]);
    const items = Array.from({ length: 30 }, (_, i) => ({ idempotency_key: `tri-${i}`, feature: 'auto_triage', amount: '0.5' }));
    const res = await batch(org, items);
    assert.equal(res.status, 200, res.summary);
    const statuses = res.json.results.map((r) => r.status);
    assert.deepEqual(statuses, [...Array(20).fill(201), ...Array(10).fill(429)]);
    for (const r of res.json.results.slice(20)) {
      assert.equal(r.error.code, 'feature_cap_reached');
      assert.equal(r.error.feature, 'auto_triage');
    }
    // One more auto-triage debit: 429 with feature, resumes_at and Retry-After.
    const refused = await w.debit(org, '0.0001', { feature: 'auto_triage' });
    assertError(refused, 429, 'feature_cap_reached', { feature: 'auto_triage', cap_remaining: '0', feature_cap: '10' });
    const resumes = Date.parse(refused.json.error.resumes_at);
    assert.equal(resumes % 86_400_000, 0, 'resumes at 00:00 UTC');
    const retryAfter = Number(refused.headers.get('retry-after'));
    assert.ok(retryAfter > 0 && Math.abs(retryAfter - (resumes - Date.now()) / 1000) < 60, `Retry-After ${retryAfter}`);
    const hold = await w.hold(org, '1', { feature: 'auto_triage' });
    assertError(hold, 429, 'feature_cap_reached', { feature: 'auto_triage' });
    // Chat goes on, and the organization's cap still counts everything.
    const chat = await w.debit(org, '25', { feature: 'chat' });
    assert.equal(chat.status, 201, chat.summary);
    const wallet = (await w.wallet(org)).json;
    assertAmount(wallet.spent_today, '35');
    assertAmount(wallet.balance, '165');
    assert.deepEqual(capOf(wallet, 'auto_triage'), {
      feature: 'auto_triage', daily_cap: '10', spent_today: '10', held_today: '0', cap_remaining: '0',
    });
    const ledger = await w.ledger(org);
    assert.equal(ledger.filter((e) => e.feature === 'auto_triage').length, 20);
  });

  test('midnight UTC resets feature caps; holds count on the day they were made', async () => {
    const org = randomId('org_');
    const day = futureDate(60);
    const next = futureDate(61);
    assert.equal((await w.signup(org, { now: `${day}T20:00:00Z` })).status, 201);
    assert.equal((await setCaps(org, { chat: '5' }, { now: `${day}T20:00:00Z` })).status, 200);
    const held = await w.hold(org, '4', { feature: 'chat', ttl_seconds: 3600, now: `${day}T23:30:00Z` });
    assert.equal(held.status, 201, held.summary);
    assertError(await w.debit(org, '1.5', { feature: 'chat', now: `${day}T23:31:00Z` }), 429, 'feature_cap_reached');
    assert.equal((await w.debit(org, '1', { feature: 'chat', now: `${day}T23:32:00Z` })).status, 201);
    // After midnight the cap starts from zero; the hold still counts on its day.
    const after = (await w.wallet(org, { now: `${next}T00:00:05Z` })).json;
    assert.deepEqual(capOf(after, 'chat'), { feature: 'chat', daily_cap: '5', spent_today: '0', held_today: '0', cap_remaining: '5' });
    const capture = await w.capture(org, held.json.id, '4', { now: `${next}T00:01:00Z` });
    assert.equal(capture.status, 200, capture.summary);
    assert.equal((await w.debit(org, '5', { feature: 'chat', now: `${next}T00:02:00Z` })).status, 201);
    assertError(await w.debit(org, '0.0001', { feature: 'chat', now: `${next}T00:03:00Z` }), 429, 'feature_cap_reached');
  });

  test('lowering the organization cap below a feature cap: the lower one rules', async () => {
    const org = await w.newOrg();
    assert.equal((await setCaps(org, { error_analysis: '100' })).status, 200);
    assert.equal((await w.setCap(org, '20')).status, 200);
    assertError(await w.debit(org, '21', { feature: 'error_analysis' }), 429, 'daily_cap_reached');
    assert.equal((await w.debit(org, '20', { feature: 'error_analysis' })).status, 201);
    // A feature cap above the (lowered) organization cap is refused.
    assertError(await setCaps(org, { chat: '21' }), 422, 'invalid_request', { field: 'caps.chat' });
  });

  test('200 concurrent debits of one capped feature never cross its cap', async () => {
    const org = await w.newOrg();
    assert.equal((await setCaps(org, { auto_triage: '50' })).status, 200);
    const results = await mapLimit(Array.from({ length: 200 }, (_, i) => i), 50, (i) =>
      w.debit(org, '0.5', { feature: 'auto_triage', key: `c-${i}` }));
    const accepted = results.filter((r) => r.status === 201);
    assert.equal(accepted.length, 100);
    for (const r of results.filter((x) => x.status !== 201)) assertError(r, 429, 'feature_cap_reached');
    for (const r of accepted) assert.ok(units(r.json.cap_remaining) >= 0n);
    const wallet = (await w.wallet(org)).json;
    assertAmount(capOf(wallet, 'auto_triage').spent_today, '50');
    assertAmount(wallet.balance, '150');
  });

  test('bad caps are 422 naming the field and change nothing', async () => {
    const org = await w.newOrg();
    assert.equal((await setCaps(org, { chat: '7' })).status, 200);
    const before = (await w.wallet(org)).json.feature_caps;
    const auditBefore = (await audit(org)).json.data.length;
    for (const [body, field] of [
      [{ caps: { poetry: '5' } }, 'caps.poetry'],
      [{ caps: { chat: '1.00001' } }, 'caps.chat'],
      [{ caps: { chat: '500.0001' } }, 'caps.chat'],
      [{ caps: { chat: '50001' } }, 'caps.chat'],
      [{ caps: { chat: '0' } }, 'caps.chat'],
      [{ caps: { chat: 5 } }, 'caps.chat'],
      [{ caps: { auto_triage: '3', chat: '-1' } }, 'caps.chat'],
      [{ caps: {} }, 'caps'],
      [{ caps: { chat: '5' }, extra: 1 }, 'extra'],
    ]) {
      const res = await setCaps(org, undefined, { body });
      assertError(res, 422, 'invalid_request');
      assert.match(res.json.error.field, new RegExp(`^${field.replace('.', '\\.')}`), `${JSON.stringify(body)}: ${res.summary}`);
    }
    assert.deepEqual((await w.wallet(org)).json.feature_caps, before);
    assert.equal((await audit(org)).json.data.length, auditBefore, 'refused changes record nothing');
    // null removes a cap.
    const removed = await setCaps(org, { chat: null });
    assert.equal(removed.status, 200, removed.summary);
    assert.deepEqual(removed.json.feature_caps, []);
    for (const role of ['admin', 'member', 'viewer', 'service']) {
      assertError(await setCaps(org, { chat: '3' }, { tok: token({ org, role }) }), 403, 'forbidden');
    }
  });
});

describe('audit trail', () => {
  test('every settings change says who, when, before and after; newest first; CSV', async () => {
    const org = await w.newOrg();
    const t0 = `${futureDate(90)}T10:00:00.000Z`;
    const alice = token({ org, role: 'owner', sub: 'alice' });
    assert.equal((await w.setCap(org, '300', { tok: alice, now: t0 })).status, 200);
    assert.equal((await setCaps(org, { auto_triage: '40' }, { tok: alice, now: addSeconds(t0, 60) })).status, 200);
    assert.equal((await setCaps(org, { auto_triage: '30', chat: '20' }, { tok: alice, now: addSeconds(t0, 120) })).status, 200);
    // Refused and no-op changes record nothing.
    assertError(await w.setCap(org, '60000', { tok: alice }), 422, 'invalid_request');
    assert.equal((await w.setCap(org, '300', { tok: alice, now: addSeconds(t0, 130) })).status, 200);
    assert.equal((await setCaps(org, { nl_alerts: null }, { tok: alice, now: addSeconds(t0, 140) })).status, 200);

    const res = await audit(org);
    assert.equal(res.status, 200, res.summary);
    assert.equal(res.json.has_more, false);
    const strip = ({ id, ...rest }) => rest;
    assert.deepEqual(res.json.data.map(strip), [
      { created_at: addSeconds(t0, 120), setting: 'feature_caps', sub: 'alice', role: 'owner',
        before: { auto_triage: '40' }, after: { auto_triage: '30', chat: '20' } },
      { created_at: addSeconds(t0, 60), setting: 'feature_caps', sub: 'alice', role: 'owner', before: {}, after: { auto_triage: '40' } },
      { created_at: t0, setting: 'daily_cap', sub: 'alice', role: 'owner', before: '500', after: '300' },
    ]);
    // Pages of one, following the cursor, give the same records.
    const paged = [];
    let cursor;
    for (;;) {
      const page = await audit(org, { limit: '1', ...(cursor ? { starting_after: cursor } : {}) }, token({ org, role: 'admin' }));
      assert.equal(page.status, 200, page.summary);
      paged.push(...page.json.data);
      if (!page.json.has_more) break;
      cursor = page.json.data.at(-1).id;
    }
    assert.deepEqual(paged, res.json.data);
    const csv = await fetch(`${worker.base}/v1/orgs/${org}/audit?format=csv`, { headers: { authorization: `Bearer ${ownerToken(org)}` } });
    assert.equal(csv.status, 200);
    assert.match(csv.headers.get('content-type'), /^text\/csv/);
    const lines = (await csv.text()).trimEnd().split('\r\n');
    assert.equal(lines[0], 'id,created_at,setting,sub,role,before,after');
    assert.deepEqual(lines.slice(1).map((l) => l.split(',')[0]), res.json.data.map((r) => r.id));
    for (const role of ['member', 'viewer', 'service']) assertError(await audit(org, {}, token({ org, role })), 403, 'forbidden');
    assertError(await audit(org, { starting_after: 'le_000000000001' }), 422, 'invalid_request', { field: 'starting_after' });
    const unknown = randomId('org_');
    assertError(await audit(unknown), 404, 'wallet_not_found');
  });
});
