//! One command, decided: what the Durable Object must read first
//! ([`reads_for`]), and the decision over the wallet and what was read
//! ([`decide`]): the reply, the wallet after it, and the rows to write.
//!
//! The decision works on a copy of the wallet. The shell keeps the copy only
//! after its writes committed, so a failed read or commit leaves the wallet
//! in memory exactly as storage has it (no hold expires twice, no credit is
//! counted that storage does not hold).

mod payments;
mod settings;
mod spending;

use crate::api::{ApiError, BatchSlot, Command, SignupBody};
use crate::audit::{Actor, AuditRecord, Setting};
use crate::config::WalletConfig;
use crate::events::{Event, EventType};
use crate::purchase::{is_purchase_id, ChargeOutcome, CreditedPayment, Purchase};
use crate::wallet::{seq_of, Hold, LedgerEntry, Wallet};
use crate::{Credits, Rejection};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// A finished answer: status, JSON text and, for 429, `Retry-After` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<i64>,
}

impl Reply {
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        Reply {
            status,
            body: serde_json::to_string(value).expect("replies serialize"),
            retry_after: None,
        }
    }

    pub fn error(err: &ApiError, now: DateTime<Utc>) -> Reply {
        Reply {
            status: err.status(),
            body: err.body().to_string(),
            retry_after: err.retry_after_seconds(now),
        }
    }

    /// A reply whose JSON text is already made (a stored answer, a page).
    pub fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
        }
    }

    fn rejected(rejection: Rejection, now: DateTime<Utc>) -> Reply {
        Reply::error(&ApiError::Rejected(rejection), now)
    }
}

/// The original answer to an idempotent request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StoredReply {
    pub fingerprint: String,
    pub status: u16,
    pub response: String,
}

/// What the shell must read before deciding a command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Idempotency records to look up.
    pub idempotency_keys: Vec<String>,
    /// A hold that is not active in memory: its stored record and, when it
    /// was captured with an entry, that capture's stored response.
    pub closed_hold_id: Option<String>,
    /// A purchase by its id.
    pub purchase_id: Option<String>,
    /// The purchase and the credited-payment marker of a PaymentIntent.
    pub payment_intent_id: Option<String>,
}

/// What the shell read, as [`Reads`] asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub replies: HashMap<String, StoredReply>,
    pub closed_hold: Option<Hold>,
    pub first_capture_response: Option<String>,
    pub purchase: Option<Purchase>,
    pub purchase_by_intent: Option<Purchase>,
    pub credited_payment: Option<CreditedPayment>,
}

/// An accepted operation's row: its idempotency record (key, fingerprint,
/// response) and its ledger entry, when credits moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRow {
    pub seq: u64,
    pub idempotency: Option<(String, String)>,
    pub status: u16,
    pub answer: Option<StoredAnswer>,
    pub entry: Option<LedgerEntry>,
    pub created_at_ms: i64,
}

impl OpRow {
    /// The first answer's text, as a replay sends it again.
    pub fn answer_text(&self) -> Option<String> {
        match (&self.answer, &self.entry) {
            (Some(StoredAnswer::Text(text)), _) => Some(text.clone()),
            (Some(StoredAnswer::Debit(totals)), Some(entry)) => Some(totals.reply_text(entry)),
            (Some(StoredAnswer::Debit(_)), None) | (None, _) => None,
        }
    }
}

/// How an operation's first answer is kept for its replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredAnswer {
    /// The text as it was sent.
    Text(String),
    /// A debit's answer, rebuilt from its entry and the day's figures after
    /// it (SPEC §11: the entry is not stored twice).
    Debit(DebitTotals),
}

/// What a debit's answer says beside its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebitTotals {
    pub spent_today: Credits,
    pub cap_remaining: Credits,
}

impl DebitTotals {
    /// A debit's answer: its entry with the day's spend and what is left of
    /// the cap after it. One function for the first answer and its replays,
    /// so they are the same bytes.
    pub fn reply_text(&self, entry: &LedgerEntry) -> String {
        let mut response = crate::api::entry_json(entry);
        response["spent_today"] = json!(self.spent_today);
        response["cap_remaining"] = json!(self.cap_remaining);
        response.to_string()
    }
}

/// One row a decision writes, besides the wallet itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Op(OpRow),
    Hold(Hold),
    Purchase(Purchase),
    CreditedPayment(CreditedPayment),
    /// A settings change for the audit trail.
    Audit(AuditRecord),
    /// An event for the outbox.
    Event(Event),
}

/// How the wallet row changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalletWrite {
    Insert,
    Update,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reply: Reply,
    /// The wallet after the decision and how to store it; `None` when the
    /// wallet row is unchanged (the shell then keeps what it has).
    pub wallet: Option<(Wallet, WalletWrite)>,
    pub writes: Vec<Write>,
    /// A ledger entry was written: the replica has something to send.
    pub entry_written: bool,
    /// Facts for the operator's log (never for the client).
    pub notes: Vec<String>,
    /// Something must leave after the commit (an event, an auto top-up
    /// charge): the shell runs its alarm now rather than at the next flush.
    pub wake: bool,
}

impl Decision {
    fn answer(reply: Reply) -> Decision {
        Decision {
            reply,
            wallet: None,
            writes: Vec::new(),
            entry_written: false,
            notes: Vec::new(),
            wake: false,
        }
    }
}

