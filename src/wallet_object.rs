//! The per-organization Durable Object: the only place credits move.
//!
//! It is a thin shell around `wallet_core`: load the wallet (once per
//! instance), decide with the pure rules, commit every resulting write in one
//! `transactionSync`, answer. The decision and commit run without an `await`,
//! so requests to one organization are applied strictly one after another.
//! Ledger entries reach D1 afterwards, from the outbox (see `replica`), sent
//! by an alarm armed in the same commit.

use crate::replica;
use crate::settings::settings;
use crate::wallet_store::{self, OpRecord, Statement};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wallet_core::api::{
    entry_json, hold_json, ApiError, BatchSlot, Command, DebitBody, Envelope, SignupBody,
};
use wallet_core::time::from_millis;
use wallet_core::wallet::{seq_of, Hold};
use wallet_core::{DebitRequest, HoldRequest, Rejection, Wallet, WalletConfig};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::*;

#[wasm_bindgen]
extern "C" {
    /// The storage methods workers-rs does not wrap.
    type RawStorage;
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &RawStorage,
        closure: &js_sys::Function,
    ) -> std::result::Result<JsValue, JsValue>;
    #[wasm_bindgen(method, catch, js_name = setAlarm)]
    fn set_alarm_at(
        this: &RawStorage,
        scheduled_ms: f64,
    ) -> std::result::Result<js_sys::Promise, JsValue>;
}

/// How long after the first unflushed entry its alarm sends the outbox to D1.
/// One D1 batch then carries every entry of those 2 s: flushing after each
/// response instead cost more CPU than the debit itself (`make bench`), and
/// the spec allows 5 s.
const FLUSH_DELAY_MS: f64 = 2_000.0;
/// The next attempt after a flush that failed or left entries behind.
const FLUSH_RETRY_MS: f64 = 5_000.0;

/// Replica bookkeeping of this instance.
#[derive(Default)]
struct ReplicaState {
    /// An alarm is set (it flushes, then clears this).
    alarm_set: Cell<bool>,
    /// Rows written, as the storage APIs count them (for `make bench`).
    do_rows_written: Cell<u64>,
    d1_rows_written: Cell<u64>,
}

impl ReplicaState {
    fn count(&self, stats: replica::FlushStats) {
        self.do_rows_written
            .set(self.do_rows_written.get() + stats.do_rows_written);
        self.d1_rows_written
            .set(self.d1_rows_written.get() + stats.d1_rows_written);
    }
}

#[durable_object]
pub struct WalletObject {
    state: State,
    env: Env,
    wallet: RefCell<Option<Wallet>>,
    loaded: Cell<bool>,
    replica: ReplicaState,
}

/// A finished answer: status, JSON text and, for 429, `Retry-After`.
struct Reply {
    status: u16,
    body: String,
    retry_after: Option<i64>,
}

impl Reply {
    fn json(status: u16, value: &impl Serialize) -> Reply {
        Reply {
            status,
            body: serde_json::to_string(value).expect("replies serialize"),
            retry_after: None,
        }
    }

    fn error(err: &ApiError, now: chrono::DateTime<chrono::Utc>) -> Reply {
        Reply {
            status: err.status(),
            body: err.body().to_string(),
            retry_after: err.retry_after_seconds(now),
        }
    }

    fn into_response(self) -> Result<Response> {
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        if let Some(seconds) = self.retry_after {
            headers.set("retry-after", &seconds.to_string())?;
        }
        Ok(Response::ok(self.body)?
            .with_status(self.status)
            .with_headers(headers))
    }
}

/// What one decision wrote.
#[derive(Default)]
struct Writes {
    statements: Vec<Statement>,
    wallet_changed: bool,
    entry_written: bool,
}

