// The dashboard's read routes through the real runtime: transactions (JSON
// pages and the streamed CSV export) and usage (rollups, zero-filled days,
// the 7-day average and the depletion projection).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  TRIAL, api, assertAmount, assertError, ownerToken, randomId, serviceToken, startWorker, token, units, waitFor,
} from './harness.mjs';
import { d1Execute, shardOf, sqlText } from './d1-local.mjs';

let worker;
let w;

before(async () => {
  worker = await startWorker();
  w = api(worker.base);
}, { timeout: 150_000 });

after(() => worker?.stop());

const DAY_MS = 86_400_000;
const ROLES = ['owner', 'admin', 'member', 'viewer'];
const asOf = (org, role = 'viewer') => token({ org, role, sub: `user_${role}` });
const dateOf = (ms) => new Date(ms).toISOString().slice(0, 10);
const fromUnits = (u) => {
  const whole = u / 10_000n;
  const fraction = (u % 10_000n).toString().padStart(4, '0').replace(/0+$/, '');
  return fraction ? `${whole}.${fraction}` : `${whole}`;
};

function transactionsPage(org, { limit, starting_after, format, tok = asOf(org) } = {}) {
  const query = new URLSearchParams();
  if (limit !== undefined) query.set('limit', String(limit));
  if (starting_after !== undefined) query.set('starting_after', starting_after);
  if (format !== undefined) query.set('format', format);
  w.routesCalled.add('GET /v1/orgs/{org}/transactions');
  return w.req('GET', `/v1/orgs/${org}/transactions${query.size ? `?${query}` : ''}`, { token: tok });
}

/** Every transaction, following the cursor; asserts each page's shape. */
async function allTransactions(org, limit) {
  const seen = [];
  let cursor;
  for (let page = 0; page < 5000; page++) {
    const res = await transactionsPage(org, { limit, starting_after: cursor });
    assert.equal(res.status, 200, res.text);
    assert.ok(res.json.data.length <= (limit ?? 50), `page larger than ${limit}`);
    seen.push(...res.json.data);
    if (!res.json.has_more) return seen;
    assert.equal(res.json.data.length, limit ?? 50, 'a page before the last one is full');
    cursor = res.json.data.at(-1).id;
  }
  throw new Error('pagination did not end');
}

function usage(org, { from, to, tok = asOf(org), now } = {}) {
  const query = new URLSearchParams();
  if (from !== undefined) query.set('from', from);
  if (to !== undefined) query.set('to', to);
  w.routesCalled.add('GET /v1/orgs/{org}/usage');
  return w.req('GET', `/v1/orgs/${org}/usage${query.size ? `?${query}` : ''}`, { token: tok, now });
}

/** RFC 4180 parser: rows of fields (quotes, doubled quotes, CRLF). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      i++;
    } else {
      field += c;
    }
  }
  assert.equal(field, '', 'the CSV ends with CRLF');
  assert.equal(row.length, 0, 'the CSV ends with CRLF');
  return rows;
}

const CSV_COLUMNS = ['id', 'created_at', 'kind', 'pack_id', 'credits', 'amount_cents', 'currency', 'balance_after', 'source'];
const PACKS = [
  { id: 'starter', credits: 1000n, cents: 1000 },
  { id: 'team', credits: 5250n, cents: 5000 },
  { id: 'business', credits: 22000n, cents: 20000 },
  { id: 'scale', credits: 120000n, cents: 100000 },
];

/**
 * A consistent ledger of `count` entries for an organization: the trial
 * grant, then purchases and debits alternating, with running balances.
 */
