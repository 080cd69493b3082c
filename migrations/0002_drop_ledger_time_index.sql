-- No query reads ledger_entries by time: the ledger and transactions lists
-- page by (org_id, seq) and the usage report reads usage_daily. The index
-- cost one more D1 row written per ledger entry (D1 bills index writes).
DROP INDEX IF EXISTS ledger_entries_by_time;
