//! The D1 ledger shards: the one home of every D1 table (`ledger_entries`,
//! `usage_daily`, `usage_models_daily`, `replica_progress`). Each organization's Durable Object
//! (the system of record) replicates to the shard named in its wallet what
//! the dashboard aggregates: credit-side entries as rows and usage as
//! rollups per (day, feature, member), never one row per debit.
//!
//! A flush is one D1 batch (a transaction) that applies only when the
//! shard's own `replica_progress` for the organization equals the
//! watermark the object flushed from, and then advances it: repeating a
//! batch, or sending one to a shard that was restored or emptied, changes
//! nothing, and the answer tells the object where the shard really stands so
//! it can send again from there. Nothing is inserted with `OR IGNORE`: a row
//! a shard refuses fails the whole batch, which is retried.

use chrono::NaiveDate;
use serde::Deserialize;
use wallet_core::ledger::{EntryRow, ReplicaBatch};
use wallet_core::reports::{self, DateRange, ModelLine, Transaction, UsageLine, UsageRollups};
use wallet_core::time::from_millis;
use wallet_core::wallet::{EntryKind, PurchaseSource};
use wallet_core::Credits;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1Result, Env};

/// The shard binding of an organization, from the name in its wallet.
pub fn shard(env: &Env, name: &str) -> worker::Result<D1Database> {
    env.d1(name)
}

/// Whether a progress check matches: the organization's watermark in the
/// shard (0 when it has none) equals `?2`.
const PROGRESS_IS: &str =
    "coalesce((SELECT flushed_seq FROM replica_progress WHERE org_id = ?1), 0) = ?2";

fn insert_credit_rows() -> String {
    format!(
        "INSERT INTO ledger_entries (org_id, seq, id, kind, amount_units, balance_after_units,
  created_at_ms, usage_day, feature, user_id, project_id, hold_id, pack_id, amount_cents, currency,
  payment_intent_id, purchase_id, metadata, source)
SELECT ?1, json_extract(value, '$.seq'), json_extract(value, '$.id'), json_extract(value, '$.kind'),
  json_extract(value, '$.amount'), json_extract(value, '$.balance_after'),
  json_extract(value, '$.created_at_ms'), json_extract(value, '$.usage_day'),
  json_extract(value, '$.feature'), json_extract(value, '$.user_id'), json_extract(value, '$.project_id'),
  json_extract(value, '$.hold_id'), json_extract(value, '$.pack_id'), json_extract(value, '$.amount_cents'),
  json_extract(value, '$.currency'), json_extract(value, '$.payment_intent_id'),
  json_extract(value, '$.purchase_id'), json_extract(value, '$.metadata'),
  json_extract(value, '$.source')
FROM json_each(?3) WHERE {PROGRESS_IS}
ON CONFLICT (org_id, seq) DO UPDATE SET id = excluded.id, kind = excluded.kind,
  amount_units = excluded.amount_units, balance_after_units = excluded.balance_after_units,
  created_at_ms = excluded.created_at_ms, usage_day = excluded.usage_day,
  feature = excluded.feature, user_id = excluded.user_id, project_id = excluded.project_id,
  hold_id = excluded.hold_id, pack_id = excluded.pack_id, amount_cents = excluded.amount_cents,
  currency = excluded.currency, payment_intent_id = excluded.payment_intent_id,
  purchase_id = excluded.purchase_id, metadata = excluded.metadata, source = excluded.source"
    )
}

fn add_rollups() -> String {
    format!(
        "INSERT INTO usage_daily (org_id, day, feature, user_id, credits_units, entries)
SELECT ?1, json_extract(value, '$.day'), json_extract(value, '$.feature'),
  json_extract(value, '$.user_id'), json_extract(value, '$.credits_units'),
  json_extract(value, '$.entries')
FROM json_each(?3) WHERE {PROGRESS_IS}
ON CONFLICT (org_id, day, feature, user_id) DO UPDATE SET
  credits_units = credits_units + excluded.credits_units,
  entries = entries + excluded.entries"
    )
}

fn add_model_rollups() -> String {
    format!(
        "INSERT INTO usage_models_daily (org_id, day, model, credits_units, entries, input_tokens,
  output_tokens, unbilled_units)
SELECT ?1, json_extract(value, '$.day'), json_extract(value, '$.model'),
  json_extract(value, '$.credits_units'), json_extract(value, '$.entries'),
  json_extract(value, '$.input_tokens'), json_extract(value, '$.output_tokens'),
  json_extract(value, '$.unbilled_units')
FROM json_each(?3) WHERE {PROGRESS_IS}
ON CONFLICT (org_id, day, model) DO UPDATE SET
  credits_units = credits_units + excluded.credits_units,
  entries = entries + excluded.entries,
  input_tokens = input_tokens + excluded.input_tokens,
  output_tokens = output_tokens + excluded.output_tokens,
  unbilled_units = unbilled_units + excluded.unbilled_units"
    )
}

