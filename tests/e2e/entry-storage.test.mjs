// Storage version 6 (SPEC §11, compact entries) moves every stored entry out
// of its JSON text into columns. This runs that migration's SQL, as the
// Durable Object runs it, on SQLite (node:sqlite) over entries in the
// earlier JSON form, and checks every field lands in its column, what is
// derived is not stored, and nothing else changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { DatabaseSync } from 'node:sqlite';

const rustString = (file, name) => {
  const source = fs.readFileSync(new URL(`../../src/${file}`, import.meta.url), 'utf8');
  const start = source.indexOf(`const ${name}: &str = "`);
  assert.ok(start >= 0, `${name} in ${file}`);
  const body = source.slice(start + `const ${name}: &str = "`.length);
  return body.slice(0, body.indexOf('";'));
};
const SCHEMA_V1 = rustString('wallet_store.rs', 'SCHEMA_V1');
const MIGRATION = rustString('wallet_store/entries.rs', 'MIGRATION_COMPACT_ENTRIES');

const at = (iso) => Date.parse(iso);
const id = (seq) => `le_${String(seq).padStart(12, '0')}`;

/** Entries as release 5 stored them (ledger::EntryRow's JSON). */
function legacyEntries() {
  const base = (seq, kind, atIso, more = {}) => ({
    seq, id: id(seq), kind, amount: 10_000, balance_after: 1_000_000 - seq, created_at_ms: at(atIso),
    usage_day: atIso.slice(0, 10), feature: null, user_id: null, project_id: null, hold_id: null, pack_id: null,
    amount_cents: null, currency: null, payment_intent_id: null, purchase_id: null, source: null, metadata: null,
    ...more,
  });
  return [
    base(1, 'trial_grant', '2030-01-01T00:00:00.000Z'),
    base(2, 'debit', '2030-01-01T23:59:59.999Z', {
      feature: 'chat', user_id: 'user_1', project_id: 'proj_1',
      metadata: { model: 'gpt-4o-mini', note: 'é ✓ "quoted" \\ back', trace_id: '0f1e2d3c4b5a6978' },
    }),
    base(4, 'capture', '2030-01-02T00:00:01.000Z', {
      usage_day: '2030-01-01', feature: 'auto_triage', hold_id: 'hold_000000000003', unbilled: 25,
      model: 'claude-sonnet-4', input_tokens: 1200, cached_input_tokens: 200, output_tokens: 300,
      rate_id: 'rate_claude-sonnet-4_20260101T000000Z',
    }),
    base(5, 'purchase', '2030-01-02T10:00:00.000Z', {
      id: 'le_restored_5', pack_id: 'starter', amount_cents: 1000, currency: 'usd', payment_intent_id: 'pi_1',
      purchase_id: 'pur_0123456789abcdef01234567', source: 'auto_top_up',
    }),
  ];
}

function migrated() {
  const db = new DatabaseSync(':memory:');
  db.exec(SCHEMA_V1);
  const insert = db.prepare(`INSERT INTO ops (seq, idempotency_key, fingerprint, status, response, entry, created_at_ms)
    VALUES (?, ?, ?, ?, ?, ?, ?)`);
  for (const e of legacyEntries()) {
    const key = e.kind === 'debit' ? 'key-2' : null;
    insert.run(e.seq, key, key && 'f'.repeat(64), 201, key && '{"id":"le_000000000002"}', JSON.stringify(e), e.created_at_ms);
  }
  // A hold placed (an idempotency record without an entry).
  insert.run(3, 'key-3', 'a'.repeat(64), 201, '{"id":"hold_000000000003"}', null, at('2030-01-01T23:59:59.999Z'));
  db.exec(MIGRATION);
  return db;
}

test('migration 6 moves every stored entry into its columns and clears the JSON text', () => {
  const db = migrated();
  const rows = db.prepare('SELECT * FROM ops ORDER BY seq').all();
  assert.deepEqual(rows.map((r) => r.seq), [1, 2, 3, 4, 5]);
  assert.ok(rows.every((r) => r.entry === null), 'no JSON text is left');
  const bySeq = Object.fromEntries(rows.map((r) => [r.seq, r]));
  for (const e of legacyEntries()) {
    const r = bySeq[e.seq];
    for (const field of ['kind', 'amount', 'balance_after', 'created_at_ms', 'feature', 'user_id', 'project_id']) {
      assert.equal(r[field], e[field], `entry ${e.seq}: ${field}`);
    }
    for (const field of ['model', 'input_tokens', 'cached_input_tokens', 'output_tokens', 'rate_id']) {
      assert.equal(r[field], e[field] ?? null, `entry ${e.seq}: ${field}`);
    }
    assert.deepEqual(r.metadata === null ? null : JSON.parse(r.metadata), e.metadata, `entry ${e.seq}: metadata`);
    // extra: the rare fields, plus id and usage_day only where they are not derived.
    const extra = {};
    if (e.id !== id(e.seq)) extra.id = e.id;
    if (e.usage_day !== new Date(e.created_at_ms).toISOString().slice(0, 10)) extra.usage_day = e.usage_day;
    for (const field of ['hold_id', 'pack_id', 'amount_cents', 'currency', 'payment_intent_id', 'purchase_id', 'source', 'unbilled']) {
      if (e[field] !== null && e[field] !== undefined) extra[field] = e[field];
    }
    assert.deepEqual(r.extra === null ? {} : JSON.parse(r.extra), extra, `entry ${e.seq}: extra`);
    assert.equal(r.extra === null, Object.keys(extra).length === 0, `entry ${e.seq}: extra is NULL when empty`);
  }
  // The idempotency records are untouched; the hold's row has no entry.
  assert.equal(bySeq[2].idempotency_key, 'key-2');
  assert.equal(bySeq[2].response, '{"id":"le_000000000002"}');
  assert.equal(bySeq[3].kind, null);
  assert.equal(bySeq[3].response, '{"id":"hold_000000000003"}');
  // Rows written by this release (columns, no text) are left as they are.
  db.prepare(`INSERT INTO ops (seq, status, created_at_ms, kind, amount, balance_after) VALUES (6, 201, 1, 'debit', 1, 2)`).run();
  db.exec(MIGRATION.split(/\n(?=UPDATE)/)[1]);
  assert.equal(db.prepare('SELECT kind FROM ops WHERE seq = 6').get().kind, 'debit');
});
