//! The ledger's rows in `ops`: each entry as columns
//! ([`wallet_core::ledger::EntryColumns`], SPEC §11's compact entries), the
//! idempotency record beside it, and every query that reads entries back
//! (pages, the replica outbox, the archive's next segment, the balance
//! checks). Entries that were sealed in R2 but whose row still keeps an
//! idempotency record stay until the retention prunes them: every read of
//! live entries starts after the archive's last seq.

use super::{int, opt_text, text, Statement};
use serde::Deserialize;
use wallet_core::decision::{DebitTotals, OpRow, StoredAnswer};
use wallet_core::ledger::{EntryColumns, EntryRow};
use wallet_core::{Credits, EntryKind, LedgerEntry};
use worker::{SqlStorage, SqlStorageValue};

/// The columns of [`EntryColumns`], in a `SELECT`'s order.
macro_rules! entry_columns {
    () => {
        "seq, created_at_ms, kind, amount, balance_after, feature, user_id, project_id,
         metadata, model, input_tokens, cached_input_tokens, output_tokens, rate_id, extra"
    };
}

/// Storage version 6: the entry's columns (existing entries move out of
/// their JSON text, which is cleared) and a debit's answer figures.
pub(super) const MIGRATION_COMPACT_ENTRIES: &str = "
ALTER TABLE ops ADD COLUMN reply_spent_today INTEGER;
ALTER TABLE ops ADD COLUMN reply_cap_remaining INTEGER;
ALTER TABLE ops ADD COLUMN kind TEXT;
ALTER TABLE ops ADD COLUMN amount INTEGER;
ALTER TABLE ops ADD COLUMN balance_after INTEGER;
ALTER TABLE ops ADD COLUMN feature TEXT;
ALTER TABLE ops ADD COLUMN user_id TEXT;
ALTER TABLE ops ADD COLUMN project_id TEXT;
ALTER TABLE ops ADD COLUMN metadata TEXT;
ALTER TABLE ops ADD COLUMN model TEXT;
ALTER TABLE ops ADD COLUMN input_tokens INTEGER;
ALTER TABLE ops ADD COLUMN cached_input_tokens INTEGER;
ALTER TABLE ops ADD COLUMN output_tokens INTEGER;
ALTER TABLE ops ADD COLUMN rate_id TEXT;
ALTER TABLE ops ADD COLUMN extra TEXT;
UPDATE ops SET
  created_at_ms = json_extract(entry, '$.created_at_ms'),
  kind = json_extract(entry, '$.kind'),
  amount = json_extract(entry, '$.amount'),
  balance_after = json_extract(entry, '$.balance_after'),
  feature = json_extract(entry, '$.feature'),
  user_id = json_extract(entry, '$.user_id'),
  project_id = json_extract(entry, '$.project_id'),
  metadata = json_extract(entry, '$.metadata'),
  model = json_extract(entry, '$.model'),
  input_tokens = json_extract(entry, '$.input_tokens'),
  cached_input_tokens = json_extract(entry, '$.cached_input_tokens'),
  output_tokens = json_extract(entry, '$.output_tokens'),
  rate_id = json_extract(entry, '$.rate_id'),
  extra = nullif(json_patch('{}', json_object(
    'id', nullif(json_extract(entry, '$.id'), printf('le_%012d', seq)),
    'usage_day', nullif(json_extract(entry, '$.usage_day'),
      date(json_extract(entry, '$.created_at_ms') / 1000, 'unixepoch')),
    'hold_id', json_extract(entry, '$.hold_id'),
    'pack_id', json_extract(entry, '$.pack_id'),
    'amount_cents', json_extract(entry, '$.amount_cents'),
    'currency', json_extract(entry, '$.currency'),
    'payment_intent_id', json_extract(entry, '$.payment_intent_id'),
    'purchase_id', json_extract(entry, '$.purchase_id'),
    'source', json_extract(entry, '$.source'),
    'unbilled', json_extract(entry, '$.unbilled'))), '{}'),
  entry = NULL
WHERE entry IS NOT NULL;
";

fn opt_int(value: Option<i64>) -> SqlStorageValue {
    value.map_or(SqlStorageValue::Null, int)
}

fn opt_count(value: Option<u64>) -> SqlStorageValue {
    // Token counts are bounded far below 2^53 (rate_card::MAX_TOKENS).
    opt_int(value.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
}

/// An accepted operation's row: its idempotency record and its entry.
pub(super) fn insert_op(op: &OpRow) -> Statement {
    let columns = op
        .entry
        .as_ref()
        .map(|e| EntryColumns::of(&EntryRow::of(e)))
        .unwrap_or_default();
    let (response, totals) = match &op.answer {
        Some(StoredAnswer::Text(text)) => (Some(text.as_str()), None),
        Some(StoredAnswer::Debit(totals)) => (None, Some(totals)),
        None => (None, None),
    };
    (
        "INSERT INTO ops (seq, idempotency_key, fingerprint, status, response,
           reply_spent_today, reply_cap_remaining, created_at_ms, kind, amount,
           balance_after, feature, user_id, project_id, metadata, model, input_tokens,
           cached_input_tokens, output_tokens, rate_id, extra)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            int(op.seq as i64),
            opt_text(op.idempotency.as_ref().map(|(k, _)| k.as_str())),
            opt_text(op.idempotency.as_ref().map(|(_, f)| f.as_str())),
            int(op.status as i64),
            opt_text(response),
            opt_int(totals.map(|t| t.spent_today.units())),
            opt_int(totals.map(|t| t.cap_remaining.units())),
            int(op.created_at_ms),
        ]
        .into_iter()
        .chain(entry_values(&columns))
        .collect(),
    )
}

/// An entry's values from `kind` to `extra`, in the order of
/// [`entry_columns!`] after `seq, created_at_ms`.
fn entry_values(c: &EntryColumns) -> [SqlStorageValue; 13] {
    [
        opt_text(c.kind.as_deref()),
        opt_int(c.amount),
        opt_int(c.balance_after),
        opt_text(c.feature.as_deref()),
        opt_text(c.user_id.as_deref()),
        opt_text(c.project_id.as_deref()),
        opt_text(c.metadata.as_deref()),
        opt_text(c.model.as_deref()),
        opt_count(c.input_tokens),
        opt_count(c.cached_input_tokens),
        opt_count(c.output_tokens),
        opt_text(c.rate_id.as_deref()),
        opt_text(c.extra.as_deref()),
    ]
}

fn corrupt_entry(message: String) -> worker::Error {
    worker::Error::RustError(format!("stored wallet is unreadable: {message}"))
}

/// The entries of rows read with [`entry_columns!`]; rows without one are skipped.
fn rows_of(columns: Vec<EntryColumns>) -> worker::Result<Vec<EntryRow>> {
    let mut rows = Vec::with_capacity(columns.len());
    for c in columns {
        if let Some(row) = c.into_row().map_err(corrupt_entry)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// An entry's text as pages and segments carry it.
pub(super) fn entry_text(row: &EntryRow) -> String {
    serde_json::to_string(row).expect("entries serialize")
}

/// The entry of the row `seq`, if it has one.
pub(super) fn entry_at(sql: &SqlStorage, seq: u64) -> worker::Result<Option<LedgerEntry>> {
    let columns: Vec<EntryColumns> = sql
        .exec(
            concat!("SELECT ", entry_columns!(), " FROM ops WHERE seq = ?"),
            vec![int(seq as i64)],
        )?
        .to_array()?;
    rows_of(columns)?
        .into_iter()
        .next()
        .map(|row| row.into_entry().map_err(corrupt_entry))
        .transpose()
}

#[derive(Deserialize)]
struct DebitFigures {
    seq: i64,
    reply_spent_today: Option<i64>,
    reply_cap_remaining: Option<i64>,
}

/// A debit's first answer, rebuilt from its entry (`None`: the row keeps
/// no such answer).
pub(super) fn debit_answer(sql: &SqlStorage, seq: u64) -> worker::Result<Option<String>> {
    let rows: Vec<DebitFigures> = sql
        .exec(
            "SELECT seq, reply_spent_today, reply_cap_remaining FROM ops WHERE seq = ?",
            vec![int(seq as i64)],
        )?
        .to_array()?;
    let Some(DebitFigures {
        seq,
        reply_spent_today: Some(spent),
        reply_cap_remaining: Some(remaining),
    }) = rows.into_iter().next()
    else {
        return Ok(None);
    };
    let totals = DebitTotals {
        spent_today: Credits::from_units(spent),
        cap_remaining: Credits::from_units(remaining),
    };
    let entry = entry_at(sql, seq.max(0) as u64)?
        .ok_or_else(|| corrupt_entry(format!("debit {seq} keeps an answer without its entry")))?;
    Ok(Some(totals.reply_text(&entry)))
}

/// The newest entry, if any.
pub(super) fn newest_entry(sql: &SqlStorage) -> worker::Result<Option<EntryRow>> {
    let columns: Vec<EntryColumns> = sql
        .exec(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ops WHERE kind IS NOT NULL ORDER BY seq DESC LIMIT 1"
            ),
            None,
        )?
        .to_array()?;
    Ok(rows_of(columns)?.into_iter().next())
}

/// Live entries (after `after_seq`, the archive's end) with
/// `from_seq <= seq < below_seq`, newest first, at most `limit`.
pub(super) fn live_newest_first(
    sql: &SqlStorage,
    after_seq: u64,
    from_seq: i64,
    below_seq: i64,
    limit: u32,
) -> worker::Result<Vec<EntryRow>> {
    let columns: Vec<EntryColumns> = sql
        .exec(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ops WHERE seq < ? AND seq >= ? AND seq > ? AND kind IS NOT NULL
                  ORDER BY seq DESC LIMIT ?"
            ),
            vec![
                int(below_seq),
                int(from_seq),
                int(after_seq as i64),
                int(limit as i64),
            ],
        )?
        .to_array()?;
    rows_of(columns)
}

/// Up to `limit` entries after `after_seq`, oldest first.
pub fn oldest_after(sql: &SqlStorage, after_seq: u64, limit: u64) -> worker::Result<Vec<EntryRow>> {
    let columns: Vec<EntryColumns> = sql
        .exec(
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ops WHERE seq > ? AND kind IS NOT NULL ORDER BY seq LIMIT ?"
            ),
            vec![int(after_seq as i64), int(limit as i64)],
        )?
        .to_array()?;
    rows_of(columns)
}

/// The number `query` (one `?`, bound to `seq`) selects as `n`.
fn number_after(sql: &SqlStorage, query: &str, seq: u64) -> worker::Result<i64> {
    #[derive(Deserialize)]
    struct Number {
        n: i64,
    }
    let rows: Vec<Number> = sql.exec(query, vec![int(seq as i64)])?.to_array()?;
    Ok(rows.first().map_or(0, |r| r.n))
}

/// The entries still in the object (after `after_seq`, the archived ones').
pub fn live_entries(sql: &SqlStorage, after_seq: u64) -> worker::Result<u64> {
    let query = "SELECT count(*) AS n FROM ops WHERE seq > ? AND kind IS NOT NULL";
    Ok(number_after(sql, query, after_seq)?.max(0) as u64)
}

/// Whether any entry is newer than `seq`.
pub fn has_entries_after(sql: &SqlStorage, seq: u64) -> worker::Result<bool> {
    let query = "SELECT EXISTS (SELECT 1 FROM ops WHERE seq > ? AND kind IS NOT NULL) AS n";
    Ok(number_after(sql, query, seq)? != 0)
}

#[derive(Deserialize)]
struct Sum {
    total: Option<i64>,
}

/// The signed sum of the live entries after `after_seq`, computed by the
/// database from each entry's kind and amount.
pub(super) fn live_sum(sql: &SqlStorage, after_seq: u64) -> worker::Result<i64> {
    let adding: Vec<&str> = EntryKind::ALL
        .into_iter()
        .filter(|k| k.adds_credits())
        .map(EntryKind::as_str)
        .collect();
    let rows: Vec<Sum> = sql
        .exec(
            "SELECT sum(CASE WHEN kind IN (SELECT value FROM json_each(?))
               THEN amount ELSE -amount END) AS total
             FROM ops WHERE seq > ? AND kind IS NOT NULL",
            vec![
                text(serde_json::to_string(&adding).expect("kinds serialize")),
                int(after_seq as i64),
            ],
        )?
        .to_array()?;
    Ok(rows.first().and_then(|r| r.total).unwrap_or(0))
}

/// Copies entries back into `ops` (where a hold's row holds the seq, the
/// entry is added to it); `done` marks the restore finished. Returns the
/// rows written.
pub fn restore_legacy_entries(
    sql: &SqlStorage,
    entries: &[EntryRow],
    done: bool,
) -> worker::Result<u64> {
    let mut written = 0;
    for entry in entries {
        let c = EntryColumns::of(entry);
        let cursor = sql.exec(
            "INSERT INTO ops (seq, created_at_ms, kind, amount, balance_after, feature, user_id,
               project_id, metadata, model, input_tokens, cached_input_tokens, output_tokens,
               rate_id, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (seq) DO UPDATE SET kind = excluded.kind, amount = excluded.amount,
               balance_after = excluded.balance_after, feature = excluded.feature,
               user_id = excluded.user_id, project_id = excluded.project_id,
               metadata = excluded.metadata, model = excluded.model,
               input_tokens = excluded.input_tokens,
               cached_input_tokens = excluded.cached_input_tokens,
               output_tokens = excluded.output_tokens, rate_id = excluded.rate_id,
               extra = excluded.extra, created_at_ms = excluded.created_at_ms
             WHERE ops.kind IS NULL",
            [int(c.seq as i64), int(c.created_at_ms)]
                .into_iter()
                .chain(entry_values(&c))
                .collect::<Vec<_>>(),
        )?;
        written += cursor.rows_written();
    }
    if done {
        written += sql
            .exec("UPDATE replica SET legacy_restored = 1 WHERE id = 1", None)?
            .rows_written();
    }
    Ok(written as u64)
}