impl DurableObject for WalletObject {
    fn new(state: State, env: Env) -> Self {
        WalletObject {
            state,
            env,
            wallet: RefCell::new(None),
            loaded: Cell::new(false),
            replica: ReplicaState::default(),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let envelope: Envelope = req.json().await?;
        match envelope.command {
            Command::Ping => return Response::ok("{}"),
            Command::StorageStats => {
                return Response::from_json(&serde_json::json!({
                    "do_rows_written": self.replica.do_rows_written.get(),
                    "d1_rows_written": self.replica.d1_rows_written.get(),
                }))
            }
            _ => {}
        }
        let now = from_millis(envelope.now_ms)
            .ok_or_else(|| Error::RustError("bad request time".into()))?;
        let reply = self.execute(envelope).unwrap_or_else(|err| {
            console_error!("wallet operation failed: {err}");
            Reply::error(&ApiError::Internal, now)
        });
        reply.into_response()
    }

    /// Sends the outbox to D1 and prunes. Alarms of one object never overlap;
    /// requests committed during the flush arm the next alarm themselves.
    async fn alarm(&self) -> Result<Response> {
        self.replica.alarm_set.set(false);
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        if let Some(org_id) = self.org_id() {
            match replica::flush(&sql, &self.env.d1("DB")?, &org_id).await {
                Ok(stats) => self.replica.count(stats),
                Err(err) => console_error!("ledger replica flush failed, will retry: {err}"),
            }
        }
        let retention_ms = settings(&self.env)
            .map_err(Error::RustError)?
            .config
            .idempotency_retention_seconds
            * 1000;
        let pruned = replica::prune(&sql, Date::now().as_millis() as i64 - retention_ms)?;
        self.replica.count(replica::FlushStats {
            do_rows_written: pruned,
            ..Default::default()
        });
        if replica::has_pending(&sql)? {
            self.arm_alarm(FLUSH_RETRY_MS);
        }
        Response::empty()
    }
}

impl WalletObject {
    fn org_id(&self) -> Option<String> {
        self.wallet.borrow().as_ref().map(|w| w.org_id.clone())
    }

    fn raw_storage(storage: &Storage) -> &RawStorage {
        storage.as_raw().unchecked_ref()
    }

    /// Loads the wallet once per instance. Returns whether this call loaded it
    /// and found entries D1 does not have yet.
    fn ensure_loaded(&self) -> Result<bool> {
        if self.loaded.get() {
            return Ok(false);
        }
        let sql = self.state.storage().sql();
        wallet_store::create_schema(&sql)?;
        *self.wallet.borrow_mut() = wallet_store::load(&sql)?;
        self.loaded.set(true);
        replica::has_pending(&sql)
    }

    /// Commits `statements` atomically: all of them or none.
    fn commit(&self, statements: Vec<Statement>) -> Result<()> {
        let storage = self.state.storage();
        let sql = storage.sql();
        let mut pending = Some(statements);
        let written = Rc::new(Cell::new(0u64));
        let counter = Rc::clone(&written);
        let closure =
            Closure::<dyn FnMut() -> std::result::Result<JsValue, JsValue>>::new(move || {
                for (query, bindings) in pending.take().unwrap_or_default() {
                    let cursor = sql
                        .exec(query, bindings)
                        .map_err(|e| JsValue::from_str(&e.to_string()))?;
                    counter.set(counter.get() + cursor.rows_written() as u64);
                }
                Ok(JsValue::UNDEFINED)
            });
        Self::raw_storage(&storage)
            .transaction_sync(closure.as_ref().unchecked_ref())
            .map_err(Error::from)?;
        let total = &self.replica.do_rows_written;
        total.set(total.get() + written.get());
        Ok(())
    }

    fn arm_alarm(&self, delay_ms: f64) {
        if self.replica.alarm_set.get() {
            return;
        }
        let storage = self.state.storage();
        match Self::raw_storage(&storage).set_alarm_at(Date::now().as_millis() as f64 + delay_ms) {
            Ok(_) => self.replica.alarm_set.set(true),
            Err(err) => console_error!("could not set the replica alarm: {err:?}"),
        }
    }

