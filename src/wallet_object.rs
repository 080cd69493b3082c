//! The per-organization Durable Object: the only place credits move, and the
//! system of record of the organization's ledger.
//!
//! A thin shell around `wallet_core::decision`: load the wallet (once per
//! instance), read what the command needs, decide on a copy, commit every
//! write in one `transactionSync`, and only then keep the new wallet and
//! answer. Reading, deciding and committing run without an `await`, so one
//! organization's requests are applied strictly one after another.
//! Afterwards an alarm, armed in the same commit, replicates to the
//! organization's D1 shard what the dashboard aggregates (`ledger_shards`),
//! hands events waiting in the outbox to the delivery queue
//! (`event_delivery`), and starts a task of its own that sends the charge of
//! an auto top-up the commit recorded, so a slow Stripe delays neither.
//! The object also answers the payment method on file from its cache
//! (`payment_method_cache`).

mod archive;
mod auto_charge;
mod event_handoff;
mod pages;
mod payment_method;
mod replication;

use crate::event_delivery;
use crate::ledger_shards;
use crate::payment_method_cache::{Lookup, PaymentMethodCache};

use crate::settings::settings;
use crate::stripe_api::{self, PaymentMethodSummary, Stripe};
use crate::wallet_protocol::{self, PaymentMethodOp, PaymentMethodRequest};
use crate::wallet_store::{self, Statement, Store};
use replication::FLUSH_DELAY_MS;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wallet_core::api::{
    ApiError, BenchRequest, Command, Envelope, OutboxRequest, PurchaseStartReply, Query,
    WalletRequest,
};
use wallet_core::config::LEGACY_LEDGER_SHARD;
use wallet_core::decision::{self, Reply};
use wallet_core::events::EVENTS_RETENTION_DAYS;
use wallet_core::ledger::replica_batch;
use wallet_core::purchase::{
    ChargeOutcome, Purchase, PurchaseStatus, CHARGE_LEASE_SECONDS, RESEND_WINDOW_SECONDS,
};
use wallet_core::time::from_millis;
use wallet_core::Wallet;
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

/// The first retry after a failed flush or an unanswered auto top-up
/// charge; doubled per failure in a row up to the cap.
const RETRY_MS: f64 = 5_000.0;
const RETRY_MAX_MS: f64 = 300_000.0;

/// Replica bookkeeping of this instance.
#[derive(Default)]
struct ReplicaState {
    /// When the alarm set by this instance is due (cleared when it runs).
    alarm_at: Cell<Option<f64>>,
    /// The newest event handed to the delivery queue by this instance. A new
    /// instance hands over what is undelivered again: local queues forget
    /// their messages on a restart, and delivery is at least once anyway.
    events_queued_through: Cell<u64>,
    /// Auto top-up charges without an answer in a row, for the backoff.
    charge_failures: Cell<u32>,
    /// Flushes failed in a row, for the backoff.
    failures: Cell<u32>,
    /// The highest seq the shard holds, as this instance last learned it.
    /// `None` until the first flush of the instance (or after a refill was
    /// asked for) reads it from the shard, so an emptied or restored shard is
    /// refilled. Kept in memory only: the shard's own `replica_progress` is
    /// the truth, and not writing it here saves a row per flush.
    watermark: Cell<Option<u64>>,
    /// Rows written and batches sent, as the storage APIs count them (`make bench`).
    do_rows_written: Cell<u64>,
    d1_rows_written: Cell<u64>,
    d1_batches: Cell<u64>,
}

/// The commands refused past the storage budget: those that spend.
fn spends(command: &Command) -> bool {
    matches!(
        command,
        Command::Debit { .. }
            | Command::DebitBatch { .. }
            | Command::PlaceHold { .. }
            | Command::Capture { .. }
    )
}

/// Counts one more failure in a row in `failures` and answers the delay
/// before the next attempt: 5 s, doubling, at most 5 min.
fn next_backoff_ms(failures: &Cell<u32>) -> f64 {
    let count = failures.get().saturating_add(1);
    failures.set(count);
    (RETRY_MS * 2f64.powi(count.min(16) as i32 - 1)).min(RETRY_MAX_MS)
}

fn add(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get() + n);
}

#[durable_object]
pub struct WalletObject {
    instance: Rc<Instance>,
}

/// The object's state in this isolate, shared with the task that sends an
/// auto top-up's charge (it outlives the alarm that started it).
struct Instance {
    state: State,
    env: Env,
    wallet: RefCell<Option<Wallet>>,
    loaded: Cell<bool>,
    replica: ReplicaState,
    /// Whether this instance's charge task is running: at most one at a time.
    /// A task lost with its instance is harmless: the charge's lease lets the
    /// next instance's alarm send it again.
    charging: Cell<bool>,
    payment_method: RefCell<PaymentMethodCache>,
    /// Ledger segments this instance read from R2 last.
    segments: archive::SegmentCache,
}

