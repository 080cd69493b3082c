//! The D1 ledger: a replica of every organization's entries that the
//! dashboard and list routes read. The Durable Object is the source of truth;
//! it flushes its outbox here after responding. Every write is safe to repeat:
//! entries are keyed by (org, seq) and inserted with `OR IGNORE`, and the
//! usage rollups only count entries past the organization's replica
//! watermark, advanced in the same D1 batch.

use serde::Deserialize;
use serde_json::{json, Value};
use wallet_core::reports::{self, DateRange, Transaction, UsageLine, UsageRollups};
use wallet_core::time::from_millis;
use wallet_core::wallet::{EntryKind, LedgerEntry};
use wallet_core::Credits;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1Result, SqlStorage, SqlStorageValue};

/// Entries sent to D1 in one batch.
const FLUSH_BATCH: usize = 500;

/// An entry in the replica's row format (credit amounts in integer units).
pub fn row_json(entry: &LedgerEntry) -> String {
    json!({
        "seq": entry.seq,
        "id": entry.id,
        "kind": entry.kind.as_str(),
        "amount": entry.amount.units(),
        "balance_after": entry.balance_after.units(),
        "created_at_ms": entry.created_at.timestamp_millis(),
        "usage_day": entry.usage_day.to_string(),
        "feature": entry.feature,
        "user_id": entry.user_id,
        "project_id": entry.project_id,
        "hold_id": entry.hold_id,
        "pack_id": entry.pack_id,
        "amount_cents": entry.amount_cents,
        "currency": entry.currency,
        "payment_intent_id": entry.payment_intent_id,
        "purchase_id": entry.purchase_id,
        "metadata": entry.metadata,
    })
    .to_string()
}

const INSERT_ENTRIES: &str = "
INSERT OR IGNORE INTO ledger_entries (org_id, seq, id, kind, amount_units, balance_after_units,
  created_at_ms, usage_day, feature, user_id, project_id, hold_id, pack_id, amount_cents, currency,
  payment_intent_id, purchase_id, metadata)
SELECT ?1, json_extract(value, '$.seq'), json_extract(value, '$.id'), json_extract(value, '$.kind'),
  json_extract(value, '$.amount'), json_extract(value, '$.balance_after'),
  json_extract(value, '$.created_at_ms'), json_extract(value, '$.usage_day'),
  json_extract(value, '$.feature'), json_extract(value, '$.user_id'), json_extract(value, '$.project_id'),
  json_extract(value, '$.hold_id'), json_extract(value, '$.pack_id'), json_extract(value, '$.amount_cents'),
  json_extract(value, '$.currency'), json_extract(value, '$.payment_intent_id'),
  json_extract(value, '$.purchase_id'), json_extract(value, '$.metadata')
FROM json_each(?2)";

const ROLL_UP_USAGE: &str = "
INSERT INTO usage_daily (org_id, day, feature, user_id, credits_units, entries)
SELECT ?1, json_extract(value, '$.usage_day'), json_extract(value, '$.feature'),
  coalesce(json_extract(value, '$.user_id'), ''), sum(json_extract(value, '$.amount')), count(*)
FROM json_each(?2)
WHERE json_extract(value, '$.kind') IN ('debit', 'capture')
  AND json_extract(value, '$.seq') > coalesce((SELECT flushed_seq FROM replica_progress WHERE org_id = ?1), 0)
GROUP BY 2, 3, 4
ON CONFLICT (org_id, day, feature, user_id) DO UPDATE SET
  credits_units = credits_units + excluded.credits_units,
  entries = entries + excluded.entries";

const ADVANCE_PROGRESS: &str = "
INSERT INTO replica_progress (org_id, flushed_seq) VALUES (?1, ?2)
ON CONFLICT (org_id) DO UPDATE SET flushed_seq = max(flushed_seq, excluded.flushed_seq)";

#[derive(Deserialize)]
struct OutboxRow {
    seq: i64,
    entry: String,
}

#[derive(Deserialize)]
struct Watermark {
    flushed_seq: i64,
}

