// End-to-end harness: runs the real worker under `wrangler dev` (workerd, local
// D1 and Durable Objects) and talks to it over HTTP, as the AI features, the
// signup hook and the dashboard do.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { after } from 'node:test';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'node_modules/.bin');
export const DEV_SECRET = 'local-dev-jwt-secret';
export const TRIAL = '200';
export const FEATURES = ['chat', 'auto_triage', 'error_analysis', 'incident_timeline', 'release_analysis', 'nl_alerts'];
export const ROLES = ['owner', 'admin', 'member', 'viewer', 'service'];

const READY_TIMEOUT_MS = 120_000; // the first start may build the worker
const MIGRATE_TIMEOUT_MS = 60_000;
const EXIT_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------------------
// Process management

const liveGroups = new Set(); // process-group ids of wrangler dev runs not yet stopped

export function killGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    if (err.code !== 'ESRCH') throw err;
  }
}

export function groupAlive(pgid) {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

const tempDirs = []; // persist dirs, kept when a test failed (they hold the logs)

/** A fresh temporary directory, removed at exit if every test passed. */
export function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ai-wallet-e2e-'));
  tempDirs.push(dir);
  return dir;
}

// A crashed or interrupted test file must not leave wrangler and workerd behind.
process.on('exit', (code) => {
  for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
  if (code === 0) {
    for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  }
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
    process.exit(128 + os.constants.signals[signal]);
  });
}
// Stops whatever a test file left running, e.g. when its before() failed half-way.
after(async () => {
  await Promise.all([...liveGroups].map((pgid) => signalAndWait(pgid, 'SIGTERM')));
});