fn advance_progress() -> String {
    format!(
        "INSERT INTO replica_progress (org_id, flushed_seq) SELECT ?1, ?3 WHERE {PROGRESS_IS}
ON CONFLICT (org_id) DO UPDATE SET flushed_seq = excluded.flushed_seq"
    )
}

const READ_PROGRESS: &str =
    "SELECT coalesce((SELECT flushed_seq FROM replica_progress WHERE org_id = ?1), 0) AS flushed_seq";

#[derive(Deserialize)]
struct ProgressRow {
    flushed_seq: i64,
}

/// What a shard answered to one flush.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// The organization's watermark in the shard after the batch.
    pub shard_seq: u64,
    /// Whether the batch applied (the shard stood where the object thought).
    pub applied: bool,
    pub d1_rows_written: u64,
}

/// The organization's watermark in the shard (0 when it has none).
pub async fn progress(db: &D1Database, org_id: &str) -> worker::Result<u64> {
    let rows: Vec<ProgressRow> = db
        .prepare(READ_PROGRESS)
        .bind(&[JsValue::from_str(org_id)])?
        .all()
        .await?
        .results()?;
    Ok(rows.first().map_or(0, |p| p.flushed_seq.max(0) as u64))
}

/// A D1 ledger row as the stored entry format reads it.
#[derive(Deserialize)]
struct LedgerRow {
    seq: i64,
    id: String,
    kind: String,
    amount: i64,
    balance_after: i64,
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

/// Up to `limit` entries of `org_id` below `below_seq`, newest first, from a
/// shard that still holds every entry: organizations created before the
/// Durable Object kept them all replicated debits here too (`DB`), and their
/// objects copy back what they pruned.
pub async fn entries_below(
    db: &D1Database,
    org_id: &str,
    below_seq: u64,
    limit: u32,
) -> worker::Result<Vec<EntryRow>> {
    let rows: Vec<LedgerRow> = db
        .prepare(
            "SELECT seq, id, kind, amount_units AS amount, balance_after_units AS balance_after,
               created_at_ms, usage_day, feature, user_id, project_id, hold_id, pack_id,
               amount_cents, currency, payment_intent_id, purchase_id, metadata
             FROM ledger_entries WHERE org_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )
        .bind(&[
            JsValue::from_str(org_id),
            JsValue::from_f64(below_seq as f64),
            JsValue::from_f64(limit as f64),
        ])?
        .all()
        .await?
        .results()?;
    rows.into_iter()
        .map(|r| {
            let metadata = match r.metadata {
                None => None,
                Some(text) => Some(serde_json::from_str(&text).map_err(|_| {
                    worker::Error::RustError(format!("ledger row {} has bad metadata", r.id))
                })?),
            };
            Ok(EntryRow {
                seq: u64::try_from(r.seq).map_err(|_| {
                    worker::Error::RustError(format!("ledger row {} has a bad seq", r.id))
                })?,
                id: r.id,
                kind: r.kind,
                amount: r.amount,
                balance_after: r.balance_after,
                created_at_ms: r.created_at_ms,
                usage_day: r.usage_day,
                feature: r.feature,
                user_id: r.user_id,
                project_id: r.project_id,
                hold_id: r.hold_id,
                pack_id: r.pack_id,
                amount_cents: r.amount_cents,
                currency: r.currency,
                payment_intent_id: r.payment_intent_id,
                purchase_id: r.purchase_id,
                // Every purchase this old was the owner's.
                source: None,
                metadata,
                // Entries this old were all priced by amount.
                model: None,
                input_tokens: None,
                cached_input_tokens: None,
                output_tokens: None,
                rate_id: None,
                unbilled: None,
            })
        })
        .collect()
}

/// The JSON parameters of a batch: credit rows, rollups, and the rollups
/// by model (none when no entry was priced from usage).
pub fn batch_params(batch: &ReplicaBatch) -> (String, String, Option<String>) {
    (
        serde_json::to_string(&batch.credit_rows).expect("rows serialize"),
        serde_json::to_string(&batch.rollups).expect("rollups serialize"),
        (!batch.model_rollups.is_empty())
            .then(|| serde_json::to_string(&batch.model_rollups).expect("rollups serialize")),
    )
}

/// Sends the entries after `from_seq` through `through_seq` (already split
/// into `params` by [`batch_params`]) to the organization's shard.
pub async fn send(
    db: &D1Database,
    org_id: &str,
    from_seq: u64,
    through_seq: u64,
    params: &(String, String, Option<String>),
) -> worker::Result<Sent> {
    let org = JsValue::from_str(org_id);
    let from = JsValue::from_f64(from_seq as f64);
    let rows = JsValue::from_str(&params.0);
    let rollups = JsValue::from_str(&params.1);
    let through = JsValue::from_f64(through_seq as f64);
    let mut statements = vec![
        db.prepare(insert_credit_rows())
            .bind(&[org.clone(), from.clone(), rows])?,
        db.prepare(add_rollups())
            .bind(&[org.clone(), from.clone(), rollups])?,
    ];
    if let Some(by_model) = &params.2 {
        // Before the progress moves: every statement checks the same watermark.
        statements.push(db.prepare(add_model_rollups()).bind(&[
            org.clone(),
            from.clone(),
            JsValue::from_str(by_model),
        ])?);
    }
    statements.push(
        db.prepare(advance_progress())
            .bind(&[org.clone(), from, through])?,
    );
    statements.push(db.prepare(READ_PROGRESS).bind(&[org])?);
    let results = db.batch(statements).await?;
    let mut sent = Sent::default();
    for result in &results {
        sent.d1_rows_written += result.meta()?.and_then(|m| m.rows_written).unwrap_or(0) as u64;
    }
    let progress = results
        .last()
        .ok_or_else(|| worker::Error::RustError("D1 batch answered no results".into()))?
        .results::<ProgressRow>()?;
    sent.shard_seq = progress.first().map_or(0, |p| p.flushed_seq.max(0) as u64);
    sent.applied = sent.shard_seq == through_seq && through_seq != from_seq;
    Ok(sent)
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
    source: Option<String>,
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
            source: match self.source.as_deref() {
                None => None,
                Some("owner") => Some(PurchaseSource::Owner),
                Some("auto_top_up") => Some(PurchaseSource::AutoTopUp),
                Some(_) => return Err(bad("source")),
            },
        })
    }
}