pub fn flushed_seq(sql: &SqlStorage) -> worker::Result<i64> {
    let rows: Vec<Watermark> = sql
        .exec("SELECT flushed_seq FROM replica WHERE id = 1", None)?
        .to_array()?;
    Ok(rows.first().map_or(0, |w| w.flushed_seq))
}

/// Whether entries are waiting to reach D1.
pub fn has_pending(sql: &SqlStorage) -> worker::Result<bool> {
    let rows: Vec<OutboxRow> = sql
        .exec(
            "SELECT seq, entry FROM ops WHERE entry IS NOT NULL
               AND seq > (SELECT flushed_seq FROM replica WHERE id = 1) ORDER BY seq LIMIT 1",
            None,
        )?
        .to_array()?;
    Ok(!rows.is_empty())
}

/// What a flush did, from the storage APIs' own row counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushStats {
    pub entries: u64,
    pub d1_rows_written: u64,
    pub do_rows_written: u64,
}

/// Sends every entry past the watermark to D1, oldest first, in batches.
pub async fn flush(sql: &SqlStorage, db: &D1Database, org_id: &str) -> worker::Result<FlushStats> {
    let mut stats = FlushStats::default();
    loop {
        let from = flushed_seq(sql)?;
        let rows: Vec<OutboxRow> = sql
            .exec(
                "SELECT seq, entry FROM ops WHERE seq > ? AND entry IS NOT NULL ORDER BY seq LIMIT ?",
                vec![SqlStorageValue::Integer(from), SqlStorageValue::Integer(FLUSH_BATCH as i64)],
            )?
            .to_array()?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(stats);
        };
        let mut batch =
            String::with_capacity(rows.iter().map(|r| r.entry.len() + 1).sum::<usize>() + 2);
        batch.push('[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                batch.push(',');
            }
            batch.push_str(&row.entry);
        }
        batch.push(']');
        let org = JsValue::from_str(org_id);
        let entries = JsValue::from_str(&batch);
        let results = db
            .batch(vec![
                db.prepare(INSERT_ENTRIES)
                    .bind(&[org.clone(), entries.clone()])?,
                db.prepare(ROLL_UP_USAGE).bind(&[org.clone(), entries])?,
                db.prepare(ADVANCE_PROGRESS)
                    .bind(&[org, JsValue::from_f64(last as f64)])?,
            ])
            .await?;
        for result in &results {
            stats.d1_rows_written +=
                result.meta()?.and_then(|m| m.rows_written).unwrap_or(0) as u64;
        }
        let cursor = sql.exec(
            "UPDATE replica SET flushed_seq = max(flushed_seq, ?) WHERE id = 1",
            vec![SqlStorageValue::Integer(last)],
        )?;
        stats.do_rows_written += cursor.rows_written() as u64;
        stats.entries += rows.len() as u64;
        if rows.len() < FLUSH_BATCH {
            return Ok(stats);
        }
    }
}

/// Deletes idempotency records and closed holds older than the retention
/// period, only once their entries are in D1. Bounded per call.
/// Returns the rows deleted.
pub fn prune(sql: &SqlStorage, older_than_ms: i64) -> worker::Result<u64> {
    let ops = sql.exec(
        "DELETE FROM ops WHERE seq IN (SELECT seq FROM ops WHERE created_at_ms < ?1
           AND seq <= (SELECT flushed_seq FROM replica WHERE id = 1) ORDER BY seq LIMIT 5000)",
        vec![SqlStorageValue::Integer(older_than_ms)],
    )?;
    let holds = sql.exec(
        "DELETE FROM holds WHERE id IN (SELECT id FROM holds WHERE status != 'active'
           AND closed_at_ms < ?1 LIMIT 5000)",
        vec![SqlStorageValue::Integer(older_than_ms)],
    )?;
    Ok((ops.rows_written() + holds.rows_written()) as u64)
}

