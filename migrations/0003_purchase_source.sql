-- Who bought a purchase: 'owner' or 'auto_top_up' (NULL for other kinds, and
-- for purchases recorded before auto top-up existed, all of them the owner's).
ALTER TABLE ledger_entries ADD COLUMN source TEXT;
