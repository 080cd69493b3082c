//! The Durable Object's own SQLite storage, the organization's system of
//! record: the one home of every table in it (wallet, ops — the ledger and
//! the idempotency records —, holds, purchases, credited payments and the
//! replica watermark). Reads serve decisions ([`Store`] implements
//! `StoredState`), the ledger route and the replica flush; a decision's
//! writes become [`Statement`]s the object commits in one `transactionSync`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use wallet_core::archive::{Block, Checkpoint, EntryRange, SegmentsQuery};
use wallet_core::audit::{AuditQuery, AuditRecord};
use wallet_core::auto_top_up::AutoTopUp;
use wallet_core::decision::{Loaded, Reads, StoredReply, StoredState, WalletWrite, Write};
use wallet_core::events::{listed_json, Alerts, DeliveryStatus, Event, EventsQuery};
use wallet_core::ledger::{EntryRow, LedgerQuery};
use wallet_core::purchase::{CreditedPayment, Purchase};
use wallet_core::time::from_millis;
use wallet_core::wallet::{seq_of, Hold, StoredWallet};
use wallet_core::{Credits, Wallet};
use worker::{SqlStorage, SqlStorageValue};

mod entries;

use entries::entry_text;
pub use entries::{has_entries_after, live_entries, oldest_after, restore_legacy_entries};

