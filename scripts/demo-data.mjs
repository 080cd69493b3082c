#!/usr/bin/env node
// Fills a demo organization with realistic AI usage over the last DAYS days,
// through the real API of a running worker (development only: it mints tokens
// with POST /dev/token and dates each call with X-Dev-Now).
//
//   make demo-data                      # ORG=demo, BASE=http://127.0.0.1:8787, DAYS=60
//   ORG=acme DAYS=30 make demo-data
//   node scripts/demo-data.mjs --org acme --base http://127.0.0.1:8790 --days 60
//
// An organization's clock never moves backwards, so the organization must be
// new: it signs up DAYS-1 days ago and its usage is sent day by day, oldest
// first, ending now. The plan is deterministic for a given organization id.
//
// Every AI call is priced by the wallet from its usage (a model and its
// tokens, SPEC §12) with the rate card of GET /v1/rates; several models are
// used, and incident timelines hold from a usage estimate and capture what
// they used (now and then more than estimated: unbilled). So that every tab
// of the dashboard has something to show, the owner also puts a test card on
// file (localstripe, as `make dev` runs it) and sets a low-balance alert and
// a cap on auto-triage on day one, and at the end buys a pack and turns on
// auto top-up, which buys a second pack by itself. Purchases come last
// because Stripe's webhooks carry no X-Dev-Now: they move the organization's
// clock to the real now (so does putting the card on file). Token counts are planned so the period consumes
// about 80% of the trial.
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    org: { type: 'string', default: process.env.ORG ?? 'demo' },
    base: { type: 'string', default: process.env.BASE ?? 'http://127.0.0.1:8787' },
    days: { type: 'string', default: process.env.DAYS ?? '60' },
    owner: { type: 'string', default: process.env.OWNER ?? 'alice' },
    concurrency: { type: 'string', default: process.env.CONCURRENCY ?? '4' },
  },
});

const ORG = args.org;
const BASE = args.base.replace(/\/+$/, '');
const DAYS = Number(args.days);
const CONCURRENCY = Number(args.concurrency);
const SHARE_OF_BALANCE = 0.8; // planning only; prices are the wallet's, exact
const PACK = 'starter'; // bought by the owner on day one, and by auto top-up later
const REQUEST_TIMEOUT_MS = 30_000;
const DAY_MS = 86_400_000;

if (!/^[A-Za-z0-9_-]{1,64}$/.test(ORG)) fail(`ORG must be 1 to 64 letters, digits, _ or -: ${ORG}`);
if (!Number.isInteger(DAYS) || DAYS < 1 || DAYS > 366) fail('DAYS must be an integer from 1 to 366');
if (!Number.isInteger(CONCURRENCY) || CONCURRENCY < 1 || CONCURRENCY > 32) fail('CONCURRENCY must be 1 to 32');

function fail(message) {
  console.error(`demo-data: ${message}`);
  process.exit(1);
}

