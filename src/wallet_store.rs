//! The Durable Object's own SQLite storage: schema, loading the wallet, and
//! the statements that persist a decision. Everything a decision writes is
//! returned as a list of statements so the caller commits them in one
//! `transactionSync`: all of them or none.

use serde::Deserialize;
use std::collections::BTreeMap;
use wallet_core::purchase::{CreditedPayment, Purchase};
use wallet_core::time::from_millis;
use wallet_core::wallet::{Hold, LedgerEntry};
use wallet_core::{Credits, Wallet};
use worker::{SqlStorage, SqlStorageValue};

pub type Statement = (&'static str, Vec<SqlStorageValue>);

const SCHEMA: &str = "
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
-- One row per accepted operation: the idempotency record (key, request
-- fingerprint, original response) and, when credits moved, the ledger entry
-- in the replica's row format. Rows past the replica watermark are the outbox.
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
-- How far the D1 ledger has been written (highest seq known to be in D1).
CREATE TABLE IF NOT EXISTS replica (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  flushed_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO replica (id, flushed_seq) VALUES (1, 0);
-- Credit pack purchases, by their derived id (`purchase::purchase_id`).
CREATE TABLE IF NOT EXISTS purchases (
  id TEXT PRIMARY KEY,
  payment_intent_id TEXT,
  record TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS purchases_by_intent ON purchases (payment_intent_id)
  WHERE payment_intent_id IS NOT NULL;
-- One row per PaymentIntent whose credits were decided: the permanent
-- at-most-once marker, never pruned (unlike ops). seq is the ledger entry that
-- granted its credits, NULL when none did (disputed before it was credited).
CREATE TABLE IF NOT EXISTS credited_payments (
  payment_intent_id TEXT PRIMARY KEY,
  seq INTEGER,
  record TEXT NOT NULL
);
";

pub fn create_schema(sql: &SqlStorage) -> worker::Result<()> {
    sql.exec(SCHEMA, None)?;
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

#[derive(Deserialize)]
struct WalletRow {
    org_id: String,
    owner_id: String,
    stripe_customer_id: Option<String>,
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

fn corrupt(what: &str) -> worker::Error {
    worker::Error::RustError(format!("stored wallet is unreadable: {what}"))
}

/// Loads the wallet and its active holds; `None` when the organization has none.
pub fn load(sql: &SqlStorage) -> worker::Result<Option<Wallet>> {
    let rows: Vec<WalletRow> = sql
        .exec("SELECT * FROM wallet WHERE id = 1", None)?
        .to_array()?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let mut holds = BTreeMap::new();
    let records: Vec<RecordRow> = sql
        .exec("SELECT record FROM holds WHERE status = 'active'", None)?
        .to_array()?;
    for r in records {
        let hold: Hold = serde_json::from_str(&r.record).map_err(|_| corrupt("hold"))?;
        holds.insert(hold.id.clone(), hold);
    }
    Ok(Some(Wallet {
        org_id: row.org_id,
        owner_id: row.owner_id,
        stripe_customer_id: row.stripe_customer_id,
        balance: Credits::from_units(row.balance),
        held: Credits::from_units(row.held),
        daily_cap: Credits::from_units(row.daily_cap),
        day: row.day.parse().map_err(|_| corrupt("day"))?,
        spent_today: Credits::from_units(row.spent_today),
        held_today: Credits::from_units(row.held_today),
        next_seq: u64::try_from(row.next_seq).map_err(|_| corrupt("next_seq"))?,
        clock: from_millis(row.clock_ms).ok_or_else(|| corrupt("clock"))?,
        created_at: from_millis(row.created_at_ms).ok_or_else(|| corrupt("created_at"))?,
        holds,
    }))
}

pub fn insert_wallet(w: &Wallet) -> Statement {
    (
        "INSERT INTO wallet (id, org_id, owner_id, stripe_customer_id, balance, held, daily_cap, day,
           spent_today, held_today, next_seq, clock_ms, created_at_ms)
         VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            text(&w.org_id),
            text(&w.owner_id),
            opt_text(w.stripe_customer_id.as_deref()),
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

pub fn update_wallet(w: &Wallet) -> Statement {
    (
        "UPDATE wallet SET stripe_customer_id = ?, balance = ?, held = ?, daily_cap = ?, day = ?,
           spent_today = ?, held_today = ?, next_seq = ?, clock_ms = ? WHERE id = 1",
        vec![
            opt_text(w.stripe_customer_id.as_deref()),
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

pub fn upsert_hold(hold: &Hold) -> Statement {
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

/// A stored hold that is no longer active (captured, released or expired).
pub fn closed_hold(sql: &SqlStorage, id: &str) -> worker::Result<Option<Hold>> {
    let rows: Vec<RecordRow> = sql
        .exec("SELECT record FROM holds WHERE id = ?", vec![text(id)])?
        .to_array()?;
    rows.into_iter()
        .next()
        .map(|r| serde_json::from_str(&r.record).map_err(|_| corrupt("hold")))
        .transpose()
}

/// The original answer to an idempotent request.
#[derive(Deserialize)]
pub struct StoredReply {
    pub fingerprint: String,
    pub status: u16,
    pub response: String,
}

pub fn stored_reply(sql: &SqlStorage, key: &str) -> worker::Result<Option<StoredReply>> {
    let rows: Vec<StoredReply> = sql
        .exec(
            "SELECT fingerprint, status, response FROM ops WHERE idempotency_key = ?",
            vec![text(key)],
        )?
        .to_array()?;
    Ok(rows.into_iter().next())
}

/// The original answers to several keys at once, by key.
pub fn stored_replies(
    sql: &SqlStorage,
    keys: &[&str],
) -> worker::Result<std::collections::HashMap<String, StoredReply>> {
    #[derive(Deserialize)]
    struct KeyedReply {
        idempotency_key: String,
        fingerprint: String,
        status: u16,
        response: String,
    }
    let keys_json = serde_json::to_string(keys).expect("keys serialize");
    let rows: Vec<KeyedReply> = sql
        .exec(
            "SELECT idempotency_key, fingerprint, status, response FROM ops
             WHERE idempotency_key IN (SELECT value FROM json_each(?))",
            vec![text(keys_json)],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let reply = StoredReply {
                fingerprint: r.fingerprint,
                status: r.status,
                response: r.response,
            };
            (r.idempotency_key, reply)
        })
        .collect())
}

/// Records an accepted operation: its idempotency record and ledger entry, if any.
pub struct OpRecord<'a> {
    pub seq: u64,
    pub idempotency: Option<(&'a str, &'a str)>,
    pub status: u16,
    pub response: Option<&'a str>,
    pub entry: Option<&'a LedgerEntry>,
    pub created_at_ms: i64,
}

pub fn insert_op(op: &OpRecord) -> Statement {
    (
        "INSERT INTO ops (seq, idempotency_key, fingerprint, status, response, entry, created_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            int(op.seq as i64),
            opt_text(op.idempotency.map(|(k, _)| k)),
            opt_text(op.idempotency.map(|(_, f)| f)),
            int(op.status as i64),
            opt_text(op.response),
            op.entry.map_or(SqlStorageValue::Null, |e| text(crate::replica::row_json(e))),
            int(op.created_at_ms),
        ],
    )
}

#[derive(Deserialize)]
struct ResponseRow {
    response: Option<String>,
}

/// The stored response of the operation that took `seq`.
pub fn op_response(sql: &SqlStorage, seq: u64) -> worker::Result<Option<String>> {
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

pub fn purchase(sql: &SqlStorage, id: &str) -> worker::Result<Option<Purchase>> {
    read_record(
        sql,
        "SELECT record FROM purchases WHERE id = ?",
        id,
        "purchase",
    )
}

pub fn purchase_by_intent(
    sql: &SqlStorage,
    payment_intent_id: &str,
) -> worker::Result<Option<Purchase>> {
    read_record(
        sql,
        "SELECT record FROM purchases WHERE payment_intent_id = ? ORDER BY created_at_ms LIMIT 1",
        payment_intent_id,
        "purchase",
    )
}

pub fn upsert_purchase(purchase: &Purchase) -> Statement {
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

pub fn credited_payment(
    sql: &SqlStorage,
    payment_intent_id: &str,
) -> worker::Result<Option<CreditedPayment>> {
    read_record(
        sql,
        "SELECT record FROM credited_payments WHERE payment_intent_id = ?",
        payment_intent_id,
        "credited payment",
    )
}

pub fn upsert_credited_payment(payment: &CreditedPayment) -> Statement {
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