pub type Statement = (&'static str, Vec<SqlStorageValue>);

/// The largest integer a binding carries exactly to JavaScript (2^53 - 1).
const JS_SAFE_MAX: i64 = (1 << 53) - 1;

/// The first schema; later versions are the steps in [`MIGRATIONS`].
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS wallet (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  org_id TEXT NOT NULL,
  owner_id TEXT NOT NULL,
  stripe_customer_id TEXT,
  balance INTEGER NOT NULL,
  held INTEGER NOT NULL,
  daily_cap INTEGER NOT NULL,
  day TEXT NOT NULL,
  spent_today INTEGER NOT NULL,
  held_today INTEGER NOT NULL,
  next_seq INTEGER NOT NULL,
  clock_ms INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL
);
-- One row per accepted operation: its idempotency record (key, request
-- fingerprint, original response; pruned after the retention period) and,
-- when credits moved, the ledger entry (kept forever). Rows past the replica
-- watermark are the outbox. created_at_ms never decreases as seq grows (the
-- wallet clock never moves back), so seq order is time order.
CREATE TABLE IF NOT EXISTS ops (
  seq INTEGER PRIMARY KEY,
  idempotency_key TEXT,
  fingerprint TEXT,
  status INTEGER,
  response TEXT,
  entry TEXT,
  created_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ops_by_key ON ops (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS holds (
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  record TEXT NOT NULL,
  closed_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS holds_active ON holds (status) WHERE status = 'active';
-- Replication bookkeeping. flushed_seq is no longer written: the shard's
-- own replica_progress says how far it holds the ledger.
CREATE TABLE IF NOT EXISTS replica (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  flushed_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO replica (id, flushed_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS purchases (
  id TEXT PRIMARY KEY,
  payment_intent_id TEXT,
  record TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS purchases_by_intent ON purchases (payment_intent_id)
  WHERE payment_intent_id IS NOT NULL;
-- One row per PaymentIntent whose credits were decided: the permanent
-- at-most-once marker. seq is the ledger entry that granted its credits,
-- NULL when none did (disputed before it was credited).
CREATE TABLE IF NOT EXISTS credited_payments (
  payment_intent_id TEXT PRIMARY KEY,
  seq INTEGER,
  record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL
);
";

/// Schema steps after version 1, in order: step `i` takes version `i + 1`
/// to `i + 2`. Storage written by an older release is brought forward at
/// load; a step never runs twice.
const MIGRATIONS: &[&str] = &[
    // 2: the ledger shard assigned at signup (NULL: created before shards,
    // replicated to `DB`); the prune cursor (ops rows at or below it have
    // had their idempotency fields pruned).
    // legacy_restored: for an organization created before the Durable Object
    // kept every entry, whether the entries it had pruned were copied back
    // from its D1 ledger (`DB`).
    "ALTER TABLE wallet ADD COLUMN ledger_shard TEXT;
     ALTER TABLE replica ADD COLUMN pruned_seq INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE replica ADD COLUMN legacy_restored INTEGER NOT NULL DEFAULT 0;",
    // 3: feature caps and today's spend per feature (JSON), and the audit
    // trail of settings changes (kept forever, like the ledger).
    "ALTER TABLE wallet ADD COLUMN features TEXT;
     CREATE TABLE audit (
       seq INTEGER PRIMARY KEY AUTOINCREMENT,
       record TEXT NOT NULL
     );",
    // 4: auto top-up and alert settings with their state (JSON; NULL until
    // configured), and the event outbox: every event, in order, with its
    // delivery status. Undelivered events are what the queue consumer sends.
    "ALTER TABLE wallet ADD COLUMN automation TEXT;
     CREATE TABLE events (
       seq INTEGER PRIMARY KEY,
       type TEXT NOT NULL,
       body TEXT NOT NULL,
       created_at_ms INTEGER NOT NULL,
       status TEXT NOT NULL DEFAULT 'pending',
       attempts INTEGER NOT NULL DEFAULT 0,
       updated_at_ms INTEGER
     );
     CREATE INDEX events_undelivered ON events (seq) WHERE status != 'delivered';",
    // 5: the ledger's sealed segments (SPEC §11): one checkpoint per segment
    // put in R2, whose entries then left `ops`; and how far the storage
    // alert went (0, 50 or 80: `wallet.storage_high` fires once per level).
    "CREATE TABLE ledger_segments (
       first_seq INTEGER PRIMARY KEY,
       last_seq INTEGER NOT NULL,
       entries INTEGER NOT NULL,
       credits_added INTEGER NOT NULL,
       credits_removed INTEGER NOT NULL,
       balance_after INTEGER NOT NULL,
       first_at_ms INTEGER NOT NULL,
       last_at_ms INTEGER NOT NULL,
       sha256 TEXT NOT NULL,
       bytes INTEGER NOT NULL,
       archived_at_ms INTEGER NOT NULL
     );
     ALTER TABLE replica ADD COLUMN storage_alerted_percent INTEGER NOT NULL DEFAULT 0;",
    // 6: compact entries (SPEC §11): the entry's fields as columns instead
    // of a JSON text, and a debit's answer rebuilt from its entry.
    entries::MIGRATION_COMPACT_ENTRIES,
    // 7: where each block of a segment begins (`archive::Block`), so a
    // page reads one block; NULL for segments sealed before blocks.
    "ALTER TABLE ledger_segments ADD COLUMN blocks TEXT;",
];

#[derive(Deserialize)]
struct VersionRow {
    version: i64,
}

pub fn create_schema(sql: &SqlStorage) -> worker::Result<()> {
    sql.exec(SCHEMA_V1, None)?;
    let rows: Vec<VersionRow> = sql
        .exec("SELECT version FROM schema_version WHERE id = 1", None)?
        .to_array()?;
    let version = rows.first().map_or(1, |r| r.version);
    for (step, migration) in MIGRATIONS.iter().enumerate() {
        let target = step as i64 + 2;
        if version < target {
            sql.exec(migration, None)?;
            sql.exec(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                vec![int(target)],
            )?;
        }
    }
    Ok(())
}

fn int(value: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(value)
}

fn text(value: impl Into<String>) -> SqlStorageValue {
    SqlStorageValue::String(value.into())
}

fn opt_text(value: Option<&str>) -> SqlStorageValue {
    value.map_or(SqlStorageValue::Null, text)
}

fn corrupt(what: &str) -> worker::Error {
    worker::Error::RustError(format!("stored wallet is unreadable: {what}"))
}

#[derive(Deserialize)]
struct WalletRow {
    org_id: String,
    owner_id: String,
    stripe_customer_id: Option<String>,
    ledger_shard: Option<String>,
    features: Option<String>,
    automation: Option<String>,
    balance: i64,
    held: i64,
    daily_cap: i64,
    day: String,
    spent_today: i64,
    held_today: i64,
    next_seq: i64,
    clock_ms: i64,
    created_at_ms: i64,
}

#[derive(Deserialize)]
struct RecordRow {
    record: String,
}

/// Loads the wallet and its active holds; `None` when the organization has
/// none. A wallet whose held figures disagree with its active holds is an
/// error: the object refuses to serve rather than decide on it.
pub fn load(sql: &SqlStorage) -> worker::Result<Option<Wallet>> {
    let rows: Vec<WalletRow> = sql
        .exec("SELECT * FROM wallet WHERE id = 1", None)?
        .to_array()?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let records: Vec<RecordRow> = sql
        .exec("SELECT record FROM holds WHERE status = 'active'", None)?
        .to_array()?;
    let holds = records
        .into_iter()
        .map(|r| serde_json::from_str::<Hold>(&r.record).map_err(|_| corrupt("hold")))
        .collect::<worker::Result<Vec<Hold>>>()?;
    let features: FeatureState = match row.features.as_deref() {
        None => FeatureState::default(),
        Some(text) => serde_json::from_str(text).map_err(|_| corrupt("features"))?,
    };
    let created_at = from_millis(row.created_at_ms).ok_or_else(|| corrupt("created_at"))?;
    let automation: Automation = match row.automation.as_deref() {
        None => Automation::new(created_at),
        Some(text) => serde_json::from_str(text).map_err(|_| corrupt("automation"))?,
    };
    let stored = StoredWallet {
        org_id: row.org_id,
        owner_id: row.owner_id,
        stripe_customer_id: row.stripe_customer_id,
        ledger_shard: row.ledger_shard,
        balance: Credits::from_units(row.balance),
        held: Credits::from_units(row.held),
        daily_cap: Credits::from_units(row.daily_cap),
        day: row.day.parse().map_err(|_| corrupt("day"))?,
        spent_today: Credits::from_units(row.spent_today),
        held_today: Credits::from_units(row.held_today),
        next_seq: u64::try_from(row.next_seq).map_err(|_| corrupt("next_seq"))?,
        clock: from_millis(row.clock_ms).ok_or_else(|| corrupt("clock"))?,
        created_at,
        feature_caps: features.caps,
        feature_spent_today: features.spent_today,
        auto_top_up: automation.auto_top_up,
        alerts: automation.alerts,
        next_event_seq: automation.next_event_seq,
    };
    let wallet =
        Wallet::restore(stored, holds).map_err(|e| worker::Error::RustError(e.to_string()))?;
    // The balance is the running sum of the ledger: the newest entry's
    // balance_after must be the stored balance.
    if let Some(entry) = entries::newest_entry(sql)? {
        if entry.balance_after != wallet.balance().units() {
            return Err(worker::Error::RustError(format!(
                "stored wallet is inconsistent: balance {} but entry {} ends at {}",
                wallet.balance(),
                entry.id,
                Credits::from_units(entry.balance_after)
            )));
        }
    }
    check_against_checkpoint(sql, wallet.balance())?;
    Ok(Some(wallet))
}

/// The statements that persist a decision: its rows, then the wallet row.
pub fn statements(writes: &[Write], wallet: Option<&(Wallet, WalletWrite)>) -> Vec<Statement> {
    let mut out: Vec<Statement> = writes
        .iter()
        .map(|write| match write {
            Write::Op(op) => entries::insert_op(op),
            Write::Hold(hold) => upsert_hold(hold),
            Write::Purchase(purchase) => upsert_purchase(purchase),
            Write::CreditedPayment(payment) => upsert_credited_payment(payment),
            Write::Audit(record) => insert_audit(record),
            Write::Event(event) => insert_event(event),
        })
        .collect();
    if let Some((wallet, how)) = wallet {
        out.push(match how {
            WalletWrite::Insert => insert_wallet(&wallet.stored()),
            WalletWrite::Update => update_wallet(&wallet.stored()),
        });
    }
    out
}

/// The wallet's `features` column: caps and today's spend per feature.
#[derive(Default, Serialize, Deserialize)]
struct FeatureState {
    caps: BTreeMap<String, Credits>,
    spent_today: BTreeMap<String, Credits>,
}

fn features_json(w: &StoredWallet) -> SqlStorageValue {
    if w.feature_caps.is_empty() && w.feature_spent_today.is_empty() {
        return SqlStorageValue::Null;
    }
    text(
        serde_json::to_string(&FeatureState {
            caps: w.feature_caps.clone(),
            spent_today: w.feature_spent_today.clone(),
        })
        .expect("features serialize"),
    )
}

/// The wallet's `automation` column: auto top-up, alerts and the event
/// counter. NULL while all of them are as a new wallet has them, so a wallet
/// that uses none of it writes no more than before.
#[derive(Serialize, Deserialize, PartialEq)]
struct Automation {
    auto_top_up: AutoTopUp,
    alerts: Alerts,
    next_event_seq: u64,
}

impl Automation {
    fn new(created_at: chrono::DateTime<chrono::Utc>) -> Automation {
        Automation {
            auto_top_up: AutoTopUp::new(created_at),
            alerts: Alerts::default(),
            next_event_seq: 1,
        }
    }
}

fn automation_json(w: &StoredWallet) -> SqlStorageValue {
    let automation = Automation {
        auto_top_up: w.auto_top_up.clone(),
        alerts: w.alerts.clone(),
        next_event_seq: w.next_event_seq,
    };
    let mut untouched = Automation::new(w.created_at);
    // The month moves on by itself; it alone is no reason to store a row.
    untouched.auto_top_up.month = w.auto_top_up.month.clone();
    if automation == untouched {
        return SqlStorageValue::Null;
    }
    text(serde_json::to_string(&automation).expect("automation serializes"))
}

fn insert_wallet(w: &StoredWallet) -> Statement {
    (
        "INSERT INTO wallet (id, org_id, owner_id, stripe_customer_id, ledger_shard, features,
           automation, balance, held, daily_cap, day, spent_today, held_today, next_seq, clock_ms,
           created_at_ms)
         VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            text(&w.org_id),
            text(&w.owner_id),
            opt_text(w.stripe_customer_id.as_deref()),
            opt_text(w.ledger_shard.as_deref()),
            features_json(w),
            automation_json(w),
            int(w.balance.units()),
            int(w.held.units()),
            int(w.daily_cap.units()),
            text(w.day.to_string()),
            int(w.spent_today.units()),
            int(w.held_today.units()),
            int(w.next_seq as i64),
            int(w.clock.timestamp_millis()),
            int(w.created_at.timestamp_millis()),
        ],
    )
}

fn update_wallet(w: &StoredWallet) -> Statement {
    (
        "UPDATE wallet SET stripe_customer_id = ?, features = ?, automation = ?, balance = ?,
           held = ?, daily_cap = ?, day = ?, spent_today = ?, held_today = ?, next_seq = ?,
           clock_ms = ?
         WHERE id = 1",
        vec![
            opt_text(w.stripe_customer_id.as_deref()),
            features_json(w),
            automation_json(w),
            int(w.balance.units()),
            int(w.held.units()),
            int(w.daily_cap.units()),
            text(w.day.to_string()),
            int(w.spent_today.units()),
            int(w.held_today.units()),
            int(w.next_seq as i64),
            int(w.clock.timestamp_millis()),
        ],
    )
}

fn upsert_hold(hold: &Hold) -> Statement {
    (
        "INSERT INTO holds (id, status, record, closed_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
           closed_at_ms = excluded.closed_at_ms",
        vec![
            text(&hold.id),
            text(hold.status.as_str()),
            text(serde_json::to_string(hold).expect("holds serialize")),
            hold.closed_at
                .map_or(SqlStorageValue::Null, |t| int(t.timestamp_millis())),
        ],
    )
}

fn insert_audit(record: &AuditRecord) -> Statement {
    (
        "INSERT INTO audit (record) VALUES (?)",
        vec![text(
            serde_json::to_string(record).expect("audit records serialize"),
        )],
    )
}

fn insert_event(event: &Event) -> Statement {
    (
        "INSERT INTO events (seq, type, body, created_at_ms) VALUES (?, ?, ?, ?)",
        vec![
            int(event.seq as i64),
            text(event.event_type.as_str()),
            text(event.body.clone()),
            int(event.created_at.timestamp_millis()),
        ],
    )
}

#[derive(Deserialize)]
struct EventRow {
    seq: i64,
    body: String,
    status: String,
    attempts: i64,
}

impl EventRow {
    fn status(&self) -> worker::Result<DeliveryStatus> {
        DeliveryStatus::parse(&self.status).ok_or_else(|| corrupt("event status"))
    }
}

/// One page of events, newest first, each with its delivery; and whether
/// older ones follow.
pub fn events_page(
    sql: &SqlStorage,
    query: &EventsQuery,
) -> worker::Result<(Vec<serde_json::Value>, bool)> {
    let below = query.before_seq.map_or(i64::MAX, |s| s as i64);
    let rows: Vec<EventRow> = sql
        .exec(
            "SELECT seq, body, status, attempts FROM events WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            vec![int(below), int(query.limit as i64 + 1)],
        )?
        .to_array()?;
    let has_more = rows.len() > query.limit as usize;
    let events = rows
        .iter()
        .take(query.limit as usize)
        .map(|r| {
            listed_json(&r.body, r.status()?, r.attempts.max(0) as u32)
                .map_err(worker::Error::RustError)
        })
        .collect::<worker::Result<Vec<_>>>()?;
    Ok((events, has_more))
}

/// An event waiting for its receiver: `(seq, body, attempts)`.
pub type PendingEvent = (u64, String, u32);

/// The oldest undelivered events, in order.
pub fn events_pending(sql: &SqlStorage, limit: u32) -> worker::Result<Vec<PendingEvent>> {
    let rows: Vec<EventRow> = sql
        .exec(
            "SELECT seq, body, status, attempts FROM events WHERE status != 'delivered'
             ORDER BY seq LIMIT ?",
            vec![int(limit as i64)],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .map(|r| (r.seq.max(0) as u64, r.body, r.attempts.max(0) as u32))
        .collect())
}

/// The newest undelivered event's seq, if any is.
pub fn newest_undelivered(sql: &SqlStorage) -> worker::Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Newest {
        seq: Option<i64>,
    }
    let rows: Vec<Newest> = sql
        .exec(
            "SELECT max(seq) AS seq FROM events WHERE status != 'delivered'",
            None,
        )?
        .to_array()?;
    Ok(rows
        .first()
        .and_then(|r| r.seq)
        .map(|seq| seq.max(0) as u64))
}

/// Records one delivery attempt of event `seq`; answers its attempts so far
/// (0 when no such event waits: delivered already, or unknown).
pub fn record_attempt(
    sql: &SqlStorage,
    seq: u64,
    delivered: bool,
    now_ms: i64,
) -> worker::Result<u32> {
    #[derive(Deserialize)]
    struct Attempts {
        attempts: i64,
    }
    let status = if delivered { "delivered" } else { "failing" };
    let rows: Vec<Attempts> = sql
        .exec(
            "UPDATE events SET status = ?, attempts = attempts + 1, updated_at_ms = ?
             WHERE seq = ? AND status != 'delivered' RETURNING attempts",
            vec![text(status), int(now_ms), int(seq as i64)],
        )?
        .to_array()?;
    Ok(rows.first().map_or(0, |r| r.attempts.max(0) as u32))
}

#[derive(Deserialize)]
struct AuditRow {
    seq: i64,
    record: String,
}

/// One page of the audit trail, newest first: `(seq, record)` pairs and
/// whether older ones follow.
pub fn audit_page(
    sql: &SqlStorage,
    query: &AuditQuery,
) -> worker::Result<(Vec<(u64, AuditRecord)>, bool)> {
    let below = query.before_seq.map_or(i64::MAX, |s| s as i64);
    let rows: Vec<AuditRow> = sql
        .exec(
            "SELECT seq, record FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            vec![int(below), int(query.limit as i64 + 1)],
        )?
        .to_array()?;
    let has_more = rows.len() > query.limit as usize;
    let records = rows
        .into_iter()
        .take(query.limit as usize)
        .map(|r| {
            let record = serde_json::from_str(&r.record).map_err(|_| corrupt("audit record"))?;
            Ok((r.seq.max(0) as u64, record))
        })
        .collect::<worker::Result<Vec<_>>>()?;
    Ok((records, has_more))
}

fn upsert_purchase(purchase: &Purchase) -> Statement {
    (
        "INSERT INTO purchases (id, payment_intent_id, record, created_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET payment_intent_id = excluded.payment_intent_id,
           record = excluded.record",
        vec![
            text(&purchase.id),
            opt_text(purchase.payment_intent_id.as_deref()),
            text(serde_json::to_string(purchase).expect("purchases serialize")),
            int(purchase.created_at.timestamp_millis()),
        ],
    )
}

fn upsert_credited_payment(payment: &CreditedPayment) -> Statement {
    (
        "INSERT INTO credited_payments (payment_intent_id, seq, record) VALUES (?, ?, ?)
         ON CONFLICT (payment_intent_id) DO UPDATE SET record = excluded.record",
        vec![
            text(&payment.payment_intent_id),
            payment
                .entry_seq
                .map_or(SqlStorageValue::Null, |seq| int(seq as i64)),
            text(serde_json::to_string(payment).expect("payments serialize")),
        ],
    )
}

/// A purchase by its id.
pub fn purchase(sql: &SqlStorage, id: &str) -> worker::Result<Option<Purchase>> {
    read_record(
        sql,
        "SELECT record FROM purchases WHERE id = ?",
        id,
        "purchase",
    )
}

/// A decision's reads, from this object's tables.
pub struct Store<'a>(pub &'a SqlStorage);

impl StoredState for Store<'_> {
    type Error = worker::Error;

    fn load(&self, reads: &Reads) -> worker::Result<Loaded> {
        let sql = self.0;
        let mut loaded = Loaded {
            replies: stored_replies(sql, &reads.idempotency_keys)?,
            ..Loaded::default()
        };
        if let Some(id) = &reads.closed_hold_id {
            loaded.closed_hold =
                read_record(sql, "SELECT record FROM holds WHERE id = ?", id, "hold")?;
            let capture_seq = loaded
                .closed_hold
                .as_ref()
                .and_then(|h| h.capture_entry_id.as_deref())
                .and_then(seq_of);
            if let Some(seq) = capture_seq {
                loaded.first_capture_response = op_response(sql, seq)?;
            }
        }
        if let Some(id) = &reads.purchase_id {
            loaded.purchase = purchase(sql, id)?;
        }
        if let Some(id) = &reads.payment_intent_id {
            loaded.purchase_by_intent = read_record(
                sql,
                "SELECT record FROM purchases WHERE payment_intent_id = ? ORDER BY created_at_ms LIMIT 1",
                id,
                "purchase",
            )?;
            loaded.credited_payment = read_record(
                sql,
                "SELECT record FROM credited_payments WHERE payment_intent_id = ?",
                id,
                "credited payment",
            )?;
        }
        Ok(loaded)
    }
}

/// The original answers to `keys`, by key.
fn stored_replies(
    sql: &SqlStorage,
    keys: &[String],
) -> worker::Result<HashMap<String, StoredReply>> {
    #[derive(Deserialize)]
    struct KeyedReply {
        seq: u64,
        idempotency_key: String,
        fingerprint: String,
        status: u16,
        response: Option<String>,
    }
    let rows: Vec<KeyedReply> = match keys {
        [] => Vec::new(),
        [key] => sql
            .exec(
                "SELECT seq, idempotency_key, fingerprint, status, response FROM ops WHERE idempotency_key = ?",
                vec![text(key.as_str())],
            )?
            .to_array()?,
        _ => sql
            .exec(
                "SELECT seq, idempotency_key, fingerprint, status, response FROM ops
                 WHERE idempotency_key IN (SELECT value FROM json_each(?))",
                vec![text(serde_json::to_string(keys).expect("keys serialize"))],
            )?
            .to_array()?,
    };
    let mut replies = HashMap::with_capacity(rows.len());
    for r in rows {
        let response = match r.response {
            Some(text) => text,
            None => entries::debit_answer(sql, r.seq)?
                .ok_or_else(|| corrupt(&format!("the answer of operation {}", r.seq)))?,
        };
        let reply = StoredReply {
            fingerprint: r.fingerprint,
            status: r.status,
            response,
        };
        replies.insert(r.idempotency_key, reply);
    }
    Ok(replies)
}

#[derive(Deserialize)]
struct ResponseRow {
    response: Option<String>,
}

fn op_response(sql: &SqlStorage, seq: u64) -> worker::Result<Option<String>> {
    let rows: Vec<ResponseRow> = sql
        .exec(
            "SELECT response FROM ops WHERE seq = ?",
            vec![int(seq as i64)],
        )?
        .to_array()?;
    Ok(rows.into_iter().next().and_then(|r| r.response))
}

fn read_record<T: serde::de::DeserializeOwned>(
    sql: &SqlStorage,
    query: &str,
    key: &str,
    what: &str,
) -> worker::Result<Option<T>> {
    let rows: Vec<RecordRow> = sql.exec(query, vec![text(key)])?.to_array()?;
    rows.into_iter()
        .next()
        .map(|r| serde_json::from_str(&r.record).map_err(|_| corrupt(what)))
        .transpose()
}

#[derive(Deserialize)]
struct TimeRow {
    seq: i64,
    created_at_ms: i64,
}

/// The lowest seq whose operation happened at or after `at_ms` (one past
/// the last seq when none did). A binary search over the primary key: seq
/// order is time order, so no time index is written per entry.
fn first_seq_at_or_after(sql: &SqlStorage, at_ms: i64, end_seq: i64) -> worker::Result<i64> {
    let (mut low, mut high) = (1i64, end_seq);
    while low < high {
        let mid = low + (high - low) / 2;
        let rows: Vec<TimeRow> = sql
            .exec(
                "SELECT seq, created_at_ms FROM ops WHERE seq >= ? ORDER BY seq LIMIT 1",
                vec![int(mid)],
            )?
            .to_array()?;
        match rows.first() {
            Some(row) if row.created_at_ms < at_ms => low = row.seq + 1,
            _ => high = mid,
        }
    }
    Ok(low)
}

/// The live part of a ledger page: up to `limit + 1` entry texts, newest
/// first, and the range the page asks for, for the archived part.
pub fn ledger_live(
    sql: &SqlStorage,
    query: &LedgerQuery,
    next_seq: u64,
) -> worker::Result<(Vec<String>, EntryRange)> {
    let end = next_seq as i64;
    let before = query.before_seq.map_or(end, |s| (s as i64).min(end));
    let mut below = before;
    if let Some(to_ms) = query.to_ms {
        below = below.min(first_seq_at_or_after(sql, to_ms, end)?);
    }
    let from = match query.from_ms {
        Some(from_ms) => first_seq_at_or_after(sql, from_ms, end)?,
        None => 0,
    };
    let archived_through = last_checkpoint(sql)?.map_or(0, |c| c.last_seq);
    let rows = entries::live_newest_first(sql, archived_through, from, below, query.limit + 1)?;
    // Archived entries are older than every live one: their seq bound is
    // the cursor's, their time bounds the query's own.
    let range = EntryRange {
        from_seq: 0,
        below_seq: before.max(0) as u64,
        from_ms: query.from_ms.unwrap_or(i64::MIN),
        to_ms: query.to_ms.unwrap_or(i64::MAX),
    };
    Ok((rows.iter().map(entry_text).collect(), range))
}

/// A ledger page as the Worker reads it: `{"entries":[…],"has_more":…}`,
/// the stored texts spliced in as they are.
pub fn ledger_page_json(texts: &[String], limit: u32) -> String {
    let has_more = texts.len() > limit as usize;
    let mut out = String::with_capacity(texts.len() * 420 + 32);
    out.push_str("{\"entries\":[");
    for (i, text) in texts.iter().take(limit as usize).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(text);
    }
    out.push_str("],\"has_more\":");
    out.push_str(if has_more { "true" } else { "false" });
    out.push('}');
    out
}

