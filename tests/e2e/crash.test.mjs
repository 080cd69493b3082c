// Durability: SIGKILL the whole runtime (wrangler and workerd) again and again
// in the middle of mixed load — debits, batches, holds and their captures,
// and Stripe's signed events about real purchases: payment_intent.succeeded
// (the only thing that credits a 3-D Secure purchase), charge.refunded (real
// refunds made at localstripe), charge.dispute.created and
// charge.dispute.closed (won and lost) — each event delivered twice and
// redelivered in every later round, as Stripe retries. Restart on the same
// state, retry every request that got no answer with its own idempotency key
// (or hold id, or event), and check that the callers, the ledger and a model
// computed by the test from the requests agree exactly: every entry id a
// caller was given is in the ledger once, the ledger has no debit or capture
// nobody was given, each PaymentIntent credited once, each refund and
// dispute taken once, each won dispute given back once, and the balance is
// the sum of the ledger and what the model expects. A small live window
// (ARCHIVE) keeps the alarm sealing ledger segments into R2 all along, so
// kills also land between a segment's put and its checkpoint, and between
// the checkpoint and the next alarm: at the end every organization's
// archive must verify end to end (scripts/verify-archive.mjs) and hold,
// with the live entries, exactly the ledger.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, assertWalletInvariants, ownerToken, serviceToken, startWorker, units, waitFor,
} from './harness.mjs';
import { eventPayload, startStack } from './stripe.mjs';
import {
  allEvents, assertLedgerAddsUp, authenticatedPurchase, decimal, dispute, getPurchase, paidPurchase, putCardOnFile,
  refundAtStripe, send, shareUnits, THREE_D_SECURE_CARD,
} from './money.mjs';

const KILLS = 10;
const ARCHIVE = { LEDGER_LIVE_ENTRIES: '40', LEDGER_SEGMENT_ENTRIES: '20' };
const ORGS = 3;
const LANES = 6; // concurrent request streams
// Each round's kill comes at a random moment KILL_AFTER_MS into its load, but
// not before MIN_ANSWERED_PER_ROUND requests of the round were answered (up
// to MAX_LOAD_MS), so it always lands mid-stream.
const KILL_AFTER_MS = [500, 1500];
const MAX_LOAD_MS = 6000;
const MIN_ANSWERED_PER_ROUND = 25;
const TRIAL = units('200');
const DAILY_CAP = '50000';
const DEBIT_AMOUNTS = ['0.5', '0.25', '1.75'];
const BATCH_ITEM = '0.3';
// Each organization first buys BASE_PACK on a card that pays at once (so
// that spending never runs short whatever Stripe's news takes back), then
// one TEAM purchase per scenario on a 3-D Secure card, authenticated at
// localstripe: only payment_intent.succeeded credits those.
const BASE_PACK = { id: 'business', credits: units('22000') };
const TEAM = { id: 'team', credits: units('5250'), cents: 5000 };
// What Stripe says happens to each purchase after it is paid, stage by
// stage; a stage is first delivered only once the one before it was
// acknowledged (Stripe's events about one payment come in their order;
// retries of earlier ones keep coming).
const SCENARIOS = [
  { name: 'refunded in two steps', stages: [['paid'], ['refund', 1500], ['refund', 5000]] },
  { name: 'disputed, won', stages: [['paid'], ['dispute'], ['closed', 'won']] },
  { name: 'refunded in part, disputed, lost', stages: [['paid'], ['refund', 1000], ['dispute'], ['closed', 'lost']] },
  { name: 'paid', stages: [['paid']] },
];

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');

let stack;
let worker;

before(async () => {
  // Only the test's deliveries reach the worker (localstripe's own are not registered).
  stack = await startStack({ webhooks: 'none', vars: ARCHIVE });
  worker = stack.worker;
}, { timeout: 180_000 });

after(async () => {
  if (worker !== stack?.worker) await worker?.stop();
  await stack?.stop();
});

/**
 * The model of one purchase's reconciliation (SPEC §10), applied stage by
 * stage as the stages are acknowledged: what each stage must write to the
 * ledger, in 1/10,000 credits. Spending never makes the wallet short here
 * (BASE_PACK), so nothing is ever unrecovered.
 */
