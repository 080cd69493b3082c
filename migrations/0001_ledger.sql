-- The ledger replica: every credit movement of every organization, written by
-- the organizations' Durable Objects after they commit. Amounts are integer
-- units of 1/10,000 credit (inside ±2^53).
CREATE TABLE ledger_entries (
  org_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('trial_grant', 'purchase', 'debit', 'capture')),
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

-- Per-organization time-range reads.
CREATE INDEX ledger_entries_by_time ON ledger_entries (org_id, created_at_ms);
-- The transactions tab lists only credits added; a partial index keeps that
-- read off the (much larger) debit history and costs debits nothing.
CREATE INDEX ledger_entries_credits ON ledger_entries (org_id, seq) WHERE kind IN ('trial_grant', 'purchase');

-- Usage per organization, UTC day, feature and member, kept as entries
-- arrive so usage reads never scan the raw ledger. user_id '' = no member.
CREATE TABLE usage_daily (
  org_id TEXT NOT NULL,
  day TEXT NOT NULL,
  feature TEXT NOT NULL,
  user_id TEXT NOT NULL,
  credits_units INTEGER NOT NULL,
  entries INTEGER NOT NULL,
  PRIMARY KEY (org_id, day, feature, user_id)
) WITHOUT ROWID;

-- Highest entry seq of each organization already in ledger_entries and
-- counted in usage_daily; advanced in the same batch as the rows it covers.
CREATE TABLE replica_progress (
  org_id TEXT PRIMARY KEY,
  flushed_seq INTEGER NOT NULL
) WITHOUT ROWID;