#[derive(Deserialize)]
struct CheckpointRow {
    first_seq: i64,
    last_seq: i64,
    entries: i64,
    credits_added: i64,
    credits_removed: i64,
    balance_after: i64,
    first_at_ms: i64,
    last_at_ms: i64,
    sha256: String,
    bytes: i64,
    archived_at_ms: i64,
    /// `[[first_seq, first_at_ms, offset], …]`; NULL before blocks.
    blocks: Option<String>,
}

/// A segment's blocks in their column: one `[first_seq, first_at_ms, offset]` each.
fn blocks_json(blocks: &[Block]) -> SqlStorageValue {
    if blocks.is_empty() {
        return SqlStorageValue::Null;
    }
    let triples: Vec<(u64, i64, u64)> = blocks
        .iter()
        .map(|b| (b.first_seq, b.first_at_ms, b.offset))
        .collect();
    text(serde_json::to_string(&triples).expect("blocks serialize"))
}

impl CheckpointRow {
    fn checkpoint(self) -> worker::Result<Checkpoint> {
        let triples: Vec<(u64, i64, u64)> = match self.blocks.as_deref() {
            Some(text) => serde_json::from_str(text).map_err(|_| corrupt("segment blocks"))?,
            None => Vec::new(),
        };
        let blocks = triples
            .into_iter()
            .map(|(first_seq, first_at_ms, offset)| Block {
                first_seq,
                first_at_ms,
                offset,
            })
            .collect();
        Ok(Checkpoint {
            first_seq: self.first_seq.max(0) as u64,
            last_seq: self.last_seq.max(0) as u64,
            entries: self.entries.max(0) as u64,
            credits_added: self.credits_added,
            credits_removed: self.credits_removed,
            balance_after: self.balance_after,
            first_at_ms: self.first_at_ms,
            last_at_ms: self.last_at_ms,
            sha256: self.sha256,
            bytes: self.bytes.max(0) as u64,
            archived_at_ms: self.archived_at_ms,
            blocks,
        })
    }
}