function syntheticLedger(org, count) {
  const t0 = Date.parse('2025-01-01T00:00:00Z');
  const entries = [];
  let balance = 0n;
  for (let seq = 1; seq <= count; seq++) {
    const createdAt = t0 + seq * 3_600_000;
    const base = { org, seq, id: `le_${String(seq).padStart(12, '0')}`, created_at_ms: createdAt, usage_day: dateOf(createdAt) };
    let entry;
    if (seq === 1) {
      entry = { ...base, kind: 'trial_grant', amount: 2_000_000n };
    } else if (seq % 2 === 0) {
      const pack = PACKS[(seq / 2) % PACKS.length];
      entry = { ...base, kind: 'purchase', amount: pack.credits * 10_000n, pack_id: pack.id, amount_cents: pack.cents, currency: 'usd' };
    } else {
      entry = { ...base, kind: 'debit', amount: BigInt((seq * 7919) % 50_000) + 1n, feature: 'chat', user_id: `user_${seq % 5}` };
    }
    balance += entry.kind === 'debit' ? -entry.amount : entry.amount;
    entries.push({ ...entry, balance_after: balance });
  }
  return entries;
}

function insertSql(entries) {
  const statements = [];
  for (let i = 0; i < entries.length; i += 400) {
    const values = entries.slice(i, i + 400).map((e) => `(${[
      sqlText(e.org), e.seq, sqlText(e.id), sqlText(e.kind), e.amount, e.balance_after, e.created_at_ms,
      sqlText(e.usage_day), sqlText(e.feature), sqlText(e.user_id), sqlText(e.pack_id), e.amount_cents ?? 'NULL',
      sqlText(e.currency),
    ].join(', ')})`);
    statements.push(`INSERT INTO ledger_entries (org_id, seq, id, kind, amount_units, balance_after_units,
      created_at_ms, usage_day, feature, user_id, pack_id, amount_cents, currency) VALUES\n${values.join(',\n')};`);
  }
  return statements.join('\n');
}

/** The transaction the API should show for a credit entry. */
const expectedTransaction = (e) => ({
  id: e.id,
  created_at: new Date(e.created_at_ms).toISOString(),
  kind: e.kind,
  pack_id: e.pack_id ?? null,
  credits: fromUnits(e.amount),
  amount_cents: e.amount_cents ?? null,
  currency: e.currency ?? null,
  balance_after: fromUnits(e.balance_after),
  // Rows written without a source are purchases from before auto top-up: the owner's.
  source: e.kind === 'purchase' ? 'owner' : null,
});

/**
 * Asserts every transaction's running balance against the full ledger: the
 * organization's own (from its Durable Object), or `ledger` when the history
 * was written straight into D1.
 */
async function assertRunningBalances(org, transactions, ledger) {
  const entries = ledger ?? await w.ledger(org, {});
  const oldestFirst = [...entries].reverse();
  const runningAt = new Map();
  let sum = 0n;
  for (const entry of oldestFirst) {
    sum += ['trial_grant', 'purchase'].includes(entry.kind) ? units(entry.amount) : -units(entry.amount);
    runningAt.set(entry.id, { sum, entry });
  }
  for (const tx of transactions) {
    const at = runningAt.get(tx.id);
    assert.ok(at, `transaction ${tx.id} is not in the ledger`);
    assert.equal(units(tx.balance_after), at.sum, `${tx.id}: balance_after vs the sum of the ledger up to it`);
    assertAmount(tx.balance_after, at.entry.balance_after, `${tx.id}: balance_after vs the ledger entry`);
    assertAmount(tx.credits, at.entry.amount);
    assert.equal(tx.kind, at.entry.kind);
    assert.equal(tx.created_at, at.entry.created_at);
  }
  const credits = oldestFirst.filter((e) => ['trial_grant', 'purchase'].includes(e.kind));
  assert.deepEqual(transactions.map((t) => t.id), credits.reverse().map((e) => e.id), 'exactly the credit entries, newest first');
}