/// What `command` needs read from storage, given the wallet in memory.
pub fn reads_for(wallet: Option<&Wallet>, command: &Command) -> Reads {
    let mut reads = Reads::default();
    let Some(wallet) = wallet else {
        return reads;
    };
    match command {
        Command::Debit {
            idempotency_key, ..
        }
        | Command::PlaceHold {
            idempotency_key, ..
        } => reads.idempotency_keys.push(idempotency_key.clone()),
        Command::DebitBatch { items } => {
            reads.idempotency_keys = items
                .iter()
                .filter_map(|slot| match slot {
                    BatchSlot::Debit {
                        idempotency_key, ..
                    } => Some(idempotency_key.clone()),
                    BatchSlot::Invalid { .. } => None,
                })
                .collect();
        }
        Command::Capture { hold_id, .. } | Command::Release { hold_id } => {
            let stored_hold = hold_id.starts_with("hold_") && seq_of(hold_id).is_some();
            if stored_hold && !wallet.holds().contains_key(hold_id) {
                reads.closed_hold_id = Some(hold_id.clone());
            }
        }
        Command::PurchaseStart { purchase_id, .. }
        | Command::PurchaseOpen { purchase_id, .. }
        | Command::AutoTopUpSend { purchase_id, .. }
        | Command::PurchaseGet { purchase_id } => reads.purchase_id = Some(purchase_id.clone()),
        Command::PurchaseSettle {
            purchase_id,
            outcome,
        } => {
            reads.purchase_id = purchase_id.clone().filter(|id| is_purchase_id(id));
            reads.payment_intent_id = outcome_intent_id(outcome).map(str::to_string);
        }
        Command::Dispute {
            payment_intent_id, ..
        }
        | Command::Refund {
            payment_intent_id, ..
        }
        | Command::DisputeClosed {
            payment_intent_id, ..
        } => {
            reads.payment_intent_id = Some(payment_intent_id.clone());
            // A dispute cancels an auto top-up charge that was never sent.
            reads.purchase_id = wallet.auto_top_up().in_flight.clone();
        }
        // Switching off (or another pack) cancels a charge never sent.
        Command::SetAutoTopUp { .. } => reads.purchase_id = wallet.auto_top_up().in_flight.clone(),
        Command::Open(_)
        | Command::View
        | Command::SetDailyCap { .. }
        | Command::SetFeatureCaps { .. }
        | Command::StripeCustomer
        | Command::SetStripeCustomer { .. }
        | Command::LedgerShard
        | Command::AutoTopUp
        | Command::Alerts
        | Command::SetAlerts { .. } => {}
    }
    reads
}

fn outcome_intent_id(outcome: &ChargeOutcome) -> Option<&str> {
    match outcome {
        ChargeOutcome::Intent { intent } => Some(intent.id.as_str()),
        ChargeOutcome::Refused {
            payment_intent_id, ..
        } => payment_intent_id.as_deref(),
        ChargeOutcome::Unknown => None,
    }
}

/// The storage a decision reads from: the Durable Object's tables in the
/// shell, anything in tests.
pub trait StoredState {
    type Error;
    fn load(&self, reads: &Reads) -> Result<Loaded, Self::Error>;
}

/// Reads what `command` needs, then decides it. A read that fails is the
/// error and nothing is decided; `wallet` is never changed either way.
pub fn execute<S: StoredState>(
    wallet: Option<&Wallet>,
    command: &Command,
    store: &S,
    config: &WalletConfig,
    now: DateTime<Utc>,
) -> Result<Decision, S::Error> {
    let loaded = store.load(&reads_for(wallet, command))?;
    Ok(decide(wallet, command, &loaded, config, now))
}

/// Decides `command` on (a copy of) `wallet` at `now`, over what was read:
/// a replay answers its original reply; anything else advances the clock,
/// is dispatched to its family, and ends in [`Step::finish`].
pub fn decide(
    wallet: Option<&Wallet>,
    command: &Command,
    loaded: &Loaded,
    config: &WalletConfig,
    now: DateTime<Utc>,
) -> Decision {
    if let Command::Open(body) = command {
        return open(wallet, body, config, now);
    }
    let Some(current) = wallet else {
        return Decision::answer(Reply::error(&ApiError::WalletNotFound, now));
    };
    if let Some(reply) = replayed(command, loaded, now) {
        return Decision::answer(reply);
    }
    let mut step = Step::begin(current, loaded, config, now);
    let reply = dispatch(&mut step, current, command);
    step.finish(command, reply)
}

/// The stored answer of a debit or hold whose key was used before (409
/// when the request differs), or `None` when it is new.
fn replayed(command: &Command, loaded: &Loaded, now: DateTime<Utc>) -> Option<Reply> {
    let (Command::Debit {
        idempotency_key,
        fingerprint,
        ..
    }
    | Command::PlaceHold {
        idempotency_key,
        fingerprint,
        ..
    }) = command
    else {
        return None;
    };
    let stored = loaded.replies.get(idempotency_key)?;
    Some(if stored.fingerprint == *fingerprint {
        Reply::text(stored.status, stored.response.clone())
    } else {
        Reply::error(&ApiError::IdempotencyKeyReused, now)
    })
}