fn checkpoints(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> worker::Result<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = sql.exec(query, bindings)?.to_array()?;
    rows.into_iter().map(CheckpointRow::checkpoint).collect()
}

/// The newest segment's checkpoint: every seq at or below its `last_seq`
/// is archived.
pub fn last_checkpoint(sql: &SqlStorage) -> worker::Result<Option<Checkpoint>> {
    let newest = checkpoints(
        sql,
        "SELECT * FROM ledger_segments ORDER BY first_seq DESC LIMIT 1",
        vec![],
    )?;
    Ok(newest.into_iter().next())
}

/// The oldest segment holding seqs after `after_seq`, if any does.
pub fn checkpoint_after(sql: &SqlStorage, after_seq: u64) -> worker::Result<Option<Checkpoint>> {
    let found = checkpoints(
        sql,
        "SELECT * FROM ledger_segments WHERE last_seq > ? ORDER BY first_seq LIMIT 1",
        vec![int(after_seq as i64)],
    )?;
    Ok(found.into_iter().next())
}

/// One page of checkpoints, oldest first, and whether more follow.
pub fn checkpoints_page(
    sql: &SqlStorage,
    query: &SegmentsQuery,
) -> worker::Result<(Vec<Checkpoint>, bool)> {
    let mut page = checkpoints(
        sql,
        "SELECT * FROM ledger_segments WHERE first_seq > ? ORDER BY first_seq LIMIT ?",
        vec![
            int(query.after_first_seq.map_or(0, |s| s as i64)),
            int(query.limit as i64 + 1),
        ],
    )?;
    let has_more = page.len() > query.limit as usize;
    page.truncate(query.limit as usize);
    Ok((page, has_more))
}

