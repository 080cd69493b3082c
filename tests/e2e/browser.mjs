// The dashboard's browser tests share this: Debian's Chromium driven by
// playwright-core (it cannot download browsers here), a page that records
// every problem it sees, the development sign-in, and screenshots into
// tests/artifacts/ (gitignored) for people to look at.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ARTIFACTS = path.join(ROOT, 'tests/artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// Not UTC, so the local times shown must differ from the UTC times the API sends.
export const TIME_ZONE = 'Asia/Tokyo';

/** A fresh browser profile; `close()` ends it and removes the profile. */
export async function launchBrowser() {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/setup.sh (apt-get install chromium)`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ai-wallet-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timezoneId: TIME_ZONE,
    locale: 'en-US',
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
  });
  context.setDefaultTimeout(15_000);
  return {
    context,
    async close() {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** A new tab that records page errors, console errors (CSP included) and refused requests. */
export async function openPage(context, { width = 1280, height = 900 } = {}) {
  const page = await context.newPage();
  await page.setViewportSize({ width, height });
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    // Refused requests are reported as responses below.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) page.problems.push(`console: ${msg.text()}`);
  });
  page.on('response', (res) => {
    const url = new URL(res.url());
    // A worker without Stripe: packs and the payment method may be unavailable.
    const optional = ['/v1/packs', '/payment-method'].some((p) => url.pathname.endsWith(p)) && res.status() === 404;
    if (res.status() >= 400 && !optional) page.problems.push(`${res.status()} ${url.pathname}`);
  });
  return page;
}

export function assertNoProblems(page, allowed = []) {
  const problems = page.problems.filter((p) => !allowed.some((a) => p.includes(a)));
  assert.deepEqual(problems, [], 'the page reported problems');
}

/** Signs in with the development form and waits for the wallet. */
export async function signIn(page, base, { org, sub, role, tab = 'wallet' }) {
  await page.goto(`${base}/#${tab}`);
  await page.getByLabel('Organization id').fill(org);
  await page.getByLabel('User id').fill(sub);
  await page.getByLabel('Role').selectOption(role);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#app').waitFor({ state: 'visible' });
  // The wallet loads on every tab (its banner shows everywhere).
  await page.locator('#balance').filter({ hasNotText: '–' }).waitFor({ state: 'attached' });
}

export const shot = (page, name, { fullPage = true } = {}) =>
  page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage });
