-- A new ledger kind, dispute_reversal: removes the still-unspent credits of a
-- purchase whose payment was disputed (never more than was available, so
-- balance_after stays >= 0). SQLite cannot change a CHECK constraint in
-- place, so the table is rebuilt with the same columns, key and indexes.
CREATE TABLE ledger_entries_next (
  org_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('trial_grant', 'purchase', 'debit', 'capture', 'dispute_reversal')),
  amount_units INTEGER NOT NULL CHECK (amount_units > 0),
  balance_after_units INTEGER NOT NULL CHECK (balance_after_units >= 0),
  created_at_ms INTEGER NOT NULL,
  usage_day TEXT NOT NULL,
  feature TEXT,
  user_id TEXT,
  project_id TEXT,
  hold_id TEXT,
  pack_id TEXT,
  amount_cents INTEGER,
  currency TEXT,
  payment_intent_id TEXT,
  purchase_id TEXT,
  metadata TEXT,
  PRIMARY KEY (org_id, seq)
) WITHOUT ROWID;

INSERT INTO ledger_entries_next SELECT org_id, seq, id, kind, amount_units, balance_after_units,
  created_at_ms, usage_day, feature, user_id, project_id, hold_id, pack_id, amount_cents, currency,
  payment_intent_id, purchase_id, metadata FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_next RENAME TO ledger_entries;

CREATE INDEX ledger_entries_by_time ON ledger_entries (org_id, created_at_ms);
-- Unchanged: the transactions tab lists the kinds that add credits.
CREATE INDEX ledger_entries_credits ON ledger_entries (org_id, seq) WHERE kind IN ('trial_grant', 'purchase');