    fn execute(&self, envelope: Envelope) -> Result<Reply> {
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let config = &settings.config;
        let now = from_millis(envelope.now_ms)
            .ok_or_else(|| Error::RustError("bad request time".into()))?;
        if self.ensure_loaded()? {
            // Normally its alarm is still set; this covers one that gave up.
            self.arm_alarm(FLUSH_DELAY_MS);
        }
        let mut slot = self.wallet.borrow_mut();
        let (reply, writes) = match &envelope.command {
            Command::Open(body) => open(&mut slot, body, config, now),
            command => match slot.as_mut() {
                None => (
                    Reply::error(&ApiError::WalletNotFound, now),
                    Writes::default(),
                ),
                Some(wallet) => self.decide(wallet, command, config, now)?,
            },
        };
        let mut statements = writes.statements;
        if writes.wallet_changed {
            statements.extend(slot.as_ref().map(wallet_store::update_wallet));
        }
        if statements.is_empty() {
            return Ok(reply);
        }
        if let Err(err) = self.commit(statements) {
            // Memory may now be ahead of storage: reload on the next request.
            *slot = None;
            self.loaded.set(false);
            return Err(err);
        }
        if writes.entry_written {
            // Set before any await: the output gate confirms it with the commit.
            self.arm_alarm(FLUSH_DELAY_MS);
        }
        Ok(reply)
    }

    /// Decides one command on an existing wallet.
    fn decide(
        &self,
        wallet: &mut Wallet,
        command: &Command,
        config: &WalletConfig,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Reply, Writes)> {
        let sql = self.state.storage().sql();
        // A replay answers the original response and changes nothing.
        if let Command::Debit {
            idempotency_key,
            fingerprint,
            ..
        }
        | Command::PlaceHold {
            idempotency_key,
            fingerprint,
            ..
        } = command
        {
            if let Some(stored) = wallet_store::stored_reply(&sql, idempotency_key)? {
                let reply = if stored.fingerprint == *fingerprint {
                    Reply {
                        status: stored.status,
                        body: stored.response,
                        retry_after: None,
                    }
                } else {
                    Reply::error(&ApiError::IdempotencyKeyReused, now)
                };
                return Ok((reply, Writes::default()));
            }
        }

        let advanced = wallet.advance(now);
        let now = wallet.now();
        let mut writes = Writes {
            statements: advanced
                .expired
                .iter()
                .map(wallet_store::upsert_hold)
                .collect(),
            wallet_changed: advanced.day_changed || !advanced.expired.is_empty(),
            entry_written: false,
        };
        let now_ms = now.timestamp_millis();
        let rejected = |r: Rejection| Reply::error(&ApiError::Rejected(r), now);

        let reply = match command {
            Command::Open(_) | Command::Ping | Command::StorageStats => {
                unreachable!("answered before a decision")
            }
            Command::View => Reply::json(200, &wallet.view(config)),
            Command::SetDailyCap(body) => match wallet.set_daily_cap(body.daily_cap, config) {
                Ok(()) => {
                    writes.wallet_changed = true;
                    Reply::json(200, &wallet.view(config))
                }
                Err(r) => rejected(r),
            },
            Command::Debit {
                idempotency_key,
                fingerprint,
                body,
            } => apply_debit(
                wallet,
                config,
                idempotency_key,
                fingerprint,
                body,
                &mut writes,
            ),
            Command::DebitBatch { items } => {
                Reply::json(200, &self.apply_batch(wallet, config, items, &mut writes)?)
            }
            Command::PlaceHold {
                idempotency_key,
                fingerprint,
                body,
            } => {
                let request = HoldRequest {
                    feature: body.feature.clone(),
                    amount: body.amount,
                    user_id: body.user_id.clone(),
                    project_id: body.project_id.clone(),
                    ttl_seconds: body.ttl_seconds.unwrap_or(config.hold_ttl_default_seconds),
                };
                match wallet.place_hold(&request, config) {
                    Ok(hold) => {
                        let text = hold_json(&hold, None).to_string();
                        writes.statements.push(wallet_store::upsert_hold(&hold));
                        writes.statements.push(wallet_store::insert_op(&OpRecord {
                            seq: seq_of(&hold.id).expect("hold ids carry their seq"),
                            idempotency: Some((idempotency_key, fingerprint)),
                            status: 201,
                            response: Some(&text),
                            entry: None,
                            created_at_ms: now_ms,
                        }));
                        writes.wallet_changed = true;
                        Reply {
                            status: 201,
                            body: text,
                            retry_after: None,
                        }
                    }
                    Err(r) => rejected(r),
                }
            }
            Command::Capture { hold_id, body } => {
                let closed = self.closed_hold(wallet, hold_id)?;
                match wallet.capture(hold_id, body.amount, closed.as_ref()) {
                    Ok((hold, entry)) => {
                        let text = hold_json(&hold, entry.as_ref()).to_string();
                        writes.statements.push(wallet_store::upsert_hold(&hold));
                        if let Some(entry) = &entry {
                            writes.statements.push(wallet_store::insert_op(&OpRecord {
                                seq: entry.seq,
                                idempotency: None,
                                status: 200,
                                response: Some(&text),
                                entry: Some(entry),
                                created_at_ms: now_ms,
                            }));
                            writes.entry_written = true;
                        }
                        writes.wallet_changed = true;
                        Reply {
                            status: 200,
                            body: text,
                            retry_after: None,
                        }
                    }
                    Err(Rejection::HoldAlreadyClosed { .. }) => {
                        let hold = closed.expect("only a stored hold is already closed");
                        self.first_capture_reply(&hold)?
                    }
                    Err(r) => rejected(r),
                }
            }
            Command::Release { hold_id } => {
                let closed = self.closed_hold(wallet, hold_id)?;
                match wallet.release(hold_id, closed.as_ref()) {
                    Ok(hold) => {
                        writes.statements.push(wallet_store::upsert_hold(&hold));
                        writes.wallet_changed = true;
                        Reply::json(200, &hold_json(&hold, None))
                    }
                    Err(Rejection::HoldAlreadyClosed { .. }) => Reply::json(
                        200,
                        &hold_json(&closed.expect("only a stored hold is already closed"), None),
                    ),
                    Err(r) => rejected(r),
                }
            }
        };
        Ok((reply, writes))
    }