function modelStage(m, [kind, arg]) {
  const settledBack = () => m.refunded + m.reversed - m.reinstated;
  switch (kind) {
    case 'paid':
      return [['purchase', TEAM.credits]];
    case 'refund': {
      if (arg <= m.refundedCents) return [];
      const due = shareUnits(TEAM.credits, arg, TEAM.cents) - settledBack();
      const cents = arg - m.refundedCents;
      m.refundedCents = arg;
      if (due <= 0n) return [];
      m.refunded += due;
      return [['refund_reversal', due, cents]];
    }
    case 'dispute': {
      if (m.disputed) return [];
      m.disputed = true;
      m.open = true;
      const unsettled = TEAM.credits - settledBack();
      m.reversed += unsettled;
      return unsettled > 0n ? [['dispute_reversal', unsettled]] : [];
    }
    case 'closed': {
      if (!m.open) return [];
      m.open = false;
      m.status = arg;
      if (arg !== 'won' || m.reversed - m.reinstated <= 0n) return [];
      const owed = m.reversed - m.reinstated;
      m.reinstated += owed;
      return [['dispute_reinstatement', owed]];
    }
    default:
      throw new Error(`unknown stage ${kind}`);
  }
}

/**
 * For each organization: its BASE_PACK purchase, and one authenticated TEAM
 * purchase per scenario with the events of each stage built from what
 * localstripe says (refunds made there in order, the charge read after each).
 */
async function setUpPurchases(w, org) {
  await putCardOnFile(w, org);
  const base = await paidPurchase(w, org, BASE_PACK.id);
  await putCardOnFile(w, org, await stack.stripe.cardPaymentMethod(THREE_D_SECURE_CARD));
  const purchases = [];
  for (const scenario of SCENARIOS) {
    const { purchase, intent } = await authenticatedPurchase(w, stack.stripe, org, TEAM.id, { cardOnFile: true });
    const dp = dispute(intent);
    let refundedCents = 0;
    const stages = [];
    for (const [kind, arg] of scenario.stages) {
      let type;
      let object;
      if (kind === 'paid') {
        [type, object] = ['payment_intent.succeeded', intent];
      } else if (kind === 'refund') {
        const charge = await refundAtStripe(stack.stripe, intent.id, arg - refundedCents);
        assert.equal(charge.amount_refunded, arg);
        refundedCents = arg;
        [type, object] = ['charge.refunded', charge];
      } else if (kind === 'dispute') {
        [type, object] = ['charge.dispute.created', dp];
      } else {
        [type, object] = ['charge.dispute.closed', { ...dp, status: arg }];
      }
      // One event per stage: every delivery of it carries the same id.
      stages.push({ kind, arg, type, payload: eventPayload(type, object), acked: false });
    }
    purchases.push({
      org, scenario: scenario.name, purchase, intent, stages, next: 0,
      model: { refunded: 0n, reversed: 0n, reinstated: 0n, refundedCents: 0, disputed: false, open: false, status: null },
      expected: [], // [kind, units, cents?] the ledger must hold for this PaymentIntent, oldest first
    });
  }
  return { base, purchases };
}

