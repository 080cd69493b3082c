-- Two new ledger kinds from Stripe's side of a payment: refund_reversal
-- (removes the refunded share of a purchase, never below zero) and
-- dispute_reinstatement (adds back what a dispute took once it was won).
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt
-- with the same columns (0003's source included), key and indexes.
CREATE TABLE ledger_entries_next (
  org_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('trial_grant', 'purchase', 'debit', 'capture',
    'dispute_reversal', 'refund_reversal', 'dispute_reinstatement')),
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
  source TEXT,
  PRIMARY KEY (org_id, seq)
) WITHOUT ROWID;

INSERT INTO ledger_entries_next SELECT org_id, seq, id, kind, amount_units, balance_after_units,
  created_at_ms, usage_day, feature, user_id, project_id, hold_id, pack_id, amount_cents, currency,
  payment_intent_id, purchase_id, metadata, source FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_next RENAME TO ledger_entries;

CREATE INDEX ledger_entries_by_time ON ledger_entries (org_id, created_at_ms);
-- The transactions tab lists every kind that is not AI usage: grants,
-- purchases, and what refunds and disputes took back or gave back.
CREATE INDEX ledger_entries_credits ON ledger_entries (org_id, seq) WHERE kind IN ('trial_grant', 'purchase', 'dispute_reversal', 'refund_reversal', 'dispute_reinstatement');
