#!/usr/bin/env node
// Verifies one organization's ledger archive end to end (SPEC §11): lists its
// segments through the API (`GET /v1/orgs/{org}/ledger/segments`), reads each
// segment's object from the R2 bucket (`wrangler r2 object get`: the local
// bucket of a `wrangler dev` state directory, or the real one with --remote),
// and checks
//   - each object's length and SHA-256 against its checkpoint;
//   - its entries: count, first and last seq, every one's balance_after the
//     previous one's plus its effect (credits in, credits out), the sums of
//     credits added and removed, and the balance at its end;
//   - the chain across segments, from zero at the first entry, into the live
//     entries (the ledger pages after the last segment) up to the newest.
// Exits 0 when everything holds, 1 on any gap or mismatch, 2 on bad usage.
//
//   AUTH_JWT_SECRET=… node scripts/verify-archive.mjs ORG \
//     [--base http://127.0.0.1:8787] [--persist-to .wrangler/state | --remote [--env production]]
//
// Without AUTH_JWT_SECRET the development secret of .dev.vars is used.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const BUCKET = 'ai-wallet-ledger-archive';
const CREDIT_KINDS = new Set(['trial_grant', 'purchase', 'dispute_reinstatement']);
const TOKEN_TTL_SECONDS = 600;

function usage(problem) {
  console.error(`verify-archive: ${problem}\nusage: node scripts/verify-archive.mjs ORG [--base URL] [--persist-to DIR | --remote [--env ENV]]`);
  process.exit(2);
}

const args = process.argv.slice(2);
const opts = { base: 'http://127.0.0.1:8787', persistTo: undefined, remote: false, env: undefined };
let org;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--base') opts.base = args[++i];
  else if (args[i] === '--persist-to') opts.persistTo = args[++i];
  else if (args[i] === '--remote') opts.remote = true;
  else if (args[i] === '--env') opts.env = args[++i];
  else if (org === undefined) org = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (!org || !/^[A-Za-z0-9_-]{1,64}$/.test(org)) usage('an organization id is required');

function devSecret() {
  const file = path.join(ROOT, '.dev.vars');
  const line = fs.existsSync(file) && fs.readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith('AUTH_JWT_SECRET='));
  return line ? line.slice('AUTH_JWT_SECRET='.length).trim().replace(/^"|"$/g, '') : undefined;
}
const secret = process.env.AUTH_JWT_SECRET ?? devSecret();
if (!secret) usage('AUTH_JWT_SECRET must be set (the Worker\'s token secret)');

const b64url = (data) => Buffer.from(data).toString('base64url');
function adminToken() {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS;
  const payload = b64url(JSON.stringify({ sub: 'verify-archive', org, role: 'admin', exp }));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

async function get(pathAndQuery) {
  let res;
  // A dropped connection is tried again; an answer is final.
  for (let attempt = 1; !res; attempt++) {
    try {
      res = await fetch(`${opts.base.replace(/\/$/, '')}${pathAndQuery}`, {
        headers: { authorization: `Bearer ${adminToken()}` },
        signal: AbortSignal.timeout(60_000),
      });
    } catch (err) {
      if (attempt >= 4) throw err;
      await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
    }
  }
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${pathAndQuery} answered ${res.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** Every item of a cursor-paged list. */
async function all(route, idOf = (item) => item.id) {
  const items = [];
  let cursor;
  for (;;) {
    const qs = new URLSearchParams({ limit: '100', ...(cursor ? { starting_after: cursor } : {}) });
    const page = await get(`/v1/orgs/${org}/${route}?${qs}`);
    const data = page.data ?? page.entries;
    items.push(...data);
    if (!page.has_more || data.length === 0) return items;
    cursor = idOf(data.at(-1));
  }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'verify-archive-'));
function readObject(key) {
  const file = path.join(tmp, 'segment');
  const where = opts.remote ? ['--remote'] : ['--local', ...(opts.persistTo ? ['--persist-to', opts.persistTo] : [])];
  execFileSync(path.join(ROOT, 'node_modules/.bin/wrangler'), [
    'r2', 'object', 'get', `${BUCKET}/${key}`, '--file', file, ...where, ...(opts.env ? ['--env', opts.env] : []),
  ], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PATH: `${path.join(ROOT, 'node_modules/.bin')}${path.delimiter}${process.env.PATH}`, WRANGLER_SEND_METRICS: 'false' },
  });
  const bytes = fs.readFileSync(file);
  fs.rmSync(file);
  return bytes;
}

