// Wallet core: signup and trial, debits, the daily cap across midnight UTC,
// idempotency, holds, and the D1 ledger.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  TRIAL, WALLET_FIELDS, addSeconds, api, assertAmount, assertError, assertWalletInvariants,
  futureDate, ownerToken, randomId, serviceToken, startWorker, units, waitFor,
} from './harness.mjs';

let worker;
let w; // api client

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });

after(() => worker?.stop());

const todayUtc = () => new Date().toISOString().slice(0, 10);
const nextMidnight = (day) => new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000);

async function getWallet(org, opts) {
  const res = await w.wallet(org, opts);
  assert.equal(res.status, 200, res.summary);
  assertWalletInvariants(res.json);
  return res.json;
}

describe('signup', () => {
  test('grants the trial once; repeats answer 200 and grant nothing', async () => {
    const org = randomId('org_');
    const first = await w.signup(org);
    assert.equal(first.status, 201, first.summary);
    assert.equal(first.json.org_id, org);
    assertAmount(first.json.balance, TRIAL);
    for (let i = 0; i < 3; i++) {
      const again = await w.signup(org);
      assert.equal(again.status, 200, again.summary);
      assertAmount(again.json.balance, TRIAL);
    }
    assertAmount((await getWallet(org)).balance, TRIAL);
  });

  test('20 concurrent signups: one 201, the rest 200, one trial_grant', async () => {
    const org = randomId('org_');
    const results = await Promise.all(Array.from({ length: 20 }, () => w.signup(org)));
    const statuses = results.map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 201).length, 1, `statuses ${statuses}`);
    assert.equal(statuses.filter((s) => s === 200).length, 19, `statuses ${statuses}`);
    for (const r of results) assertAmount(r.json.balance, TRIAL);
    assertAmount((await getWallet(org)).balance, TRIAL);
    const entries = await waitFor(async () => {
      const all = await w.ledger(org);
      assert.equal(all.length, 1, `ledger: ${JSON.stringify(all)}`);
      return all;
    });
    assert.equal(entries[0].kind, 'trial_grant');
    assertAmount(entries[0].amount, TRIAL);
    assertAmount(entries[0].balance_after, TRIAL);
  });
});

test('a new wallet shows every field with the defaults', async () => {
  const org = await w.newOrg();
  const before = todayUtc();
  const wallet = await getWallet(org);
  for (const field of WALLET_FIELDS) assert.ok(field in wallet, `wallet lacks ${field}: ${JSON.stringify(wallet)}`);
  assert.equal(wallet.org_id, org);
  assertAmount(wallet.balance, '200');
  assertAmount(wallet.held, '0');
  assertAmount(wallet.available, '200');
  assertAmount(wallet.daily_cap, '500');
  assertAmount(wallet.daily_cap_default, '500');
  assertAmount(wallet.daily_cap_max, '50000');
  assertAmount(wallet.spent_today, '0');
  assertAmount(wallet.held_today, '0');
  assertAmount(wallet.cap_remaining, '500');
  assert.ok([before, todayUtc()].includes(wallet.day), `day ${wallet.day}`);
  assert.equal(Date.parse(wallet.resets_at), nextMidnight(wallet.day).getTime(), `resets_at ${wallet.resets_at}`);
  assert.equal(wallet.status, 'active');
  assert.equal(wallet.resumes_at, null);
});

test('a wallet that was never created answers 404 wallet_not_found', async () => {
  const org = randomId('org_');
  assertError(await w.wallet(org), 404, 'wallet_not_found');
  assertError(await w.debit(org, '1'), 404, 'wallet_not_found');
});