/// A D1 ledger row.
#[derive(Deserialize)]
pub struct LedgerRow {
    seq: i64,
    id: String,
    kind: String,
    amount_units: i64,
    balance_after_units: i64,
    created_at_ms: i64,
    usage_day: String,
    feature: Option<String>,
    user_id: Option<String>,
    project_id: Option<String>,
    hold_id: Option<String>,
    pack_id: Option<String>,
    amount_cents: Option<i64>,
    currency: Option<String>,
    payment_intent_id: Option<String>,
    purchase_id: Option<String>,
    metadata: Option<String>,
}

impl LedgerRow {
    pub fn into_entry(self) -> worker::Result<LedgerEntry> {
        let bad = |what: &str| worker::Error::RustError(format!("ledger row has a bad {what}"));
        let kind = EntryKind::parse(&self.kind).ok_or_else(|| bad("kind"))?;
        Ok(LedgerEntry {
            seq: u64::try_from(self.seq).map_err(|_| bad("seq"))?,
            id: self.id,
            kind,
            amount: Credits::from_units(self.amount_units),
            balance_after: Credits::from_units(self.balance_after_units),
            created_at: from_millis(self.created_at_ms).ok_or_else(|| bad("created_at"))?,
            usage_day: self.usage_day.parse().map_err(|_| bad("usage_day"))?,
            feature: self.feature,
            user_id: self.user_id,
            project_id: self.project_id,
            hold_id: self.hold_id,
            pack_id: self.pack_id,
            amount_cents: self.amount_cents,
            currency: self.currency,
            payment_intent_id: self.payment_intent_id,
            purchase_id: self.purchase_id,
            metadata: self.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        })
    }
}

