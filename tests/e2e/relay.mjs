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

/**
 * Starts a relay on a free loopback port forwarding to `target` (a base URL).
 * While off it answers 503 with `Stripe-Should-Retry: false` (what a client of
 * Stripe treats as "unavailable, do not retry"), without forwarding.
 */
export async function startRelay(target) {
  const port = await freePort();
  // {at, method, path, requestBody, forwarded, status, responseBody}, recorded as
  // each request arrives; status is set once the answer is known.
  const exchanges = [];
  let online = true;
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const requestBody = Buffer.concat(chunks);
    const exchange = { at: Date.now(), method: req.method, path: req.url, requestBody: requestBody.toString(), forwarded: online };
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
    try {
      const answer = await fetch(new URL(req.url, target), {
        method: req.method,
        headers,
        body: ['GET', 'HEAD'].includes(req.method) ? undefined : requestBody,
        signal: AbortSignal.timeout(30_000),
      });
      const body = Buffer.from(await answer.arrayBuffer());
      exchange.status = answer.status;
      exchange.responseBody = body.toString();
      const out = {};
      answer.headers.forEach((value, name) => {
        if (!['content-length', 'content-encoding', 'transfer-encoding', 'connection'].includes(name)) out[name] = value;
      });
      res.writeHead(answer.status, out);
      res.end(body);
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
    stop: () => {
      relays.delete(relay);
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  relays.add(relay);
  return relay;
}