/// The decision under way: the copy of the wallet it works on (advanced to
/// `now`), what was read, and what it has gathered so far. Every family of
/// commands changes state only through it.
pub(crate) struct Step<'a> {
    pub wallet: Wallet,
    pub loaded: &'a Loaded,
    pub config: &'a WalletConfig,
    /// The wallet's clock after advancing (never earlier than before).
    pub now: DateTime<Utc>,
    pub d: Decision,
    /// Events of this decision other than the wallet alerts, in order.
    pub due: Vec<(EventType, Value)>,
    /// The wallet row must be written.
    pub changed: bool,
    /// A debit or hold was refused at the daily cap (its event, once a day).
    pub cap_refused: bool,
    /// Nothing after the reply: no event, no auto top-up (a payment that
    /// names another organization).
    pub ended_early: bool,
    expired: Vec<Hold>,
}

impl<'a> Step<'a> {
    fn begin(
        current: &Wallet,
        loaded: &'a Loaded,
        config: &'a WalletConfig,
        now: DateTime<Utc>,
    ) -> Step<'a> {
        let mut wallet = current.clone();
        let advanced = wallet.advance(now);
        let now = wallet.now();
        let mut d = Decision::answer(Reply::json(200, &()));
        d.writes = advanced.expired.iter().cloned().map(Write::Hold).collect();
        Step {
            wallet,
            loaded,
            config,
            now,
            d,
            due: Vec::new(),
            changed: advanced.day_changed || !advanced.expired.is_empty(),
            cap_refused: false,
            ended_early: false,
            expired: advanced.expired,
        }
    }

    /// A hold closed in storage, or one that expired just now (closed as
    /// storage is about to record it).
    fn closed_hold(&self, hold_id: &str) -> Option<Hold> {
        self.expired
            .iter()
            .find(|h| h.id == hold_id)
            .or(self.loaded.closed_hold.as_ref().filter(|h| h.id == hold_id))
            .cloned()
    }

    /// Every decision ends here: its events and auto top-up (`observe`),
    /// the settings views answered after those effects, the wallet row.
    fn finish(mut self, command: &Command, reply: Reply) -> Decision {
        self.d.reply = reply;
        if !self.ended_early {
            let due = std::mem::take(&mut self.due);
            self.changed |= observe(
                &mut self.wallet,
                due,
                self.cap_refused,
                self.config,
                &mut self.d,
            );
            let ok = self.d.reply.status == 200;
            match command {
                Command::AutoTopUp | Command::SetAutoTopUp { .. } if ok => {
                    self.d.reply = Reply::json(200, &self.wallet.auto_top_up().view(self.now));
                }
                Command::Alerts | Command::SetAlerts { .. } if ok => {
                    let view = self.wallet.alerts().view(self.wallet.available());
                    self.d.reply = Reply::json(200, &view);
                }
                _ => {}
            }
        }
        if self.changed {
            self.d.wallet = Some((self.wallet, WalletWrite::Update));
        }
        self.d
    }
}

/// The one place a decided command is dispatched, to its family
/// (`settings`, `spending`, `payments`).
fn dispatch(s: &mut Step, current: &Wallet, command: &Command) -> Reply {
    match command {
        // Decided by `open` before any step.
        Command::Open(_) => Reply::error(&ApiError::Internal, s.now),
        // Their views are answered after the decision's own effects.
        Command::AutoTopUp | Command::Alerts => Reply::json(200, &()),
        Command::View => Reply::json(200, &s.wallet.view(s.config)),
        Command::LedgerShard => settings::ledger_shard(s),
        Command::StripeCustomer => settings::stripe_customer(s),
        Command::SetStripeCustomer { stripe_customer_id } => {
            settings::set_stripe_customer(s, stripe_customer_id)
        }
        Command::SetAutoTopUp { body, actor } => settings::set_auto_top_up(s, current, body, actor),
        Command::SetAlerts { body, actor } => settings::set_alerts(s, body, actor),
        Command::SetDailyCap { body, actor } => settings::set_daily_cap(s, body, actor),
        Command::SetFeatureCaps { body, actor } => settings::set_feature_caps(s, body, actor),
        Command::Debit {
            idempotency_key: k,
            fingerprint: f,
            body,
        } => spending::debit(s, k, f, body),
        Command::DebitBatch { items } => spending::batch(s, items),
        Command::PlaceHold {
            idempotency_key: k,
            fingerprint: f,
            body,
        } => spending::place_hold(s, k, f, body),
        Command::Capture { hold_id, body } => spending::capture(s, hold_id, body),
        Command::Release { hold_id } => spending::release(s, hold_id),
        Command::PurchaseStart {
            purchase_id: id,
            idempotency_key: k,
            fingerprint: f,
            pack_id,
        } => payments::begin(s, (id, k, f, pack_id), None),
        Command::PurchaseOpen {
            purchase_id: id,
            idempotency_key: k,
            fingerprint: f,
            pack_id,
            payment_method_id: pm,
        } => payments::begin(s, (id, k, f, pack_id), Some(pm)),
        Command::PurchaseGet { .. } => payments::get(s),
        Command::PurchaseSettle {
            purchase_id,
            outcome,
        } => payments::settle(s, purchase_id.as_deref(), outcome),
        Command::Dispute {
            payment_intent_id: pi,
            dispute_id,
        } => payments::dispute(s, pi, dispute_id),
        Command::Refund {
            payment_intent_id: pi,
            refund,
        } => payments::refund(s, pi, refund),
        Command::DisputeClosed {
            payment_intent_id: pi,
            dispute_id,
            outcome,
        } => payments::close_dispute(s, pi, dispute_id, outcome),
        Command::AutoTopUpSend {
            purchase_id,
            payment_method_id: pm,
        } => payments::send(s, purchase_id, pm.as_deref()),
    }
}