async function signalAndWait(pgid, signal) {
  killGroup(pgid, signal);
  // Wait until every process of the group (wrangler, workerd, the build) is gone,
  // so that a restart on the same persist dir never races the old runtime.
  const deadline = Date.now() + EXIT_TIMEOUT_MS;
  while (groupAlive(pgid)) {
    if (Date.now() > deadline) {
      if (signal === 'SIGKILL') throw new Error(`process group ${pgid} survived SIGKILL`);
      return signalAndWait(pgid, 'SIGKILL');
    }
    await sleep(50);
  }
  liveGroups.delete(pgid);
}

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function wranglerEnv() {
  return {
    ...process.env,
    PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ''}`,
    WRANGLER_SEND_METRICS: 'false',
    CLOUDFLARE_CF_FETCH_ENABLED: 'false',
  };
}

function run(args, logFile, timeoutMs) {
  return new Promise((resolve, reject) => {
    const out = fs.openSync(logFile, 'a');
    const child = spawn(path.join(BIN, 'wrangler'), args, {
      cwd: ROOT,
      env: wranglerEnv(),
      stdio: ['ignore', out, out],
      detached: true,
    });
    fs.closeSync(out);
    liveGroups.add(child.pid);
    const timer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      liveGroups.delete(child.pid);
      if (code === 0) resolve();
      else reject(new Error(`wrangler ${args.join(' ')} failed (${signal ?? code}); log: ${logFile}`));
    });
  });
}

/** The D1 ledger shards of the local configuration (wrangler.toml `LEDGER_SHARDS`). */
export const LEDGER_SHARDS = ['DB', 'DB_1'];

/** Applies the D1 migrations to one shard of a persist dir. */
export function migrateShard(dir, shard, logFile = path.join(dir, `migrate-${shard}.log`)) {
  return run(['d1', 'migrations', 'apply', shard, '--local', '--persist-to', dir], logFile, MIGRATE_TIMEOUT_MS);
}

/**
 * Applies the D1 migrations to every shard of a persist dir (`migrate` names
 * the shards to migrate, for tests of a shard without its tables) and starts `wrangler dev` on a free
 * port in its own process group; resolves once GET /healthz answers 200.
 * `vars` override the worker's variables and the secrets of .dev.vars
 * (`wrangler dev --var NAME:VALUE`). `readyStatus`: the /healthz status that
 * means it is up (500 for a deployment that must refuse to serve).
 * `config`: another wrangler configuration file (default wrangler.toml).
 */
export async function startWorker({ persistTo, vars = {}, migrate = LEDGER_SHARDS, readyStatus = 200, config } = {}) {
  const dir = persistTo ?? tempDir();
  const [port, inspectorPort] = [await freePort(), await freePort()];
  const logFile = path.join(dir, `wrangler-dev-${port}.log`);
  // migrate: the shards to migrate (every shard by default); false or [] restarts
  // on a persist dir that is already migrated (saves the wrangler runs).
  const shards = migrate === true ? LEDGER_SHARDS : migrate || [];
  for (const shard of shards) await migrateShard(dir, shard, logFile);

  const out = fs.openSync(logFile, 'a');
  const child = spawn(
    path.join(BIN, 'wrangler'),
    [
      'dev',
      '--ip', '127.0.0.1',
      '--port', String(port),
      '--inspector-port', String(inspectorPort), // 9229 may be taken by `make dev`
      '--persist-to', dir,
      '--show-interactive-dev-session=false',
      ...(config ? ['--config', config] : []),
      ...Object.entries(vars).flatMap(([name, value]) => ['--var', `${name}:${value}`]),
    ],
    { cwd: ROOT, env: wranglerEnv(), stdio: ['ignore', out, out], detached: true },
  );
  fs.closeSync(out);
  const pgid = child.pid;
  liveGroups.add(pgid);
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = signal ?? code;
  });

  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      await signalAndWait(pgid, 'SIGKILL');
      throw new Error(`wrangler dev exited (${exited}) before becoming ready; log: ${logFile}`);
    }
    if (Date.now() > deadline) {
      await signalAndWait(pgid, 'SIGKILL');
      throw new Error(`wrangler dev not ready after ${READY_TIMEOUT_MS} ms; log: ${logFile}`);
    }
    try {
      const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === readyStatus) break;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }

  return {
    base,
    port,
    persistTo: dir,
    logFile,
    stop: () => signalAndWait(pgid, 'SIGTERM'),
    kill: () => signalAndWait(pgid, 'SIGKILL'),
  };
}

// ---------------------------------------------------------------------------
// JWTs

const b64url = (data) => Buffer.from(data).toString('base64url');

export function signJwt(header, payload, secret = DEV_SECRET) {
  const unsigned = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const signature = crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** An HS256 token as the dashboard and AI backends present it. */
export function token({ org, sub = 'user_e2e', role, exp = nowSecs() + 3600, secret = DEV_SECRET }) {
  return signJwt({ alg: 'HS256', typ: 'JWT' }, { sub, org, role, exp }, secret);
}

/** Tokens that must all be rejected with 401, keyed by what is wrong with them. */
export function badTokens({ org, role = 'service', sub = 'user_e2e' }) {
  const claims = { sub, org, role, exp: nowSecs() + 3600 };
  const good = token({ org, role, sub });
  const [h, p, s] = good.split('.');
  const { exp: _omit, ...noExp } = claims;
  const forged = { ...claims, org: `${org}x` }; // payload changed after signing
  return {
    'alg none, unsigned': `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${p}.`,
    'alg none, keeping the signature': `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${p}.${s}`,
    'wrong secret': token({ org, role, sub, secret: 'not-the-secret' }),
    'expired': token({ org, role, sub, exp: nowSecs() - 3600 }),
    'missing exp': signJwt({ alg: 'HS256', typ: 'JWT' }, noExp),
    'exp as a string': signJwt({ alg: 'HS256', typ: 'JWT' }, { ...claims, exp: String(claims.exp) }),
    'unknown role': token({ org, role: 'superuser', sub }),
    'missing org': signJwt({ alg: 'HS256', typ: 'JWT' }, { sub, role, exp: claims.exp }),
    'payload tampered': `${h}.${b64url(JSON.stringify(forged))}.${s}`,
    'signature garbled': `${h}.${p}.${s.slice(0, -4)}AAAA`,
    'garbage': 'not-a-jwt',
    'two segments': `${h}.${p}`,
    'HS512 header': signJwt({ alg: 'HS512', typ: 'JWT' }, claims),
  };
}

// ---------------------------------------------------------------------------
// Money: decimal strings compared exactly, in ten-thousandths of a credit.

export function units(amount) {
  assert.equal(typeof amount, 'string', `amount must be a decimal string, got ${JSON.stringify(amount)}`);
  const m = /^(\d+)(?:\.(\d{1,4}))?$/.exec(amount);
  assert.ok(m, `not a decimal amount: ${JSON.stringify(amount)}`);
  return BigInt(m[1]) * 10_000n + BigInt((m[2] ?? '').padEnd(4, '0'));
}

export function assertAmount(actual, expected, message) {
  assert.equal(units(actual), units(expected), message ?? `amount ${JSON.stringify(actual)} != ${expected}`);
}

export const sumUnits = (amounts) => amounts.reduce((acc, a) => acc + units(a), 0n);

// ---------------------------------------------------------------------------
// HTTP

export const randomId = (prefix) => `${prefix}${crypto.randomBytes(8).toString('hex')}`;

/**
 * Polls fn until it returns a truthy value without throwing; on timeout rethrows
 * the last assertion error, so a failure says what was still wrong.
 */
export async function waitFor(fn, timeoutMs = 5000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
      last = new Error(`waitFor: condition still false after ${timeoutMs} ms`);
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw last;
    await sleep(intervalMs);
  }
}

/** Runs fn over items with at most `limit` calls in flight. */
export async function mapLimit(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}

export const serviceToken = (org) => token({ org, role: 'service', sub: 'svc_ai_backend' });
export const ownerToken = (org) => token({ org, role: 'owner', sub: 'user_owner' });

const fill = (template, params) =>
  template.replace(/\{(\w+)\}/g, (_, name) => {
    assert.ok(params[name] !== undefined, `missing path parameter ${name}`);
    return encodeURIComponent(params[name]);
  });

export function api(base) {
  // Every "METHOD /template" called through `call`, so a test can check the
  // OpenAPI document describes each route the suite exercised.
  const routesCalled = new Set();

  async function req(method, pathAndQuery, { token: bearer, body, rawBody, headers = {}, now } = {}) {
    const h = { ...headers };
    if (bearer !== undefined) h.authorization = `Bearer ${bearer}`;
    if (now !== undefined) h['x-dev-now'] = now;
    let payload = rawBody;
    if (body !== undefined) {
      payload = JSON.stringify(body);
      h['content-type'] ??= 'application/json';
    }
    const res = await fetch(base + pathAndQuery, {
      method,
      headers: h,
      body: payload,
      duplex: payload && typeof payload.getReader === 'function' ? 'half' : undefined,
      signal: AbortSignal.timeout(30_000),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    // summary: what an assertion message needs to show when a status is unexpected.
    const summary = `${method} ${pathAndQuery} → ${res.status} ${text.slice(0, 1000)}`;
    return { status: res.status, headers: res.headers, json, text, summary };
  }

  function call(method, template, params, opts) {
    routesCalled.add(`${method} ${template}`);
    return req(method, fill(template, params), opts);
  }

  const withKey = (key, headers) => (key === null ? headers : { 'idempotency-key': key ?? randomId('key_'), ...headers });

  const client = {
    routesCalled,
    req,
    call,

    signup(org, { owner_id = 'user_owner', tok = serviceToken(org), body, now } = {}) {
      return call('POST', '/v1/orgs', {}, { token: tok, body: body ?? { org_id: org, owner_id }, now });
    },

    /** A fresh organization with its trial credit. */
    async newOrg() {
      const org = randomId('org_');
      const res = await client.signup(org);
      assert.equal(res.status, 201, res.summary);
      return org;
    },

    wallet(org, { tok = serviceToken(org), now } = {}) {
      return call('GET', '/v1/orgs/{org}/wallet', { org }, { token: tok, now });
    },

    async balance(org) {
      const res = await client.wallet(org);
      assert.equal(res.status, 200, res.summary);
      return res.json.balance;
    },

    setCap(org, dailyCap, { tok = ownerToken(org), now } = {}) {
      return call('PUT', '/v1/orgs/{org}/daily-cap', { org }, { token: tok, body: { daily_cap: dailyCap }, now });
    },

    /** key: the Idempotency-Key (random unless given; null sends none). */
    debit(org, amount, { key, feature = 'chat', user_id, project_id, now, tok = serviceToken(org), body, headers } = {}) {
      return call('POST', '/v1/orgs/{org}/debits', { org }, {
        token: tok,
        body: body ?? { feature, amount, user_id, project_id },
        headers: withKey(key, headers),
        now,
      });
    },

    hold(org, amount, { key, feature = 'chat', user_id, ttl_seconds, now, tok = serviceToken(org), body } = {}) {
      return call('POST', '/v1/orgs/{org}/holds', { org }, {
        token: tok,
        body: body ?? { feature, amount, user_id, ttl_seconds },
        headers: withKey(key),
        now,
      });
    },

    capture(org, id, amount, { now, tok = serviceToken(org), key, body } = {}) {
      return call('POST', '/v1/orgs/{org}/holds/{id}/capture', { org, id }, {
        token: tok,
        body: body ?? { amount },
        headers: withKey(key),
        now,
      });
    },

    release(org, id, { now, tok = serviceToken(org), key } = {}) {
      return call('POST', '/v1/orgs/{org}/holds/{id}/release', { org, id }, {
        token: tok,
        body: {},
        headers: withKey(key),
        now,
      });
    },

    ledgerPage(org, { limit, starting_after, tok = ownerToken(org) } = {}) {
      const query = new URLSearchParams();
      if (limit !== undefined) query.set('limit', String(limit));
      if (starting_after !== undefined) query.set('starting_after', starting_after);
      const qs = query.size ? `?${query}` : '';
      routesCalled.add('GET /v1/orgs/{org}/ledger');
      return req('GET', `${fill('/v1/orgs/{org}/ledger', { org })}${qs}`, { token: tok });
    },

    /** Every ledger entry, newest first, following the cursor page by page. */
    async ledger(org, { limit = 100 } = {}) {
      const entries = [];
      let cursor;
      for (let page = 0; page < 1000; page++) {
        const res = await client.ledgerPage(org, { limit, starting_after: cursor });
        assert.equal(res.status, 200, res.summary);
        entries.push(...res.json.data);
        if (!res.json.has_more) return entries;
        assert.ok(res.json.data.length > 0, 'has_more with an empty page');
        cursor = res.json.data.at(-1).id;
      }
      throw new Error('ledger pagination did not end');
    },
  };
  return client;
}

/** Asserts an error answer: status, stable code, and optional details. */
export function assertError(res, status, code, details = {}) {
  assert.equal(res.status, status, `expected ${status} ${code}: ${res.summary}`);
  assert.equal(res.json?.error?.code, code, `expected code ${code}: ${res.summary}`);
  assert.equal(typeof res.json.error.message, 'string', 'error.message is missing');
  for (const [key, value] of Object.entries(details)) {
    assert.deepEqual(res.json.error[key], value, `error.${key}: ${res.summary}`);
  }
}

export const WALLET_FIELDS = [
  'org_id', 'balance', 'held', 'available', 'daily_cap', 'daily_cap_default', 'daily_cap_max',
  'spent_today', 'held_today', 'cap_remaining', 'day', 'resets_at', 'status', 'resumes_at',
];

/**
 * SPEC §3 invariants, as far as one wallet snapshot shows them (for wallets
 * whose owner never lowered the cap below the day's use).
 */
export function assertWalletInvariants(w) {
  const [balance, held, available] = [units(w.balance), units(w.held), units(w.available)];
  const [cap, spent, heldToday] = [units(w.daily_cap), units(w.spent_today), units(w.held_today)];
  assert.ok(balance >= 0n && held >= 0n && available >= 0n, `negative money in ${JSON.stringify(w)}`);
  assert.equal(available, balance - held, `available != balance - held in ${JSON.stringify(w)}`);
  assert.ok(spent + heldToday <= cap, `spent_today + held_today > daily_cap in ${JSON.stringify(w)}`);
  assert.equal(units(w.cap_remaining), cap - spent - heldToday, `cap_remaining in ${JSON.stringify(w)}`);
}

/** The ISO date (YYYY-MM-DD) `days` days after today, UTC. */
export function futureDate(days) {
  return new Date(Date.now() + days * 86_400_000).toISOString().slice(0, 10);
}

export const addSeconds = (iso, seconds) => new Date(Date.parse(iso) + seconds * 1000).toISOString();

/** The organization's ledger once it holds `count` entries (for effects that arrive later, such as webhooks). */
export function ledgerOf(client, org, count) {
  return waitFor(async () => {
    const entries = await client.ledger(org);
    assert.equal(entries.length, count, `ledger: ${JSON.stringify(entries)}`);
    return entries;
  });
}

/** Each `balance_after` is the running sum of the ledger, which ends at `balance`. */
export function assertRunningBalance(entriesNewestFirst, balance) {
  let running = 0n;
  for (const entry of [...entriesNewestFirst].reverse()) {
    running += ['trial_grant', 'purchase'].includes(entry.kind) ? units(entry.amount) : -units(entry.amount);
    assert.equal(units(entry.balance_after), running, `balance_after of ${JSON.stringify(entry)}`);
  }
  assert.equal(running, units(balance), 'balance == sum of the ledger');
}

/**
 * Sends a body without Content-Length (chunked), `chunkBytes` at a time,
 * never ending the request until an answer arrives: a worker that buffered
 * the whole body first would never answer. Resolves with the answer and
 * how many bytes had been sent when it came. Through node:http, which keeps
 * an answer that arrives while the body is still being sent.
 */
export function sendChunked(base, path, { method = 'POST', headers = {}, chunk, maxBytes, end = false }) {
  return new Promise((resolve, reject) => {
    const url = new URL(path, base);
    let sent = 0;
    let answered = false;
    const req = http.request(url, { method, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      answered = true;
      const sentWhenAnswered = sent;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        req.destroy();
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        const summary = `${method} ${path} (chunked) → ${res.statusCode} ${text.slice(0, 1000)}`;
        resolve({ status: res.statusCode, headers: res.headers, json, text, summary, sentWhenAnswered });
      });
    });
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    assert.equal(req.getHeader('content-length'), undefined);
    (async () => {
      for (const piece of chunk) {
        if (answered) return;
        req.write(piece);
        sent += Buffer.byteLength(piece);
        await sleep(2);
      }
      if (end) {
        req.end();
        return;
      }
      // Over the limit: keep streaming filler until the answer, up to maxBytes.
      const filler = ' '.repeat(1024);
      while (!answered && sent < maxBytes) {
        req.write(filler);
        sent += filler.length;
        await sleep(5);
      }
      if (!answered) reject(new Error(`no answer after streaming ${sent} bytes without ending the request`));
    })().catch(reject);
    setTimeout(() => {
      if (!answered) {
        req.destroy();
        reject(new Error(`no answer within 30 s (${sent} bytes sent)`));
      }
    }, 30_000).unref();
  });
}
