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

use crate::event_delivery;
use crate::ledger_shards;
use crate::payment_method_cache::{Lookup, PaymentMethodCache};

use crate::settings::settings;
use crate::stripe_api::{self, PaymentMethodSummary, Stripe};
use crate::wallet_protocol::{self, PaymentMethodOp, PaymentMethodRequest};
use crate::wallet_store::{self, Statement, Store};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wallet_core::api::{
    ApiError, BenchRequest, Command, Envelope, OutboxRequest, PurchaseStartReply, Query,
    WalletRequest,
};
use wallet_core::config::LEGACY_LEDGER_SHARD;
use wallet_core::decision::{self, Reply};
use wallet_core::events::EVENTS_RETENTION_DAYS;
use wallet_core::ledger::{replica_batch, LedgerQuery};
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

/// How long after the first unflushed entry its alarm replicates. One D1
/// batch then carries every entry of those 2 s (the spec allows 5 s).
const FLUSH_DELAY_MS: f64 = 2_000.0;
/// The first retry after a failed flush or an unanswered auto top-up
/// charge; doubled per failure in a row up to the cap.
const RETRY_MS: f64 = 5_000.0;
const RETRY_MAX_MS: f64 = 300_000.0;
/// When one alarm stopped with entries left (a refill): continue soon.
const FLUSH_CONTINUE_MS: f64 = 100.0;
/// Entries read per batch, and the most JSON one batch may carry: far under
/// D1's 2 MB limit on a statement's parameter.
const FLUSH_MAX_ENTRIES: usize = 2_000;
const FLUSH_MAX_BYTES: usize = 256 * 1024;
/// Batches per alarm, so a refill of a long history yields between alarms.
const FLUSH_MAX_BATCHES: usize = 25;

