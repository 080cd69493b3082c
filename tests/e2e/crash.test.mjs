// Durability: SIGKILL the whole runtime (wrangler and workerd) again and again
// in the middle of mixed load — debits, batches, holds and their captures,
// signed payment_intent.succeeded deliveries (each repeated in every round) —
// restart it on the same state, retry every request that got no answer with
// its own idempotency key (or hold id), and check that the callers and the
// ledger agree exactly: every entry id a caller was given is in the ledger
// once, the ledger has no debit or capture nobody was given, each
// PaymentIntent credited once, and the balance is what the callers were told.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, assertRunningBalance, assertWalletInvariants, ownerToken, randomId, serviceToken, startWorker, tempDir, units, waitFor,
} from './harness.mjs';
import { deliver, eventPayload, signatureHeader } from './stripe.mjs';

const KILLS = 10;
const ORGS = 3;
const LANES = 6; // concurrent request streams
// Each round's kill comes at a random moment KILL_AFTER_MS into its load, but
// not before MIN_ANSWERED_PER_ROUND requests of the round were answered (up
// to MAX_LOAD_MS), so it always lands mid-stream.
const KILL_AFTER_MS = [500, 1500];
const MAX_LOAD_MS = 6000;
const MIN_ANSWERED_PER_ROUND = 25;
const TRIAL = units('200');
const PACK = { id: 'starter', credits: units('1000'), cents: 1000 };
const DAILY_CAP = '50000';
const DEBIT_AMOUNTS = ['0.5', '0.25', '1.75'];
const BATCH_ITEM = '0.3';

let worker;
after(() => worker?.stop());

/** A PaymentIntent as Stripe renders it in a payment_intent.succeeded event. */
function paidIntent(org) {
  return {
    id: randomId('pi_crash_'),
    object: 'payment_intent',
    amount: PACK.cents,
    amount_received: PACK.cents,
    currency: 'usd',
    status: 'succeeded',
    client_secret: null,
    latest_charge: randomId('ch_'),
    last_payment_error: null,
    metadata: { org_id: org, pack_id: PACK.id },
  };
}