/// Up to `limit` checkpoints of segments that may hold entries of `range`,
/// newest first, below `below_first_seq`.
pub fn checkpoints_meeting(
    sql: &SqlStorage,
    range: &EntryRange,
    below_first_seq: u64,
    limit: u32,
) -> worker::Result<Vec<Checkpoint>> {
    // Bounds past JavaScript's safe integers are clamped: no seq or time
    // comes near them.
    let bound = |v: u64| int(v.min(JS_SAFE_MAX as u64) as i64);
    let time = |ms: i64| int(ms.clamp(-JS_SAFE_MAX, JS_SAFE_MAX));
    checkpoints(
        sql,
        "SELECT * FROM ledger_segments WHERE first_seq < ? AND first_seq < ? AND last_seq >= ?
           AND first_at_ms < ? AND last_at_ms >= ? ORDER BY first_seq DESC LIMIT ?",
        vec![
            bound(below_first_seq),
            bound(range.below_seq),
            bound(range.from_seq),
            time(range.to_ms),
            time(range.from_ms),
            int(i64::from(limit)),
        ],
    )
}

#[derive(Deserialize)]
struct ArchiveTotals {
    segments: i64,
    archived_entries: Option<i64>,
}

/// How many segments there are and the entries they hold.
pub fn archive_totals(sql: &SqlStorage) -> worker::Result<(u64, u64)> {
    let rows: Vec<ArchiveTotals> = sql
        .exec(
            "SELECT count(*) AS segments, sum(entries) AS archived_entries FROM ledger_segments",
            None,
        )?
        .to_array()?;
    Ok(rows.first().map_or((0, 0), |r| {
        (
            r.segments.max(0) as u64,
            r.archived_entries.unwrap_or(0).max(0) as u64,
        )
    }))
}

