// Stripe for the end-to-end tests: a localstripe per test file (a free port,
// its own process group, from scratch), the worker pointed at it with its
// webhooks registered, direct calls to localstripe, and webhook bodies signed
// exactly as Stripe signs them.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';
import { freePort, groupAlive, killGroup, randomId, startWorker, tempDir, waitFor } from './harness.mjs';
import { startRelay } from './relay.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
// scripts/setup.sh installs localstripe into the checkout's virtual environment.
const PYTHON = path.join(ROOT, '.venv/bin/python');

export const WEBHOOK_SECRET = 'whsec_local_dev';
const STRIPE_KEY = 'sk_test_e2e';
const READY_TIMEOUT_MS = 20_000;
const EXIT_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------
// localstripe processes

const stripeGroups = new Set();

async function stopGroup(pgid) {
  killGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + EXIT_TIMEOUT_MS;
  while (groupAlive(pgid)) {
    if (Date.now() > deadline) {
      killGroup(pgid, 'SIGKILL');
      break;
    }
    await sleep(50);
  }
  stripeGroups.delete(pgid);
}

process.on('exit', () => {
  for (const pgid of stripeGroups) killGroup(pgid, 'SIGKILL');
});
after(async () => {
  await Promise.all([...stripeGroups].map(stopGroup));
});

/** Starts localstripe on a free loopback port; resolves once it answers. */
export async function startLocalstripe() {
  assert.ok(fs.existsSync(PYTHON), `${PYTHON} is missing: run scripts/setup.sh`);
  const port = await freePort();
  const logFile = path.join(tempDir(), `localstripe-${port}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn(PYTHON, [path.join(ROOT, 'scripts/stripe-emulator.py'), '--port', String(port), '--from-scratch'], {
    cwd: ROOT,
    stdio: ['ignore', out, out],
    detached: true,
  });
  fs.closeSync(out);
  const pgid = child.pid;
  stripeGroups.add(pgid);
  let exited = null;
  child.once('exit', (code, signal) => {
    exited = signal ?? code;
  });
  const stripe = stripeClient(`http://127.0.0.1:${port}`);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) throw new Error(`localstripe exited (${exited}); log: ${logFile}`);
    if (Date.now() > deadline) {
      await stopGroup(pgid);
      throw new Error(`localstripe not ready after ${READY_TIMEOUT_MS} ms; log: ${logFile}`);
    }
    try {
      const res = await stripe.get('/v1/customers?limit=1');
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return { ...stripe, port, logFile, stop: () => stopGroup(pgid) };
}

/**
 * localstripe, then a worker whose Stripe is that localstripe and whose webhook
 * secrets are `webhookSecrets`; localstripe's own events go to the worker
 * signed with the first secret.
 *
 * `apiRelay`: the worker reaches localstripe's API through a relay the test
 * can switch off (`stack.apiRelay`), e.g. so that a purchase lookup cannot
 * refresh from Stripe. `webhooks`: `'direct'` (localstripe posts to the
 * worker), `'relay'` (through a recording relay, `stack.webhookRelay`, which
 * keeps the worker's answer to each delivery) or `'none'` (only the test's
 * own deliveries reach the worker).
 */
export async function startStack({ webhookSecrets = [WEBHOOK_SECRET], apiRelay = false, webhooks = 'direct', vars = {} } = {}) {
  const stripe = await startLocalstripe();
  // An API relay answers a resent request by its Idempotency-Key, as Stripe does.
  const stripeApi = apiRelay ? await startRelay(stripe.base, { idempotent: true }) : undefined;
  const workerVars = { STRIPE_API_BASE: (stripeApi ?? stripe).base, STRIPE_WEBHOOK_SECRETS: webhookSecrets.join(','), ...vars };
  const worker = await startWorker({ vars: workerVars });
  const webhookRelay = webhooks === 'relay' ? await startRelay(worker.base) : undefined;
  if (webhooks !== 'none') {
    const res = await stripe.post(`/_config/webhooks/${randomId('wh_')}`, {
      url: `${(webhookRelay ?? worker).base}/stripe/webhook`,
      secret: webhookSecrets[0],
    });
    assert.equal(res.status, 200, `webhook registration: ${res.text}`);
  }
  return {
    stripe,
    worker,
    /** What the worker was started with, to restart it on the same state. */
    workerVars,
    apiRelay: stripeApi,
    webhookRelay,
    /**
     * localstripe's own delivery of an event of `type` about a PaymentIntent
     * (by its id, or by the purchase id in its metadata), once the worker has
     * answered it; localstripe never retries, so the answer must be 200.
     * Only with `webhooks: 'relay'`.
     */
    async delivery(type, { intent, purchase }) {
      assert.ok(webhookRelay, "delivery() needs startStack({ webhooks: 'relay' })");
      const exchange = await waitFor(() => webhookRelay.exchanges.find((e) => {
        if (e.status === undefined) return false;
        let event;
        try {
          event = JSON.parse(e.requestBody);
        } catch {
          return false;
        }
        const object = event.data?.object ?? {};
        return event.type === type && (object.id === intent || (purchase !== undefined && object.metadata?.purchase_id === purchase));
      }), 10_000);
      assert.equal(exchange.status, 200, `the worker's answer to localstripe's ${type}: ${exchange.responseBody}`);
      assert.deepEqual(JSON.parse(exchange.responseBody), { received: true });
      return exchange;
    },
    stop: async () => {
      await webhookRelay?.stop();
      await worker.stop();
      await stripeApi?.stop();
      await stripe.stop();
    },
  };
}

// ---------------------------------------------------------------------------
// Talking to localstripe directly (as Stripe's dashboard or Stripe.js would)

function form(params, prefix = '', out = new URLSearchParams()) {
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined) continue;
    const name = prefix ? `${prefix}[${key}]` : key;
    if (value !== null && typeof value === 'object') form(value, name, out);
    else out.append(name, String(value));
  }
  return out;
}

