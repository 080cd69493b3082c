// The dashboard's security headers are real HTTP headers (SPEC §6): a CSP with
// frame-ancestors 'none' (a <meta> CSP cannot carry it), X-Frame-Options DENY
// and a Referrer-Policy, from public/_headers; nosniff on every answer, files
// and API alike. In Debian's Chromium, a page on another origin that frames
// the dashboard gets an empty, blocked frame, while a frame of a page without
// those headers loads, so the framing page itself works.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { api, freePort, randomId, serviceToken, startWorker, waitFor } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// The policy of the former <meta> tag, plus frame-ancestors 'none'.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
  + "connect-src 'self'; base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'";

let worker;
let w;
let org;
let framer; // another origin (another port) whose page frames the dashboard
let framerBase;
let context;
let userDataDir;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/setup.sh (apt-get install chromium)`);
  worker = await startWorker();
  w = api(worker.base);
  org = await w.newOrg();
  const port = await freePort();
  framerBase = `http://127.0.0.1:${port}`;
  framer = http.createServer((req, res) => {
    if (req.url === '/control') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>control</title><p id="control">control frame loaded</p>');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><title>framer</title>
      <iframe id="dashboard" name="dashboard" src="${worker.base}/" width="800" height="600"></iframe>
      <iframe id="control" name="control" src="${framerBase}/control" width="200" height="100"></iframe>`);
  });
  await new Promise((resolve) => framer.listen(port, '127.0.0.1', resolve));
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ai-wallet-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  context.setDefaultTimeout(15_000);
}, { timeout: 180_000 });

after(async () => {
  await context?.close();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  await new Promise((resolve) => (framer ? framer.close(resolve) : resolve()));
  await worker?.stop();
});

async function headersOf(pathAndQuery, init = {}) {
  const res = await fetch(worker.base + pathAndQuery, { ...init, signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return res;
}

describe('headers', () => {
  test('the dashboard page: CSP with frame-ancestors none, X-Frame-Options, Referrer-Policy, nosniff', async () => {
    for (const page of ['/', '/index.html']) {
      const res = await headersOf(page);
      assert.equal(res.status, 200, page);
      assert.match(res.headers.get('content-type'), /^text\/html/);
      assert.equal(res.headers.get('content-security-policy'), CSP, page);
      assert.equal(res.headers.get('x-frame-options'), 'DENY', page);
      assert.equal(res.headers.get('referrer-policy'), 'no-referrer', page);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', page);
    }
  });

  test('static assets carry them too, and public/_headers itself is not served', async () => {
    for (const asset of ['/app.js', '/styles.css', '/vendor/chart.umd.min.js']) {
      const res = await headersOf(asset);
      assert.equal(res.status, 200, asset);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', asset);
      assert.equal(res.headers.get('x-frame-options'), 'DENY', asset);
      assert.equal(res.headers.get('content-security-policy'), CSP, asset);
    }
    const file = await headersOf('/_headers');
    assert.equal(file.status, 404);
  });

  test('API answers, successes and errors, carry nosniff and are JSON', async () => {
    const answers = {
      'GET /healthz': await headersOf('/healthz'),
      'GET /openapi.json': await headersOf('/openapi.json'),
      'GET wallet (200)': await headersOf(`/v1/orgs/${org}/wallet`, { headers: { authorization: `Bearer ${serviceToken(org)}` } }),
      'GET wallet (401)': await headersOf(`/v1/orgs/${org}/wallet`),
      'GET wallet of no organization (404)': await headersOf(`/v1/orgs/${randomId('org_')}/wallet`, { headers: { authorization: `Bearer ${serviceToken('x')}` } }),
      'DELETE wallet (405)': await headersOf(`/v1/orgs/${org}/wallet`, { method: 'DELETE' }),
      'GET an unknown path (404)': await headersOf('/no/such/page'),
    };
    assert.deepEqual(Object.values(answers).map((r) => r.status), [200, 200, 200, 401, 403, 405, 404]);
    for (const [name, res] of Object.entries(answers)) {
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', name);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/, name);
    }
  });
});

describe('in a browser', () => {
  test('the dashboard loads on its own with the header CSP and no violation', async () => {
    const page = await context.newPage();
    const problems = [];
    page.on('console', (msg) => {
      if (msg.type() === 'error') problems.push(msg.text());
    });
    page.on('pageerror', (err) => problems.push(err.message));
    await page.goto(`${worker.base}/`);
    await page.locator('#login').waitFor({ state: 'visible' }); // the app ran: its script was allowed
    assert.equal(await page.locator('#boot').isHidden(), true);
    assert.deepEqual(problems.filter((p) => /Content Security Policy|Refused/.test(p)), []);
    await page.close();
  });

  test('framed by another origin, the dashboard stays empty; a frame without the headers loads', async () => {
    const page = await context.newPage();
    const messages = [];
    page.on('console', (msg) => messages.push(msg.text()));
    await page.goto(`${framerBase}/`);
    const control = page.frame({ name: 'control' });
    await waitFor(async () => (await control.locator('#control').textContent()) === 'control frame loaded', 10_000);

    // Give the dashboard frame time to load, as the control frame did.
    await page.waitForLoadState('load');
    const dashboard = page.frame({ name: 'dashboard' });
    assert.ok(dashboard, 'the dashboard frame exists');
    await waitFor(() => messages.some((m) => m.includes("frame-ancestors 'none'")), 10_000)
      .catch(() => assert.fail(`no frame-ancestors refusal in the console: ${JSON.stringify(messages)}`));
    // Blocked: the frame holds Chromium's error page, not the dashboard.
    assert.notEqual(dashboard.url(), `${worker.base}/`, `the frame navigated to ${dashboard.url()}`);
    const rendered = await dashboard.evaluate(() => ({
      login: document.querySelector('#login') !== null,
      title: document.title,
    })).catch(() => ({ login: false, title: '' }));
    assert.equal(rendered.login, false, 'the dashboard rendered inside the frame');
    assert.notEqual(rendered.title, 'Billing · Wallet');
    await page.close();
  });
});