/** Credits as decimal strings ↔ units (1/10,000 credit), exactly. */
function units(amount) {
  const [whole, frac = ''] = String(amount).split('.');
  return BigInt(whole) * 10_000n + BigInt(frac.padEnd(4, '0'));
}

const problems = [];
let running = 0n; // the balance the chain has reached
let lastSeq = 0;
let checked = 0;

/** Follows the chain through one entry. */
function step(entry, where) {
  const amount = units(entry.amount);
  running += CREDIT_KINDS.has(entry.kind) ? amount : -amount;
  if (entry.seq <= lastSeq) problems.push(`${where}: entry ${entry.seq} is not after ${lastSeq}`);
  if (units(entry.balance_after) !== running) {
    problems.push(`${where}: entry ${entry.seq} says balance_after ${entry.balance_after}, the chain says ${running}`);
    running = units(entry.balance_after); // report each gap once
  }
  lastSeq = entry.seq;
  checked++;
}

function checkSegment(segment) {
  const where = `segment ${segment.first_seq}-${segment.last_seq}`;
  let bytes;
  try {
    bytes = readObject(segment.key);
  } catch (err) {
    problems.push(`${where}: its object ${segment.key} could not be read: ${String(err.stderr ?? err.message).trim().slice(0, 300)}`);
    return;
  }
  const sha = crypto.createHash('sha256').update(bytes).digest('hex');
  if (bytes.length !== segment.bytes || sha !== segment.sha256) {
    problems.push(`${where}: object is ${bytes.length} bytes with SHA-256 ${sha}, its checkpoint says ${segment.bytes} bytes, ${segment.sha256}`);
    return;
  }
  const lines = zlib.gunzipSync(bytes).toString('utf8').split('\n');
  if (lines.pop() !== '') problems.push(`${where}: does not end with a newline`);
  const entries = lines.map((l) => JSON.parse(l));
  let sums = [0n, 0n]; // credits added, removed
  for (const e of entries) {
    // Stored rows carry minor units as integers.
    step({ ...e, amount: fromUnits(e.amount), balance_after: fromUnits(e.balance_after) }, where);
    sums = CREDIT_KINDS.has(e.kind) ? [sums[0] + BigInt(e.amount), sums[1]] : [sums[0], sums[1] + BigInt(e.amount)];
  }
  const expect = [
    ['entries', entries.length, segment.entries],
    ['first seq', entries[0]?.seq, segment.first_seq],
    ['last seq', entries.at(-1)?.seq, segment.last_seq],
    ['credits added', sums[0], units(segment.credits_added)],
    ['credits removed', sums[1], units(segment.credits_removed)],
    ['balance after', running, units(segment.balance_after)],
  ];
  for (const [what, actual, wanted] of expect) {
    if (actual !== wanted) problems.push(`${where}: ${what} is ${actual}, its checkpoint says ${wanted}`);
  }
}

function fromUnits(u) {
  const v = BigInt(u);
  const sign = v < 0n ? '-' : '';
  const abs = v < 0n ? -v : v;
  return `${sign}${abs / 10_000n}.${String(abs % 10_000n).padStart(4, '0')}`;
}

try {
  const segments = await all('ledger/segments');
  for (const segment of segments) checkSegment(segment);
  const archivedThrough = segments.at(-1)?.last_seq ?? 0;
  // The live entries, oldest first, after the last segment.
  const live = (await all('ledger')).filter((e) => Number(e.id.slice(3)) > archivedThrough).reverse();
  for (const e of live) step({ ...e, seq: Number(e.id.slice(3)) }, 'live entries');
  console.log(`${org}: ${segments.length} segments, ${checked} entries checked (${live.length} live)`);
} catch (err) {
  problems.push(`${err.message}${err.cause ? ` (${err.cause.message ?? err.cause})` : ''}`);
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
if (problems.length) {
  for (const p of problems) console.error(`verify-archive: ${p}`);
  process.exit(1);
}
console.log(`${org}: the archive and the ledger agree end to end`);