    /// Applies a batch in order; each item answers as a single debit would,
    /// and a key repeated within the batch is a replay of its first use.
    fn apply_batch(
        &self,
        wallet: &mut Wallet,
        config: &WalletConfig,
        items: &[BatchSlot],
        writes: &mut Writes,
    ) -> Result<serde_json::Value> {
        let keys: Vec<&str> = items
            .iter()
            .filter_map(|slot| match slot {
                BatchSlot::Debit {
                    idempotency_key, ..
                } => Some(idempotency_key.as_str()),
                BatchSlot::Invalid { .. } => None,
            })
            .collect();
        let mut seen = wallet_store::stored_replies(&self.state.storage().sql(), &keys)?;
        let mut results = Vec::with_capacity(items.len());
        for slot in items {
            let (key, status, body) = match slot {
                BatchSlot::Invalid {
                    idempotency_key,
                    status,
                    error,
                } => {
                    results.push(serde_json::json!({
                        "idempotency_key": idempotency_key, "status": status, "error": error
                    }));
                    continue;
                }
                BatchSlot::Debit {
                    idempotency_key,
                    fingerprint,
                    body,
                } => match seen.get(idempotency_key.as_str()) {
                    Some(stored) if stored.fingerprint == *fingerprint => {
                        (idempotency_key, stored.status, stored.response.clone())
                    }
                    Some(_) => {
                        let err = ApiError::IdempotencyKeyReused;
                        (idempotency_key, err.status(), err.body().to_string())
                    }
                    None => {
                        let reply =
                            apply_debit(wallet, config, idempotency_key, fingerprint, body, writes);
                        if reply.status < 300 {
                            seen.insert(
                                idempotency_key.clone(),
                                wallet_store::StoredReply {
                                    fingerprint: fingerprint.clone(),
                                    status: reply.status,
                                    response: reply.body.clone(),
                                },
                            );
                        }
                        (idempotency_key, reply.status, reply.body)
                    }
                },
            };
            results.push(batch_result(Some(key), status, &body));
        }
        Ok(serde_json::json!({ "results": results }))
    }