/// Records a segment confirmed in R2 and removes its entries from `ops`
/// (one transaction). A row still keeping an idempotency record or a first
/// answer (a capture's, answered again to a repeated capture) stays, entry
/// included (a debit's answer is rebuilt from it), until the retention
/// prunes it: a retried request still gets its first answer. Reads of live
/// entries start after the last checkpoint, so it is not read twice.
pub fn archive_statements(c: &Checkpoint) -> Vec<Statement> {
    let (first, last) = (int(c.first_seq as i64), int(c.last_seq as i64));
    vec![
        (
            "INSERT INTO ledger_segments (first_seq, last_seq, entries, credits_added,
               credits_removed, balance_after, first_at_ms, last_at_ms, sha256, bytes,
               archived_at_ms, blocks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                first.clone(),
                last.clone(),
                int(c.entries as i64),
                int(c.credits_added),
                int(c.credits_removed),
                int(c.balance_after),
                int(c.first_at_ms),
                int(c.last_at_ms),
                text(c.sha256.as_str()),
                int(c.bytes as i64),
                int(c.archived_at_ms),
                blocks_json(&c.blocks),
            ],
        ),
        (
            "DELETE FROM ops WHERE seq >= ? AND seq <= ? AND idempotency_key IS NULL
               AND response IS NULL",
            vec![first, last],
        ),
    ]
}

