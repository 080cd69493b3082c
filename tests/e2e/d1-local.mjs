// Writes rows straight into a local D1 database (`wrangler d1 execute
// --local --persist-to DIR --file …`), for histories too long or too early to
// build through the API: a long purchase history, a million debits.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'node_modules/.bin');

/**
 * The shard a new organization is assigned to under the local configuration
 * (`LEDGER_SHARDS = "DB,DB_1"`, all open): FNV-1a (64-bit) of its id modulo
 * the shard count, as `WalletConfig::shard_for_new_org` (whose unit test pins it).
 */
export function shardOf(org, shards = ['DB', 'DB_1']) {
  let hash = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(org, 'utf8')) {
    hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return shards[Number(hash % BigInt(shards.length))];
}

/** Runs the SQL text against the local D1 under `persistTo`; rejects on failure or timeout. */
export function d1Execute(persistTo, sql, { timeoutMs = 600_000, shard = 'DB' } = {}) {
  const file = path.join(persistTo, `d1-${crypto.randomBytes(6).toString('hex')}.sql`);
  fs.writeFileSync(file, sql);
  const log = `${file}.log`;
  return new Promise((resolve, reject) => {
    const out = fs.openSync(log, 'w');
    const child = spawn(
      path.join(BIN, 'wrangler'),
      ['d1', 'execute', shard, '--local', '--persist-to', persistTo, '--file', file],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ''}`,
          WRANGLER_SEND_METRICS: 'false',
          CLOUDFLARE_CF_FETCH_ENABLED: 'false',
        },
        stdio: ['ignore', out, out],
        detached: true, // its own process group, killed whole on timeout
      },
    );
    fs.closeSync(out);
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) {
        fs.rmSync(file, { force: true });
        resolve();
      } else {
        reject(new Error(`wrangler d1 execute failed (${signal ?? code}); see ${log}`));
      }
    });
  });
}

/** Runs one query against a local shard; resolves to its result rows. */
export async function d1Query(persistTo, sql, { shard = 'DB', timeoutMs = 120_000 } = {}) {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    execFile(
      path.join(BIN, 'wrangler'),
      ['d1', 'execute', shard, '--local', '--persist-to', persistTo, '--json', '--command', sql],
      {
        cwd: ROOT,
        timeout: timeoutMs,
        maxBuffer: 64 * 1024 * 1024,
        env: {
          ...process.env,
          PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ''}`,
          WRANGLER_SEND_METRICS: 'false',
          CLOUDFLARE_CF_FETCH_ENABLED: 'false',
        },
      },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`wrangler d1 execute ${shard} failed: ${err.message}\n${stderr}`));
        try {
          const parsed = JSON.parse(stdout);
          resolve(parsed.flatMap((r) => r.results ?? []));
        } catch (parseErr) {
          reject(new Error(`unreadable wrangler output (${parseErr.message}): ${stdout.slice(0, 500)}`));
        }
      },
    );
  });
}

/** A SQL string literal. */
export const sqlText = (value) => (value === null || value === undefined ? 'NULL' : `'${String(value).replaceAll("'", "''")}'`);