describe('transactions', () => {
  test('a new organization lists its trial grant, and the running balance agrees with the ledger', async () => {
    const org = await w.newOrg();
    for (const [amount, feature] of [['1.25', 'chat'], ['0.0035', 'auto_triage'], ['7', 'error_analysis']]) {
      const res = await w.debit(org, amount, { feature, user_id: 'user_a' });
      assert.equal(res.status, 201, res.text);
    }
    const hold = await w.hold(org, '5');
    assert.equal(hold.status, 201, hold.text);
    assert.equal((await w.capture(org, hold.json.id, '2.5')).status, 200);
    assert.equal((await w.ledger(org)).length, 5, 'the ledger is exact at once');
    // Transactions come from the D1 shard, replicated within 5 s.
    await waitFor(async () => (await transactionsPage(org)).json?.data?.length === 1, 5_000);

    const res = await transactionsPage(org);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.has_more, false);
    assert.equal(res.json.data.length, 1);
    const [grant] = res.json.data;
    assert.deepEqual(Object.keys(grant).sort(), [...CSV_COLUMNS].sort());
    assert.equal(grant.kind, 'trial_grant');
    assertAmount(grant.credits, TRIAL);
    assertAmount(grant.balance_after, TRIAL);
    assert.equal(grant.pack_id, null);
    assert.equal(grant.amount_cents, null);
    assert.equal(grant.currency, null);
    await assertRunningBalances(org, res.json.data);
  });

  test('every dashboard role may read; service tokens, other organizations and unknown ones may not', async () => {
    const org = await w.newOrg();
    for (const role of ROLES) {
      const res = await transactionsPage(org, { tok: asOf(org, role) });
      assert.equal(res.status, 200, `${role}: ${res.text}`);
    }
    assertError(await transactionsPage(org, { tok: serviceToken(org) }), 403, 'forbidden');
    const other = await w.newOrg();
    assertError(await transactionsPage(org, { tok: ownerToken(other) }), 403, 'forbidden');
    assertError(await transactionsPage(org, { tok: ownerToken(other), format: 'csv' }), 403, 'forbidden');
    const unknown = randomId('org_');
    assertError(await transactionsPage(unknown), 404, 'wallet_not_found');
    assertError(await transactionsPage(unknown, { format: 'csv' }), 404, 'wallet_not_found');
  });

  test('bad list parameters are refused, naming the field', async () => {
    const org = await w.newOrg();
    for (const limit of ['0', '101', 'ten', '-1']) {
      assertError(await transactionsPage(org, { limit }), 422, 'invalid_request', { field: 'limit' });
    }
    for (const cursor of ['hold_000000000001', 'le_1', 'x']) {
      assertError(await transactionsPage(org, { starting_after: cursor }), 422, 'invalid_request', { field: 'starting_after' });
    }
    assertError(await transactionsPage(org, { format: 'xml' }), 422, 'invalid_request', { field: 'format' });
    assertError(await transactionsPage(org, { format: 'csv', limit: 10 }), 422, 'invalid_request', { field: 'limit' });
    assertError(await transactionsPage(org, { format: 'csv', starting_after: 'le_000000000001' }), 422, 'invalid_request',
      { field: 'starting_after' });
  });

  describe('a long history (written straight into its D1 shard, as replication would)', () => {
    const org = randomId('org_hist_');
    const ledger = syntheticLedger(org, 2600); // 1,300 credit entries: three CSV pages of 500
    let expected;

    before(async () => {
      // The wallet exists (its Durable Object names the shard) and its trial
      // grant is entry 1; entries 2.. are written into the shard directly.
      assert.equal((await w.signup(org)).status, 201);
      const [grant] = await w.ledger(org);
      ledger[0].created_at_ms = Date.parse(grant.created_at);
      ledger[0].usage_day = dateOf(ledger[0].created_at_ms);
      expected = ledger.filter((e) => e.kind !== 'debit').reverse().map(expectedTransaction);
      await d1Execute(worker.persistTo, insertSql(ledger.slice(1)), { shard: shardOf(org) });
      // Once the trial grant is replicated too, the whole history is there.
      await waitFor(async () => (await transactionsPage(org, { starting_after: 'le_000000000002' })).json?.data?.length === 1, 5_000);
    }, { timeout: 120_000 });

    test('pagination visits each credit entry exactly once, newest first, for several page sizes', async () => {
      for (const limit of [100, 37, undefined]) {
        const seen = await allTransactions(org, limit);
        assert.equal(new Set(seen.map((t) => t.id)).size, seen.length, `limit ${limit}: an entry came twice`);
        assert.deepEqual(seen, expected, `limit ${limit}`);
      }
    });

    test('a cursor on a debit entry continues with the credit entries below it', async () => {
      const debit = ledger.find((e) => e.kind === 'debit' && e.seq === 1001);
      const res = await transactionsPage(org, { starting_after: debit.id, limit: 3 });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.json.data.map((t) => t.id), ['le_000000001000', 'le_000000000998', 'le_000000000996']);
      assert.equal(res.json.has_more, true);
      const last = await transactionsPage(org, { starting_after: 'le_000000000002', limit: 3 });
      assert.deepEqual(last.json.data.map((t) => t.id), ['le_000000000001']);
      assert.equal(last.json.has_more, false);
    });

    test('running balances agree with the ledger', async () => {
      await assertRunningBalances(org, await allTransactions(org, 100),
        ledger.map((e) => ({
          ...e, amount: fromUnits(e.amount), balance_after: fromUnits(e.balance_after), created_at: new Date(e.created_at_ms).toISOString(),
        })).reverse());
    });

    test('the CSV export streams the whole history and matches the JSON', async () => {
      const res = await fetch(`${worker.base}/v1/orgs/${org}/transactions?format=csv`, {
        headers: { authorization: `Bearer ${asOf(org, 'member')}` },
        signal: AbortSignal.timeout(30_000),
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/csv/);
      assert.match(res.headers.get('content-disposition'), new RegExp(`^attachment; filename="transactions-${org}-\\d{4}-\\d{2}-\\d{2}\\.csv"$`));
      assert.equal(res.headers.get('content-length'), null, 'streamed, not sized up front');
      // Read chunk by chunk, as a browser does: the body arrives in several pieces.
      let chunks = 0;
      let text = '';
      const decoder = new TextDecoder();
      for await (const chunk of res.body) {
        chunks++;
        text += decoder.decode(chunk, { stream: true });
      }
      assert.ok(chunks >= 2, `expected a streamed body, got ${chunks} chunk(s)`);
      const [header, ...rows] = parseCsv(text);
      assert.deepEqual(header, CSV_COLUMNS);
      assert.equal(rows.length, expected.length);
      const asJson = rows.map((r) => Object.fromEntries(header.map((name, i) => [name, r[i]])));
      const json = await allTransactions(org, 100);
      assert.deepEqual(asJson, json.map((t) => Object.fromEntries(CSV_COLUMNS.map((c) => [c, t[c] === null ? '' : String(t[c])]))));
    });
  });
});