/// How long an auto top-up whose PaymentIntent is processing waits for
/// Stripe's webhook before the alarm asks Stripe itself (and between asks).
const INTENT_POLL_SECONDS: i64 = 60;

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
            WalletRequest::Read(query) => self.read(&query, now),
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

    /// The auto top-up in flight, if any.
    fn in_flight_purchase(&self) -> Option<String> {
        self.wallet
            .borrow()
            .as_ref()
            .and_then(|w| w.auto_top_up().in_flight.clone())
    }

    /// Starts the task that sends the auto top-up in flight to Stripe, unless
    /// one runs already. The task arms the alarm for its own retry when it
    /// ends, and at once when another auto top-up started meanwhile.
    fn start_charge(self: &Rc<Self>) {
        if let Err(err) = self.ensure_loaded() {
            console_error!("auto top-up charge not started: {err}");
            return;
        }
        let Some(handled) = self.in_flight_purchase() else {
            return;
        };
        if self.charging.replace(true) {
            return;
        }
        let instance = Rc::clone(self);
        wasm_bindgen_futures::spawn_local(async move {
            let retry = match instance.send_auto_top_up().await {
                Ok(retry) => retry,
                Err(err) => {
                    console_error!("auto top-up charge failed, retrying: {err}");
                    Some(instance.charge_backoff_ms())
                }
            };
            instance.charging.set(false);
            if let Some(delay) = retry {
                instance.arm_alarm(delay);
            } else if instance
                .in_flight_purchase()
                .is_some_and(|id| id != handled)
            {
                instance.arm_alarm(0.0);
            }
        });
    }

    /// One alarm's work: replicate (restoring a pre-shard organization's
    /// entries first), then prune. Returns when the next alarm is due.
    async fn replicate_and_prune(&self) -> Result<Option<f64>> {
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        let mut next_alarm = None;
        if let Some((org_id, shard)) = self.replica_target() {
            let replicated = match self.restore_legacy_entries(&org_id).await {
                Ok(true) => self.flush(&org_id, &shard).await,
                Ok(false) => Ok(false),
                Err(err) => Err(err),
            };
            match replicated {
                Ok(true) => self.replica.failures.set(0),
                Ok(false) => {
                    self.replica.failures.set(0);
                    next_alarm = Some(FLUSH_CONTINUE_MS);
                }
                Err(err) => {
                    let delay = self.backoff_ms();
                    console_error!(
                        "ledger replication of {org_id} to shard {shard} failed (attempt {}), retrying in {} s: {err}",
                        self.replica.failures.get(),
                        delay / 1000.0
                    );
                    next_alarm = Some(delay);
                }
            }
        }
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let retention_ms = settings.config.idempotency_retention_seconds * 1000;
        let now_ms = Date::now().as_millis() as i64;
        let pruned = wallet_store::prune(&sql, now_ms - retention_ms)?;
        add(&self.replica.do_rows_written, pruned);
        let unsent_too = !matches!(settings.events, Ok(Some(_)));
        let events_before = now_ms - EVENTS_RETENTION_DAYS * 86_400_000;
        let pruned = wallet_store::prune_events(&sql, events_before, unsent_too)?;
        add(&self.replica.do_rows_written, pruned);
        if next_alarm.is_none() && self.pending(&sql)? {
            next_alarm = Some(FLUSH_DELAY_MS);
        }
        Ok(next_alarm)
    }

    /// The charge of the auto top-up in flight, when it is due: the default
    /// payment method on file is claimed for it in one decision, Stripe is
    /// asked (with the purchase's derived idempotency key), and the outcome
    /// settles it in another. Returns when to try again, if it must be.
    async fn send_auto_top_up(&self) -> Result<Option<f64>> {
        self.ensure_loaded()?;
        let (org_id, customer, purchase_id, clock) = match self.wallet.borrow().as_ref() {
            Some(w) => match &w.auto_top_up().in_flight {
                Some(id) => (
                    w.org_id().to_string(),
                    w.stripe_customer_id().map(str::to_string),
                    id.clone(),
                    w.now(),
                ),
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let sql = self.state.storage().sql();
        let Some(purchase) = wallet_store::purchase(&sql, &purchase_id)? else {
            return Err(Error::RustError(format!(
                "auto top-up {purchase_id} of {org_id} is in flight but not stored"
            )));
        };
        let now = clock
            .max(wallet_core::time::from_millis(Date::now().as_millis() as i64).unwrap_or(clock));
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let stripe = match &settings.stripe {
            Ok(config) => Stripe::new(config),
            Err(problem) => {
                return Err(Error::RustError(format!(
                    "Stripe is not configured: {problem}"
                )))
            }
        };
        if purchase.resend_window_closed(now) {
            // Stripe never answered, and no longer remembers the key: a resend
            // could charge twice, so it ends here, failed, and auto top-up is
            // off until the owner enables it again. (Had Stripe charged it,
            // its webhook still credits the payment once.)
            console_error!(
                "auto top-up {purchase_id} of {org_id}: no answer from Stripe within {} h; ending it as failed",
                RESEND_WINDOW_SECONDS / 3600
            );
            self.decide_and_commit(
                Command::PurchaseSettle {
                    purchase_id: Some(purchase_id),
                    outcome: ChargeOutcome::Refused {
                        payment_intent_id: None,
                        decline_code: None,
                    },
                },
                now,
            )?;
            return Ok(None);
        }
        if !purchase.needs_auto_charge(now) {
            return self.follow_sent_charge(&stripe, &purchase, now).await;
        }
        self.claim_and_charge(&stripe, &org_id, customer, purchase, now)
            .await
    }

    /// An auto top-up whose charge was sent: Stripe answered "processing"
    /// (its webhook settles it; when none has come for a while, Stripe is
    /// asked), or another send is under way (its lease). Returns when to look
    /// again.
    async fn follow_sent_charge(
        &self,
        stripe: &Stripe,
        purchase: &Purchase,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<f64>> {
        let (Some(intent_id), PurchaseStatus::Processing) =
            (&purchase.payment_intent_id, purchase.status)
        else {
            return Ok(purchase.charge_started_at.map(|at| {
                let due = at + chrono::Duration::seconds(CHARGE_LEASE_SECONDS);
                ((due - now).num_milliseconds().max(0) as f64) + 1_000.0
            }));
        };
        let waited = now - purchase.updated_at;
        let poll = chrono::Duration::seconds(INTENT_POLL_SECONDS);
        if waited < poll {
            return Ok(Some((poll - waited).num_milliseconds() as f64 + 1_000.0));
        }
        match stripe.payment_intent(intent_id).await {
            Ok(intent) => {
                self.decide_and_commit(
                    Command::PurchaseSettle {
                        purchase_id: Some(purchase.id.clone()),
                        outcome: ChargeOutcome::Intent { intent },
                    },
                    now,
                )?;
            }
            Err(err) => console_error!("refreshing auto top-up {}: {err}", purchase.id),
        }
        Ok(Some(INTENT_POLL_SECONDS as f64 * 1000.0))
    }

    /// Claims the charge (its lease) in one decision, sends it, and settles
    /// Stripe's answer in another. Returns when to try again, if it must be.
    async fn claim_and_charge(
        &self,
        stripe: &Stripe,
        org_id: &str,
        customer: Option<String>,
        purchase: Purchase,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<f64>> {
        // A resend repeats the first attempt: a card changed since then must
        // not turn an unknown outcome into a charge with other parameters
        // (Stripe refuses those under the same key).
        let method = match (&purchase.payment_method_id, &customer) {
            (Some(sent), _) => Some(sent.clone()),
            (None, None) => None,
            (None, Some(customer)) => {
                let found = stripe
                    .default_payment_method(customer)
                    .await
                    .map_err(|e| Error::RustError(e.to_string()))?;
                self.payment_method
                    .borrow_mut()
                    .learned(customer, found.clone(), now);
                found.map(|m| m.id)
            }
        };
        let claimed = self.decide_and_commit(
            Command::AutoTopUpSend {
                purchase_id: purchase.id.clone(),
                payment_method_id: method,
            },
            now,
        )?;
        let Ok(PurchaseStartReply::Existing {
            purchase,
            send_charge: true,
        }) = serde_json::from_str::<PurchaseStartReply>(&claimed.body)
        else {
            return Ok(None);
        };
        let customer = customer.unwrap_or_default();
        let outcome = stripe_api::charge_purchase(stripe, org_id, &customer, &purchase).await;
        let unknown = outcome == ChargeOutcome::Unknown;
        self.decide_and_commit(
            Command::PurchaseSettle {
                purchase_id: Some(purchase.id.clone()),
                outcome,
            },
            now,
        )?;
        if unknown {
            return Ok(Some(self.charge_backoff_ms()));
        }
        self.replica.charge_failures.set(0);
        Ok(None)
    }

    /// A payment method request: a read, answered from the cache (Stripe is
    /// asked at most once a minute), or a value the Worker just learned.
    async fn payment_method(
        &self,
        op: PaymentMethodOp,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        self.ensure_loaded()?;
        let customer = match self.wallet.borrow().as_ref() {
            None => return Ok(Reply::error(&ApiError::WalletNotFound, now)),
            Some(w) => w.stripe_customer_id().map(str::to_string),
        };
        let Some(customer) = customer else {
            // No Stripe customer yet: no card on file, nothing to ask Stripe.
            return Ok(Reply::json(200, &PaymentMethodSummary::to_json(None)));
        };
        let lookup = match op {
            PaymentMethodOp::Learned { summary } => {
                self.payment_method
                    .borrow_mut()
                    .learned(&customer, summary.clone(), now);
                Ok(summary)
            }
            PaymentMethodOp::Read => self.read_payment_method(&customer, now).await?,
        };
        Ok(match lookup {
            Ok(summary) => Reply::json(200, &PaymentMethodSummary::to_json(summary.as_ref())),
            Err(err) => Reply::error(&err, now),
        })
    }

    /// The cached payment method of `customer`, refreshed from Stripe when
    /// it is a minute old; concurrent readers share one Stripe request.
    async fn read_payment_method(
        &self,
        customer: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Lookup> {
        if let Some(cached) = self.payment_method.borrow().cached(customer, now) {
            return Ok(cached);
        }
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let stripe = match &settings.stripe {
            Ok(config) => Stripe::new(config),
            Err(problem) => {
                console_error!("Stripe is not configured: {problem}");
                return Ok(Err(ApiError::Internal));
            }
        };
        let refresh = self.payment_method.borrow_mut().refresh(|| {
            let customer = customer.to_string();
            async move {
                stripe
                    .default_payment_method(&customer)
                    .await
                    .map_err(|err| {
                        console_error!("reading the payment method of {customer}: {err}");
                        err.api_error()
                    })
            }
        });
        let lookup = refresh.clone().await;
        let mut cache = self.payment_method.borrow_mut();
        cache.refreshed(&refresh, customer, &lookup, now);
        Ok(cache.cached(customer, now).unwrap_or(lookup))
    }

    fn charge_backoff_ms(&self) -> f64 {
        next_backoff_ms(&self.replica.charge_failures)
    }

    /// Hands the organization's undelivered events to the delivery queue
    /// (one message names the organization; the consumer reads the events
    /// from here, in order). Nothing leaves without a configured receiver.
    async fn queue_events(&self) -> Result<()> {
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let delivery = match &settings.events {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(problem) => {
                console_error!("events are recorded but not sent: {problem}");
                false
            }
        };
        let Some((org_id, _)) = self.replica_target() else {
            return Ok(());
        };
        if !delivery {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        let Some(newest) = wallet_store::newest_undelivered(&sql)? else {
            return Ok(());
        };
        if newest <= self.replica.events_queued_through.get() {
            return Ok(());
        }
        event_delivery::enqueue(&self.env, &org_id, 0).await?;
        self.replica.events_queued_through.set(newest);
        Ok(())
    }

    /// Counts one more failure in a row and answers the delay before the next
    /// attempt: 5 s, doubling, at most 5 min.
    fn backoff_ms(&self) -> f64 {
        next_backoff_ms(&self.replica.failures)
    }

    /// Whether entries wait for the shard (any entry at all while the
    /// shard's watermark is not known yet).
    fn pending(&self, sql: &SqlStorage) -> Result<bool> {
        wallet_store::has_entries_after(sql, self.replica.watermark.get().unwrap_or(0))
    }

    /// The organization and the D1 shard it replicates to.
    fn replica_target(&self) -> Option<(String, String)> {
        self.wallet.borrow().as_ref().map(|w| {
            let shard = w.ledger_shard().unwrap_or(LEGACY_LEDGER_SHARD);
            (w.org_id().to_string(), shard.to_string())
        })
    }

    /// An organization created before the Durable Object kept every entry
    /// pruned its old ones once they were in D1 (`DB`); they are copied back
    /// here, newest first, a page per call, before anything else replicates.
    /// `Ok(true)`: nothing (more) to restore.
    async fn restore_legacy_entries(&self, org_id: &str) -> Result<bool> {
        const PAGE: u32 = 1000;
        let next_seq = match self.wallet.borrow().as_ref() {
            Some(w) if w.ledger_shard().is_none() => w.next_seq(),
            _ => return Ok(true),
        };
        let sql = self.state.storage().sql();
        let Some(below) = wallet_store::legacy_entries_below(&sql, next_seq)? else {
            return Ok(true);
        };
        let db = ledger_shards::shard(&self.env, LEGACY_LEDGER_SHARD)?;
        let entries = ledger_shards::entries_below(&db, org_id, below, PAGE).await?;
        let done = entries.len() < PAGE as usize;
        let written = wallet_store::restore_legacy_entries(&sql, &entries, done)?;
        add(&self.replica.do_rows_written, written);
        console_log!(
            "restored {} earlier ledger entries of {org_id} from D1{}",
            entries.len(),
            if done {
                "; its history is complete"
            } else {
                ""
            }
        );
        Ok(done)
    }

    /// Sends the entries past the watermark to the shard, in batches bounded
    /// in entries and bytes. `Ok(true)`: nothing is left; `Ok(false)`: this
    /// alarm's share is done and more remains.
    async fn flush(&self, org_id: &str, shard_name: &str) -> Result<bool> {
        let sql = self.state.storage().sql();
        let db = ledger_shards::shard(&self.env, shard_name)?;
        let mut from = match self.replica.watermark.get() {
            Some(seq) => seq,
            None => ledger_shards::progress(&db, org_id).await?,
        };
        self.replica.watermark.set(Some(from));
        for _ in 0..FLUSH_MAX_BATCHES {
            let entries = wallet_store::outbox(&sql, from, FLUSH_MAX_ENTRIES)?;
            if entries.is_empty() {
                return Ok(true);
            }
            let mut count = entries.len();
            let (batch, params) = loop {
                let batch = replica_batch(&entries[..count]).map_err(Error::RustError)?;
                let params = ledger_shards::batch_params(&batch);
                if params.0.len() + params.1.len() <= FLUSH_MAX_BYTES {
                    break (batch, params);
                }
                if count == 1 {
                    return Err(Error::RustError(format!(
                        "entry {} alone exceeds the {FLUSH_MAX_BYTES}-byte batch limit",
                        entries[0].id
                    )));
                }
                count /= 2;
            };
            let through = entries[count - 1].seq;
            let sent = ledger_shards::send(&db, org_id, from, through, &params).await?;
            add(&self.replica.d1_batches, 1);
            add(&self.replica.d1_rows_written, sent.d1_rows_written);
            from = if sent.applied {
                debug_assert_eq!(batch.entries as usize, count);
                through
            } else if sent.shard_seq != from {
                // The shard was restored, emptied or is ahead of what this
                // object recorded: continue from where it really stands.
                console_log!(
                    "shard {shard_name} holds {org_id} through seq {}, not {from}; replicating from there",
                    sent.shard_seq
                );
                sent.shard_seq
            } else {
                return Err(Error::RustError(format!(
                    "shard {shard_name} did not apply a batch for {org_id} at seq {from}"
                )));
            };
            self.replica.watermark.set(Some(from));
        }
        Ok(false)
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

    /// A page of the object's own tables.
    fn read(&self, query: &Query, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        match query {
            Query::Ledger(query) => self.ledger(&sql, query, now),
            Query::Audit(query) => self.audit(&sql, query, now),
            Query::Events(query) => self.events(&sql, query, now),
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

    /// A page of events, newest first, with their delivery.
    fn events(
        &self,
        sql: &SqlStorage,
        query: &wallet_core::events::EventsQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        if self.wallet.borrow().is_none() {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        }
        let (events, has_more) = wallet_store::events_page(sql, query)?;
        Ok(Reply::json(
            200,
            &serde_json::json!({ "data": events, "has_more": has_more }),
        ))
    }

    /// Has the next alarm, due now, read the shard's watermark and send
    /// whatever it lacks.
    fn refill_shard(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        let Some((_, shard)) = self.replica_target() else {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        };
        self.replica.watermark.set(None);
        self.replica.failures.set(0);
        self.set_alarm(0.0);
        Ok(Reply::json(
            202,
            &serde_json::json!({ "ledger_shard": shard, "status": "scheduled" }),
        ))
    }

    /// A page of the audit trail: `{"records": [[seq, record], …], "has_more": …}`.
    fn audit(
        &self,
        sql: &SqlStorage,
        query: &wallet_core::audit::AuditQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        if self.wallet.borrow().is_none() {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        }
        let (records, has_more) = wallet_store::audit_page(sql, query)?;
        Ok(Reply::json(
            200,
            &serde_json::json!({ "records": records, "has_more": has_more }),
        ))
    }

    /// A ledger page from this object's own entries: exact, read-only.
    fn ledger(
        &self,
        sql: &SqlStorage,
        query: &LedgerQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        let next_seq = match self.wallet.borrow().as_ref() {
            None => return Ok(Reply::error(&ApiError::WalletNotFound, now)),
            Some(wallet) => wallet.next_seq(),
        };
        Ok(Reply {
            status: 200,
            body: wallet_store::ledger_page(sql, query, next_seq)?,
            retry_after: None,
        })
    }
}