// ---- a small deterministic random source (mulberry32), seeded by the org id ----
function seeded(text) {
  let seed = 0;
  for (const ch of text) seed = (Math.imul(seed, 31) + ch.charCodeAt(0)) | 0;
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = seeded(ORG);
const between = (lo, hi) => lo + (hi - lo) * random();
const pick = (weighted) => {
  const total = weighted.reduce((sum, [, w]) => sum + w, 0);
  let r = random() * total;
  for (const [value, w] of weighted) if ((r -= w) < 0) return value;
  return weighted.at(-1)[0];
};

// ---- who uses what, and what it costs (credits per call, before scaling) ----
const MEMBERS = [[args.owner, 3], ['bob', 5], ['carol', 4], ['dave', 2], ['erin', 1]];
// models: which of the rate card's models a feature calls; outputPerInput and
// cachedShare shape the tokens a call's cost is planned into.
const FEATURES = {
  chat: { weight: 40, cost: [0.05, 0.6], members: true, models: ['gpt-4o', 'claude-sonnet-4'], outputPerInput: 0.25, cachedShare: 0.4 },
  auto_triage: { weight: 30, cost: [0.02, 0.15], members: false, models: ['gpt-4o-mini'], outputPerInput: 0.1, cachedShare: 0.6 }, // runs on every new error group
  error_analysis: { weight: 12, cost: [0.2, 1.5], members: true, models: ['claude-sonnet-4'], outputPerInput: 0.2, cachedShare: 0.2 },
  incident_timeline: { weight: 4, cost: [1, 4], members: true, hold: true, models: ['gpt-4o'], outputPerInput: 0.3, cachedShare: 0 }, // cost known afterwards
  release_analysis: { weight: 6, cost: [0.5, 2.5], members: true, models: ['gpt-4o', 'claude-sonnet-4'], outputPerInput: 0.15, cachedShare: 0.1 },
  nl_alerts: { weight: 8, cost: [0.01, 0.08], members: true, models: ['gpt-4o-mini'], outputPerInput: 0.5, cachedShare: 0 },
};

/** An API decimal string as units (1/10,000 credit); demo amounts stay far below 2^53. */
const unitsOf = (text) => {
  const [whole, fraction = ''] = text.split('.');
  return Number(whole) * 10_000 + Number(fraction.padEnd(4, '0'));
};

/** Units (1/10,000 credit) as the API's decimal string. */
const amount = (units) => {
  const whole = Math.trunc(units / 10_000);
  const fraction = String(units % 10_000).padStart(4, '0').replace(/0+$/, '');
  return fraction ? `${whole}.${fraction}` : `${whole}`;
};

function planDay(dayIndex, date) {
  const weekday = new Date(`${date}T00:00:00Z`).getUTCDay();
  const weekend = weekday === 0 || weekday === 6;
  const growth = 0.6 + 0.6 * (dayIndex / Math.max(1, DAYS - 1)); // adoption grows over the period
  const incident = random() < 0.07; // an error spike: auto-triage bursts, timelines get built
  const count = Math.round(between(18, 34) * growth * (weekend ? 0.35 : 1));
  const features = Array.from({ length: count }, () =>
    pick(Object.entries(FEATURES).map(([name, f]) => [name, f.weight])));
  if (incident) {
    for (let i = 0; i < Math.round(between(15, 40)); i++) features.push('auto_triage');
    features.push('incident_timeline', 'incident_timeline', 'error_analysis', 'error_analysis', 'chat');
  }
  return features.map((feature) => {
    const spec = FEATURES[feature];
    return {
      feature,
      model: pick(spec.models.map((m) => [m, 1])),
      user_id: spec.members ? pick(MEMBERS) : undefined,
      units: Math.max(1, Math.round(between(...spec.cost) * 10_000)),
      hold: Boolean(spec.hold),
      underestimated: random() < 0.15, // the call used more than its hold's estimate
      at: random(), // fraction of the day (of the elapsed part, today)
    };
  });
}

/**
 * Tokens whose price at `rate` is about `units` (the wallet computes the exact
 * price): input and output in the feature's proportion, part of the input cached.
 */
function usageFor(call, rate) {
  const spec = FEATURES[call.feature];
  const perMillion = (text) => unitsOf(text);
  const cached = spec.cachedShare;
  const inputRate = (1 - cached) * perMillion(rate.input_per_million) + cached * perMillion(rate.cached_input_per_million);
  const perInputToken = (inputRate + spec.outputPerInput * perMillion(rate.output_per_million)) / 1_000_000;
  const budget = Math.max(0, call.units - unitsOf(rate.per_request));
  const input = Math.max(1, Math.min(100_000_000, Math.round(budget / perInputToken)));
  return {
    model: call.model,
    input_tokens: input,
    cached_input_tokens: Math.floor(input * cached),
    output_tokens: Math.min(100_000_000, Math.round(input * spec.outputPerInput)),
  };
}

// ---- HTTP ----
async function request(method, path, { token, body, headers = {}, now } = {}) {
  const h = { 'content-type': 'application/json', ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (now) h['x-dev-now'] = now;
  let res;
  try {
    res = await fetch(BASE + path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    fail(`${method} ${path}: ${err.message} (is the worker running at ${BASE}? start it with make dev)`);
  }
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

async function mintToken(sub, role) {
  const res = await request('POST', '/dev/token', { body: { org: ORG, sub, role } });
  if (res.status !== 200) fail(`POST /dev/token answered ${res.status} ${res.text} (development only)`);
  return res.json.token;
}

async function mapLimit(items, limit, fn) {
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

// ---- main ----
const service = await mintToken('svc_demo_data', 'service');
const owner = await mintToken(args.owner, 'owner');
const orgPath = `/v1/orgs/${ORG}`;
const now = Date.now();
const today = new Date(now).toISOString().slice(0, 10);
const dates = Array.from({ length: DAYS }, (_, i) => new Date(now - (DAYS - 1 - i) * DAY_MS).toISOString().slice(0, 10));
const startAt = `${dates[0]}T00:00:00.000Z`;

const signup = await request('POST', '/v1/orgs', {
  token: service,
  body: { org_id: ORG, owner_id: args.owner },
  now: startAt,
});
if (signup.status === 200) {
  fail(`organization ${ORG} already exists; its clock cannot go back ${DAYS} days. ` +
    'Pick another one (ORG=demo2 make demo-data) or start from empty local state.');
}
if (signup.status !== 201) fail(`signup answered ${signup.status} ${signup.text}`);

// The rate card in force now prices the plan (the wallet prices each call
// at its own instant; the development card changes no past price).
const card = await request('GET', '/v1/rates', { token: service });
if (card.status !== 200) fail(`GET /v1/rates answered ${card.status} ${card.text}`);
const rates = new Map(card.json.data.filter((r) => r.in_force).map((r) => [r.model, r]));
for (const spec of Object.values(FEATURES)) {
  for (const model of spec.models) {
    if (!rates.has(model)) fail(`the rate card has no rate in force for ${model}; run with the development RATE_CARD`);
  }
}

// Owner's set-up on day one: a low-balance alert and a cap on auto-triage
// (incident bursts meet it). The card and the packs come at the end.
const setupAt = `${dates[0]}T00:00:01.000Z`;
await ownerCall('PUT', '/alerts', { low_balance_threshold: '100' }, setupAt, {}, 'setting an alert');
await ownerCall('PUT', '/feature-caps', { caps: { auto_triage: '1' } }, setupAt, {}, 'capping auto-triage');
const budgetUnits = Math.floor(unitsOf(signup.json.available) * SHARE_OF_BALANCE);

async function ownerCall(method, path, body, at, headers, what) {
  const res = await request(method, `/v1/orgs/${ORG}${path}`, { token: owner, body, now: at, headers });
  if (res.status !== 200 && res.status !== 201) fail(`${what} answered ${res.status} ${res.text}`);
  if (res.json?.status && res.json.status !== 'succeeded' && path === '/purchases') {
    fail(`the purchase is ${res.json.status}, not succeeded`);
  }
  return res.json;
}

const plan = dates.map((date, i) => ({ date, calls: planDay(i, date) }));
const plannedUnits = plan.reduce((sum, d) => sum + d.calls.reduce((s, c) => s + c.units, 0), 0);
const scale = Math.min(1, budgetUnits / plannedUnits);
for (const day of plan) for (const c of day.calls) c.units = Math.max(1, Math.floor(c.units * scale));

console.log(`demo-data: ${ORG} at ${BASE}: ${plan.reduce((n, d) => n + d.calls.length, 0)} AI calls over ` +
  `${DAYS} days (${dates[0]} … ${today}), about ${amount(budgetUnits)} credits`);

const stats = { debits: 0, captures: 0, refused: {}, units: 0, unbilled: 0 };
for (const { date, calls } of plan) {
  const dayStart = Date.parse(`${date}T00:00:00Z`);
  // Today only up to now: the organization's clock must not pass the real one.
  const span = date === today ? Math.max(0, now - dayStart - 60_000) : DAY_MS - 1000;
  calls.sort((a, b) => a.at - b.at);
  // Debits go in batches (POST …/debits/batch), one per hour of the day that
  // had calls, dated at that hour's last call, a few batches in flight; holds
  // afterwards one at a time, so no concurrent call moves the organization's
  // clock past a hold's expiry before its capture.
  const byHour = new Map();
  calls.forEach((call, i) => {
    if (call.hold) return;
    const hour = Math.floor((call.at * span) / 3_600_000);
    if (!byHour.has(hour)) byHour.set(hour, []);
    byHour.get(hour).push({ call, key: `demo-${ORG}-${date}-${i}` });
  });
  await mapLimit([...byHour.values()], CONCURRENCY, (items) => sendBatch(date, dayStart, span, items));
  const holds = calls.map((call, i) => ({ call, i })).filter(({ call }) => call.hold);
  await mapLimit(holds, 1, ({ call, i }) => sendHold(date, dayStart, span, call, `demo-${ORG}-${date}-${i}`));
  const progress = `${date}: ${stats.debits + stats.captures} AI calls recorded`;
  if (process.stdout.isTTY) process.stdout.write(`\r  ${progress}`);
  else if (date === today || Date.parse(date) % (10 * DAY_MS) === 0) console.log(`  ${progress}`);
}
if (process.stdout.isTTY) process.stdout.write('\n');

function timeOf(dayStart, span, call) {
  return new Date(dayStart + Math.floor(call.at * span)).toISOString();
}

/**
 * Now (the real time): the owner buys a pack, then turns auto top-up on with
 * its threshold just above what is available, so the wallet buys a second
 * pack by itself (once this month). Answers how many purchases are credited.
 */
async function buyPacks() {
  const cardOnFile = await request('POST', `/dev/orgs/${ORG}/payment-method`, { body: { payment_method: 'pm_card_visa' } });
  if (cardOnFile.status !== 200) {
    fail(`putting a test card on file answered ${cardOnFile.status} ${cardOnFile.text} (is localstripe running? use make dev)`);
  }
  await ownerCall('POST', '/purchases', { pack_id: PACK }, undefined, { 'idempotency-key': `demo-${ORG}-pack` }, 'buying a pack');
  const wallet = await request('GET', `${orgPath}/wallet`, { token: owner });
  if (wallet.status !== 200) fail(`GET wallet answered ${wallet.status} ${wallet.text}`);
  const threshold = amount(Math.min(unitsOf(wallet.json.available) + 10_000, 1_000_000 * 10_000));
  await ownerCall('PUT', '/auto-top-up', { enabled: true, threshold, pack_id: PACK, monthly_limit: 1 }, undefined, {}, 'enabling auto top-up');
  // The top-up's charge runs in the organization's object after the answer.
  for (let i = 0; i < 50; i++) {
    const after = await request('GET', `${orgPath}/wallet`, { token: owner });
    if (unitsOf(after.json.balance) > unitsOf(wallet.json.balance)) return 2;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return 1;
}

function tally(res, units, date, what) {
  if (res.status === 200 || res.status === 201) {
    stats.units += units;
  } else if (res.status === 402 || res.status === 429) {
    const code = res.json?.error?.code ?? String(res.status);
    stats.refused[code] = (stats.refused[code] ?? 0) + 1;
  } else {
    fail(`${what} on ${date} answered ${res.status} ${JSON.stringify(res.json ?? res.text)}`);
  }
}

async function sendBatch(date, dayStart, span, items) {
  const now = timeOf(dayStart, span, items.at(-1).call);
  const debits = items.map(({ call, key }) => ({
    idempotency_key: key, feature: call.feature, usage: usageFor(call, rates.get(call.model)), user_id: call.user_id,
  }));
  const res = await request('POST', `${orgPath}/debits/batch`, { token: service, body: { debits }, now });
  if (res.status !== 200) fail(`debits/batch on ${date} answered ${res.status} ${res.text}`);
  res.json.results.forEach((result, i) => {
    if (result.status === 201) stats.debits++;
    const units = result.entry ? unitsOf(result.entry.amount) : 0;
    tally({ status: result.status, json: result }, units, date, `debit ${items[i].key}`);
  });
}

async function sendHold(date, dayStart, span, call, key) {
  const now = timeOf(dayStart, span, call);
  // Reserve from an estimate (up to twice the output), then capture what was
  // used; an underestimated call used more output than estimated.
  const used = usageFor(call, rates.get(call.model));
  const estimate = { model: used.model, input_tokens: used.input_tokens, max_output_tokens: used.output_tokens * 2 };
  if (call.underestimated) used.output_tokens *= 3;
  const body = { feature: call.feature, usage_estimate: estimate, user_id: call.user_id };
  const hold = await request('POST', `${orgPath}/holds`, { token: service, body, headers: { 'idempotency-key': key }, now });
  if (hold.status !== 201) return tally(hold, 0, date, `hold ${key}`);
  const res = await request('POST', `${orgPath}/holds/${hold.json.id}/capture`, {
    token: service, body: { usage: used }, now,
  });
  if (res.status === 200) {
    stats.captures++;
    stats.unbilled += unitsOf(res.json.unbilled ?? '0');
  }
  tally(res, res.json?.captured_amount ? unitsOf(res.json.captured_amount) : 0, date, `capture ${key}`);
}

const purchases = await buyPacks();
const wallet = await request('GET', `${orgPath}/wallet`, { token: owner });
console.log(`demo-data: ${purchases === 2 ? 'a pack bought by the owner and one by auto top-up' : 'a pack bought; auto top-up has not credited yet'} (${PACK}).`);
console.log(`demo-data: ${stats.debits} debits and ${stats.captures} captures priced from usage, ` +
  `${amount(stats.units)} credits consumed, ${amount(stats.unbilled)} unbilled` +
  (Object.keys(stats.refused).length ? `; refused: ${JSON.stringify(stats.refused)}` : '') +
  `; balance now ${wallet.json?.balance} credits.`);
console.log(`demo-data: open ${BASE}/ and sign in with organization "${ORG}", user "${args.owner}", role owner ` +
  '(or bob/carol/dave/erin with another role). Usage and transactions reach D1 within a few seconds.');