/// Entries that are not AI usage (grants, purchases, refunds and disputes),
/// newest first, below `before_seq`: at most `limit` of them and whether
/// more follow. The kind list matches the
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
           currency, source
         FROM ledger_entries
         WHERE org_id = ?1 AND kind IN ({}) AND seq < ?2
         ORDER BY seq DESC LIMIT ?3",
        reports::transaction_kinds_sql()
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
struct ModelRow {
    model: String,
    credits_units: i64,
    entries: i64,
    input_tokens: i64,
    output_tokens: i64,
    unbilled_units: i64,
}

impl ModelRow {
    fn into_line(self) -> ModelLine {
        ModelLine {
            model: self.model,
            credits: Credits::from_units(self.credits_units),
            count: self.entries,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            unbilled: Credits::from_units(self.unbilled_units),
        }
    }
}

#[derive(Deserialize)]
struct SumRow {
    credits_units: i64,
}

/// Usage per model over `?2..=?3` (most credits first).
fn usage_by_model() -> String {
    format!(
        "SELECT model, sum(credits_units) AS credits_units, sum(entries) AS entries,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(unbilled_units) AS unbilled_units
         FROM usage_models_daily WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3
         GROUP BY model ORDER BY credits_units DESC, model LIMIT {}",
        reports::MAX_USAGE_MODELS
    )
}

/// The rollup sums of one usage report, read from `usage_daily` and
/// `usage_models_daily` only (never the raw ledger) in one D1 batch, so all
/// five come from the same snapshot.
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
    let in_range = &in_range;
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
            .bind(in_range)?,
            // Features come from configuration: few, but bounded anyway.
            db.prepare(grouped("feature", 1000)).bind(in_range)?,
            // One more than is shown, to tell the client the list was cut.
            db.prepare(grouped("user_id", reports::MAX_USAGE_MEMBERS + 1))
                .bind(in_range)?,
            db.prepare(
                "SELECT coalesce(sum(credits_units), 0) AS credits_units
                 FROM usage_daily WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3",
            )
            .bind(&[
                org,
                JsValue::from_str(&trailing.from.to_string()),
                JsValue::from_str(&trailing.to.to_string()),
            ])?,
            db.prepare(usage_by_model()).bind(in_range)?,
        ])
        .await?;
    let [daily, by_feature, by_member, window, by_model] = <[D1Result; 5]>::try_from(results)
        .map_err(|_| worker::Error::RustError("D1 batch answered a wrong count".into()))?;
    Ok(UsageRollups {
        daily: daily_sums(&daily)?,
        by_feature: lines(&by_feature)?,
        by_member: lines(&by_member)?,
        trailing: Credits::from_units(
            window
                .results::<SumRow>()?
                .first()
                .map_or(0, |r| r.credits_units),
        ),
        by_model: by_model
            .results::<ModelRow>()?
            .into_iter()
            .map(ModelRow::into_line)
            .collect(),
    })
}

/// The per-day sums of a usage report's first statement.
fn daily_sums(result: &D1Result) -> worker::Result<Vec<(NaiveDate, Credits, i64)>> {
    let bad_day = || worker::Error::RustError("usage_daily has a bad day".into());
    result
        .results::<DayRow>()?
        .into_iter()
        .map(|r| {
            let day = r.day.parse().map_err(|_| bad_day())?;
            Ok((day, Credits::from_units(r.credits_units), r.entries))
        })
        .collect()
}

/// The lines of a grouped usage statement (by feature or by member).
fn lines(result: &D1Result) -> worker::Result<Vec<UsageLine>> {
    Ok(result
        .results::<KeyRow>()?
        .into_iter()
        .map(KeyRow::into_line)
        .collect())
}