describe('usage', () => {
  // Deterministic dates: each organization lives at its own X-Dev-Now clock.
  const today = '2026-03-15';
  const at = (day, time = '12:00:00') => `${day}T${time}.000Z`;
  const daysBefore = (day, n) => dateOf(Date.parse(`${day}T00:00:00Z`) - n * DAY_MS);

  async function orgAt(day) {
    const org = randomId('org_');
    const res = await w.signup(org, { now: at(day, '08:00:00') });
    assert.equal(res.status, 201, res.text);
    return org;
  }

  async function spend(org, day, amount, { feature = 'chat', user_id } = {}) {
    const res = await w.debit(org, amount, { feature, user_id, now: at(day) });
    assert.equal(res.status, 201, res.text);
  }

  /** The usage answer once the replica counted `count` debits in the range. */
  async function settledUsage(org, count, opts) {
    return waitFor(async () => {
      const res = await usage(org, opts);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.json.count, count, 'not replicated yet');
      return res.json;
    }, 10_000);
  }

  test('daily series is zero-filled over the range; features and members add up to the total', async () => {
    const d0 = daysBefore(today, 20);
    const org = await orgAt(d0);
    await spend(org, d0, '1.25', { user_id: 'alice' });
    await spend(org, d0, '0.0035', { feature: 'auto_triage' });
    await spend(org, daysBefore(today, 17), '2.5', { feature: 'error_analysis', user_id: 'bob' });
    // A hold made on one day and captured the next counts on the hold's day.
    const holdDay = daysBefore(today, 10);
    const hold = await w.hold(org, '3', { feature: 'incident_timeline', user_id: 'bob', ttl_seconds: 3600, now: at(holdDay, '23:30:00') });
    assert.equal(hold.status, 201, hold.text);
    const captured = await w.capture(org, hold.json.id, '0.5', { now: at(daysBefore(today, 9), '00:10:00') });
    assert.equal(captured.status, 200, captured.text);
    await spend(org, today, '0.1', { feature: 'nl_alerts', user_id: 'alice' });

    const from = daysBefore(d0, 2);
    const report = await settledUsage(org, 5, { from, to: today, now: at(today, '18:00:00') });
    assert.equal(report.from, from);
    assert.equal(report.to, today);
    assert.equal(report.today, today);
    assert.equal(report.days, 23);
    assert.equal(report.daily.length, 23);
    const expectedDaily = new Map([[d0, '1.2535'], [daysBefore(today, 17), '2.5'], [holdDay, '0.5'], [today, '0.1']]);
    report.daily.forEach((d, i) => {
      assert.equal(d.date, daysBefore(today, 22 - i), 'consecutive dates from..to');
      assertAmount(d.credits, expectedDaily.get(d.date) ?? '0', `credits on ${d.date}`);
    });
    assertAmount(report.total, '4.3535');
    const sum = (lines) => lines.reduce((s, l) => s + units(l.credits), 0n);
    assert.equal(sum(report.daily), units(report.total));
    assert.equal(sum(report.by_feature), units(report.total));
    assert.equal(sum(report.by_member), units(report.total));
    assert.deepEqual(report.by_feature, [
      { feature: 'error_analysis', credits: '2.5', count: 1 },
      { feature: 'chat', credits: '1.25', count: 1 },
      { feature: 'incident_timeline', credits: '0.5', count: 1 },
      { feature: 'nl_alerts', credits: '0.1', count: 1 },
      { feature: 'auto_triage', credits: '0.0035', count: 1 },
    ]);
    assert.deepEqual(report.by_member, [
      { user_id: 'bob', credits: '3', count: 2 },
      { user_id: 'alice', credits: '1.35', count: 2 },
      { user_id: null, credits: '0.0035', count: 1 },
    ]);
    assert.equal(report.by_member_truncated, false);

    // A range inside the history sees only its own days.
    const inner = await usage(org, { from: daysBefore(today, 17), to: daysBefore(today, 9), now: at(today, '18:00:00') });
    assert.equal(inner.status, 200, inner.text);
    assertAmount(inner.json.total, '3');
    assert.equal(inner.json.count, 2);
    assert.equal(inner.json.daily.length, 9);
  });

  test('defaults to the 30 days ending today, today being the request time', async () => {
    const org = await orgAt(today);
    const res = await usage(org, { now: at(today, '23:59:59') });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.to, today);
    assert.equal(res.json.from, daysBefore(today, 29));
    assert.equal(res.json.daily.length, 30);
    assert.ok(res.json.daily.every((d) => d.credits === '0'));
    const onlyTo = await usage(org, { to: '2026-02-28', now: at(today) });
    assert.equal(onlyTo.json.from, '2026-01-30');
    const onlyFrom = await usage(org, { from: '2026-03-10', now: at(today) });
    assert.equal(onlyFrom.json.to, today);
    assert.equal(onlyFrom.json.daily.length, 6);
  });

  test('ranges are bounded and bad dates are refused, naming the field', async () => {
    const org = await orgAt(today);
    const longest = await usage(org, { from: '2024-01-01', to: '2024-12-31', now: at(today) });
    assert.equal(longest.status, 200, longest.text);
    assert.equal(longest.json.daily.length, 366);
    const cases = [
      [{ from: '2024-01-01', to: '2025-01-01' }, 'from'], // 367 days
      [{ from: '2026-03-16', to: '2026-03-15' }, 'from'], // from after to
      [{ from: '2026-02-30' }, 'from'],
      [{ from: '2026-3-01' }, 'from'],
      [{ from: 'last week' }, 'from'],
      [{ from: '' }, 'from'],
      [{ to: '2026-03-15T00:00:00Z' }, 'to'],
      [{ to: '15/03/2026' }, 'to'],
    ];
    for (const [range, field] of cases) {
      assertError(await usage(org, { ...range, now: at(today) }), 422, 'invalid_request', { field });
    }
  });

  test('avg_daily_7d and the projection follow the documented rule', async () => {
    const start = daysBefore(today, 12);
    const org = await orgAt(start);
    await spend(org, start, '50'); // before the 7-day window: in the total, not in the average
    await spend(org, daysBefore(today, 6), '10', { user_id: 'u1' }); // first day of the window
    await spend(org, daysBefore(today, 2), '3.3333', { feature: 'release_analysis', user_id: 'u2' });
    await spend(org, today, '1', { feature: 'nl_alerts' });
    const report = await settledUsage(org, 4, { now: at(today, '20:00:00') });
    assert.deepEqual(report.trailing_7d, { from: daysBefore(today, 6), to: today, credits: '14.3333' });
    // avg = ceil(S / 7) in units of 0.0001 credit; projected = floor(balance / avg).
    const s = units(report.trailing_7d.credits);
    const avg = (s + 6n) / 7n;
    assert.equal(units(report.avg_daily_7d), avg);
    assertAmount(report.avg_daily_7d, '2.0477');
    const wallet = await w.wallet(org, { now: at(today, '20:00:00') });
    assertAmount(report.balance, wallet.json.balance, 'the balance is the exact one of the Durable Object');
    assertAmount(report.balance, '135.6667');
    assert.equal(BigInt(report.projected_days_until_depletion), units(report.balance) / avg);
    assert.equal(report.projected_days_until_depletion, 66);
  });

  test('no usage in the trailing 7 days: average 0 and no projection', async () => {
    const start = daysBefore(today, 9);
    const org = await orgAt(start);
    await spend(org, start, '5');
    const report = await settledUsage(org, 1, { now: at(today) });
    assertAmount(report.total, '5');
    assertAmount(report.avg_daily_7d, '0');
    assert.equal(report.projected_days_until_depletion, null);
  });

  test('every dashboard role may read; service tokens, other organizations and unknown ones may not', async () => {
    const org = await orgAt(today);
    for (const role of ROLES) {
      const res = await usage(org, { tok: asOf(org, role), now: at(today) });
      assert.equal(res.status, 200, `${role}: ${res.text}`);
    }
    assertError(await usage(org, { tok: serviceToken(org), now: at(today) }), 403, 'forbidden');
    const other = await orgAt(today);
    assertError(await usage(org, { tok: ownerToken(other), now: at(today) }), 403, 'forbidden');
    assertError(await usage(randomId('org_'), { now: at(today) }), 404, 'wallet_not_found');
  });
});

test('the OpenAPI document describes both report routes', async () => {
  const res = await w.req('GET', '/openapi.json');
  assert.equal(res.status, 200);
  for (const path of ['/v1/orgs/{org}/transactions', '/v1/orgs/{org}/usage']) {
    assert.ok(res.json.paths[path]?.get, `${path} is missing`);
  }
});