impl DurableObject for WalletObject {
    fn new(state: State, env: Env) -> Self {
        WalletObject {
            instance: Rc::new(Instance {
                state,
                env,
                wallet: RefCell::new(None),
                loaded: Cell::new(false),
                replica: ReplicaState::default(),
                charging: Cell::new(false),
                payment_method: RefCell::new(PaymentMethodCache::default()),
                segments: archive::SegmentCache::default(),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.instance.fetch(req).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.instance.alarm().await
    }
}

impl Instance {
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == wallet_protocol::PAYMENT_METHOD_PATH {
            let request: PaymentMethodRequest = serde_json::from_str(&req.text().await?)?;
            let now = from_millis(request.now_ms)
                .ok_or_else(|| Error::RustError("bad request time".into()))?;
            let reply = self
                .payment_method(request.op, now)
                .await
                .unwrap_or_else(|err| {
                    console_error!("payment method lookup failed: {err}");
                    Reply::error(&ApiError::Internal, now)
                });
            return wallet_protocol::response(reply);
        }
        // serde_json over the text: cheaper than JSON.parse plus a walk over JS objects.
        let envelope: Envelope = serde_json::from_str(&req.text().await?)?;
        let now = from_millis(envelope.now_ms)
            .ok_or_else(|| Error::RustError("bad request time".into()))?;
        // The one place each kind of request is dispatched.
        let reply = match envelope.request {
            WalletRequest::Bench(BenchRequest::Ping) => return Response::ok("{}"),
            WalletRequest::Bench(BenchRequest::StorageStats) => return self.storage_stats().await,
            WalletRequest::Read(query) => self.read(&query, now).await,
            WalletRequest::Outbox(request) => self.outbox(request, now),
            WalletRequest::Decide(command) => self
                .ensure_loaded()
                .and_then(|()| self.decide_and_commit(command, now)),
        };
        let reply = reply.unwrap_or_else(|err| {
            console_error!("wallet operation failed: {err}");
            Reply::error(&ApiError::Internal, now)
        });
        wallet_protocol::response(reply)
    }

    /// `make bench`'s counters. `pending`: entries still wait for the shard,
    /// so a settled flush can be told now that the ledger route is exact.
    async fn storage_stats(&self) -> Result<Response> {
        self.ensure_loaded()?;
        let shard_target = self.replica_target();
        let shard = shard_target.as_ref().map(|(_, shard)| shard.clone());
        // A fresh instance asks the shard how far it is first.
        if let (None, Some((org_id, shard))) = (self.replica.watermark.get(), &shard_target) {
            let db = ledger_shards::shard(&self.env, shard)?;
            let seq = ledger_shards::progress(&db, org_id).await?;
            if self.replica.watermark.get().is_none() {
                self.replica.watermark.set(Some(seq));
            }
        }
        let pending = self.pending(&self.state.storage().sql())?;
        Response::from_json(&serde_json::json!({
            "ledger_shard": shard,
            "pending": pending,
            "do_rows_written": self.replica.do_rows_written.get(),
            "d1_rows_written": self.replica.d1_rows_written.get(),
            "d1_batches": self.replica.d1_batches.get(),
        }))
    }

    /// Hands events to the delivery queue, replicates to the shard, then
    /// prunes; an auto top-up's charge goes to Stripe from a task of its own,
    /// so a slow Stripe never delays replication or events. Alarms of one
    /// object never overlap; requests committed meanwhile arm the next alarm
    /// themselves.
    async fn alarm(self: &Rc<Self>) -> Result<Response> {
        self.replica.alarm_at.set(None);
        self.start_charge();
        if let Err(err) = self.queue_events().await {
            console_error!("handing events to the delivery queue failed, retrying: {err}");
            self.arm_alarm(RETRY_MS);
        }
        // The alarm never fails: an error is logged and the alarm set again,
        // so replication never stops waiting for a request to re-arm it.
        let next_alarm = match self.replicate_and_prune().await {
            Ok(next) => next,
            Err(err) => {
                console_error!("replica alarm failed, retrying: {err}");
                Some(self.backoff_ms())
            }
        };
        if let Some(delay) = next_alarm {
            self.arm_alarm(delay);
        }
        Response::empty()
    }

    fn raw_storage(storage: &Storage) -> &RawStorage {
        storage.as_raw().unchecked_ref()
    }

    /// Loads the wallet once per instance; a stored wallet that fails its
    /// consistency check is an error on every request until it is repaired.
    fn ensure_loaded(&self) -> Result<()> {
        if self.loaded.get() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        wallet_store::create_schema(&sql)?;
        let wallet = wallet_store::load(&sql)?;
        *self.wallet.borrow_mut() = wallet;
        self.loaded.set(true);
        // Entries committed before a restart have their alarm already: it is
        // set in the same commit, survives the restart and never gives up.
        // An organization older than this layout needs one to copy its
        // pruned entries back, whether or not credits move again.
        let legacy = self
            .wallet
            .borrow()
            .as_ref()
            .filter(|w| w.ledger_shard().is_none())
            .map(|w| w.next_seq());
        if let Some(next_seq) = legacy {
            if wallet_store::legacy_entries_below(&sql, next_seq)?.is_some() {
                self.arm_alarm(FLUSH_DELAY_MS);
            }
        }
        // Undelivered events and an auto top-up in flight are picked up by
        // a new instance too (a local queue forgets its messages on a restart).
        let in_flight = self
            .wallet
            .borrow()
            .as_ref()
            .is_some_and(|w| w.auto_top_up().in_flight.is_some());
        if in_flight || wallet_store::newest_undelivered(&sql)?.is_some() {
            self.arm_alarm(0.0);
        }
        Ok(())
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
        add(&self.replica.do_rows_written, written.get());
        Ok(())
    }

    /// Makes sure the alarm runs within `delay_ms`: an alarm already due
    /// sooner stays, a later one is brought forward.
    fn arm_alarm(&self, delay_ms: f64) {
        let at = Date::now().as_millis() as f64 + delay_ms;
        if self.replica.alarm_at.get().is_some_and(|due| due <= at) {
            return;
        }
        self.set_alarm(delay_ms);
    }

    /// Sets the alarm `delay_ms` from now, replacing any other.
    fn set_alarm(&self, delay_ms: f64) {
        let storage = self.state.storage();
        let at = Date::now().as_millis() as f64 + delay_ms;
        match Self::raw_storage(&storage).set_alarm_at(at) {
            Ok(_) => self.replica.alarm_at.set(Some(at)),
            Err(err) => console_error!("could not set the replica alarm: {err:?}"),
        }
    }

    /// The outboxes' side of delivery: events for the queue consumer, and an
    /// operator's refill of the D1 shard.
    fn outbox(&self, request: OutboxRequest, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        let (seq, delivered) = match request {
            OutboxRequest::RefillShard => return self.refill_shard(now),
            OutboxRequest::EventsPending { limit } => {
                let pending = wallet_store::events_pending(&sql, limit.min(100))?;
                return Ok(Reply::json(200, &serde_json::json!({ "events": pending })));
            }
            OutboxRequest::EventDelivered { seq } => (seq, true),
            OutboxRequest::EventFailed { seq } => (seq, false),
        };
        let attempts =
            wallet_store::record_attempt(&sql, seq, delivered, Date::now().as_millis() as i64)?;
        // The event's row was updated (attempts 0: nothing waited).
        add(&self.replica.do_rows_written, u64::from(attempts > 0));
        Ok(Reply::json(
            200,
            &serde_json::json!({ "attempts": attempts }),
        ))
    }

    /// Decides `command` and commits it; the wallet in memory moves only
    /// after the commit.
    fn decide_and_commit(
        &self,
        command: Command,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        let settings = settings(&self.env).map_err(Error::RustError)?;
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        // Decided on a copy: until the commit succeeds, the wallet in memory
        // stays exactly what storage holds.
        let decision = decision::execute(
            self.wallet.borrow().as_ref(),
            &command,
            &Store(&sql),
            &settings.config,
            now,
        )?;
        for note in &decision.notes {
            console_log!("{note}");
        }
        let statements = wallet_store::statements(&decision.writes, decision.wallet.as_ref());
        if !statements.is_empty() && spends(&command) && self.past_budget(&settings.config) {
            // Archiving has not kept up (R2 down): refuse spending, never
            // fail the commit. Credits paid for and disputes are still
            // recorded; reads go on.
            console_error!(
                "ledger storage of this organization is past its budget; spending refused"
            );
            return Ok(Reply::error(&ApiError::LedgerStorageFull, now));
        }
        if !statements.is_empty() {
            if let Err(err) = self.commit(statements) {
                // Storage may or may not hold part of it: reload before the next decision.
                *self.wallet.borrow_mut() = None;
                self.loaded.set(false);
                return Err(err);
            }
        }
        if let Some((wallet, _)) = decision.wallet {
            *self.wallet.borrow_mut() = Some(wallet);
        }
        if decision.wake {
            // An event or an auto top-up charge: the alarm sends it now,
            // after this answer (set before any await, confirmed with the commit).
            self.arm_alarm(0.0);
        } else if decision.entry_written {
            // Set before any await: the output gate confirms it with the commit.
            self.arm_alarm(FLUSH_DELAY_MS);
        }
        Ok(decision.reply)
    }
}