fn audit(setting: Setting, actor: &Actor, at: DateTime<Utc>, before: Value, after: Value) -> Write {
    Write::Audit(AuditRecord {
        setting,
        actor: actor.clone(),
        at,
        before,
        after,
    })
}

/// The owner's auto top-up settings as the audit trail records them.
fn auto_top_up_settings(wallet: &Wallet) -> Value {
    let a = wallet.auto_top_up();
    json!({
        "enabled": a.enabled,
        "threshold": a.threshold,
        "pack_id": a.pack_id,
        "monthly_limit": a.monthly_limit,
    })
}

/// The end of a decision, whatever the command: settings changes and the
/// alert rules become events, and auto top-up starts a purchase when
/// `available` is below its threshold. Every event takes the wallet's next
/// event number and is written with the decision. Whether the wallet changed.
fn observe(
    wallet: &mut Wallet,
    mut due: Vec<(EventType, Value)>,
    cap_refused: bool,
    config: &WalletConfig,
    d: &mut Decision,
) -> bool {
    let now = wallet.now();
    let mut changed = false;
    let mut changes: Vec<(EventType, Value)> = d
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Audit(r) => Some((
                EventType::SettingsChanged,
                json!({
                    "setting": r.setting.as_str(),
                    "sub": r.actor.sub,
                    "role": r.actor.role,
                    "before": r.before,
                    "after": r.after,
                }),
            )),
            _ => None,
        })
        .collect();
    changes.append(&mut due);
    let alerts_before = wallet.alerts().clone();
    changes.extend(wallet.watch_alerts(cap_refused));
    changed |= *wallet.alerts() != alerts_before;

    let pack = wallet
        .auto_top_up()
        .pack_id
        .as_deref()
        .and_then(|id| config.pack(id))
        .cloned();
    if let Some(pack) = pack {
        let org_id = wallet.org_id().to_string();
        let available = wallet.available();
        let (start, moved) = wallet.auto_top_up_mut().trigger(&org_id, available, now);
        changed |= moved;
        if let Some(start) = start {
            d.notes.push(format!(
                "auto top-up of {org_id}: available {available} is below the threshold; starting {} ({})",
                start.purchase_id, start.idempotency_key
            ));
            d.writes.push(Write::Purchase(Purchase::auto_top_up(
                &start.purchase_id,
                &start.idempotency_key,
                &pack,
                now,
            )));
            d.wake = true;
        }
    }
    for (event_type, data) in changes {
        let seq = wallet.take_event_seq();
        d.writes.push(Write::Event(Event::new(
            wallet.org_id(),
            seq,
            event_type,
            now,
            data,
        )));
        changed = true;
        d.wake = true;
    }
    changed
}