#[derive(Deserialize)]
struct Alerted {
    storage_alerted_percent: i64,
}

/// The highest storage level `wallet.storage_high` announced (0: none).
pub fn storage_alerted(sql: &SqlStorage) -> worker::Result<u8> {
    let rows: Vec<Alerted> = sql
        .exec(
            "SELECT storage_alerted_percent FROM replica WHERE id = 1",
            None,
        )?
        .to_array()?;
    Ok(rows
        .first()
        .map_or(0, |r| r.storage_alerted_percent.clamp(0, 100) as u8))
}

pub fn set_storage_alerted(percent: u8) -> Statement {
    (
        "UPDATE replica SET storage_alerted_percent = ? WHERE id = 1",
        vec![int(i64::from(percent))],
    )
}

/// With part of the ledger archived: the balance must be the last
/// checkpoint's `balance_after` plus the live entries' sum.
fn check_against_checkpoint(sql: &SqlStorage, balance: Credits) -> worker::Result<()> {
    let Some(last) = last_checkpoint(sql)? else {
        return Ok(());
    };
    let live = entries::live_sum(sql, last.last_seq)?;
    if last.balance_after.checked_add(live) != Some(balance.units()) {
        return Err(worker::Error::RustError(format!(
            "stored wallet is inconsistent: balance {balance} but segment {}-{} ends at {} and live entries add {}",
            last.first_seq,
            last.last_seq,
            Credits::from_units(last.balance_after),
            Credits::from_units(live)
        )));
    }
    Ok(())
}