describe('debits', () => {
  test('happy path: 201 with the ledger entry and the day so far', async () => {
    const org = await w.newOrg();
    const res = await w.debit(org, '12.5', { feature: 'error_analysis', user_id: 'user_1', project_id: 'proj_1' });
    assert.equal(res.status, 201, res.summary);
    const e = res.json;
    assert.equal(typeof e.id, 'string');
    assert.ok(e.id.length > 0);
    assert.equal(e.kind, 'debit');
    assertAmount(e.amount, '12.5');
    assert.equal(e.feature, 'error_analysis');
    assert.equal(e.user_id, 'user_1');
    assert.equal(e.project_id, 'proj_1');
    assertAmount(e.balance_after, '187.5');
    assertAmount(e.spent_today, '12.5');
    assertAmount(e.cap_remaining, '487.5');
    assert.ok(Math.abs(Date.parse(e.created_at) - Date.now()) < 60_000, `created_at ${e.created_at}`);

    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '187.5');
    assertAmount(wallet.available, '187.5');
    assertAmount(wallet.spent_today, '12.5');
    assertAmount(wallet.cap_remaining, '487.5');
  });

  test('402 insufficient_credits names available and requested, and changes nothing', async () => {
    const org = await w.newOrg();
    assert.equal((await w.debit(org, '150')).status, 201);
    const res = await w.debit(org, '50.0001');
    assertError(res, 402, 'insufficient_credits');
    assertAmount(res.json.error.available, '50');
    assertAmount(res.json.error.requested, '50.0001');
    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '50');
    assertAmount(wallet.spent_today, '150');

    // Spending exactly what is left is fine, and then the wallet is paused.
    const last = await w.debit(org, '50');
    assert.equal(last.status, 201, last.summary);
    assertAmount(last.json.balance_after, '0');
    const empty = await getWallet(org);
    assertAmount(empty.balance, '0');
    assert.equal(empty.status, 'paused_no_credits');
  });

  test('429 daily_cap_reached with resumes_at and Retry-After once the owner lowers the cap', async () => {
    const org = await w.newOrg();
    const capped = await w.setCap(org, '10');
    assert.equal(capped.status, 200, capped.summary);
    assertAmount(capped.json.daily_cap, '10');
    assertAmount(capped.json.cap_remaining, '10');

    assert.equal((await w.debit(org, '6')).status, 201);
    const res = await w.debit(org, '5');
    assertError(res, 429, 'daily_cap_reached');
    const resumesAt = Date.parse(res.json.error.resumes_at);
    assert.equal(new Date(resumesAt).getUTCHours(), 0, `resumes_at ${res.json.error.resumes_at} is not midnight`);
    assert.ok(resumesAt > Date.now() && resumesAt <= Date.now() + 86_400_000, `resumes_at ${res.json.error.resumes_at}`);
    const retryAfter = res.headers.get('retry-after');
    assert.match(retryAfter ?? '', /^\d+$/, `Retry-After ${retryAfter}`);
    const expected = (resumesAt - Date.now()) / 1000;
    assert.ok(Math.abs(Number(retryAfter) - expected) <= 60, `Retry-After ${retryAfter}, expected ~${expected}`);

    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '194');
    assertAmount(wallet.spent_today, '6');

    // Reaching the cap exactly is allowed; then AI features pause until midnight.
    const exact = await w.debit(org, '4');
    assert.equal(exact.status, 201, exact.summary);
    assertAmount(exact.json.cap_remaining, '0');
    const paused = await getWallet(org);
    assert.equal(paused.status, 'paused_daily_cap');
    assert.equal(Date.parse(paused.resumes_at), resumesAt);
  });

  test("lowering the cap below the day's use lets nothing more through", async () => {
    const org = await w.newOrg();
    assert.equal((await w.debit(org, '10')).status, 201);
    const lowered = await w.setCap(org, '5');
    // Refusing the change is one careful answer; accepting it must pause spending.
    if (lowered.status !== 200) {
      assertError(lowered, 422, 'invalid_request', { field: 'daily_cap' });
      assertAmount((await w.wallet(org)).json.daily_cap, '500');
      return;
    }
    assertAmount(lowered.json.daily_cap, '5');
    assertAmount(lowered.json.cap_remaining, '0');
    assert.equal(lowered.json.status, 'paused_daily_cap');
    assertError(await w.debit(org, '0.0001'), 429, 'daily_cap_reached');
    assertError(await w.hold(org, '0.0001'), 429, 'daily_cap_reached');
    assertAmount(await w.balance(org), '190');
  });

  test('the cap resets at midnight UTC (X-Dev-Now)', async () => {
    const org = await w.newOrg(); // a fresh org: its clock only moves forward
    const day = futureDate(400);
    const nextDay = futureDate(401);
    assert.equal((await w.setCap(org, '10', { now: `${day}T23:58:00Z` })).status, 200);

    const spend = await w.debit(org, '10', { now: `${day}T23:59:00Z` });
    assert.equal(spend.status, 201, spend.summary);
    assertAmount(spend.json.spent_today, '10');

    const blocked = await w.debit(org, '1', { now: `${day}T23:59:30Z` });
    assertError(blocked, 429, 'daily_cap_reached');
    assert.equal(Date.parse(blocked.json.error.resumes_at), Date.parse(`${nextDay}T00:00:00Z`));
    const retryAfter = Number(blocked.headers.get('retry-after'));
    assert.ok(retryAfter >= 30 && retryAfter <= 31, `Retry-After ${retryAfter}, expected 30`);

    const late = await getWallet(org, { now: `${day}T23:59:59Z` });
    assert.equal(late.day, day);
    assert.equal(late.status, 'paused_daily_cap');

    const resumed = await w.debit(org, '1', { now: `${nextDay}T00:00:01Z` });
    assert.equal(resumed.status, 201, resumed.summary);
    assertAmount(resumed.json.spent_today, '1');
    assertAmount(resumed.json.cap_remaining, '9');
    const wallet = await getWallet(org, { now: `${nextDay}T00:00:02Z` });
    assert.equal(wallet.day, nextDay);
    assertAmount(wallet.spent_today, '1');
    assertAmount(wallet.balance, '189');
    assert.equal(wallet.status, 'active');
    assert.equal(Date.parse(wallet.resets_at), nextMidnight(nextDay).getTime());
  });
});

