// An HTTP relay a test puts between two parties (the worker and localstripe's
// API, or localstripe's webhook deliveries and the worker): it forwards each
// request unchanged, records every exchange with the status the other side
// answered, and can be switched off, so that a test decides when one side can
// reach the other and sees what went through.
import http from 'node:http';
import { after } from 'node:test';
import { freePort } from './harness.mjs';

const relays = new Set();
after(async () => {
  await Promise.all([...relays].map((relay) => relay.stop()));
});

/** A form body's parameters in a canonical order (Stripe compares parameters, not bytes). */
function sameParameters(body) {
  return [...new URLSearchParams(body)].map(([name, value]) => `${name}=${value}`).sort().join('&');
}

/**
 * Starts a relay on a free loopback port forwarding to `target` (a base URL).
 * While off it answers 503 with `Stripe-Should-Retry: false` (what a client of
 * Stripe treats as "unavailable, do not retry"), without forwarding.
 */
export async function startRelay(target, { idempotent = false } = {}) {
  const port = await freePort();
  // idempotent: answers a POST whose Idempotency-Key it has forwarded before
  // with the first answer, without forwarding it again, as Stripe's API does
  // (localstripe does not), so a test can show a resent charge is one charge;
  // and, as Stripe does, refuses the key with other parameters (400
  // idempotency_error), so a resend that changed them is seen.
  const firstAnswers = new Map(); // key → {params, answer: Promise<{status, headers, body}>}
  // A request matching `withheld` is forwarded but never answered: what the
  // caller sees when the answer is lost (say, the caller's runtime dies).
  let withheld = null;
  // {at, method, path, headers, requestBody, forwarded, status, responseBody}, recorded as
  // each request arrives; status is set once the answer is known.
  const exchanges = [];
  let online = true;
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const requestBody = Buffer.concat(chunks);
    const exchange = { at: Date.now(), method: req.method, path: req.url, headers: req.headers, requestBody: requestBody.toString(), forwarded: online };
    exchanges.push(exchange);
    if (!online) {
      exchange.status = 503;
      res.writeHead(503, { 'content-type': 'application/json', 'stripe-should-retry': 'false' });
      res.end(JSON.stringify({ error: { type: 'api_error', message: 'switched off by the test' } }));
      return;
    }
    const headers = { ...req.headers };
    // Hop-by-hop headers belong to this connection, not to the next one.
    for (const name of ['host', 'content-length', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'expect', 'te']) {
      delete headers[name];
    }
    const forward = async () => {
      const answer = await fetch(new URL(req.url, target), {
        method: req.method,
        headers,
        body: ['GET', 'HEAD'].includes(req.method) ? undefined : requestBody,
        signal: AbortSignal.timeout(30_000),
      });
      const body = Buffer.from(await answer.arrayBuffer());
      const out = {};
      answer.headers.forEach((value, name) => {
        if (!['content-length', 'content-encoding', 'transfer-encoding', 'connection'].includes(name)) out[name] = value;
      });
      return { status: answer.status, headers: out, body };
    };
    try {
      const key = req.headers['idempotency-key'];
      let answer;
      if (idempotent && req.method === 'POST' && key !== undefined) {
        const params = sameParameters(exchange.requestBody);
        const first = firstAnswers.get(key);
        exchange.replayed = first !== undefined;
        if (first === undefined) {
          firstAnswers.set(key, { params, answer: forward() });
        } else if (first.params !== params) {
          exchange.status = 400;
          exchange.idempotencyError = true;
          exchange.responseBody = JSON.stringify({
            error: {
              type: 'idempotency_error',
              message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
            },
          });
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(exchange.responseBody);
          return;
        }
        answer = await firstAnswers.get(key).answer;
      } else {
        answer = await forward();
      }
      if (withheld?.(exchange)) {
        exchange.withheld = true;
        return; // the connection stays open and unanswered
      }
      exchange.status = answer.status;
      exchange.responseBody = answer.body.toString();
      res.writeHead(answer.status, answer.headers);
      res.end(answer.body);
    } catch (err) {
      exchange.status = 502;
      exchange.error = String(err);
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`relay: ${err}`);
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const relay = {
    base: `http://127.0.0.1:${port}`,
    exchanges,
    get online() {
      return online;
    },
    setOnline(value) {
      online = value;
    },
    /** Forwards but never answers requests for which `predicate(exchange)` holds (null: answer all). */
    withhold(predicate) {
      withheld = predicate;
    },
    stop: () => {
      relays.delete(relay);
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  relays.add(relay);
  return relay;
}