/// Up to `limit` entries after `after_seq`, oldest first, parsed.
pub fn outbox(sql: &SqlStorage, after_seq: u64, limit: usize) -> worker::Result<Vec<EntryRow>> {
    oldest_after(sql, after_seq, limit as u64)
}

#[derive(Deserialize)]
struct PruneCursor {
    pruned_seq: i64,
}

/// Forgets idempotency records older than `older_than_ms` (their ledger
/// entries stay) and deletes closed holds as old; bounded per call. Walks
/// ops in seq (= time) order from a cursor, so it never scans the history.
/// Returns the rows written and whether more is due (a full call's worth).
pub fn prune(sql: &SqlStorage, older_than_ms: i64) -> worker::Result<(u64, bool)> {
    const PER_CALL: i64 = 5000;
    let cursor: Vec<PruneCursor> = sql
        .exec("SELECT pruned_seq FROM replica WHERE id = 1", None)?
        .to_array()?;
    let from = cursor.first().map_or(0, |c| c.pruned_seq);
    // The next rows after the cursor, whatever their gaps (archived rows
    // are gone); seq order is time order, so the due ones come first.
    let next: Vec<TimeRow> = sql
        .exec(
            "SELECT seq, created_at_ms FROM ops WHERE seq > ? ORDER BY seq LIMIT ?",
            vec![int(from), int(PER_CALL)],
        )?
        .to_array()?;
    let due: Vec<&TimeRow> = next
        .iter()
        .take_while(|r| r.created_at_ms < older_than_ms)
        .collect();
    let mut written = 0;
    let more = due.len() as i64 >= PER_CALL;
    if let Some(last) = due.last().map(|r| r.seq) {
        // Rows without an entry were only idempotency records (holds placed);
        // archived entries stayed only for theirs.
        let deleted = sql.exec(
            "DELETE FROM ops WHERE seq > ? AND seq <= ? AND (kind IS NULL
               OR seq <= (SELECT coalesce(max(last_seq), 0) FROM ledger_segments))",
            vec![int(from), int(last)],
        )?;
        let cleared = sql.exec(
            "UPDATE ops SET idempotency_key = NULL, fingerprint = NULL, response = NULL,
               reply_spent_today = NULL, reply_cap_remaining = NULL
             WHERE seq > ? AND seq <= ? AND (idempotency_key IS NOT NULL OR response IS NOT NULL)",
            vec![int(from), int(last)],
        )?;
        let moved = sql.exec(
            "UPDATE replica SET pruned_seq = ? WHERE id = 1",
            vec![int(last)],
        )?;
        written += deleted.rows_written() + cleared.rows_written() + moved.rows_written();
    }
    let holds = sql.exec(
        "DELETE FROM holds WHERE id IN (SELECT id FROM holds WHERE status != 'active'
           AND closed_at_ms < ? LIMIT ?)",
        vec![int(older_than_ms), int(PER_CALL)],
    )?;
    Ok(((written + holds.rows_written()) as u64, more))
}

/// Deletes events created before `older_than_ms` that need nothing more:
/// delivered ones, and with no receiver configured (`unsent_too`) those
/// never to be sent. A bounded number per call.
pub fn prune_events(sql: &SqlStorage, older_than_ms: i64, unsent_too: bool) -> worker::Result<u64> {
    const PER_CALL: i64 = 1000;
    let deleted = sql.exec(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created_at_ms < ?
           AND (status = 'delivered' OR ?) ORDER BY seq LIMIT ?)",
        vec![
            int(older_than_ms),
            int(i64::from(unsent_too)),
            int(PER_CALL),
        ],
    )?;
    Ok(deleted.rows_written() as u64)
}

#[derive(Deserialize)]
struct LegacyState {
    legacy_restored: i64,
    lowest: Option<i64>,
}

/// For an organization older than this storage layout: the seq below which
/// its entries must still be copied back from D1, or `None` when done.
pub fn legacy_entries_below(sql: &SqlStorage, next_seq: u64) -> worker::Result<Option<u64>> {
    let rows: Vec<LegacyState> = sql
        .exec(
            "SELECT legacy_restored, (SELECT min(seq) FROM ops WHERE kind IS NOT NULL) AS lowest
             FROM replica WHERE id = 1",
            None,
        )?
        .to_array()?;
    let Some(state) = rows.first() else {
        return Ok(None);
    };
    if state.legacy_restored != 0 {
        return Ok(None);
    }
    let lowest = state.lowest.map_or(next_seq, |s| s.max(0) as u64);
    Ok((lowest > 1).then_some(lowest))
}