test(`acknowledged operations survive ${KILLS} SIGKILLs of the runtime under mixed load, each exactly once`, { timeout: 420_000 }, async (t) => {
  const began = Date.now();
  const persistTo = worker.persistTo;
  let w = api(worker.base);
  const orgs = [];
  const bases = new Map(); // org → its BASE_PACK purchase
  const payments = []; // every TEAM purchase and its stages
  for (let i = 0; i < ORGS; i++) {
    const org = await w.newOrg();
    const cap = await w.setCap(org, DAILY_CAP);
    assert.equal(cap.status, 200, cap.summary);
    orgs.push(org);
    const { base, purchases } = await setUpPurchases(w, org);
    bases.set(org, base);
    payments.push(...purchases);
  }
  const setUpMs = Date.now() - began;

  const stats = { kills: 0, requests: 0, unanswered: 0, replays: 0, deliveries: 0, deliveriesUnanswered: 0, deliveriesWhileDown: 0, retried5xx: 0, segments: 0 };
  const given = new Map(orgs.map((org) => [org, new Map()])); // org → entry id → amount the caller was told
  const refused = []; // answers other than the expected success
  const replayMismatches = [];
  const queue = []; // operations to (re)send before anything else: requests that got no answer
  // Stripe's deliveries of this round, sent at random moments among the
  // other requests, so that kills land on some of them.
  const deliveries = [];
  const DELIVERY_SHARE = 0.3;
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
        stats.deliveries++;
        res = await send(worker.base, op.payload); // signed afresh, as each of Stripe's attempts is
        res.summary = `${op.stage.type} of ${op.payment.intent.id} → ${res.status} ${res.text}`;
        if (res.status === 200) {
          acknowledged(op.payment, op.stage);
          return true;
        }
        if (res.status >= 500) {
          // Stripe retries a 5xx: so does the test (counted, not a failure).
          stats.retried5xx++;
          queue.push(op);
          return false;
        }
      }
    } catch {
      // The connection died with the runtime, or it is not up: no answer.
      stats.unanswered++;
      if (op.kind === 'webhook') stats.deliveriesUnanswered++;
      queue.push(op);
      return false;
    }
    refused.push(res.summary);
    return false;
  }

  /** A stage's first acknowledgement: the model applies it (stages of a payment are acknowledged in order). */
  function acknowledged(payment, stage) {
    if (stage.acked) return;
    stage.acked = true;
    payment.expected.push(...modelStage(payment.model, [stage.kind, stage.arg]));
  }

  const delivery = (payment, stage) => ({ kind: 'webhook', org: payment.org, payment, stage, payload: stage.payload });

  /**
   * Queues, for each payment, every stage already started once more (Stripe's
   * retries, when `retries`) and its next stage twice once the stage before
   * it was acknowledged. Returns how many stages it started.
   */
  function queueStages({ retries = true } = {}) {
    let started = 0;
    for (const p of payments) {
      if (retries) for (const stage of p.stages.slice(0, p.next)) deliveries.push(delivery(p, stage));
      const previous = p.stages[p.next - 1];
      if (p.next < p.stages.length && (!previous || previous.acked)) {
        const stage = p.stages[p.next++];
        deliveries.push(delivery(p, stage), delivery(p, stage));
        started++;
      }
    }
    return started;
  }
  const allAcknowledged = () => payments.every((p) => p.next === p.stages.length && p.stages.every((st) => st.acked));

  let stopping = false;
  async function lane(n) {
    while (!stopping) {
      const pickDelivery = deliveries.length > 0 && Math.random() < DELIVERY_SHARE;
      const op = queue.shift() ?? (pickDelivery ? deliveries.splice(Math.floor(Math.random() * deliveries.length), 1)[0] : newOp(n));
      if (await run(op)) {
        roundAnswered++;
        if (op.kind !== 'webhook' && killAt - Date.now() < 300) answeredBeforeKill.push(op);
      }
    }
  }

  for (let round = 0; round <= KILLS; round++) {
    // Each payment's next stage, twice, and every earlier event again.
    queueStages();
    roundAnswered = 0;
    stopping = false;
    const last = round === KILLS;
    const loadMs = KILL_AFTER_MS[0] + Math.floor(Math.random() * (KILL_AFTER_MS[1] - KILL_AFTER_MS[0]));
    const start = Date.now();
    killAt = last ? Infinity : start + loadMs;
    const lanes = Array.from({ length: LANES }, (_, n) => lane(n));
    if (last) {
      // No kill: drain everything still unanswered (and this round's deliveries).
      while (queue.length > 0 || deliveries.length > 0) await sleep(20);
      stopping = true;
      await Promise.all(lanes);
      const next = () => queue.shift() ?? deliveries.shift();
      for (let i = 0; (queue.length > 0 || deliveries.length > 0) && i < 1000; i++) await run(next());
      // Stages still to come (a kill held an earlier one back): one after another.
      for (let i = 0; i < 20 && !allAcknowledged(); i++) {
        queueStages({ retries: false });
        for (let j = 0; (queue.length > 0 || deliveries.length > 0) && j < 1000; j++) await run(next());
      }
      break;
    }
    while (Date.now() < start + MAX_LOAD_MS && (Date.now() < killAt || roundAnswered < MIN_ANSWERED_PER_ROUND)) {
      await sleep(10);
    }
    stopping = true; // lanes send nothing new; what is in flight dies with the runtime
    await worker.kill();
    stats.kills++;
    await Promise.all(lanes);
    // Stripe keeps delivering while the runtime is down: refused connections, sent again later.
    for (let i = 0; i < 2 && deliveries.length > 0; i++) {
      stats.deliveriesWhileDown++;
      assert.equal(await run(deliveries.shift()), false, 'a delivery answered while the runtime was down');
    }
    worker = await startWorker({ persistTo, migrate: false, vars: stack.workerVars });
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

  // Caller, model and ledger agree exactly, per organization.
  let lost = 0;
  let doubled = 0;
  let returnedTotal = 0;
  const problems = [];
  const archivedOrgs = [];
  if (!allAcknowledged()) {
    problems.push(`stages never acknowledged: ${payments.flatMap((p) => p.stages.filter((st) => !st.acked).map((st) => `${p.intent.id} ${st.type}`))}`);
  }
  const ADDING = ['trial_grant', 'purchase', 'dispute_reinstatement'];
  const STRIPE_KINDS = ['refund_reversal', 'dispute_reversal', 'dispute_reinstatement'];
  for (const org of orgs) {
    const ids = given.get(org);
    returnedTotal += ids.size;
    const mine = payments.filter((p) => p.org === org);
    const base = bases.get(org);
    const stripeEntries = mine.reduce((n, p) => n + p.expected.length, 0);
    const expectedLength = 2 + ids.size + stripeEntries; // trial, base purchase, spending, Stripe's news
    let ledger = [];
    await waitFor(async () => {
      ledger = await w.ledger(org);
      return ledger.length >= expectedLength;
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

    // Each PaymentIntent credited once; each one's refunds, dispute and
    // reinstatement exactly as the model says, in order.
    const purchases = ledger.filter((e) => e.kind === 'purchase');
    const credited = purchases.map((e) => e.payment_intent_id).sort();
    const paidIds = [base.payment_intent_id, ...mine.map((p) => p.intent.id)].sort();
    if (JSON.stringify(credited) !== JSON.stringify(paidIds)) {
      problems.push(`${org}: purchase entries for ${JSON.stringify(credited)}, expected each of ${JSON.stringify(paidIds)} once`);
    }
    const oldestFirst = [...ledger].reverse();
    for (const p of mine) {
      const got = oldestFirst.filter((e) => e.payment_intent_id === p.intent.id)
        .map((e) => (e.kind === 'refund_reversal' ? [e.kind, units(e.amount), e.amount_cents] : [e.kind, units(e.amount)]));
      const want = p.expected;
      const show = (list) => JSON.stringify(list.map(([k, u, c]) => [k, decimal(u), ...(c === undefined ? [] : [c])]));
      if (show(got) !== show(want)) problems.push(`${org} ${p.scenario} (${p.intent.id}): ledger ${show(got)}, model ${show(want)}`);
    }
    for (const kind of new Set(ledger.map((e) => e.kind))) {
      if (!['trial_grant', 'purchase', 'debit', 'capture', ...STRIPE_KINDS].includes(kind)) problems.push(`${org}: unexpected ${kind} entry`);
    }
    if (ledger.filter((e) => e.kind === 'trial_grant').length !== 1) problems.push(`${org}: not one trial grant`);

    // The model (trial, purchases and Stripe's news as applied, less what the
    // callers were told they spent) is the balance, and so is the ledger.
    const news = mine.flatMap((p) => p.expected).reduce((sum, [kind, u]) => sum + (ADDING.includes(kind) ? u : -u), 0n);
    const model = TRIAL + BASE_PACK.credits + news - [...ids.values()].reduce((a, b) => a + b, 0n);
    if (units(wallet.json.balance) !== model) problems.push(`${org}: balance ${wallet.json.balance}, the model expects ${decimal(model)}`);
    assert.equal(units(wallet.json.held), 0n, `${org}: every hold was captured`);
    assertWalletInvariants(wallet.json);
    if (problems.length === 0) assertLedgerAddsUp(ledger, wallet.json.balance);

    // The archive: sealed while the runtime was being killed, nothing lost
    // or doubled between R2 and the object, every segment intact.
    const storage = await waitFor(async () => {
      const res = await w.call('GET', '/v1/orgs/{org}/ledger/storage', { org }, { token: ownerToken(org) });
      return res.status === 200 && res.json.live_entries <= 40 && res.json;
    }, 30_000, 250).catch(() => null);
    if (!storage) problems.push(`${org}: the archive did not catch up`);
    else {
      stats.segments += storage.segments;
      if (storage.segments === 0) problems.push(`${org}: nothing was archived`);
      if (storage.live_entries + storage.archived_entries !== ledger.length) {
        problems.push(`${org}: ${storage.live_entries} live + ${storage.archived_entries} archived entries, the ledger lists ${ledger.length}`);
      }
      archivedOrgs.push(org);
    }

    // Each piece of news is one event, once.
    const events = await allEvents(w, org);
    const count = (type) => events.filter((e) => e.type === type).length;
    const want = {
      'purchase.succeeded': 1 + mine.length,
      'purchase.refunded': mine.reduce((n, p) => n + p.stages.filter((st) => st.kind === 'refund').length, 0),
      'purchase.disputed': mine.filter((p) => p.model.disputed).length,
      'purchase.dispute_closed': mine.filter((p) => p.model.status !== null).length,
    };
    for (const [type, n] of Object.entries(want)) {
      if (count(type) !== n) problems.push(`${org}: ${count(type)} ${type} events, expected ${n}`);
    }
    // Each purchase shows what Stripe said.
    for (const p of mine) {
      const shown = (await getPurchase(w, org, p.purchase.id)).json;
      const m = p.model;
      const want = {
        status: m.disputed ? 'disputed' : 'succeeded',
        payment_intent_id: p.intent.id,
        amount_refunded_cents: m.refundedCents,
        credits_refunded: decimal(m.refunded),
        credits_unrecovered: '0',
        dispute_status: m.status ?? (m.disputed ? 'open' : null),
        credits_reinstated: decimal(m.reinstated),
      };
      const gotShown = Object.fromEntries(Object.keys(want).map((k) => [k, shown?.[k]]));
      if (JSON.stringify(gotShown) !== JSON.stringify(want)) problems.push(`${org} ${p.scenario}: purchase ${JSON.stringify(gotShown)}, expected ${JSON.stringify(want)}`);
    }
  }

  // Last, once nothing else is asked of the worker: each archive checked
  // from the bucket (wrangler's local R2) and the API.
  for (const org of archivedOrgs) {
    const verified = await new Promise((resolve) => {
      execFile(process.execPath, [path.join(ROOT, 'scripts/verify-archive.mjs'), org, '--base', worker.base, '--persist-to', persistTo], {
        cwd: ROOT, encoding: 'utf8', timeout: 180_000,
        env: { ...process.env, PATH: `${path.join(ROOT, 'node_modules/.bin')}${path.delimiter}${process.env.PATH}` },
      }, (err, stdout, stderr) => resolve({ status: err ? (err.code ?? 1) : 0, stdout, stderr }));
    });
    if (verified.status !== 0) problems.push(`${org}: verify-archive: ${verified.stdout}${verified.stderr}`);
  }

  t.diagnostic(`kills ${stats.kills}, requests ${stats.requests} (${stats.unanswered} unanswered and retried after a restart), ` +
    `${returnedTotal} entries given to callers, ${stats.deliveries} Stripe event deliveries (${stats.deliveriesUnanswered} unanswered: ` +
    `${stats.deliveriesWhileDown} sent while the runtime was down, the rest cut by a kill; ` +
    `${stats.retried5xx} answered 5xx, all sent again) ` +
    `about ${payments.length + orgs.length} PaymentIntents, replays ${stats.replays} (${replayMismatches.length} mismatched), ` +
    `lost ${lost}, doubled ${doubled}, ${stats.segments} segments sealed, set-up ${setUpMs} ms, load ${loadDone - began} ms, total ${Date.now() - began} ms`);
  assert.deepEqual(replayMismatches, [], 'replays answered differently');
  assert.deepEqual(problems, []);
  assert.equal(lost, 0);
  assert.equal(doubled, 0);
});