test("an organization's clock never goes backwards (X-Dev-Now)", async () => {
  const org = await w.newOrg();
  const day = futureDate(300);
  assert.equal((await w.debit(org, '1', { now: `${day}T12:00:00Z` })).status, 201);
  // A request carrying the real (earlier) time is taken to happen at the latest time seen.
  const wallet = await getWallet(org);
  assert.equal(wallet.day, day);
  assertAmount(wallet.spent_today, '1');
  const debit = await w.debit(org, '1');
  assert.equal(debit.status, 201, debit.summary);
  assertAmount(debit.json.spent_today, '2');
  assert.ok(Date.parse(debit.json.created_at) >= Date.parse(`${day}T12:00:00Z`), `created_at ${debit.json.created_at}`);
});

describe('idempotency', () => {
  test('a replay answers the same status and body and changes nothing', async () => {
    const org = await w.newOrg();
    const key = randomId('key_');
    const first = await w.debit(org, '3.25', { key, user_id: 'user_r' });
    assert.equal(first.status, 201, first.summary);
    const replays = await Promise.all(Array.from({ length: 5 }, () => w.debit(org, '3.25', { key, user_id: 'user_r' })));
    for (const r of replays) {
      assert.equal(r.status, 201, r.summary);
      assert.deepEqual(r.json, first.json);
    }
    assertAmount((await getWallet(org)).balance, '196.75');
    const entries = await waitFor(async () => {
      const all = await w.ledger(org);
      assert.equal(all.length, 2, JSON.stringify(all));
      return all;
    });
    assert.equal(entries[0].id, first.json.id);
  });

  test('the same key with a different request is 409 idempotency_key_reused', async () => {
    const org = await w.newOrg();
    const key = randomId('key_');
    const first = await w.debit(org, '2', { key, feature: 'chat', user_id: 'user_a' });
    assert.equal(first.status, 201, first.summary);
    assertError(await w.debit(org, '3', { key, feature: 'chat', user_id: 'user_a' }), 409, 'idempotency_key_reused');
    assertError(await w.debit(org, '2', { key, feature: 'nl_alerts', user_id: 'user_a' }), 409, 'idempotency_key_reused');
    assertError(await w.debit(org, '2', { key, feature: 'chat', user_id: 'user_b' }), 409, 'idempotency_key_reused');
    assertAmount((await getWallet(org)).balance, '198');
    // The original request still replays.
    const replay = await w.debit(org, '2', { key, feature: 'chat', user_id: 'user_a' });
    assert.equal(replay.status, 201);
    assert.deepEqual(replay.json, first.json);
  });
});

