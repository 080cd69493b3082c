// A local receiver of the wallet's outbound events, as an operator would run
// one: it checks every request's Wallet-Signature (HMAC-SHA256 of
// "<t>.<body>" under the signing secret, Stripe's scheme), records what came
// and what it answered, and answers 500 to the first attempts of each event
// when told to, so a test sees the retries.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after } from 'node:test';
import { freePort } from './harness.mjs';

export const EVENTS_SECRET = 'whsec_events_e2e_0123456789';

const receivers = new Set();
after(async () => {
  await Promise.all([...receivers].map((r) => r.stop()));
});

/** Whether `header` signs `body` under `secret` within `toleranceSeconds`. */
export function verifySignature(header, body, secret = EVENTS_SECRET, toleranceSeconds = 300) {
  const parts = Object.fromEntries(String(header ?? '').split(',').map((p) => p.split('=', 2)));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || Math.abs(Date.now() / 1000 - t) > toleranceSeconds || !parts.v1) return false;
  const expected = crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  return parts.v1.length === expected.length && crypto.timingSafeEqual(Buffer.from(parts.v1), Buffer.from(expected));
}

/**
 * Starts a receiver on a free loopback port. `failFirst`: how many attempts
 * of each event id are answered 500 before one is answered 200.
 */
export async function startEventReceiver({ secret = EVENTS_SECRET, failFirst = 0 } = {}) {
  const port = await freePort();
  const requests = []; // {at, signed, event, status}
  const attemptsById = new Map();
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    const signed = verifySignature(req.headers['wallet-signature'], body, secret);
    let event;
    try {
      event = JSON.parse(body);
    } catch {
      event = undefined;
    }
    const attempt = (attemptsById.get(event?.id) ?? 0) + 1;
    attemptsById.set(event?.id, attempt);
    const status = !signed || event === undefined ? 400 : attempt <= failFirst ? 500 : 200;
    requests.push({ at: Date.now(), method: req.method, signed, event, status, attempt });
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status }));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const receiver = {
    url: `http://127.0.0.1:${port}/wallet-events`,
    requests,
    /** Events of `org` accepted (answered 200), in the order first accepted, once each. */
    accepted(org) {
      const seen = new Set();
      const out = [];
      for (const r of requests) {
        if (r.status !== 200 || r.event.org_id !== org || seen.has(r.event.id)) continue;
        seen.add(r.event.id);
        out.push(r.event);
      }
      return out;
    },
    /** Events of `org` in the order first received (any answer), once each. */
    firstSeen(org) {
      const seen = new Set();
      return requests.filter((r) => r.event?.org_id === org && !seen.has(r.event.id) && seen.add(r.event.id)).map((r) => r.event);
    },
    attemptsOf: (id) => attemptsById.get(id) ?? 0,
    assertAllSigned() {
      const bad = requests.filter((r) => !r.signed);
      assert.equal(bad.length, 0, `unsigned or badly signed deliveries: ${JSON.stringify(bad.slice(0, 3))}`);
    },
    stop: () => {
      receivers.delete(receiver);
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  receivers.add(receiver);
  return receiver;
}