    /// The stored record of a hold that is no longer active, if any.
    fn closed_hold(&self, wallet: &Wallet, hold_id: &str) -> Result<Option<Hold>> {
        if wallet.holds.contains_key(hold_id)
            || seq_of(hold_id).is_none()
            || !hold_id.starts_with("hold_")
        {
            return Ok(None);
        }
        wallet_store::closed_hold(&self.state.storage().sql(), hold_id)
    }

    /// The answer the first capture of `hold` gave.
    fn first_capture_reply(&self, hold: &Hold) -> Result<Reply> {
        let stored = match hold.capture_entry_id.as_deref().and_then(seq_of) {
            Some(seq) => wallet_store::op_response(&self.state.storage().sql(), seq)?,
            None => None,
        };
        Ok(match stored {
            Some(body) => Reply {
                status: 200,
                body,
                retry_after: None,
            },
            None => Reply::json(200, &hold_json(hold, None)),
        })
    }
}

/// Signup: creates the wallet with its trial grant, or answers the existing one.
fn open(
    slot: &mut Option<Wallet>,
    body: &SignupBody,
    config: &WalletConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> (Reply, Writes) {
    if let Some(wallet) = slot.as_mut() {
        if wallet.owner_id != body.owner_id {
            return (
                Reply::error(&ApiError::WalletOwnerConflict, now),
                Writes::default(),
            );
        }
        let mut writes = Writes::default();
        if wallet.stripe_customer_id.is_none() && body.stripe_customer_id.is_some() {
            wallet.stripe_customer_id = body.stripe_customer_id.clone();
            writes.wallet_changed = true;
        }
        return (Reply::json(200, &wallet.view(config)), writes);
    }
    let (wallet, grant) = Wallet::open(
        &body.org_id,
        &body.owner_id,
        body.stripe_customer_id.clone(),
        config,
        now,
    );
    let mut writes = Writes {
        statements: vec![wallet_store::insert_wallet(&wallet)],
        ..Writes::default()
    };
    if let Some(entry) = &grant {
        writes.statements.push(wallet_store::insert_op(&OpRecord {
            seq: entry.seq,
            idempotency: None,
            status: 201,
            response: None,
            entry: Some(entry),
            created_at_ms: now.timestamp_millis(),
        }));
        writes.entry_written = true;
    }
    let reply = Reply::json(201, &wallet.view(config));
    *slot = Some(wallet);
    (reply, writes)
}

/// Decides one debit (already known not to be a replay) and records it.
fn apply_debit(
    wallet: &mut Wallet,
    config: &WalletConfig,
    idempotency_key: &str,
    fingerprint: &str,
    body: &DebitBody,
    writes: &mut Writes,
) -> Reply {
    let request = DebitRequest {
        feature: body.feature.clone(),
        amount: body.amount,
        user_id: body.user_id.clone(),
        project_id: body.project_id.clone(),
        metadata: body.metadata.clone(),
    };
    match wallet.debit(&request, config) {
        Ok(entry) => {
            let mut response = entry_json(&entry);
            response["spent_today"] = serde_json::json!(wallet.spent_today);
            response["cap_remaining"] = serde_json::json!(wallet.cap_remaining());
            let text = response.to_string();
            writes.statements.push(wallet_store::insert_op(&OpRecord {
                seq: entry.seq,
                idempotency: Some((idempotency_key, fingerprint)),
                status: 201,
                response: Some(&text),
                entry: Some(&entry),
                created_at_ms: wallet.now().timestamp_millis(),
            }));
            writes.wallet_changed = true;
            writes.entry_written = true;
            Reply {
                status: 201,
                body: text,
                retry_after: None,
            }
        }
        Err(r) => Reply::error(&ApiError::Rejected(r), wallet.now()),
    }
}

/// One batch item's result: its key, status, and the entry or the error.
fn batch_result(key: Option<&str>, status: u16, body: &str) -> serde_json::Value {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if status < 300 {
        serde_json::json!({ "idempotency_key": key, "status": status, "entry": parsed })
    } else {
        serde_json::json!({ "idempotency_key": key, "status": status, "error": parsed["error"] })
    }
}