describe('holds', () => {
  // Timestamps may be rounded to the second, so allow one second either way.
  function assertTtl(hold, seconds) {
    const ms = Date.parse(hold.expires_at) - Date.parse(hold.created_at);
    assert.ok(Math.abs(ms - seconds * 1000) <= 1000, `${hold.created_at} → ${hold.expires_at}: expected ${seconds} s`);
  }

  async function createHold(org, amount, opts) {
    const res = await w.hold(org, amount, opts);
    assert.equal(res.status, 201, res.summary);
    return res.json;
  }

  test('create: 201, reduces available, counts toward the cap', async () => {
    const org = await w.newOrg();
    assert.equal((await w.setCap(org, '60')).status, 200);
    const hold = await createHold(org, '50', { feature: 'auto_triage', user_id: 'user_h', ttl_seconds: 600 });
    assert.equal(typeof hold.id, 'string');
    assert.equal(hold.status, 'active');
    assertAmount(hold.amount, '50');
    assert.equal(hold.feature, 'auto_triage');
    assert.equal(hold.user_id, 'user_h');
    assertTtl(hold, 600);

    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '200');
    assertAmount(wallet.held, '50');
    assertAmount(wallet.available, '150');
    assertAmount(wallet.held_today, '50');
    assertAmount(wallet.cap_remaining, '10');

    assertError(await w.debit(org, '11'), 429, 'daily_cap_reached');
    assert.equal((await w.debit(org, '10')).status, 201);
    assertError(await w.hold(org, '0.0001'), 429, 'daily_cap_reached');
  });

  test('a hold replays by Idempotency-Key; the same key with another body is 409', async () => {
    const org = await w.newOrg();
    const key = randomId('key_');
    const hold = await createHold(org, '25', { key, ttl_seconds: 120 });
    const replay = await w.hold(org, '25', { key, ttl_seconds: 120 });
    assert.equal(replay.status, 201, replay.summary);
    assert.deepEqual(replay.json, hold);
    assertError(await w.hold(org, '26', { key, ttl_seconds: 120 }), 409, 'idempotency_key_reused');
    assertAmount((await getWallet(org)).held, '25');
  });

  test('a hold cannot reserve more than is available', async () => {
    const org = await w.newOrg();
    await createHold(org, '150');
    const res = await w.hold(org, '50.0001');
    assertError(res, 402, 'insufficient_credits');
    assertError(await w.debit(org, '50.0001'), 402, 'insufficient_credits');
    assertAmount((await getWallet(org)).available, '50');
  });

  test('the default ttl is 300 s; over 3600 s is 422', async () => {
    const org = await w.newOrg();
    const hold = await createHold(org, '1');
    assertTtl(hold, 300);
    assertTtl(await createHold(org, '1', { ttl_seconds: 3600 }), 3600);
    assertError(await w.hold(org, '1', { ttl_seconds: 3601 }), 422, 'invalid_request', { field: 'ttl_seconds' });
    assertError(await w.hold(org, '1', { ttl_seconds: 0 }), 422, 'invalid_request', { field: 'ttl_seconds' });
    assertAmount((await getWallet(org)).held, '2');
  });

  test('capture a smaller amount: debits it, releases the rest, at most once', async () => {
    const org = await w.newOrg();
    const hold = await createHold(org, '50', { feature: 'incident_timeline', user_id: 'user_c' });
    const res = await w.capture(org, hold.id, '30');
    assert.equal(res.status, 200, res.summary);
    assert.equal(res.json.id, hold.id);
    assert.equal(res.json.status, 'captured');
    assertAmount(res.json.amount, '50');
    assertAmount(res.json.captured_amount, '30');
    const entry = res.json.entry;
    assert.equal(entry.kind, 'capture');
    assertAmount(entry.amount, '30');
    assert.equal(entry.hold_id, hold.id);
    assert.equal(entry.feature, 'incident_timeline');
    assertAmount(entry.balance_after, '170');

    let wallet = await getWallet(org);
    assertAmount(wallet.balance, '170');
    assertAmount(wallet.held, '0');
    assertAmount(wallet.available, '170');
    assertAmount(wallet.spent_today, '30');
    assertAmount(wallet.held_today, '0');
    assertAmount(wallet.cap_remaining, '470');

    // Repeating the capture answers the same and debits nothing more.
    const again = await w.capture(org, hold.id, '30');
    assert.equal(again.status, 200, again.summary);
    assert.deepEqual(again.json, res.json);
    // A second capture of a different amount may be refused, but never debits.
    const other = await w.capture(org, hold.id, '10');
    if (other.status < 300) assert.equal(other.json.entry?.id, entry.id);
    else assert.ok(other.status >= 400 && other.status < 500, other.summary);
    wallet = await getWallet(org);
    assertAmount(wallet.balance, '170');
    assertAmount(wallet.spent_today, '30');
  });

  test('capture "0" releases everything and debits nothing', async () => {
    const org = await w.newOrg();
    const hold = await createHold(org, '20');
    const res = await w.capture(org, hold.id, '0');
    assert.equal(res.status, 200, res.summary);
    assert.equal(res.json.status, 'captured');
    assert.equal(res.json.entry, null);
    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '200');
    assertAmount(wallet.held, '0');
    assertAmount(wallet.spent_today, '0');
  });

  test('capturing more than held is 422 and leaves the hold active', async () => {
    const org = await w.newOrg();
    const hold = await createHold(org, '50');
    assertError(await w.capture(org, hold.id, '50.0001'), 422, 'invalid_request', { field: 'amount' });
    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '200');
    assertAmount(wallet.held, '50');
    const res = await w.capture(org, hold.id, '50');
    assert.equal(res.status, 200, res.summary);
    assertAmount(res.json.entry.balance_after, '150');
  });

  test('release returns the credits; a released hold cannot be captured', async () => {
    const org = await w.newOrg();
    const hold = await createHold(org, '40');
    const res = await w.release(org, hold.id);
    assert.equal(res.status, 200, res.summary);
    assert.equal(res.json.id, hold.id);
    assert.equal(res.json.status, 'released');
    const wallet = await getWallet(org);
    assertAmount(wallet.balance, '200');
    assertAmount(wallet.held, '0');
    assertAmount(wallet.available, '200');
    assertAmount(wallet.held_today, '0');
    assertAmount(wallet.cap_remaining, '500');
    assertError(await w.capture(org, hold.id, '10'), 409, 'hold_not_active');
    assertError(await w.capture(org, 'hold_does_not_exist', '1'), 404, 'hold_not_found');
    assertError(await w.release(org, 'hold_does_not_exist'), 404, 'hold_not_found');
    assertAmount((await getWallet(org)).balance, '200');
  });

  test('a hold expires by itself at expires_at (X-Dev-Now)', async () => {
    const org = await w.newOrg();
    const t0 = `${futureDate(30)}T12:00:00.000Z`;
    const hold = await createHold(org, '50', { ttl_seconds: 60, now: t0 });
    assert.equal(Date.parse(hold.expires_at), Date.parse(t0) + 60_000);

    const during = await getWallet(org, { now: addSeconds(t0, 30) });
    assertAmount(during.held, '50');
    const expired = await getWallet(org, { now: addSeconds(t0, 61) });
    assertAmount(expired.held, '0');
    assertAmount(expired.held_today, '0');
    assertAmount(expired.available, '200');
    assertAmount(expired.cap_remaining, '500');

    assertError(await w.capture(org, hold.id, '10', { now: addSeconds(t0, 62) }), 409, 'hold_not_active');
    // Releasing an expired hold either shows it expired or refuses: never a change.
    const release = await w.release(org, hold.id, { now: addSeconds(t0, 63) });
    if (release.status === 200) assert.equal(release.json.status, 'expired', release.summary);
    else assertError(release, 409, 'hold_not_active');
    assertAmount((await getWallet(org, { now: addSeconds(t0, 64) })).balance, '200');
  });

  test('a capture or release of a hold that expires in the same request answers hold_status expired', async () => {
    for (const action of ['capture', 'release']) {
      const org = await w.newOrg();
      const t0 = `${futureDate(40)}T12:00:00.000Z`;
      const hold = await createHold(org, '50', { ttl_seconds: 60, now: t0 });
      // No request in between: this one expires the hold and is refused by it.
      const late = addSeconds(t0, 90);
      const res = action === 'capture'
        ? await w.capture(org, hold.id, '10', { now: late })
        : await w.release(org, hold.id, { now: late });
      assertError(res, 409, 'hold_not_active', { hold_status: 'expired' });
      const after = await getWallet(org, { now: late });
      assertAmount(after.held, '0');
      assertAmount(after.balance, '200');
      // The expiry was stored: a repeat answers the same, nothing was captured.
      assertError(await w.capture(org, hold.id, '10', { now: addSeconds(late, 1) }), 409, 'hold_not_active', { hold_status: 'expired' });
      assert.deepEqual((await w.ledger(org)).map((e) => e.kind), ['trial_grant']);
    }
  });

  test('a capture counts on the day its hold was made', async () => {
    const org = await w.newOrg();
    const day = futureDate(500);
    const nextDay = futureDate(501);
    assert.equal((await w.setCap(org, '10')).status, 200);
    const hold = await createHold(org, '8', { ttl_seconds: 600, now: `${day}T23:59:00Z` });
    const afterMidnight = await getWallet(org, { now: `${nextDay}T00:00:10Z` });
    assertAmount(afterMidnight.held, '8');
    assertAmount(afterMidnight.held_today, '0');
    assertAmount(afterMidnight.cap_remaining, '10');
    const res = await w.capture(org, hold.id, '8', { now: `${nextDay}T00:00:30Z` });
    assert.equal(res.status, 200, res.summary);
    const wallet = await getWallet(org, { now: `${nextDay}T00:00:40Z` });
    assertAmount(wallet.balance, '192');
    assertAmount(wallet.spent_today, '0');
    assertAmount(wallet.cap_remaining, '10');
  });
});