test(`acknowledged operations survive ${KILLS} SIGKILLs of the runtime under mixed load, each exactly once`, { timeout: 300_000 }, async (t) => {
  const began = Date.now();
  const persistTo = tempDir();
  worker = await startWorker({ persistTo });
  let w = api(worker.base);
  const orgs = [];
  for (let i = 0; i < ORGS; i++) {
    const org = await w.newOrg();
    const cap = await w.setCap(org, DAILY_CAP);
    assert.equal(cap.status, 200, cap.summary);
    orgs.push(org);
  }

  const stats = { kills: 0, requests: 0, unanswered: 0, replays: 0 };
  const given = new Map(orgs.map((org) => [org, new Map()])); // org → entry id → amount the caller was told
  const intents = new Map(orgs.map((org) => [org, []])); // org → PaymentIntents delivered
  const refused = []; // answers other than the expected success
  const replayMismatches = [];
  const queue = []; // operations to (re)send before new ones: deliveries and unanswered requests
  const answeredBeforeKill = []; // answered in the last moments before a kill: replayed afterwards
  let opNo = 0;
  let roundAnswered = 0;
  let killAt = 0;

  const give = (org, entry, amount) => {
    assert.equal(units(entry.amount), units(amount), `entry amount: ${JSON.stringify(entry)}`);
    const ids = given.get(org);
    assert.ok(!ids.has(entry.id), `entry ${entry.id} given to two callers`);
    ids.set(entry.id, units(entry.amount));
  };

  // One operation: a debit, a batch, a hold then its capture, or a webhook
  // delivery. `run` sends it once; true when it got its final answer.
  function newOp(lane) {
    const org = orgs[(lane + opNo) % ORGS];
    const n = opNo++;
    switch (n % 3) {
      case 0:
        return { kind: 'debit', org, key: `crash-debit-${n}`, amount: DEBIT_AMOUNTS[(n / 3) % 3] };
      case 1:
        return {
          kind: 'batch',
          org,
          items: Array.from({ length: 4 }, (_, i) => ({ idempotency_key: `crash-batch-${n}-${i}`, feature: 'auto_triage', amount: BATCH_ITEM })),
        };
      default:
        return { kind: 'hold', org, key: `crash-hold-${n}`, holdId: null, hold: '3', capture: '2.5' };
    }
  }

  async function run(op) {
    stats.requests++;
    let res;
    try {
      if (op.kind === 'debit') {
        res = await w.debit(op.org, op.amount, { key: op.key, feature: 'chat' });
        if (res.status === 201) {
          give(op.org, res.json, op.amount);
          op.entry = res.json;
          return true;
        }
      } else if (op.kind === 'batch') {
        res = await w.call('POST', '/v1/orgs/{org}/debits/batch', { org: op.org }, {
          token: serviceToken(op.org),
          body: { debits: op.items },
        });
        if (res.status === 200 && res.json.results.every((r) => r.status === 201)) {
          for (const r of res.json.results) give(op.org, r.entry, BATCH_ITEM);
          op.entries = res.json.results.map((r) => r.entry);
          return true;
        }
      } else if (op.kind === 'hold' && op.holdId === null) {
        res = await w.hold(op.org, op.hold, { key: op.key, ttl_seconds: 3600 });
        if (res.status === 201) {
          op.holdId = res.json.id;
          return run(op); // its capture
        }
      } else if (op.kind === 'hold') {
        res = await w.capture(op.org, op.holdId, op.capture);
        if (res.status === 200 && res.json.status === 'captured') {
          give(op.org, res.json.entry, op.capture);
          op.entry = res.json.entry;
          return true;
        }
      } else {
        res = await deliver(worker.base, op.payload, signatureHeader(op.payload));
        res.summary = `webhook ${op.intent} → ${res.status} ${res.text}`;
        if (res.status === 200) return true;
      }
    } catch {
      // The connection died with the runtime, or it is not up: no answer.
      stats.unanswered++;
      queue.push(op);
      return false;
    }
    refused.push(res.summary);
    return false;
  }

  let stopping = false;
  async function lane(n) {
    while (!stopping) {
      const op = queue.shift() ?? newOp(n);
      if (await run(op)) {
        roundAnswered++;
        if (op.kind !== 'webhook' && killAt - Date.now() < 300) answeredBeforeKill.push(op);
      }
    }
  }

  for (let round = 0; round <= KILLS; round++) {
    // This round's payments, each delivered twice, and every earlier one again.
    for (const org of orgs) {
      const intent = paidIntent(org);
      intents.get(org).push(intent.id);
      const payload = eventPayload('payment_intent.succeeded', intent);
      queue.push({ kind: 'webhook', org, intent: intent.id, payload }, { kind: 'webhook', org, intent: intent.id, payload });
    }
    for (const org of orgs) {
      for (const id of intents.get(org).slice(0, -1)) {
        const payload = eventPayload('payment_intent.succeeded', { ...paidIntent(org), id });
        queue.push({ kind: 'webhook', org, intent: id, payload });
      }
    }
    roundAnswered = 0;
    stopping = false;
    const last = round === KILLS;
    const loadMs = KILL_AFTER_MS[0] + Math.floor(Math.random() * (KILL_AFTER_MS[1] - KILL_AFTER_MS[0]));
    const start = Date.now();
    killAt = last ? Infinity : start + loadMs;
    const lanes = Array.from({ length: LANES }, (_, n) => lane(n));
    if (last) {
      // No kill: drain everything still unanswered (and this round's deliveries).
      while (queue.length > 0) await sleep(20);
      stopping = true;
      await Promise.all(lanes);
      for (let i = 0; queue.length > 0 && i < 1000; i++) await run(queue.shift());
      break;
    }
    while (Date.now() < start + MAX_LOAD_MS && (Date.now() < killAt || roundAnswered < MIN_ANSWERED_PER_ROUND)) {
      await sleep(10);
    }
    stopping = true; // lanes send nothing new; what is in flight dies with the runtime
    await worker.kill();
    stats.kills++;
    await Promise.all(lanes);
    worker = await startWorker({ persistTo, migrate: false });
    w = api(worker.base);
  }
  const loadDone = Date.now();

  assert.deepEqual(refused, [], 'requests refused');

  // Operations answered just before a kill replay to the very answer they got.
  for (const op of answeredBeforeKill) {
    stats.replays++;
    if (op.kind === 'debit') {
      const res = await w.debit(op.org, op.amount, { key: op.key, feature: 'chat' });
      if (res.json?.id !== op.entry.id) replayMismatches.push(res.summary);
    } else if (op.kind === 'batch') {
      const res = await w.call('POST', '/v1/orgs/{org}/debits/batch', { org: op.org }, {
        token: serviceToken(op.org),
        body: { debits: op.items },
      });
      const ids = res.json?.results?.map((r) => r.entry?.id);
      if (JSON.stringify(ids) !== JSON.stringify(op.entries.map((e) => e.id))) replayMismatches.push(res.summary);
    } else {
      const res = await w.capture(op.org, op.holdId, op.capture);
      if (res.json?.entry?.id !== op.entry.id) replayMismatches.push(res.summary);
    }
  }

  // Caller and ledger agree exactly, per organization.
  let lost = 0;
  let doubled = 0;
  let returnedTotal = 0;
  const problems = [];
  for (const org of orgs) {
    const ids = given.get(org);
    returnedTotal += ids.size;
    const paid = intents.get(org);
    const expected = 1 + paid.length + ids.size;
    // The ledger may trail the Durable Object (a D1 replica): wait until it
    // holds what the callers were given, or stops growing.
    let ledger = [];
    await waitFor(async () => {
      ledger = await w.ledger(org);
      return ledger.length >= expected;
    }, 20_000, 250).catch(() => {});
    const wallet = await w.wallet(org, { tok: ownerToken(org) });
    assert.equal(wallet.status, 200, wallet.summary);

    const spent = ledger.filter((e) => e.kind === 'debit' || e.kind === 'capture');
    const inLedger = new Map();
    for (const e of spent) inLedger.set(e.id, (inLedger.get(e.id) ?? 0) + 1);
    const orgLost = [...ids.keys()].filter((id) => !inLedger.has(id));
    const orgDoubled = [...inLedger].filter(([id, count]) => !ids.has(id) || count > 1).map(([id]) => id);
    lost += orgLost.length;
    doubled += orgDoubled.length;
    if (orgLost.length) problems.push(`${org}: given but not in the ledger: ${orgLost.slice(0, 10)}`);
    if (orgDoubled.length) problems.push(`${org}: in the ledger but given to nobody, or twice: ${orgDoubled.slice(0, 10)}`);

    const purchases = ledger.filter((e) => e.kind === 'purchase');
    const credited = purchases.map((e) => e.payment_intent_id).sort();
    if (JSON.stringify(credited) !== JSON.stringify([...paid].sort())) {
      problems.push(`${org}: ${purchases.length} purchase entries for ${paid.length} PaymentIntents`);
    }
    const kinds = new Set(ledger.map((e) => e.kind));
    for (const kind of kinds) {
      if (!['trial_grant', 'purchase', 'debit', 'capture'].includes(kind)) problems.push(`${org}: unexpected ${kind} entry`);
    }
    if (ledger.filter((e) => e.kind === 'trial_grant').length !== 1) problems.push(`${org}: not one trial grant`);

    // What the callers were told adds up to the balance, and so does the ledger.
    const told = TRIAL + BigInt(paid.length) * PACK.credits - [...ids.values()].reduce((a, b) => a + b, 0n);
    if (units(wallet.json.balance) !== told) problems.push(`${org}: balance ${wallet.json.balance}, callers were told ${told} (1/10000 credits)`);
    assert.equal(units(wallet.json.held), 0n, `${org}: every hold was captured`);
    assertWalletInvariants(wallet.json);
    if (problems.length === 0) assertRunningBalance(ledger, wallet.json.balance);
  }

  t.diagnostic(`kills ${stats.kills}, requests ${stats.requests} (${stats.unanswered} unanswered and retried after a restart), ` +
    `${returnedTotal} entries given to callers, ${orgs.length * (KILLS + 1)} PaymentIntents, ` +
    `replays ${stats.replays} (${replayMismatches.length} mismatched), lost ${lost}, doubled ${doubled}, ` +
    `load ${loadDone - began} ms, total ${Date.now() - began} ms`);
  assert.deepEqual(replayMismatches, [], 'replays answered differently');
  assert.deepEqual(problems, []);
  assert.equal(lost, 0);
  assert.equal(doubled, 0);
});
