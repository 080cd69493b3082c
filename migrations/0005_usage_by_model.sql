-- Usage priced from a model's tokens (SPEC §12), per organization, UTC day
-- and model, kept as entries arrive like usage_daily (whose figures are
-- unchanged): credits, entries, every input token (cached ones included),
-- output tokens, and what captures cost beyond their holds (unbilled, not
-- taken). Entries priced by amount name no model and are not counted here.
CREATE TABLE usage_models_daily (
  org_id TEXT NOT NULL,
  day TEXT NOT NULL,
  model TEXT NOT NULL,
  credits_units INTEGER NOT NULL,
  entries INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  unbilled_units INTEGER NOT NULL,
  PRIMARY KEY (org_id, day, model)
) WITHOUT ROWID;