/// One page of an organization's ledger, newest first: `(entries, has_more)`.
pub async fn ledger_page(
    db: &D1Database,
    org_id: &str,
    limit: u32,
    before_seq: Option<u64>,
) -> worker::Result<(Vec<Value>, bool)> {
    let before = before_seq.map_or(i64::MAX as f64, |s| s as f64);
    let result = db
        .prepare(
            "SELECT * FROM ledger_entries WHERE org_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )
        .bind(&[JsValue::from_str(org_id), JsValue::from_f64(before), JsValue::from_f64(limit as f64 + 1.0)])?
        .all()
        .await?;
    let mut rows: Vec<LedgerRow> = result.results()?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let data = rows
        .into_iter()
        .map(|r| r.into_entry().map(|e| wallet_core::api::entry_json(&e)))
        .collect::<worker::Result<Vec<Value>>>()?;
    Ok((data, has_more))
}

/// A D1 row of the transactions query.
#[derive(Deserialize)]
struct TransactionRow {
    id: String,
    kind: String,
    amount_units: i64,
    balance_after_units: i64,
    created_at_ms: i64,
    pack_id: Option<String>,
    amount_cents: Option<i64>,
    currency: Option<String>,
}

impl TransactionRow {
    fn into_transaction(self) -> worker::Result<Transaction> {
        let bad = |what: &str| worker::Error::RustError(format!("ledger row has a bad {what}"));
        Ok(Transaction {
            kind: EntryKind::parse(&self.kind).ok_or_else(|| bad("kind"))?,
            created_at: from_millis(self.created_at_ms).ok_or_else(|| bad("created_at"))?,
            id: self.id,
            pack_id: self.pack_id,
            credits: Credits::from_units(self.amount_units),
            amount_cents: self.amount_cents,
            currency: self.currency,
            balance_after: Credits::from_units(self.balance_after_units),
        })
    }
}

/// Entries that added credits, newest first, below `before_seq`: at most
/// `limit` of them and whether more follow. The kind list matches the
/// partial index `ledger_entries_credits`, so the (much larger) debit history
/// is never scanned.
pub async fn transactions_page(
    db: &D1Database,
    org_id: &str,
    limit: u32,
    before_seq: Option<u64>,
) -> worker::Result<(Vec<Transaction>, bool)> {
    let query = format!(
        "SELECT id, kind, amount_units, balance_after_units, created_at_ms, pack_id, amount_cents,
           currency
         FROM ledger_entries
         WHERE org_id = ?1 AND kind IN ({}) AND seq < ?2
         ORDER BY seq DESC LIMIT ?3",
        reports::credit_kinds_sql()
    );
    let before = before_seq.map_or(MAX_SAFE_SEQ, |s| s as f64);
    let result = db
        .prepare(query)
        .bind(&[
            JsValue::from_str(org_id),
            JsValue::from_f64(before),
            JsValue::from_f64(limit as f64 + 1.0),
        ])?
        .all()
        .await?;
    let mut rows: Vec<TransactionRow> = result.results()?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let data = rows
        .into_iter()
        .map(TransactionRow::into_transaction)
        .collect::<worker::Result<Vec<_>>>()?;
    Ok((data, has_more))
}

/// Sequence numbers stay below 2^53 (JavaScript numbers carry them exactly).
const MAX_SAFE_SEQ: f64 = 9_007_199_254_740_991.0;

#[derive(Deserialize)]
struct DayRow {
    day: String,
    credits_units: i64,
    entries: i64,
}

#[derive(Deserialize)]
struct KeyRow {
    label: String,
    credits_units: i64,
    entries: i64,
}

impl KeyRow {
    fn into_line(self) -> UsageLine {
        UsageLine {
            key: self.label,
            credits: Credits::from_units(self.credits_units),
            count: self.entries,
        }
    }
}

#[derive(Deserialize)]
struct SumRow {
    credits_units: i64,
}

/// The rollup sums of one usage report, read from `usage_daily` only (never
/// the raw ledger) in one D1 batch, so all four come from the same snapshot.
pub async fn usage_rollups(
    db: &D1Database,
    org_id: &str,
    range: DateRange,
    trailing: DateRange,
) -> worker::Result<UsageRollups> {
    let org = JsValue::from_str(org_id);
    let from = JsValue::from_str(&range.from.to_string());
    let to = JsValue::from_str(&range.to.to_string());
    let in_range = [org.clone(), from, to];
    let grouped = |key: &str, limit: usize| {
        format!(
            "SELECT {key} AS label, sum(credits_units) AS credits_units, sum(entries) AS entries
             FROM usage_daily WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3
             GROUP BY {key} ORDER BY credits_units DESC, label LIMIT {limit}"
        )
    };
    let results = db
        .batch(vec![
            db.prepare(
                "SELECT day, sum(credits_units) AS credits_units, sum(entries) AS entries
                 FROM usage_daily WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3 GROUP BY day",
            )
            .bind(&in_range)?,
            // Features come from configuration: few, but bounded anyway.
            db.prepare(grouped("feature", 1000)).bind(&in_range)?,
            // One more than is shown, to tell the client the list was cut.
            db.prepare(grouped("user_id", reports::MAX_USAGE_MEMBERS + 1))
                .bind(&in_range)?,
            db.prepare(
                "SELECT coalesce(sum(credits_units), 0) AS credits_units
                 FROM usage_daily WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3",
            )
            .bind(&[
                org,
                JsValue::from_str(&trailing.from.to_string()),
                JsValue::from_str(&trailing.to.to_string()),
            ])?,
        ])
        .await?;
    let [daily, by_feature, by_member, window] = <[D1Result; 4]>::try_from(results)
        .map_err(|_| worker::Error::RustError("D1 batch answered a wrong count".into()))?;
    let bad_day = || worker::Error::RustError("usage_daily has a bad day".into());
    Ok(UsageRollups {
        daily: daily
            .results::<DayRow>()?
            .into_iter()
            .map(|r| {
                let day = r.day.parse().map_err(|_| bad_day())?;
                Ok((day, Credits::from_units(r.credits_units), r.entries))
            })
            .collect::<worker::Result<_>>()?,
        by_feature: by_feature
            .results::<KeyRow>()?
            .into_iter()
            .map(KeyRow::into_line)
            .collect(),
        by_member: by_member
            .results::<KeyRow>()?
            .into_iter()
            .map(KeyRow::into_line)
            .collect(),
        trailing: Credits::from_units(
            window
                .results::<SumRow>()?
                .first()
                .map_or(0, |r| r.credits_units),
        ),
    })
}
