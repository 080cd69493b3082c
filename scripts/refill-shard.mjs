#!/usr/bin/env node
// Refills a D1 ledger shard that was restored from a backup or emptied: asks
// each listed organization's Durable Object (the system of record) to read
// the shard's own watermark at once and send it whatever it lacks
// (`POST /v1/orgs/{org}/ledger/refill` with a service token per organization).
//
//   AUTH_JWT_SECRET=… node scripts/refill-shard.mjs --base https://wallet.example.com orgs.txt
//
// orgs.txt lists organization ids, one per line (`-` reads standard input):
// the organizations of the shard, e.g. from the signup system, or
// `SELECT org_id FROM replica_progress` on the shard's last good backup.
// Organizations on other shards may be listed too: each refills its own.
// Prints progress; exits 1 if any organization could not be scheduled.
import crypto from 'node:crypto';
import fs from 'node:fs';

const CONCURRENCY = 8;
const ATTEMPTS = 4;
const TOKEN_TTL_SECONDS = 600;

function usage(problem) {
  console.error(`refill-shard: ${problem}\nusage: AUTH_JWT_SECRET=… node scripts/refill-shard.mjs --base URL ORGS_FILE|-`);
  process.exit(2);
}

const args = process.argv.slice(2);
let base;
let file;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--base') base = args[++i];
  else if (file === undefined) file = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
const secret = process.env.AUTH_JWT_SECRET;
if (!base || !file) usage('--base and an organizations file are required');
if (!secret) usage('AUTH_JWT_SECRET must be set (the Worker\'s token secret)');

const ORG_ID = /^[A-Za-z0-9_-]{1,64}$/;
const lines = fs.readFileSync(file === '-' ? 0 : file, 'utf8').split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
const bad = lines.filter((l) => !ORG_ID.test(l));
if (bad.length) usage(`not organization ids: ${bad.slice(0, 5).join(', ')}`);
const orgs = [...new Set(lines)];

const b64url = (data) => Buffer.from(data).toString('base64url');
function serviceToken(org) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS;
  const payload = b64url(JSON.stringify({ sub: 'refill-shard', org, role: 'service', exp }));
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

async function refill(org) {
  let last = '';
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    try {
      const res = await fetch(`${base.replace(/\/$/, '')}/v1/orgs/${org}/ledger/refill`, {
        method: 'POST',
        headers: { authorization: `Bearer ${serviceToken(org)}` },
        signal: AbortSignal.timeout(15_000),
      });
      const text = await res.text();
      if (res.status === 202) return { org, ok: true, shard: JSON.parse(text).ledger_shard };
      last = `${res.status} ${text.slice(0, 200)}`;
      if (res.status < 500) break; // refused for good (unknown organization, bad secret)
    } catch (err) {
      last = err.message;
    }
    await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
  }
  return { org, ok: false, problem: last };
}

const results = [];
let next = 0;
await Promise.all(Array.from({ length: Math.min(CONCURRENCY, orgs.length) }, async () => {
  while (next < orgs.length) {
    const org = orgs[next++];
    const result = await refill(org);
    results.push(result);
    if (!result.ok) console.error(`  ${org}: ${result.problem}`);
    if (results.length % 100 === 0 || results.length === orgs.length) {
      console.log(`refill-shard: ${results.length}/${orgs.length} organizations asked`);
    }
  }
}));
const byShard = {};
for (const r of results.filter((x) => x.ok)) byShard[r.shard] = (byShard[r.shard] ?? 0) + 1;
const failed = results.filter((r) => !r.ok).length;
console.log(`refill-shard: scheduled ${results.length - failed} (${Object.entries(byShard).map(([s, n]) => `${s}: ${n}`).join(', ') || 'none'}), failed ${failed}`);
process.exit(failed ? 1 : 0);