export function stripeClient(base) {
  const auth = `Basic ${Buffer.from(`${STRIPE_KEY}:`).toString('base64')}`;
  async function call(method, pathAndQuery, params) {
    const res = await fetch(base + pathAndQuery, {
      method,
      headers: { authorization: auth, ...(params ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) },
      body: params ? form(params).toString() : undefined,
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text };
  }
  const client = {
    base,
    get: (p) => call('GET', p),
    post: (p, params = {}) => call('POST', p, params),

    /** A card payment method (not attached), e.g. 4000002500003155 for 3-D Secure. */
    async cardPaymentMethod(number) {
      const res = await client.post('/v1/payment_methods', {
        type: 'card',
        card: { number, exp_month: 12, exp_year: 2034, cvc: '123' },
      });
      assert.equal(res.status, 200, res.text);
      return res.json.id;
    },

    async paymentIntent(id) {
      const res = await client.get(`/v1/payment_intents/${id}`);
      assert.equal(res.status, 200, res.text);
      return res.json;
    },

    /** Every PaymentIntent whose metadata names `org`. */
    async paymentIntentsOf(org) {
      const found = [];
      let cursor;
      for (let page = 0; page < 100; page++) {
        const query = new URLSearchParams({ limit: '100' });
        if (cursor) query.set('starting_after', cursor);
        const res = await client.get(`/v1/payment_intents?${query}`);
        assert.equal(res.status, 200, res.text);
        found.push(...res.json.data.filter((pi) => pi.metadata?.org_id === org));
        if (!res.json.has_more) return found;
        cursor = res.json.data.at(-1).id;
      }
      throw new Error('PaymentIntent pagination did not end');
    },

    /** Completes (or fails) 3-D Secure for a PaymentIntent, as Stripe.js would. */
    authenticate(id, clientSecret, success = true) {
      return client.post(`/v1/payment_intents/${id}/_authenticate`, {
        client_secret: clientSecret,
        success: success ? 'true' : 'false',
      });
    },
  };
  return client;
}

// ---------------------------------------------------------------------------
// Webhooks, signed the way Stripe signs them

export const nowSeconds = () => Math.floor(Date.now() / 1000);

/** `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>`. */
export function v1Signature(payload, secret, timestamp = nowSeconds()) {
  return crypto.createHmac('sha256', secret).update(`${timestamp}.${payload}`).digest('hex');
}

export function signatureHeader(payload, secret = WEBHOOK_SECRET, timestamp = nowSeconds()) {
  return `t=${timestamp},v1=${v1Signature(payload, secret, timestamp)}`;
}

/** An event body as Stripe sends it. */
export function eventPayload(type, object, { id = randomId('evt_') } = {}) {
  return JSON.stringify({
    id,
    object: 'event',
    api_version: '2026-09-30.endive',
    created: nowSeconds(),
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
    data: { object },
  });
}

/** POSTs a raw body to the worker's webhook route. */
export async function deliver(base, payload, signature) {
  const headers = { 'content-type': 'application/json; charset=utf-8' };
  if (signature !== undefined) headers['stripe-signature'] = signature;
  const res = await fetch(`${base}/stripe/webhook`, {
    method: 'POST',
    headers,
    body: payload,
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

/**
 * The purchase id the worker derives from an organization and Idempotency-Key
 * (ARCHITECTURE.md, "A purchase, step by step"): "pur_" + the first 24 hex digits of
 * SHA-256("ai-wallet purchase\0" + org + "\0" + key + "\0").
 */
export function purchaseIdFor(org, key) {
  const hash = crypto.createHash('sha256');
  for (const part of ['ai-wallet purchase', org, key]) hash.update(part).update('\0');
  return `pur_${hash.digest('hex').slice(0, 24)}`;
}