describe('ledger', () => {
  test('lists every entry newest first with a consistent running balance; pagination visits each once', async () => {
    const org = await w.newOrg();
    const expected = [{ kind: 'trial_grant', amount: '200' }]; // oldest first
    const debit = async (amount, opts) => {
      const res = await w.debit(org, amount, opts);
      assert.equal(res.status, 201, res.summary);
      expected.push({ kind: 'debit', amount, id: res.json.id });
    };
    await debit('1', { feature: 'chat', user_id: 'user_1' });
    await debit('2.5', { feature: 'auto_triage', user_id: 'user_2', project_id: 'proj_1' });
    const hold = await w.hold(org, '10', { feature: 'release_analysis' });
    assert.equal(hold.status, 201, hold.summary);
    const capture = await w.capture(org, hold.json.id, '4');
    assert.equal(capture.status, 200, capture.summary);
    expected.push({ kind: 'capture', amount: '4', id: capture.json.entry.id, hold_id: hold.json.id });
    await debit('3');
    for (let i = 0; i < 6; i++) await debit('0.25', { user_id: `user_${i}` });
    const balance = (await getWallet(org)).balance;
    assertAmount(balance, '188');

    const entries = await waitFor(async () => {
      const all = await w.ledger(org);
      assert.equal(all.length, expected.length, `ledger has ${all.length} of ${expected.length} entries`);
      return all;
    });

    const oldestFirst = [...entries].reverse();
    let running = 0n;
    oldestFirst.forEach((entry, i) => {
      const want = expected[i];
      assert.equal(entry.kind, want.kind, `entry ${i}: ${JSON.stringify(entry)}`);
      assertAmount(entry.amount, want.amount);
      if (want.id) assert.equal(entry.id, want.id);
      if (want.hold_id) assert.equal(entry.hold_id, want.hold_id);
      running += ['trial_grant', 'purchase'].includes(entry.kind) ? units(entry.amount) : -units(entry.amount);
      assert.equal(units(entry.balance_after), running, `balance_after of entry ${i}: ${JSON.stringify(entry)}`);
      if (i > 0) assert.ok(Date.parse(entry.created_at) >= Date.parse(oldestFirst[i - 1].created_at), 'created_at goes backwards');
    });
    assert.equal(units(entries[0].balance_after), units(balance));
    const auto = oldestFirst[2];
    assert.equal(auto.feature, 'auto_triage');
    assert.equal(auto.user_id, 'user_2');
    assert.equal(auto.project_id, 'proj_1');

    for (const limit of [1, 3, 100]) {
      const seen = [];
      let cursor;
      for (let page = 0; page < 50; page++) {
        const res = await w.ledgerPage(org, { limit, starting_after: cursor });
        assert.equal(res.status, 200, res.summary);
        assert.ok(res.json.data.length <= limit);
        seen.push(...res.json.data.map((e) => e.id));
        if (!res.json.has_more) break;
        cursor = res.json.data.at(-1).id;
      }
      assert.deepEqual(seen, entries.map((e) => e.id), `pagination with limit ${limit}`);
    }
    const firstPage = await w.ledgerPage(org);
    assert.equal(firstPage.json.data.length, expected.length, 'the default limit (50) covers this ledger');
    assert.equal(firstPage.json.has_more, false);
  });

  test('limit outside 1..100 is 422', async () => {
    const org = await w.newOrg();
    for (const limit of [0, 101, -1, 'x']) {
      assertError(await w.ledgerPage(org, { limit }), 422, 'invalid_request', { field: 'limit' });
    }
  });

  test('the ledger needs an owner or admin token of the same org', async () => {
    const org = await w.newOrg();
    assert.equal((await w.ledgerPage(org, { tok: ownerToken(org) })).status, 200);
    assertError(await w.ledgerPage(org, { tok: serviceToken(org) }), 403, 'forbidden');
  });
});