/// Signup: creates the wallet with its trial grant and ledger shard, or
/// answers the existing one.
fn open(
    wallet: Option<&Wallet>,
    body: &SignupBody,
    config: &WalletConfig,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(current) = wallet {
        if current.owner_id() != body.owner_id {
            return Decision::answer(Reply::error(&ApiError::WalletOwnerConflict, now));
        }
        let mut wallet = current.clone();
        let changed = body
            .stripe_customer_id
            .as_deref()
            .is_some_and(|id| wallet.record_stripe_customer(id));
        let mut d = Decision::answer(Reply::json(200, &wallet.view(config)));
        if changed {
            d.wallet = Some((wallet, WalletWrite::Update));
        }
        return d;
    }
    let (mut wallet, grant) = Wallet::open(
        &body.org_id,
        &body.owner_id,
        body.stripe_customer_id.clone(),
        config,
        now,
    );
    wallet.assign_ledger_shard(config.shard_for_new_org(&body.org_id));
    let mut d = Decision::answer(Reply::json(201, &wallet.view(config)));
    if let Some(entry) = grant {
        d.writes.push(Write::Op(OpRow {
            seq: entry.seq,
            idempotency: None,
            status: 201,
            answer: None,
            entry: Some(entry),
            created_at_ms: now.timestamp_millis(),
        }));
        d.entry_written = true;
    }
    d.wallet = Some((wallet, WalletWrite::Insert));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CaptureBody, DebitBody, HoldBody, PurchaseStartReply};
    use crate::auto_top_up::DisabledReason;
    use crate::money::Credits;
    use crate::purchase::PurchaseStatus;
    use crate::wallet::HoldStatus;
    use crate::wallet::PurchaseSource;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn opened(config: &WalletConfig, now: &str) -> Wallet {
        let signup = Command::Open(SignupBody {
            org_id: "acme".into(),
            owner_id: "ann".into(),
            stripe_customer_id: None,
        });
        let d = decide(None, &signup, &Loaded::default(), config, at(now));
        assert_eq!(d.reply.status, 201);
        let (wallet, how) = d.wallet.expect("a new wallet");
        assert_eq!(how, WalletWrite::Insert);
        assert_eq!(
            wallet.ledger_shard(),
            Some(config.shard_for_new_org("acme"))
        );
        wallet
    }

    fn place_hold(wallet: &Wallet, config: &WalletConfig, now: &str) -> (Wallet, String) {
        let command = Command::PlaceHold {
            idempotency_key: "h1".into(),
            fingerprint: "f".into(),
            body: HoldBody {
                feature: "chat".into(),
                amount: Some(c("5")),
                usage_estimate: None,
                user_id: None,
                project_id: None,
                ttl_seconds: Some(60),
            },
        };
        let d = decide(Some(wallet), &command, &Loaded::default(), config, at(now));
        assert_eq!(d.reply.status, 201, "{}", d.reply.body);
        let (wallet, _) = d.wallet.unwrap();
        let id = wallet.holds().keys().next().unwrap().clone();
        (wallet, id)
    }

    /// The shell reads what `reads_for` names, then decides. A read that
    /// fails means no decision at all: the wallet it keeps is the one it had,
    /// and the next request decides from it as if the failed one never came.
    #[test]
    fn a_failing_read_leaves_no_trace() {
        let config = WalletConfig::defaults();
        let wallet = opened(&config, "2030-01-01T10:00:00Z");
        let (wallet, hold_id) = place_hold(&wallet, &config, "2030-01-01T10:00:00Z");
        let before = wallet.clone();

        // Two minutes later the hold is due. A capture of another (stored)
        // hold must read it first; that read throws, so nothing is decided.
        struct Storage(bool);
        impl StoredState for Storage {
            type Error = &'static str;
            fn load(&self, reads: &Reads) -> Result<Loaded, &'static str> {
                match (self.0, &reads.closed_hold_id) {
                    (true, Some(_)) => Err("storage read threw"),
                    _ => Ok(Loaded::default()),
                }
            }
        }
        let capture = |id: &str| Command::Capture {
            hold_id: id.into(),
            body: CaptureBody {
                amount: Some(c("1")),
                usage: None,
            },
        };
        let failed = execute(
            Some(&wallet),
            &capture("hold_000000000099"),
            &Storage(true),
            &config,
            at("2030-01-01T10:02:00Z"),
        );
        assert_eq!(failed, Err("storage read threw"));
        assert_eq!(wallet, before, "the wallet in memory is untouched");
        assert_eq!(wallet.holds()[&hold_id].status, HoldStatus::Active);

        // The retry decides from the same wallet: the hold expires exactly once.
        let later = "2030-01-01T10:02:00Z";
        let d = execute(
            Some(&wallet),
            &capture("hold_000000000099"),
            &Storage(false),
            &config,
            at(later),
        )
        .unwrap();
        assert_eq!(d.reply.status, 404, "{}", d.reply.body);
        let expired: Vec<&Hold> = d
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Hold(h) if h.status == HoldStatus::Expired => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, hold_id);
        let (after, _) = d.wallet.expect("the expiry changed the wallet");
        assert_eq!(after.held(), Credits::ZERO);
        assert_eq!(after.balance(), before.balance());
        // Deciding never touched the wallet it was given.
        assert_eq!(wallet, before);

        // A commit that fails is the same: the shell drops the decision. The
        // next decision from the kept wallet expires the hold again, once,
        // because storage still has it active.
        let again = decide(
            Some(&wallet),
            &Command::View,
            &Loaded::default(),
            &config,
            at(later),
        );
        let expired_again = again
            .writes
            .iter()
            .filter(|w| matches!(w, Write::Hold(h) if h.status == HoldStatus::Expired))
            .count();
        assert_eq!(expired_again, 1);
        // Once the commit is kept, nothing expires twice.
        let (kept, _) = again.wallet.unwrap();
        let third = decide(
            Some(&kept),
            &Command::View,
            &Loaded::default(),
            &config,
            at(later),
        );
        assert!(third.writes.is_empty());
        assert!(third.wallet.is_none());
    }

    #[test]
    fn a_hold_that_expires_in_the_same_request_answers_expired() {
        let config = WalletConfig::defaults();
        let wallet = opened(&config, "2030-01-01T10:00:00Z");
        let (wallet, hold_id) = place_hold(&wallet, &config, "2030-01-01T10:00:00Z");
        for command in [
            Command::Capture {
                hold_id: hold_id.clone(),
                body: CaptureBody {
                    amount: Some(c("1")),
                    usage: None,
                },
            },
            Command::Release {
                hold_id: hold_id.clone(),
            },
        ] {
            // The hold is active in memory, so nothing is read for it.
            assert_eq!(reads_for(Some(&wallet), &command), Reads::default());
            let d = decide(
                Some(&wallet),
                &command,
                &Loaded::default(),
                &config,
                at("2030-01-01T10:05:00Z"),
            );
            assert_eq!(d.reply.status, 409, "{}", d.reply.body);
            let body: serde_json::Value = serde_json::from_str(&d.reply.body).unwrap();
            assert_eq!(body["error"]["code"], "hold_not_active");
            assert_eq!(body["error"]["hold_status"], "expired");
            // The expiry itself is still recorded, credits released.
            let (after, _) = d.wallet.unwrap();
            assert_eq!(after.held(), Credits::ZERO);
            assert!(d
                .writes
                .iter()
                .any(|w| matches!(w, Write::Hold(h) if h.id == hold_id && h.status == HoldStatus::Expired)));
        }
    }

    #[test]
    fn replays_and_batches_decide_from_what_was_read() {
        let config = WalletConfig::defaults();
        let wallet = opened(&config, "2030-01-01T10:00:00Z");
        let body = DebitBody {
            feature: "chat".into(),
            amount: Some(c("2")),
            usage: None,
            user_id: None,
            project_id: None,
            metadata: None,
        };
        let command = Command::Debit {
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            body: body.clone(),
        };
        assert_eq!(reads_for(Some(&wallet), &command).idempotency_keys, ["k"]);
        let first = decide(
            Some(&wallet),
            &command,
            &Loaded::default(),
            &config,
            at("2030-01-01T10:00:01Z"),
        );
        assert_eq!(first.reply.status, 201);
        assert!(first.entry_written);
        let mut loaded = Loaded::default();
        loaded.replies.insert(
            "k".into(),
            StoredReply {
                fingerprint: "f".into(),
                status: 201,
                response: first.reply.body.clone(),
            },
        );
        let (after, _) = first.wallet.unwrap();
        let replay = decide(
            Some(&after),
            &command,
            &loaded,
            &config,
            at("2030-01-01T10:00:02Z"),
        );
        assert_eq!(replay.reply, first.reply);
        assert!(replay.wallet.is_none() && replay.writes.is_empty());
        loaded.replies.get_mut("k").unwrap().fingerprint = "other".into();
        let reused = decide(
            Some(&after),
            &command,
            &loaded,
            &config,
            at("2030-01-01T10:00:02Z"),
        );
        assert_eq!(reused.reply.status, 409);

        let slot = |key: &str| BatchSlot::Debit {
            idempotency_key: key.into(),
            fingerprint: "f".into(),
            body: body.clone(),
        };
        let batch = Command::DebitBatch {
            items: vec![slot("k"), slot("n"), slot("n")],
        };
        loaded.replies.get_mut("k").unwrap().fingerprint = "f".into();
        assert_eq!(
            reads_for(Some(&after), &batch).idempotency_keys,
            ["k", "n", "n"]
        );
        let d = decide(
            Some(&after),
            &batch,
            &loaded,
            &config,
            at("2030-01-01T10:00:03Z"),
        );
        let body: serde_json::Value = serde_json::from_str(&d.reply.body).unwrap();
        let statuses: Vec<u64> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses, [201, 201, 201]);
        // One new debit: the stored key replays, the repeated key replays its first use.
        let ops = d
            .writes
            .iter()
            .filter(|w| matches!(w, Write::Op(_)))
            .count();
        assert_eq!(ops, 1);
        assert_eq!(body["results"][1]["entry"], body["results"][2]["entry"]);
        let (final_wallet, _) = d.wallet.unwrap();
        assert_eq!(final_wallet.balance(), c("196"));
    }

    fn owner() -> Actor {
        Actor {
            sub: "ann".into(),
            role: crate::token::Role::Owner,
        }
    }

    fn debit_command(key: &str, amount: &str) -> Command {
        Command::Debit {
            idempotency_key: key.into(),
            fingerprint: key.into(),
            body: DebitBody {
                feature: "chat".into(),
                amount: Some(c(amount)),
                usage: None,
                user_id: None,
                project_id: None,
                metadata: None,
            },
        }
    }

    /// Decides and keeps the result, as the shell does after its commit.
    fn step(wallet: &mut Wallet, command: &Command, loaded: &Loaded, now: &str) -> Decision {
        let config = WalletConfig::defaults();
        let d = decide(Some(wallet), command, loaded, &config, at(now));
        if let Some((next, _)) = &d.wallet {
            *wallet = next.clone();
        }
        d
    }

    fn started(d: &Decision) -> Vec<Purchase> {
        d.writes
            .iter()
            .filter_map(|w| match w {
                Write::Purchase(p) if p.source == PurchaseSource::AutoTopUp => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn event_types(d: &Decision) -> Vec<&'static str> {
        d.writes
            .iter()
            .filter_map(|w| match w {
                Write::Event(e) => Some(e.event_type.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn crossing_the_threshold_starts_one_auto_top_up_and_its_end_decides_what_follows() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z";
        let mut wallet = opened(&config, now);
        let enable = Command::SetAutoTopUp {
            body: crate::auto_top_up::AutoTopUpBody {
                enabled: true,
                threshold: Some(c("150")),
                pack_id: Some("starter".into()),
                monthly_limit: None,
            },
            actor: owner(),
        };
        let d = step(&mut wallet, &enable, &Loaded::default(), now);
        assert_eq!(event_types(&d), ["settings.changed"]);
        assert!(d.wake && started(&d).is_empty());
        // 200 credits: the 26th debit of 2 crosses below 150, and only it starts one.
        let mut purchases = Vec::new();
        for n in 1..=50 {
            let d = step(
                &mut wallet,
                &debit_command(&format!("k{n}"), "2"),
                &Loaded::default(),
                now,
            );
            assert_eq!(d.reply.status, 201);
            let new = started(&d);
            assert_eq!(new.is_empty(), n != 26, "debit {n}");
            assert_eq!(d.wake, n == 26, "the alarm is woken by the crossing only");
            purchases.extend(new);
        }
        assert_eq!(purchases.len(), 1);
        let purchase = purchases.remove(0);
        assert_eq!(purchase.status, PurchaseStatus::Processing);
        assert!(purchase.payment_method_id.is_none() && purchase.needs_auto_charge(at(now)));
        assert_eq!(
            wallet.auto_top_up().in_flight.as_deref(),
            Some(purchase.id.as_str())
        );

        // The alarm claims it for the card on file; a second claim sends nothing.
        let loaded = Loaded {
            purchase: Some(purchase.clone()),
            ..Loaded::default()
        };
        let send = Command::AutoTopUpSend {
            purchase_id: purchase.id.clone(),
            payment_method_id: Some("pm_1".into()),
        };
        let d = step(&mut wallet, &send, &loaded, now);
        let Ok(PurchaseStartReply::Existing {
            purchase: claimed,
            send_charge: true,
        }) = serde_json::from_str(&d.reply.body)
        else {
            panic!("{}", d.reply.body)
        };
        assert_eq!(claimed.payment_method_id.as_deref(), Some("pm_1"));
        let again = step(
            &mut wallet,
            &send,
            &Loaded {
                purchase: Some((*claimed).clone()),
                ..Loaded::default()
            },
            now,
        );
        assert!(
            again.reply.body.contains("\"send_charge\":false"),
            "{}",
            again.reply.body
        );

        // Declined: off, with its events; later crossings start nothing.
        let declined = Command::PurchaseSettle {
            purchase_id: Some(purchase.id.clone()),
            outcome: ChargeOutcome::Refused {
                payment_intent_id: Some("pi_1".into()),
                decline_code: Some("card_declined".into()),
            },
        };
        let loaded = Loaded {
            purchase: Some((*claimed).clone()),
            ..Loaded::default()
        };
        let d = step(&mut wallet, &declined, &loaded, now);
        assert_eq!(event_types(&d), ["purchase.failed", "auto_top_up.failed"]);
        assert_eq!(
            wallet.auto_top_up().disabled_reason,
            Some(DisabledReason::PaymentFailed)
        );
        assert!(!wallet.auto_top_up().enabled && wallet.auto_top_up().in_flight.is_none());
        let d = step(
            &mut wallet,
            &debit_command("after", "1"),
            &Loaded::default(),
            now,
        );
        assert!(started(&d).is_empty());

        // Enabling again starts the month's second at once (available is below).
        let d = step(
            &mut wallet,
            &Command::SetAutoTopUp {
                body: crate::auto_top_up::AutoTopUpBody {
                    enabled: true,
                    threshold: None,
                    pack_id: None,
                    monthly_limit: None,
                },
                actor: owner(),
            },
            &Loaded::default(),
            now,
        );
        let second = started(&d);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].id, purchase.id);
        assert_eq!(
            second[0].idempotency_key.as_deref(),
            Some("auto-top-up/2030-01/2")
        );
        let view: serde_json::Value = serde_json::from_str(&d.reply.body).unwrap();
        assert_eq!(view["in_flight"], true);
        assert_eq!(view["disabled_reason"], serde_json::Value::Null);

        // No card on file when the charge is due: off, with the reason.
        let d = step(
            &mut wallet,
            &Command::AutoTopUpSend {
                purchase_id: second[0].id.clone(),
                payment_method_id: None,
            },
            &Loaded {
                purchase: Some(second[0].clone()),
                ..Loaded::default()
            },
            now,
        );
        assert!(d.reply.body.contains("\"send_charge\":false"));
        assert_eq!(event_types(&d), ["purchase.failed", "auto_top_up.failed"]);
        assert_eq!(
            wallet.auto_top_up().disabled_reason,
            Some(DisabledReason::PaymentMethodRequired)
        );
        // Events are numbered in the order they were decided.
        assert_eq!(wallet.next_event_seq(), 7);
    }

    #[test]
    fn a_refused_debit_records_the_daily_cap_event_once_a_day() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z";
        let mut wallet = opened(&config, now);
        let cap = Command::SetDailyCap {
            body: crate::api::DailyCapBody { daily_cap: c("10") },
            actor: owner(),
        };
        assert_eq!(
            event_types(&step(&mut wallet, &cap, &Loaded::default(), now)),
            ["settings.changed"]
        );
        let d = step(
            &mut wallet,
            &debit_command("a", "11"),
            &Loaded::default(),
            now,
        );
        assert_eq!(d.reply.status, 429);
        assert_eq!(event_types(&d), ["wallet.daily_cap_reached"]);
        assert!(
            d.wallet.is_some(),
            "the refusal stores that the event fired"
        );
        let d = step(
            &mut wallet,
            &debit_command("b", "11"),
            &Loaded::default(),
            now,
        );
        assert!(
            event_types(&d).is_empty() && d.wallet.is_none(),
            "nothing more that day"
        );
        let d = step(
            &mut wallet,
            &debit_command("c", "11"),
            &Loaded::default(),
            "2030-01-02T00:00:01Z",
        );
        assert_eq!(event_types(&d), ["wallet.daily_cap_reached"]);
    }

    fn auto_top_up(enabled: bool, pack: Option<&str>) -> Command {
        Command::SetAutoTopUp {
            body: crate::auto_top_up::AutoTopUpBody {
                enabled,
                threshold: enabled.then(|| c("150")),
                pack_id: pack.map(str::to_string),
                monthly_limit: None,
            },
            actor: owner(),
        }
    }

    fn with_purchase(purchase: &Purchase) -> Loaded {
        Loaded {
            purchase: Some(purchase.clone()),
            ..Loaded::default()
        }
    }

    /// A wallet whose auto top-up just started its first purchase (unsent).
    fn crossed(now: &str) -> (Wallet, Purchase) {
        let config = WalletConfig::defaults();
        let mut wallet = opened(&config, now);
        step(
            &mut wallet,
            &auto_top_up(true, Some("starter")),
            &Loaded::default(),
            now,
        );
        let d = step(
            &mut wallet,
            &debit_command("big", "60"),
            &Loaded::default(),
            now,
        );
        let purchase = started(&d).remove(0);
        (wallet, purchase)
    }

    #[test]
    fn the_owners_word_cancels_a_charge_never_sent_and_a_sent_one_is_followed() {
        let now = "2030-01-01T10:00:00Z";
        // Switched off before the alarm sent it: canceled, and the claim sends nothing.
        let (mut wallet, purchase) = crossed(now);
        let d = step(
            &mut wallet,
            &auto_top_up(false, None),
            &with_purchase(&purchase),
            now,
        );
        let canceled = started(&d).remove(0);
        assert_eq!(canceled.status, PurchaseStatus::Canceled);
        assert!(wallet.auto_top_up().in_flight.is_none());
        let send = Command::AutoTopUpSend {
            purchase_id: purchase.id.clone(),
            payment_method_id: Some("pm_1".into()),
        };
        let d = step(&mut wallet, &send, &with_purchase(&canceled), now);
        assert!(
            d.reply.body.contains("\"send_charge\":false"),
            "{}",
            d.reply.body
        );

        // Another pack: the unsent charge is canceled and one of the new pack starts.
        let (mut wallet, purchase) = crossed(now);
        let d = step(
            &mut wallet,
            &auto_top_up(true, Some("team")),
            &with_purchase(&purchase),
            now,
        );
        let written = started(&d);
        assert_eq!(written.len(), 2);
        assert_eq!(
            (written[0].id.as_str(), written[0].status),
            (purchase.id.as_str(), PurchaseStatus::Canceled)
        );
        assert_eq!(written[1].pack_id, "team");
        assert_eq!(
            wallet.auto_top_up().in_flight.as_deref(),
            Some(written[1].id.as_str())
        );

        // Sent once (no answer), then switched off: followed, resent to the first card.
        let (mut wallet, purchase) = crossed(now);
        let d = step(&mut wallet, &send, &with_purchase(&purchase), now);
        let Ok(PurchaseStartReply::Existing { purchase: sent, .. }) =
            serde_json::from_str(&d.reply.body)
        else {
            panic!("{}", d.reply.body)
        };
        let unknown = Command::PurchaseSettle {
            purchase_id: Some(purchase.id.clone()),
            outcome: ChargeOutcome::Unknown,
        };
        let d = step(&mut wallet, &unknown, &with_purchase(&sent), now);
        let unanswered = d
            .writes
            .iter()
            .find_map(|w| match w {
                Write::Purchase(p) => Some(p.clone()),
                _ => None,
            })
            .unwrap();
        let d = step(
            &mut wallet,
            &auto_top_up(false, None),
            &with_purchase(&unanswered),
            now,
        );
        assert!(started(&d).is_empty(), "nothing canceled");
        assert_eq!(
            wallet.auto_top_up().in_flight.as_deref(),
            Some(purchase.id.as_str())
        );
        let later = "2030-01-01T10:05:00Z";
        let resend = Command::AutoTopUpSend {
            purchase_id: purchase.id.clone(),
            payment_method_id: Some("pm_new_default".into()),
        };
        let d = step(&mut wallet, &resend, &with_purchase(&unanswered), later);
        let Ok(PurchaseStartReply::Existing {
            purchase: again,
            send_charge: true,
        }) = serde_json::from_str(&d.reply.body)
        else {
            panic!("{}", d.reply.body)
        };
        assert_eq!(
            again.payment_method_id.as_deref(),
            Some("pm_1"),
            "the first attempt's card"
        );
    }

    #[test]
    fn a_dispute_switches_auto_top_up_off_and_cancels_its_unsent_charge() {
        let now = "2030-01-01T10:00:00Z";
        let (mut wallet, purchase) = crossed(now);
        let dispute = Command::Dispute {
            payment_intent_id: "pi_old".into(),
            dispute_id: "dp_1".into(),
        };
        let marker = CreditedPayment {
            payment_intent_id: "pi_old".into(),
            purchase_id: None,
            pack_id: Some("starter".into()),
            credits: c("100"),
            amount_received_cents: 1000,
            entry_id: Some("le_000000000001".into()),
            entry_seq: Some(1),
            disputed: false,
            credits_reversed: Credits::ZERO,
            reconciliation: Default::default(),
        };
        let loaded = Loaded {
            purchase: Some(purchase.clone()),
            credited_payment: Some(marker),
            ..Loaded::default()
        };
        let d = step(&mut wallet, &dispute, &loaded, now);
        assert_eq!(event_types(&d), ["purchase.disputed"]);
        assert!(!wallet.auto_top_up().enabled && wallet.auto_top_up().in_flight.is_none());
        assert_eq!(
            wallet.auto_top_up().disabled_reason,
            Some(DisabledReason::PaymentDisputed)
        );
        assert_eq!(started(&d)[0].status, PurchaseStatus::Canceled);
        // Below the threshold, yet nothing starts until the owner enables it again.
        let d = step(
            &mut wallet,
            &debit_command("after", "1"),
            &Loaded::default(),
            now,
        );
        assert!(started(&d).is_empty());
        let d = step(
            &mut wallet,
            &auto_top_up(true, None),
            &Loaded::default(),
            now,
        );
        assert_eq!(started(&d).len(), 1);
    }
}
